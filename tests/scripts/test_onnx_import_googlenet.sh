#!/bin/bash
# strata import against PyTorch: torchvision's GoogLeNet (aux_logits=False, init_weights=True,
# random batch-norm statistics) exported by torch.onnx.export, imported and run by strata forward:
# logits within 1e-4 (relative) of PyTorch's. Its max pools use ceil_mode, which import writes as
# `round: ceil` (tests/scripts/onnx_import_torchvision.py). Skipped (exit 77) when
# python3-torchvision or python3-h5py is missing.
set -euo pipefail
: "${STRATA:?}" "${STRATA_SOURCE_DIR:?}"
PYTHON=${PYTHON:-/usr/bin/python3}
if ! "$PYTHON" -c "import torchvision, h5py" 2>/dev/null; then
  echo "SKIP: python3-torchvision (or python3-h5py) is not installed; install it to check strata import against PyTorch"
  exit 77
fi
exec "$PYTHON" "$STRATA_SOURCE_DIR/tests/scripts/onnx_import_torchvision.py" --strata "$STRATA" googlenet
