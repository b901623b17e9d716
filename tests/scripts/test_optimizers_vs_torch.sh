#!/bin/bash
# Every optimizer against torch.optim over 20 steps from the same initial weights and gradients
# (tests/scripts/optimizers_vs_torch.py). Skipped, visibly (CTest's SKIP_RETURN_CODE 77), when
# /usr/bin/python3 has no torch.
set -eu
: "${STRATA:?}" "${STRATA_SOURCE_DIR:?}"
python="${PYTHON:-/usr/bin/python3}"
if ! "$python" -c "import torch, h5py" 2>/dev/null; then
  echo "SKIPPED: $python cannot import torch and h5py (Debian packages python3-torch, python3-h5py)"
  exit 77
fi
exec "$python" "$STRATA_SOURCE_DIR/tests/scripts/optimizers_vs_torch.py" \
  --replay "$(dirname "$STRATA")/optimizer_replay"
