#!/bin/bash
# best.yaml from a search trains as written (issue 21): an experiment that loads a plugin through
# a relative `plugins:` path (relative to the experiment's folder) is searched into another
# folder; best.yaml's path is rewritten relative to its own folder, so `strata train best.yaml`,
# run from a third folder, finds the plugin. Absolute paths are kept as they are.
set -euo pipefail
: "${STRATA:?}"
build_dir=$(dirname "$(dirname "$STRATA")")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

mkdir -p "$work/project/plugins" "$work/elsewhere"
cp "$build_dir/tests/plugins/libstrata_test_sum.so" "$work/project/plugins/"
cat >"$work/project/exp.yaml" <<'YAML'
seed: 3
threads: 1
plugins: [plugins/libstrata_test_sum.so]
data: {type: synthetic, classes: 3, shape: [1, 6, 6], train_size: 120, test_size: 30, validation: 30}
model:
  input: [1, 6, 6]
  layers:
    - {name: fc1, type: linear, out_features: 3}
    - {name: fc2, type: linear, out_features: 3, inputs: [input]}
    - {name: sum, type: test_sum, inputs: [fc1, fc2]}
optimizer: {type: sgd, lr: 0.05}
train: {epochs: 1, batch_size: 30}
search:
  seed: 2
  space:
    optimizer.lr: {log_uniform: [1e-3, 1e-1], name: lr}
  stages:
    - {trials: 2}
YAML

(cd "$work/elsewhere" && "$STRATA" search ../project/exp.yaml --out "$work/runs/search") >"$work/search.log" 2>&1 \
  || { cat "$work/search.log"; fail "search"; }
best=$work/runs/search/best.yaml
grep -qE '^plugins:' "$best" || { cat "$best"; fail "best.yaml has no plugins key"; }
grep -qF '../../project/plugins/libstrata_test_sum.so' "$best" || { cat "$best"; fail "best.yaml: the plugin path is not relative to its folder"; }
(cd "$work/elsewhere" && "$STRATA" train "$best" --out "$work/runs/best" --progress none) >"$work/train.log" 2>&1 \
  || { cat "$best" "$work/train.log"; fail "strata train best.yaml"; }
[ -f "$work/runs/best/model.h5" ] || fail "no checkpoint from best.yaml"
echo "ok: best.yaml loads its relative plugin from its own folder"
