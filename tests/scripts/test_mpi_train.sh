#!/bin/bash
# Data-parallel `strata train` under mpirun (issue 17, docs/distributed.md), on one machine:
#   - N ranks with global batch B end with the weights of one process with batch B (2 and 4
#     ranks; SGD with momentum and weight decay, and Adam; a dataset that does not divide evenly,
#     whose last batch leaves some ranks with no image; batch norm with sync: true), within a
#     relative 1e-5;
#   - the replicas are bitwise identical after every step (distributed.check_replicas: step, a
#     hash of every parameter and optimizer state compared over the ranks), and a plugin that
#     makes them differ is caught and named;
#   - `mpirun -np 1` is bit-identical to a run without MPI;
#   - a checkpoint does not depend on N: 2 ranks for an epoch, then 1, then 4, match one process
#     for all three; a run stopped mid-epoch by SIGTERM on 2 ranks resumes on 4;
#   - a global batch that the ranks cannot share evenly is an error naming both numbers;
#   - a data error on one rank, or a loss that turns NaN, stops every rank with the same message
#     (no hang); SIGKILL of one rank mid-run ends the job non-zero and leaves model.h5 whole, and
#     the run resumes from it.
# Registered only where the MPI plugin is built (tests/CMakeLists.txt).
set -uo pipefail
: "${STRATA:?}" "${STRATA_SOURCE_DIR:?}" "${PYTHON:?}" "${MPIEXEC:=mpirun}" "${TEST_PLUGINS:?}"
source "$STRATA_SOURCE_DIR/tests/scripts/lib.sh"
source "$STRATA_SOURCE_DIR/tests/scripts/checkpoint_helpers.sh"  # validate_checkpoint
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# More ranks than cores on this 2-core machine: --oversubscribe, and --bind-to none so that
# OpenMPI does not pin every rank to one core (docs/distributed.md).
mpirun=("$MPIEXEC" --oversubscribe --bind-to none)

# experiment FILE OPTIMIZER TRAIN-SIZE [EXTRA-YAML]: a small conv net on synthetic data. Smooth
# (tanh, average pooling): with relu and max pooling, a value that rounding puts on the other side
# of 0 or of a window's maximum routes a whole gradient elsewhere, and the ranks' rounding, which
# differs from one process's, then moved a weight by 1e-4 to 1e-2 in some runs: a discrete flip,
# not the arithmetic these comparisons test.
experiment() {
  cat >"$1" <<YAML
seed: 11
backend: tbb
threads: 1
data: {type: synthetic, classes: 4, shape: [3, 12, 12], train_size: $3, test_size: 40, seed: 5,
       validation: 100}
model:
  input: [3, 12, 12]
  layers:
    - {name: conv1, type: conv2d, out_channels: 8, kernel: 3, padding: 1}
    - {name: act1, type: tanh}
    - {name: pool1, type: avg_pool, kernel: 2}
    - {name: fc1, type: linear, out_features: 4}
optimizer: $2
train: {epochs: 2, batch_size: 64, explode_factor: 0}
distributed: {check_replicas: step}
${4:-}
YAML
}

# train_on N LOG ARGS...: strata train on N ranks (0: without mpirun); status in rc.
train_on() {
  local ranks=$1 log=$2
  shift 2
  if [ "$ranks" -eq 0 ]; then
    timeout 120 "$STRATA" train "$@" --progress none >"$log" 2>&1
  else
    timeout 120 "${mpirun[@]}" -np "$ranks" "$STRATA" train "$@" --progress none >"$log" 2>&1
  fi
  rc=$?
}

# compare A B: prints the largest difference over every /model and /optimizer tensor, relative
# to the tensor's largest magnitude (or to 1e-3 when that is smaller: a tensor of rounding noise,
# such as the bias of a conv before batch norm, whose gradient is 0 in exact arithmetic), and
# whether all are bit-identical.
compare() {
  "$PYTHON" - "$1" "$2" <<'PY'
import sys, h5py, numpy as np
a, b = h5py.File(sys.argv[1], "r"), h5py.File(sys.argv[2], "r")
worst, exact, names = 0.0, True, []
for group in ("model", "optimizer"):
    a[group].visititems(lambda n, o: names.append(f"{group}/{n}") if isinstance(o, h5py.Dataset) else None)
for name in names:
    x, y = a[name][()], b[name][()]
    exact = exact and np.array_equal(x, y)
    if x.size and np.issubdtype(x.dtype, np.floating):
        worst = max(worst, float(np.max(np.abs(x - y))) / max(1e-3, float(np.max(np.abs(x)))))
print(f"{worst:.3g} {'exact' if exact else 'inexact'}")
PY
}

