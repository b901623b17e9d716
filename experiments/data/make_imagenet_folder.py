#!/usr/bin/python3
"""Writes a small image folder in ImageNet's layout for experiments/imagenet_resnet18_folder.yaml:

  OUT/train/<class>/<class>_<n>.JPEG   (--train per class)
  OUT/val/<class>/<class>_<n>.JPEG     (--val per class)

Each image is a Fashion-MNIST image (the Debian package dataset-fashion-mnist) made to look a
little like a photograph: upscaled to a random size of 200 to 340 pixels, tinted a random colour,
placed at a random spot on a 500 x 375 canvas (landscape or portrait, like ImageNet's typical
photo) of a random background colour with noise, and saved as an RGB JPEG of quality 90. The
classes are the 10 Fashion-MNIST classes (the first --classes of them), named like ImageNet's
WordNet ids (n00000000_tshirt, ...). Deterministic for a given --seed.

usage: make_imagenet_folder.py [--out data/imagenet-small] [--classes 10] [--train 20] [--val 5]
                               [--seed 0] [--idx /usr/share/datasets/fashion-mnist]
"""
import argparse
import gzip
import os

import numpy as np
from PIL import Image

NAMES = ["tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
         "ankle_boot"]


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def photo(garment, rng):
    width, height = (500, 375) if rng.random() < 0.75 else (375, 500)
    background = rng.integers(0, 256, 3)
    canvas = background + rng.normal(0, 12, (height, width, 3))
    side = int(rng.integers(200, 341))
    mask = np.asarray(Image.fromarray(garment).resize((side, side), Image.BILINEAR), np.float64) / 255
    tint = rng.integers(40, 256, 3)
    top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
    window = canvas[top:top + side, left:left + side]
    window[:] = window * (1 - mask[..., None]) + tint * mask[..., None]
    return Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8), "RGB")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="data/imagenet-small")
    parser.add_argument("--classes", type=int, default=10, choices=range(1, 11))
    parser.add_argument("--train", type=int, default=20, help="images per class in train/")
    parser.add_argument("--val", type=int, default=5, help="images per class in val/")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--idx", default="/usr/share/datasets/fashion-mnist")
    args = parser.parse_args()
    images = read_idx(os.path.join(args.idx, "train-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(args.idx, "train-labels-idx1-ubyte.gz"))
    rng = np.random.default_rng(args.seed)
    for label in range(args.classes):
        wnid = f"n{label:08d}_{NAMES[label]}"
        pool = np.flatnonzero(labels == label)
        for split, first, count in (("train", 0, args.train), ("val", args.train, args.val)):
            folder = os.path.join(args.out, split, wnid)
            os.makedirs(folder, exist_ok=True)
            for n in range(count):
                image = photo(images[pool[first + n]], rng)
                image.save(os.path.join(folder, f"{wnid}_{n}.JPEG"), quality=90)
    total = args.classes * (args.train + args.val)
    print(f"wrote {total} JPEGs of {args.classes} classes under {args.out}/train and {args.out}/val")


if __name__ == "__main__":
    main()
