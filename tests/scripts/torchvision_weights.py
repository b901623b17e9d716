"""`strata forward` with converted torchvision weights gives torchvision's logits.

1. Blocks against PyTorch: an inception module in torchvision's BasicConv2d form (conv, batch
   norm, ReLU), one in the paper's form (conv with bias, ReLU) and a context module, with random
   weights and batch-norm statistics, every part's output compared in eval mode.
2. For each model: build torchvision's model (weights=None, then random batch-norm statistics),
convert it with python/torchvision_to_strata.py, run `strata forward` on the zoo experiment at a
small input size (the ResNets end in global average pooling, so any size works) and compare the
logits with torchvision's in eval mode.
"""
import argparse
import os
import subprocess
import sys
import tempfile

import h5py
import numpy as np
import torch

TOLERANCE = 1e-4  # max |strata - torch| / max |torch|


BLOCKS_EXPERIMENT = """
backend: tbb
model:
  input: [6, 11, 11]
  layers:
    - {name: inc, type: inception, ch1x1: 4, ch3x3red: 3, ch3x3: 5, ch5x5red: 2, ch5x5: 3, pool_proj: 2, batch_norm: true}
    - {name: ctx, type: context_module, dilations: [1, 2, 3]}
    - {name: v1, type: inception, ch1x1: 2, ch3x3red: 2, ch3x3: 3, ch5x5red: 2, ch5x5: 2, pool_proj: 3}
"""


def torch_blocks(w, x):
    """The same three blocks in PyTorch (eval mode); returns the outputs by layer name."""
    import torch.nn.functional as F

    def basic(prefix, t, padding, batch_norm, dilation=1, relu=True):
        t = F.conv2d(t, w[f"{prefix}.conv/weight"], None if batch_norm else w[f"{prefix}.conv/bias"],
                     padding=padding, dilation=dilation)
        if batch_norm:
            t = F.batch_norm(t, w[f"{prefix}.bn/running_mean"], w[f"{prefix}.bn/running_var"],
                             w[f"{prefix}.bn/weight"], w[f"{prefix}.bn/bias"], False, 0.0, 0.001)
        return F.relu(t) if relu else t

    def inception(name, t, batch_norm):
        b1 = basic(f"{name}.branch1", t, 0, batch_norm)
        b2 = basic(f"{name}.branch2.1", basic(f"{name}.branch2.0", t, 0, batch_norm), 1, batch_norm)
        b3 = basic(f"{name}.branch3.1", basic(f"{name}.branch3.0", t, 0, batch_norm), 2, batch_norm)
        b4 = basic(f"{name}.branch4.1", F.max_pool2d(t, 3, 1, 1), 0, batch_norm)
        return torch.cat([b1, b2, b3, b4], 1)

    out = {}
    t = inception("inc", x, True); out["inc"] = t
    for k, d in enumerate([1, 2, 3], start=1):
        t = F.relu(F.conv2d(t, w[f"ctx.conv{k}/weight"], w[f"ctx.conv{k}/bias"], padding=d, dilation=d))
    t = F.conv2d(t, w["ctx.conv4/weight"], w["ctx.conv4/bias"]); out["ctx"] = t
    t = inception("v1", t, False); out["v1"] = t
    return out


