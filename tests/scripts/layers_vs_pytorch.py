"""Cross-checks the graph layers (batch_norm, lrn, add, concat, global_avg_pool, softmax) against
PyTorch through checkpoints, in both of batch norm's modes.

1. Evaluation: a network using every one of these layers trains one epoch on the synthetic set
   (so batch norm's running statistics and affine parameters are far from their initial values),
   then `strata forward` on random inputs is compared, layer by layer, with the same network
   built from torch.nn.functional with the checkpoint's weights and running statistics.
2. Training: a network with three batch norms (after a conv, after a conv behind the first one,
   and on features) takes exactly one SGD step, with a learning rate of 1e-9 so that the saved
   weights are the ones the step ran with, on 32 images written as IDX files. The batch holds all
   32, so batch statistics do not depend on the shuffle. PyTorch runs the same batch in training
   mode from fresh running statistics; running_mean, running_var and num_batches_tracked must
   match Strata's. bn2's statistics are computed from bn1's training-mode output, so they check
   that output too.
Relative error bound: max |strata - torch| <= 1e-4 * max(1, max |torch|).
"""
import argparse
import gzip
import os
import struct
import subprocess
import sys
import tempfile

import h5py
import numpy as np
import torch
import torch.nn.functional as F

EVAL_EXPERIMENT = """
seed: 11
backend: tbb
data: {type: synthetic, classes: 5, shape: [6, 9, 9], train_size: 256, test_size: 64,
       validation: 32, preprocess: [{type: normalize, per: pixel}]}
model:
  input: [6, 9, 9]
  layers:
    - {name: conv1, type: conv2d, out_channels: 8, kernel: 3, padding: 1}
    - {name: bn1, type: batch_norm, momentum: 0.3}
    - {name: act1, type: relu}
    - {name: lrn1, type: lrn, size: 5, alpha: 0.5, beta: 0.75, k: 2}
    - {name: conv_a, type: conv2d, out_channels: 8, kernel: 1, inputs: lrn1}
    - {name: conv_b, type: conv2d, out_channels: 4, kernel: 3, padding: 1, inputs: lrn1}
    - {name: sum, type: add, inputs: [lrn1, conv_a, act1]}
    - {name: cat, type: concat, inputs: [sum, conv_b]}
    - {name: bn2, type: batch_norm, affine: false, eps: 0.001}
    - {name: lrn2, type: lrn, size: 4, alpha: 0.3}
    - {name: gap, type: global_avg_pool}
    - {name: fc, type: linear, out_features: 5}
    - {name: bn3, type: batch_norm}
    - {name: prob, type: softmax}
optimizer: {type: sgd, lr: 0.05, momentum: 0.9}
train: {epochs: 1, batch_size: 32}
"""

TRAIN_EXPERIMENT = """
seed: 5
backend: tbb
data: {type: idx, dir: "DATA_DIR", classes: 3}
model:
  input: [1, 8, 8]
  layers:
    - {name: conv1, type: conv2d, out_channels: 6, kernel: 3, padding: 1}
    - {name: bn1, type: batch_norm, momentum: 0.5}
    - {name: act1, type: relu}
    - {name: conv2, type: conv2d, out_channels: 4, kernel: 3}
    - {name: bn2, type: batch_norm, momentum: 0.3, eps: 0.01}
    - {name: act2, type: relu}
    - {name: gap, type: global_avg_pool}
    - {name: fc, type: linear, out_features: 3}
    - {name: bn3, type: batch_norm, momentum: 0.2}
optimizer: {type: sgd, lr: 1.0e-9}
train: {epochs: 1, batch_size: 32}
"""


