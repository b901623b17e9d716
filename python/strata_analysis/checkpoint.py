"""Reading a checkpoint (HDF5) and a search folder (trials.jsonl)."""
import json
import math
import os
import re

import h5py
import numpy as np


def check_local(f, path):
    """Raises ValueError when any object of the open file `f` keeps its data in another file: an
    external link, a virtual dataset or external raw storage (docs/checkpoint-format.md, "Hostile
    files"). Strata's C++ readers refuse these too; h5py would follow them."""
    def check(group, prefix):
        for name in group:
            link = group.get(name, getlink=True)
            full = f"{prefix}/{name}"
            if isinstance(link, h5py.ExternalLink):
                raise ValueError(f"{path}: {full} is an external link to {link.filename}:"
                                 f"{link.path}: Strata reads only data stored in the file itself")
            if isinstance(link, h5py.SoftLink):
                continue  # its target is checked under its own name
            obj = group[name]
            if isinstance(obj, h5py.Group):
                check(obj, full)
            elif isinstance(obj, h5py.Dataset) and (obj.is_virtual or obj.external):
                raise ValueError(f"{path}: {full} is a virtual dataset or keeps its data in an "
                                 "external file: Strata reads only data stored in the file itself")
    check(f, "")


class Checkpoint:
    """The parts of a Strata checkpoint the plots use, read once."""

    def __init__(self, path):
        self.path = path
        with h5py.File(path, "r") as f:
            check_local(f, path)
            if f.attrs.get("format") != "strata-checkpoint":
                raise ValueError(f"{path}: not a Strata checkpoint (no root attribute format)")
            self.experiment = f["experiment"].asstr()[()]
            self.epoch = int(f["training"].attrs["epoch"]) if "training" in f else None
            self.params = {}          # "conv1/weight" -> ndarray, in file order
            f["model"].visititems(lambda name, obj: self.params.__setitem__(name, obj[()])
                                  if isinstance(obj, h5py.Dataset) else None)
            self.history = {}         # per-epoch metrics
            self.iterations = {}      # per-iteration series (/history/iterations)
            self.diagnostics = {}     # layer -> metric -> series (/history/diagnostics)
            self.diagnostics_iteration = None
            if "history" in f:
                for name, obj in f["history"].items():
                    if isinstance(obj, h5py.Dataset):
                        self.history[name] = obj[()]
                if "iterations" in f["history"]:
                    for name, obj in f["history/iterations"].items():
                        self.iterations[name] = obj[()]
                if "diagnostics" in f["history"]:
                    group = f["history/diagnostics"]
                    for layer, obj in group.items():
                        if layer == "iteration":
                            self.diagnostics_iteration = obj[()]
                        elif isinstance(obj, h5py.Group):
                            self.diagnostics[layer] = {m: d[()] for m, d in obj.items()}

    def config(self):
        """The stored experiment as a dict, or None without python3-yaml."""
        try:
            import yaml
        except ImportError:
            return None
        return yaml.safe_load(self.experiment) or {}

    def name(self):
        """The experiment's `name:`, else the checkpoint's folder and file (runs/small/model.h5)."""
        match = re.search(r"^name:\s*['\"]?([^'\"#\n]+?)['\"]?\s*(#.*)?$", self.experiment, re.M)
        return match.group(1) if match else self.path

    def title(self):
        """What a picture is of: the name, the model's input, the optimizer and the epoch reached,
        e.g. "runs/small/model.h5: [1, 28, 28] -> 5 weighted layers, sgd lr 0.05, batch 128, epoch 4 of 4"."""
        c = self.config() or {}
        parts = []
        model, optimizer, train = c.get("model", {}), c.get("optimizer", {}), c.get("train", {})
        if isinstance(model, dict) and model.get("input"):
            parts.append(f"input {list(model['input'])}, {len(self.layers())} weighted layers")
        if isinstance(optimizer, dict) and optimizer.get("type"):
            parts.append(f"{optimizer['type']} lr {optimizer.get('lr', '?')}")
        if isinstance(train, dict) and train.get("batch_size"):
            parts.append(f"batch {train['batch_size']}")
        if self.epoch is not None:
            total = train.get("epochs") if isinstance(train, dict) else None
            parts.append(f"epoch {self.epoch}" + (f" of {total}" if total else ""))
        return f"{self.name()}: {', '.join(parts)}" if parts else self.name()

    def short_title(self):
        """The name and the epoch: "runs/small/model.h5, epoch 4"."""
        return self.name() + (f", epoch {self.epoch}" if self.epoch is not None else "")

    def top_level_layers(self):
        """The names of model.layers in the experiment, in the order the model runs them."""
        config = self.config()
        if config is None:  # without python3-yaml: the `name:` keys in the order they are written
            block = self.experiment.split("\nmodel:", 1)[-1]
            return re.findall(r"\bname:\s*['\"]?([A-Za-z0-9_.\-]+)", block)
        model = config.get("model") if isinstance(config.get("model"), dict) else {}
        layers = model.get("layers") or []
        return [str(layer["name"]) for layer in layers if isinstance(layer, dict) and "name" in layer]

    def layers(self):
        """Layer names with a weight, in model order: the order of model.layers in the stored
        experiment; inside a block (layer1.0.conv1, layer1.0.bn1, ...) by the numbers in the names,
        a convolution before the normalization of the same number, as torchvision runs them.
        Names the experiment does not mention come last, alphabetically."""
        names = [name.rsplit("/", 1)[0] for name in self.params if name.endswith("/weight")]
        order = {name: i for i, name in enumerate(self.top_level_layers())}

        def part_key(part):
            number = re.search(r"(\d+)$", part)
            kind = 0 if "conv" in part else 1 if ("bn" in part or "norm" in part) else 2
            return (int(number.group(1)) if number else math.inf, kind, part)

        def key(layer):
            parts = layer.split(".")
            top = order.get(parts[0], len(order))
            return (top, parts[0] if top == len(order) else "", [part_key(p) for p in parts[1:]])
        return sorted(names, key=key)

    def first_conv_weight(self):
        """The model's first convolution weight [out, in, kh, kw] in model order, or None."""
        for layer in self.layers():
            value = self.params[f"{layer}/weight"]
            if value.ndim == 4:
                return f"{layer}/weight", value
        return None


