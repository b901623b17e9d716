#!/bin/bash
# Inputs a careless or hostile user hands to strata (issue 20): YAML that expands forever or holds
# two documents, files that are not regular files (FIFOs, devices, folders, symbolic link loops),
# sizes that overflow, plugins that crash in their registration. Each must be a clear error with
# exit status 1: no crash, no hang, no "internal" error. Run by ctest with STRATA and
# STRATA_SOURCE_DIR set.
set -u
: "${STRATA:?}" "${STRATA_SOURCE_DIR:?}"
STRATA=$(realpath "$STRATA")
tests_plugins=$(dirname "$STRATA")/../tests/plugins
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work" || exit 1
source "$STRATA_SOURCE_DIR/tests/scripts/lib.sh"
crash_pattern="$crash_pattern|internal"  # an "internal" error is a bug, not a clear message

small_experiment >"$work/ok.yaml"
ok="$work/ok.yaml"

# ---- YAML that would recurse forever, or hides a second document ----
{ echo 'a: &x [*x]'; cat "$ok"; } >"$work/anchor.yaml"
expect_error anchor_cycle_in_file "anchor.yaml:1:4: malformed YAML: an alias refers to a list or map that contains it" -- \
  train "$work/anchor.yaml" --out "$work/run"
expect_error anchor_cycle_in_map "malformed YAML: an alias refers to a list or map that contains it" -- \
  train "$ok" --out "$work/run" --set 'seed=&m {a: *m}'
expect_error anchor_cycle_in_set "--set seed=&x [*x]:1:1: malformed YAML: an alias refers to" -- \
  train "$ok" --out "$work/run" --set 'seed=&x [*x]'
# Aliases nest a value deeper than its text: 2 x 300 levels of lists, each within yaml-cpp's limit.
/usr/bin/python3 - "$work/deep_alias.yaml" "$ok" <<'PY'
import sys
deep = "[" * 300 + "1" + "]" * 300
deeper = "[" * 300 + "*d" + "]" * 300
with open(sys.argv[1], "w") as f:
    f.write(f"a: &d {deep}\nb: {deeper}\n" + open(sys.argv[2]).read())
PY
expect_error anchor_depth "malformed YAML: nested deeper than 500 levels of lists or maps (through YAML aliases?)" -- \
  train "$work/deep_alias.yaml" --out "$work/run"
{ cat "$ok"; printf -- '---\nseed: 2\n'; } >"$work/two_documents.yaml"
expect_error two_documents "two_documents.yaml:12:1: the text holds 2 YAML documents (separated by '---')" -- \
  train "$work/two_documents.yaml" --out "$work/run"

# ---- experiment files that are not regular files, or too large ----
expect_error experiment_dev_zero "experiment file /dev/zero: is a character device, not a regular file" -- train /dev/zero --out "$work/run"
mkfifo "$work/fifo.yaml"
expect_error experiment_fifo "experiment file $work/fifo.yaml: is a named pipe (FIFO), not a regular file" -- train "$work/fifo.yaml" --out "$work/run"
ln -s "$work/loop_b.yaml" "$work/loop_a.yaml"; ln -s "$work/loop_a.yaml" "$work/loop_b.yaml"
expect_error experiment_symlink_loop "experiment file $work/loop_a.yaml: is a symbolic link loop" -- train "$work/loop_a.yaml" --out "$work/run"
ln -s "$work/gone.yaml" "$work/dangling.yaml"
expect_error experiment_dangling_link "experiment file $work/dangling.yaml: is a symbolic link to $work/gone.yaml, which does not exist" -- \
  train "$work/dangling.yaml" --out "$work/run"
truncate -s 17M "$work/huge.yaml"
expect_error experiment_too_large "huge.yaml: is 17825792 bytes long, more than the limit of 16777216 bytes (16 MiB)" -- train "$work/huge.yaml" --out "$work/run"

# ---- the default output folder and --out ----
cp "$ok" "$work/..yaml"; cp "$ok" "$work/.yaml"
expect_error dotdot_yaml "..yaml: the file name gives no name for the default output folder" -- train "$work/..yaml"
expect_error dot_yaml ".yaml: the file name gives no name for the default output folder" -- train "$work/.yaml"
check dotdot_yaml_wrote_nothing [ ! -e "$work/runs" ]
expect_error empty_out "--out: empty; give the output folder" -- train "$ok" --out ''
expect_error empty_out_search "--out: empty; give the output folder" -- search "$ok" --out ''

# ---- numbers and lists that were silently wrong ----
expect_error lr_underflow "optimizer.lr: 1e-46 is 0 as a 32-bit float" -- train "$ok" --out "$work/run" --set optimizer.lr=1e-46
expect_error momentum_underflow "optimizer.momentum: -2e-50 is 0 as a 32-bit float" -- \
  train "$ok" --out "$work/run" --set optimizer.momentum=-2e-50
