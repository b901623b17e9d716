#!/bin/bash
# Whatever trains also reloads (issue 21): the shipped experiment with data.augment
# (experiments/lenet5_fashion_adam_cosine.yaml), trained briefly, is accepted by eval, inspect and
# forward; eval's val split reproduces the trainer's last validation metrics. Before the fix every
# one of them said "data.augment: unknown key 'augment'".
set -euo pipefail
: "${STRATA:?}" "${STRATA_SOURCE_DIR:?}" "${PYTHON:=python3}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

"$STRATA" train "$STRATA_SOURCE_DIR/experiments/lenet5_fashion_adam_cosine.yaml" --out "$work/run" \
  --progress none --set train.epochs=1 --set data.train_limit=700 --set data.validation=200 \
  --set data.test_limit=100 >"$work/train.log" 2>&1 || { cat "$work/train.log"; fail "train"; }
ckpt=$work/run/model.h5

"$STRATA" eval "$ckpt" --split val >"$work/eval.txt" 2>&1 || { cat "$work/eval.txt"; fail "eval refused the checkpoint"; }
"$PYTHON" - "$work/run/summary.json" "$work/eval.txt" <<'PY'
import json, re, sys
summary = json.load(open(sys.argv[1]))
acc, loss = map(float, re.search(r"accuracy ([0-9.]+)  loss ([0-9.]+)", open(sys.argv[2]).read()).groups())
val_acc, val_loss = summary["history"]["val_accuracy"][-1], summary["history"]["val_loss"][-1]
assert abs(acc - val_acc) < 1e-4 and abs(loss - val_loss) < 1e-3, (acc, val_acc, loss, val_loss)
PY
"$STRATA" inspect "$ckpt" >"$work/inspect.txt" 2>&1 || { cat "$work/inspect.txt"; fail "inspect"; }
grep -qE "^  augment +" "$work/inspect.txt" || { cat "$work/inspect.txt"; fail "inspect: the augment plugin is not recorded"; }
"$PYTHON" - "$work/raw.h5" <<'PY'
import sys, h5py, numpy as np
with h5py.File(sys.argv[1], "w") as f:
    f["data"] = np.random.default_rng().random((3, 1, 28, 28), dtype=np.float32)
PY
"$STRATA" forward "$ckpt" --input "$work/raw.h5" --output "$work/out.h5" --preprocess >"$work/forward.txt" 2>&1 \
  || { cat "$work/forward.txt"; fail "forward"; }
echo "ok: eval, inspect and forward accept a checkpoint trained with data.augment"
