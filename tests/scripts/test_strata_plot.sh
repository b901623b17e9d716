#!/bin/bash
# strata-plot: every picture is written, non-empty, a PNG of 800 x 500 pixels, from a checkpoint
# made by a short training run, from a search folder, and from the installed copy; and what each
# picture shows (--dump): the model's first convolution in model order, weights in model order and
# readable for ResNet-sized models, learning-rate ticks and legend, distinct colours, titles, the
# search's metric name and best trial.
set -euo pipefail
: "${STRATA:?}" "${STRATA_SOURCE_DIR:?}" "${PYTHON:=python3}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
plot="$STRATA_SOURCE_DIR/python/strata-plot"

"$STRATA" train "$STRATA_SOURCE_DIR/experiments/lenet5_fashion.yaml" --out "$work/run" --progress none \
  --set train.epochs=2 --set data.train_limit=1500 --set data.validation=300 --set data.test_limit=300 >/dev/null
ckpt="$work/run/model.h5"
# Per-layer diagnostics as the trainer records them (/history/diagnostics/<layer>/<metric> and
# /history/diagnostics/iteration), so that the update-ratio picture is exercised too.
cp "$ckpt" "$work/diag.h5"
"$PYTHON" - "$work/diag.h5" <<'PY'
import sys, h5py, numpy as np
rng = np.random.default_rng()
with h5py.File(sys.argv[1], "a") as f:
    g = f.require_group("history/diagnostics")
    g["iteration"] = np.arange(0, 200, 10, dtype=np.int64)
    for layer in ("conv1", "conv2", "fc1"):
        g[f"{layer}/update_ratio"] = 10 ** rng.uniform(-4, -2, 20)
PY
mkdir -p "$work/search"
"$PYTHON" - "$work/search/trials.jsonl" <<'PY'
import json, sys, numpy as np
rng = np.random.default_rng()
with open(sys.argv[1], "w") as f:
    for i in range(10):
        lr = float(10 ** rng.uniform(-3, -0.5))
        f.write(json.dumps({"params": {"optimizer.lr": lr, "train.batch_size": int(rng.choice([32, 64, 128]))},
                            "metric": float(rng.uniform(0.5, 0.9)), "status": "ok" if i else "failed"}) + "\n")
PY
check_png() {  # check_png FILE...
  "$PYTHON" - "$@" <<'PY'
import struct, sys
for path in sys.argv[1:]:
    data = open(path, "rb").read()
    assert len(data) > 2000, f"{path}: only {len(data)} bytes"
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path}: not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (800, 500), f"{path}: {width}x{height}, expected 800x500"
print("ok:", " ".join(sys.argv[1:]))
PY
}
"$PYTHON" "$plot" "$ckpt" --out "$work/plain" >/dev/null
check_png "$work/plain/curves.png" "$work/plain/filters.png" "$work/plain/weights.png"
[ ! -e "$work/plain/update_ratio.png" ] || fail "update_ratio.png without diagnostics"
"$PYTHON" "$plot" "$work/diag.h5" --out "$work/diag" >/dev/null
check_png "$work/diag/curves.png" "$work/diag/filters.png" "$work/diag/weights.png" "$work/diag/update_ratio.png"
"$PYTHON" "$plot" "$work/search" --out "$work/s" >/dev/null
check_png "$work/s/search.png"
"$PYTHON" "$plot" "$ckpt" --out "$work/svg" --format svg >/dev/null
grep -q "<svg" "$work/svg/curves.svg" || fail "svg"
# Errors name the file.
if "$PYTHON" "$plot" "$work/nothing.h5" --out "$work/x" 2>"$work/err.txt"; then fail "missing file accepted"; fi
grep -q "strata-plot: error: .*nothing.h5" "$work/err.txt" || fail "missing file message"
# The installed copy finds its package.
prefix="$work/prefix"
cmake --install "$(dirname "$(dirname "$STRATA")")" --prefix "$prefix" >/dev/null
"$PYTHON" "$prefix/bin/strata-plot" "$ckpt" --out "$work/installed" >/dev/null
check_png "$work/installed/curves.png"

