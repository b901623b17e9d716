#!/bin/bash
# bench/conv_bench: the JSON of one conv shape and of --gemm, and --roofline's fields (the peaks,
# each pass's flops counted as direct convolution and as the kernel's own arithmetic, GFLOP/s and
# fractions of the peak in a sane range); bad roofline options are errors. Asserts nothing about
# speed beyond "positive and not absurd". Run by ctest with STRATA and PYTHON set; conv_bench is
# built beside strata.
set -u
: "${STRATA:?}" "${PYTHON:?}"
bench="$(dirname "$STRATA")/conv_bench"
[ -x "$bench" ] || { echo "FAIL: no $bench"; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

# --gemm: both precisions' GFLOP/s (bf16 null where the CPU has no bf16 products).
"$bench" --gemm 64,48,32 --threads 1 --iterations 2 --warmup 1 >"$work/gemm.json" 2>"$work/err" ||
  { cat "$work/err"; fail "--gemm"; }
"$PYTHON" - "$work/gemm.json" <<'PY' || fail "--gemm json"
import json, sys
r = json.load(open(sys.argv[1]))
assert r["gemm"] == "64,48,32" and r["threads"] == 1, r
assert r["fp32_gflops"] > 0 and r["fp32_s"] > 0, r
assert r["bf16_gflops"] is None or r["bf16_gflops"] > 0, r
PY
echo "ok   --gemm"

# A roofline that measures its own peak (a small product here, to stay quick).
"$bench" --shape 2,8,10,10,8,3,3,1,1,1 --threads 1 --iterations 2 --warmup 1 --roofline \
  --peak-size 256 >"$work/measured.json" 2>"$work/err" || { cat "$work/err"; fail "--roofline"; }
"$PYTHON" - "$work/measured.json" <<'PY' || { cat "$work/measured.json"; fail "--roofline json"; }
import json, sys
r = json.load(open(sys.argv[1]))
assert r["precision"] == "fp32" and r["gflops"] > 0, r
roof = r["roofline"]
assert roof["precision"] == "fp32" and roof["peak"] == "measured" and roof["peak_size"] == 256, roof
assert roof["peak_fp32_gflops"] > 0 and roof["peak_gflops"] == roof["peak_fp32_gflops"], roof
assert roof["peak_bf16_gflops"] is None or roof["peak_bf16_gflops"] > 0, roof
PY
"$PYTHON" - "$work/measured.json" <<'PY' || { cat "$work/measured.json"; fail "--roofline passes"; }
import json, sys
r = json.load(open(sys.argv[1]))
roof = r["roofline"]
direct = 2 * 2 * 8 * 8 * 9 * 10 * 10  # 2 N K C R S out_h out_w
seconds = {"forward": r["forward_s"], "backward_data": r["backward_data_s"],
           "backward_params": r["backward_params_s"], "total": r["total_s"]}
methods = dict(item.split("=") for item in r["implementation"].split())
keys = {"forward": "fwd", "backward_data": "bwd_data", "backward_params": "bwd_weights"}
for name, p in roof["passes"].items():
    assert name in seconds, name
    assert p["direct_flops"] == direct * (3 if name == "total" else 1), (name, p)
    # The kernel's own count is within a factor of the direct one for this small 3x3 shape (the
    # direct kernels add padding columns, Winograd saves products), never zero or absurd.
    assert 0.2 * p["direct_flops"] <= p["actual_flops"] <= 3 * p["direct_flops"], (name, p)
    assert abs(p["seconds"] - seconds[name]) <= 1e-6 * seconds[name] + 1e-12, (name, p)
    assert abs(p["direct_gflops"] - p["direct_flops"] / p["seconds"] * 1e-9) <= 1e-4 * p["direct_gflops"]
    for kind in ("direct", "actual"):
        fraction = p[kind + "_fraction"]
        assert abs(fraction - p[kind + "_gflops"] / roof["peak_gflops"]) <= 1e-4 * fraction, (name, p)
        # Above 0; below a bound no real run reaches (the actual arithmetic at 4x a 256^3 GEMM's
        # speed would mean a wrong count or a wrong unit).
        assert 0 < fraction <= (4 if kind == "actual" else 16), (name, kind, p)
    if name != "total":
        assert p["method"] == methods[keys[name]], (name, p, methods)
assert set(roof["passes"]) == set(seconds), roof["passes"].keys()
PY
echo "ok   --roofline measures its peak; every pass's flops, GFLOP/s and fractions"

# Peaks given (compare_pytorch.py measures once for all shapes): used as they are. A Winograd
# shape (72 channels, 40 filters, 16x16: F(4x4) in all three passes): its
# actual flops are the kernel's count (tests/test_kernels.cpp, conv2d_arithmetic_per_method):
# 2 * 1658880 + 373504 forward, against 2 * 40 * 72 * 9 * 256 counted as direct convolution.
"$bench" --shape 1,72,16,16,40,3,3,1,1,1 --threads 1 --iterations 1 --warmup 0 --roofline \
  --peak-fp32 100 --peak-bf16 250 >"$work/given.json" 2>"$work/err" || { cat "$work/err"; fail "given peaks"; }
"$PYTHON" - "$work/given.json" <<'PY' || { cat "$work/given.json"; fail "given peaks json"; }
import json, sys
r = json.load(open(sys.argv[1]))
roof = r["roofline"]
assert roof["peak"] == "given" and roof["peak_gflops"] == 100, roof
assert roof["peak_fp32_gflops"] == 100 and roof["peak_bf16_gflops"] == 250, roof
forward = roof["passes"]["forward"]
assert forward["method"] == "winograd43", forward
assert forward["direct_flops"] == 2 * 40 * 72 * 9 * 256, forward
assert forward["actual_flops"] == 2 * 1658880 + 373504, forward
assert roof["passes"]["backward_params"]["method"] == "winograd43", roof
assert roof["passes"]["backward_params"]["actual_flops"] == 2 * 1658880 + 360704, roof
assert abs(forward["actual_fraction"] - forward["actual_gflops"] / 100) <= 1e-4 * forward["actual_fraction"]
PY
echo "ok   --roofline with given peaks; Winograd's own count"

# bf16: fractions of the bf16 peak (where the CPU has bf16 products), for a layer on TbbConv2d's
# bf16_ methods (its fp32 methods on rounded inputs) and one large enough for bf16_gemm.
if grep -qw avx512_bf16 /proc/cpuinfo; then
  for shape in 2,8,10,10,8,3,3,1,1,1 2,512,4,4,512,1,1,1,0,1; do
    "$bench" --shape "$shape" --threads 1 --iterations 1 --warmup 0 --precision bf16 \
      --roofline --peak-fp32 100 --peak-bf16 250 >"$work/bf16.json" 2>"$work/err" ||
      { cat "$work/err"; fail "bf16 $shape"; }
    "$PYTHON" - "$work/bf16.json" <<'PY' || { cat "$work/bf16.json"; fail "bf16 json $shape"; }
import json, sys
r = json.load(open(sys.argv[1]))
roof = r["roofline"]
gemm = r["shape"].startswith("2,512")
assert roof["precision"] == "bf16", r
assert r["implementation"] == ("bf16_gemm" if gemm else
                               "fwd=bf16_lanes bwd_data=bf16_lanes bwd_weights=bf16_lanes"), r
assert roof["peak_gflops"] == 250, roof
for name, p in roof["passes"].items():
    if name == "total":
        continue
    assert p["method"] == ("bf16_gemm" if gemm else "bf16_lanes"), p
    assert 0 < p["actual_fraction"] <= 4, p
PY
  done
  echo "ok   --precision bf16 --roofline: against the bf16 peak (bf16_lanes, bf16_gemm)"
else
  echo "ok   (no AVX512-BF16 on this CPU: the bf16 roofline is not run here)"
fi

for bad in "--roofline --peak-fp32 0:--peak-fp32 0: expected a positive number of GFLOP/s" \
           "--roofline --peak-bf16 fast:--peak-bf16 fast: expected a positive number of GFLOP/s" \
           "--peak-fp32 100:--peak-fp32 and --peak-bf16 go with --roofline" \
           "--roofline --peak-size 0:--peak-size 0: must be positive"; do
  args=${bad%%:*}
  message=${bad#*:}
  # shellcheck disable=SC2086
  if "$bench" --shape 1,4,6,6,4,3,3,1,1,1 $args >"$work/out" 2>"$work/err"; then
    fail "conv_bench $args succeeded"
  fi
  grep -qF -- "$message" "$work/err" || { cat "$work/err"; fail "conv_bench $args: no '$message'"; }
done
echo "ok   bad roofline options are errors"
# Table 6 of bench/compare_pytorch.py (Strata alone, no PyTorch needed): one small shape, one
# round, a small peak product; the table and its JSON.
: "${STRATA_SOURCE_DIR:?}"
"$PYTHON" "$STRATA_SOURCE_DIR/bench/compare_pytorch.py" --build "$(dirname "$(dirname "$STRATA")")" \
  --only roofline --quick --repeats 1 --shapes 5 --peak-size 256 --json "$work/table.json" \
  >"$work/table" 2>&1 || { cat "$work/table"; fail "compare_pytorch.py --only roofline"; }
for line in "6. the roofline: conv2d against this machine's GEMM peak (256^3, best of 3), 2 threads" \
            "fp32, against the fp32 peak of" "LeNet conv2 5x5: (128, 6, 14x14, 16, 5x5, 1, 0, 1, 1)" \
            "farthest from the roofline: "; do
  grep -qF -- "$line" "$work/table" || { cat "$work/table"; fail "table 6 lacks '$line'"; }
done
grep -Eq "^ +forward +lanes +[0-9.]+ +[0-9.]+ +[0-9.]+% +[0-9.]+% +-?[0-9.]+ +[0-9]+%$" "$work/table" ||
  { cat "$work/table"; fail "table 6 has no forward row"; }
"$PYTHON" - "$work/table.json" <<'PY' || fail "table 6 json"
import json, sys
roof = json.load(open(sys.argv[1]))["roofline"]
assert roof["peaks"]["fp32"] > 0 and roof["peak_size"] == 256, roof
rows = [r for r in roof["rows"] if r["precision"] == "fp32"]
assert [r["pass"] for r in rows] == ["forward", "backward_data", "backward_params", "total"], rows
for r in rows:
    assert 0 < r["actual_fraction"] <= 4 and 0 < r["direct_fraction"] <= 16, r
assert roof["farthest"]["pass"] != "total", roof["farthest"]
PY
echo "ok   compare_pytorch.py --only roofline (table 6)"
echo "conv_bench: ok"
