#!/bin/bash
# Bad data through `strata train` (issue 16, "Bad input"): each kind of broken input is a clear
# error that names the file (and the sample index or list line), with exit status 1; with
# `data.on_bad_image: skip` the undecodable images are skipped, and every epoch ends with a line
# that counts them. Tiny runs on a few 8x8 images drawn at random (PIL, h5py), a few seconds in all.
# Not here: a file without read permission (the tests run as root, who reads it anyway).
set -u
: "${STRATA:?}" "${STRATA_SOURCE_DIR:?}"
PYTHON=${PYTHON:-/usr/bin/python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
source "$STRATA_SOURCE_DIR/tests/scripts/lib.sh"
cd "$work" || exit 1

# good/{train,test}/{a,b}/: 6 training and 2 test images per class, PNG and JPEG, RGB noise.
# Then the bad files, each built from a good one (seeded per run: the bytes differ every run).
"$PYTHON" - <<'PY' || exit 1
import io, os, random
import numpy as np
from PIL import Image
rng = np.random.default_rng()
def image():
    return Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), "RGB")
for split, count in (("train", 6), ("test", 2)):
    for label in "ab":
        os.makedirs(f"good/{split}/{label}")
        for i in range(count):
            ext = "jpg" if i % 2 else "png"
            image().save(f"good/{split}/{label}/{i}.{ext}", quality=95)
