"""The pieces of modern small CNNs against PyTorch: relu6, hardswish, hard_sigmoid and multiply
(a squeeze-and-excitation gate), label smoothing in the loss, and gradient clipping.

1. Forward: a MobileNetV3-style network with a squeeze-and-excitation block trains one epoch on
   the synthetic set, then `strata forward` on inputs of standard deviation 3 (so that every
   piece of relu6, hardswish and hard_sigmoid is reached) is compared, layer by layer, with
   torch.nn.functional on the checkpoint's weights.
2. One SGD step: the same kind of network (without the synthetic set's preprocessing) takes one
   full-batch step from known weights (`--weights` from a first run) on 32 images written as IDX
   files, with CrossEntropyLoss(label_smoothing), weight decay, and clip_grad_norm,
   clip_grad_value or both. PyTorch takes the same step (clip_grad_value_ then clip_grad_norm_,
   then SGD with weight decay on the weights and none on the biases, as Strata's decay_mult). The
   loss, the pre-clip gradient norm Strata records (/history/iterations/grad_norm) and the weight
   change of every parameter must agree, and clipping must really have been active.
Error bound: max |strata - torch| <= 1e-4 * max(1, max |torch|), the weight changes relative to
their largest element.
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

FORWARD_EXPERIMENT = """
seed: 12
backend: tbb
data: {type: synthetic, classes: 3, shape: [3, 10, 10], train_size: 96, test_size: 32}
model:
  input: [3, 10, 10]
  layers:
    - {name: conv1, type: conv2d, out_channels: 8, kernel: 3, padding: 1}
    - {name: hs1, type: hardswish}
    - {name: dw, type: conv2d, out_channels: 8, kernel: 3, padding: 1, groups: 8}
    - {name: r6, type: relu6}
    - {name: squeeze, type: global_avg_pool}
    - {name: fc1, type: conv2d, out_channels: 4, kernel: 1}
    - {name: r1, type: relu}
    - {name: fc2, type: conv2d, out_channels: 8, kernel: 1}
    - {name: gate, type: hard_sigmoid}
    - {name: excite, type: multiply, inputs: [r6, gate]}
    - {name: both, type: multiply, inputs: [excite, hs1]}
    - {name: pool, type: global_avg_pool}
    - {name: fc, type: linear, out_features: 3}
loss: {type: softmax_cross_entropy, label_smoothing: 0.1}
optimizer: {type: sgd, lr: 0.05, momentum: 0.9}
train: {epochs: 1, batch_size: 16}
"""

STEP_EXPERIMENT = """
seed: 7
backend: tbb
data: {type: idx, dir: "DATA_DIR", classes: 3}
model:
  input: [1, 8, 8]
  layers:
    - {name: conv1, type: conv2d, out_channels: 6, kernel: 3, padding: 1,
       init: {weight: {type: gaussian, std: 3}}}
    - {name: hs1, type: hardswish}
    - {name: conv2, type: conv2d, out_channels: 6, kernel: 3, padding: 1}
    - {name: r6, type: relu6}
    - {name: squeeze, type: global_avg_pool}
    - {name: fc1, type: conv2d, out_channels: 3, kernel: 1}
    - {name: r1, type: relu}
    - {name: fc2, type: conv2d, out_channels: 6, kernel: 1}
    - {name: gate, type: hard_sigmoid}
    - {name: excite, type: multiply, inputs: [gate, r6]}
    - {name: fc, type: linear, out_features: 3}
