"""HDF5 files for the hostile-input tests (test_hdf5_inputs.sh, tests/test_hdf5_inputs.cpp).

  hdf5_fixtures.py indirection DIR CKPT   inputs and checkpoints whose data lives in other files
  hdf5_fixtures.py unsealed PATH SEED     an h5py-written checkpoint (no Strata seal) to damage
  hdf5_fixtures.py claims DIR             tiny files whose datasets claim huge sizes
  hdf5_fixtures.py errors-doc DIR YAML    the h5_*.h5 files of docs/errors.md's rows

Run with /usr/bin/python3 (Debian's python3-h5py). Every value is drawn from a seeded generator.
"""
import os
import shutil
import sys

import h5py
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "python"))
from strata_analysis import reseal  # noqa: E402


def indirection(out, checkpoint):
    rng = np.random.default_rng(20)
    data = rng.standard_normal((2, 1, 8, 8)).astype("<f4")
    # The "secret": any file of the user's, read through the HDF5 file if Strata followed links.
    secret = os.path.join(out, "secret.bin")
    data.tofile(secret)
    source = os.path.join(out, "source.h5")
    with h5py.File(checkpoint, "r") as c:
        bias = c["model/fc1/bias"][()]
    with h5py.File(source, "w") as f:
        f["src"] = data
        f["bias"] = bias
    bias.astype("<f4").tofile(os.path.join(out, "bias.bin"))

    def external(f, name, shape, raw):
        f.create_dataset(name, shape=shape, dtype="<f4",
                         external=[(os.path.join(out, raw), 0, int(np.prod(shape)) * 4)])

    def virtual(f, name, shape, source_name):
        layout = h5py.VirtualLayout(shape=shape, dtype="<f4")
        layout[...] = h5py.VirtualSource(source, source_name, shape=shape)
        f.create_virtual_dataset(name, layout)

    # Inputs of `strata forward` (/data).
    with h5py.File(os.path.join(out, "input_external.h5"), "w") as f:
        external(f, "data", data.shape, "secret.bin")
    with h5py.File(os.path.join(out, "input_virtual.h5"), "w") as f:
        virtual(f, "data", data.shape, "src")
    with h5py.File(os.path.join(out, "input_extlink.h5"), "w") as f:
        f["data"] = h5py.ExternalLink(source, "/src")
    with h5py.File(os.path.join(out, "input_softext.h5"), "w") as f:
        f["elsewhere"] = h5py.ExternalLink(source, "/")
        f["data"] = h5py.SoftLink("/elsewhere/src")
    with h5py.File(os.path.join(out, "input_extgroup.h5"), "w") as f:
        f["inner"] = h5py.ExternalLink(source, "/")
        f["data"] = h5py.SoftLink("/inner/src")
    with h5py.File(os.path.join(out, "input_soft_ok.h5"), "w") as f:
        f["images"] = data  # a soft link inside the file is fine
        f["data"] = h5py.SoftLink("/images")
    with h5py.File(os.path.join(out, "input_softloop.h5"), "w") as f:
        f["data"] = h5py.SoftLink("/data")

    # Checkpoints: /model/fc1/bias replaced, the Strata seal rewritten (an edit made on purpose).
    def edited(name, edit):
        path = os.path.join(out, name)
        shutil.copyfile(checkpoint, path)
        with h5py.File(path, "r+") as f:
            del f["model/fc1/bias"]
            edit(f)
        reseal(path)

    edited("ckpt_external.h5", lambda f: external(f, "model/fc1/bias", bias.shape, "bias.bin"))
    edited("ckpt_virtual.h5", lambda f: virtual(f, "model/fc1/bias", bias.shape, "bias"))
    edited("ckpt_extlink.h5",
           lambda f: f.__setitem__("model/fc1/bias", h5py.ExternalLink(source, "/bias")))
    # The same without the seal: h5py copies every object into a new file.
    path = os.path.join(out, "ckpt_extlink_unsealed.h5")
    with h5py.File(os.path.join(out, "ckpt_extlink.h5"), "r") as a, h5py.File(path, "w") as b:
        for key, value in a.attrs.items():
            b.attrs[key] = value
        for key in a:
            if key != "model":
                a.copy(key, b)
        model = b.create_group("model")
        for layer in a["model"]:
            group = model.create_group(layer)
            for name in a["model"][layer]:
                if layer == "fc1" and name == "bias":
                    group[name] = h5py.ExternalLink(source, "/bias")
                else:
                    group[name] = a["model"][layer][name][()]


def unsealed(path, seed):
    """A small checkpoint the way h5py writes one: new-style (dense) groups, variable-length
    strings in the global heap, chunked and contiguous datasets, many attributes."""
    rng = np.random.default_rng(int(seed))
    with h5py.File(path, "w", libver="latest") as f:
        f.attrs["format"] = "strata-checkpoint"
        f.attrs["format_version"] = np.int32(2)
        f["experiment"] = "seed: 1\nmodel: {input: [1, 8, 8]}\n"
        for i in range(12):
            f.create_group(f"plugins/p{i}")
            f[f"plugins/p{i}"].attrs["version"] = f"1.{i}"
            f[f"plugins/p{i}"].attrs["path"] = f"/usr/lib/strata/libp{i}.so"
        for i in range(12):
            f[f"model/layer{i}/weight"] = rng.standard_normal((3, 4)).astype("<f4")
            f.create_dataset(f"model/layer{i}/bias", data=rng.standard_normal(3).astype("<f4"),
                             chunks=(2,), compression="gzip")
        t = f.create_group("training")
        t.attrs["epoch"] = np.int64(2)
        t.attrs["iteration"] = np.int64(8)
        t.attrs["rng_state"] = " ".join(str(v) for v in rng.integers(0, 2**32, 64))
        for name in ("train_loss", "val_loss", "train_accuracy", "val_accuracy", "lr",
                     "epoch_seconds", "images_per_second", "train_regularization", "extra"):
            f[f"history/{name}"] = rng.random(2)
        f["data"] = rng.standard_normal((2, 1, 4, 4)).astype("<f4")


