#!/bin/bash
# Every bad input gets a clear error and exit status 1: no crash, no stack trace, no half-written
# output. Run by ctest with STRATA (the tool) and STRATA_SOURCE_DIR set.
set -u
: "${STRATA:?}" "${STRATA_SOURCE_DIR:?}"
STRATA=$(realpath "$STRATA")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
source "$STRATA_SOURCE_DIR/tests/scripts/lib.sh"
no_temp_files_in=$work  # no half-written output

# A small, valid experiment on the synthetic dataset; each case breaks one thing.
small_experiment >"$work/ok.yaml"
ok="$work/ok.yaml"

"$STRATA" train "$ok" --out "$work/good" --progress none >"$work/good.log" 2>&1 \
  || { echo "FAIL the valid experiment does not train"; cat "$work/good.log"; exit 1; }

printf 'model:\n  input: [1, 8, 8\n  layers: []\n' >"$work/malformed.yaml"
expect_error malformed_yaml "malformed.yaml:3:" -- train "$work/malformed.yaml" --out "$work/run"
expect_error typo_key "unknown key 'stirde'" -- train "$ok" --out "$work/run" --set 'model.layers[0].stirde=2'
expect_error typo_key_suggests "did you mean 'stride'?" -- train "$ok" --out "$work/run" --set 'model.layers[0].stirde=2'
sed 's/padding: 1}/paddnig: 1}/' "$ok" >"$work/typo.yaml"
expect_error typo_in_file "typo.yaml:6:63: model.layers[0].paddnig: unknown key 'paddnig'" -- train "$work/typo.yaml" --out "$work/run"
expect_error typo_in_file_suggests "did you mean 'padding'?" -- train "$work/typo.yaml" --out "$work/run"
expect_error missing_key "missing required key 'epochs'" -- train "$ok" --out "$work/run" --set 'train={batch_size: 16}'
expect_error wrong_type "train.epochs: expected an integer, found 'ten'" -- train "$ok" --out "$work/run" --set train.epochs=ten
expect_error unknown_layer "did you mean 'conv2d'?" -- train "$ok" --out "$work/run" --set 'model.layers[0].type=conv2D'
expect_error unknown_layer_lists "known layer types:" -- train "$ok" --out "$work/run" --set 'model.layers[0].type=conv2D'
expect_error unknown_optimizer "unknown optimizer type 'sgdd'" -- train "$ok" --out "$work/run" --set optimizer.type=sgdd
expect_error unknown_dataset "unknown dataset type 'synthetc'" -- train "$ok" --out "$work/run" --set data.type=synthetc
expect_error unknown_backend "unknown backend type 'cuda'" -- train "$ok" --out "$work/run" --set backend=cuda
expect_error unknown_precision "precision: must be fp32 or bf16, found 'fp16'" -- train "$ok" --out "$work/run" --set precision=fp16
# bf16 on a CPU without AVX512-BF16 (forced by the override): an error naming the feature and the
# layer, never a silent fp32 run.
export STRATA_NO_AVX512BF16=1
expect_error bf16_without_cpu_feature "needs a CPU with AVX512-BF16" -- train "$ok" --out "$work/run" --set precision=bf16
unset STRATA_NO_AVX512BF16
expect_error shapes_do_not_connect "'fc1' gives [20]" -- train "$ok" --out "$work/run" \
  --set 'model.layers=[{name: fc1, type: linear, out_features: 20}, {name: conv2, type: conv2d, out_channels: 4, kernel: 3}]'
expect_error window_does_not_fit "(8 - 3 + 2*0)/3 + 1 = 2.67 is not a whole number" -- train "$ok" --out "$work/run" \
  --set 'model.layers[0]={name: conv1, type: conv2d, out_channels: 4, kernel: 3, stride: 3}'
expect_error missing_dataset "/nonexistent/fashion" -- train "$ok" --out "$work/run" --set 'data={type: idx, dir: /nonexistent/fashion}'

# A truncated IDX file: the header promises 100 images of 8x8, the file holds fewer bytes.
mkdir -p "$work/idx"
/usr/bin/python3 - "$work/idx" <<'PY'
import os, struct, sys
d = sys.argv[1]
def images(name, n, size):
    with open(os.path.join(d, name), "wb") as f:
        f.write(struct.pack(">IIII", 0x803, n, 8, 8) + os.urandom(size))
def labels(name, n):
    with open(os.path.join(d, name), "wb") as f:
        f.write(struct.pack(">II", 0x801, n) + bytes(i % 4 for i in range(n)))
images("train-images-idx3-ubyte", 100, 1000)     # 6400 bytes promised
labels("train-labels-idx1-ubyte", 100)
images("t10k-images-idx3-ubyte", 10, 640)
labels("t10k-labels-idx1-ubyte", 10)
PY
expect_error truncated_dataset "truncated: header says 100 images of 8x8" -- train "$ok" --out "$work/run" --set "data={type: idx, dir: $work/idx}" --set "model.layers[2].out_features=10"
expect_error missing_plugin "plugin $work/nothing.so: no such file" -- train "$ok" --out "$work/run" --set "plugins=[$work/nothing.so]"
wrong_api=$(dirname "$STRATA")/../tests/plugins/libstrata_test_wrong_api.so
expect_error wrong_api_plugin "built for plugin API version" -- train "$ok" --out "$work/run" --set "plugins=[$wrong_api]"
expect_error diverging_loss "training diverged" -- train "$ok" --out "$work/diverge" --set optimizer.lr=1e30
expect_error unknown_command "did you mean 'train'?" -- trian "$ok"
expect_error unknown_option "unknown option '--epochs'" -- train "$ok" --epochs 3