expect_error empty_inputs "model.layers[1].inputs: an empty list" -- train "$ok" --out "$work/run" --set 'model.layers[1].inputs=[]'
expect_error comma_in_layer_name "'a,b' cannot name a layer: it contains ','" -- train "$ok" --out "$work/run" --set 'model.layers[1].name=a,b'
expect_error gradcheck_negative_seed "--seed: must be between 0 and 4294967295 (2^32 - 1), found -1" -- gradcheck "$ok" --seed -1
expect_error gradcheck_empty_layers "--layers: empty" -- gradcheck "$ok" --layers ''
cat >>"$work/block.yaml" <<'YAML'
seed: 1
data: {type: synthetic, classes: 4, shape: [1, 8, 8], train_size: 64, test_size: 32}
model:
  input: [1, 8, 8]
  layers:
    - {name: conv1, type: conv2d, out_channels: 4, kernel: 3, padding: 1}
    - {name: stage, type: residual_basic, out_channels: 4, repeat: 1000000000}
    - {name: fc1, type: linear, out_features: 4}
optimizer: {type: sgd, lr: 0.01}
train: {epochs: 1, batch_size: 16}
YAML
expect_error repeat_huge "block.yaml:7:68: model.layers[1].repeat: 1000000000 copies of block 'stage' (residual_basic" -- \
  train "$work/block.yaml" --out "$work/run"
expect_error repeat_memory "model.layers[1].repeat: 5000 copies of block 'stage' (residual_basic) need at least" -- \
  train "$work/block.yaml" --out "$work/run" --set 'model.layers[1].repeat=5000' --set 'model.layers[1].out_channels=512'

# ---- search: grids that overflow, errors in drawn values ----
cat "$ok" >"$work/grid.yaml"
cat >>"$work/grid.yaml" <<'YAML'
search:
  mode: grid
  metric: train_loss
  epochs: 1
  space:
    optimizer.lr: {log_uniform: [1e-4, 1e-1], points: 100000}
    seed: {int: [1, 1000000], points: 100000}
    train.batch_size: {int: [1, 1000000], points: 100000}
    model.layers[0].out_channels: {int: [1, 1000000], points: 100000}
YAML
expect_error grid_overflow "the grid has more than 100000 points (the axes give optimizer.lr (100000) x seed (100000)" -- \
  search "$work/grid.yaml" --out "$work/grid_run"
cat "$ok" >"$work/drawn.yaml"
cat >>"$work/drawn.yaml" <<'YAML'
search:
  trials: 2
  metric: train_loss
  epochs: 1
  space:
    optimizer.lr: {log_uniform: [1e39, 1e40]}
YAML
expect_error search_drawn_value "search.space.optimizer.lr ($work/drawn.yaml:16:19): drawn value" -- \
  search "$work/drawn.yaml" --out "$work/drawn_run"
grep -q -- "--set" "$work/search_drawn_value.stderr" && { echo "FAIL search_drawn_value quotes a --set"; failures=$((failures + 1)); }

# ---- divergence caused by eps or weight decay, not by the learning rate ----
# A side branch (conv_side) adds nothing to the loss: its gradients are exactly 0, and rmsprop with
# eps 0 divides 0 by sqrt(0).
cat >"$work/eps.yaml" <<'YAML'
seed: 1
data: {type: synthetic, classes: 4, shape: [1, 8, 8], train_size: 64, test_size: 32}
model:
  input: [1, 8, 8]
  layers:
    - {name: conv_side, type: conv2d, out_channels: 2, kernel: 3, inputs: input}
    - {name: conv1, type: conv2d, out_channels: 4, kernel: 3, padding: 1, inputs: input}
    - {name: relu1, type: relu}
    - {name: fc1, type: linear, out_features: 4}
optimizer: {type: rmsprop, lr: 0.001, eps: 0}
train: {epochs: 1, batch_size: 16}
YAML
expect_error divergence_eps "the likely cause is optimizer.eps is 0" -- train "$work/eps.yaml" --out "$work/eps_run" --progress none
expect_error divergence_weight_decay "the likely cause is optimizer.weight_decay is 1000 with lr 0.5" -- \
  train "$ok" --out "$work/wd_run" --progress none --set optimizer.lr=0.5 --set optimizer.weight_decay=1000

# ---- paths that are not regular files, anywhere a user gives one ----
"$STRATA" train "$ok" --out "$work/good" --progress none >"$work/good.log" 2>&1 \
  || { echo "FAIL the valid experiment does not train"; cat "$work/good.log"; exit 1; }