def eval_forward(w, x):
    """EVAL_EXPERIMENT's network in PyTorch, evaluation mode; every layer's output by name."""
    out = {}
    t = F.conv2d(x, w["conv1/weight"], w["conv1/bias"], padding=1); out["conv1"] = t
    t = F.batch_norm(t, w["bn1/running_mean"], w["bn1/running_var"], w["bn1/weight"], w["bn1/bias"],
                     training=False, eps=1e-5); out["bn1"] = t
    t = F.relu(t); out["act1"] = t
    t = F.local_response_norm(t, 5, alpha=0.5, beta=0.75, k=2.0); out["lrn1"] = t
    a = F.conv2d(t, w["conv_a/weight"], w["conv_a/bias"]); out["conv_a"] = a
    b = F.conv2d(t, w["conv_b/weight"], w["conv_b/bias"], padding=1); out["conv_b"] = b
    s = t + a + out["act1"]; out["sum"] = s
    t = torch.cat([s, b], dim=1); out["cat"] = t
    t = F.batch_norm(t, w["bn2/running_mean"], w["bn2/running_var"], None, None, training=False,
                     eps=1e-3); out["bn2"] = t
    t = F.local_response_norm(t, 4, alpha=0.3, beta=0.75, k=1.0); out["lrn2"] = t
    t = F.adaptive_avg_pool2d(t, (1, 1)); out["gap"] = t
    t = F.linear(t.flatten(1), w["fc/weight"], w["fc/bias"]); out["fc"] = t
    t = F.batch_norm(t, w["bn3/running_mean"], w["bn3/running_var"], w["bn3/weight"], w["bn3/bias"],
                     training=False, eps=1e-5); out["bn3"] = t
    t = torch.softmax(t, dim=1); out["prob"] = t
    return out


def run(cmd, cwd=None):
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    if result.returncode != 0:
        sys.exit(f"FAIL: {' '.join(cmd)}\n{result.stdout}\n{result.stderr}")
    return result.stdout


def read_model(path):
    weights = {}
    with h5py.File(path, "r") as f:
        f["model"].visititems(lambda name, obj: weights.__setitem__(name, torch.from_numpy(np.array(obj[()])))
                              if isinstance(obj, h5py.Dataset) else None)
    return weights


def compare(name, ours, theirs, failures):
    ours = np.asarray(ours, dtype=np.float64)
    theirs = np.asarray(theirs, dtype=np.float64)
    if ours.shape != theirs.shape:
        failures.append(f"{name}: shape {ours.shape} vs PyTorch {theirs.shape}")
        print(f"FAIL {name}: shape {ours.shape} vs PyTorch {theirs.shape}")
        return
    diff = float(np.max(np.abs(ours - theirs))) if ours.size else 0.0
    scale = max(1.0, float(np.max(np.abs(theirs))) if theirs.size else 0.0)
    status = "ok" if diff <= 1e-4 * scale else "FAIL"
    print(f"{status:4} {name:28} {str(ours.shape):16} max |strata - torch| = {diff:.2e}")
    if status != "ok":
        failures.append(f"{name}: max abs diff {diff} (scale {scale})")


