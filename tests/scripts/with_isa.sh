#!/usr/bin/env bash
# with_isa.sh LEVEL COMMAND [ARGS...]: runs COMMAND with STRATA_ISA=LEVEL, so the plugins built
# once per instruction-set level (strata/isa.hpp) run their LEVEL copy; exits 77, which CTest
# reports as skipped, when this CPU cannot run LEVEL's code. The flags are those of the x86-64
# levels the copies are compiled for (x86-64-v3, x86-64-v4), as core/src/isa.cpp checks them.
set -euo pipefail
level=$1
shift
case "$level" in
  generic) needed="" ;;
  avx2) needed="avx avx2 fma f16c bmi1 bmi2 movbe" ;;
  avx512) needed="avx avx2 fma f16c bmi1 bmi2 movbe avx512f avx512bw avx512cd avx512dq avx512vl" ;;
  *) echo "with_isa.sh: unknown level '$level' (generic, avx2, avx512)" >&2; exit 2 ;;
esac
flags=" $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) "
for flag in $needed; do
  if [[ "$flags" != *" $flag "* ]]; then
    echo "skipped: this CPU lacks $flag, so it cannot run the $level copies"
    exit 77
  fi
done
STRATA_ISA=$level exec "$@"
