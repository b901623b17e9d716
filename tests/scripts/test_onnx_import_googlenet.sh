#!/bin/bash
# strata import against PyTorch: torchvision's GoogLeNet (aux_logits=False, init_weights=True,
# random batch-norm statistics), whose max pools use ceil_mode (`round: ceil`): logits within 1e-4
# (relative) of PyTorch's. test_onnx_import_torchvision.sh with the model named.
set -euo pipefail
exec bash "$(dirname "$0")/test_onnx_import_torchvision.sh" googlenet
