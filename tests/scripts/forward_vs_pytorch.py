"""Cross-checks Strata against PyTorch through the checkpoint format.

1. Trains a small model that exercises every layer type (conv with stride/padding/dilation/groups,
   both poolings, every activation, swish from the example plugin, dropout, flatten, linear) for one
   epoch on the synthetic dataset, so the weights are not just their initial values.
2. Runs `strata forward` on random inputs and asks for every layer's output.
3. Builds the same network in PyTorch, loads the weights from the checkpoint with h5py (the
   checkpoint uses PyTorch's names and shapes: /model/conv1/weight is conv1.weight), and compares
   every layer's output.
4. Checks the checkpoint layout as h5py sees it, and LeNet-5's parameter shapes.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import h5py
import numpy as np
import torch
import torch.nn.functional as F

EXPERIMENT = """
seed: 7
backend: tbb
data: {type: synthetic, classes: 4, shape: [3, 16, 16], train_size: 256, test_size: 64,
       validation: 32, preprocess: [{type: normalize, per: pixel}]}
model:
  input: [3, 16, 16]
  layers:
    - {name: conv1, type: conv2d, out_channels: 8, kernel: 3, padding: 1}
    - {name: act1, type: leaky_relu, negative_slope: 0.1}
    - {name: conv2, type: conv2d, out_channels: 8, kernel: 3, stride: 2, padding: 2, dilation: 2, groups: 2, round: floor}
    - {name: act2, type: swish}
    - {name: pool1, type: max_pool, kernel: 2, stride: 2}
    - {name: conv3, type: conv2d, out_channels: 6, kernel: [3, 1], padding: same, bias: false}
    - {name: act3, type: tanh}
    - {name: pool2, type: avg_pool, kernel: 3, stride: 1, padding: 1}
    - {name: act4, type: sigmoid}
    - {name: drop, type: dropout, keep_prob: 0.8}
    - {name: flat, type: flatten}
    - {name: fc1, type: linear, out_features: 12}
    - {name: act5, type: relu}
    - {name: fc2, type: linear, out_features: 4}
optimizer: {type: sgd, lr: 0.05, momentum: 0.9}
train: {epochs: 1, batch_size: 32}
plugins: []
"""


def torch_forward(w, x):
    """The same network in PyTorch; returns every layer's output by name."""
    out = {}
    t = F.conv2d(x, w["conv1/weight"], w["conv1/bias"], padding=1); out["conv1"] = t
    t = F.leaky_relu(t, 0.1); out["act1"] = t
    t = F.conv2d(t, w["conv2/weight"], w["conv2/bias"], stride=2, padding=2, dilation=2, groups=2); out["conv2"] = t
    t = F.silu(t); out["act2"] = t
    t = F.max_pool2d(t, 2, 2); out["pool1"] = t
    t = F.conv2d(t, w["conv3/weight"], None, padding=(1, 0)); out["conv3"] = t
    t = torch.tanh(t); out["act3"] = t
    t = F.avg_pool2d(t, 3, 1, 1, count_include_pad=True); out["pool2"] = t
    t = torch.sigmoid(t); out["act4"] = t
    out["drop"] = t  # inference: identity
    t = t.flatten(1); out["flat"] = t
    t = F.linear(t, w["fc1/weight"], w["fc1/bias"]); out["fc1"] = t
    t = F.relu(t); out["act5"] = t
    t = F.linear(t, w["fc2/weight"], w["fc2/bias"]); out["fc2"] = t
    return out


