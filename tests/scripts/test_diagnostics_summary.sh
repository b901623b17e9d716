#!/bin/bash
# Diagnostics warnings are summarized once per epoch, not printed at every measurement (issue 21):
# a synthetic run measured at every step (train.diagnostics_every 1, 10 steps per epoch) with a
# learning rate that makes every update/weight ratio too high prints, for each epoch, at most one
# line per layer ("epoch 2 diagnostics: conv1 update/weight up to ... in 10 of 10 checks") and no
# per-iteration warning lines.
set -u
: "${STRATA:?}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat >"$work/exp.yaml" <<'YAML'
seed: 4
backend: tbb
data: {type: synthetic, classes: 4, shape: [2, 8, 8], train_size: 160, test_size: 32}
model:
  input: [2, 8, 8]
  layers:
    - {name: conv1, type: conv2d, out_channels: 4, kernel: 3, padding: 1}
    - {name: relu1, type: relu}
    - {name: fc1, type: linear, out_features: 4}
optimizer: {type: sgd, lr: 0.3}
train: {epochs: 3, batch_size: 16, diagnostics_every: 1, explode_factor: 0}
YAML
"$STRATA" train "$work/exp.yaml" --out "$work/run" --progress lines >"$work/out" 2>"$work/err"
rc=$?
cat "$work/out" "$work/err"
[ "$rc" -eq 0 ] || { echo "FAIL: exit status $rc"; exit 1; }
if grep -Eq '^iteration [0-9]+:' "$work/out"; then
  echo "FAIL: warnings are still printed per iteration"; exit 1
fi
summaries=$(grep -E '^epoch [0-9]+ diagnostics: ' "$work/out")
[ -n "$summaries" ] || { echo "FAIL: no per-epoch diagnostics summary"; exit 1; }
repeated=$(echo "$summaries" | awk '{print $2, $4}' | sort | uniq -d)
[ -z "$repeated" ] || { echo "FAIL: more than one summary line for (epoch, layer): $repeated"; exit 1; }
echo "$summaries" | grep -Eq '^epoch 1 diagnostics: conv1 update/weight up to [0-9.e+-]+ \(lr too high\?\) in [0-9]+ of 10 checks' ||
  { echo "FAIL: epoch 1 has no summary of conv1's update/weight ratio over its 10 checks"; exit 1; }
echo "ok: $(echo "$summaries" | wc -l) summary lines, at most one per layer per epoch"
