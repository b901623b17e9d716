#!/bin/bash
# Peak memory of training from big inputs: does it grow with the dataset's size? (Not run in CI:
# minutes, and gigabytes in /tmp.)
#
#   bench/data_memory.sh [BUILD_DIR]        (default build; needs python3-pil, python3-h5py, time)
#
# 1. Image folders: a small CNN (25,578 parameters) trained on 32x32 PNGs: peak RSS
#    (/usr/bin/time -v) of the same training ($STEPS steps, default 300, batch 64, evaluation at
#    the default eval_batch_size 500) on an in-memory synthetic set (the model's own training
#    memory), a folder of 2,000 files (10 classes x 200) and one of 200,000 (10 x 20,000; with
#    train_limit, then one whole epoch of 3,125 steps); then what `strata bench --data` shows
#    resident after opening each folder. The 200,000 files are 2,000 distinct PNGs, each written
#    100 times under different names (every file is still opened and decoded; only generating
#    them is faster).
# 2. HDF5 (needs the `hdf5` dataset plugin): a file of uint8 images [N, 3, 64, 64] (train/images,
#    train/labels; a 1,000-image test group) written by h5py, chunked one sample per chunk, of
#    4 GiB (2 GiB when /tmp has less than 10 GB free), read with memory_budget 1GB (512MB) by the
#    same CNN on 64x64 inputs (1.5 x the budget's worth of rows), and by `strata bench --data`
#    (3,000 batches over all rows); peak RSS against the budget.
# Everything is made in a fresh folder under /tmp and deleted at the end. PARTS=folders or
# PARTS=hdf5 runs one part only.
set -u
build=${1:-build}
strata=$(realpath "$build/bin/strata")
py=/usr/bin/python3
work=$(mktemp -d /tmp/strata_data_memory.XXXXXX)
trap 'rm -rf "$work"' EXIT
steps=${STEPS:-300}
batch=64
limit=$(( steps * batch ))

peak_kib() { sed -n 's/^\tMaximum resident set size (kbytes): //p' "$1"; }

train() {  # train NAME YAML: runs strata train under /usr/bin/time -v, prints the figures
  local name=$1 yaml=$2 start end run
  run=$work/run_$(basename "$yaml" .yaml)
  start=$(date +%s.%N)
  /usr/bin/time -v "$strata" train "$yaml" --out "$run" --overwrite >"$run.log" \
    2>"$run.time" || { head -n 5 "$run.time"; tail -n 5 "$run.log"; echo "FAILED: $name"; exit 1; }
  end=$(date +%s.%N)
  [ -n "${SHOW_LOGS:-}" ] && tail -n 4 "$run.log"
  awk -v n="$name" -v k="$(peak_kib "$run.time")" -v s="$start" -v e="$end" \
    'BEGIN { printf "%-36s peak RSS %7.1f MiB  %7.1f s\n", n, k / 1024, e - s }' </dev/null
}

cnn_experiment() {  # cnn_experiment DATA_YAML EPOCHS TRAIN_LIMIT INPUT_SIZE
  cat <<YAML
seed: 1
threads: 2
data:
$1
  train_limit: $3
  test_limit: 1000
model:
  input: [3, $4, $4]
  layers:
    - {name: conv1, type: conv2d, out_channels: 16, kernel: 3, padding: 1}
    - {name: relu1, type: relu}
    - {name: pool1, type: max_pool, kernel: 2}
    - {name: conv2, type: conv2d, out_channels: 32, kernel: 3, padding: 1}
    - {name: relu2, type: relu}
    - {name: pool2, type: max_pool, kernel: 2}
    - {name: fc, type: linear, out_features: 10}
optimizer: {type: sgd, lr: 0.001, momentum: 0.9}
train: {epochs: $2, batch_size: $batch, log_every: 0, diagnostics_every: 0, explode_factor: 0}
checkpoint: {every: 0}
YAML
}

df -h /tmp | tail -n 1 | awk '{ print "/tmp: " $4 " free" }'
parts=${PARTS:-folders,hdf5}
if [[ $parts == *folders* ]]; then
echo "== image folders of 32x32 PNGs, $steps steps of batch $batch per run, 2 threads"
start=$(date +%s)
$py - "$work/big" "$work/small" <<'PY'
import io, os, sys
import numpy as np
from PIL import Image
big, small = sys.argv[1], sys.argv[2]
rng = np.random.default_rng(7)
distinct = []
for i in range(2000):
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)).save(buf, "PNG")
    distinct.append(buf.getvalue())
for c in range(10):
    os.makedirs(f"{big}/c{c}")
    os.makedirs(f"{small}/c{c}")
    for i in range(200):
        with open(f"{small}/c{c}/{i:05d}.png", "wb") as f:
            f.write(distinct[c * 200 + i])
    for i in range(20000):
        with open(f"{big}/c{c}/{i:05d}.png", "wb") as f:
            f.write(distinct[(c * 20000 + i) % 2000])
PY
echo "made 200,000 + 2,000 PNG files in $(( $(date +%s) - start )) s ($(du -sh "$work/big" | cut -f1) and $(du -sh "$work/small" | cut -f1))"
# (resize to the size the images have: the reader's images may vary in size, the model's input
# may not; a resize to an image's own size leaves it unchanged)
# The test split is the 2,000-file folder in every run, so that only the training split differs.
folder_data() { printf '  type: image_folder\n  train: %s\n  test: %s\n  transforms: [{type: resize, size: [32, 32]}, {type: normalize, preset: imagenet}]' "$1" "$work/small"; }
# The model's own training memory: the same training (steps, evaluation at eval_batch_size 500)
# on an in-memory synthetic set of 640 images of the same shape (7.5 MiB as float32).
cnn_experiment "$(printf '  type: synthetic\n  classes: 10\n  shape: [3, 32, 32]\n  train_size: 640\n  test_size: 1000')" \
  $(( (steps + 9) / 10 )) 0 32 >"$work/synthetic.yaml"