def read_trials(search_dir):
    """The trials of a search folder: one JSON object per line of DIR/trials.jsonl, each with
    "params" (the sampled values), "metric" and "status". Also returns which parameters are
    log-scaled, from DIR/search.json {"space": {name: {"log": true}}} when present, else guessed:
    positive values spanning more than a factor of 20."""
    path = os.path.join(search_dir, "trials.jsonl")
    trials = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                trial = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not JSON: {error}") from None
            for key in ("params", "metric", "status"):
                if key not in trial:
                    raise ValueError(f"{path}:{number}: no \"{key}\" in the trial")
            trials.append(trial)
    names = sorted({name for t in trials for name in t["params"]})
    log_scaled = {}
    space_path = os.path.join(search_dir, "search.json")
    space = {}
    if os.path.exists(space_path):
        with open(space_path) as f:
            space = json.load(f).get("space", {})
    for name in names:
        if name in space and "log" in space[name]:
            log_scaled[name] = bool(space[name]["log"])
        else:
            values = np.array([t["params"][name] for t in trials if isinstance(t["params"].get(name), (int, float))], dtype=float)
            log_scaled[name] = bool(values.size and (values > 0).all() and values.max() / values.min() > 20)
    return trials, log_scaled


_SEAL_MAGIC = b"strata-checksum v1\n"
_USER_BLOCK = 512


def reseal(path):
    """Rewrites the checksum header of a file Strata wrote, after editing it on purpose with h5py
    ("r+" or "a"); without it, Strata refuses the edited file as damaged. The header is HDF5's
    512-byte user block: "strata-checksum v1\\ncrc32 <hex>\\nlength <bytes after it>\\n", zero-padded
    (docs/checkpoint-format.md, "Integrity")."""
    import zlib
    with open(path, "r+b") as f:
        if f.read(len(_SEAL_MAGIC)) != _SEAL_MAGIC:
            raise ValueError(f"{path}: has no Strata checksum header to reseal")
        f.seek(_USER_BLOCK)
        crc, length = 0, 0
        while chunk := f.read(1 << 20):
            crc = zlib.crc32(chunk, crc)
            length += len(chunk)
        header = _SEAL_MAGIC + f"crc32 {crc:08x}\nlength {length}\n".encode()
        f.seek(0)
        f.write(header.ljust(_USER_BLOCK, b"\0"))
