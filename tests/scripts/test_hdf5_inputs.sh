#!/bin/bash
# Hostile HDF5 files (issue 20, items 2 and 9): a forward input or a checkpoint whose data lives in
# another file (external raw storage, a virtual dataset, an external link, a soft link through an
# external link) is refused at every entry point, naming the dataset; nothing of the other file
# reaches an output. Tiny files whose chunked datasets claim huge shapes are refused before any
# allocation. The fixtures are written by h5py (tests/scripts/hdf5_fixtures.py).
set -u
: "${STRATA:?}" "${STRATA_SOURCE_DIR:?}"
PYTHON=${PYTHON:-/usr/bin/python3}
"$PYTHON" -c "import h5py" 2>/dev/null || { echo "h5py is missing: skipped"; exit 77; }
STRATA=$(realpath "$STRATA")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work" || exit 1
source "$STRATA_SOURCE_DIR/tests/scripts/lib.sh"
not_written=out.h5  # an expected error writes no output file

small_experiment >ok.yaml
"$STRATA" train ok.yaml --out run >train.log 2>&1 || { cat train.log; exit 1; }
"$PYTHON" "$STRATA_SOURCE_DIR/tests/scripts/hdf5_fixtures.py" indirection "$work" run/model.h5 || exit 1
"$PYTHON" "$STRATA_SOURCE_DIR/tests/scripts/hdf5_fixtures.py" claims "$work" || exit 1

local_only="Strata reads only data stored in the file itself"
# forward's input, in both forms.
for form in experiment checkpoint; do
  if [ "$form" = experiment ]; then args=(forward ok.yaml --weights run/model.h5); else args=(forward run/model.h5); fi
  expect_error "$form-input-external" "/data keeps its data in 1 external file ($work/secret.bin): $local_only" -- "${args[@]}" --input input_external.h5 --output out.h5
  expect_error "$form-input-virtual" "/data is a virtual dataset (its first source is in $work/source.h5): $local_only" -- "${args[@]}" --input input_virtual.h5 --output out.h5
  expect_error "$form-input-extlink" "/data is an external link to $work/source.h5:/src: $local_only" -- "${args[@]}" --input input_extlink.h5 --output out.h5
  expect_error "$form-input-soft-to-external" "/elsewhere is an external link to $work/source.h5:/: $local_only" -- "${args[@]}" --input input_softext.h5 --output out.h5
  expect_error "$form-input-soft-loop" "/data is a soft link to /data, and soft links follow each other more than 16 times" -- "${args[@]}" --input input_softloop.h5 --output out.h5
  expect_error "$form-input-claims-1e18" "dataset /data has shape [1000000000, 1000000000] (4.0 EB) but stores only 0 bytes" -- "${args[@]}" --input claims_huge.h5 --output out.h5
  expect_error "$form-input-claims-1.6GB" "dataset /data has shape [100000, 1, 64, 64] (1.6 GB) but stores only" -- "${args[@]}" --input claims_large.h5 --output out.h5
  expect_success "$form-input-soft-link-inside" -- "${args[@]}" --input input_soft_ok.h5 --output soft_ok_$form.h5
  expect_success "$form-input-compressed" -- "${args[@]}" --input claims_ok.h5 --output compressed_$form.h5
done

# Devices and FIFOs are refused without being opened (a FIFO would block the reader forever).
mkfifo fifo.h5
expect_error "input-fifo" "HDF5 file fifo.h5: is a named pipe (FIFO), not a regular file" -- forward run/model.h5 --input fifo.h5 --output out.h5
expect_error "weights-device" "checkpoint /dev/zero: is a character device, not a regular file" -- eval /dev/zero

# Checkpoints, sealed (edited with h5py and resealed) and unsealed, through every loader.
declare -A message=(
  [external]="/model/fc1/bias keeps its data in 1 external file ($work/bias.bin): $local_only"
  [virtual]="/model/fc1/bias is a virtual dataset (its first source is in $work/source.h5): $local_only"
  [extlink]="/model/fc1/bias is an external link to $work/source.h5:/bias: $local_only"
  [extlink_unsealed]="/model/fc1/bias is an external link to $work/source.h5:/bias: $local_only"
)
for kind in external virtual extlink extlink_unsealed; do
  ckpt=ckpt_$kind.h5
  expect_error "eval-$kind" "${message[$kind]}" -- eval "$ckpt"
  expect_error "forward-$kind" "${message[$kind]}" -- forward "$ckpt" --input input_soft_ok.h5 --output out.h5
  expect_error "forward-weights-$kind" "${message[$kind]}" -- forward ok.yaml --weights "$ckpt" --input input_soft_ok.h5 --output out.h5
  expect_error "train-weights-$kind" "${message[$kind]}" -- train ok.yaml --out "run_w_$kind" --weights "$ckpt"
  mkdir -p "run_r_$kind" && cp "$ckpt" "run_r_$kind/model.h5"
  expect_error "train-resume-$kind" "${message[$kind]}" -- train ok.yaml --out "run_r_$kind" --resume --set train.epochs=2
done
# inspect reads the experiment, the plugins and the training state: an external link there.
"$PYTHON" - "$work" <<'PY' || exit 1
import shutil, sys, h5py
work = sys.argv[1]
shutil.copyfile(work + "/run/model.h5", work + "/ckpt_history.h5")
with h5py.File(work + "/ckpt_history.h5", "r+") as f:
    del f["history/train_loss"]
    f["history/train_loss"] = h5py.ExternalLink(work + "/source.h5", "/bias")
# A history array claiming 10^12 values (8 TB), chunked, never written: a few KB.
shutil.copyfile(work + "/run/model.h5", work + "/ckpt_history_claims.h5")
with h5py.File(work + "/ckpt_history_claims.h5", "r+") as f:
    del f["history/train_loss"]
    f.create_dataset("history/train_loss", shape=(10**12,), chunks=(4096,), dtype="<f8")
PY
for file in ckpt_history.h5 ckpt_history_claims.h5; do
  "$PYTHON" -c "import sys; sys.path.insert(0, '$STRATA_SOURCE_DIR/python'); from strata_analysis import reseal; reseal('$file')"
done
expect_error "inspect-history-extlink" "/history/train_loss is an external link to $work/source.h5:/bias: $local_only" -- inspect ckpt_history.h5
expect_error "inspect-history-claims" "dataset /history/train_loss has shape [1000000000000] (8.0 TB) but stores only 0 bytes" -- inspect ckpt_history_claims.h5
mkdir -p run_claims && cp ckpt_history_claims.h5 run_claims/model.h5
expect_error "resume-history-claims" "dataset /history/train_loss has shape [1000000000000] (8.0 TB) but stores only 0 bytes" -- train ok.yaml --out run_claims --resume --set train.epochs=2
expect_error "inspect-virtual" "${message[virtual]}" -- inspect ckpt_virtual.h5

# The Python analysis library (strata-plot) refuses them too, where h5py would follow them.
for kind in external virtual extlink; do
  if PYTHONPATH="$STRATA_SOURCE_DIR/python" "$PYTHON" -c '
import sys
from strata_analysis.checkpoint import Checkpoint
try:
    Checkpoint(sys.argv[1])
except ValueError as error:
    sys.exit(0 if "Strata reads only data stored in the file itself" in str(error) else 1)
sys.exit(1)' "ckpt_$kind.h5"; then
    echo "ok   python-$kind"
    passed=$((passed + 1))
  else
    echo "FAIL python-$kind: strata_analysis.Checkpoint read ckpt_$kind.h5"
    failures=$((failures + 1))
  fi
done

finish
