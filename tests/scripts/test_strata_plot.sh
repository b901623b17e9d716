#!/bin/bash
# strata-plot: every picture is written, non-empty, a PNG of 800 x 500 pixels, from a checkpoint
# made by a short training run, from a search folder, and from the installed copy.
set -euo pipefail
: "${STRATA:?}" "${STRATA_SOURCE_DIR:?}" "${PYTHON:=python3}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
plot="$STRATA_SOURCE_DIR/python/strata-plot"

"$STRATA" train "$STRATA_SOURCE_DIR/experiments/lenet5_fashion.yaml" --out "$work/run" --progress none \
  --set train.epochs=2 --set data.train_limit=1500 --set data.validation=300 --set data.test_limit=300 >/dev/null
ckpt="$work/run/model.h5"
# Per-layer diagnostics as the trainer records them (/history/diagnostics/<layer>/<metric> and
# /history/diagnostics/iteration), so that the update-ratio picture is exercised too.
cp "$ckpt" "$work/diag.h5"
"$PYTHON" - "$work/diag.h5" <<'PY'
import sys, h5py, numpy as np
rng = np.random.default_rng()
with h5py.File(sys.argv[1], "a") as f:
    g = f.require_group("history/diagnostics")
    g["iteration"] = np.arange(0, 200, 10, dtype=np.int64)
    for layer in ("conv1", "conv2", "fc1"):
        g[f"{layer}/update_ratio"] = 10 ** rng.uniform(-4, -2, 20)
PY
mkdir -p "$work/search"
"$PYTHON" - "$work/search/trials.jsonl" <<'PY'
import json, sys, numpy as np
rng = np.random.default_rng()
with open(sys.argv[1], "w") as f:
    for i in range(10):
        lr = float(10 ** rng.uniform(-3, -0.5))
        f.write(json.dumps({"params": {"optimizer.lr": lr, "train.batch_size": int(rng.choice([32, 64, 128]))},
                            "metric": float(rng.uniform(0.5, 0.9)), "status": "ok" if i else "failed"}) + "\n")
PY
check_png() {  # check_png FILE...
  "$PYTHON" - "$@" <<'PY'
import struct, sys
for path in sys.argv[1:]:
    data = open(path, "rb").read()
    assert len(data) > 2000, f"{path}: only {len(data)} bytes"
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path}: not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (800, 500), f"{path}: {width}x{height}, expected 800x500"
print("ok:", " ".join(sys.argv[1:]))
PY
}
"$PYTHON" "$plot" "$ckpt" --out "$work/plain" >/dev/null
check_png "$work/plain/curves.png" "$work/plain/filters.png" "$work/plain/weights.png"
[ ! -e "$work/plain/update_ratio.png" ] || fail "update_ratio.png without diagnostics"
"$PYTHON" "$plot" "$work/diag.h5" --out "$work/diag" >/dev/null
check_png "$work/diag/curves.png" "$work/diag/filters.png" "$work/diag/weights.png" "$work/diag/update_ratio.png"
"$PYTHON" "$plot" "$work/search" --out "$work/s" >/dev/null
check_png "$work/s/search.png"
"$PYTHON" "$plot" "$ckpt" --out "$work/svg" --format svg >/dev/null
grep -q "<svg" "$work/svg/curves.svg" || fail "svg"
# Errors name the file.
if "$PYTHON" "$plot" "$work/nothing.h5" --out "$work/x" 2>"$work/err.txt"; then fail "missing file accepted"; fi
grep -q "strata-plot: error: .*nothing.h5" "$work/err.txt" || fail "missing file message"
# The installed copy finds its package.
prefix="$work/prefix"
cmake --install "$(dirname "$(dirname "$STRATA")")" --prefix "$prefix" >/dev/null
"$PYTHON" "$prefix/bin/strata-plot" "$ckpt" --out "$work/installed" >/dev/null
check_png "$work/installed/curves.png"
