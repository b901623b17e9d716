#!/bin/bash
# The plugin SDK and checkpoint analysis, as a new user meets them:
#   1. `cmake --install` into a temporary prefix; the installed tool finds its plugins and core;
#   2. examples/out_of_tree_plugin builds against it with find_package(Strata);
#   3. `strata check-plugin` passes it (and fails the deliberately broken test plugins clearly);
#   4. a tiny experiment lists it under `plugins:` and trains; `strata plugins EXP.yaml` lists it;
#   5. from another folder, with the build folder gone from the path: inspect, eval (the val split
#      matches the trainer's own val metrics) and forward --preprocess on raw images work from the
#      checkpoint and the plugin's folder in STRATA_PLUGIN_PATH (never from the path the checkpoint
#      records); a missing plugin is an error naming it and its version.
set -euo pipefail
: "${STRATA:?}" "${STRATA_SOURCE_DIR:?}" "${PYTHON:=python3}"
build_dir=$(dirname "$(dirname "$STRATA")")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

prefix="$work/prefix"
cmake --install "$build_dir" --prefix "$prefix" >/dev/null
tool="$prefix/bin/strata"
[ -x "$tool" ] || fail "no installed tool"
# Listings go through a file: `grep -q` stops reading at its match, and under pipefail the tool's
# later write to the closed pipe (SIGPIPE) would fail the test.
"$tool" plugins >"$work/plugins.txt"
grep -qE "^  layers +1.0 +$prefix/lib/strata/libstrata_layers.so" "$work/plugins.txt" || fail "installed tool does not load its plugins"
# The tbb backend's copies per instruction-set level (strata/isa.hpp) are installed beside its
# dispatcher, and the installed dispatcher opens them.
for level in generic avx2 avx512; do
  [ -f "$prefix/lib/strata/backend_tbb/$level.so" ] || fail "backend_tbb/$level.so is not installed"
done
grep -qE "^  backend_tbb +1.0 +$prefix/lib/strata/libstrata_backend_tbb.so" "$work/plugins.txt" || fail "installed tbb backend does not load"
STRATA_ISA=generic "$tool" plugins >/dev/null || fail "installed tool with STRATA_ISA=generic"

# 2. The out-of-tree example, against the installed tree only.
example="$work/example"
cp -r "$STRATA_SOURCE_DIR/examples/out_of_tree_plugin" "$example"
rm -rf "$example/build"
# As documented: no build type. strata_add_plugin() must still compile the plugin optimized
# (issue 21: an -O0 plugin ran at 1,912 instead of 3,036 images/s), and a Debug build stays -O0.
cmake -S "$example" -B "$example/build" -G Ninja -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
cmake --build "$example/build" >/dev/null
plugin="$example/build/libstrata_prelu.so"
[ -f "$plugin" ] || fail "the example built no plugin"
ninja -C "$example/build" -t commands | grep -F "prelu.cpp" | grep -qE -- "(^| )-O3( |$)" \
  || fail "without a build type the plugin is not compiled with -O3: $(ninja -C "$example/build" -t commands | grep -F prelu.cpp)"
cmake -S "$example" -B "$work/debug" -G Ninja -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_BUILD_TYPE=Debug >/dev/null
if ninja -C "$work/debug" -t commands | grep -F "prelu.cpp" | grep -qE -- "(^| )-O[1-3s]( |$)"; then
  fail "an explicit Debug build was optimized anyway"
fi
# The example runs its element-wise loops through the SDK's helper (strata/elementwise.hpp).
grep -q '#include "strata/elementwise.hpp"' "$example/prelu.cpp" && grep -q "strata::parallel_elementwise" "$example/prelu.cpp" \
  || fail "the example does not use strata::parallel_elementwise"
[ -f "$prefix/include/strata/elementwise.hpp" ] || fail "strata/elementwise.hpp is not installed"

