"""`strata forward` with converted torchvision weights gives torchvision's logits.

For each model: build torchvision's model (weights=None, then random batch-norm statistics),
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