def check_blocks(strata, work):
    """Random weights for every tensor of the blocks experiment; Strata against PyTorch."""
    experiment = os.path.join(work, "blocks.yaml")
    with open(experiment, "w") as f:
        f.write(BLOCKS_EXPERIMENT)
    # The layer names, types and shapes come from `strata summary --expand --json`; the kernel
    # sizes from the module's structure (1x1 except the 3x3 and 5x5 branches and the dilated 3x3s).
    summary = subprocess.run([strata, "summary", experiment, "--expand", "--json"], check=True,
                             capture_output=True, text=True).stdout
    import json
    rows = json.loads(summary)["rows"]
    rng = np.random.default_rng(5)
    weights = {}
    shapes = {row["name"]: row for row in rows}
    for row in rows:
        name, kind = row["name"], row["type"]
        if kind == "conv2d":
            inputs = shapes[row["inputs"][0]]["output"][0] if row["inputs"][0] in shapes else 6
            kernel = 1 if (".branch1." in name or name.endswith(".0.conv") or ".branch4.1." in name
                           or name == "ctx.conv4") else (5 if ".branch3.1." in name else 3)
            out = row["output"][0]
            weights[f"{name}/weight"] = rng.standard_normal((out, inputs, kernel, kernel)).astype(np.float32) * 0.3
            if row["parameters"] > out * inputs * kernel * kernel:
                weights[f"{name}/bias"] = rng.standard_normal(out).astype(np.float32) * 0.1
        elif kind == "batch_norm":
            c = row["output"][0]
            weights[f"{name}/weight"] = (rng.random(c) + 0.5).astype(np.float32)
            weights[f"{name}/bias"] = (rng.standard_normal(c) * 0.1).astype(np.float32)
            weights[f"{name}/running_mean"] = (rng.standard_normal(c) * 0.1).astype(np.float32)
            weights[f"{name}/running_var"] = (rng.random(c) + 0.5).astype(np.float32)
            weights[f"{name}/num_batches_tracked"] = np.float32(7)
    state = {k.replace("/", "."): torch.from_numpy(np.asarray(v)) for k, v in weights.items()}
    checkpoint = os.path.join(work, "blocks.h5")
    import torchvision_to_strata as converter
    converter.state_dict_to_checkpoint(state, checkpoint)
    x = rng.standard_normal((2, 6, 11, 11)).astype(np.float32)
    inputs, outputs = os.path.join(work, "bx.h5"), os.path.join(work, "by.h5")
    with h5py.File(inputs, "w") as f:
        f.create_dataset("data", data=x)
    subprocess.run([strata, "forward", experiment, "--weights", checkpoint, "--input", inputs,
                    "--output", outputs, "--layers", "inc,ctx,v1"], check=True)
    expected = torch_blocks({k: torch.from_numpy(np.asarray(v)) for k, v in weights.items()},
                            torch.from_numpy(x))
    failures = 0
    with h5py.File(outputs, "r") as f:
        for name in ["inc", "ctx", "v1"]:
            actual, reference = f[name][()], expected[name].numpy()
            error = float(np.abs(actual - reference).max() / np.abs(reference).max())
            ok = actual.shape == reference.shape and error <= TOLERANCE
            print(f"{'ok  ' if ok else 'FAIL'} block {name}: {actual.shape}, max relative error {error:.2e}")
            failures += 0 if ok else 1
    return failures


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--strata", required=True)
    parser.add_argument("--source", required=True)
    args = parser.parse_args()
    sys.path.insert(0, os.path.join(args.source, "python"))
    import torchvision_to_strata as converter

    torch.set_num_threads(2)
    failures = 0
    with tempfile.TemporaryDirectory() as work:
        failures += check_blocks(args.strata, work)
        for name, size, seed in [("resnet18", 64, 1), ("resnet50", 48, 2)]:
            model = converter.build_model(name, randomize_bn=True, seed=seed)
            weights = os.path.join(work, f"{name}.h5")
            converter.state_dict_to_checkpoint(model.state_dict(), weights)
            x = torch.from_numpy(np.random.default_rng(seed).standard_normal((3, 3, size, size)).astype(np.float32))
            with torch.no_grad():
                expected = model(x).numpy()
            inputs = os.path.join(work, "x.h5")
            outputs = os.path.join(work, "y.h5")
            with h5py.File(inputs, "w") as f:
                f.create_dataset("data", data=x.numpy())
            command = [args.strata, "forward", os.path.join(args.source, "experiments", f"{name}.yaml"),
                       "--weights", weights, "--input", inputs, "--output", outputs,
                       "--set", f"model.input=[3, {size}, {size}]"]
            subprocess.run(command, check=True)
            with h5py.File(outputs, "r") as f:
                actual = f["fc"][()]
            error = float(np.abs(actual - expected).max() / np.abs(expected).max())
            ok = actual.shape == expected.shape and error <= TOLERANCE
            print(f"{'ok  ' if ok else 'FAIL'} {name} at {size}x{size}: logits {actual.shape}, "
                  f"max relative error {error:.2e} (tolerance {TOLERANCE:g})")
            failures += 0 if ok else 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