# 3. check-plugin: every check passes on the example; broken plugins are reported.
"$tool" check-plugin "$plugin" >"$work/check.txt" || { cat "$work/check.txt"; fail "check-plugin failed on prelu"; }
cat "$work/check.txt"
[ "$(grep -cE ' pass ' "$work/check.txt")" = 18 ] || fail "expected 18 passing checks (2 cases x 9)"
grep -q "2 case(s), 18 check(s): 0 failed" "$work/check.txt" || fail "summary line"
tests_plugins="$build_dir/tests/plugins"
if "$tool" check-plugin "$tests_plugins/libstrata_test_bad_gradient.so" >"$work/bad.txt"; then fail "a wrong gradient passed"; fi
grep -qE "gradients +FAIL +36 of 36 gradient elements disagree" "$work/bad.txt" || fail "bad gradient not reported"
expect_error() {  # expect_error TEXT -- ARGS...
  local text=$1; shift 2
  if "$tool" "$@" >/dev/null 2>"$work/err.txt"; then fail "$* succeeded"; fi
  grep -qF "$text" "$work/err.txt" || { cat "$work/err.txt"; fail "$* did not say: $text"; }
}
api=$(sed -nE 's/.*kPluginApi = ([0-9]+);.*/\1/p' "$STRATA_SOURCE_DIR/core/include/strata/plugin.hpp")
expect_error "but this Strata supports version $api; rebuild the plugin against this Strata" -- check-plugin "$tests_plugins/libstrata_test_wrong_api.so"
expect_error "layer type 'relu' is registered twice" -- check-plugin "$tests_plugins/libstrata_test_duplicate_layer.so"
expect_error "register_all() threw an exception: out of cheese" -- check-plugin "$tests_plugins/libstrata_test_throwing.so"
if "$tool" check-plugin "$prefix/lib/strata/libstrata_layers.so" --layer conv2d >"$work/keys.txt"; then fail "conv2d without keys passed"; fi
grep -q "missing required key 'out_channels'" "$work/keys.txt" || fail "missing keys not reported"
"$tool" check-plugin "$prefix/lib/strata/libstrata_layers.so" --layer conv2d --config "{out_channels: 3, kernel: 3, stride: 2}" --input 2,7,7 | grep -q "1 case(s), 9 check(s): 0 failed" || fail "--config"

# 4. Train a tiny experiment that loads the plugin through `plugins:`.
experiment="$example/prelu_fashion.yaml"
"$tool" plugins "$experiment" >"$work/plugins.txt"
grep -qE "^  prelu +1.0 +$plugin" "$work/plugins.txt" || fail "plugins EXP.yaml does not list prelu"
(cd "$work" && "$tool" train "$experiment" --out "$work/run" --progress none \
   --set train.epochs=1 --set data.train_limit=2000 --set data.validation=400 --set data.test_limit=500) >/dev/null
ckpt="$work/run/model.h5"
"$PYTHON" - "$ckpt" "$plugin" <<'PY'
import h5py, sys
with h5py.File(sys.argv[1], "r") as f:
    assert f.attrs["format_version"] == 2
    p = f["plugins/prelu"]
    assert p.attrs["version"] == "1.0" and p.attrs["path"] == sys.argv[2], dict(p.attrs)
    assert set(f["plugins"]) >= {"prelu", "layers", "idx", "normalize", "backend_tbb", "backend_reference"}, list(f["plugins"])
    w = f["model/act1/weight"][()]
    assert w.shape == (6,) and abs(w.mean() - 0.25) < 0.2, w   # starts at 0.25, learned since
PY

