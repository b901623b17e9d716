"""Reading a checkpoint (HDF5) and a search folder (trials.jsonl)."""
import json
import os

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

    def layers(self):
        """Layer names with a weight, in file order."""
        return [name.rsplit("/", 1)[0] for name in self.params if name.endswith("/weight")]

    def first_conv_weight(self):
        """The first rank-4 weight [out, in, kh, kw], or None."""
        for name, value in self.params.items():
            if name.endswith("/weight") and value.ndim == 4:
                return name, value
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
