#!/bin/bash
# `strata search` under mpirun (docs/search.md, "On MPI"), with the real trainer on synthetic data:
# on 2 ranks and on 3 oversubscribed ranks, the search journals every trial once and writes the
# trials.jsonl, search.h5 and best.yaml that one process writes for the same seed (same trials,
# same metrics and curves: trials are deterministic at 1 thread each), with trials on every rank
# and only rank 0 printing; a rank bound to fewer cores than its trials' threads is warned about;
# ASHA on 3 ranks promotes trials across ranks; a worker killed with
# SIGKILL mid-trial ends the job non-zero, and a one-process --resume runs only the trials that
# had not finished; Ctrl-C (SIGINT to mpirun) stops every rank and --resume finishes the search.
# Registered only where the "mpi" plugin is built (tests/CMakeLists.txt sets MPIEXEC).
set -euo pipefail
: "${STRATA:?}" "${STRATA_SOURCE_DIR:?}" "${MPIEXEC:=mpirun}" "${PYTHON:=/usr/bin/python3}"
source "$STRATA_SOURCE_DIR/tests/scripts/lib.sh"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The tests run as root in CI's container; mpirun refuses that unless told twice.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# Without --bind-to none, OpenMPI binds each rank to one core (docs/search.md, "On MPI").
mpirun=(timeout 120 "$MPIEXEC" --bind-to none)
# status_of CMD...: runs CMD (with the caller's redirections); its exit status goes into $status,
# and a failure does not end the test (set -e).
status_of() { status=0; "$@" || status=$?; }

# Trials of 2 epochs (a fraction of a second each); lr up to 100 makes some explode.
cat >"$work/exp.yaml" <<'YAML'
seed: 1
threads: 1
data: {type: synthetic, shape: [1, 12, 12], train_size: 600, test_size: 50, validation: 100, noise: 0.1}
model:
  input: [1, 12, 12]
  layers:
    - {name: fc1, type: linear, out_features: 64}
    - {name: relu1, type: relu}
    - {name: fc2, type: linear, out_features: 10}
optimizer: {type: sgd, lr: 0.1, momentum: 0.9, weight_decay: 0.0001}
train: {epochs: 2, batch_size: 20}
search:
  seed: 5
  epochs: 2
  threads_per_trial: 1
  space:
    optimizer.lr: {log_uniform: [1e-3, 1e2], name: lr}
    optimizer.weight_decay: {log_uniform: [1e-5, 1e-1], name: reg}
  stages:
    - {trials: 8}
    - {trials: 4, narrow: {top_k: 3}}
YAML

# same_search DIR RANKS: DIR holds the search $work/one holds, run on RANKS ranks (see above).
same_search() {
  "$PYTHON" - "$work/one" "$1" "$2" <<'PY'
import json, sys, h5py, numpy
one, other, ranks = sys.argv[1], sys.argv[2], int(sys.argv[3])
def lines(folder):
    return [json.loads(line) for line in open(f"{folder}/trials.jsonl")]
want, got = lines(one), lines(other)
ids = [(t["stage"], t["index"]) for t in got]
assert len(ids) == len(set(ids)) == len(want) == 12, f"{len(ids)} lines, {len(set(ids))} trials"
by_id = {(t["stage"], t["index"]): t for t in want}
for t in got:
    w = by_id[(t["stage"], t["index"])]
    for key in ("params", "status", "metric", "epochs", "iterations", "last", "initial_loss"):
        assert t[key] == w[key], (t["stage"], t["index"], key, t[key], w[key])
    assert "rank" not in w and 0 <= t["rank"] < ranks, t
used = sorted({t["rank"] for t in got})
assert used == list(range(ranks)), f"trials ran on ranks {used}, expected all {ranks}"
assert any(t["status"] == "exploded" for t in got)
with h5py.File(f"{one}/search.h5") as a, h5py.File(f"{other}/search.h5") as b:
    assert sorted(a["trials"]) == sorted(b["trials"])
    for name, group in a["trials"].items():
        for series, values in group.items():
            if series != "epoch_seconds":
                assert numpy.array_equal(values[()], b["trials"][name][series][()], equal_nan=True), (name, series)
assert open(f"{one}/best.yaml").read() == open(f"{other}/best.yaml").read()
print(f"12 trials on ranks {used}: the same as one process")
PY
}

# Wall time in milliseconds since $1 (date +%s%N).
since() { echo $((($(date +%s%N) - $1) / 1000000)); }