# 5. Analysis from another folder, from the checkpoint alone. The checkpoint records prelu's path,
# but a path recorded in a file is never loaded: prelu must come from a trusted folder.
mkdir "$work/elsewhere"
cd "$work/elsewhere"
expect_error "needs plugin 'prelu' version 1.0, which is not loaded and is in none of the trusted plugin folders" -- inspect "$ckpt"
export STRATA_PLUGIN_PATH="$example/build"
"$tool" inspect "$ckpt" >"$work/inspect.txt"
grep -qE "^after 1 epoch \(13 iterations\):$" "$work/inspect.txt" || fail "inspect: training state"
grep -qE "^  act1/weight +\[6\] +6 " "$work/inspect.txt" || fail "inspect: act1/weight row"
grep -qE "^  prelu +1.0 " "$work/inspect.txt" || fail "inspect: plugins"
grep -qE "^  val_accuracy " "$work/inspect.txt" || fail "inspect: last metrics"
"$tool" eval "$ckpt" --split val --output "$work/preds.h5" >"$work/eval.txt"
grep -q "T-shirt/top" "$work/eval.txt" || fail "eval: class names"
"$PYTHON" - "$work/run/summary.json" "$work/eval.txt" "$work/preds.h5" <<'PY'
import json, re, sys, h5py, numpy as np
summary = json.load(open(sys.argv[1]))
text = open(sys.argv[2]).read()
acc, loss = map(float, re.search(r"accuracy ([0-9.]+)  loss ([0-9.]+)", text).groups())
val_acc, val_loss = summary["history"]["val_accuracy"][-1], summary["history"]["val_loss"][-1]
assert abs(acc - val_acc) < 1e-4 and abs(loss - val_loss) < 1e-3, (acc, val_acc, loss, val_loss)
with h5py.File(sys.argv[3], "r") as f:
    p, y, pred = f["probabilities"][()], f["labels"][()], f["predictions"][()]
    assert p.shape == (400, 10) and np.allclose(p.sum(1), 1, atol=1e-5)
    assert (p.argmax(1) == pred).all() and abs((pred == y).mean() - acc) < 1e-6
PY
# forward --preprocess on raw test images = forward on images normalized by hand with the
# checkpoint's statistics: (x - mean) / std (docs/checkpoint-format.md gives the formula).
"$PYTHON" - "$ckpt" "$work/raw.h5" "$work/normalized.h5" <<'PY'
import sys, h5py, numpy as np
rng = np.random.default_rng()
raw = rng.random((5, 1, 28, 28), dtype=np.float32)
with h5py.File(sys.argv[1], "r") as f:
    mean, std = f["preprocess/0.normalize/mean"][()], f["preprocess/0.normalize/std"][()]
with h5py.File(sys.argv[2], "w") as f: f["data"] = raw
with h5py.File(sys.argv[3], "w") as f: f["data"] = ((raw - mean.reshape(1, -1, 1, 1)) / std.reshape(1, -1, 1, 1)).astype(np.float32)
PY
"$tool" forward "$ckpt" --input "$work/raw.h5" --output "$work/a.h5" --preprocess --layers act1,fc3 >/dev/null
"$tool" forward "$ckpt" --input "$work/normalized.h5" --output "$work/b.h5" --layers act1,fc3 >/dev/null
"$PYTHON" - "$work/a.h5" "$work/b.h5" <<'PY'
import sys, h5py, numpy as np
with h5py.File(sys.argv[1], "r") as a, h5py.File(sys.argv[2], "r") as b:
    for name in ("act1", "fc3"):
        assert np.allclose(a[name][()], b[name][()], atol=1e-4), name
    assert a["fc3"].shape == (5, 10)
PY
# The example's export hook: the model exports with prelu as ONNX PRelu, which onnx's checker
# accepts and OpenCV runs as strata forward --preprocess does (skipped, visibly, without them).
"$tool" export "$ckpt" --onnx "$work/prelu.onnx" --preprocess >/dev/null
"$PYTHON" - "$work/prelu.onnx" "$work/raw.h5" "$work/a.h5" <<'PY'
import sys, h5py, numpy as np
try:
    import onnx
except ImportError:
    sys.exit(print("SKIP: python3-onnx is not installed: the exported prelu model is not checked"))
model = onnx.load(sys.argv[1])
onnx.checker.check_model(model, full_check=True)
assert [n.op_type for n in model.graph.node].count("PRelu") == 4, [n.op_type for n in model.graph.node]
try:
    import cv2
except ImportError:
    sys.exit(print("SKIP: python3-opencv is not installed: the exported prelu model is not run"))
net = cv2.dnn.readNetFromONNX(sys.argv[1])
with h5py.File(sys.argv[2], "r") as f, h5py.File(sys.argv[3], "r") as g:
    net.setInput(f["data"][()])
    got, expected = net.forward(), g["fc3"][()]
assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max(), (got, expected)
PY
# A checkpoint whose plugin is gone: the error names it and its version.
rm -rf "$example/build"
unset STRATA_PLUGIN_PATH
expect_error "the checkpoint says it was loaded from $plugin, but a path recorded in a file is never loaded" -- eval "$ckpt"
echo "sdk: all checks passed"
