#!/bin/bash
# strata import on the command line: a small PyTorch CNN exported by torch.onnx.export (a batch
# norm that stays a node, avg_pool2d with count_include_pad written as Pad + AveragePool, a
# grouped strided conv, and x.view(x.size(0), -1) as Shape/Gather/Unsqueeze/Concat/Reshape)
# imports, and the result runs in strata forward (PyTorch's logits within 1e-4), strata eval and
# strata train --weights. Bad input (not ONNX, truncated, an unsupported operator, opset 18, an
# existing output without --overwrite) is an error that writes nothing. Skipped (exit 77) when
# python3-torch, python3-h5py or python3-onnx is missing.
# lib.sh's helpers look at the exit status of commands that fail on purpose, so no `set -e`.
set -uo pipefail
: "${STRATA:?}" "${STRATA_SOURCE_DIR:?}"
PYTHON=${PYTHON:-/usr/bin/python3}
if ! "$PYTHON" -c "import torch, h5py, onnx" 2>/dev/null; then
  echo "SKIP: python3-torch, python3-h5py or python3-onnx is not installed; install them to test strata import"
  exit 77
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
source "$STRATA_SOURCE_DIR/tests/scripts/lib.sh"

"$PYTHON" - "$work" <<'PY' || { echo "FAIL: making the ONNX files"; exit 1; }
import sys, h5py, numpy as np, onnx, torch
from torch import nn
work = sys.argv[1]
torch.manual_seed(1)

class Tiny(nn.Module):
    def __init__(self, activation):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.act = activation
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.AvgPool2d(3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=2)
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        x = self.pool(self.bn(self.act(self.conv1(x))))
        x = self.act(self.conv2(x))
        return self.fc(x.view(x.size(0), -1))

def export(model, path, x):
    torch.onnx.export(model, x, path, opset_version=13, do_constant_folding=True,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})

model = Tiny(nn.ReLU()).eval()
with torch.no_grad():
    model.bn.running_mean.uniform_(-0.5, 0.5)
    model.bn.running_var.uniform_(0.5, 1.5)
    model.bn.weight.uniform_(0.5, 1.5)
    model.bn.bias.uniform_(-0.5, 0.5)
x = torch.randn(3, 3, 16, 16)
export(model, f"{work}/tiny.onnx", x)
with torch.no_grad():
    np.save(f"{work}/expected.npy", model(x).numpy())
with h5py.File(f"{work}/x.h5", "w") as f:
    f["data"] = x.numpy()
export(Tiny(nn.ELU()).eval(), f"{work}/elu.onnx", x)

class Modern(nn.Module):
    """What needs the interop layer keys: padding_mode, round: ceil, pool dilation, a pad
    layer with [top, bottom, left, right], batch_norm momentum: null, softmax axis."""
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1, padding_mode="reflect")
        self.bn = nn.BatchNorm2d(6, momentum=None)
        self.ceil = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.pad = nn.ZeroPad2d((0, 1, 0, 1))
        self.dilated = nn.MaxPool2d(2, stride=1, dilation=2)
        self.head = nn.Conv2d(6, 4, 1)

    def forward(self, x):
        x = self.ceil(self.bn(torch.relu(self.conv(x))))
        x = self.dilated(self.pad(x))
        return torch.softmax(self.head(x), dim=2).flatten(1)

modern = Modern().eval()
with torch.no_grad():
    modern.bn.running_mean.uniform_(-0.5, 0.5)
    modern.bn.running_var.uniform_(0.5, 1.5)
    np.save(f"{work}/modern_expected.npy", modern(x).numpy())