# ---- What the pictures show (--dump), each case one that the first strata-plot got wrong.
dump() { "$PYTHON" -c "import json, sys; d = json.load(open(sys.argv[1])); print(eval(sys.argv[2]))" "$@"; }
# A model whose alphabetically first 4-D weight (a_depthwise) is not its first convolution (stem),
# trained with a learning rate that drops within one decade.
cat >"$work/order.yaml" <<YAML
seed: 3
data: {type: idx, dir: /usr/share/datasets/fashion-mnist, validation: 128, train_limit: 512, test_limit: 128,
       preprocess: [{type: normalize}]}
model:
  input: [1, 28, 28]
  layers:
    - {name: stem, type: conv2d, out_channels: 8, kernel: 3, padding: 1}
    - {name: relu, type: relu}
    - {name: a_depthwise, type: conv2d, out_channels: 8, kernel: 3, padding: 1, groups: 8}
    - {name: pool, type: global_avg_pool}
    - {name: classifier, type: linear, out_features: 10}
loss: {type: softmax_cross_entropy}
optimizer: {type: sgd, lr: 0.05, momentum: 0.9, schedule: {type: step, step_size: 1, gamma: 0.5}}
train: {epochs: 3, batch_size: 64}
YAML
"$STRATA" train "$work/order.yaml" --out "$work/order" --progress none >/dev/null
"$PYTHON" "$plot" "$work/order/model.h5" --out "$work/order_plots" --dump "$work/order.json" >/dev/null
[ "$(dump "$work/order.json" 'd["filters"]["layer"]')" = stem ] || fail "filters.png does not show the first convolution: $(dump "$work/order.json" 'd["filters"]')"
[ "$(dump "$work/order.json" '" ".join(d["weights"]["layers"])')" = "stem a_depthwise classifier" ] \
  || fail "weights.png is not in model order: $(dump "$work/order.json" 'd["weights"]')"
for panel in 0 1; do
  [ "$(dump "$work/order.json" "len(d['curves']['panels'][$panel]['lr_ticks']) >= 3")" = True ] \
    || fail "the learning-rate axis has too few ticks: $(dump "$work/order.json" "d['curves']['panels'][$panel]")"
  [ "$(dump "$work/order.json" "'learning rate' in d['curves']['panels'][$panel]['legend']")" = True ] \
    || fail "the learning rate is missing from the legend"
done
title=$(dump "$work/order.json" 'd["curves"]["title"]')
case "$title" in *"sgd lr 0.05"*"epoch 3 of 3"*) ;; *) fail "curves title says too little: $title" ;; esac
check_png "$work/order_plots/curves.png" "$work/order_plots/filters.png" "$work/order_plots/weights.png" >/dev/null

# A ResNet-sized checkpoint (h5py): more weights than histograms fit; block layers in run order.
"$PYTHON" - "$work/resnet.h5" <<'PY'
import sys, h5py, numpy as np
rng = np.random.default_rng()
layers = ["conv1", "bn1"]
for stage in range(1, 5):
    for block in range(2):
        for i in (1, 2):
            layers += [f"layer{stage}.{block}.conv{i}", f"layer{stage}.{block}.bn{i}"]
    layers += [f"layer{stage}.0.downsample.0", f"layer{stage}.0.downsample.1"]
layers.append("fc")
experiment = "model:\n  input: [3, 224, 224]\n  layers:\n" + "".join(
    f"    - {{name: {n}, type: t}}\n" for n in ["conv1", "bn1", "relu", "layer1", "layer2", "layer3", "layer4", "fc"])
