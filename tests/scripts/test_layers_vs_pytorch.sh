#!/bin/bash
# batch_norm (evaluation and training), lrn, add, concat, global_avg_pool and softmax against
# PyTorch, with weights and running statistics carried over through h5py.
set -eu
: "${STRATA:?}"
exec "${PYTHON:-/usr/bin/python3}" "$(dirname "$0")/layers_vs_pytorch.py" --strata "$STRATA"
