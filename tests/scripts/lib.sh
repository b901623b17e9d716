# tests/scripts/lib.sh: the helpers the command-line tests share. Not a test itself (ctest runs
# only test_*.sh). A test sets STRATA (the tool), STRATA_SOURCE_DIR and `work` (its scratch
# folder), then:
#
#   source "$STRATA_SOURCE_DIR/tests/scripts/lib.sh"
#
# and ends with `finish`. Every helper counts into `passed` and `failures`.
#
#   expect_error NAME EXPECTED-TEXT -- ARGS...   strata ARGS must fail cleanly saying EXPECTED-TEXT
#   expect_success NAME -- ARGS...               strata ARGS must exit 0
#   run LOG ARGS...                              strata ARGS, output in LOG, status in rc
#   check NAME CONDITION...                      CONDITION (eval'd: a quoted string works) holds
#   small_experiment                             prints a valid 1-epoch experiment on synthetic
#                                                data (conv, relu, linear; sgd), to break per case

failures=0
passed=0
# Text on stderr that means a crash rather than a handled error (grep -iE). A test may extend it
# (test_hostile_inputs.sh adds "internal").
crash_pattern="terminate called|Aborted|Segmentation|core dumped|std::|boost::"
# Optional, set by a test: after an expected error, no Strata temporary file (*.tmp-*) may be
# left in this folder ...
no_temp_files_in=""
# ... and this file must not exist (it is removed before each expect_error).
not_written=""

pass() { echo "ok   $*"; passed=$((passed + 1)); }

# failed NAME [PROBLEM [LOG]]: counts a failure and shows LOG, indented.
failed() {
  echo "FAIL $1${2:+: $2}"
  if [ -n "${3:-}" ] && [ -f "$3" ]; then sed 's/^/    /' "$3"; fi
  failures=$((failures + 1))
}

# expect_error NAME EXPECTED-TEXT -- ARGS...: strata ARGS (stdin empty, at most 60 s: a hang is a
# failure) exits with status 1, its stderr holds EXPECTED-TEXT and nothing that looks like a crash,
# and it leaves no temporary file in $no_temp_files_in and no $not_written.
expect_error() {
  local name=$1 expected=$2
  shift 3
  local file=$work/${name//[^A-Za-z0-9_.-]/_}
  [ -n "$not_written" ] && rm -f "$not_written"
  timeout 60 "$STRATA" "$@" >"$file.stdout" 2>"$file.stderr" </dev/null
  local rc=$? problem=""
  [ "$rc" -eq 124 ] && problem="timed out (a hang)"
  [ "$rc" -eq 1 ] || problem="$problem; exit status $rc (expected 1)"
  grep -qF -- "$expected" "$file.stderr" || problem="$problem; stderr lacks: $expected"
  grep -qiE "$crash_pattern" "$file.stderr" && problem="$problem; looks like a crash"
  if [ -n "$no_temp_files_in" ] && find "$no_temp_files_in" -name '*.tmp-*' | grep -q .; then
    problem="$problem; left a temporary file"
  fi
  [ -n "$not_written" ] && [ -e "$not_written" ] && problem="$problem; wrote $not_written"
  if [ -n "$problem" ]; then
    failed "$name" "${problem#; }" "$file.stderr"
  else
    pass "$name: $(head -1 "$file.stderr")"
  fi
}

# expect_success NAME -- ARGS...: strata ARGS exits 0.
expect_success() {
  local name=$1
  shift 2
  local file=$work/${name//[^A-Za-z0-9_.-]/_}
  if "$STRATA" "$@" >"$file.stdout" 2>"$file.stderr"; then
    pass "$name"
  else
    failed "$name" "exit status $?" "$file.stderr"
  fi
}

# run LOG ARGS...: strata ARGS with stdout and stderr in LOG; sets rc, and last_log for check.
run() {
  local log=$1
  shift
  last_log=$log
  "$STRATA" "$@" >"$log" 2>&1
  rc=$?
}

# check NAME CONDITION...: passes when CONDITION succeeds; on failure shows the tail of the last
# run's log.
check() {
  local name=$1
  shift
  if eval "$@"; then
    pass "$name"
  else
    failed "$name"
    if [ -n "${last_log:-}" ]; then tail -5 "$last_log" | sed 's/^/     /'; fi
  fi
}

small_experiment() {
  cat <<'YAML'
seed: 1
data: {type: synthetic, classes: 4, shape: [1, 8, 8], train_size: 64, test_size: 32}
model:
  input: [1, 8, 8]
  layers:
    - {name: conv1, type: conv2d, out_channels: 4, kernel: 3, padding: 1}
    - {name: relu1, type: relu}
    - {name: fc1, type: linear, out_features: 4}
optimizer: {type: sgd, lr: 0.01}
train: {epochs: 1, batch_size: 16}
YAML
}

# finish: prints the counts; its status is the test's (0 when nothing failed).
finish() {
  echo "$passed passed, $failures failed"
  [ "$failures" -eq 0 ]
}
