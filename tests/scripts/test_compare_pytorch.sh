#!/bin/bash
# bench/compare_pytorch.py without timing anything (about 20 s): --check finds every workload's
# experiment file and builds each PyTorch net, and both nets of each workload have the same
# parameter count; a Strata file that differs from its PyTorch net is named with both counts and
# fails; --list names every workload; bad workload names are errors; --recompute is passed on. The measurement itself (and
# both PyTorch layouts) runs in test_docs.sh's short LeNet-5 comparison. Skipped (77) without torch.
set -u
: "${STRATA:?}" "${STRATA_SOURCE_DIR:?}" "${PYTHON:=/usr/bin/python3}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
"$PYTHON" -c "import torch, torchvision" 2>/dev/null || { echo "skip: no torch/torchvision in $PYTHON"; exit 77; }
script="$STRATA_SOURCE_DIR/bench/compare_pytorch.py"
build=$(dirname "$(dirname "$STRATA")")

# Every workload but the two large ResNets, whose experiment files the zoo tests already check
# against torchvision (test_torchvision_weights.sh); googlenet is here because its file is the
# bench's own.
small=lenet5,cifar_vgg,resnet_small,cifar_resnet20,mobilenet_cifar,dilated_cifar,googlenet
"$PYTHON" "$script" --check --build "$build" --workloads "$small" >"$work/check" 2>&1 ||
  { cat "$work/check"; fail "--check on the workloads as checked in"; }
for name in ${small//,/ }; do
  grep -Eq "^$name +parameters: strata ([0-9,]+)  pytorch \1  same" "$work/check" ||
    { cat "$work/check"; fail "--check prints no matching counts for $name"; }
done
echo "ok   --check: $small"

# A Strata net one channel wider than its PyTorch net: named, with both counts, exit status 1.
sed 's/out_channels: 16, kernel: 3, padding: 1, bias: false}/out_channels: 17, kernel: 3, padding: 1, bias: false}/' \
  "$STRATA_SOURCE_DIR/bench/workloads/cifar_resnet20.yaml" >"$work/wider.yaml"
cmp -s "$work/wider.yaml" "$STRATA_SOURCE_DIR/bench/workloads/cifar_resnet20.yaml" && fail "the sed changed nothing"
if "$PYTHON" "$script" --check --build "$build" --workloads cifar_resnet20 \
    --experiment "cifar_resnet20=$work/wider.yaml" >"$work/wider" 2>&1; then
  cat "$work/wider"; fail "--check passed nets of different sizes"
fi
grep -Eq "check failed: cifar_resnet20: the nets differ: .*wider.yaml has [0-9,]+ parameters, the PyTorch net 272,474" \
  "$work/wider" || { cat "$work/wider"; fail "the mismatch is not named with both counts"; }
echo "ok   --check names a mismatch"

"$PYTHON" "$script" --list >"$work/list" || fail "--list"
for name in lenet5 cifar_vgg resnet_small cifar_resnet20 mobilenet_cifar dilated_cifar resnet18 resnet50 googlenet loop; do
  grep -q "^$name " "$work/list" || { cat "$work/list"; fail "--list lacks $name"; }
done
grep -q "^resnet50 .*batch 32.*--set train.batch_size=32" "$work/list" || { cat "$work/list"; fail "resnet50 is not run at batch 32"; }
echo "ok   --list"

if "$PYTHON" "$script" --check --workloads resnet19 >"$work/unknown" 2>&1; then fail "an unknown workload passed"; fi
grep -q "unknown workload resnet19 (known: lenet5," "$work/unknown" || { cat "$work/unknown"; fail "unknown workload message"; }
echo "ok   unknown workload"

# --recompute: Strata's training rows run with recompute: true, the titles and the JSON say so
# (one quick round of LeNet-5's memory row, about 10 s).
"$PYTHON" "$script" --build "$build" --only memory --workloads lenet5 --quick --repeats 1 \
  --recompute --json "$work/recompute.json" >"$work/recompute" 2>&1 ||
  { cat "$work/recompute"; fail "--recompute run"; }
grep -q "^3. peak resident memory.*; Strata recomputing outputs in backward (--recompute)" \
  "$work/recompute" || { cat "$work/recompute"; fail "the memory table does not say --recompute"; }
"$PYTHON" -c "import json, sys; r = json.load(open(sys.argv[1])); assert r['recompute'] is True and r['memory'], r" \
  "$work/recompute.json" || fail "--recompute json"
echo "ok   --recompute"
echo "compare_pytorch: ok"