os.makedirs("bad")
jpeg = io.BytesIO(); image().save(jpeg, "JPEG", quality=95); jpeg = jpeg.getvalue()
png = io.BytesIO(); image().save(png, "PNG"); png = png.getvalue()
# Corrupt JPEG: the header is intact, the entropy-coded data after the start-of-scan marker is
# overwritten with random bytes holding a marker that cannot appear there (0xFF 0xC0).
sos = jpeg.index(b"\xff\xda")
body = bytearray(rng.integers(0, 256, len(jpeg) - sos - 40, dtype=np.uint8).tobytes())
body[len(body) // 2:len(body) // 2 + 2] = b"\xff\xc0"
open("bad/corrupt.jpg", "wb").write(jpeg[:sos + 20] + bytes(body) + jpeg[-20:])
open("bad/truncated.png", "wb").write(png[:random.randint(60, len(png) - 20)])
open("bad/empty.png", "wb").close()
open("bad/notes.jpg", "w").write("these are my notes, not an image\n")
PY

# experiment DATA-YAML [EPOCHS [CLASSES]]: an experiment on 3x8x8 images (1 epoch, 2 classes).
experiment() {
  cat <<YAML
seed: 3
data:
$1
model:
  input: [3, 8, 8]
  layers:
    - {name: conv1, type: conv2d, out_channels: 4, kernel: 3, padding: 1}
    - {name: relu1, type: relu}
    - {name: fc1, type: linear, out_features: ${3:-2}}
optimizer: {type: sgd, lr: 0.01}
# explode_factor 0: on 4-image batches of random pixels the loss swings past 3x the first
# batch's now and then (1 run in 40), and this test is about bad images, not divergence.
train: {epochs: ${2:-1}, batch_size: 4, explode_factor: 0}
YAML
}
folder_data() {  # folder_data TRAIN [MORE KEYS]
  printf '  type: image_folder\n  train: %s\n  test: good/test\n  transforms: [{type: center_crop, size: 8}]\n' "$1"
  [ -n "${2:-}" ] && printf '%s\n' "$2"
}
# with_bad NAME BADFILE: a copy of good/ with BADFILE added as train/a/1b-<its name> (after 1.jpg in
# class a: sample index 2 of the train split) ; prints the copy's folder.
with_bad() {
  rm -rf "case_$1" && cp -r good "case_$1" && cp "bad/$2" "case_$1/train/a/1b-$2" && echo "case_$1"
}

echo "== undecodable images: a bad sample, named with its index and file"
for kind in corrupt.jpg truncated.png empty.png notes.jpg; do
  root=$(with_bad "${kind%.*}" "$kind")
  experiment "$(folder_data "$root/train")" >"$kind.yaml"
  expect_error "$kind" "train sample 2 ($root/train/a/1b-$kind)" -- train "$kind.yaml" --out "run_$kind" --progress none
done
# What each says about the file's content.
grep -q "is empty (0 bytes)" empty.png.stderr && pass "empty: says empty" || failed "empty: says empty" "" empty.png.stderr
grep -q "is not a JPEG or PNG image" notes.jpg.stderr && pass "notes.jpg: says not an image" || failed "notes.jpg: says not an image" "" notes.jpg.stderr

echo "== layout problems: errors when the split is opened"
rm -rf case_empty_class && cp -r good case_empty_class && mkdir case_empty_class/train/c
experiment "$(folder_data case_empty_class/train)" 1 3 >empty_class.yaml
expect_error "empty class folder" "class folder case_empty_class/train/c holds no images" -- train empty_class.yaml --out run_empty_class --progress none

rm -rf case_loop && cp -r good case_loop && ln -s .. case_loop/train/b/up
experiment "$(folder_data case_loop/train)" >loop.yaml
expect_error "symbolic link loop" "case_loop/train/b/up" -- train loop.yaml --out run_loop --progress none
grep -q "symbolic link loop" symbolic_link_loop.stderr && pass "loop: says loop" || failed "loop: says loop" "" symbolic_link_loop.stderr

mkdir -p lists && cp good/train/a/0.png good/train/b/1.jpg lists/
printf '0.png,0\n1.jpg,1\nmissing.png,1\n' >lists/missing.txt
printf '0.png,0\n1.jpg,1\n' >lists/test.txt
experiment "$(printf '  type: image_folder\n  train: lists/missing.txt\n  test: lists/test.txt\n  transforms: [{type: center_crop, size: 8}]')" >missing.yaml
expect_error "list names a missing file" "lists/missing.txt:3: image lists/missing.png" -- train missing.yaml --out run_missing --progress none

printf '0.png,0\n1.jpg,5\n' >lists/range.txt
experiment "$(printf '  type: image_folder\n  train: lists/range.txt\n  test: lists/test.txt\n  classes: 2\n  transforms: [{type: center_crop, size: 8}]')" >range.yaml
expect_error "list label out of range" "lists/range.txt:2" -- train range.yaml --out run_range --progress none
grep -q "label 5 is out of range for 2 classes" "list_label_out_of_range.stderr" && pass "range: says which label" \
  || failed "range: says which label" "" list_label_out_of_range.stderr

echo "== HDF5 arrays (h5py-written): counts that disagree, a label out of range"
"$PYTHON" - <<'PY' || exit 1
import h5py
import numpy as np
rng = np.random.default_rng()
n = int(rng.integers(8, 20))
def write(name, labels):
    with h5py.File(name, "w") as f:
        f["train/images"] = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
        f["train/labels"] = labels
        f["test/images"] = rng.integers(0, 256, (4, 3, 8, 8), dtype=np.uint8)
        f["test/labels"] = np.array([0, 1, 0, 1])
write("count.h5", rng.integers(0, 2, n - 1))
labels = rng.integers(0, 2, n)
labels[n // 2] = 7
write("range.h5", labels)
open("bad_index.txt", "w").write(f"{n - 1} {n // 2}")
PY
read -r n_labels bad_index <bad_index.txt
hdf5_data() { printf '  type: hdf5
  train: %s
  test: %s
  classes: 2
' "$1" "$1"; }
experiment "$(hdf5_data count.h5)" >count.yaml
expect_error "hdf5 labels and images disagree" "dataset hdf5 count.h5: /train/labels: holds $n_labels labels but /train/images holds $((n_labels + 1)) images" \
  -- train count.yaml --out run_count --progress none
experiment "$(hdf5_data range.h5)" >range_h5.yaml
expect_error "hdf5 label out of range" "dataset hdf5 range.h5: /train/labels: label 7 at index $bad_index is out of range for classes: 2" \
  -- train range_h5.yaml --out run_range_h5 --progress none

echo "== on_bad_image: skip"
rm -rf case_skip && cp -r good case_skip
for kind in corrupt.jpg truncated.png empty.png notes.jpg; do cp "bad/$kind" "case_skip/train/b/x-$kind"; done
experiment "$(folder_data case_skip/train "  on_bad_image: skip")" 2 >skip.yaml
run skip.log train skip.yaml --out run_skip --progress lines
check "skip: the run completes" '[ "$rc" -eq 0 ] && grep -q "^test accuracy" skip.log'
check "skip: epoch 1 reports 4 skipped images" 'grep -q "epoch 1: skipped 4 bad training image(s)" skip.log'
check "skip: epoch 2 reports 4 skipped images" 'grep -q "epoch 2: skipped 4 bad training image(s)" skip.log'
check "skip: the report names a file" 'grep "epoch 1: skipped" skip.log | grep -q "case_skip/train/b/x-"'

echo "== on_bad_image: skip with normalize fitted on a sample that holds the bad images"
experiment "$(printf '  type: image_folder\n  train: case_skip/train\n  test: good/test\n  on_bad_image: skip\n  transforms: [{type: center_crop, size: 8}, {type: normalize}]')" >skip_fit.yaml
run skip_fit.log train skip_fit.yaml --out run_skip_fit --progress lines
check "skip + fitted normalize: the run completes" '[ "$rc" -eq 0 ] && grep -q "^test accuracy" skip_fit.log'
check "skip + fitted normalize: the fit reports its 4 skips" \
  'grep -q "fitting the data transforms: skipped 4 bad image(s) (data.on_bad_image: skip)" skip_fit.log'
experiment "$(printf '  type: image_folder\n  train: case_skip/train\n  test: good/test\n  transforms: [{type: center_crop, size: 8}, {type: normalize}]')" >error_fit.yaml
expect_error "fitted normalize, on_bad_image: error" "case_skip/train/b/x-" -- train error_fit.yaml --out run_error_fit --progress none

finish
