#!/bin/bash
# Every experiment in experiments/ works as checked in. Each one must build and summarise
# (`strata summary --json`, no data loaded); those with small inputs (at most 3x32x32 per image:
# LeNet-5 and the Fashion-MNIST variants) also train one epoch on 256 of their images: this checks
# that each file works end to end, not what it learns (the full runs are in docs/zoo.md).
# The ImageNet-shaped zoo (AlexNet ... ResNet-152) is only summarised here: one epoch of it
# would take minutes to hours on 2 cores (the full runs are `make run` and the benchmark).
# imagenet_resnet18_folder reads an image folder: it trains one epoch on a generated folder of 10
# JPEGs (one per class, experiments/data/make_imagenet_folder.py), a few seconds.
# Memory: for each experiment trained, `strata summary --memory` (with the same settings) must
# estimate the run's peak resident set (summary.json's peak_memory_bytes) within 20 %
# (docs/memory.md); imagenet_resnet18_folder (224x224 inputs) prints its figures but is not held
# to it: its peak is about 25 % above the estimate (docs/memory.md). resnet_fashion and
# inception_fashion run a second time with `recompute: true`, held to the same 20 %. Not under the sanitizers (STRATA_SANITIZE set), whose shadow memory and
# quarantine make the resident set meaningless: the script says so.
set -u
: "${STRATA:?}" "${STRATA_SOURCE_DIR:?}"
PYTHON=${PYTHON:-/usr/bin/python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
passed=0; failures=0
# Trains `experiment` one epoch with the settings in ${small[@]} and the extra arguments, under
# the label `name`, then checks `strata summary --memory`'s estimate against the run's peak.
train_and_check_memory() {
  local name=$1 experiment=$2; shift 2
  if "$STRATA" train "$experiment" --out "$work/$name" --progress none --set train.epochs=1 \
      "${small[@]}" "$@" >"$work/$name.log" 2>&1 \
      && grep -q "^test accuracy" "$work/$name.log" && [ -f "$work/$name/model.h5" ]; then
    echo "ok   $name: $(grep '^test accuracy' "$work/$name.log")"; passed=$((passed + 1))
    if [ -n "${STRATA_SANITIZE:-}" ]; then
      echo "     $name: memory estimate not checked under the sanitizers ($STRATA_SANITIZE)"
    elif "$STRATA" summary "$experiment" --memory --json "${small[@]}" "$@" >"$work/$name.memory.json" \
        2>"$work/$name.memory.log"; then
      if verdict=$("$PYTHON" -c '
import json, sys
estimate = json.load(open(sys.argv[1]))["totals"]["run_bytes_estimate"]
peak = json.load(open(sys.argv[2]))["peak_memory_bytes"]
ratio = peak / estimate
print(f"peak {peak / 2**20:.0f} MiB, estimate {estimate / 2**20:.0f} MiB, ratio {ratio:.2f}")
sys.exit(0 if 0.8 <= ratio <= 1.2 else 1)' "$work/$name.memory.json" "$work/$name/summary.json") \
          || [ "$name" = imagenet_resnet18_folder ]; then
        note=""; [ "$name" = imagenet_resnet18_folder ] && note=" (224x224: reported, not held to 20 %)"
        echo "ok   $name: memory $verdict$note"; passed=$((passed + 1))
      else
        echo "FAIL $name: memory $verdict (more than 20 % apart)"; failures=$((failures + 1))
      fi
    else
      echo "FAIL $name: strata summary --memory"; sed 's/^/    /' "$work/$name.memory.log"
      failures=$((failures + 1))
    fi
  else
    echo "FAIL $name"; sed 's/^/    /' "$work/$name.log"; failures=$((failures + 1))
  fi
}

for experiment in "$STRATA_SOURCE_DIR"/experiments/*.yaml; do
  name=$(basename "$experiment" .yaml)
  if ! "$STRATA" summary "$experiment" --json >"$work/$name.json" 2>"$work/$name.log"; then
    echo "FAIL $name: strata summary"; sed 's/^/    /' "$work/$name.log"; failures=$((failures + 1))
    continue
  fi
  read -r input_size parameters < <("$PYTHON" -c '
import json, math, sys
summary = json.load(open(sys.argv[1]))
print(math.prod(summary["input"]), summary["totals"]["parameters"])' "$work/$name.json")
  small=(--set data.train_limit=256 --set data.validation=64 --set data.test_limit=128)
  if [ "$name" = imagenet_resnet18_folder ]; then
    "$PYTHON" "$STRATA_SOURCE_DIR/experiments/data/make_imagenet_folder.py" --out "$work/imagenet" \
      --train 1 --val 1 >/dev/null
    small=(--set data.train="$work/imagenet/train" --set data.test="$work/imagenet/val"
           --set train.batch_size=5 --set train.eval_batch_size=5)
  elif [ "$input_size" -gt 3072 ]; then
    echo "ok   $name: summarised only ($parameters parameters, input of $input_size values)"
    passed=$((passed + 1))
    continue
  fi
  train_and_check_memory "$name" "$experiment"
done
# With recomputation (docs/memory.md): the same run gives its estimate (one arena) as well.
small=(--set data.train_limit=256 --set data.validation=64 --set data.test_limit=128)
for name in resnet_fashion inception_fashion; do
  train_and_check_memory "$name.recompute" "$STRATA_SOURCE_DIR/experiments/$name.yaml" \
    --set recompute=true
done
echo "$passed passed, $failures failed"
[ "$failures" -eq 0 ] && [ "$passed" -gt 0 ]
