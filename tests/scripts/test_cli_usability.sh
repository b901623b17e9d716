#!/bin/bash
# What a user expects to find on the command line (issue 21): strata --version, strata help CMD,
# --set on eval/inspect/forward (only keys that leave the trained model as it is), --json on
# inspect and eval, train --threads, unknown options named like experiment keys suggesting --set,
# strict --weights suggesting --weights-partial, inspect showing the final metrics first, and
# eval --output with integer labels and the dataset row of every prediction.
set -u
: "${STRATA:?}" "${STRATA_SOURCE_DIR:?}"
PYTHON=${PYTHON:-/usr/bin/python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
source "$STRATA_SOURCE_DIR/tests/scripts/lib.sh"  # run, check, finish

# ---- --version and help ----
version=$(sed -nE 's/^project\(Strata VERSION ([0-9.]+).*/\1/p' "$STRATA_SOURCE_DIR/CMakeLists.txt")
api=$(sed -nE 's/.*kPluginApi = ([0-9]+);.*/\1/p' "$STRATA_SOURCE_DIR/core/include/strata/plugin.hpp")
run "$work/version.log" --version
check "--version prints the project version and the plugin API" \
  '[ $rc -eq 0 ] && grep -qx "strata $version (plugin API $api, checkpoint format_version [0-9]*)" "$work/version.log"'
for command in train eval inspect forward search summary; do
  run "$work/help_$command.log" help "$command"; rc_help=$rc
  run "$work/dash_$command.log" "$command" --help
  check "help $command is $command --help" '[ $rc_help -eq 0 ] && [ $rc -eq 0 ] && grep -q "^usage: strata $command" "$work/help_$command.log" && cmp -s "$work/help_$command.log" "$work/dash_$command.log"'
done
run "$work/help.log" help
check "help alone lists the commands" '[ $rc -eq 0 ] && grep -q "^  inspect " "$work/help.log" && grep -q "^  train " "$work/help.log"'
run "$work/help_bad.log" help trian
check "help of an unknown command suggests one" '[ $rc -eq 1 ] && grep -q "unknown command .trian." "$work/help_bad.log" && grep -q "train" "$work/help_bad.log"'

# ---- A small run to look at (random synthetic data, a held-out validation split) ----
seed=$((RANDOM % 1000 + 1))
cat >"$work/a.yaml" <<YAML
seed: $seed
data: {type: synthetic, classes: 4, shape: [1, 8, 8], train_size: 160, test_size: 48, seed: $seed, validation: 40}
model:
  input: [1, 8, 8]
  layers:
    - {name: conv1, type: conv2d, out_channels: 4, kernel: 3, padding: 1}
    - {name: relu1, type: relu}
    - {name: fc1, type: linear, out_features: 4}
optimizer: {type: sgd, lr: 0.02, momentum: 0.9}
# Off: with lr 0.05 about 1 seed in 250 tripped the explosion guard in the first steps, and this
# test is about the command line, not about training.
train: {epochs: 3, batch_size: 16, explode_factor: 0}
YAML

# ---- Unknown options named like experiment keys ----
run "$work/epochs.log" train "$work/a.yaml" --out "$work/x" --epochs 3
check "--epochs suggests --set train.epochs" '[ $rc -eq 1 ] && grep -qF "unknown option '"'"'--epochs'"'"'; to change train.epochs use --set train.epochs=3" "$work/epochs.log"'
run "$work/lr.log" train "$work/a.yaml" --out "$work/x" --lr=0.1
check "--lr=0.1 suggests --set optimizer.lr=0.1" '[ $rc -eq 1 ] && grep -qF "to change optimizer.lr use --set optimizer.lr=0.1" "$work/lr.log"'
run "$work/bs.log" train "$work/a.yaml" --out "$work/x" --batch-size 8
check "--batch-size suggests --set train.batch_size" '[ $rc -eq 1 ] && grep -qF "use --set train.batch_size=8" "$work/bs.log"'
run "$work/tl.log" eval "$work/none.h5" --test-limit 5
check "eval --test-limit suggests --set data.test_limit" '[ $rc -eq 1 ] && grep -qF "use --set data.test_limit=5" "$work/tl.log"'
run "$work/noise.log" train "$work/a.yaml" --out "$work/x" --train-size 100
check "a key of the file at hand is suggested too (data.train_size)" '[ $rc -eq 1 ] && grep -qF "to change data.train_size use --set data.train_size=100" "$work/noise.log"'
run "$work/frob.log" train "$work/a.yaml" --out "$work/x" --frobnicate
check "an option that is no key gets no suggestion" '[ $rc -eq 1 ] && grep -q "unknown option .--frobnicate." "$work/frob.log" && ! grep -q "use --set" "$work/frob.log"'

# ---- train --threads ----
run "$work/a.log" train "$work/a.yaml" --out "$work/a" --progress none --threads 1
check "train --threads 1 trains with one thread" '[ $rc -eq 0 ] && "$PYTHON" -c "import json,sys; assert json.load(open(sys.argv[1]))[\"threads\"] == 1" "$work/a/summary.json"'
run "$work/threads_bad.log" train "$work/a.yaml" --out "$work/y" --threads=-2
check "train --threads -2 is refused" '[ $rc -eq 1 ] && grep -q "threads -2" "$work/threads_bad.log"'

# ---- strict --weights suggests --weights-partial ----
run "$work/strict.log" train "$work/a.yaml" --out "$work/s" --progress none --weights "$work/a/model.h5" --set 'model.layers[2].out_features=3' --set data.classes=3
check "strict --weights mismatch suggests --weights-partial" '[ $rc -eq 1 ] && grep -q "fc1/weight has shape \[4, 256\]" "$work/strict.log" && grep -q "add --weights-partial" "$work/strict.log"'

# ---- inspect: final metrics first, --json, --set ----
run "$work/inspect.log" inspect "$work/a/model.h5"
check "inspect shows the final metrics before the experiment and the diagnostics" '[ $rc -eq 0 ] && \
  t=$(grep -n "^  test accuracy" "$work/inspect.log" | cut -d: -f1) && b=$(grep -n "^  best val accuracy" "$work/inspect.log" | cut -d: -f1) && \
  e=$(grep -n "^experiment:" "$work/inspect.log" | cut -d: -f1) && p=$(grep -n "^parameters and buffers" "$work/inspect.log" | cut -d: -f1) && \
  [ "$t" -lt "$e" ] && [ "$b" -lt "$e" ] && [ "$e" -lt "$p" ] && grep -q "^after 3 epochs" "$work/inspect.log"'
run "$work/inspect.json" inspect "$work/a/model.h5" --json
check "inspect --json agrees with summary.json and the checkpoint" '[ $rc -eq 0 ] && "$PYTHON" - "$work/inspect.json" "$work/a/summary.json" "$work/a/model.h5" <<PY
import json, sys, h5py, numpy as np
got = json.load(open(sys.argv[1])); summary = json.load(open(sys.argv[2]))
final = got["final"]
assert final["epochs"] == 3 and final["test_accuracy"] == summary["test_accuracy"], final
val = summary["history"]["val_accuracy"]
assert final["best_val_accuracy"] == max(val) and final["best_val_epoch"] == val.index(max(val)) + 1, final
assert final["train_loss"] == summary["history"]["train_loss"][-1]
with h5py.File(sys.argv[3]) as f:
    w = f["model/conv1/weight"][()]
row = [p for p in got["parameters"] if p["name"] == "conv1/weight"][0]
assert row["shape"] == "[4, 1, 3, 3]" and row["count"] == 36
assert abs(row["norm"] - float(np.linalg.norm(w))) < 1e-4 * max(1.0, row["norm"]), (row, np.linalg.norm(w))
assert "seed: $seed" in got["experiment"] and got["last_metrics"]["train_loss"] == final["train_loss"]
PY'
run "$work/inspect_set.log" inspect "$work/a/model.h5" --set data.test_limit=7
check "inspect --set shows the changed experiment" '[ $rc -eq 0 ] && grep -q "test_limit: 7" "$work/inspect_set.log"'

# ---- eval: --json, --set, --output ----
run "$work/eval.json" eval "$work/a/model.h5" --json --wrong 3
check "eval --json holds accuracy, confusion and mistakes" '[ $rc -eq 0 ] && "$PYTHON" - "$work/eval.json" "$work/a/summary.json" <<PY
import json, sys
got = json.load(open(sys.argv[1])); summary = json.load(open(sys.argv[2]))
assert got["split"] == "test" and got["images"] == 48
assert abs(got["accuracy"] - summary["test_accuracy"]) < 1e-9, (got["accuracy"], summary["test_accuracy"])
assert sum(map(sum, got["confusion"])) == 48 and len(got["confusion"]) == 4
assert sum(row[i] for i, row in enumerate(got["confusion"])) == got["correct"]
assert len(got["most_confidently_wrong"]) == min(3, got["wrong_count"])
for w in got["most_confidently_wrong"]:
    assert w["label"] != w["predicted"] and w["index"] == w["row"]
PY'
run "$work/eval_set.json" eval "$work/a/model.h5" --json --set data.test_limit=20
check "eval --set data.test_limit=20 evaluates 20 images" '[ $rc -eq 0 ] && "$PYTHON" -c "import json,sys; assert json.load(open(sys.argv[1]))[\"images\"] == 20" "$work/eval_set.json"'
run "$work/eval_ref.log" eval "$work/a/model.h5" --set backend=reference --set threads=1 --set train.eval_batch_size=7
check "eval --set backend/threads/eval_batch_size gives the same accuracy" '[ $rc -eq 0 ] && \
  [ "$(grep "^accuracy" "$work/eval_ref.log" | cut -d" " -f2)" = "$("$PYTHON" -c "import json,sys; print(\"%.4f\" % json.load(open(sys.argv[1]))[\"accuracy\"])" "$work/eval.json")" ]'
run "$work/eval_model.log" eval "$work/a/model.h5" --set 'model.layers[0].out_channels=8'
check "eval --set of a model key is refused" '[ $rc -eq 1 ] && grep -qF "model.layers[0].out_channels'"'"' cannot change when checkpoint" "$work/eval_model.log" && grep -q "weights were trained for the stored model" "$work/eval_model.log"'
run "$work/eval_lr.log" eval "$work/a/model.h5" --set optimizer.lr=1
check "eval --set of a training key is refused" '[ $rc -eq 1 ] && grep -q "describes the training that made the weights" "$work/eval_lr.log"'
run "$work/eval_pre.log" eval "$work/a/model.h5" --set 'data.preprocess=[]'
check "eval --set data.preprocess is refused" '[ $rc -eq 1 ] && grep -q "keys that may change" "$work/eval_pre.log"'

run "$work/eval_val.log" eval "$work/a/model.h5" --split val --output "$work/val.h5"
run "$work/eval_train.log" eval "$work/a/model.h5" --split train --output "$work/train.h5"
run "$work/eval_all.log" eval "$work/a/model.h5" --split train --set data.validation=0 --output "$work/all.h5"
run "$work/eval_test.log" eval "$work/a/model.h5" --output "$work/test.h5"
check "eval --output: integer labels and predictions, and the dataset row of each" '"$PYTHON" - "$work" <<PY
import sys, h5py, numpy as np
w = sys.argv[1]
def load(name):
    with h5py.File(f"{w}/{name}.h5") as f:
        assert f["labels"].dtype.kind == "i" and f["predictions"].dtype.kind == "i", f["labels"].dtype
        assert f["index"].dtype == np.int64
        assert f.attrs["split"] in ("train", "val", "test")
        return {k: f[k][()] for k in ("labels", "predictions", "index", "probabilities")}, dict(f.attrs)
val, val_attrs = load("val"); train, _ = load("train"); everything, _ = load("all"); test, test_attrs = load("test")
assert val_attrs["split"] == "val" and val_attrs["index_of"] == "train" and test_attrs["index_of"] == "test"
assert len(val["index"]) == 40 and len(train["index"]) == 120 and len(everything["index"]) == 160
# val and train partition the 160 training rows, and each row is traced to its dataset row
assert sorted(np.concatenate([val["index"], train["index"]]).tolist()) == list(range(160))
assert (everything["index"] == np.arange(160)).all() and (test["index"] == np.arange(48)).all()
assert (everything["labels"][val["index"]] == val["labels"]).all()
assert (everything["labels"][train["index"]] == train["labels"]).all()
assert (everything["predictions"][val["index"]] == val["predictions"]).all()
assert (val["predictions"] == val["probabilities"].argmax(1)).all()
assert set(np.unique(val["labels"])) <= {0, 1, 2, 3}
PY'

# ---- forward CKPT --set ----
"$PYTHON" - "$work/in.h5" <<'PY'
import sys, h5py, numpy as np
with h5py.File(sys.argv[1], "w") as f:
    f["data"] = np.random.default_rng().standard_normal((5, 1, 8, 8)).astype(np.float32)
PY
run "$work/fw1.log" forward "$work/a/model.h5" --input "$work/in.h5" --output "$work/o1.h5"
run "$work/fw2.log" forward "$work/a/model.h5" --input "$work/in.h5" --output "$work/o2.h5" --set backend=reference
check "forward CKPT --set backend=reference gives the same outputs" '[ $rc -eq 0 ] && "$PYTHON" - "$work/o1.h5" "$work/o2.h5" <<PY
import sys, h5py, numpy as np
with h5py.File(sys.argv[1]) as a, h5py.File(sys.argv[2]) as b:
    assert np.allclose(a["fc1"][()], b["fc1"][()], atol=1e-4)
PY'
run "$work/fw3.log" forward "$work/a/model.h5" --input "$work/in.h5" --output "$work/o3.h5" --set 'model.layers[2].out_features=2'
check "forward CKPT --set of a model key is refused" '[ $rc -eq 1 ] && grep -q "cannot change when checkpoint" "$work/fw3.log" && [ ! -e "$work/o3.h5" ]'

# ---- include: from the command line ----
# The base lives in another folder and lists a plugin relative to itself; the including file
# changes one key. The checkpoint stores the merged experiment, without include:.
mkdir -p "$work/base"
cp "$(dirname "$STRATA")/../tests/plugins/libstrata_test_sum.so" "$work/base/"
sed 's/^train: .*/train: {epochs: 1, batch_size: 16}/' "$work/a.yaml" >"$work/base/base.yaml"
echo "plugins: [libstrata_test_sum.so]" >>"$work/base/base.yaml"
printf 'include: base/base.yaml\ntrain: {batch_size: 8}\n' >"$work/top.yaml"
run "$work/top.log" train "$work/top.yaml" --out "$work/top" --progress none
check "an included experiment trains, its plugins relative to the included file" '[ $rc -eq 0 ] && "$PYTHON" - "$work/top/summary.json" "$work/top/model.h5" <<PY
import json, sys, h5py
summary = json.load(open(sys.argv[1]))
assert summary["batch_size"] == 8 and summary["epochs"] == 1, summary
with h5py.File(sys.argv[2]) as f:
    experiment = f["experiment"][()].decode()
assert "include" not in experiment and "seed: $seed" in experiment, experiment
PY'
printf 'include: base/base.yaml\ntrain: {batch_sise: 8}\n' >"$work/typo.yaml"
run "$work/typo.log" train "$work/typo.yaml" --out "$work/typo"
check "an unknown key in the including file names that file" '[ $rc -eq 1 ] && grep -q "typo.yaml:2:9: train.batch_sise: unknown key" "$work/typo.log"'
sed 's/^optimizer: {type: sgd,/optimizer: {type: sgd, lr_typo: 1,/' "$work/base/base.yaml" >"$work/base/bad.yaml"
printf 'include: base/bad.yaml\n' >"$work/uses_bad.yaml"
run "$work/bad.log" train "$work/uses_bad.yaml" --out "$work/bad"
check "an unknown key in an included file names the included file" '[ $rc -eq 1 ] && grep -q "base/bad.yaml:[0-9]*:[0-9]*: optimizer.lr_typo: unknown key" "$work/bad.log"'
run "$work/inc_epochs.log" train "$work/top.yaml" --epochs 2
check "--epochs on an including file suggests --set train.epochs" '[ $rc -eq 1 ] && grep -qF "use --set train.epochs=2" "$work/inc_epochs.log"'

finish
