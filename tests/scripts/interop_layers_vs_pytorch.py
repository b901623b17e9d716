"""What ONNX interop needs the layers to express, against PyTorch: pooling with round: ceil
(ceil_mode=True, the last window clipped), max-pool dilation, asymmetric padding ([top, bottom,
left, right], `same` with an even kernel, `same_lower`), conv2d padding modes (reflect, replicate,
circular) and the pad layer, batch_norm with momentum: null (cumulative average) and with
track_running_stats: false, softmax over a chosen axis.

1. Forward: a network using every one of these trains one epoch on the synthetic set (so the
   cumulative running statistics are far from their initial values), then `strata forward` on
   random inputs is compared, layer by layer, with torch.nn.functional on the checkpoint's weights.
2. One SGD step (forward and backward): the same network without the final softmax takes one
   full-batch step from known weights (`--weights` from a first run, which also leaves
   num_batches_tracked at 1, so the cumulative average really averages) on 32 images written as
   IDX files. PyTorch takes the same step: the loss, the change of every parameter (the gradient
   through every new piece reaches the first convolution) and bn1's running statistics must agree.
Besides, `strata gradcheck` must pass on the network, on the reference and the tbb backend.
Error bound: max |strata - torch| <= 1e-4 * max(1, max |torch|) (the weight changes relative to
their largest element), as in the other *_vs_pytorch scripts.
"""
import argparse
import gzip
import os
import subprocess
import sys
import tempfile
import warnings

import h5py
import numpy as np
import torch
import torch.nn.functional as F

# The harness of the sibling script (same folder, so on sys.path): running strata, reading a
# checkpoint, the comparisons with their error bound, IDX files.
from modern_layers_vs_pytorch import Checks, read_model, run, write_idx

LAYERS = """
    - {name: conv1, type: conv2d, out_channels: 6, kernel: 3, padding: 1, padding_mode: reflect,
       bias: false}
    - {name: pool1, type: max_pool, kernel: 3, stride: 2, round: ceil}
    - {name: bn1, type: batch_norm, momentum: null}
    - {name: act1, type: relu}
    - {name: conv2, type: conv2d, out_channels: 6, kernel: 2, padding: same}
    - {name: pad1, type: pad, padding: [1, 2, 0, 1], mode: circular}
    - {name: conv3, type: conv2d, out_channels: 4, kernel: 3, padding: [1, 0, 2, 1],
       padding_mode: replicate}
    - {name: pool2, type: max_pool, kernel: 3, stride: 1, dilation: 2, padding: [1, 0, 0, 1]}
    - {name: pool3, type: avg_pool, kernel: 3, stride: 2, padding: 1, round: ceil}
    - {name: bn2, type: batch_norm, track_running_stats: false}
    - {name: pool4, type: avg_pool, kernel: 2, stride: 1, padding: same_lower,
       count_include_pad: false}
    - {name: pad2, type: pad, padding: [0, 1], mode: reflect}
    - {name: side, type: softmax, axis: -1, inputs: pool4}
    - {name: sm, type: softmax, axis: 2, inputs: pad2}
    - {name: gate, type: multiply, inputs: [sm, pad2]}
    - {name: gap, type: global_avg_pool}
    - {name: fc, type: linear, out_features: 3}
"""

FORWARD_EXPERIMENT = """
seed: 14
backend: tbb
data: {type: synthetic, classes: 3, shape: [3, 16, 16], train_size: 96, test_size: 32,
       validation: 16}
model:
  input: [3, 16, 16]
  layers:
LAYERS
loss: {type: softmax_cross_entropy}
optimizer: {type: sgd, lr: 0.05, momentum: 0.9}
train: {epochs: 1, batch_size: 16}
""".replace("LAYERS", LAYERS.lstrip("\n").rstrip("\n"))

STEP_EXPERIMENT = """
seed: 9
backend: tbb
data: {type: idx, dir: "DATA_DIR", classes: 3}
model:
  input: [1, 16, 16]
  layers:
LAYERS
optimizer: {type: sgd, lr: 0.5}
train: {epochs: 1, batch_size: 32, shuffle: false, log_every: 1}
""".replace("LAYERS", LAYERS.lstrip("\n").rstrip("\n"))

