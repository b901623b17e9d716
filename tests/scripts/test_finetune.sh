#!/bin/bash
# Fine-tuning: `strata train --weights CKPT` starts from another checkpoint's weights (matched by
# layer name; a shape mismatch names both shapes), and --weights-partial loads what matches and
# lists what it skipped: a new head on a pretrained body.
set -u
: "${STRATA:?}" "${STRATA_SOURCE_DIR:?}"
PYTHON=${PYTHON:-/usr/bin/python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
source "$STRATA_SOURCE_DIR/tests/scripts/lib.sh"  # check, finish

# A body (conv1) and a 4-class head (fc1), on synthetic data.
cat >"$work/a.yaml" <<'YAML'
seed: 1
data: {type: synthetic, classes: 4, shape: [1, 8, 8], train_size: 128, test_size: 32}
model:
  input: [1, 8, 8]
  layers:
    - {name: conv1, type: conv2d, out_channels: 4, kernel: 3, padding: 1}
    - {name: relu1, type: relu}
    - {name: fc1, type: linear, out_features: 4}
optimizer: {type: sgd, lr: 0.05}
train: {epochs: 2, batch_size: 16}
YAML
"$STRATA" train "$work/a.yaml" --out "$work/a" --progress none >"$work/a.log" 2>&1 || { echo "FAIL pretraining"; cat "$work/a.log"; exit 1; }

# The same model, fine-tuned with a learning rate so small that the weights stay where they
# started: they must be the pretrained ones.
"$STRATA" train "$work/a.yaml" --out "$work/b" --progress none --weights "$work/a/model.h5" \
  --set optimizer.lr=1e-20 --set train.epochs=1 >"$work/b.log" 2>&1; rc=$?
check "strict --weights trains" '[ $rc -eq 0 ] && grep -q "fine-tuning from .*loaded all 4 tensors" "$work/b.log"'
check "strict --weights starts from the checkpoint" '"$PYTHON" - "$work/a/model.h5" "$work/b/model.h5" <<PY
import sys, h5py, numpy as np
with h5py.File(sys.argv[1]) as a, h5py.File(sys.argv[2]) as b:
    for name in ("conv1/weight", "conv1/bias", "fc1/weight", "fc1/bias"):
        assert np.allclose(a["model/" + name][()], b["model/" + name][()], atol=1e-6), name
PY'

# A new 3-class head: strict loading names both shapes; partial loading keeps the body.
"$STRATA" train "$work/a.yaml" --out "$work/c" --progress none --weights "$work/a/model.h5" \
  --set 'data.classes=3' --set 'model.layers[2].out_features=3' >"$work/c.log" 2>&1; rc=$?
check "strict --weights: a shape mismatch is an error" '[ $rc -eq 1 ] && grep -q "/model/fc1/weight has shape \[4, 256\] but the model expects \[3, 256\]" "$work/c.log"'
"$STRATA" train "$work/a.yaml" --out "$work/d" --progress none --weights "$work/a/model.h5" --weights-partial \
  --set 'data.classes=3' --set 'model.layers[2].out_features=3' --set optimizer.lr=1e-20 --set train.epochs=1 >"$work/d.log" 2>&1; rc=$?
check "--weights-partial trains" '[ $rc -eq 0 ] && grep -q "loaded 2 of 4 tensors" "$work/d.log"'
check "--weights-partial lists what it skipped" 'grep -q "skipped (initialized as usual): fc1/weight (checkpoint \[4, 256\], model \[3, 256\]), fc1/bias (checkpoint \[4\], model \[3\])" "$work/d.log"'
check "--weights-partial keeps the body" '"$PYTHON" - "$work/a/model.h5" "$work/d/model.h5" <<PY
import sys, h5py, numpy as np
with h5py.File(sys.argv[1]) as a, h5py.File(sys.argv[2]) as d:
    assert np.allclose(a["model/conv1/weight"][()], d["model/conv1/weight"][()], atol=1e-6)
    assert d["model/fc1/weight"].shape == (3, 256)
PY'

# Bad combinations are errors before any work.
"$STRATA" train "$work/a.yaml" --out "$work/e" --weights-partial >"$work/e.log" 2>&1; rc=$?
check "--weights-partial needs --weights" '[ $rc -eq 1 ] && grep -q "needs --weights CKPT" "$work/e.log"'
"$STRATA" train "$work/a.yaml" --out "$work/a" --resume --weights "$work/a/model.h5" >"$work/f.log" 2>&1; rc=$?
check "--weights with --resume is refused" '[ $rc -eq 1 ] && grep -q "give one of them" "$work/f.log"'
"$STRATA" train "$work/a.yaml" --out "$work/g" --weights "$work/nothing.h5" >"$work/g.log" 2>&1; rc=$?
check "--weights names a missing file" '[ $rc -eq 1 ] && grep -q "nothing.h5" "$work/g.log"'

finish
