#!/bin/bash
# relu6, hardswish, hard_sigmoid, multiply (squeeze-and-excitation), label smoothing and gradient
# clipping against PyTorch (tests/scripts/modern_layers_vs_pytorch.py). Skipped, visibly (CTest's
# SKIP_RETURN_CODE 77), when /usr/bin/python3 has no torch.
set -eu
: "${STRATA:?}"
python="${PYTHON:-/usr/bin/python3}"
if ! "$python" -c "import torch, h5py" 2>/dev/null; then
  echo "SKIPPED: $python cannot import torch and h5py (Debian packages python3-torch, python3-h5py)"
  exit 77
fi
exec "$python" "$(dirname "$0")/modern_layers_vs_pytorch.py" --strata "$STRATA"
