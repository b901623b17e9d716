#!/bin/bash
# Issue 20, security and "files destroyed", from the command line:
#   1. a checkpoint never makes strata load the plugin path it records (inspect, eval, forward);
#   4. --output of eval and of both forward forms refuses its inputs, however spelled (hard link,
#      symbolic link, ./x), and any existing non-regular file (/dev/null, a FIFO, a folder, a link);
#   5. a fresh train into a folder holding a run refuses; --overwrite starts over;
#   6. start-up cleanup removes only Strata's own temporary files; forward killed by SIGTERM
#      mid-write leaves no temporary file (exit status 143);
#   7. a search takes the folder lock train takes.
set -u
: "${STRATA:?}" "${STRATA_SOURCE_DIR:?}" "${PYTHON:=python3}"
build_dir=$(dirname "$(dirname "$STRATA")")
test_plugins="$build_dir/tests/plugins"
work=$(mktemp -d)
background=()
cleanup() {
  for pid in "${background[@]}"; do kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done
  rm -rf "$work"
}
trap cleanup EXIT
unset STRATA_PLUGIN_PATH
source "$STRATA_SOURCE_DIR/tests/scripts/lib.sh"  # expect_error, pass, failed, finish
fail() { failed "$*"; }
ok() { pass "$*"; }

# A small IDX dataset (random pixels, 4 classes), so that eval has dataset files to protect.
mkdir -p "$work/idx"
"$PYTHON" - "$work/idx" <<'PY'
import os, struct, sys, random
d = sys.argv[1]
def write(name, n):
    with open(os.path.join(d, name + "-images-idx3-ubyte"), "wb") as f:
        f.write(struct.pack(">IIII", 0x803, n, 8, 8) + os.urandom(n * 64))
    with open(os.path.join(d, name + "-labels-idx1-ubyte"), "wb") as f:
        f.write(struct.pack(">II", 0x801, n) + bytes(random.randrange(4) for _ in range(n)))
write("train", 96)
write("t10k", 32)
PY
cat >"$work/exp.yaml" <<YAML
seed: 3
backend: reference
threads: 1
plugins: [$test_plugins/libstrata_test_marker.so]
data: {type: idx, dir: $work/idx, classes: 4}
model:
  input: [1, 8, 8]
  layers:
    - {name: conv1, type: conv2d, out_channels: 4, kernel: 3, padding: 1}
    - {name: relu1, type: relu}
    - {name: fc1, type: linear, out_features: 4}
optimizer: {type: sgd, lr: 0.05}
train: {epochs: 1, batch_size: 16}
YAML
export STRATA_TEST_MARKER="$work/marker"

# ---- 1. The checkpoint records test_marker's path; nothing may load it from there. ----
"$STRATA" train "$work/exp.yaml" --out "$work/run" --progress none >"$work/train.log" 2>&1 \
  || { cat "$work/train.log"; fail "training with the marker plugin"; exit 1; }
[ -f "$work/marker" ] || fail "the marker plugin leaves no mark when loaded"
ckpt="$work/run/model.h5"
"$PYTHON" - "$ckpt" "$test_plugins/libstrata_test_marker.so" <<'PY' || fail "checkpoint does not record test_marker's path"
import h5py, os, sys
with h5py.File(sys.argv[1], "r") as f:
    assert os.path.realpath(f["plugins/test_marker"].attrs["path"]) == os.path.realpath(sys.argv[2])
PY
rm -f "$work/marker"
"$PYTHON" -c "import h5py, numpy as np, sys; h5py.File(sys.argv[1], 'w')['data'] = np.random.rand(5, 1, 8, 8).astype(np.float32)" "$work/in.h5"
for command in "inspect $ckpt" "eval $ckpt" "forward $ckpt --input $work/in.h5 --output $work/fwd.h5"; do
  # shellcheck disable=SC2086
  expect_error "$command: recorded plugin path refused" \
    "needs plugin 'test_marker' version 0.0, which is not loaded and is in none of the trusted plugin folders" -- $command
  [ -e "$work/marker" ] && { fail "$command loaded the plugin path the checkpoint records"; rm -f "$work/marker"; }
