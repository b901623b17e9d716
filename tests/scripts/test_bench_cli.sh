#!/bin/bash
# `strata bench`: the table and --json name every layer and the totals; bad options are errors
# with exit status 1. Asserts nothing about speed. Run by ctest with STRATA and PYTHON set.
set -u
: "${STRATA:?}" "${PYTHON:?}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

cat >"$work/exp.yaml" <<'YAML'
threads: 1
data: {type: idx, dir: /nonexistent/never-read}
model:
  input: [3, 10, 10]
  layers:
    - {name: conv1, type: conv2d, out_channels: 8, kernel: 3, padding: 1}
    - {name: relu1, type: relu}
    - {name: pool1, type: max_pool, kernel: 2}
    - {name: fc1, type: linear, out_features: 4}
optimizer: {type: sgd, lr: 0.01, momentum: 0.9}
train: {epochs: 1, batch_size: 5}
YAML

"$STRATA" bench "$work/exp.yaml" --iterations 2 --warmup 1 >"$work/table" 2>&1 || { cat "$work/table"; fail "table run"; }
for word in conv1 relu1 pool1 fc1 "optimizer step" total images/s "peak memory" "batch 5" \
            implementation "fwd=lanes bwd_data=lanes bwd_weights=lanes" pairs2x2 openblas; do
  grep -qF -- "$word" "$work/table" || { cat "$work/table"; fail "table lacks '$word'"; }
done
echo "ok   table"

# The backend line says which copy of the tbb kernels runs (strata/isa.hpp) and which BLAS kernels
# run, and who chose each (plugins/backend_tbb/openblas.hpp).
grep -qE "^backend tbb: oneTBB [0-9.]+, .+ kernels, the best this CPU runs; OpenBLAS [0-9.]+ \(.+ kernels, .+\)$" "$work/table" ||
  { cat "$work/table"; fail "table lacks the backend description"; }
STRATA_ISA=generic "$STRATA" bench "$work/exp.yaml" --iterations 1 --warmup 0 >"$work/generic" 2>&1 ||
  { cat "$work/generic"; fail "STRATA_ISA=generic run"; }
grep -qF "generic (x86-64 baseline) kernels, STRATA_ISA=generic from the environment;" "$work/generic" ||
  { cat "$work/generic"; fail "STRATA_ISA=generic not honoured"; }
if STRATA_ISA=avx3 "$STRATA" bench "$work/exp.yaml" --iterations 1 --warmup 0 >"$work/bad_isa" 2>&1; then
  fail "STRATA_ISA=avx3 ran"
fi
grep -qF "libstrata_backend_tbb.so: registration failed: STRATA_ISA=avx3: not an instruction-set level (expected one of generic, avx2, avx512)" "$work/bad_isa" ||
  { cat "$work/bad_isa"; fail "STRATA_ISA=avx3 error"; }
echo "ok   backend description names the copy of the kernels (STRATA_ISA honoured, checked)"
STRATA_OPENBLAS_CORETYPE=Haswell "$STRATA" bench "$work/exp.yaml" --iterations 1 --warmup 0 \
  >"$work/forced" 2>&1 || { cat "$work/forced"; fail "forced core type run"; }
grep -qF "(Haswell kernels, STRATA_OPENBLAS_CORETYPE=Haswell from the environment)" "$work/forced" ||
  { cat "$work/forced"; fail "STRATA_OPENBLAS_CORETYPE not honoured"; }
if grep -qw avx512f /proc/cpuinfo && grep -qw avx512bw /proc/cpuinfo &&
   grep -qw avx512dq /proc/cpuinfo && grep -qw avx512vl /proc/cpuinfo; then
  OPENBLAS_CORETYPE=Haswell "$STRATA" bench "$work/exp.yaml" --iterations 1 --warmup 0 \
    >"$work/avx512" 2>&1 || { cat "$work/avx512"; fail "AVX-512 run"; }
  grep -qF "(SkylakeX kernels, chosen by the tbb backend for this AVX-512 CPU, in place of OPENBLAS_CORETYPE=Haswell" "$work/avx512" ||
    { cat "$work/avx512"; fail "AVX-512 CPU without the SkylakeX kernels"; }
  echo "ok   backend description (AVX-512 CPU: SkylakeX kernels)"