expect_error missing_experiment "train: expected EXP.yaml [options] (missing EXP.yaml)" -- train
expect_error extra_argument "train: unexpected argument 'extra.yaml'" -- train "$ok" extra.yaml
expect_error missing_required_option "the option '--weights' is required" -- forward "$ok" --input x.h5 --output y.h5
expect_error option_needs_value "--out" -- train "$ok" --out
expect_error no_command "no command given" --

# Every subcommand answers --help on stdout with exit status 0, and `strata --help` lists them all.
for command in $("$STRATA" --help | awk '/^commands:/{on=1; next} on && /^  [a-z]/{print $1}'); do
  if "$STRATA" "$command" --help >"$work/help.out" 2>&1 && grep -q "^usage: strata $command" "$work/help.out"; then
    echo "ok   help_$command"; passed=$((passed + 1))
  else
    echo "FAIL help_$command"; sed 's/^/    /' "$work/help.out"; failures=$((failures + 1))
  fi
done

# A checkpoint that does not match the model.
python_data="$work/in.h5"
/usr/bin/python3 - "$python_data" <<'PY'
import sys, h5py, numpy as np
with h5py.File(sys.argv[1], "w") as f:
    f["data"] = np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32)
PY
expect_error checkpoint_mismatch "/model/fc1/weight has shape [4, 256] but the model expects [5, 256]" -- \
  forward "$ok" --weights "$work/good/model.h5" --input "$python_data" --output "$work/out.h5" \
  --set 'model.layers[2].out_features=5'
[ -e "$work/out.h5" ] && { echo "FAIL checkpoint_mismatch wrote $work/out.h5"; failures=$((failures + 1)); }
expect_error forward_bad_layer "the model has no layer 'fc9'" -- \
  forward "$ok" --weights "$work/good/model.h5" --input "$python_data" --output "$work/out.h5" --layers fc9

# An input whose dataset claims 20 GB but stores 128 bytes (found by fuzz_forward_input, where it
# allocated the 20 GB first) is refused before anything is allocated.
expect_error forward_input_claims_more_than_it_stores \
  "dataset /data has shape [2, 1, 637534212, 4] (20.4 GB) but stores only 128 bytes: the file is damaged" -- \
  forward "$ok" --weights "$work/good/model.h5" --output "$work/out.h5" \
  --input "$STRATA_SOURCE_DIR/tests/fuzz/corpus/forward_input/timeout-large-dataset"

# A checkpoint edited with h5py is refused by its checksum until strata_analysis.reseal() rewrites
# it; a flipped byte is refused too (docs/checkpoint-format.md, "Integrity").
cp "$work/good/model.h5" "$work/edited.h5"
/usr/bin/python3 - "$work/edited.h5" <<'PY'
import sys, h5py
with h5py.File(sys.argv[1], "r+") as f:
    f["model/conv1/bias"][0] = 0.5
PY
expect_error checkpoint_edited "(or edited without resealing: docs/checkpoint-format.md" -- inspect "$work/edited.h5"
if PYTHONPATH="$STRATA_SOURCE_DIR/python" /usr/bin/python3 -c 'import sys; from strata_analysis import reseal; reseal(sys.argv[1])' "$work/edited.h5" \
    && "$STRATA" inspect "$work/edited.h5" >"$work/inspect.out" 2>&1; then
  echo "ok   checkpoint_resealed"; passed=$((passed + 1))
else
  echo "FAIL checkpoint_resealed"; sed 's/^/    /' "$work/inspect.out"; failures=$((failures + 1))
fi
cp "$work/good/model.h5" "$work/flipped.h5"
/usr/bin/python3 -c '
import sys
with open(sys.argv[1], "r+b") as f:
    data = bytearray(f.read()); data[len(data) // 2] ^= 0x01; f.seek(0); f.write(data)' "$work/flipped.h5"
expect_error checkpoint_flipped_byte "its contents do not match the CRC-32 checksum it was saved with" -- inspect "$work/flipped.h5"

# STRATA_PLUGIN_PATH adds folders; a folder it names must exist.
mkdir -p "$work/extra"
cp "$(dirname "$STRATA")/../tests/plugins/libstrata_test_sum.so" "$work/extra/"
if STRATA_PLUGIN_PATH="$work/extra" "$STRATA" plugins 2>&1 | grep -qE '^  test_sum +test_sum'; then
  echo "ok   plugin_path_adds_folders"; passed=$((passed + 1))
else
  echo "FAIL plugin_path_adds_folders: test_sum not listed"; failures=$((failures + 1))
fi
STRATA_PLUGIN_PATH="$work/nowhere" expect_error plugin_path_missing_folder "STRATA_PLUGIN_PATH names $work/nowhere, which is not a directory" -- plugins
# ... and one it cannot list is named, with the reason. Root reads any folder, so as root the tool
# runs in a user namespace, where it has no such privilege.
mkdir -p "$work/locked" && chmod 000 "$work/locked" && chmod 711 "$work"
# Where user namespaces are not permitted (a chroot, some containers), root cannot be made to
# fail reading a folder, and the case says so instead of passing.
tool=$STRATA
can_drop_root=1
if [ "$(id -u)" -eq 0 ]; then
  if unshare --user true 2>/dev/null; then
    printf '#!/bin/sh\nexec unshare --user "%s" "$@"\n' "$tool" >"$work/unprivileged" && chmod 755 "$work/unprivileged"
    STRATA=$work/unprivileged
  else
    can_drop_root=0
    echo "SKIP plugin_folder_unreadable: running as root, and unshare --user is not permitted here"
  fi
fi
if [ "$can_drop_root" -eq 1 ]; then
  STRATA_PLUGIN_PATH="$work/locked" expect_error plugin_folder_unreadable "plugin folder $work/locked: cannot list its files: Permission denied" -- plugins
fi
STRATA=$tool
chmod 700 "$work/locked"

finish