def network(w, x, bn1_training, bn1_stats=None):
    """LAYERS in torch.nn.functional; every layer's output by name. bn1_stats: (running_mean,
    running_var) tensors that a training-mode bn1 updates in place with momentum=None."""
    out = {}
    # conv1 has no bias: before a batch norm in training its gradient is zero (ResNet's layout).
    t = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), w["conv1/weight"])
    out["conv1"] = t
    t = F.max_pool2d(t, 3, 2, ceil_mode=True); out["pool1"] = t
    if bn1_training:
        mean, var = bn1_stats
        # momentum=None: PyTorch's cumulative average, 1/num_batches_tracked after its increment.
        t = F.batch_norm(t, mean, var, w["bn1/weight"], w["bn1/bias"], training=True,
                         momentum=1.0 / (float(w["bn1/num_batches_tracked"]) + 1.0))
    else:
        t = F.batch_norm(t, w["bn1/running_mean"], w["bn1/running_var"], w["bn1/weight"],
                         w["bn1/bias"], training=False)
    out["bn1"] = t
    t = F.relu(t); out["act1"] = t
    t = F.conv2d(t, w["conv2/weight"], w["conv2/bias"], padding="same"); out["conv2"] = t
    # F.pad's order is (left, right, top, bottom); Strata's [top, bottom, left, right].
    t = F.pad(t, (0, 1, 1, 2), mode="circular"); out["pad1"] = t
    t = F.conv2d(F.pad(t, (2, 1, 1, 0), mode="replicate"), w["conv3/weight"], w["conv3/bias"])
    out["conv3"] = t
    t = F.max_pool2d(F.pad(t, (0, 1, 1, 0), value=float("-inf")), 3, 1, dilation=2)
    out["pool2"] = t
    t = F.avg_pool2d(t, 3, 2, 1, ceil_mode=True); out["pool3"] = t
    t = F.batch_norm(t, None, None, w["bn2/weight"], w["bn2/bias"], training=True); out["bn2"] = t
    # count_include_pad=False over explicit zero padding [1, 0, 1, 0]: the sum over the real
    # elements divided by their number.
    padded = F.pad(t, (1, 0, 1, 0))
    real = F.pad(torch.ones_like(t[:1, :1]), (1, 0, 1, 0))
    t = F.avg_pool2d(padded, 2, 1) / F.avg_pool2d(real, 2, 1); out["pool4"] = t
    out["side"] = torch.softmax(t, dim=-1)
    t = F.pad(t, (1, 1, 0, 0), mode="reflect"); out["pad2"] = t
    s = torch.softmax(t, dim=2); out["sm"] = s
    t = s * t; out["gate"] = t
    t = F.adaptive_avg_pool2d(t, (1, 1)); out["gap"] = t
    t = F.linear(t.flatten(1), w["fc/weight"], w["fc/bias"]); out["fc"] = t
    return out


def check_forward(strata, work, checks):
    exp = os.path.join(work, "forward.yaml")
    with open(exp, "w") as f:
        f.write(FORWARD_EXPERIMENT)
    run([strata, "train", exp, "--out", os.path.join(work, "forward"), "--progress", "none"])
    ckpt = os.path.join(work, "forward", "model.h5")
    weights = read_model(ckpt)
    checks.require("bn2 (track_running_stats: false) saves no buffers",
                   not any(k.startswith("bn2/running") or k == "bn2/num_batches_tracked" for k in weights),
                   ", ".join(sorted(k for k in weights if k.startswith("bn2/"))))
    tracked = float(weights["bn1/num_batches_tracked"])
    checks.require("bn1 running statistics trained", tracked == 5,
                   f"num_batches_tracked {tracked:g} (80 images / 16)")
    x = np.random.default_rng(6).standard_normal((7, 3, 16, 16)).astype(np.float32)
    with h5py.File(os.path.join(work, "in.h5"), "w") as f:
        f["data"] = x
    names = ["conv1", "pool1", "bn1", "act1", "conv2", "pad1", "conv3", "pool2", "pool3", "bn2",
             "pool4", "side", "pad2", "sm", "gate", "gap", "fc"]
    run([strata, "forward", exp, "--weights", ckpt, "--input", os.path.join(work, "in.h5"),
         "--output", os.path.join(work, "out.h5"), "--layers", ",".join(names)])
    with torch.no_grad():
        expected = network(weights, torch.from_numpy(x), bn1_training=False)
    with h5py.File(os.path.join(work, "out.h5"), "r") as f:
        for name in names:
            checks.compare(f"forward {name}", f[name][()], expected[name].numpy())


