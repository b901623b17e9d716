#!/bin/bash
# Crash safety: SIGKILL a training run at random moments (KILLS times, 10 by default; `make
# test-long` uses 50), and after every kill check that model.h5, when present, opens and validates
# (h5py: format, epoch in range, one /history value per epoch, finite weights) and that no
# temporary file is left under the final name. Each restart resumes from model.h5. The chain of
# killed and resumed runs must end bit-identical to one uninterrupted run (reference backend).
set -u
: "${STRATA:?}" "${PYTHON:?}"
KILLS=${KILLS:-10}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cat >"$work/exp.yaml" <<'YAML'
seed: 7
backend: reference
threads: 1
data: {type: synthetic, classes: 4, shape: [1, 10, 10], train_size: 2500, test_size: 100, seed: 3,
       validation: 100, preprocess: [{type: normalize, per: channel}]}
model:
  input: [1, 10, 10]
  layers:
    - {name: conv1, type: conv2d, out_channels: 6, kernel: 3, padding: 1}
    - {name: relu1, type: relu}
    - {name: pool1, type: max_pool, kernel: 2}
    - {name: fc1, type: linear, out_features: 4}
optimizer: {type: sgd, lr: 0.05, momentum: 0.9, schedule: {type: step, step_size: 3, gamma: 0.5}}
train: {epochs: 12, batch_size: 20}
YAML

started=$(date +%s.%N)
"$STRATA" train "$work/exp.yaml" --out "$work/straight" --progress none >"$work/straight.log" 2>&1 \
  || { echo "FAIL: the uninterrupted run failed"; cat "$work/straight.log"; exit 1; }
# The kills land at random moments of a run as long as this one (a fixed window of 0.2-2.2 s let
# a fast machine finish most runs first, and the test ran out of attempts).
duration=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')

source "$(dirname "$0")/checkpoint_helpers.sh"  # validate_checkpoint, same_checkpoints

run=$work/killed
killed=0 finished=0 attempts=0 partials=0
while [ "$killed" -lt "$KILLS" ]; do
  attempts=$((attempts + 1))
  [ "$attempts" -gt $((KILLS * 5)) ] && { echo "FAIL: could not land $KILLS kills"; exit 1; }
  resume=(); [ -f "$run/model.h5" ] && resume=(--resume)
  "$STRATA" train "$work/exp.yaml" --out "$run" --progress none "${resume[@]}" >>"$work/killed.log" 2>&1 &
  pid=$!
  # A random moment in the first 5-95 % of the uninterrupted run's time: start-up, data,
  # training or a save (a resumed run is shorter, and may finish first).
  sleep "$(awk -v r=$RANDOM -v d="$duration" 'BEGIN { print d * (0.05 + 0.9 * r / 32768) }')"
  if kill -KILL "$pid" 2>/dev/null; then
    wait "$pid" 2>/dev/null
    killed=$((killed + 1))
  else
    wait "$pid" || { echo "FAIL: a resumed run failed"; tail -20 "$work/killed.log"; exit 1; }
    finished=1
  fi
  if [ -f "$run/model.h5" ]; then
    epoch=$(validate_checkpoint "$run/model.h5" 12 120) || { echo "FAIL: model.h5 does not validate after kill $killed"; exit 1; }
    echo "kill $killed: model.h5 holds epoch $epoch"
  else
    echo "kill $killed: no checkpoint yet"
  fi
  # A killed save leaves its temporary file (the final name is never touched); the next run in
  # this folder must delete it.
  partials=$((partials + $(find "$run" -maxdepth 1 -name '*.tmp-*' 2>/dev/null | wc -l)))
  if [ "$finished" -eq 1 ]; then rm -rf "$run"; finished=0; echo "(the run finished first; starting over)"; fi
done
# Finish the chain.
resume=(); [ -f "$run/model.h5" ] && resume=(--resume)
"$STRATA" train "$work/exp.yaml" --out "$run" --progress none "${resume[@]}" >>"$work/killed.log" 2>&1 \
  || { echo "FAIL: the final resume failed"; tail -20 "$work/killed.log"; exit 1; }
left=$(find "$run" -maxdepth 1 -name '*.tmp-*')
[ -z "$left" ] || { echo "FAIL: partial files left after the final run: $left"; exit 1; }
echo "partial files seen after a kill and removed by the next run: $partials"

same_checkpoints "$work/straight/model.h5" "$run/model.h5" || exit 1
echo "ok: kill-and-resume is bit-identical to the uninterrupted run"
echo "ok: $KILLS kills"
