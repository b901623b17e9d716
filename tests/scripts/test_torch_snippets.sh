#!/bin/bash
# The documented h5py/PyTorch snippets run on a model with batch norm (issue 21: they crashed on
# num_batches_tracked, a scalar). The snippets are taken from README.md and
# docs/checkpoint-format.md as they stand, not copied: the README's block (it reads
# runs/lenet5_fashion/model.h5, so it runs in a folder where that is a tiny trained checkpoint)
# and state_dict_from_checkpoint must load into the equivalent torch module with
# load_state_dict(strict=True), which then computes what `strata forward` computes;
# checkpoint_from_state_dict must write a file `strata forward --weights` loads.
set -euo pipefail
: "${STRATA:?}" "${STRATA_SOURCE_DIR:?}" "${PYTHON:=/usr/bin/python3}"
"$PYTHON" -c "import torch, h5py" 2>/dev/null || { echo "skipped: no python3-torch or python3-h5py"; exit 77; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cat >"$work/exp.yaml" <<'YAML'
seed: 2
threads: 1
data: {type: synthetic, classes: 3, shape: [2, 6, 6], train_size: 160, test_size: 20, seed: 4}
model:
  input: [2, 6, 6]
  layers:
    - {name: conv1, type: conv2d, out_channels: 4, kernel: 3, padding: 1}
    - {name: bn1, type: batch_norm}
    - {name: relu1, type: relu}
    - {name: fc1, type: linear, out_features: 3}
optimizer: {type: sgd, lr: 0.05}
train: {epochs: 2, batch_size: 16}
YAML
mkdir -p "$work/cwd/runs"
"$STRATA" train "$work/exp.yaml" --out "$work/cwd/runs/lenet5_fashion" --progress none >"$work/train.log" 2>&1 \
  || { cat "$work/train.log"; exit 1; }
"$PYTHON" - "$work/in.h5" <<'PY'
import sys, h5py, numpy as np
with h5py.File(sys.argv[1], "w") as f:
    f["data"] = np.random.default_rng().standard_normal((5, 2, 6, 6)).astype(np.float32)
PY
"$STRATA" forward "$work/cwd/runs/lenet5_fashion/model.h5" --input "$work/in.h5" --output "$work/strata_out.h5" >/dev/null

cd "$work/cwd"
"$PYTHON" - "$STRATA_SOURCE_DIR" "$work" <<'PY'
import re, sys, h5py, numpy as np, torch
source, work = sys.argv[1], sys.argv[2]

def python_block(markdown, marker):
    """The fenced ```python block of `markdown` that contains `marker` (exactly one)."""
    text = open(f"{source}/{markdown}").read()
    blocks = [b for b in re.findall(r"^```python\n(.*?)^```", text, re.S | re.M) if marker in b]
    assert len(blocks) == 1, f"{markdown}: {len(blocks)} python blocks contain {marker!r}"
    return blocks[0]

class Net(torch.nn.Module):  # the experiment's model, with the same names
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(2, 4, 3, padding=1)
        self.bn1 = torch.nn.BatchNorm2d(4)
        self.fc1 = torch.nn.Linear(4 * 6 * 6, 3)
    def forward(self, x):
        return self.fc1(torch.relu(self.bn1(self.conv1(x))).flatten(1))

with h5py.File(f"{work}/in.h5", "r") as f:
    x = torch.from_numpy(f["data"][()])
with h5py.File(f"{work}/strata_out.h5", "r") as f:
    expected = f["fc1"][()]

def check(state_dict, what):
    net = Net()
    net.load_state_dict(state_dict, strict=True)
    net.eval()
    with torch.no_grad():
        got = net(x).numpy()
    assert np.allclose(got, expected, atol=1e-4), (what, np.abs(got - expected).max())
    assert int(net.bn1.num_batches_tracked) == 20, net.bn1.num_batches_tracked  # 2 epochs x 10 steps
    print(f"ok: {what} loads with strict=True and computes what strata forward does")
    return net

readme = {}
exec(python_block("README.md", "state_dict"), readme)
check(readme["state_dict"], "the README snippet")

doc = {}
exec(python_block("docs/checkpoint-format.md", "def state_dict_from_checkpoint"), doc)
net = check(doc["state_dict_from_checkpoint"]("runs/lenet5_fashion/model.h5"), "state_dict_from_checkpoint")
doc["checkpoint_from_state_dict"](net.state_dict(), f"{work}/converted.h5",
                                  open(f"{work}/exp.yaml").read())
PY
"$STRATA" forward "$work/exp.yaml" --weights "$work/converted.h5" --input "$work/in.h5" --output "$work/back.h5" >/dev/null
"$PYTHON" - "$work/strata_out.h5" "$work/back.h5" <<'PY'
import sys, h5py, numpy as np
with h5py.File(sys.argv[1], "r") as a, h5py.File(sys.argv[2], "r") as b:
    assert np.array_equal(a["fc1"][()], b["fc1"][()]), "checkpoint_from_state_dict changed the model"
print("ok: checkpoint_from_state_dict writes weights strata forward loads")
PY
