#!/bin/bash
# `strata search` end to end on synthetic data: the live lines, the files (h5py reads search.h5),
# kill -9 in the middle and --resume without rerunning finished trials, a cut-off journal line
# dropped on resume, best.yaml trains, and a bad search section fails before any trial with the
# file and line.
set -u
: "${STRATA:?}" "${PYTHON:=/usr/bin/python3}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failures=0
check() { if eval "$2"; then echo "ok   $1"; else echo "FAIL $1"; failures=$((failures + 1)); fi; }

cat >"$work/exp.yaml" <<'YAML'
seed: 1
threads: 1
data: {type: synthetic, shape: [1, 8, 8], train_size: 400, test_size: 50, validation: 100, noise: 0.1}
model:
  input: [1, 8, 8]
  layers:
    - {name: fc1, type: linear, out_features: 16}
    - {name: relu1, type: relu}
    - {name: fc2, type: linear, out_features: 10}
optimizer: {type: sgd, lr: 0.1, momentum: 0.9, weight_decay: 0.0001}
train: {epochs: 3, batch_size: 20}
search:
  seed: 5
  epochs: 3
  space:
    optimizer.lr: {log_uniform: [1e-3, 1e3], name: lr}
    optimizer.weight_decay: {log_uniform: [1e-5, 1e-1], name: reg}
  stages:
    - {trials: 12}
    - {trials: 4, narrow: {top_k: 3}}
YAML

"$STRATA" search "$work/exp.yaml" --out "$work/a" >"$work/a.log" 2>&1
check "search exits 0" '[ $? -eq 0 ] || [ -f "$work/a/best.yaml" ]'
check "lecture-format lines" 'grep -Eq "^val_acc: [0-9]\.[0-9]{6}, lr: [0-9]\.[0-9]{6}e[-+][0-9]+, reg: [0-9]\.[0-9]{6}e[-+][0-9]+, \([0-9]+ / 12\)" "$work/a.log"'
check "huge lr explodes" 'grep -q "val_acc: exploded, lr: .*exploded: loss" "$work/a.log"'
check "per-stage rankings" '[ "$(grep -c "best .* by val_accuracy:" "$work/a.log")" -eq 2 ]'
check "16 journal lines" '[ "$(wc -l <"$work/a/trials.jsonl")" -eq 16 ]'
check "h5py reads search.h5" '"$PYTHON" - "$work/a/search.h5" <<PY
import sys, h5py
with h5py.File(sys.argv[1], "r") as f:
    groups = f["trials"]
    assert len(groups) == 16, len(groups)
    ok = [g for g in groups.values() if g.attrs["status"] == "ok"]
    # 300 training images (400 - 100 held out) in batches of 20: 15 steps per epoch
    assert ok and all(g["val_accuracy"].shape == (3,) and g["iteration_loss"].shape == (45,) for g in ok)
    assert all(g["val_accuracy"][-1] == g.attrs["metric"] for g in ok)
PY'
check "search.json says which axes are log" '"$PYTHON" - "$work/a/search.json" <<PY
import json, sys
space = json.load(open(sys.argv[1]))["space"]
assert space["optimizer.weight_decay"]["log"] is True, space
PY'
check "strata-plot draws the search" '"$PYTHON" "$STRATA_SOURCE_DIR/python/strata-plot" "$work/a" --out "$work/plots" >"$work/plot.log" 2>&1 && [ -s "$work/plots/search.png" ]'
check "best.yaml trains" '"$STRATA" train "$work/a/best.yaml" --out "$work/best" --progress none --set train.epochs=1 >"$work/best.log" 2>&1 && grep -q "^test accuracy" "$work/best.log"'

# kill -9 once two trials are journaled, then resume: every trial exactly once in the journal.
"$STRATA" search "$work/exp.yaml" --out "$work/b" --set search.epochs=6 >"$work/b1.log" 2>&1 &
pid=$!
for _ in $(seq 600); do
  [ -f "$work/b/trials.jsonl" ] && [ "$(wc -l <"$work/b/trials.jsonl")" -ge 2 ] && break
  sleep 0.05
done
kill -9 "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
before=$(wc -l <"$work/b/trials.jsonl")
check "killed mid-search ($before trials journaled)" '[ "$before" -ge 2 ] && [ "$before" -lt 16 ]'
"$STRATA" search "$work/exp.yaml" --out "$work/b" --set search.epochs=6 >"$work/b2.log" 2>&1
check "not resumed without --resume" '[ $? -ne 0 ] && grep -q -- "--resume" "$work/b2.log"'
"$STRATA" search "$work/exp.yaml" --out "$work/b" --set search.epochs=6 --resume >"$work/b3.log" 2>&1
check "resume finishes" '[ $? -eq 0 ] && [ -f "$work/b/best.yaml" ]'
check "resume reran no finished trial" '[ "$("$PYTHON" -c "import json,sys; ids=[(r[\"stage\"],r[\"index\"]) for r in map(json.loads, open(sys.argv[1]))]; print(len(ids), len(set(ids)))" "$work/b/trials.jsonl")" = "16 16" ]'
check "resume says so" 'grep -q "resuming: $before trials" "$work/b3.log"'

# A journal line cut short (kill -9 during the append itself): --resume says it dropped it, and
# reruns that one trial, so every trial is again in the journal exactly once.
last=$(tail -n 1 "$work/b/trials.jsonl")
head -n 15 "$work/b/trials.jsonl" >"$work/b/cut.jsonl"
printf '%s' "${last:0:40}" >>"$work/b/cut.jsonl"
mv "$work/b/cut.jsonl" "$work/b/trials.jsonl"
"$STRATA" search "$work/exp.yaml" --out "$work/b" --set search.epochs=6 --resume >"$work/b4.log" 2>&1
check "a cut-off journal line is dropped" '[ $? -eq 0 ] && grep -q "^note: dropped an incomplete last line of .*trials.jsonl" "$work/b4.log"'
check "and its trial runs again" '[ "$("$PYTHON" -c "import json,sys; ids=[(r[\"stage\"],r[\"index\"]) for r in map(json.loads, open(sys.argv[1]))]; print(len(ids), len(set(ids)))" "$work/b/trials.jsonl")" = "16 16" ] && grep -q "resuming: 3 trials of this stage" "$work/b4.log"'

# Bad input: exit 1 before any trial, naming file, line and key path.
sed 's/optimizer.lr: {log_uniform: \[1e-3, 1e3\]/optimizer.lrr: {log_uniform: [1e-3, 1e3]/' "$work/exp.yaml" >"$work/bad.yaml"
"$STRATA" search "$work/bad.yaml" --out "$work/c" >"$work/c.log" 2>&1
check "bad key path: exit 1" '[ $? -eq 1 ]'
check "bad key path: message" 'grep -q "bad.yaml:16:[0-9]*: search.space.optimizer.lrr: the experiment has no key path" "$work/c.log" && grep -q "did you mean .optimizer.lr.?" "$work/c.log"'
check "bad key path: no trial ran" '[ ! -f "$work/c/trials.jsonl" ]'

if [ "$failures" -ne 0 ]; then
  for log in "$work"/*.log; do echo "--- $log"; sed 's/^/    /' "$log" | tail -40; done
fi
echo "$failures failed"
[ "$failures" -eq 0 ]