# equivalent NAME A B [TOLERANCE]: B's weights and optimizer state within a relative TOLERANCE
# (1e-5) of A's, and each epoch's mean training loss within 1e-5 of A's (relative, or relative to
# 0.01 for a loss below it). The ranks sum the
# gradients in another order than one process does, so the weights drift apart by rounding:
# about 1e-6 after the 30 steps of the short runs. With relu and max pooling, the 500 steps of
# the long runs ended at 1.7e-4 (weights) and 2.5e-3 (momentum) after a resume on 4 ranks from
# some mid-epoch points, while the epoch losses agreed within 2e-8; with the smooth model
# (experiment() says why) they end at 1.2e-6 like the rest. The mid-epoch resumes keep 5e-3 until
# more runs show the spread; the epoch losses tell a wrong batch (which would move them far more)
# from rounding.
equivalent() {
  local result tolerance=${4:-1e-5}
  result=$(compare "$2" "$3")
  local losses
  losses=$("$PYTHON" - "$2" "$3" <<'PY'
import sys, h5py, numpy as np
a, b = (h5py.File(p, "r")["history/train_loss"][()] for p in sys.argv[1:3])
print(float(np.max(np.abs(a - b) / np.maximum(np.abs(a), 0.01))) if a.shape == b.shape else "shapes")
PY
)
  if "$PYTHON" -c "import sys; sys.exit(0 if float('${result% *}') <= $tolerance and float('$losses') <= 1e-5 else 1)"; then
    pass "$1: largest relative difference ${result% *}, epoch losses $losses"
  else
    failed "$1" "largest relative difference ${result% *} (tolerance $tolerance), epoch losses $losses (1e-5)"
  fi
}

# wait_for PATTERN FILE: until FILE holds PATTERN (grep -E), at most 60 s.
wait_for() {
  for _ in $(seq 1200); do
    grep -qE "$1" "$2" 2>/dev/null && return 0
    sleep 0.05
  done
  return 1
}

sgd="{type: sgd, lr: 0.05, momentum: 0.9, weight_decay: 0.0005}"
adam="{type: adam, lr: 0.003, weight_decay: 0.0001}"

# ---- Equivalence with one process ----
# 901 training images: 14 batches of 64 and one of 5 (2 ranks: 3 + 2; 4 ranks: 2 + 1 + 1 + 1).
experiment "$work/sgd.yaml" "$sgd" 1001
train_on 0 "$work/sgd1.log" "$work/sgd.yaml" --out "$work/sgd1"
check "one process trains" "[ $rc -eq 0 ]" || cat "$work/sgd1.log"
for n in 2 4; do
  train_on "$n" "$work/sgd$n-ranks.log" "$work/sgd.yaml" --out "$work/sgd$n-ranks"
  if [ "$rc" -ne 0 ]; then failed "sgd on $n ranks: exit $rc" "" "$work/sgd$n-ranks.log"; continue; fi
  equivalent "sgd with momentum, $n ranks vs one process (check_replicas: step)" \
    "$work/sgd1/model.h5" "$work/sgd$n-ranks/model.h5"
done
grep -q "MPI: 4 rank(s), 4 per node" "$work/sgd4-ranks.log" \
  && pass "the header names the world size, ranks per node and threads per rank" \
  || failed "header" "no 'MPI: 4 rank(s), 4 per node' line" "$work/sgd4-ranks.log"

experiment "$work/adam.yaml" "$adam" 1001
train_on 0 "$work/adam1.log" "$work/adam.yaml" --out "$work/adam1"
train_on 2 "$work/adam2.log" "$work/adam.yaml" --out "$work/adam2"
[ "$rc" -eq 0 ] && equivalent "adam, 2 ranks vs one process" "$work/adam1/model.h5" "$work/adam2/model.h5" \
  || failed "adam on 2 ranks: exit $rc" "" "$work/adam2.log"