def claims(out):
    rng = np.random.default_rng(9)
    with h5py.File(os.path.join(out, "claims_huge.h5"), "w") as f:
        # [1e9, 1e9] float32, chunked, nothing written: a few KB on disk.
        f.create_dataset("data", shape=(10**9, 10**9), chunks=(1, 1024), dtype="<f4")
    with h5py.File(os.path.join(out, "claims_large.h5"), "w") as f:
        # 1.6 GB claimed, a few chunks written.
        d = f.create_dataset("data", shape=(100000, 1, 64, 64), chunks=(1, 1, 64, 64),
                             dtype="<f4", compression="gzip")
        d[0:2] = rng.standard_normal((2, 1, 64, 64)).astype("<f4")
    with h5py.File(os.path.join(out, "claims_ok.h5"), "w") as f:
        # Compressed and fully written: accepted.
        f.create_dataset("data", data=rng.standard_normal((3, 1, 8, 8)).astype("<f4"),
                         chunks=(1, 1, 8, 8), compression="gzip")


def errors_doc(out, experiment):
    """For docs/errors.md (test_errors_doc.sh): weights for the page's experiment (conv1 4x1x3x3,
    fc1 4x256), written by h5py, and inputs and checkpoints that reach into other files."""
    rng = np.random.default_rng(12)
    shapes = {"conv1/weight": (4, 1, 3, 3), "conv1/bias": (4,), "fc1/weight": (4, 256),
              "fc1/bias": (4,)}
    source = os.path.join(out, "h5_source.h5")
    with h5py.File(source, "w") as f:
        f["src"] = rng.standard_normal((2, 1, 8, 8)).astype("<f4")
        f["bias"] = rng.standard_normal(4).astype("<f4")

    def checkpoint(name, bias):
        with h5py.File(os.path.join(out, name), "w") as f:
            f.attrs["format"] = "strata-checkpoint"
            f.attrs["format_version"] = np.int32(2)
            f["experiment"] = open(experiment).read()
            f.create_group("preprocess")
            for key, shape in shapes.items():
                f[f"model/{key}"] = rng.standard_normal(shape).astype("<f4")
            if bias is not None:
                del f["model/fc1/bias"]
                f["model/fc1/bias"] = bias

    checkpoint("h5_weights.h5", None)
    checkpoint("h5_extlink.h5", h5py.ExternalLink(source, "/bias"))
    with h5py.File(os.path.join(out, "h5_virtual.h5"), "w") as f:
        layout = h5py.VirtualLayout(shape=(2, 1, 8, 8), dtype="<f4")
        layout[...] = h5py.VirtualSource(source, "src", shape=(2, 1, 8, 8))
        f.create_virtual_dataset("data", layout)
    raw = os.path.join(out, "h5_raw.bin")
    rng.standard_normal(128).astype("<f4").tofile(raw)
    with h5py.File(os.path.join(out, "h5_external.h5"), "w") as f:
        f.create_dataset("data", shape=(2, 1, 8, 8), dtype="<f4", external=[(raw, 0, 512)])
    with h5py.File(os.path.join(out, "h5_claims.h5"), "w") as f:
        f.create_dataset("data", shape=(10**9, 10**9), chunks=(1, 1024), dtype="<f4")
    # An h5py-style file (no seal) on which libhdf5 1.10.8 itself crashes (SIGSEGV in H5HG_read):
    # found by fuzz_checkpoint.
    shutil.copyfile(os.path.join(os.path.dirname(__file__), "..", "fuzz", "corpus", "checkpoint",
                                 "crash-hdf5-global-heap-segv"), os.path.join(out, "h5_crash.h5"))
    # A sealed file (user block with Strata's header) whose magic then loses one bit.
    sealed = os.path.join(out, "h5_sealed.h5")
    with h5py.File(sealed, "w", userblock_size=512) as f:
        f["data"] = rng.standard_normal((2, 1, 8, 8)).astype("<f4")
    with open(sealed, "r+b") as f:
        f.write(b"strata-checksum v1\n")
    reseal(sealed)
    with open(sealed, "r+b") as f:
        first = f.read(1)
        f.seek(0)
        f.write(bytes([first[0] ^ 0x04]))


if __name__ == "__main__":
    command = sys.argv[1]
    if command == "indirection":
        indirection(sys.argv[2], sys.argv[3])
    elif command == "unsealed":
        unsealed(sys.argv[2], sys.argv[3])
    elif command == "claims":
        claims(sys.argv[2])
    elif command == "errors-doc":
        errors_doc(sys.argv[2], sys.argv[3])
    else:
        sys.exit(f"unknown command {command}")
