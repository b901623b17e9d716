#!/bin/bash
# `strata bench --data`: on a tiny generated image folder it prints its figures and its --json
# holds consistent counts (epochs wrap, bad images are skipped and counted under on_bad_image:
# skip, named under error); bad usage is an error with exit status 1. Asserts nothing about speed.
# Run by ctest with STRATA and PYTHON set.
set -u
: "${STRATA:?}" "${PYTHON:?}"
"$PYTHON" -c "import PIL" 2>/dev/null || { echo "skip: python3-pil is not installed"; exit 77; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

# 2 classes x 6 images of random sizes, JPEG and PNG, from a random seed.
seed=$RANDOM
"$PYTHON" - "$work/photos" "$seed" <<'PY' || fail "making the images (seed $seed)"
import os, sys
import numpy as np
from PIL import Image
root, rng = sys.argv[1], np.random.default_rng(int(sys.argv[2]))
for cls in ("cat", "dog"):
    os.makedirs(f"{root}/{cls}")
    for i in range(6):
        h, w = rng.integers(20, 60, size=2)
        img = Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))
        img.save(f"{root}/{cls}/{i}.{'jpg' if i % 2 else 'png'}")
PY

cat >"$work/exp.yaml" <<YAML
seed: 3
threads: 1
data:
  type: image_folder
  train: $work/photos
  test: $work/photos
  transforms:
    - {type: random_resized_crop, size: 16}
    - {type: hflip}
    - {type: normalize}
model:
  input: [3, 16, 16]
  layers:
    - {name: pool, type: global_avg_pool}
    - {name: fc, type: linear, out_features: 2}
optimizer: {type: sgd, lr: 0.01}
train: {epochs: 1, batch_size: 4}
YAML

"$STRATA" bench --data "$work/exp.yaml" --batches 2 --warmup 1 >"$work/table" 2>&1 ||
  { cat "$work/table"; fail "table run"; }
for word in "images/s" "ms per batch" "open" "fit" "loader buffers" "peak" "batch 4" \
            "random_resized_crop, hflip, normalize" "[3, 16, 16]" "12 training rows"; do
  grep -qF -- "$word" "$work/table" || { cat "$work/table"; fail "table lacks '$word'"; }
done
echo "ok   table"

# 12 images, batch 4: 3 batches an epoch, so 1 + 5 batches start a second epoch. normalize is
# fitted (no mean/std given); --threads 2 overrides `threads: 1`.
"$STRATA" bench --data "$work/exp.yaml" --batches 5 --warmup 1 --threads 2 --json \
  >"$work/out.json" 2>"$work/err" || { cat "$work/err"; fail "json run"; }
"$PYTHON" - "$work/out.json" <<'PY' || fail "json content"
import json, sys
r = json.load(open(sys.argv[1]))
assert r["dataset"] == "image_folder", r
assert r["transforms"] == ["random_resized_crop", "hflip", "normalize"], r
assert r["sample_shape"] == [3, 16, 16] and r["batch_size"] == 4 and r["threads"] == 2, r
assert r["batches"] == 5 and r["warmup"] == 1 and r["train_rows"] == 12, r
assert r["images"] == 20 and r["skipped"] == 0 and r["epochs"] == 2, r
assert r["buffer_bytes"] == 2 * 4 * 3 * 16 * 16 * 4, r
assert r["load_seconds"] > 0 and r["fit_seconds"] >= 0 and r["open_seconds"] >= 0, r
assert abs(r["images_per_second"] - 20 / r["load_seconds"]) < 1e-6 * r["images_per_second"], r
assert abs(r["batch_seconds"] - r["load_seconds"] / 5) < 1e-9, r
assert 0 < r["min_batch_seconds"] <= r["max_batch_seconds"], r
assert r["peak_rss_bytes"] >= r["rss_before_loader_bytes"] > 0, r
PY
echo "ok   json"

# A zero-byte image: named by default, skipped and counted under on_bad_image: skip. (normalize
# with given statistics, so that the loader meets it, not the fitting, which reads every image.)
: >"$work/photos/dog/broken.jpg"
sed 's/{type: normalize}/{type: normalize, preset: imagenet}/' "$work/exp.yaml" >"$work/given.yaml"
"$STRATA" bench --data "$work/given.yaml" --batches 3 --warmup 0 >"$work/o" 2>"$work/e"; rc=$?
[ "$rc" -eq 1 ] || { cat "$work/o" "$work/e"; fail "a broken image: exit status $rc"; }
grep -qF "broken.jpg" "$work/e" || { cat "$work/e"; fail "the broken image is not named"; }
echo "ok   a bad image is an error naming it: $(head -1 "$work/e")"
"$STRATA" bench --data "$work/given.yaml" --batches 6 --warmup 0 --set data.on_bad_image=skip \
  --json >"$work/skip.json" 2>"$work/e" || { cat "$work/e"; fail "on_bad_image: skip run"; }
"$PYTHON" - "$work/skip.json" <<'PY' || fail "skip counts"
import json, sys
r = json.load(open(sys.argv[1]))
# 13 rows: batches of 4, 4, 4, 1 an epoch; 6 batches = 1 epoch + 2 batches, holding 13 + 8
# positions, of which the broken image is 1 or 2.
assert r["train_rows"] == 13 and r["epochs"] == 2, r
assert r["skipped"] in (1, 2) and r["images"] + r["skipped"] == 21, r
PY
grep -qF '"skipped"' "$work/skip.json" && echo "ok   on_bad_image: skip counts the skipped image"
rm "$work/photos/dog/broken.jpg"

expect_error() {  # expect_error WANT ARGS...: exit status 1 and WANT on stderr
  local want=$1; shift
  "$STRATA" bench "$@" >"$work/o" 2>"$work/e"; local rc=$?
  [ "$rc" -eq 1 ] || { cat "$work/o" "$work/e"; fail "$*: exit status $rc"; }
  grep -qF -- "$want" "$work/e" || { cat "$work/e"; fail "$*: stderr lacks '$want'"; }
  echo "ok   $*: $(head -1 "$work/e")"
}
expect_error "--batches 0: must be at least 1" --data "$work/exp.yaml" --batches 0
expect_error "--warmup -1: must be 0 or more" --data "$work/exp.yaml" --warmup -1
expect_error "missing.yaml" --data "$work/missing.yaml"
expect_error "EXP.yaml" --data
expect_error "--batches counts loader batches: it needs --data" "$work/exp.yaml" --batches 3
expect_error "with --data, give --batches" --data "$work/exp.yaml" --iterations 3
expect_error "model" --data "$work/exp.yaml" --set "model.input=[3, 20, 20]"
echo "all passed"