train "in-memory synthetic, 640 images" "$work/synthetic.yaml"
# 2,000 files: epochs of 32 batches, about $steps steps in all.
cnn_experiment "$(folder_data "$work/small")" $(( (steps + 31) / 32 )) 0 32 >"$work/small.yaml"
train "2,000 files, $(( (steps + 31) / 32 )) epochs" "$work/small.yaml"
# 200,000 files: listed and labelled at the start, the loader reads train_limit of them in
# $steps steps (the first rows: class c0 alone, which does not matter for memory).
cnn_experiment "$(folder_data "$work/big")" 1 "$limit" 32 >"$work/big.yaml"
train "200,000 files, train_limit $limit" "$work/big.yaml"
# ... and all of them: one epoch of 3,125 steps.
cnn_experiment "$(folder_data "$work/big")" 1 0 32 >"$work/bigall.yaml"
train "200,000 files, one whole epoch" "$work/bigall.yaml"
# What opening a split costs by itself: `strata bench --data` reports the resident size after
# open (files listed, labels, rows) and before the loader, and its peak with the loader running.
for f in small bigall; do
  "$strata" bench --data "$work/$f.yaml" --batches 50 --json >"$work/$f.json" 2>&1 ||
    { cat "$work/$f.json"; exit 1; }
  $py -c 'import json, sys; r = json.load(open(sys.argv[1])); print("%-36s resident after open %6.1f MiB, peak %6.1f MiB, %.0f images/s" % ("bench --data, %d files" % r["train_rows"], r["rss_before_loader_bytes"] / 2**20, r["peak_rss_bytes"] / 2**20, r["images_per_second"]))' "$work/$f.json"
done
rm -rf "$work/big" "$work/small" "$work"/run_*  # (FAILED exits: the trap removes all)

fi

[[ $parts == *hdf5* ]] || exit 0
echo "== HDF5"
if [ ! -e "$build/lib/strata/libstrata_hdf5.so" ]; then
  echo "skipped: $build/lib/strata/libstrata_hdf5.so is not built (the hdf5 reader is not in this tree)"
  exit 0
fi
free_gb=$(df -BG --output=avail /tmp | tail -1 | tr -dc 0-9)
if [ "$free_gb" -ge 10 ]; then gib=4; budget=1GB; else gib=2; budget=512MB; fi
echo "/tmp has ${free_gb} GB free: a ${gib} GiB file, memory_budget $budget"
n=$(( gib * 1024 * 1024 * 1024 / (3 * 64 * 64) ))
start=$(date +%s)
$py - "$work/big.h5" "$n" <<'PY'
import sys
import h5py
import numpy as np
path, n = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(3)
block = 4096
with h5py.File(path, "w") as f:
    images = f.create_dataset("train/images", (n, 3, 64, 64), dtype="uint8", chunks=(1, 3, 64, 64))
    labels = f.create_dataset("train/labels", (n,), dtype="int64")
    f.create_dataset("test/images", data=rng.integers(0, 256, size=(1000, 3, 64, 64), dtype=np.uint8))
    f.create_dataset("test/labels", data=np.arange(1000) % 10)
    pattern = rng.integers(0, 256, size=(block, 3, 64, 64), dtype=np.uint8)
    for s in range(0, n, block):
        e = min(n, s + block)
        images[s:e] = np.roll(pattern, s // block, axis=0)[: e - s]
        labels[s:e] = rng.integers(0, 10, size=e - s)
    labels[:10] = np.arange(10)  # every class present
PY
echo "wrote $n images [3, 64, 64] uint8 ($(du -h "$work/big.h5" | cut -f1)) in $(( $(date +%s) - start )) s"
hdf5_data() { printf '  type: hdf5\n  train: %s\n  test: %s\n  memory_budget: %s\n  transforms: [{type: normalize, preset: imagenet}]' "$1" "$1" "$budget"; }
# Training reads train_limit = 1.5 x the budget's worth of samples (so the chunk cache fills up),
# in random order; `strata bench --data` reads 3,000 batches (2.3 GiB) of all the rows.
h5limit=$(( gib * 3 * 1024 * 1024 * 1024 / 8 / (3 * 64 * 64) ))
cnn_experiment "$(hdf5_data "$work/big.h5")" 1 "$h5limit" 64 >"$work/h5.yaml"
train "HDF5 ${gib} GiB, budget $budget, $h5limit rows" "$work/h5.yaml"
cnn_experiment "$(hdf5_data "$work/big.h5")" 1 0 64 >"$work/h5all.yaml"
"$strata" bench --data "$work/h5all.yaml" --batches 3000 --json >"$work/h5all.json" 2>&1 ||
  { cat "$work/h5all.json"; exit 1; }
$py -c 'import json, sys; r = json.load(open(sys.argv[1])); print("%-36s resident after open %6.1f MiB, peak %6.1f MiB, %.0f images/s" % ("bench --data, %d rows, %d read" % (r["train_rows"], r["images"] + 64 * r["warmup"]), r["rss_before_loader_bytes"] / 2**20, r["peak_rss_bytes"] / 2**20, r["images_per_second"]))' "$work/h5all.json"
