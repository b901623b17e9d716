#!/bin/bash
# The deterministic transforms (resize, center_crop, resized_crop with given parameters,
# adjust_brightness/contrast/saturation with given factors, hflip, normalize) against
# torchvision 0.14 on the same random images (tests/scripts/transforms_vs_torchvision.py, which
# drives tests/tools/transform_apply). Skipped, visibly (CTest's SKIP_RETURN_CODE 77), when
# /usr/bin/python3 has no torchvision or h5py.
set -eu
: "${STRATA:?}" "${STRATA_SOURCE_DIR:?}"
python="${PYTHON:-/usr/bin/python3}"
if ! "$python" -c "import torchvision, h5py" 2>/dev/null; then
  echo "SKIPPED: $python cannot import torchvision and h5py (Debian packages python3-torchvision, python3-h5py)"
  exit 77
fi
exec "$python" "$STRATA_SOURCE_DIR/tests/scripts/transforms_vs_torchvision.py" \
  --tool "$(dirname "$STRATA")/transform_apply"
