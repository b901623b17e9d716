#!/bin/bash
# `strata forward` against PyTorch, with weights carried over through h5py, plus the checkpoint
# layout as h5py sees it (including LeNet-5's /model/conv1/weight of shape (6, 1, 5, 5)).
set -eu
: "${STRATA:?}" "${STRATA_SOURCE_DIR:?}"
exec "${PYTHON:-/usr/bin/python3}" "$STRATA_SOURCE_DIR/tests/scripts/forward_vs_pytorch.py" --strata "$STRATA" \
  --source "$STRATA_SOURCE_DIR"
