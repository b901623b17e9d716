#!/usr/bin/python3
"""Turn a torchvision model's state_dict into a Strata checkpoint for the matching zoo experiment.

    python3 python/torchvision_to_strata.py resnet18 resnet18.h5                 # random weights
    python3 python/torchvision_to_strata.py resnet50 r50.h5 --state-dict r50.pth  # saved weights
    build/bin/strata forward experiments/resnet18.yaml --weights resnet18.h5 --input x.h5 --output y.h5

The zoo's ResNets (experiments/resnet{18,34,50,101,152}.yaml) name every layer as torchvision
names its modules, so the mapping is the checkpoint rule of docs/checkpoint-format.md and nothing
else: the key `layer1.0.conv1.weight` becomes the dataset `/model/layer1.0.conv1/weight`.
`num_batches_tracked` (int64 in PyTorch) is stored as float32, like every Strata tensor.

Without --state-dict the model keeps torchvision's random initialization (no download happens:
weights=None); --randomize-bn also draws random batch-norm affine parameters and running
statistics, so that a comparison in eval mode exercises them (fresh ones are 1, 0, 0, 1).

Needs Debian's python3-torch, python3-torchvision, python3-h5py and python3-numpy.
"""
import argparse
import os
import sys
import tempfile

import h5py
import numpy as np
import torch
import torchvision

# torchvision constructors whose module names equal the layer names of a zoo experiment.
MODELS = {
    "resnet18": "experiments/resnet18.yaml",
    "resnet34": "experiments/resnet34.yaml",
    "resnet50": "experiments/resnet50.yaml",
    "resnet101": "experiments/resnet101.yaml",
    "resnet152": "experiments/resnet152.yaml",
}


def build_model(name, state_dict_path=None, randomize_bn=False, seed=0):
    """The torchvision model, with saved weights or random ones; in eval mode."""
    torch.manual_seed(seed)
    model = getattr(torchvision.models, name)(weights=None)
    if state_dict_path:
        model.load_state_dict(torch.load(state_dict_path, map_location="cpu"))
    if randomize_bn:
        randomize_batch_norm(model, seed + 1)
    return model.eval()


def randomize_batch_norm(model, seed):
    """Random batch-norm affine parameters and running statistics (fresh ones are 1, 0, 0, 1), so
    that a comparison in eval mode exercises them (also used by tests/scripts/onnx_import_torchvision.py)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                c = module.num_features
                module.weight.copy_(torch.rand(c, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(c, generator=generator) * 0.1)
                module.running_mean.copy_(torch.randn(c, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(c, generator=generator) + 0.5)
                module.num_batches_tracked.fill_(int(torch.randint(1, 1000, (1,), generator=generator)))


def state_dict_to_checkpoint(state_dict, path, experiment_text=""):
    """Writes a Strata checkpoint (format_version 1) holding /model/<layer>/<param>."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(suffix=".h5", dir=directory)
    os.close(fd)
    try:
        with h5py.File(temporary, "w") as f:
            f.attrs["format"] = "strata-checkpoint"
            f.attrs["format_version"] = np.int32(1)
            f.create_dataset("experiment", data=experiment_text, dtype=h5py.string_dtype("utf-8"))
            model = f.create_group("model")
            f.create_group("optimizer")
            f.create_group("preprocess")
            for key, tensor in state_dict.items():
                layer, _, param = key.rpartition(".")
                if not layer:
                    raise ValueError(f"state_dict key '{key}' has no layer part")
                model.create_dataset(f"{layer}/{param}",
                                     data=tensor.detach().cpu().numpy().astype(np.float32))
        os.replace(temporary, path)  # atomic, as Strata's own saves
    except BaseException:
        os.unlink(temporary)
        raise


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", choices=sorted(MODELS), help="torchvision model name")
    parser.add_argument("output", help="checkpoint file to write (.h5)")
    parser.add_argument("--state-dict", help="a torch.save()d state_dict to convert (default: random)")
    parser.add_argument("--randomize-bn", action="store_true",
                        help="random batch-norm parameters and running statistics")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model = build_model(args.model, args.state_dict, args.randomize_bn, args.seed)
    source = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", MODELS[args.model])
    experiment = open(source).read() if os.path.exists(source) else ""
    state_dict_to_checkpoint(model.state_dict(), args.output, experiment)
    count = sum(t.numel() for k, t in model.state_dict().items() if "running" not in k and "num_batches" not in k)
    print(f"wrote {args.output}: torchvision {args.model}, {count:,} parameters, for {MODELS[args.model]}")


if __name__ == "__main__":
    sys.exit(main())
