#!/bin/bash
# The augmentation experiment through the CLI, on a Fashion-MNIST subset: a learning rate that
# jumps 10^4-fold after epoch 1 trips the explosion guard in epoch 2. The run must exit with status
# 1 naming the iteration, and model.h5 and best.h5 must still hold epoch 1 with the nested
# /history groups (iterations/..., diagnostics/..., sanity/...) readable by h5py.
set -u
: "${STRATA:?}" "${STRATA_SOURCE_DIR:?}" "${PYTHON:?}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$STRATA" train "$STRATA_SOURCE_DIR/experiments/lenet5_fashion_augment.yaml" --out "$work/run" \
  --progress lines --set 'optimizer.schedule={type: step, step_size: 1, gamma: 10000}' \
  --set train.epochs=3 --set data.train_limit=1224 --set data.validation=200 \
  --set train.log_every=2 --set train.diagnostics_every=3 >"$work/out" 2>"$work/err"
rc=$?
cat "$work/out" "$work/err"
[ "$rc" -eq 1 ] || { echo "FAIL: exit status $rc, expected 1"; exit 1; }
grep -q "initial loss .* (expected about 2.3026 for softmax_cross_entropy at chance: ln(10))" "$work/out" \
  || { echo "FAIL: no initial-loss line"; exit 1; }
grep -Eq "training diverged( at iteration (9|1[0-6]) \(epoch 2|: the loss is .* at epoch 2, iteration (9|1[0-6]))" "$work/err" \
  || { echo "FAIL: no divergence error naming an iteration of epoch 2 (8 steps per epoch)"; exit 1; }
grep -q "was not overwritten and still holds epoch 1" "$work/err" || { echo "FAIL: kept epoch not named"; exit 1; }
[ ! -e "$work/run/summary.json" ] || { echo "FAIL: summary.json written by a failed run"; exit 1; }
"$PYTHON" - "$work/run" <<'PY' || exit 1
import sys, h5py, numpy as np
for name in ("model.h5", "best.h5"):
    f = h5py.File(f"{sys.argv[1]}/{name}", "r")
    assert f["training"].attrs["epoch"] == 1, (name, f["training"].attrs["epoch"])
    h = f["history"]
    it = h["iterations/iteration"][()]
    assert list(it) == [2, 4, 6, 8], it
    assert h["iterations/loss"].shape == (4,) and np.isfinite(h["iterations/loss"][()]).all()
    assert list(h["diagnostics/iteration"][()]) == [3, 6]
    for layer in ("conv1", "conv2", "fc1", "fc2", "fc3"):
        r = h[f"diagnostics/{layer}/update_ratio"][()]
        assert r.shape == (2,) and (r > 0).all(), (layer, r)
    d = h["diagnostics/relu1/dead_fraction"][()]
    assert ((d >= 0) & (d <= 1)).all(), d
    assert abs(h["sanity/expected_initial_loss"][0] - np.log(10)) < 1e-12
    assert h["train_regularization"][0] > 0
print("ok: model.h5 and best.h5 hold epoch 1 with nested history")
PY
