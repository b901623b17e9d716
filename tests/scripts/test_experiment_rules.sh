#!/bin/bash
# One experiment file, one set of rules (issue 15): every command reads the top-level keys through
# strata::Experiment (training/src/experiment.cpp), so
#   - a seed outside 0 .. 2^32 - 1 is refused by train, summary, bench, gradcheck and forward with
#     the same message at the same key (before: only train checked it; the others wrapped it);
#   - gradcheck runs on the default backend like every other command (before: reference), and
#     --backend or the file's `backend` still choose;
#   - commands that do not train (summary, bench, gradcheck) need no dataset file.
# Run by ctest with STRATA (the tool) and STRATA_SOURCE_DIR set.
set -u
: "${STRATA:?}" "${STRATA_SOURCE_DIR:?}"
STRATA=$(realpath "$STRATA")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failures=0

fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

# The data section names a folder that does not exist: only train may read it.
write_experiment() {  # FILE SEED [BACKEND-LINE]
  cat >"$1" <<YAML
seed: $2
${3:-}
data: {type: idx, dir: $work/no-such-folder}
model:
  input: [1, 8, 8]
  layers:
    - {name: conv1, type: conv2d, out_channels: 4, kernel: 3, padding: 1}
    - {name: relu1, type: relu}
    - {name: fc1, type: linear, out_features: 4}
optimizer: {type: sgd, lr: 0.01}
train: {epochs: 1, batch_size: 4}
YAML
}

for seed in 4294967296 -1; do
  write_experiment "$work/seed.yaml" "$seed"
  expected="seed.yaml:1:7: seed: must be between 0 and 4294967295 (2^32 - 1), found $seed"
  for command in train summary bench gradcheck forward; do
    args=("$command" "$work/seed.yaml")
    case "$command" in
      train) args+=(--out "$work/run") ;;
      forward) args+=(--weights "$work/none.h5" --input "$work/none.h5" --output "$work/out.h5") ;;
    esac
    "$STRATA" "${args[@]}" >"$work/out" 2>&1
    rc=$?
    if [ "$rc" -ne 1 ] || ! grep -qF -- "$expected" "$work/out"; then
      fail "$command with seed $seed: exit status $rc, expected 1 and: $expected"
      sed 's/^/    /' "$work/out"
    else
      echo "ok: $command refuses seed $seed: $(grep -F -- "$expected" "$work/out")"
    fi
  done
done

# The default backend everywhere: gradcheck as bench does.
write_experiment "$work/default.yaml" 3
write_experiment "$work/reference.yaml" 3 "backend: reference"
check_backend() {  # EXPECTED-BACKEND ARGS...
  local expected=$1; shift
  if "$STRATA" "$@" --entries 2 --layers fc1 >"$work/out" 2>&1 &&
    grep -q "^gradcheck .*, backend $expected, eps" "$work/out"; then
    echo "ok: strata $* runs on $expected"
  else
    fail "strata $*: expected to pass on backend $expected"
    sed 's/^/    /' "$work/out"
  fi
}
check_backend tbb gradcheck "$work/default.yaml"
check_backend reference gradcheck "$work/default.yaml" --backend reference
check_backend reference gradcheck "$work/reference.yaml"
check_backend tbb gradcheck "$work/reference.yaml" --backend tbb
"$STRATA" bench "$work/default.yaml" --iterations 1 --warmup 0 >"$work/out" 2>&1 &&
  grep -q "tbb" "$work/out" || { fail "bench on the default experiment"; sed 's/^/    /' "$work/out"; }
"$STRATA" summary "$work/default.yaml" >"$work/out" 2>&1 &&
  grep -q "^parameters:" "$work/out" || { fail "summary without the dataset's files"; sed 's/^/    /' "$work/out"; }

[ "$failures" -eq 0 ] || { echo "FAIL: $failures checks"; exit 1; }
echo "ok: one seed rule, one default backend"