/usr/bin/python3 - "$work/in.h5" <<'PY'
import sys, h5py, numpy as np
with h5py.File(sys.argv[1], "w") as f:
    f["data"] = np.random.default_rng(7).random((3, 1, 8, 8), dtype=np.float32)
PY
mkfifo "$work/fifo.h5"
expect_error checkpoint_fifo "is a named pipe (FIFO), not a regular file" -- inspect "$work/fifo.h5"
expect_error checkpoint_folder "is a folder" -- inspect "$work/good"
expect_error checkpoint_device "/dev/null: is a character device" -- inspect /dev/null
expect_error weights_symlink_loop "is a symbolic link loop" -- \
  forward "$ok" --weights "$work/loop_a.yaml" --input "$work/in.h5" --output "$work/out.h5"
expect_error forward_input_fifo "fifo.h5: is a named pipe (FIFO)" -- \
  forward "$work/good/model.h5" --input "$work/fifo.h5" --output "$work/out.h5"
expect_error forward_empty_layers "--layers: empty" -- \
  forward "$work/good/model.h5" --input "$work/in.h5" --output "$work/out.h5" --layers ''
expect_error forward_empty_layer_name "--layers conv1,,fc1: an empty layer name at character 7" -- \
  forward "$work/good/model.h5" --input "$work/in.h5" --output "$work/out.h5" --layers conv1,,fc1
mkdir -p "$work/resume_loop"; ln -s "$work/resume_loop/model.h5" "$work/resume_loop/model.h5"
expect_error resume_symlink_loop "model.h5: is a symbolic link loop" -- train "$ok" --out "$work/resume_loop" --resume
mkdir -p "$work/idx"; mkfifo "$work/idx/train-images-idx3-ubyte"
expect_error dataset_fifo "dataset file $work/idx/train-images-idx3-ubyte is a named pipe (FIFO)" -- \
  train "$ok" --out "$work/run" --set "data={type: idx, dir: $work/idx}"
expect_error dataset_list_folder "dataset file $work/idx is a folder" -- \
  train "$ok" --out "$work/run" --set "data={type: idx, train_images: $work/idx, train_labels: $work/idx, test_images: $work/idx, test_labels: $work/idx}"

# ---- a checkpoint whose /experiment holds a self-referencing anchor (written by h5py) ----
/usr/bin/python3 - "$work/good/model.h5" "$work/anchor.h5" <<'PY'
import sys, h5py
with h5py.File(sys.argv[1], "r") as src, h5py.File(sys.argv[2], "w") as dst:
    for key, value in src.attrs.items():
        dst.attrs[key] = value
    for name in src:
        if name != "experiment":
            src.copy(src[name], dst, name)
    old = src["experiment"]
    dst.create_dataset("experiment", data="a: &x [*x]\n" + old[()].decode(), dtype=old.dtype)
PY
expect_error checkpoint_anchor_cycle "anchor.h5:/experiment:1:4: malformed YAML: an alias refers to" -- inspect "$work/anchor.h5"

# ---- a plugin that crashes while registering its types ----
mkdir -p "$work/crashing"
cp "$tests_plugins/libstrata_test_crashing.so" "$work/crashing/"
STRATA_PLUGIN_PATH="$work/crashing" expect_error plugins_crash_abort \
  "plugin $work/crashing/libstrata_test_crashing.so: crashed while loading or registering its types (killed by SIGABRT)" -- plugins
# Under AddressSanitizer the SIGSEGV would become ASan's report and an abort: let it through.
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}handle_segv=0"
STRATA_TEST_CRASH=segv STRATA_PLUGIN_PATH="$work/crashing" expect_error plugins_crash_segv \
  "plugin $work/crashing/libstrata_test_crashing.so: crashed while loading or registering its types (killed by SIGSEGV)" -- plugins
STRATA_TEST_CRASH=segv expect_error check_plugin_crash \
  "plugin $work/crashing/libstrata_test_crashing.so: crashed while loading or registering its types (killed by SIGSEGV)" -- \
  check-plugin "$work/crashing/libstrata_test_crashing.so"
# The other plugin errors keep their messages (the child's failure is reported by the parent).
expect_error check_plugin_throwing "register_all() threw an exception: out of cheese" -- \
  check-plugin "$tests_plugins/libstrata_test_throwing.so"
expect_error check_plugin_fifo "is a named pipe (FIFO)" -- check-plugin "$work/fifo.h5"
if "$STRATA" check-plugin "$tests_plugins/libstrata_test_sum.so" --input '3,4,4;3,4,4' >"$work/sum.out" 2>&1; then
  echo "ok   check_plugin_sound_plugin"; passed=$((passed + 1))
else
  echo "FAIL check_plugin_sound_plugin"; sed 's/^/    /' "$work/sum.out"; failures=$((failures + 1))
fi

finish
