#!/bin/bash
# A standalone C++ program on the analysis API (examples/analysis_consumer), from an installed
# prefix that has been MOVED (issue 21): install to a temporary prefix, train a checkpoint with
# the installed tool (so the checkpoint records plugin paths inside that prefix), `mv` the prefix,
# build the example against the moved prefix with find_package(Strata) and run it on the
# checkpoint. The recorded paths are gone; the program must find the plugins in the moved
# PREFIX/lib/strata, beside the libstrata_core it runs against, and reproduce the trainer's
# test accuracy.
set -euo pipefail
: "${STRATA:?}" "${STRATA_SOURCE_DIR:?}" "${PYTHON:=python3}"
build_dir=$(dirname "$(dirname "$STRATA")")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

cmake --install "$build_dir" --prefix "$work/first" >/dev/null
cat >"$work/exp.yaml" <<'YAML'
seed: 6
threads: 1
data: {type: synthetic, classes: 3, shape: [1, 8, 8], train_size: 300, test_size: 90, seed: 8,
       preprocess: [{type: normalize, per: channel}]}
model:
  input: [1, 8, 8]
  layers:
    - {name: conv1, type: conv2d, out_channels: 4, kernel: 3}
    - {name: relu1, type: relu}
    - {name: fc1, type: linear, out_features: 3}
optimizer: {type: sgd, lr: 0.05, momentum: 0.9}
train: {epochs: 2, batch_size: 20}
YAML
"$work/first/bin/strata" train "$work/exp.yaml" --out "$work/run" --progress none >"$work/train.log" 2>&1 \
  || { cat "$work/train.log"; fail "train with the installed tool"; }
grep -qF "$work/first/lib/strata/libstrata_layers.so" <("$PYTHON" -c "
import h5py, sys
with h5py.File(sys.argv[1], 'r') as f: print(f['plugins/layers'].attrs['path'])" "$work/run/model.h5") \
  || fail "the checkpoint does not record the installed prefix's plugin paths"

mv "$work/first" "$work/moved"
consumer=$work/consumer
# Under make test-asan the installed libstrata_core is instrumented: a program linked against it
# needs the same compiler and the sanitizer runtimes (as the strata tool itself is linked).
cache="$build_dir/CMakeCache.txt"
sanitize=$(sed -n 's/^STRATA_SANITIZE:STRING=//p' "$cache")
sanitizer_flags=()
if [ -n "$sanitize" ]; then
  sanitizer_flags=("-DCMAKE_CXX_COMPILER=$(sed -n 's/^CMAKE_CXX_COMPILER:[A-Z]*=//p' "$cache")"
                   "-DCMAKE_EXE_LINKER_FLAGS=-fsanitize=$sanitize")
fi
cmake -S "$STRATA_SOURCE_DIR/examples/analysis_consumer" -B "$consumer" -G Ninja \
  -DCMAKE_PREFIX_PATH="$work/moved" -DCMAKE_BUILD_TYPE=Release "${sanitizer_flags[@]}" >"$work/configure.log" 2>&1 \
  || { cat "$work/configure.log"; fail "configure the consumer against the moved prefix"; }
cmake --build "$consumer" >"$work/build.log" 2>&1 || { cat "$work/build.log"; fail "build the consumer"; }

cd "$work"  # nothing relative to the build tree or the source tree
env -u STRATA_PLUGIN_PATH "$consumer/analyze" "$work/run/model.h5" test >"$work/out.txt" 2>&1 \
  || { cat "$work/out.txt"; fail "the consumer failed on the moved prefix"; }
cat "$work/out.txt"
grep -qxF "plugin folder: $work/moved/lib/strata" "$work/out.txt" || fail "the plugin folder is not the moved prefix's"
grep -qE "^loaded layers .* from $work/moved/lib/strata/libstrata_layers.so$" "$work/out.txt" || fail "layers not loaded from the moved prefix"
if grep -qF "$work/first" "$work/out.txt"; then fail "something was loaded by its recorded (old) path"; fi
grep -qxF "conv1/weight has shape [4, 1, 3, 3]" "$work/out.txt" || fail "parameters"
"$PYTHON" - "$work/run/summary.json" "$work/out.txt" <<'PY'
import json, re, sys
expected = json.load(open(sys.argv[1]))["test_accuracy"]
got = float(re.search(r"^accuracy ([0-9.]+) on 90 images$", open(sys.argv[2]).read(), re.M).group(1))
assert abs(got - expected) < 1e-4, (got, expected)
PY
echo "ok: the analysis consumer works from a moved install prefix"