done
# The experiment the user passes is trusted, and so is a folder in STRATA_PLUGIN_PATH.
"$STRATA" forward "$work/exp.yaml" --weights "$ckpt" --input "$work/in.h5" --output "$work/fwd.h5" >/dev/null 2>&1 \
  && ok "forward EXP.yaml loads the experiment's plugins" || fail "forward EXP.yaml --weights"
mkdir "$work/trusted" && cp "$test_plugins/libstrata_test_marker.so" "$work/trusted/"
rm -f "$work/marker"
STRATA_PLUGIN_PATH="$work/trusted" "$STRATA" inspect "$ckpt" >/dev/null 2>&1 && [ -e "$work/marker" ] \
  && ok "inspect with the plugin's folder in STRATA_PLUGIN_PATH" || fail "inspect with STRATA_PLUGIN_PATH"
sed -i '/^plugins:/d' "$work/exp.yaml"   # the rest of the tests use no test plugin
unset STRATA_TEST_MARKER

# ---- 4. --output never replaces an input nor a non-regular file. ----
"$STRATA" train "$work/exp.yaml" --out "$work/plain" --progress none >/dev/null 2>&1 || fail "train plain"
ckpt="$work/plain/model.h5"
sum_before=$(cat "$ckpt" "$work/in.h5" "$work/exp.yaml" "$work"/idx/* | md5sum)
ln "$ckpt" "$work/hardlink.h5"
ln -s "$ckpt" "$work/symlink.h5"
ln -s "$work/in.h5" "$work/in_link.h5"
ln -s "$work/nowhere.h5" "$work/dangling.h5"
mkfifo "$work/fifo"
mkdir "$work/folder.h5"
same="is the same file as"
expect_error "eval --output = checkpoint" "--output $ckpt $same the checkpoint $ckpt" -- eval "$ckpt" --output "$ckpt"
expect_error "eval --output = checkpoint (./)" "$same the checkpoint" -- eval "$ckpt" --output "$work/plain/./model.h5"
expect_error "eval --output = checkpoint (hard link)" "$same the checkpoint" -- eval "$ckpt" --output "$work/hardlink.h5"
expect_error "eval --output = checkpoint (symlink)" "$same the checkpoint" -- eval "$ckpt" --output "$work/symlink.h5"
expect_error "eval --output = a dataset file" "$same $work/idx/t10k-labels-idx1-ubyte, a file of the dataset's $work/idx" \
  -- eval "$ckpt" --output "$work/idx/t10k-labels-idx1-ubyte"
expect_error "eval --output /dev/null" "--output /dev/null exists and is a character device, not a regular file" -- eval "$ckpt" --output /dev/null
expect_error "eval --output FIFO" "exists and is a FIFO, not a regular file" -- eval "$ckpt" --output "$work/fifo"
expect_error "eval --output folder" "exists and is a folder, not a regular file" -- eval "$ckpt" --output "$work/folder.h5"
expect_error "eval --output dangling link" "exists and is a symbolic link, not a regular file" -- eval "$ckpt" --output "$work/dangling.h5"
expect_error "forward CKPT --output = --input (symlink)" "$same --input $work/in.h5" \
  -- forward "$ckpt" --input "$work/in.h5" --output "$work/in_link.h5"
expect_error "forward CKPT --output = checkpoint (hard link)" "$same the checkpoint $ckpt" \
  -- forward "$ckpt" --input "$work/in.h5" --output "$work/hardlink.h5"
expect_error "forward CKPT --output /dev/null" "exists and is a character device" -- forward "$ckpt" --input "$work/in.h5" --output /dev/null
expect_error "forward EXP --output = --weights (hard link)" "$same --weights $ckpt" \
  -- forward "$work/exp.yaml" --weights "$ckpt" --input "$work/in.h5" --output "$work/hardlink.h5"
expect_error "forward EXP --output = experiment file" "$same the experiment file $work/exp.yaml" \
  -- forward "$work/exp.yaml" --weights "$ckpt" --input "$work/in.h5" --output "$work/./exp.yaml"
expect_error "forward EXP --output = a plugin" "$same the plugin" \
  -- forward "$work/exp.yaml" --weights "$ckpt" --input "$work/in.h5" --output "$build_dir/lib/strata/libstrata_layers.so"
expect_error "forward EXP --output FIFO" "exists and is a FIFO" \
  -- forward "$work/exp.yaml" --weights "$ckpt" --input "$work/in.h5" --output "$work/fifo"
[ -c /dev/null ] || fail "/dev/null is no longer a character device"
[ -p "$work/fifo" ] && [ -L "$work/dangling.h5" ] && [ -d "$work/folder.h5" ] || fail "a non-regular output was replaced"
[ "$(cat "$ckpt" "$work/in.h5" "$work/exp.yaml" "$work"/idx/* | md5sum)" = "$sum_before" ] \
  && ok "inputs unchanged" || fail "an input changed"
"$STRATA" eval "$ckpt" --output "$work/preds.h5" >/dev/null 2>&1 && [ -f "$work/preds.h5" ] \
  && ok "eval --output to a new file" || fail "eval --output to a new file"

# ---- 5. A fresh train into a folder holding a run. ----
sum_before=$(md5sum <"$ckpt")
expect_error "train into a run" "$work/plain: already holds a run (model.h5, summary.json); continue it with --resume, start it over with --overwrite" \
  -- train "$work/exp.yaml" --out "$work/plain" --progress none
[ "$(md5sum <"$ckpt")" = "$sum_before" ] && ok "the run is untouched" || fail "the refused train changed model.h5"
expect_error "--overwrite with --resume" "--overwrite starts the run in DIR over and --resume continues it" \
  -- train "$work/exp.yaml" --out "$work/plain" --overwrite --resume
"$STRATA" train "$work/exp.yaml" --out "$work/plain" --resume --set train.epochs=2 --progress none >/dev/null 2>&1 \
  || fail "--resume into a run"
"$STRATA" train "$work/exp.yaml" --out "$work/plain" --overwrite --progress none >"$work/overwrite.log" 2>&1 \
  || { cat "$work/overwrite.log"; fail "--overwrite"; }
grep -q "^--overwrite: deleted $work/plain/model.h5 of the previous run" "$work/overwrite.log" || fail "--overwrite says nothing"
"$PYTHON" -c "import h5py, sys; assert int(h5py.File(sys.argv[1], 'r')['training'].attrs['epoch']) == 1" "$ckpt" \
  && ok "--overwrite starts over" || fail "--overwrite did not start over (epoch != 1)"

# ---- 6. Start-up cleanup: our own temporaries only. ----
for name in notes.tmp-123 model.h5.tmp-abc data.h5.tmp-42 model.h5.tmp-; do echo keep >"$work/plain/$name"; done
echo partial >"$work/plain/model.h5.tmp-999999"
echo partial >"$work/plain/summary.json.tmp-1"
"$STRATA" train "$work/exp.yaml" --out "$work/plain" --resume --set train.epochs=2 --progress none >"$work/clean.log" 2>&1 \
  || { cat "$work/clean.log"; fail "resume for cleanup"; }
for name in notes.tmp-123 model.h5.tmp-abc data.h5.tmp-42 model.h5.tmp-; do
  [ -f "$work/plain/$name" ] || fail "start-up cleanup deleted $name, which is not Strata's"
done
[ -e "$work/plain/model.h5.tmp-999999" ] || [ -e "$work/plain/summary.json.tmp-1" ] \
  && fail "start-up cleanup left Strata's own partial files" || ok "start-up cleanup"

# forward killed by SIGTERM (or SIGINT) while its temporary file exists: the file goes with it.
"$PYTHON" -c "import h5py, numpy as np, sys; h5py.File(sys.argv[1], 'w')['data'] = np.random.rand(10000, 1, 8, 8).astype(np.float32)" "$work/big.h5"
landed=0 attempts=0
while [ "$landed" -lt 2 ] && [ "$attempts" -lt 8 ]; do
  attempts=$((attempts + 1))
  rm -rf "$work/sig" && mkdir "$work/sig"
  "$STRATA" forward "$ckpt" --input "$work/big.h5" --output "$work/sig/out.h5" --layers conv1,relu1 >/dev/null 2>&1 &
  pid=$!
  # Wait for the temporary file (written, then fsynced: 20 MB), then signal at once.
  start=$SECONDS
  while ! compgen -G "$work/sig/out.h5.tmp-*" >/dev/null; do
    kill -0 "$pid" 2>/dev/null && [ $((SECONDS - start)) -lt 60 ] || break
  done
  seen=0; compgen -G "$work/sig/out.h5.tmp-*" >/dev/null && seen=1
  kill -TERM "$pid" 2>/dev/null
  wait "$pid"
  rc=$?
  [ -z "$(ls "$work/sig" | grep 'tmp-')" ] || fail "forward killed by SIGTERM left a temporary file: $(ls "$work/sig")"
  if [ "$seen" = 1 ] && [ "$rc" -ne 0 ]; then
    landed=$((landed + 1))
    [ "$rc" = 143 ] || fail "forward killed by SIGTERM exited $rc, expected 143"
  fi
done
[ "$landed" = 2 ] && ok "forward killed mid-write twice ($attempts attempts), no temporary file left" \
  || fail "only $landed of $attempts signals landed mid-write"

# ---- 7. search and train share the folder lock. ----
# Long enough to be running while the other command starts; killed afterwards.
cat >"$work/long.yaml" <<'YAML'
seed: 1
threads: 1
data: {type: synthetic, classes: 4, shape: [1, 8, 8], train_size: 2000, test_size: 50}
model:
  input: [1, 8, 8]
  layers:
    - {name: fc1, type: linear, out_features: 4}
optimizer: {type: sgd, lr: 0.01}
train: {epochs: 100000, batch_size: 20}
search:
  metric: train_loss
  trials: 50
  space:
    optimizer.lr: {log_uniform: [0.001, 0.1]}
YAML
"$STRATA" search "$work/long.yaml" --out "$work/s" --concurrency 1 >"$work/search.log" 2>&1 &
search_pid=$!
background+=("$search_pid")
for _ in $(seq 1 400); do [ -d "$work/s/trials" ] && break; sleep 0.05; done
[ -d "$work/s/trials" ] || { cat "$work/search.log"; fail "the search did not start"; }
expect_error "train beside a running search" "$work/s: another strata run is writing to this output folder" \
  -- train "$work/exp.yaml" --out "$work/s" --progress none
expect_error "two searches in one folder" "$work/s: another strata run is writing to this output folder" \
  -- search "$work/long.yaml" --out "$work/s" --resume
kill "$search_pid"; wait "$search_pid" 2>/dev/null
"$STRATA" train "$work/long.yaml" --out "$work/t" --progress lines >"$work/long.log" 2>&1 &
train_pid=$!
background+=("$train_pid")
for _ in $(seq 1 400); do grep -q "^model:" "$work/long.log" && break; sleep 0.05; done
grep -q "^model:" "$work/long.log" || { cat "$work/long.log"; fail "the long run did not start"; }
expect_error "search beside a running train" "$work/t: another strata run is writing to this output folder" \
  -- search "$work/long.yaml" --out "$work/t"
kill "$train_pid"; wait "$train_pid" 2>/dev/null

finish