# A frozen layer: its parameters still take part in every gradient sum (the buckets are the same
# on every rank), and nothing moves them.
train_on 0 "$work/frozen1.log" "$work/adam.yaml" --out "$work/frozen1" --set 'model.layers[0].freeze=true'
train_on 2 "$work/frozen2.log" "$work/adam.yaml" --out "$work/frozen2" --set 'model.layers[0].freeze=true'
[ "$rc" -eq 0 ] && equivalent "a frozen first layer, 2 ranks vs one process" "$work/frozen1/model.h5" "$work/frozen2/model.h5" \
  || failed "frozen layer on 2 ranks: exit $rc" "" "$work/frozen2.log"

# Threads per rank: without `threads`, a rank takes the node's cores divided by its ranks, and a
# rank that mpirun bound to one core (its default for 1 or 2 ranks) is told so.
sed '/^threads: 1$/d' "$work/sgd.yaml" >"$work/nothreads.yaml"
timeout 120 "$MPIEXEC" -np 1 "$STRATA" train "$work/nothreads.yaml" --out "$work/bound" --progress none \
  --set train.epochs=1 >"$work/bound.log" 2>&1
cores=$(nproc)
if [ "$cores" -gt 1 ]; then
  grep -q "MPI: 1 rank(s), 1 per node (rank 0 on .*), $cores thread(s) per rank" "$work/bound.log" \
    && grep -q "warning: this rank may run on 1 core(s) only (the launcher bound it).*--bind-to none" "$work/bound.log" \
    && pass "1 rank: $cores threads, and a warning that mpirun bound it to one core" \
    || failed "threads per rank and binding" "" "$work/bound.log"
fi
# Under Slurm, --cpus-per-task (SLURM_CPUS_PER_TASK) is what each rank gets.
SLURM_CPUS_PER_TASK=1 timeout 120 "$MPIEXEC" -np 2 --bind-to none -x SLURM_CPUS_PER_TASK "$STRATA" \
  train "$work/nothreads.yaml" --out "$work/slurm" --progress none --set train.epochs=1 \
  >"$work/slurm.log" 2>&1 || true
grep -q "MPI: 2 rank(s), 2 per node (rank 0 on .*), 1 thread(s) per rank" "$work/slurm.log" \
  && ! grep -q "warning: this rank may run" "$work/slurm.log" \
  && pass "SLURM_CPUS_PER_TASK=1: 1 thread per rank, no binding warning" \
  || failed "threads per rank from SLURM_CPUS_PER_TASK" "" "$work/slurm.log"

# srun without PMIx: one task trains as a single process; more are refused before MPI starts
# (Debian's Open MPI would fail in MPI_Init with a message that blames its build).
SLURM_STEP_NUM_TASKS=1 timeout 120 "$STRATA" train "$work/nothreads.yaml" --out "$work/srun1" \
  --progress none --set train.epochs=1 >"$work/srun1.log" 2>&1 && srun1=0 || srun1=$?
[ "$srun1" -eq 0 ] && ! grep -q "^MPI:" "$work/srun1.log" \
  && pass "srun -n 1 without PMIx: a single process" \
  || failed "srun -n 1 without PMIx: exit $srun1" "" "$work/srun1.log"
SLURM_STEP_NUM_TASKS=2 SLURM_MPI_TYPE=pmi2 timeout 120 "$STRATA" train "$work/nothreads.yaml" \
  --out "$work/srun2" --progress none >"$work/srun2.log" 2>&1 && srun2=0 || srun2=$?
[ "$srun2" -ne 0 ] && grep -q "srun started 2 tasks (SLURM_STEP_NUM_TASKS=2) without PMIx (SLURM_MPI_TYPE=pmi2).*srun --mpi=pmix" "$work/srun2.log" \
  && [ ! -e "$work/srun2/model.h5" ] \
  && pass "srun -n 2 without PMIx: an error naming --mpi=pmix, nothing written" \
  || failed "srun -n 2 without PMIx: exit $srun2" "" "$work/srun2.log"

# 898 training images: the last batch holds 2, so on 4 ranks two of them have none.
experiment "$work/uneven.yaml" "$sgd" 998
train_on 0 "$work/uneven1.log" "$work/uneven.yaml" --out "$work/uneven1"
train_on 4 "$work/uneven4.log" "$work/uneven.yaml" --out "$work/uneven4"
[ "$rc" -eq 0 ] && equivalent "a last batch of 2 images on 4 ranks finishes and matches" \
  "$work/uneven1/model.h5" "$work/uneven4/model.h5" \
  || failed "uneven data on 4 ranks: exit $rc" "" "$work/uneven4.log"