start=$(date +%s%N)
"$STRATA" search "$work/exp.yaml" --out "$work/one" >"$work/one.log" 2>&1
one_ms=$(since "$start")
for ranks in 2 3; do
  extra=()
  [ "$ranks" -gt 2 ] && extra=(--oversubscribe)
  start=$(date +%s%N)
  status_of "${mpirun[@]}" -np "$ranks" "${extra[@]}" "$STRATA" search "$work/exp.yaml" --out "$work/np$ranks" \
    >"$work/np$ranks.log" 2>"$work/np$ranks.err"
  ms=$(since "$start")
  if [ "$status" -ne 0 ]; then
    failed "$ranks ranks: exit status $status" "" "$work/np$ranks.err"
    continue
  fi
  if result=$(same_search "$work/np$ranks" "$ranks" 2>&1); then
    pass "$ranks ranks: $result (${ms} ms; one process ${one_ms} ms)"
  else
    failed "$ranks ranks: not the search one process makes" "$result" "$work/np$ranks.log"
  fi
  headers=$(grep -c '^search: ' "$work/np$ranks.log" || true)
  last_log="$work/np$ranks.err"  # shown if the check fails (a chroot without /sys: hwloc's warnings)
  check "$ranks ranks: only rank 0 prints ($headers header line), nothing on stderr" \
    '[ "$headers" -eq 1 ] && [ ! -s "$work/np$ranks.err" ] &&
     grep -q "^search: .*; $ranks ranks on 1 machine(s), each 1 trial(s) at a time x 1 thread(s) each" "$work/np$ranks.log" &&
     grep -q "^trials run (ASHA: rungs) per rank: rank 0 [0-9]*, rank 1 [0-9]*" "$work/np$ranks.log"'
  last_log=""
done

# mpirun's default binding gives each of 2 ranks one core: 2 threads per trial would share it.
status_of timeout 120 "$MPIEXEC" -np 2 "$STRATA" search "$work/exp.yaml" --out "$work/bound" --threads-per-trial 2 \
  --set 'search.stages=[{trials: 2}]' >"$work/bound.log" 2>&1
check "bound ranks are warned about" '[ "$status" -eq 0 ] &&
  grep -q "^warning: rank 0 may run on 1 core(s) only (the launcher bound it), so its 2 trial thread(s) share them; run mpirun with --bind-to none" "$work/bound.log"'

# ASHA on 3 ranks: 24 trials, rungs at 1, 2 and 4 epochs, the better half promoted. A promotion
# goes to whichever rank is free, and continues from the checkpoint (paused.h5) that the trial's
# last rung left in the search folder, on any rank. About 12 promotions, each on another rank
# than the rung before about 4 times in 10 (measured: 3 to 7 of 12): the chance that none moves
# is below 1 in 500 and falls tenfold with every 4 more.
sed -e 's/log_uniform: \[1e-3, 1e2\]/log_uniform: [1e-3, 1]/' -e 's/^  epochs: 2$/  epochs: 4\n  asha: {min_epochs: 1, eta: 2}/' \
  -e 's/    - {trials: 8}/    - {trials: 24}/' -e '/narrow: {top_k: 3}/d' "$work/exp.yaml" >"$work/asha.yaml"
status_of "${mpirun[@]}" -np 3 --oversubscribe "$STRATA" search "$work/asha.yaml" --out "$work/asha" >"$work/asha.log" 2>&1
if [ "$status" -ne 0 ]; then
  failed "ASHA on 3 ranks: exit status $status" "" "$work/asha.log"
elif result=$("$PYTHON" - "$work/asha" <<'PY' 2>&1
import json, os, sys
folder = sys.argv[1]
lines = [json.loads(line) for line in open(f"{folder}/trials.jsonl")]
rungs, final, on, moved, promotions = {}, {}, {}, 0, 0
for t in lines:
    final[t["index"]] = t["status"]
    if t["status"] not in ("paused", "ok"):
        continue
    rung = t["rung"]
    assert rung == rungs.get(t["index"], -1) + 1, f"trial {t['index']} reached rung {rung} out of turn"
    rungs[t["index"]] = rung
    if rung > 0:
        promotions += 1
        moved += on[t["index"]] != t["rank"]
    on[t["index"]] = t["rank"]
assert len(final) == 24, len(final)
assert all(s in ("ok", "stopped_early", "exploded", "failed") for s in final.values()), final
assert sum(s == "ok" for s in final.values()) >= 1
assert promotions >= 6 and moved >= 1, (promotions, moved)
assert not os.path.exists(f"{folder}/trials"), "paused checkpoints left behind"
print(f"{promotions} promotions, {moved} continued on another rank than the rung before")
PY
); then
  pass "ASHA on 3 ranks: $result"
