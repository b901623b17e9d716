#!/usr/bin/env bash
# with_isa.sh LEVEL STRATA COMMAND [ARGS...]: runs COMMAND with STRATA_ISA=LEVEL, so the plugins
# built once per instruction-set level (strata/isa.hpp) run their LEVEL copy; exits 77, which
# CTest reports as skipped, when this CPU cannot run LEVEL's code. Whether it can is the tool's
# own check (core/src/isa.cpp): `STRATA=... strata plugins` fails with "this CPU cannot run".
set -uo pipefail
level=$1 strata=$2
shift 2
if ! out=$(STRATA_ISA=$level "$strata" plugins 2>&1 >/dev/null); then
  if [[ "$out" == *"this CPU cannot run"* ]]; then
    echo "skipped: $out"
    exit 77
  fi
  echo "$out" >&2
  exit 1
fi
STRATA_ISA=$level exec "$@"