# Batch norm with sync: true: the ranks reduce its statistics, so 2 and 4 ranks (two of them with
# no image in the last step, which must still take part in the reductions) equal one process,
# running statistics included. Without sync each rank normalizes its own images (DDP's default):
# not one process's result, but the replicas stay identical (rank 0's running statistics are
# taken at each epoch end).
experiment "$work/syncbn.yaml" "$sgd" 998
# (conv1 without a bias, as before any batch norm: its gradient would be 0 but for rounding.)
sed -i 's/    - {name: act1, type: tanh}/    - {name: bn1, type: batch_norm, sync: true}\n&/; s/kernel: 3, padding: 1}/kernel: 3, padding: 1, bias: false}/' "$work/syncbn.yaml"
train_on 0 "$work/syncbn1.log" "$work/syncbn.yaml" --out "$work/syncbn1"
for n in 2 4; do
  train_on "$n" "$work/syncbn$n.log" "$work/syncbn.yaml" --out "$work/syncbn$n"
  [ "$rc" -eq 0 ] && equivalent "batch_norm sync: true, $n ranks vs one process (running statistics too)" \
    "$work/syncbn1/model.h5" "$work/syncbn$n/model.h5" \
    || failed "sync batch norm on $n ranks: exit $rc" "" "$work/syncbn$n.log"
done
sed 's/sync: true/sync: false/' "$work/syncbn.yaml" >"$work/localbn.yaml"
train_on 2 "$work/localbn.log" "$work/localbn.yaml" --out "$work/localbn"
result=$(compare "$work/syncbn1/model.h5" "$work/localbn/model.h5")
[ "$rc" -eq 0 ] && "$PYTHON" -c "import sys; sys.exit(0 if float('${result% *}') > 1e-4 else 1)" \
  && pass "per-rank batch norm: replicas identical every step, and not one process's result (${result% *})" \
  || failed "per-rank batch norm on 2 ranks: exit $rc, difference ${result% *}" "" "$work/localbn.log"
train_on 1 "$work/syncbn-np1.log" "$work/syncbn.yaml" --out "$work/syncbn-np1"
result=$(compare "$work/syncbn1/model.h5" "$work/syncbn-np1/model.h5")
[ "$rc" -eq 0 ] && [ "${result#* }" = exact ] \
  && pass "batch_norm sync: true under mpirun -np 1 is bit-identical to a run without MPI" \
  || failed "sync batch norm, mpirun -np 1" "exit $rc, $result" "$work/syncbn-np1.log"

# ---- One rank is exactly a plain run ----
train_on 1 "$work/np1.log" "$work/sgd.yaml" --out "$work/np1"
result=$(compare "$work/sgd1/model.h5" "$work/np1/model.h5")
[ "$rc" -eq 0 ] && [ "${result#* }" = exact ] && pass "mpirun -np 1 is bit-identical to a run without MPI" \
  || failed "mpirun -np 1" "exit $rc, $result" "$work/np1.log"
cmp -s <(grep -o '"test_accuracy": [^,]*' "$work/sgd1/summary.json") \
  <(grep -o '"test_accuracy": [^,]*' "$work/np1/summary.json") \
  && pass "mpirun -np 1: the same test accuracy in summary.json" || failed "np1 summary"