else
  failed "ASHA on 3 ranks" "$result" "$work/asha.log"
fi

# wait_for_lines FILE N: until FILE has N lines (at most 60 s).
wait_for_lines() {
  for _ in $(seq 1200); do
    [ -f "$1" ] && [ "$(wc -l <"$1")" -ge "$2" ] && return 0
    sleep 0.05
  done
  return 1
}

# rank_pid MPIRUN-PID RANK: the process of that rank, a child of that mpirun.
rank_pid() {
  local child
  for child in $(pgrep -P "$1"); do
    if tr '\0' '\n' <"/proc/$child/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=$2"; then
      echo "$child"
      return 0
    fi
  done
  return 1
}

# journal_check DIR: every trial of the 12 exactly once in DIR's journal.
journal_check() {
  "$PYTHON" -c 'import json, sys
ids = [(t["stage"], t["index"]) for t in map(json.loads, open(sys.argv[1] + "/trials.jsonl"))]
assert len(ids) == len(set(ids)) == 12, ids' "$1"
}

# Longer trials (40 epochs on 3000 images, about a second each) none of which explodes: once two
# are journaled, every rank is mid-trial (a free rank takes the next trial at once; 8 in stage 1).
sed -e 's/log_uniform: \[1e-3, 1e2\]/log_uniform: [1e-3, 1e-1]/' -e 's/train_size: 600/train_size: 3000/' \
  -e 's/^  epochs: 2$/  epochs: 40/' "$work/exp.yaml" >"$work/long.yaml"

# A worker killed mid-trial.
"${mpirun[@]}" -np 3 --oversubscribe "$STRATA" search "$work/long.yaml" --out "$work/kill" \
  >"$work/kill.log" 2>&1 &
job=$!
# `timeout` runs mpirun as its child, and mpirun the ranks.
if wait_for_lines "$work/kill/trials.jsonl" 2 && launcher=$(pgrep -P "$job") &&
   victim=$(rank_pid "$launcher" 2); then
  kill -9 "$victim"
  status_of wait "$job"
  before=$(wc -l <"$work/kill/trials.jsonl")
  check "a worker killed mid-trial ends the job (exit status $status, $before of 12 trials journaled)" \
    '[ "$status" -ne 0 ] && [ "$status" -ne 124 ] && [ "$before" -ge 2 ] && [ "$before" -lt 12 ]'
  status_of "$STRATA" search "$work/long.yaml" --out "$work/kill" --resume \
    >"$work/resume.log" 2>&1
  rerun=$(grep -c '^val_acc: ' "$work/resume.log" || true)
  check "one process resumes it, running only the $((12 - before)) unfinished trial(s)" \
    '[ "$status" -eq 0 ] && [ -f "$work/kill/best.yaml" ] && journal_check "$work/kill" &&
     [ "$rerun" -eq $((12 - before)) ]'
else
  kill "$job" 2>/dev/null || true
  wait "$job" 2>/dev/null || true
  failed "kill a worker: the search did not journal 2 trials, or rank 2 was not found" "" "$work/kill.log"
fi

# Ctrl-C: SIGINT to mpirun, which signals every rank; rank 0 says where the finished trials are.
"${mpirun[@]}" -np 3 --oversubscribe "$STRATA" search "$work/long.yaml" --out "$work/int" \
  >"$work/int.log" 2>&1 &
job=$!
if wait_for_lines "$work/int/trials.jsonl" 2 && launcher=$(pgrep -P "$job"); then
  kill -INT "$launcher"
  status_of wait "$job"
  before=$(wc -l <"$work/int/trials.jsonl")
  check "Ctrl-C stops every rank (exit status $status, $before trials journaled)" \
    '[ "$status" -ne 0 ] && [ "$status" -ne 124 ] && [ "$before" -lt 12 ] &&
     grep -q "^interrupted after .*continue with --resume" "$work/int.log"'
  status_of "${mpirun[@]}" -np 2 "$STRATA" search "$work/long.yaml" --out "$work/int" \
    --resume >"$work/int-resume.log" 2>&1
  check "2 ranks resume it" '[ "$status" -eq 0 ] && [ -f "$work/int/best.yaml" ] && journal_check "$work/int"'
else
  kill "$job" 2>/dev/null || true
  wait "$job" 2>/dev/null || true
  failed "Ctrl-C: the search did not journal 2 trials" "" "$work/int.log"
fi

finish