else
  echo "ok   backend description (no AVX-512 on this CPU: the SkylakeX case is not checked here)"
fi

"$STRATA" bench "$work/exp.yaml" --iterations 2 --warmup 0 --threads 2 --set train.batch_size=6 --json \
  >"$work/out.json" 2>"$work/err" || { cat "$work/err"; fail "json run"; }
"$PYTHON" - "$work/out.json" <<'PY' || fail "json content"
import json, sys
r = json.load(open(sys.argv[1]))
assert "OpenBLAS" in r["backend_description"], r["backend_description"]
assert r["batch_size"] == 6 and r["threads"] == 2 and r["iterations"] == 2, r
assert [l["name"] for l in r["layers"]] == ["conv1", "relu1", "pool1", "fc1"], r["layers"]
conv = r["layers"][0]
assert conv["forward_flops"] == 2 * 6 * 8 * 10 * 10 * 27, conv  # first layer: no data gradient
assert conv["backward_flops"] == conv["forward_flops"], conv
assert r["layers"][1]["forward_gflops"] is None
# The kernel path each layer ran (Layer::implementation()).
assert [l["implementation"] for l in r["layers"]] == [
    "fwd=lanes bwd_data=lanes bwd_weights=lanes", "elementwise", "pairs2x2", "openblas"], r["layers"]
assert r["images_per_second"] > 0 and r["peak_rss_bytes"] > 0
assert abs(r["images_per_second"] - 6 / r["step_seconds"]) < 1e-6 * r["images_per_second"]
PY
echo "ok   json"

# Fusion (docs/performance.md, section 16): a relu that alone reads a batch_norm runs inside it;
# --no-fusion runs it as its own layer. The JSON says which.
cat >"$work/fused.yaml" <<'YAML'
threads: 1
data: {type: idx, dir: /nonexistent/never-read}
model:
  input: [3, 8, 8]
  layers:
    - {name: conv1, type: conv2d, out_channels: 4, kernel: 3, padding: 1}
    - {name: bn1, type: batch_norm}
    - {name: relu1, type: relu}
    - {name: fc1, type: linear, out_features: 4}
optimizer: {type: sgd, lr: 0.01}
train: {epochs: 1, batch_size: 4}
YAML
for mode in fused --no-fusion; do
  flag=""; [ "$mode" = fused ] || flag=$mode
  # shellcheck disable=SC2086
  "$STRATA" bench "$work/fused.yaml" --iterations 1 --warmup 0 $flag --json >"$work/$mode.json" \
    2>"$work/err" || { cat "$work/err"; fail "$mode run"; }
  "$PYTHON" - "$work/$mode.json" "$mode" <<'PY' || fail "$mode json"
import json, sys
r, mode = json.load(open(sys.argv[1])), sys.argv[2]
bn, relu = r["layers"][1]["implementation"], r["layers"][2]["implementation"]
if mode == "fused":
    assert r["fusion"] is True and bn.endswith("+relu") and relu == "fused into bn1", (bn, relu)
    assert r["layers"][2]["forward_seconds"] == 0, r["layers"][2]
else:
    assert r["fusion"] is False and "+" not in bn and relu == "elementwise", (bn, relu)
PY
done
"$STRATA" bench "$work/fused.yaml" --iterations 1 --warmup 0 --no-fusion >"$work/table" 2>&1 ||
  fail "--no-fusion table"
grep -qF "warm-up; no fusion" "$work/table" || { cat "$work/table"; fail "table lacks 'no fusion'"; }
echo "ok   fusion: relu1 fused into bn1, and not with --no-fusion"

