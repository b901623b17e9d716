#!/bin/bash
# Every experiment in experiments/ works as checked in: each trains one epoch on a small subset of
# its data (the full runs are `make run` and the benchmark).
set -u
: "${STRATA:?}" "${STRATA_SOURCE_DIR:?}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
passed=0; failures=0
for experiment in "$STRATA_SOURCE_DIR"/experiments/*.yaml; do
  name=$(basename "$experiment" .yaml)
  if "$STRATA" train "$experiment" --out "$work/$name" --progress none --set train.epochs=1 \
      --set data.train_limit=2000 --set data.validation=200 --set data.test_limit=500 >"$work/$name.log" 2>&1 \
      && grep -q "^test accuracy" "$work/$name.log" && [ -f "$work/$name/model.h5" ]; then
    echo "ok   $name: $(grep '^test accuracy' "$work/$name.log")"; passed=$((passed + 1))
  else
    echo "FAIL $name"; sed 's/^/    /' "$work/$name.log"; failures=$((failures + 1))
  fi
done
echo "$passed passed, $failures failed"
[ "$failures" -eq 0 ] && [ "$passed" -gt 0 ]
