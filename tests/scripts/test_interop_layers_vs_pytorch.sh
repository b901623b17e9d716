#!/bin/bash
# Pooling with round: ceil and dilation, asymmetric and `same` padding, conv2d padding modes, the
# pad layer, batch_norm with momentum: null and track_running_stats: false, and softmax's axis,
# forward and one SGD step, against PyTorch (tests/scripts/interop_layers_vs_pytorch.py). Skipped,
# visibly (CTest's SKIP_RETURN_CODE 77), when /usr/bin/python3 has no torch.
set -euo pipefail
: "${STRATA:?}"
python="${PYTHON:-/usr/bin/python3}"
if ! "$python" -c "import torch, h5py" 2>/dev/null; then
  echo "SKIPPED: $python cannot import torch and h5py (Debian packages python3-torch, python3-h5py)"
  exit 77
fi
exec "$python" "$(dirname "$0")/interop_layers_vs_pytorch.py" --strata "$STRATA"
