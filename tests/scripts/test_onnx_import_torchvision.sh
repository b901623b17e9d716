#!/bin/bash
# strata import against PyTorch: torchvision's resnet18, resnet50, vgg11_bn, alexnet, mnasnet0_5,
# mobilenet_v3_small and squeezenet1_1 (random weights and batch-norm statistics) exported by
# torch.onnx.export, imported, and run by strata forward: logits within 1e-4 (relative) of PyTorch's (tests/scripts/onnx_import_torchvision.py).
# Arguments name other models (test_onnx_import_googlenet.sh: googlenet, a test of its own so
# that ctest runs the two side by side). Skipped (exit 77, "Skipped" in ctest) when
# python3-torchvision or python3-h5py is missing.
set -euo pipefail
: "${STRATA:?}" "${STRATA_SOURCE_DIR:?}"
PYTHON=${PYTHON:-/usr/bin/python3}
if ! "$PYTHON" -c "import torchvision, h5py" 2>/dev/null; then
  echo "SKIP: python3-torchvision (or python3-h5py) is not installed; install it to check strata import against PyTorch"
  exit 77
fi
models=("$@")
[ ${#models[@]} -gt 0 ] || models=(resnet18 resnet50 vgg11_bn alexnet mnasnet0_5 mobilenet_v3_small squeezenet1_1)
exec "$PYTHON" "$STRATA_SOURCE_DIR/tests/scripts/onnx_import_torchvision.py" --strata "$STRATA" "${models[@]}"
