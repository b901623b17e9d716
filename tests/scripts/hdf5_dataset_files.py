#!/usr/bin/env python3
"""Writes HDF5 files with h5py, as a user would, for tests/test_hdf5_dataset.cpp.

    hdf5_dataset_files.py SPEC.json

SPEC is a list of files: [{"file": "a.h5", "datasets": [{"path": "train/images", "raw":
"a.bin", "dtype": "uint8", "shape": [N, C, H, W], "chunks": [1, C, H, W] or null,
"compression": "gzip" or null}]}]. Each dataset's values are the raw file's bytes (C order, the
machine's byte order) as `dtype`; "raw": null makes an empty array of `shape`.
"""
import json
import sys

import h5py
import numpy as np


def main():
    with open(sys.argv[1]) as handle:
        spec = json.load(handle)
    for entry in spec:
        with h5py.File(entry["file"], "w") as out:
            for item in entry["datasets"]:
                shape = tuple(item["shape"])
                if item.get("raw"):
                    data = np.fromfile(item["raw"], dtype=item["dtype"]).reshape(shape)
                else:
                    data = np.zeros(shape, dtype=item["dtype"])
                chunks = tuple(item["chunks"]) if item.get("chunks") else None
                out.create_dataset(item["path"], data=data, chunks=chunks,
                                   compression=item.get("compression"))


if __name__ == "__main__":
    main()
