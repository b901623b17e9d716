"""`strata import` of torchvision models exported by torch.onnx.export gives PyTorch's logits.

For each model named on the command line: torchvision's constructor with random weights
(weights=None) and random batch-norm affine parameters and running statistics, in eval mode;
torch.onnx.export (opset 13, do_constant_folding=True, a dynamic batch); `strata import`; then
`strata forward` of the imported experiment and weights on random inputs, whose logits must equal
PyTorch's within TOLERANCE (max |strata - torch| / max |torch|). The input size is the smallest
the model allows: the ResNets, GoogLeNet and MNASNet end in global average pooling (64x64; MNASNet's
x.mean([2, 3]) is a ReduceMean), VGG and AlexNet in an adaptive pooling to 7x7 and 6x6, which ONNX
can express only when the feature map is a multiple of it (224x224).

    onnx_import_torchvision.py --strata build/bin/strata resnet18 vgg11_bn
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

import h5py
import numpy as np
import torch
import torchvision

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))
from torchvision_to_strata import randomize_batch_norm  # noqa: E402

TOLERANCE = 1e-4

# name: (input size, constructor)
MODELS = {
    "resnet18": (64, lambda: torchvision.models.resnet18(weights=None)),
    "resnet50": (64, lambda: torchvision.models.resnet50(weights=None)),
    "vgg11_bn": (224, lambda: torchvision.models.vgg11_bn(weights=None)),
    "googlenet": (64, lambda: torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=True)),
    "alexnet": (224, lambda: torchvision.models.alexnet(weights=None)),
    "mnasnet0_5": (64, lambda: torchvision.models.mnasnet0_5(weights=None)),
    "mobilenet_v3_small": (64, lambda: torchvision.models.mobilenet_v3_small(weights=None)),
    "squeezenet1_1": (64, lambda: torchvision.models.squeezenet1_1(weights=None)),
    # Not in the ctest run, for time; each imports and agrees when named on the command line.
    "squeezenet1_0": (64, lambda: torchvision.models.squeezenet1_0(weights=None)),
    "mobilenet_v2": (64, lambda: torchvision.models.mobilenet_v2(weights=None)),
    "densenet121": (64, lambda: torchvision.models.densenet121(weights=None)),
    "resnext50_32x4d": (64, lambda: torchvision.models.resnext50_32x4d(weights=None)),
    "efficientnet_b0": (64, lambda: torchvision.models.efficientnet_b0(weights=None)),
    "regnet_y_400mf": (64, lambda: torchvision.models.regnet_y_400mf(weights=None)),
    "inception_v3": (96, lambda: torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=True)),
}


def check(strata, name, seed, work):
    size, constructor = MODELS[name]
    torch.manual_seed(seed)
    model = constructor()
    randomize_batch_norm(model, seed)  # python/torchvision_to_strata.py
    model.eval()
    x = torch.from_numpy(np.random.default_rng(seed).standard_normal((2, 3, size, size)).astype(np.float32))
    with torch.no_grad():
        expected = model(x).numpy()
    onnx_path = os.path.join(work, f"{name}.onnx")
    start = time.monotonic()
    torch.onnx.export(model, x, onnx_path, opset_version=13, do_constant_folding=True,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    exported = time.monotonic()
    out = os.path.join(work, name)
    imported = subprocess.run([strata, "import", onnx_path, "--out", out], capture_output=True, text=True)
    print(imported.stdout, end="")
    if imported.returncode != 0:
        print(f"FAIL {name}: strata import exited {imported.returncode}:\n{imported.stderr}")
        return 1
    done_import = time.monotonic()
    inputs, outputs = os.path.join(work, f"{name}_x.h5"), os.path.join(work, f"{name}_y.h5")
    with h5py.File(inputs, "w") as f:
        f.create_dataset("data", data=x.numpy())
    subprocess.run([strata, "forward", os.path.join(out, "experiment.yaml"), "--weights",
                    os.path.join(out, "weights.h5"), "--input", inputs, "--output", outputs], check=True)
    with h5py.File(outputs, "r") as f:
        actual = f[list(f.keys())[0]][()]
    error = float(np.abs(actual - expected).max() / np.abs(expected).max())
    ok = actual.shape == expected.shape and error <= TOLERANCE
    print(f"{'ok  ' if ok else 'FAIL'} {name} at {size}x{size}: logits {actual.shape}, max relative error "
          f"{error:.2e} (tolerance {TOLERANCE:g}); export {exported - start:.1f} s, import "
          f"{done_import - exported:.1f} s, forward {time.monotonic() - done_import:.1f} s")
    for path in (onnx_path, os.path.join(out, "weights.h5")):
        os.remove(path)  # the big files go as soon as they are checked
    return 0 if ok else 1


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--strata", required=True)
    parser.add_argument("models", nargs="+", choices=sorted(MODELS))
    args = parser.parse_args()
    torch.set_num_threads(2)
    failures = 0
    with tempfile.TemporaryDirectory() as work:
        for seed, name in enumerate(args.models, start=1):
            failures += check(args.strata, name, seed, work)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