# Recomputation (docs/memory.md, "Recomputation"): with `recompute: true` the bench says so, marks
# the layers whose outputs backward computes again, and the JSON carries the setting; strata
# summary plans one arena for outputs and gradients, smaller than the plain plan's two.
cat >"$work/recompute.yaml" <<'YAML'
threads: 1
data: {type: idx, dir: /nonexistent/never-read}
model:
  input: [3, 8, 8]
  layers:
    - {name: conv1, type: conv2d, out_channels: 4, kernel: 3, padding: 1}
    - {name: relu1, type: relu}
    - {name: conv2, type: conv2d, out_channels: 4, kernel: 3, padding: 1}
    - {name: relu2, type: relu}
    - {name: conv3, type: conv2d, out_channels: 4, kernel: 3, padding: 1}
    - {name: relu3, type: relu}
    - {name: conv4, type: conv2d, out_channels: 4, kernel: 3, padding: 1}
    - {name: relu4, type: relu}
    - {name: fc1, type: linear, out_features: 4}
optimizer: {type: sgd, lr: 0.01}
train: {epochs: 1, batch_size: 4}
YAML
"$STRATA" bench "$work/recompute.yaml" --iterations 1 --warmup 0 --set recompute=true \
  >"$work/table" 2>&1 || { cat "$work/table"; fail "recompute table"; }
grep -qF "; recomputing outputs in backward" "$work/table" ||
  { cat "$work/table"; fail "table lacks 'recomputing'"; }
grep -qE '^(conv|relu)[0-9] .*\(recomputed\)$' "$work/table" ||
  { cat "$work/table"; fail "no layer marked (recomputed)"; }
"$STRATA" bench "$work/recompute.yaml" --iterations 1 --warmup 0 --set recompute=true --json \
  >"$work/recompute.json" 2>"$work/err" || { cat "$work/err"; fail "recompute json"; }
"$PYTHON" - "$work/recompute.json" <<'PY' || fail "recompute json"
import json, sys
r = json.load(open(sys.argv[1]))
assert r["recompute"] is True, r
assert any(l["implementation"].endswith("(recomputed)") for l in r["layers"]), r["layers"]
PY
"$STRATA" summary "$work/recompute.yaml" --set recompute=true --json >"$work/summary_on.json" &&
  "$STRATA" summary "$work/recompute.yaml" --json >"$work/summary_off.json" ||
  fail "summary with recompute"
"$PYTHON" - "$work/summary_on.json" "$work/summary_off.json" <<'PY' || fail "summary recompute"
import json, sys
on, off = (json.load(open(f)) for f in sys.argv[1:3])
def find(d, key):
    if isinstance(d, dict):
        if key in d: return d[key]
        for v in d.values():
            f = find(v, key)
            if f is not None: return f
    return None
assert find(on, "recompute") is True and find(off, "recompute") is False
assert find(on, "training_gradient_bytes") == 0
planned_on = find(on, "training_output_bytes")
planned_off = find(off, "training_output_bytes") + find(off, "training_gradient_bytes")
assert 0 < planned_on < planned_off, (planned_on, planned_off)
PY
"$STRATA" summary "$work/recompute.yaml" --set recompute=true | grep -qF "one arena, recomputing" ||
  fail "summary text lacks the recompute plan"
echo "ok   recompute: bench marks recomputed layers, summary plans one smaller arena"

for bad in "--iterations 0:--iterations must be at least 1" "--threads -1:--threads -1" \
           "--bogus:bogus" "--data --no-fusion:--no-fusion concerns the model"; do
  args=${bad%%:*}; want=${bad#*:}
  # shellcheck disable=SC2086
  "$STRATA" bench "$work/exp.yaml" $args >"$work/o" 2>"$work/e"; rc=$?
  [ "$rc" -eq 1 ] || fail "$args: exit status $rc"
  grep -qF -- "$want" "$work/e" || { cat "$work/e"; fail "$args: stderr lacks '$want'"; }
  echo "ok   $args: $(head -1 "$work/e")"
done
echo "all passed"
