#!/bin/bash
# `strata export --onnx` (issue 19): the zoo exported, checked by onnx.checker with full shape
# inference and run by OpenCV DNN against `strata forward` (tests/scripts/onnx_export.py), and the
# errors of the command. Skipped (exit 77) without python3-onnx; without python3-opencv the OpenCV
# comparison alone is skipped, with a SKIP line.
set -euo pipefail
: "${STRATA:?}" "${STRATA_SOURCE_DIR:?}"
PYTHON=${PYTHON:-/usr/bin/python3}
if ! "$PYTHON" -c "import onnx, h5py, yaml, numpy" 2>/dev/null; then
  echo "SKIP: python3-onnx (or python3-h5py, python3-yaml) is not installed; install it to check exported models"
  exit 77
fi
exec "$PYTHON" "$STRATA_SOURCE_DIR/tests/scripts/onnx_export.py" --strata "$STRATA" \
  --source "$STRATA_SOURCE_DIR"
