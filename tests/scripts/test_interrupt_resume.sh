#!/bin/bash
# Ctrl-C and SIGTERM during `strata train` (issue 21): the run stops at the next step boundary,
# saves a resumable checkpoint of that point (in the middle of an epoch), prints the exact
# command that continues it and exits 130 (SIGINT) or 143 (SIGTERM). A chain of interrupted and
# resumed runs (SIGINT, then SIGTERM, then two SIGINTs back to back: the second kills the process
# at once if it arrives after the first was handled, or merges with it) ends bit-identical to
# one uninterrupted run. The model has dropout, batch norm
# and augmentation, so the random generator, the running statistics and the loader's per-sample
# draws must all continue exactly from the middle of an epoch.
set -u
set -m  # job control: background runs get the default SIGINT disposition, not "ignored"
: "${STRATA:?}" "${PYTHON:?}"
source "$(dirname "$0")/checkpoint_helpers.sh"  # validate_checkpoint, same_checkpoints
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
EPOCHS=3 STEPS=56   # 1120 training images in batches of 20

cat >"$work/exp.yaml" <<YAML
seed: 11
backend: reference
threads: 1
data: {type: synthetic, classes: 4, shape: [3, 12, 12], train_size: 1220, test_size: 40, seed: 5,
       validation: 100, preprocess: [{type: normalize, per: channel}],
       augment: [{type: random_crop, padding: 1}, {type: hflip}]}
model:
  input: [3, 12, 12]
  layers:
    - {name: conv1, type: conv2d, out_channels: 16, kernel: 3, padding: 1}
    - {name: bn1, type: batch_norm}
    - {name: relu1, type: relu}
    - {name: pool1, type: max_pool, kernel: 2}
    - {name: drop1, type: dropout, keep_prob: 0.7}
    - {name: fc1, type: linear, out_features: 4}
optimizer: {type: adam, lr: 0.003, schedule: {type: cosine}}
train: {epochs: $EPOCHS, batch_size: 20}
YAML

"$STRATA" train "$work/exp.yaml" --out "$work/straight" --progress none >"$work/straight.log" 2>&1 \
  || { cat "$work/straight.log"; fail "the uninterrupted run failed"; }

# interrupt SIGNAL COUNT [resume]: starts a run, waits until its progress bar shows step 4 or
# later of some epoch, sends SIGNAL COUNT times; leaves the exit status in $status.
interrupt() {
  local signal=$1 count=$2; shift 2
  : >"$work/run.log"
  "$STRATA" train "$work/exp.yaml" --out "$work/run" --progress bar "$@" >"$work/run.log" 2>&1 &
  local pid=$! waited=0
  until grep -qE "\] ([4-9]|[1-5][0-9])/$STEPS " "$work/run.log"; do
    sleep 0.05
    waited=$((waited + 1))
    [ "$waited" -lt 1200 ] || { kill -KILL "$pid"; cat "$work/run.log"; fail "no progress after 60 s"; }
  done
  for _ in $(seq "$count"); do kill -"$signal" "$pid"; done
  wait "$pid"
  status=$?
}

# Started with --overwrite (as `make run` does): the printed command must leave it out, since
# --overwrite and --resume together are refused.
interrupt INT 1 --overwrite
[ "$status" -eq 130 ] || { cat "$work/run.log"; fail "SIGINT: exit status $status, expected 130"; }
grep -qE "interrupted: stopped after iteration [0-9]+ \(epoch 1, step [0-9]+ of $STEPS\)" "$work/run.log" \
  || { cat "$work/run.log"; fail "SIGINT: no 'interrupted: stopped after ...' line"; }
grep -qF "continue with: strata train $work/exp.yaml --progress bar --out $work/run --resume" "$work/run.log" \
  || { cat "$work/run.log"; fail "SIGINT: no 'continue with' command"; }
held=$(validate_checkpoint "$work/run/model.h5" $EPOCHS $STEPS) || fail "the checkpoint after SIGINT does not validate"
case $held in *+*) ;; *) fail "SIGINT landed at an epoch boundary ($held), expected mid-epoch";; esac
echo "SIGINT: exit 130, model.h5 holds epoch $held"
[ ! -f "$work/run/summary.json" ] || fail "an interrupted run wrote summary.json"

interrupt TERM 1 --resume
[ "$status" -eq 143 ] || { cat "$work/run.log"; fail "SIGTERM: exit status $status, expected 143"; }
grep -qE "^resuming .* in epoch 1 after step [0-9]+ of $STEPS" "$work/run.log" || { cat "$work/run.log"; fail "resume line"; }
held=$(validate_checkpoint "$work/run/model.h5" $EPOCHS $STEPS) || fail "the checkpoint after SIGTERM does not validate"
echo "SIGTERM: exit 143, model.h5 holds epoch $held"

# Two at once: the first asks for a clean stop, a second one handled separately kills (maybe in
# the middle of the save, which is atomic). Whatever model.h5 holds must validate and resume.
interrupt INT 2 --resume
held=$(validate_checkpoint "$work/run/model.h5" $EPOCHS $STEPS) || fail "the checkpoint after two SIGINTs does not validate"
echo "two SIGINTs: exit $status, model.h5 holds epoch $held"

"$STRATA" train "$work/exp.yaml" --out "$work/run" --progress none --resume >"$work/final.log" 2>&1 \
  || { cat "$work/final.log"; fail "the final resume failed"; }
[ -f "$work/run/summary.json" ] || fail "the finished run wrote no summary.json"
same_checkpoints "$work/straight/model.h5" "$work/run/model.h5" || fail "the resumed chain differs from the uninterrupted run"
echo "ok: interrupted and resumed three times, bit-identical to the uninterrupted run"