def run(cmd):
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"FAIL: {' '.join(cmd)}\n{result.stdout}\n{result.stderr}")
    return result.stdout


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--strata", required=True)
    parser.add_argument("--source", required=True)
    args = parser.parse_args()
    torch.manual_seed(0)
    failures = []

    with tempfile.TemporaryDirectory() as work:
        exp = os.path.join(work, "all_layers.yaml")
        with open(exp, "w") as f:
            f.write(EXPERIMENT)
        run([args.strata, "train", exp, "--out", os.path.join(work, "run"), "--progress", "none"])
        ckpt = os.path.join(work, "run", "model.h5")

        # Random inputs through strata forward, every layer requested.
        x = np.random.default_rng(1).standard_normal((5, 3, 16, 16)).astype(np.float32)
        with h5py.File(os.path.join(work, "in.h5"), "w") as f:
            f["data"] = x
        names = ["conv1", "act1", "conv2", "act2", "pool1", "conv3", "act3", "pool2", "act4", "drop",
                 "flat", "fc1", "act5", "fc2"]
        run([args.strata, "forward", exp, "--weights", ckpt, "--input", os.path.join(work, "in.h5"),
             "--output", os.path.join(work, "out.h5"), "--layers", ",".join(names)])

        with h5py.File(ckpt, "r") as f:
            weights = {}
            f["model"].visititems(lambda name, obj: weights.__setitem__(name, torch.from_numpy(obj[()]))
                                  if isinstance(obj, h5py.Dataset) else None)
            # Layout as h5py sees it.
            if f.attrs["format"] != "strata-checkpoint": failures.append(f"format attr {f.attrs['format']!r}")
            if int(f.attrs["format_version"]) != 2: failures.append("format_version != 2")
            yaml_text = f["experiment"][()]
            yaml_text = yaml_text.decode() if isinstance(yaml_text, bytes) else yaml_text
            if "conv2d" not in yaml_text: failures.append("/experiment does not hold the YAML")
            if int(f["training"].attrs["epoch"]) != 1: failures.append("training epoch != 1")
            if len(f["history/train_loss"]) != 1: failures.append("history/train_loss length != 1")
            for key, value in weights.items():
                slot = f"optimizer/{key}/momentum"
                if slot not in f or f[slot].shape != tuple(value.shape):
                    failures.append(f"missing or misshapen {slot}")
            if "conv3/bias" in weights: failures.append("conv3 has bias: false but a bias was saved")
            if tuple(weights["conv2/weight"].shape) != (8, 4, 3, 3): failures.append("conv2/weight shape")
            if tuple(weights["fc1/weight"].shape) != (12, 6 * 4 * 4): failures.append("fc1/weight shape")

        with torch.no_grad():
            expected = torch_forward(weights, torch.from_numpy(x))
        with h5py.File(os.path.join(work, "out.h5"), "r") as f:
            for name in names:
                ours = f[name][()]
                theirs = expected[name].numpy()
                if ours.shape != theirs.shape:
                    failures.append(f"{name}: shape {ours.shape} vs PyTorch {theirs.shape}")
                    continue
                diff = float(np.max(np.abs(ours - theirs)))
                scale = max(1.0, float(np.max(np.abs(theirs))))
                status = "ok" if diff <= 1e-4 * scale else "FAIL"
                print(f"{status:4} {name:6} {str(ours.shape):18} max |strata - torch| = {diff:.2e}")
                if status != "ok": failures.append(f"{name}: max abs diff {diff}")

        # LeNet-5 from the default experiment, trained briefly on a subset: PyTorch shapes.
        lenet = os.path.join(args.source, "experiments", "lenet5_fashion.yaml")
        run([args.strata, "train", lenet, "--out", os.path.join(work, "lenet"), "--progress", "none",
             "--set", "train.epochs=1", "--set", "data.train_limit=2000", "--set", "data.test_limit=500",
             "--set", "data.validation=200"])
        with h5py.File(os.path.join(work, "lenet", "model.h5"), "r") as f:
            shapes = {k: f["model"][k].shape for k in ["conv1/weight", "conv1/bias", "conv2/weight", "fc1/weight",
                                                         "fc2/weight", "fc3/weight", "fc3/bias"]}
        want = {"conv1/weight": (6, 1, 5, 5), "conv1/bias": (6,), "conv2/weight": (16, 6, 5, 5),
                "fc1/weight": (120, 400), "fc2/weight": (84, 120), "fc3/weight": (10, 84), "fc3/bias": (10,)}
        for key, shape in want.items():
            print(f"{'ok' if shapes[key] == shape else 'FAIL':4} lenet5 /model/{key} {shapes[key]}")
            if shapes[key] != shape: failures.append(f"lenet5 {key}: {shapes[key]} != {shape}")
        with open(os.path.join(work, "lenet", "summary.json")) as f:
            summary = json.load(f)
        for key in ["test_accuracy", "test_loss", "epochs", "train_seconds", "train_images_per_second"]:
            if key not in summary: failures.append(f"summary.json lacks {key}")

    if failures:
        print("\n".join(f"FAIL {f}" for f in failures))
        sys.exit(1)
    print(f"{len(names) + 7} passed, 0 failed")


if __name__ == "__main__":
    main()