loss: {type: softmax_cross_entropy, label_smoothing: SMOOTHING}
optimizer: {type: sgd, lr: 0.5, weight_decay: 0.01}
train: {epochs: 1, batch_size: 32, shuffle: false, log_every: 1CLIP}
"""

PARAMS = ["conv1", "conv2", "fc1", "fc2", "fc"]

# (name, label smoothing, clip_grad_norm, clip_grad_value)
STEP_CASES = [
    ("clip_grad_norm 0.5, smoothing 0.1", 0.1, 0.5, None),
    ("clip_grad_value 0.02, no smoothing", 0.0, None, 0.02),
    ("both, smoothing 0.2", 0.2, 0.3, 0.05),
]


def forward_torch(w, x):
    out = {}
    t = F.conv2d(x, w["conv1/weight"], w["conv1/bias"], padding=1); out["conv1"] = t
    t = F.hardswish(t); out["hs1"] = t
    t = F.conv2d(t, w["dw/weight"], w["dw/bias"], padding=1, groups=8); out["dw"] = t
    t = F.relu6(t); out["r6"] = t
    s = F.adaptive_avg_pool2d(t, (1, 1)); out["squeeze"] = s
    s = F.conv2d(s, w["fc1/weight"], w["fc1/bias"]); out["fc1"] = s
    s = F.relu(s); out["r1"] = s
    s = F.conv2d(s, w["fc2/weight"], w["fc2/bias"]); out["fc2"] = s
    s = F.hardsigmoid(s); out["gate"] = s
    t = out["r6"] * s; out["excite"] = t
    t = t * out["hs1"]; out["both"] = t
    t = F.adaptive_avg_pool2d(t, (1, 1)); out["pool"] = t
    t = F.linear(t.flatten(1), w["fc/weight"], w["fc/bias"]); out["fc"] = t
    return out


def step_torch(w, x):
    t = F.hardswish(F.conv2d(x, w["conv1/weight"], w["conv1/bias"], padding=1))
    r6 = F.relu6(F.conv2d(t, w["conv2/weight"], w["conv2/bias"], padding=1))
    s = F.adaptive_avg_pool2d(r6, (1, 1))
    s = F.relu(F.conv2d(s, w["fc1/weight"], w["fc1/bias"]))
    gate = F.hardsigmoid(F.conv2d(s, w["fc2/weight"], w["fc2/bias"]))
    return F.linear((gate * r6).flatten(1), w["fc/weight"], w["fc/bias"]), r6


def run(cmd):
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"FAIL: {' '.join(cmd)}\n{result.stdout}\n{result.stderr}")
    return result.stdout


def read_model(path):
    weights = {}
    with h5py.File(path, "r") as f:
        f["model"].visititems(lambda name, obj: weights.__setitem__(name, torch.from_numpy(np.array(obj[()])))
                              if isinstance(obj, h5py.Dataset) else None)
    return weights


class Checks:
    def __init__(self):
        self.failures = []
        self.count = 0

    def compare(self, name, ours, theirs, scale=None):
        self.count += 1
        ours = np.asarray(ours, dtype=np.float64)
        theirs = np.asarray(theirs, dtype=np.float64)
        if ours.shape != theirs.shape:
            self.fail(f"{name}: shape {ours.shape} vs PyTorch {theirs.shape}")
            return
        diff = float(np.max(np.abs(ours - theirs))) if ours.size else 0.0
        if scale is None:
            scale = max(1.0, float(np.max(np.abs(theirs))) if theirs.size else 0.0)
        status = "ok" if diff <= 1e-4 * scale else "FAIL"
        print(f"{status:4} {name:52} max |strata - torch| = {diff:.2e} (scale {scale:.3g})")
        if status != "ok":
            self.failures.append(f"{name}: max abs diff {diff} (scale {scale})")

    def require(self, name, condition, detail):
        self.count += 1
        print(f"{'ok' if condition else 'FAIL':4} {name}: {detail}")
        if not condition:
            self.failures.append(f"{name}: {detail}")

    def fail(self, message):
        print(f"FAIL {message}")
        self.failures.append(message)


def write_idx(path, array, magic):
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">I", magic))
        for d in array.shape:
            f.write(struct.pack(">I", d))
        f.write(array.astype(np.uint8).tobytes())


def check_forward(strata, work, checks):
    exp = os.path.join(work, "forward.yaml")
    with open(exp, "w") as f:
        f.write(FORWARD_EXPERIMENT)
    run([strata, "train", exp, "--out", os.path.join(work, "forward"), "--progress", "none"])
    ckpt = os.path.join(work, "forward", "model.h5")
    weights = read_model(ckpt)
    x = (3 * np.random.default_rng(5).standard_normal((9, 3, 10, 10))).astype(np.float32)
    with h5py.File(os.path.join(work, "in.h5"), "w") as f:
        f["data"] = x
    names = ["conv1", "hs1", "dw", "r6", "squeeze", "fc1", "r1", "fc2", "gate", "excite", "both",
             "pool", "fc"]
    run([strata, "forward", exp, "--weights", ckpt, "--input", os.path.join(work, "in.h5"),
         "--output", os.path.join(work, "out.h5"), "--layers", ",".join(names)])
    with torch.no_grad():
        expected = forward_torch(weights, torch.from_numpy(x))
    # Every piece of the activations is reached, or the comparison proves less than it claims.
    pre = expected["conv1"].numpy()
    checks.require("hardswish inputs cover its three pieces", (pre < -3).mean() > 0.05 and (pre > 3).mean() > 0.05,
                   f"{(pre < -3).mean():.2f} below -3, {(pre > 3).mean():.2f} above 3")
    dw = expected["dw"].numpy()
    checks.require("relu6 inputs cover its three pieces", (dw < 0).mean() > 0.05 and (dw > 6).mean() > 0.01,
                   f"{(dw < 0).mean():.2f} below 0, {(dw > 6).mean():.2f} above 6")
    with h5py.File(os.path.join(work, "out.h5"), "r") as f:
        for name in names:
            checks.compare(f"forward {name}", f[name][()], expected[name].numpy())


def check_step(strata, work, case, checks):
    name, smoothing, max_norm, max_value = case
    data_dir = os.path.join(work, "idx")
    if not os.path.isdir(data_dir):
        os.makedirs(data_dir)
        rng = np.random.default_rng(8)
        write_idx(os.path.join(data_dir, "train-images-idx3-ubyte.gz"), rng.integers(0, 256, (32, 8, 8)), 0x803)
        write_idx(os.path.join(data_dir, "train-labels-idx1-ubyte.gz"), rng.integers(0, 3, 32), 0x801)
        write_idx(os.path.join(data_dir, "t10k-images-idx3-ubyte.gz"), rng.integers(0, 256, (8, 8, 8)), 0x803)
        write_idx(os.path.join(data_dir, "t10k-labels-idx1-ubyte.gz"), rng.integers(0, 3, 8), 0x801)
    clip = ""
    if max_norm is not None:
        clip += f", clip_grad_norm: {max_norm}"
    if max_value is not None:
        clip += f", clip_grad_value: {max_value}"
    exp = os.path.join(work, f"step_{smoothing}_{max_norm}_{max_value}.yaml")
    with open(exp, "w") as f:
        f.write(STEP_EXPERIMENT.replace("DATA_DIR", data_dir).replace("SMOOTHING", str(smoothing))
                .replace("CLIP", clip))
    start = os.path.join(work, "start")
    if not os.path.exists(os.path.join(start, "model.h5")):
        run([strata, "train", exp, "--out", start, "--progress", "none"])
    out = exp[:-5]
    run([strata, "train", exp, "--out", out, "--progress", "none", "--weights", os.path.join(start, "model.h5")])
    w0 = read_model(os.path.join(start, "model.h5"))
    w1 = read_model(os.path.join(out, "model.h5"))
    with h5py.File(os.path.join(out, "model.h5"), "r") as f:
        loss_ours = float(f["history/iterations/loss"][0])
        norm_ours = float(f["history/iterations/grad_norm"][0])
        checks.require(f"{name}: one step", f["history/iterations/loss"].shape == (1,),
                       f"{f['history/iterations/loss'].shape[0]} logged steps")

    with gzip.open(os.path.join(data_dir, "train-images-idx3-ubyte.gz")) as f:
        images = np.frombuffer(f.read()[16:], np.uint8).reshape(32, 1, 8, 8).astype(np.float32) / 255
    with gzip.open(os.path.join(data_dir, "train-labels-idx1-ubyte.gz")) as f:
        labels = torch.from_numpy(np.frombuffer(f.read()[8:], np.uint8).astype(np.int64))
    params = {k: v.clone().requires_grad_(True) for k, v in w0.items()}
    logits, r6 = step_torch(params, torch.from_numpy(images))
    loss = torch.nn.CrossEntropyLoss(label_smoothing=smoothing)(logits, labels)
    loss.backward()
    r6 = r6.detach().numpy()
    checks.require(f"{name}: relu6 reaches both kinks' sides", (r6 == 0).mean() > 0.02 and (r6 == 6).mean() > 0.02,
                   f"{(r6 == 0).mean():.2f} at 0, {(r6 == 6).mean():.2f} at 6")
    ordered = [params[f"{p}/{k}"] for p in PARAMS for k in ("weight", "bias")]
    raw_norm = float(torch.norm(torch.stack([torch.norm(p.grad) for p in ordered])))
    if max_value is not None:
        clipped = float(np.mean([float((p.grad.abs() > max_value).float().mean()) for p in ordered]))
        checks.require(f"{name}: clip_grad_value is active", clipped > 0.05,
                       f"{clipped:.2f} of the gradient elements exceed {max_value}")
        torch.nn.utils.clip_grad_value_(ordered, max_value)
    if max_norm is not None:
        seen = float(torch.nn.utils.clip_grad_norm_(ordered, max_norm))
        checks.require(f"{name}: clip_grad_norm is active", seen > 1.5 * max_norm,
                       f"norm {seen:.3g} against max_norm {max_norm}")
    groups = [dict(params=[params[f"{p}/weight"] for p in PARAMS], weight_decay=0.01),
              dict(params=[params[f"{p}/bias"] for p in PARAMS], weight_decay=0.0)]
    torch.optim.SGD(groups, lr=0.5).step()
    checks.compare(f"{name}: loss", loss_ours, float(loss))
    checks.compare(f"{name}: pre-clip gradient norm", norm_ours, raw_norm, scale=raw_norm)
    for key in sorted(w0):
        ours = (w1[key] - w0[key]).numpy()
        theirs = (params[key].detach() - w0[key]).numpy()
        checks.compare(f"{name}: change of {key}", ours, theirs, scale=float(np.max(np.abs(theirs))))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--strata", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    checks = Checks()
    with tempfile.TemporaryDirectory() as work:
        check_forward(args.strata, work, checks)
        for case in STEP_CASES:
            check_step(args.strata, work, case, checks)
    if checks.failures:
        print("\n".join(f"FAIL {f}" for f in checks.failures))
        sys.exit(1)
    print(f"{checks.count} passed, 0 failed")


if __name__ == "__main__":
    main()
