#!/usr/bin/python3
"""Writes Fashion-MNIST (the IDX gz files) out as the two formats a user brings their own data in,
for tests/scripts/test_data_end_to_end.sh:

  OUT/folder/{train,test}/<class>/<index>.png   an image folder (torchvision's ImageFolder layout):
      8-bit greyscale PNGs written by PIL. <class> is "<label>-<name>" ("0-T-shirt_top",
      "1-Trouser", ... "9-Ankle_boot": '/' and ' ' cannot or should not be in a folder name), so
      that sorting the folders by name, as image_folder and torchvision do, gives every image the
      label it has in the IDX file. <index> is the image's position in the IDX file, zero-padded,
      so within a class the folder holds the images in IDX order.
  OUT/fashion.h5   one HDF5 file written by h5py: train/images [60000, 28, 28, 1] uint8 (NHWC,
      chunked, gzip), train/labels [60000] uint8, test/images [10000, 1, 28, 28] uint8 (NCHW,
      contiguous), test/labels [10000] int64: both image layouts, both storages, two label types.
      (The hdf5 reader takes 4-dimensional images only, not a grey [N, 28, 28].)

usage: fmnist_export.py IDX_DIR OUT [--folder] [--hdf5]   (both when neither is given)
"""
import gzip
import os
import sys

import h5py
import numpy as np
from PIL import Image

NAMES = ["T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
         "Ankle_boot"]


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def load(idx_dir, split):
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(os.path.join(idx_dir, f"{prefix}-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(idx_dir, f"{prefix}-labels-idx1-ubyte.gz"))
    assert images.shape[0] == labels.shape[0] and images.shape[1:] == (28, 28), images.shape
    return images, labels


def write_folder(out, split, images, labels):
    for label, name in enumerate(NAMES):
        os.makedirs(os.path.join(out, "folder", split, f"{label}-{name}"), exist_ok=True)
    for index, (image, label) in enumerate(zip(images, labels)):
        path = os.path.join(out, "folder", split, f"{label}-{NAMES[label]}", f"{index:05d}.png")
        Image.fromarray(image, mode="L").save(path, compress_level=1)


def write_hdf5(out, splits):
    with h5py.File(os.path.join(out, "fashion.h5"), "w") as f:
        images, labels = splits["train"]
        f.create_dataset("train/images", data=images[..., None], chunks=(64, 28, 28, 1),
                         compression="gzip")
        f.create_dataset("train/labels", data=labels)
        images, labels = splits["test"]
        f.create_dataset("test/images", data=images[:, None, :, :])
        f.create_dataset("test/labels", data=labels.astype(np.int64))


def main():
    idx_dir, out = sys.argv[1], sys.argv[2]
    flags = set(sys.argv[3:])
    both = not flags
    splits = {split: load(idx_dir, split) for split in ("train", "test")}
    os.makedirs(out, exist_ok=True)
    if both or "--folder" in flags:
        for split, (images, labels) in splits.items():
            write_folder(out, split, images, labels)
    if both or "--hdf5" in flags:
        write_hdf5(out, splits)


if __name__ == "__main__":
    main()