# ---- The replica check catches a rank-dependent plugin ----
experiment "$work/skew.yaml" "$sgd" 400 "plugins: [$TEST_PLUGINS/libstrata_test_rank_skew.so]"
sed -i 's/    - {name: fc1, type: linear, out_features: 4}/    - {name: skew, type: test_rank_skew}\n&/' "$work/skew.yaml"
train_on 2 "$work/skew.log" "$work/skew.yaml" --out "$work/skew"
[ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && grep -q "the model replicas differ between ranks after iteration 1" "$work/skew.log" \
  && pass "a plugin that makes the replicas differ is caught after the first step" \
  || failed "replica check" "exit $rc" "$work/skew.log"

# ---- The watchdog: rank 1 hangs in its first forward; rank 0 waits in the step's agreement ----
sed 's/type: test_rank_skew}/type: test_rank_skew, mode: hang}/; s/check_replicas: step}/check_replicas: step, watchdog_seconds: 3}/' \
  "$work/skew.yaml" >"$work/hang.yaml"
start=$SECONDS
train_on 2 "$work/hang.log" "$work/hang.yaml" --out "$work/hang"
[ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && [ $((SECONDS - start)) -lt 60 ] \
  && grep -q "rank 0 of 2 (.*): the loss of iteration 1 has not completed after 3 s" "$work/hang.log" \
  && pass "a hung rank: the watchdog aborts the job after 3 s naming the waiting rank and collective" \
  || failed "watchdog" "exit $rc after $((SECONDS - start)) s" "$work/hang.log"

# ---- A global batch the ranks cannot share ----
train_on 3 "$work/indivisible.log" "$work/sgd.yaml" --out "$work/indivisible"
[ "$rc" -eq 1 ] && grep -q "train.batch_size: 64 is the global batch, split evenly among the 3 ranks" "$work/indivisible.log" \
  && pass "batch 64 on 3 ranks: $(grep -o 'sgd.yaml:[0-9]*:[0-9]*: train.batch_size: 64 is the global batch' "$work/indivisible.log" | head -1)" \
  || failed "indivisible batch" "exit $rc" "$work/indivisible.log"

# ---- Resume with another number of ranks ----
experiment "$work/long.yaml" "$sgd" 1001
sed -i 's/epochs: 2/epochs: 3/' "$work/long.yaml"
train_on 0 "$work/long1.log" "$work/long.yaml" --out "$work/long1"
train_on 2 "$work/chain-a.log" "$work/long.yaml" --out "$work/chain" --set train.epochs=1
train_on 1 "$work/chain-b.log" "$work/long.yaml" --out "$work/chain" --set train.epochs=2 --resume
train_on 4 "$work/chain-c.log" "$work/long.yaml" --out "$work/chain" --resume
[ "$rc" -eq 0 ] && equivalent "an epoch each on 2 ranks, 1 rank and 4 ranks matches one process" \
  "$work/long1/model.h5" "$work/chain/model.h5" || failed "resume chain: exit $rc" "" "$work/chain-c.log"

# Stopped mid-epoch: SIGTERM reaches the ranks at different steps; they agree on one, rank 0
# saves it, and 4 ranks finish the run. A heavier model, so that an epoch lasts a few seconds.
cat >"$work/slow.yaml" <<YAML
seed: 11
backend: tbb
threads: 1
data: {type: synthetic, classes: 4, shape: [3, 16, 16], train_size: 16100, test_size: 40, seed: 5,
       validation: 100}
model:
  input: [3, 16, 16]
  layers:
    - {name: conv1, type: conv2d, out_channels: 32, kernel: 3, padding: 1}
    - {name: act1, type: tanh}
    - {name: conv2, type: conv2d, out_channels: 32, kernel: 3, padding: 1}
    - {name: act2, type: tanh}
    - {name: pool1, type: avg_pool, kernel: 2}
    - {name: fc1, type: linear, out_features: 4}
optimizer: {type: sgd, lr: 0.01, momentum: 0.9}
train: {epochs: 2, batch_size: 64, explode_factor: 0, eval_batch_size: 100}
YAML
SLOW_STEPS=250  # 16000 training images in batches of 64
train_on 0 "$work/slow1.log" "$work/slow.yaml" --out "$work/slow1"
"${mpirun[@]}" -np 2 "$STRATA" train "$work/slow.yaml" --out "$work/slow" --progress bar \
  >"$work/slow-a.log" 2>&1 &
launcher=$!
wait_for "epoch 1/2 \[[= ]*\] ([4-9]|[1-9][0-9])/$SLOW_STEPS " "$work/slow-a.log"
pkill -TERM -P "$launcher" -f "strata train"
wait "$launcher"
rc=$?
held=$(validate_checkpoint "$work/slow/model.h5" 2 $SLOW_STEPS 2>/dev/null)
# Mid-epoch is expected (the epoch lasts seconds), but any whole checkpoint resumes.
[ "$rc" -eq 143 ] && [ -n "$held" ] && grep -q "interrupted: stopped after" "$work/slow-a.log" \
  && pass "SIGTERM on 2 ranks: exit 143, they agreed on a step, model.h5 holds epoch(+step) $held" \
  || failed "SIGTERM on 2 ranks" "exit $rc, model.h5 holds '$held'" "$work/slow-a.log"
train_on 4 "$work/slow-b.log" "$work/slow.yaml" --out "$work/slow" --resume
[ "$rc" -eq 0 ] && equivalent "stopped on 2 ranks, finished on 4, matches one process" \
  "$work/slow1/model.h5" "$work/slow/model.h5" 5e-3 || failed "resume on 4 ranks: exit $rc" "" "$work/slow-b.log"

# ---- Faults ----
# A loss that turns NaN: every rank sees the global loss and stops with the same message.
train_on 2 "$work/nan.log" "$work/sgd.yaml" --out "$work/nan" --set optimizer.lr=1e12
[ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && grep -qiE "loss is (nan|inf)|diverged" "$work/nan.log" \
  && ! grep -q "MPI_ABORT" "$work/nan.log" \
  && pass "a NaN loss stops every rank cleanly: $(grep -iE 'loss is|diverged' "$work/nan.log" | head -1 | cut -c1-100)" \
  || failed "NaN on 2 ranks" "exit $rc" "$work/nan.log"

# A bad image read by one rank: an image folder with one truncated PNG among 80.
"$PYTHON" - "$work/images" <<'PY'
import sys, numpy as np
from pathlib import Path
from PIL import Image
rng = np.random.default_rng(4)
for split, count in (("train", 40), ("test", 4)):
    for label in ("a", "b"):
        folder = Path(sys.argv[1]) / split / label
        folder.mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
cut = Path(sys.argv[1]) / "train" / "b" / "07.png"
cut.write_bytes(cut.read_bytes()[:60])
PY
cat >"$work/folder.yaml" <<YAML
seed: 3
threads: 1
data: {type: image_folder, train: $work/images/train, test: $work/images/test,
       transforms: [{type: center_crop, size: 12}]}
model:
  input: [3, 12, 12]
  layers:
    - {name: fc1, type: linear, out_features: 2}
optimizer: {type: sgd, lr: 0.01}
train: {epochs: 1, batch_size: 8, explode_factor: 0}
YAML
train_on 2 "$work/bad.log" "$work/folder.yaml" --out "$work/bad"
[ "$rc" -eq 1 ] && grep -qE "rank [01] of 2: .*07\.png" "$work/bad.log" && ! grep -q "MPI_ABORT" "$work/bad.log" \
  && pass "a bad image on one rank stops both with its message: $(grep -oE "rank [01] of 2: .{0,90}" "$work/bad.log" | head -1)" \
  || failed "bad image on 2 ranks" "exit $rc" "$work/bad.log"

# SIGKILL of one rank mid-run (in epoch 2, once epoch 1 is saved): the job ends non-zero naming
# it, model.h5 stays whole, and the run resumes from it.
"${mpirun[@]}" -np 2 "$STRATA" train "$work/slow.yaml" --out "$work/killed" --progress bar \
  >"$work/kill.log" 2>&1 &
launcher=$!
wait_for "epoch 2/2 \[[= ]*\] ([4-9]|[1-9][0-9])/$SLOW_STEPS " "$work/kill.log"
victim=$(pgrep -P "$launcher" -f "strata train" | tail -1)
[ -n "$victim" ] && kill -KILL "$victim"
wait "$launcher"
rc=$?
held=$(validate_checkpoint "$work/killed/model.h5" 2 $SLOW_STEPS 2>/dev/null)
[ -n "$victim" ] && [ "$rc" -ne 0 ] && [ -n "$held" ] && grep -qiE "signal 9|killed" "$work/kill.log" \
  && pass "SIGKILL of a rank: exit $rc, model.h5 whole (epoch $held), the launcher names the rank" \
  || failed "SIGKILL of a rank" "victim '$victim', exit $rc, model.h5 '$held'" "$work/kill.log"
train_on 2 "$work/kill-resume.log" "$work/slow.yaml" --out "$work/killed" --resume
[ "$rc" -eq 0 ] && equivalent "the killed run, resumed on 2 ranks, matches one process" \
  "$work/slow1/model.h5" "$work/killed/model.h5" 5e-3 || failed "resume after SIGKILL: exit $rc" "" "$work/kill-resume.log"

finish
