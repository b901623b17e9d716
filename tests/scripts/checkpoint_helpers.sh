# Sourced by the resume tests (test_kill_resume.sh, test_interrupt_resume.sh); not a test itself.
# Needs $PYTHON (with h5py and numpy).

# validate_checkpoint FILE EPOCHS STEPS: FILE opens as a Strata checkpoint whose training state is
# whole: epoch in 1..EPOCHS (0..EPOCHS-1 when saved in the middle of an epoch), iteration =
# epoch * STEPS (+ epoch_step of an interrupted epoch), one /history value per epoch, finite
# weights. Prints "EPOCH" or "EPOCH+STEP" (an interrupted epoch).
validate_checkpoint() {
  "$PYTHON" - "$1" "$2" "$3" <<'PY'
import sys, h5py, numpy as np
epochs, steps = int(sys.argv[2]), int(sys.argv[3])
with h5py.File(sys.argv[1], "r") as f:
    assert f.attrs["format"] in (b"strata-checkpoint", "strata-checkpoint")
    training = f["training"].attrs
    epoch = int(training["epoch"])
    step = int(training["epoch_step"]) if "epoch_step" in training else 0
    assert (1 <= epoch <= epochs) if step == 0 else (0 <= epoch < epochs and 1 <= step < steps), (epoch, step)
    assert int(training["iteration"]) == epoch * steps + step, (int(training["iteration"]), epoch, step)
    if step:
        assert 0 <= int(training["epoch_correct"]) <= int(training["epoch_seen"]), dict(training)
    for name in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr",
                 "epoch_seconds", "images_per_second"):
        shape = f["history"][name].shape if name in f["history"] else (0,)  # none before epoch 1
        assert shape == (epoch,), (name, shape)
    def finite(name, obj):
        if isinstance(obj, h5py.Dataset) and obj.dtype.kind == "f":
            assert np.isfinite(obj[()]).all(), name
    f["model"].visititems(finite)
    print(f"{epoch}+{step}" if step else epoch)
PY
}

# same_checkpoints A B: every tensor of /model, /optimizer and /preprocess, and the per-epoch
# losses, accuracies and learning rates, are bit-identical.
same_checkpoints() {
  "$PYTHON" - "$1" "$2" <<'PY'
import sys, h5py, numpy as np
a, b = h5py.File(sys.argv[1], "r"), h5py.File(sys.argv[2], "r")
names = []
a.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
for group in ("model", "optimizer", "preprocess"):
    for n in [n for n in names if n.startswith(group + "/")]:
        x, y = a[n][()], b[n][()]
        assert x.shape == y.shape and np.array_equal(x, y), f"{n} differs after the resumes"
for metric in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"):
    assert np.array_equal(a["history"][metric][()], b["history"][metric][()]), metric
PY
}
