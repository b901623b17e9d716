#!/bin/bash
# strata import against PyTorch: torchvision's resnet18, resnet50, vgg11_bn and alexnet (random
# weights and batch-norm statistics) exported by torch.onnx.export, imported, and run by strata
# forward: logits within 1e-4 (relative) of PyTorch's (tests/scripts/onnx_import_torchvision.py).
# GoogLeNet, which needs `round: ceil` pooling, is test_onnx_import_googlenet.sh. Skipped (exit
# 77, "Skipped" in ctest) when python3-torchvision or python3-h5py is missing.
set -euo pipefail
: "${STRATA:?}" "${STRATA_SOURCE_DIR:?}"
PYTHON=${PYTHON:-/usr/bin/python3}
if ! "$PYTHON" -c "import torchvision, h5py" 2>/dev/null; then
  echo "SKIP: python3-torchvision (or python3-h5py) is not installed; install it to check strata import against PyTorch"
  exit 77
fi
exec "$PYTHON" "$STRATA_SOURCE_DIR/tests/scripts/onnx_import_torchvision.py" --strata "$STRATA" \
  resnet18 resnet50 vgg11_bn alexnet
