#!/bin/bash
# The "mpi" communicator (plugins/comm_mpi) under mpirun, through tests/tools/mpi_check.cpp:
# random-data sums (equal to the expected sum within tolerance and bitwise identical on every
# rank), one rank leaving data unchanged, async tickets, broadcasts, min/max, messages (any source,
# timeouts, no spinning), on 2 ranks, on 4 oversubscribed ranks, on 2 ranks over TCP and on 1; then
# the watchdog (one rank skips a collective, or starts 120 s late: the job ends non-zero within the
# limit, naming the waiting rank and what it waits for), abort() and its exit status, and a second
# communicator in one process. About 20 s (28 s on a loaded machine).
# Registered only where MPI is installed (tests/CMakeLists.txt sets MPI_CHECK and MPIEXEC).
set -euo pipefail
: "${STRATA_SOURCE_DIR:?}" "${MPI_CHECK:?}" "${MPIEXEC:=mpirun}"
source "$STRATA_SOURCE_DIR/tests/scripts/lib.sh"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The tests run as root in CI's container; mpirun refuses that unless told twice.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# Without --bind-to none, OpenMPI binds each rank to one core (docs/distributed.md).
mpirun=("$MPIEXEC" --bind-to none)

# all_checks NAME MPIRUN-ARGS...: mpi_check all passes on every rank.
all_checks() {
  local name=$1
  shift
  local dir=$work/$name
  mkdir -p "$dir"
  set +e
  timeout 120 "${mpirun[@]}" "$@" "$MPI_CHECK" all "$dir" >"$dir/out.txt" 2>&1
  local status=$?
  set -e
  local failed_checks
  failed_checks=$(grep -c '^FAIL' "$dir/out.txt" || true)
  if [ "$status" -eq 0 ] && [ "$failed_checks" -eq 0 ]; then
    pass "$name: $(grep -c '^ok' "$dir/out.txt") checks; $(sed -n 2p "$dir/out.txt")"
  else
    failed "$name" "exit status $status, $failed_checks failed checks" "$dir/out.txt"
  fi
}

all_checks "2 ranks" -np 2
all_checks "4 ranks, oversubscribed" -np 4 --oversubscribe
all_checks "2 ranks over TCP" -np 2 --mca btl tcp,self
all_checks "1 rank" -np 1

# expect_job_failure NAME EXPECTED-TEXT MPI_CHECK-ARGS...: `mpirun -np 2 mpi_check ARGS` exits
# non-zero within 30 s (a hang is a failure) and its output holds EXPECTED-TEXT; sets `status`.
expect_job_failure() {
  local name=$1 expected=$2
  shift 2
  local log=$work/${name//[^A-Za-z0-9_.-]/_}.txt start=$SECONDS
  set +e
  timeout 60 "${mpirun[@]}" -np 2 "$MPI_CHECK" "$@" >"$log" 2>&1
  status=$?
  set -e
  local elapsed=$((SECONDS - start))
  if [ "$status" -ne 0 ] && [ "$status" -ne 124 ] && [ "$elapsed" -lt 30 ] &&
     grep -qF -- "$expected" "$log"; then
    pass "$name: exit status $status after ${elapsed} s"
  else
    failed "$name" "exit status $status after ${elapsed} s; expected non-zero within 30 s and: $expected" "$log"
  fi
}
host=$(hostname)

# The watchdog: the last rank never joins a collective; with a 2 s limit the job must end well
# before the sleeping rank would (120 s), with one line naming rank 0 and the collective.
expect_job_failure "watchdog" "strata: rank 0 of 2 ($host): the collective the last rank skips has not completed after 2 s; another rank is not taking part (it crashed, hangs, or took a different path); aborting the job" \
  watchdog 2

# The watchdog during start-up: the last rank creates its communicator 120 s late; the others
# wait in MPI_Init_thread, where only the watchdog thread can abort (after its 3 s grace).
expect_job_failure "watchdog during start-up" "strata: rank 0 of 2 ($host): start-up (MPI_Init_thread and MPI_Comm_idup wait until every rank has created its communicator) has not completed after 1 s" \
  late 1

# abort(): the last rank aborts with code 3 while the others wait in a barrier.
expect_job_failure "abort" "strata: rank 1 of 2 ($host): a data error on rank 1 (test)" abort 3
check "abort: the job's exit status is abort's code (3)" '[ "$status" -eq 3 ]'

# MPI cannot be initialized twice: a second communicator is a clear error, not a crash.
set +e
timeout 60 "${mpirun[@]}" -np 1 "$MPI_CHECK" twice >"$work/twice.txt" 2>&1
status=$?
set -e
if [ "$status" -eq 0 ] && grep -qF "can create it only once" "$work/twice.txt"; then
  pass "a second communicator is refused"
else
  failed "second communicator" "exit status $status" "$work/twice.txt"
fi

finish