export(modern, f"{work}/modern.onnx", x)
newer = onnx.load(f"{work}/tiny.onnx")
newer.opset_import[0].version = 18
onnx.save(newer, f"{work}/opset18.onnx")
data = open(f"{work}/tiny.onnx", "rb").read()
open(f"{work}/truncated.onnx", "wb").write(data[: len(data) * 2 // 3])
open(f"{work}/text.onnx", "w").write("not a model\n")
PY

run "$work/import.log" import "$work/tiny.onnx" --out "$work/tiny"
check "import succeeds" '[ $rc -eq 0 ]'
check "import prints the nodes per operator" 'grep -q "nodes: .*Conv 2.*BatchNormalization 1" "$work/import.log"'
check "import prints the layers and files" 'grep -q "mapped to .* layers: .*batch_norm 1" "$work/import.log" && grep -q "wrote .*experiment.yaml .*weights.h5" "$work/import.log"'
check "the view() chain is one flatten, the Pad one avg_pool" \
  'grep -q "type: flatten" "$work/tiny/experiment.yaml" && grep -q "type: avg_pool, kernel: 3, stride: 2, padding: 1, round: floor}" "$work/tiny/experiment.yaml" && ! grep -q "type: pad" "$work/tiny/experiment.yaml"'

run "$work/forward.log" forward "$work/tiny/experiment.yaml" --weights "$work/tiny/weights.h5" \
  --input "$work/x.h5" --output "$work/y.h5"
check "strata forward of the imported model gives PyTorch's logits" '[ $rc -eq 0 ] && "$PYTHON" - "$work" <<PY
import sys, h5py, numpy as np
work = sys.argv[1]
expected = np.load(work + "/expected.npy")
with h5py.File(work + "/y.h5") as f:
    actual = f[list(f.keys())[0]][()]
error = np.abs(actual - expected).max() / np.abs(expected).max()
print("max relative error", error)
assert actual.shape == expected.shape and error <= 1e-4, error
PY'
run "$work/forward_checkpoint.log" forward "$work/tiny/weights.h5" --input "$work/x.h5" --output "$work/y2.h5"
check "strata forward takes weights.h5 alone" '[ $rc -eq 0 ] && cmp -s <("$PYTHON" -c "import h5py,sys; f=h5py.File(sys.argv[1]); print(f[list(f)[0]][()].tobytes().hex())" "$work/y.h5") <("$PYTHON" -c "import h5py,sys; f=h5py.File(sys.argv[1]); print(f[list(f)[0]][()].tobytes().hex())" "$work/y2.h5")'
run "$work/eval.log" eval "$work/tiny/weights.h5"
check "strata eval runs on weights.h5 (its placeholder data)" '[ $rc -eq 0 ]'
run "$work/train.log" train "$work/tiny/experiment.yaml" --weights "$work/tiny/weights.h5" \
  --out "$work/run" --progress none
check "strata train --weights fine-tunes the imported model" '[ $rc -eq 0 ] && grep -q "loaded all" "$work/train.log"'

run "$work/modern.log" import "$work/modern.onnx" --out "$work/modern"
check "the interop layer keys are written" '[ $rc -eq 0 ] && grep -q "padding_mode: reflect" "$work/modern/experiment.yaml" && grep -q "round: ceil" "$work/modern/experiment.yaml" && grep -q "dilation: 2" "$work/modern/experiment.yaml" && grep -q "type: pad, padding: \[0, 1, 0, 1\]" "$work/modern/experiment.yaml" && grep -q "momentum: null" "$work/modern/experiment.yaml" && grep -q "type: softmax, axis: -2" "$work/modern/experiment.yaml"'
run "$work/modern_forward.log" forward "$work/modern/weights.h5" --input "$work/x.h5" --output "$work/modern_y.h5"
check "and compute what PyTorch computes" '[ $rc -eq 0 ] && "$PYTHON" - "$work" <<PY
import sys, h5py, numpy as np
work = sys.argv[1]
expected = np.load(work + "/modern_expected.npy")
with h5py.File(work + "/modern_y.h5") as f:
    actual = f[list(f.keys())[0]][()]
error = np.abs(actual - expected).max() / np.abs(expected).max()
print("max relative error", error)
assert actual.shape == expected.shape and error <= 1e-4, error
PY'

# Bad input: an error, and nothing written.
no_temp_files_in=$work
expect_error "an existing output needs --overwrite" "experiment.yaml exists; --overwrite replaces it" -- \
  import "$work/tiny.onnx" --out "$work/tiny"
expect_success "--overwrite replaces it" -- import "$work/tiny.onnx" --out "$work/tiny" --overwrite
expect_error "not ONNX" "text.onnx: not an ONNX model" -- import "$work/text.onnx" --out "$work/text"
expect_error "truncated" "truncated.onnx: not an ONNX model, or a truncated one" -- \
  import "$work/truncated.onnx" --out "$work/truncated"
expect_error "an unsupported operator names the node" "(Elu): operator 'Elu' is not supported" -- \
  import "$work/elu.onnx" --out "$work/elu"
expect_error "the supported operators are listed" "supported operators: Add, AveragePool" -- \
  import "$work/elu.onnx" --out "$work/elu"
expect_error "a too new opset" "opset 18 is newer than import reads" -- \
  import "$work/opset18.onnx" --out "$work/opset18"
check "a failed import creates no folder" '[ ! -e "$work/text" ] && [ ! -e "$work/truncated" ] && [ ! -e "$work/elu" ] && [ ! -e "$work/opset18" ]'
mkdir "$work/kept"
echo "mine" >"$work/kept/notes.txt"
expect_error "a failed import into an existing folder" "operator 'Elu' is not supported" -- \
  import "$work/elu.onnx" --out "$work/kept"
check "leaves the folder as it was" '[ "$(ls "$work/kept")" = "notes.txt" ]'
finish
