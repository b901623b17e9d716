#!/bin/bash
# Every experiment in experiments/ works as checked in. Each one must build and summarise
# (`strata summary --json`, no data loaded); those with small inputs (at most 3x32x32 per image:
# LeNet-5 and the Fashion-MNIST variants) also train one epoch on 256 of their images: this checks
# that each file works end to end, not what it learns (the full runs are in docs/zoo.md).
# The ImageNet-shaped zoo (AlexNet ... ResNet-152) is only summarised here: one epoch of it
# would take minutes to hours on 2 cores (the full runs are `make run` and the benchmark).
# imagenet_resnet18_folder reads an image folder: it trains one epoch on a generated folder of 10
# JPEGs (one per class, experiments/data/make_imagenet_folder.py), a few seconds.
set -u
: "${STRATA:?}" "${STRATA_SOURCE_DIR:?}"
PYTHON=${PYTHON:-/usr/bin/python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
passed=0; failures=0
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
  if "$STRATA" train "$experiment" --out "$work/$name" --progress none --set train.epochs=1 \
      "${small[@]}" >"$work/$name.log" 2>&1 \
      && grep -q "^test accuracy" "$work/$name.log" && [ -f "$work/$name/model.h5" ]; then
    echo "ok   $name: $(grep '^test accuracy' "$work/$name.log")"; passed=$((passed + 1))
  else
    echo "FAIL $name"; sed 's/^/    /' "$work/$name.log"; failures=$((failures + 1))
  fi
done
echo "$passed passed, $failures failed"
[ "$failures" -eq 0 ] && [ "$passed" -gt 0 ]
