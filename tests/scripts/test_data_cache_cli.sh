#!/bin/bash
# The decoded cache through `strata train` (docs/data.md, "The decoded cache"): the first run on an
# image folder of mixed JPEG and PNG files of varying sizes writes one HDF5 file per split, a second
# run reads them without decoding (no "wrote" line) and trains to the same result, `strata eval`
# reads the run's split through the same cache, and a changed data section is refused at the
# cache with what differs. Also: the first training batch is measured for the initial loss (a
# folder lists one class first, so the first rows would all be one class).
set -euo pipefail
: "${STRATA:?}" "${STRATA_SOURCE_DIR:?}" "${PYTHON:=python3}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
cd "$work"

"$PYTHON" - <<'PY'
import os
import numpy as np
from PIL import Image
rng = np.random.default_rng()
for split, n in (("train", 40), ("test", 10)):
    for c in range(3):
        folder = f"images/{split}/class{c}"
        os.makedirs(folder)
        for i in range(n):
            h, w = rng.integers(20, 40, 2)
            pixels = (rng.random((h, w, 3)) * 80 + c * 80).astype(np.uint8)
            Image.fromarray(pixels).save(f"{folder}/{i}.jpg" if i % 2 else f"{folder}/{i}.png")
PY
cat > exp.yaml <<'YAML'
seed: 3
data:
  type: image_folder
  train: images/train
  test: images/test
  cache: {path: "cache/folder-{split}.h5", size: 16}
  transforms: [{type: hflip}, {type: normalize}]
  validation: 20
model:
  input: [3, 16, 16]
  layers:
    - {type: conv2d, out_channels: 4, kernel: 3, padding: 1}
    - {type: relu}
    - {type: flatten}
    - {type: linear, out_features: 3}
optimizer: {type: sgd, lr: 0.01, momentum: 0.9}
train: {epochs: 2, batch_size: 8, explode_factor: 0}  # about the cache, not divergence
YAML

"$STRATA" train exp.yaml --out run1 >first.log 2>&1 || { cat first.log; fail "first run"; }
grep -q "cache cache/folder-train.h5: wrote 120 images of \[3, 16, 16\]" first.log || { cat first.log; fail "no cache written for train"; }
grep -q "cache cache/folder-test.h5: wrote 30 images" first.log || { cat first.log; fail "no cache written for test"; }
grep -q "initial loss .* on the first batch (8 training images)" first.log || { cat first.log; fail "initial loss line"; }
"$PYTHON" - <<'PY'
import h5py
with h5py.File("cache/folder-train.h5") as f:
    assert f["images"].shape == (120, 3, 16, 16) and f["images"].dtype == "uint8", f["images"]
    assert f["labels"].shape == (120,)
PY

"$STRATA" train exp.yaml --out run2 --progress none >second.log 2>&1 || { cat second.log; fail "second run"; }
if grep -q "wrote" second.log; then cat second.log; fail "the second run rebuilt the cache"; fi
"$PYTHON" - <<'PY'
import json
a, b = (json.load(open(f"run{i}/summary.json")) for i in (1, 2))
assert a["test_accuracy"] == b["test_accuracy"] and a["test_loss"] == b["test_loss"], (a, b)
PY

"$STRATA" eval run2/model.h5 >eval.txt 2>&1 || { cat eval.txt; fail "eval"; }
grep -q "split test: 30 images" eval.txt || { cat eval.txt; fail "eval read another split"; }
grep -q "class2" eval.txt || { cat eval.txt; fail "eval lacks the class names"; }

# Another reader setting that changes the samples: refused at the cache, saying what differs.
if "$STRATA" train exp.yaml --out run3 --progress none --set data.channels=1 \
     --set 'model.input=[1, 16, 16]' >changed.log 2>&1; then
  cat changed.log; fail "a cache written for other samples was used"
fi
grep -q "data.cache.path: the cache cache/folder-train.h5 was written for another" changed.log \
  || { cat changed.log; fail "the mismatch message"; }
echo "ok: the decoded cache is written once, reread, used by eval and checked"
