#!/bin/bash
# Issue 10, defect 1, as reported: LeNet-5 on a Fashion-MNIST subset whose learning rate explodes
# on the last step of epoch 2 (one step per epoch). The run must stop with a divergence error and
# model.h5 must still be the finite checkpoint of epoch 1.
set -u
: "${STRATA:?}" "${STRATA_SOURCE_DIR:?}" "${PYTHON:?}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$STRATA" train "$STRATA_SOURCE_DIR/experiments/lenet5_fashion.yaml" --out "$work/run" --progress none \
  --set optimizer.momentum=0 --set 'optimizer.schedule={type: step, step_size: 1, gamma: 1e12}' \
  --set train.epochs=3 --set data.train_limit=328 --set data.validation=200 \
  >"$work/out" 2>"$work/err"
rc=$?
cat "$work/out" "$work/err"
[ "$rc" -eq 1 ] || { echo "FAIL: exit status $rc, expected 1"; exit 1; }
grep -q "training diverged in epoch 2: the validation loss is nan" "$work/err" || { echo "FAIL: no divergence error"; exit 1; }
grep -q "was not overwritten and still holds epoch 1" "$work/err" || { echo "FAIL: message does not name the kept epoch"; exit 1; }
"$PYTHON" - "$work/run/model.h5" <<'PY' || exit 1
import sys, h5py, numpy as np
f = h5py.File(sys.argv[1], "r")
assert f["training"].attrs["epoch"] == 1, f["training"].attrs["epoch"]
for name, d in f["model"].items():
    for key, t in d.items():
        v = t[()]
        assert np.isfinite(v).all() and np.abs(v).max() < 1e3, (name, key, np.abs(v).max())
assert np.isfinite(f["history/val_loss"][()]).all()
print("ok: model.h5 holds the finite epoch-1 checkpoint")
PY