def check_gradcheck(strata, work, checks):
    """`strata gradcheck` (central differences, every parameter and the input) passes on the
    network, on both backends."""
    exp = os.path.join(work, "forward.yaml")
    for backend in ("reference", "tbb"):
        result = subprocess.run([strata, "gradcheck", exp, "--backend", backend, "--batch", "3"],
                                capture_output=True, text=True)
        checks.require(f"strata gradcheck ({backend})", result.returncode == 0,
                       (result.stdout + result.stderr).strip().splitlines()[-1] if result.returncode == 0
                       else result.stdout + result.stderr)


def check_step(strata, work, checks):
    data_dir = os.path.join(work, "idx")
    os.makedirs(data_dir)
    rng = np.random.default_rng(10)
    write_idx(os.path.join(data_dir, "train-images-idx3-ubyte.gz"), rng.integers(0, 256, (32, 16, 16)), 0x803)
    write_idx(os.path.join(data_dir, "train-labels-idx1-ubyte.gz"), rng.integers(0, 3, 32), 0x801)
    write_idx(os.path.join(data_dir, "t10k-images-idx3-ubyte.gz"), rng.integers(0, 256, (8, 16, 16)), 0x803)
    write_idx(os.path.join(data_dir, "t10k-labels-idx1-ubyte.gz"), rng.integers(0, 3, 8), 0x801)
    exp = os.path.join(work, "step.yaml")
    with open(exp, "w") as f:
        f.write(STEP_EXPERIMENT.replace("DATA_DIR", data_dir))
    start = os.path.join(work, "start")
    run([strata, "train", exp, "--out", start, "--progress", "none"])
    out = os.path.join(work, "step")
    run([strata, "train", exp, "--out", out, "--progress", "none", "--weights", os.path.join(start, "model.h5")])
    w0 = read_model(os.path.join(start, "model.h5"))
    w1 = read_model(os.path.join(out, "model.h5"))
    with h5py.File(os.path.join(out, "model.h5"), "r") as f:
        loss_ours = float(f["history/iterations/loss"][0])
        checks.require("one step", f["history/iterations/loss"].shape == (1,),
                       f"{f['history/iterations/loss'].shape[0]} logged steps")

    with gzip.open(os.path.join(data_dir, "train-images-idx3-ubyte.gz")) as f:
        images = np.frombuffer(f.read()[16:], np.uint8).reshape(32, 1, 16, 16).astype(np.float32) / 255
    with gzip.open(os.path.join(data_dir, "train-labels-idx1-ubyte.gz")) as f:
        labels = torch.from_numpy(np.frombuffer(f.read()[8:], np.uint8).astype(np.int64))
    params = {k: v.clone().requires_grad_(True) for k, v in w0.items()
              if k.endswith("/weight") or k.endswith("/bias")}
    merged = dict(w0)
    merged.update(params)
    stats = (w0["bn1/running_mean"].clone(), w0["bn1/running_var"].clone())
    checks.require("the start checkpoint has tracked one batch",
                   float(w0["bn1/num_batches_tracked"]) == 1.0,
                   f"num_batches_tracked {float(w0['bn1/num_batches_tracked']):g}")
    logits = network(merged, torch.from_numpy(images), bn1_training=True, bn1_stats=stats)["fc"]
    loss = torch.nn.CrossEntropyLoss()(logits, labels)
    loss.backward()
    checks.compare("step: loss", loss_ours, float(loss))
    for key in sorted(params):
        ours = (w1[key] - w0[key]).numpy()
        theirs = (-0.5 * params[key].grad).numpy()
        checks.compare(f"step: change of {key}", ours, theirs, scale=float(np.max(np.abs(theirs))))
    checks.compare("step: bn1/running_mean (cumulative)", w1["bn1/running_mean"].numpy(), stats[0].numpy())
    checks.compare("step: bn1/running_var (cumulative)", w1["bn1/running_var"].numpy(), stats[1].numpy())
    checks.compare("step: bn1/num_batches_tracked", w1["bn1/num_batches_tracked"].numpy(), np.float32(2.0))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--strata", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    # PyTorch notes that padding='same' with an even kernel copies the input: that is the point.
    warnings.filterwarnings("ignore", message="Using padding='same' with even kernel")
    checks = Checks()
    with tempfile.TemporaryDirectory() as work:
        check_forward(args.strata, work, checks)
        check_gradcheck(args.strata, work, checks)
        check_step(args.strata, work, checks)
    if checks.failures:
        print("\n".join(f"FAIL {f}" for f in checks.failures))
        sys.exit(1)
    print(f"{checks.count} passed, 0 failed")


if __name__ == "__main__":
    main()
