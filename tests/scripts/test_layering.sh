#!/bin/bash
# The architecture, enforced (docs/architecture.md, "Layers"): every #include of the tree respects
# the layers (tests/scripts/layering.py), the libraries link only downward, the installed SDK's
# plugin headers are the runtime's, and no function outside plugins/ is longer than 150 lines
# (tests/scripts/function_lengths.py). Each checker is also run on a small tree with one violation
# of each kind, which it must report: a checker that finds nothing proves nothing.
set -u
: "${STRATA_SOURCE_DIR:?}" "${PYTHON:=python3}"
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failures=0
passed=0
check() {  # check NAME COMMAND...: COMMAND must succeed
  local name=$1
  shift
  if "$@" >"$work/out.txt" 2>&1; then
    echo "ok   $name"
    passed=$((passed + 1))
  else
    echo "FAIL $name"
    sed 's/^/     /' "$work/out.txt" | head -30
    failures=$((failures + 1))
  fi
}

# ---- The tree as it is ----
check "every #include respects the layers" "$PYTHON" "$here/layering.py" "$STRATA_SOURCE_DIR"
check "no function outside plugins/ is longer than 150 lines" \
  "$PYTHON" "$here/function_lengths.py" "$STRATA_SOURCE_DIR" --top 5

# CMake says the same: each library's target_link_libraries names only libraries below it.
links_only() {  # links_only FOLDER ALLOWED_REGEX: every strata:: target it links is allowed
  local used
  used=$(sed 's/#.*//' "$STRATA_SOURCE_DIR/$1/CMakeLists.txt" | grep -o 'strata::[a-z_]*' | sort -u |
         grep -v "^strata::$2\$" | grep -Ev "^strata::($3)\$")
  [ -z "$used" ] || { echo "$1/CMakeLists.txt links $used"; return 1; }
}
check "core links no other Strata library" links_only core core ""
check "training links only the runtime" links_only training training "core"
check "search links only training and the runtime" links_only search search "core|training"
check "tools link only training and the runtime" links_only tools tools "core|training"
check "interop links only the runtime" links_only interop interop "core"
plugins_link_runtime() {
  ! grep -rn 'strata::\(training\|search\|tools\)' "$STRATA_SOURCE_DIR/plugins" \
      "$STRATA_SOURCE_DIR/datasets" "$STRATA_SOURCE_DIR/cmake/StrataPlugin.cmake" \
      "$STRATA_SOURCE_DIR/examples/out_of_tree_plugin" --include=CMakeLists.txt --include=*.cmake
}
check "plugins link only the runtime (strata_add_plugin: strata::core)" plugins_link_runtime

# ---- The checkers find what they must ----
fake="$work/tree"
mkdir -p "$fake"/core/include/strata "$fake"/core/src "$fake"/training/include/strata/training \
  "$fake"/training/src "$fake"/search/include/strata/search "$fake"/search/src \
  "$fake"/tools/include/strata/tools "$fake"/tools/src "$fake"/plugins/foo "$fake"/tests/support \
  "$fake"/apps/strata
touch "$fake"/core/include/strata/tensor.hpp "$fake"/core/src/private.hpp \
  "$fake"/training/include/strata/training/trainer.hpp \
  "$fake"/search/include/strata/search/search.hpp "$fake"/tools/include/strata/tools/summary.hpp \
  "$fake"/tests/support/test_support.hpp
printf '#include "strata/tensor.hpp"\n#include "private.hpp"\n' >"$fake"/core/src/ok.cpp
printf '#include "strata/training/trainer.hpp"\n#include "strata/tensor.hpp"\n' >"$fake"/search/src/ok.cpp
printf '#include "strata/tools/summary.hpp"\n#include "strata/search/search.hpp"\n' >"$fake"/apps/strata/ok.cpp
printf '#include "test_support.hpp"\n#include "strata/tools/summary.hpp"\n' >"$fake"/tests/test_ok.cpp
reports() {  # reports TEXT: the fake tree's report names TEXT
  "$PYTHON" "$here/layering.py" "$fake" >"$work/fake.txt"
  grep -qF "$1" "$work/fake.txt" || { cat "$work/fake.txt"; return 1; }
}
check "a clean small tree passes" "$PYTHON" "$here/layering.py" "$fake"
printf '#include "strata/training/trainer.hpp"\n' >"$fake"/core/src/up.cpp
check "the runtime including training is reported" reports 'core/src/up.cpp:1: #include "strata/training/trainer.hpp"'
printf '#include "strata/search/search.hpp"\n' >"$fake"/tools/src/side.cpp
check "tools including search is reported" reports 'tools/src/side.cpp:1'
printf '#include "strata/tools/summary.hpp"\n' >"$fake"/training/src/up.cpp
check "training including tools is reported" reports 'training/src/up.cpp:1'
printf '#include "strata/tensor.hpp"\n#include "strata/training/trainer.hpp"\n' >"$fake"/plugins/foo/foo.cpp
check "a plugin including training is reported" reports 'plugins/foo/foo.cpp:2'
printf '#include "../../core/src/private.hpp"\n' >"$fake"/plugins/foo/bar.cpp
check "a plugin reaching into the runtime's private headers is reported" reports 'plugins/foo/bar.cpp:1'
printf '#include "../core/src/private.hpp"\n' >"$fake"/tests/test_private.cpp
check "a test including a private header is reported" reports 'tests/test_private.cpp:1'
printf '#include "strata/nonexistent.hpp"\n' >"$fake"/apps/strata/missing.cpp
check "an include of no public header is reported" reports 'apps/strata/missing.cpp:1'
fails_on_layers() { ! "$PYTHON" "$here/layering.py" "$fake" >/dev/null; }
check "layering.py exits non-zero on a violation" fails_on_layers

mkdir -p "$work/long/core/src"
{
  echo 'namespace strata {'
  echo 'int short_one(int x) { return x; }'
  echo 'int long_one(int x) {'
  for i in $(seq 1 160); do echo "  x += $i;  // a { in a comment, and \"}\" in a string"; done
  echo '  return x;'
  echo '}'
  echo '}  // namespace strata'
} >"$work/long/core/src/long.cpp"
long_reported() {
  ! "$PYTHON" "$here/function_lengths.py" "$work/long" core >"$work/long.txt" &&
    grep -q '163  core/src/long.cpp:3  long_one' "$work/long.txt"
}
check "a 163-line function is measured and refused" long_reported

echo "$passed passed, $failures failed"
[ "$failures" -eq 0 ]