def write_idx(path, array, magic):
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">I", magic))
        for d in array.shape:
            f.write(struct.pack(">I", d))
        f.write(array.astype(np.uint8).tobytes())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--strata", required=True)
    args = parser.parse_args()
    failures = []
    checks = 0
    with tempfile.TemporaryDirectory() as work:
        # ---- 1. Evaluation mode, after one epoch of training. ----
        exp = os.path.join(work, "eval.yaml")
        with open(exp, "w") as f:
            f.write(EVAL_EXPERIMENT)
        run([args.strata, "train", exp, "--out", os.path.join(work, "eval"), "--progress", "none"])
        ckpt = os.path.join(work, "eval", "model.h5")
        weights = read_model(ckpt)
        with h5py.File(ckpt, "r") as f:
            for key, shape in {"bn1/weight": (8,), "bn1/bias": (8,), "bn1/running_mean": (8,),
                               "bn1/running_var": (8,), "bn1/num_batches_tracked": (),
                               "bn2/running_mean": (12,), "bn3/running_var": (5,)}.items():
                got = f["model"][key].shape
                checks += 1
                print(f"{'ok' if got == shape else 'FAIL':4} /model/{key} shape {got}")
                if got != shape: failures.append(f"/model/{key} has shape {got}, expected {shape}")
            for key in ["bn2/weight", "bn2/bias"]:
                checks += 1
                if key in f["model"]: failures.append(f"bn2 has affine: false but {key} was saved")
        # The statistics must really be trained, or the evaluation check proves little.
        tracked = float(weights["bn1/num_batches_tracked"])
        moved = float(torch.max(torch.abs(weights["bn1/running_var"] - 1)))
        print(f"bn1: num_batches_tracked {tracked:g}, max |running_var - 1| = {moved:.3f}")
        checks += 1
        if tracked != 7 or moved < 0.05:  # 256 - 32 validation = 224 images = 7 batches of 32
            failures.append(f"bn1 running statistics look untrained ({tracked}, {moved})")

        x = np.random.default_rng(3).standard_normal((7, 6, 9, 9)).astype(np.float32)
        with h5py.File(os.path.join(work, "in.h5"), "w") as f:
            f["data"] = x
        names = ["conv1", "bn1", "act1", "lrn1", "conv_a", "conv_b", "sum", "cat", "bn2", "lrn2", "gap",
                 "fc", "bn3", "prob"]
        run([args.strata, "forward", exp, "--weights", ckpt, "--input", os.path.join(work, "in.h5"),
             "--output", os.path.join(work, "out.h5"), "--layers", ",".join(names)])
        with torch.no_grad():
            expected = eval_forward(weights, torch.from_numpy(x))
        with h5py.File(os.path.join(work, "out.h5"), "r") as f:
            for name in names:
                compare(f"eval {name}", f[name][()], expected[name].numpy(), failures)
                checks += 1

        # ---- 2. Training mode: one step over one batch of 32 images. ----
        data_dir = os.path.join(work, "idx")
        os.makedirs(data_dir)
        rng = np.random.default_rng(4)
        train_images = rng.integers(0, 256, (32, 8, 8))
        write_idx(os.path.join(data_dir, "train-images-idx3-ubyte.gz"), train_images, 0x803)
        write_idx(os.path.join(data_dir, "train-labels-idx1-ubyte.gz"), rng.integers(0, 3, 32), 0x801)
        write_idx(os.path.join(data_dir, "t10k-images-idx3-ubyte.gz"), rng.integers(0, 256, (8, 8, 8)), 0x803)
        write_idx(os.path.join(data_dir, "t10k-labels-idx1-ubyte.gz"), rng.integers(0, 3, 8), 0x801)
        exp = os.path.join(data_dir, "train.yaml")
        with open(exp, "w") as f:
            f.write(TRAIN_EXPERIMENT.replace("DATA_DIR", data_dir))
        run([args.strata, "train", exp, "--out", os.path.join(work, "train"), "--progress", "none"])
        w = read_model(os.path.join(work, "train", "model.h5"))
        model = torch.nn.Sequential()
        model.add_module("conv1", torch.nn.Conv2d(1, 6, 3, padding=1))
        model.add_module("bn1", torch.nn.BatchNorm2d(6, momentum=0.5))
        model.add_module("act1", torch.nn.ReLU())
        model.add_module("conv2", torch.nn.Conv2d(6, 4, 3))
        model.add_module("bn2", torch.nn.BatchNorm2d(4, momentum=0.3, eps=0.01))
        model.add_module("act2", torch.nn.ReLU())
        model.add_module("gap", torch.nn.AdaptiveAvgPool2d((1, 1)))
        model.add_module("flat", torch.nn.Flatten())
        model.add_module("fc", torch.nn.Linear(4, 3))
        model.add_module("bn3", torch.nn.BatchNorm1d(3, momentum=0.2))
        with torch.no_grad():
            for name in ["conv1", "conv2", "fc", "bn1", "bn2", "bn3"]:
                getattr(model, name).weight.copy_(w[f"{name}/weight"])
                getattr(model, name).bias.copy_(w[f"{name}/bias"])
            model.train()
            model(torch.from_numpy(train_images.astype(np.float32) / 255.0).reshape(32, 1, 8, 8))
        for name in ["bn1", "bn2", "bn3"]:
            module = getattr(model, name)
            checks += 1
            moved = min(float(torch.max(torch.abs(module.running_mean))),
                        float(torch.max(torch.abs(module.running_var - 1))))
            if moved < 1e-3:
                failures.append(f"{name}: the batch moved the running statistics too little ({moved})")
            compare(f"train {name}/running_mean", w[f"{name}/running_mean"].numpy(),
                    module.running_mean.numpy(), failures)
            compare(f"train {name}/running_var", w[f"{name}/running_var"].numpy(),
                    module.running_var.numpy(), failures)
            compare(f"train {name}/num_batches_tracked", w[f"{name}/num_batches_tracked"].numpy(),
                    module.num_batches_tracked.numpy().astype(np.float32), failures)
            checks += 3

    if failures:
        print("\n".join(f"FAIL {f}" for f in failures))
        sys.exit(1)
    print(f"{checks} passed, 0 failed")


if __name__ == "__main__":
    main()