with h5py.File(sys.argv[1], "w") as f:
    f.attrs["format"] = "strata-checkpoint"
    f.attrs["format_version"] = np.int32(2)
    f["experiment"] = experiment
    for name in sorted(layers):  # alphabetical in the file, as HDF5 lists it anyway
        shape = (8,) if ".bn" in name or name.startswith("bn") or name.endswith("downsample.1") else (8, 8, 3, 3)
        if name == "fc":
            shape = (10, 8)
        f[f"model/{name}/weight"] = rng.normal(0, 0.1, shape).astype(np.float32) + (1 if len(shape) == 1 else 0)
    g = f.create_group("history/diagnostics")
    g["iteration"] = np.arange(0, 300, 10, dtype=np.int64)
    for name in layers:
        g[f"{name}/update_ratio"] = 10 ** rng.uniform(-4, -2, 30)
PY
"$PYTHON" "$plot" "$work/resnet.h5" --out "$work/resnet_plots" --dump "$work/resnet.json" >/dev/null 2>"$work/resnet.err"
[ "$(dump "$work/resnet.json" 'd["weights"]["mode"]')" = percentiles ] || fail "a ResNet-sized weights.png is still one histogram per layer"
expected="conv1 layer1.0.conv1 layer1.0.conv2 layer1.0.downsample.0 layer1.1.conv1 layer1.1.conv2"
[ "$(dump "$work/resnet.json" '" ".join(d["weights"]["layers"][:6])')" = "$expected" ] \
  || fail "ResNet weights not in model order: $(dump "$work/resnet.json" 'd["weights"]["layers"]')"
[ "$(dump "$work/resnet.json" 'd["filters"]["layer"]')" = conv1 ] || fail "ResNet filters not conv1"
lines=$(dump "$work/resnet.json" 'len(d["update_ratio"]["layers"])')
[ "$lines" -gt 20 ] || fail "expected more than 20 update-ratio lines, got $lines"
[ "$(dump "$work/resnet.json" 'len(set(d["update_ratio"]["colors"]))')" = "$lines" ] \
  || fail "update_ratio.png repeats colours among its $lines lines"
check_png "$work/resnet_plots/weights.png" "$work/resnet_plots/update_ratio.png" >/dev/null
grep -q "no curves picture" "$work/resnet.err" || fail "no note for a checkpoint without history"

# A search: the metric's name on the axis, the best trial (from best.yaml's header) marked.
mkdir -p "$work/search2"
"$PYTHON" - "$work/search2" <<'PY'
import json, os, sys, numpy as np
rng = np.random.default_rng()
d = sys.argv[1]
losses = rng.uniform(0.3, 0.9, 8)
with open(os.path.join(d, "trials.jsonl"), "w") as f:
    for i, loss in enumerate(losses):
        f.write(json.dumps({"stage": 0, "index": i, "params": {"optimizer.lr": float(10 ** rng.uniform(-4, -1))},
                            "metric_name": "val_loss", "metric": float(loss), "status": "ok"}) + "\n")
best = int(np.argmin(losses))
with open(os.path.join(d, "best.yaml"), "w") as f:
    f.write(f"# The best trial of `strata search exp.yaml`: stage 1, trial {best}, val_loss {losses[best]:.6f} after 1 epochs.\n")
with open(os.path.join(d, "expected"), "w") as f:
    f.write(str(best))
PY
"$PYTHON" "$plot" "$work/search2" --out "$work/search2_plots" --dump "$work/search2.json" >/dev/null
[ "$(dump "$work/search2.json" 'd["search"]["ylabel"]')" = val_loss ] || fail "the search plot's axis is not the metric's name"
[ "$(dump "$work/search2.json" 'd["search"]["best"]["index"]')" = "$(cat "$work/search2/expected")" ] \
  || fail "the best trial is not the one best.yaml names: $(dump "$work/search2.json" 'd["search"]')"
rm "$work/search2/best.yaml"  # without best.yaml: the lowest loss
"$PYTHON" "$plot" "$work/search2" --out "$work/search2_plots" --dump "$work/search2.json" >/dev/null
[ "$(dump "$work/search2.json" 'd["search"]["best"]["index"]')" = "$(cat "$work/search2/expected")" ] \
  || fail "without best.yaml the best trial is not the lowest val_loss"
check_png "$work/search2_plots/search.png" >/dev/null
echo "strata-plot: ok"
