#!/bin/bash
# The docs cannot go stale: every command and Python block of README.md and docs/*.md runs (on
# small settings) or says why not (tests/scripts/run_docs.py), the measured figures are the ones the
# benchmarks wrote (bench/render_docs.py --check) and name their machine and date, and the lists the
# docs copy from the code (resume keys, conformance checks, format_version) match it
# (tests/scripts/docs_lint.py). DOCS_FILES="README.md docs/x.md" runs only those files' blocks.
set -euo pipefail
: "${STRATA:?}" "${STRATA_SOURCE_DIR:?}" "${PYTHON:=/usr/bin/python3}"
export PYTHON
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
src=$STRATA_SOURCE_DIR

echo "== the runner refuses an unmarked block and reports what it does not run"
mkdir -p "$work/self/docs"
cat >"$work/self/page.md" <<'MD'
<!-- not-runnable: a synopsis -->
```sh
strata train EXP.yaml [--resume]
```

<!-- runnable
skip: never-there: listed
check:
test "$(cat out.txt)" = hello
-->
```sh
echo hello >out.txt
echo never-there
```

```python
print("no marker")
```
MD
if "$PYTHON" "$src/tests/scripts/run_docs.py" "$work/self" "$work/self/run" page.md >"$work/self/out.txt" 2>&1; then
  cat "$work/self/out.txt"; fail "an unmarked block passed"
fi
grep -q "^not run page.md:2: a synopsis" "$work/self/out.txt" || fail "the not-runnable block is not listed"
grep -q "^ok      page.md:11 sh" "$work/self/out.txt" || fail "the runnable block did not run"
grep -q "^  skip    page.md:11: \`echo never-there\`: listed" "$work/self/out.txt" || fail "the skipped command is not listed"
grep -q "^FAIL    page.md:16: a python block without a marker" "$work/self/out.txt" || fail "the unmarked block is not named"

echo "== the blocks"
# shellcheck disable=SC2086
"$PYTHON" "$src/tests/scripts/run_docs.py" "$src" "$work/blocks" ${DOCS_FILES:-}

echo "== the figures are rendered from the benchmarks' files"
"$PYTHON" "$src/bench/render_docs.py" --check --root "$src"

echo "== what the docs copy from the code"
"$STRATA" train "$src/experiments/lenet5_fashion.yaml" --out "$work/lint" --progress none \
  --set train.epochs=1 --set data.train_limit=256 --set data.validation=64 --set data.test_limit=64 >/dev/null
"$STRATA" check-plugin "$(dirname "$(dirname "$STRATA")")/lib/strata/libstrata_example_swish.so" >"$work/check-plugin.txt"
"$PYTHON" "$src/tests/scripts/docs_lint.py" "$src" "$work/lint/model.h5" "$work/check-plugin.txt"

echo "== the renderer works from what the benchmarks write now"
# A short real measurement of each kind, rendered into a page of bench blocks.
"$PYTHON" "$src/bench/quickstart.py" --build "$(dirname "$(dirname "$STRATA")")" --json "$work/quickstart.json" \
  --set train.epochs=1 --set data.train_limit=512 --set data.validation=128 --set data.test_limit=128 >/dev/null
mkdir -p "$work/page"
printf '%s\n' "<!-- bench:quickstart quickstart.json -->" "<!-- /bench -->" >"$work/page/page.md"
cp "$work/quickstart.json" "$work/page/"
if "$PYTHON" -c "import torch" 2>/dev/null; then
  "$PYTHON" "$src/bench/compare_pytorch.py" --build "$(dirname "$(dirname "$STRATA")")" --quick --repeats 1 \
    --only train --workloads lenet5 --json "$work/page/compare.json" >/dev/null
  printf '%s\n' "<!-- bench:train compare.json -->" "<!-- /bench -->" >>"$work/page/page.md"
fi
"$PYTHON" "$src/bench/render_docs.py" --root "$work/page" page.md >/dev/null
cat "$work/page/page.md"
grep -Eq "^Measured on .+, 20[0-9]{2}-[0-9]{2}-[0-9]{2}, load average [0-9.]+ at the start, by \`strata train" "$work/page/page.md" \
  || fail "the quickstart block names no machine, date or command"
grep -q "test accuracy .* after 1 epochs" "$work/page/page.md" || fail "the quickstart block lacks the run's last lines"
if [ -s "$work/page/compare.json" ]; then
  grep -Eq "^Measured on .+, 20[0-9]{2}-[0-9]{2}-[0-9]{2}, .*by \`bench/compare_pytorch.py --build" "$work/page/page.md" \
    || fail "the training table names no machine, date or command"
  grep -Eq "^\| LeNet-5 \(1x28x28, batch 128\) \| [0-9,]+ \| [0-9,]+ \| [0-9.]+x" "$work/page/page.md" || fail "no LeNet-5 row"
fi
"$PYTHON" "$src/bench/render_docs.py" --check --root "$work/page" page.md >/dev/null || fail "render is not idempotent"
echo "docs: ok"
