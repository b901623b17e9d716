#!/bin/bash
# Torchvision weights in Strata: python/torchvision_to_strata.py converts torchvision's resnet18
# and resnet50 (random weights, random batch-norm statistics) and `strata forward` on the zoo's
# experiments/resnet{18,50}.yaml must give torchvision's eval-mode logits (relative error <= 1e-4).
# Skipped (exit 77, shown by ctest as "Skipped") when python3-torchvision is missing.
set -eu
: "${STRATA:?}" "${STRATA_SOURCE_DIR:?}"
PYTHON=${PYTHON:-/usr/bin/python3}
if ! "$PYTHON" -c "import torchvision, h5py" 2>/dev/null; then
  echo "SKIPPED: python3-torchvision (or python3-h5py) is not installed; install it to compare with torchvision"
  exit 77
fi
exec "$PYTHON" "$STRATA_SOURCE_DIR/tests/scripts/torchvision_weights.py" --strata "$STRATA" \
  --source "$STRATA_SOURCE_DIR"
