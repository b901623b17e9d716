"""LeNet-5 training throughput: Strata against PyTorch, in one run, on this machine.

Both train the same network (experiments/lenet5_fashion.yaml: conv(6,5x5,pad 2)-relu-maxpool-
conv(16,5x5)-relu-maxpool-fc120-fc84-fc10) on the 60,000 Fashion-MNIST training images for one
epoch, batch 128, SGD with momentum 0.9 and weight decay 5e-4, on 2 threads. Both time only the
training loop (shuffled mini-batches, forward, loss, backward, update), with the data already
loaded and normalized in memory. Each framework runs --repeats times, alternating, and the best
run of each is compared, to damp the noise of a shared machine.

usage: /usr/bin/python3 bench/lenet5_vs_pytorch.py --strata build/bin/strata [--repeats 3]
"""
import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

DATA = "/usr/share/datasets/fashion-mnist"
HERE = os.path.dirname(os.path.abspath(__file__))
EXPERIMENT = os.path.join(HERE, "..", "experiments", "lenet5_fashion.yaml")


def read_idx(path):
    with gzip.open(path, "rb") as f:
        raw = f.read()
    dims = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


class LeNet5(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(400, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = x.flatten(1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


def pytorch_images_per_second(images, labels, batch, threads):
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = LeNet5()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    n = images.shape[0]
    start = time.perf_counter()
    order = torch.randperm(n)
    for b in range(0, n, batch):
        idx = order[b:b + batch]
        x, y = images[idx], labels[idx]
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    return n / (time.perf_counter() - start), float(loss)


def strata_images_per_second(strata, threads, work):
    out = os.path.join(work, "strata")
    cmd = [strata, "train", EXPERIMENT, "--out", out, "--progress", "none",
           "--set", "train.epochs=1", "--set", "data.validation=0", "--set", f"threads={threads}",
           "--set", "checkpoint.every=0"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"strata failed:\n{result.stdout}\n{result.stderr}")
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    return summary["train_images_per_second"], summary["history"]["train_loss"][-1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--strata", required=True, help="path to build/bin/strata")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    images = read_idx(os.path.join(DATA, "train-images-idx3-ubyte.gz")).astype(np.float32) / 255.0
    labels = read_idx(os.path.join(DATA, "train-labels-idx1-ubyte.gz")).astype(np.int64)
    images = (images - images.mean()) / images.std()
    images = torch.from_numpy(images).unsqueeze(1).contiguous()
    labels = torch.from_numpy(labels)

    print(f"LeNet-5, one epoch of {images.shape[0]} Fashion-MNIST images, batch {args.batch}, "
          f"{args.threads} threads, best of {args.repeats} (torch {torch.__version__})")
    strata_runs, torch_runs = [], []
    with tempfile.TemporaryDirectory() as work:
        for r in range(args.repeats):
            s, s_loss = strata_images_per_second(args.strata, args.threads, work)
            t, t_loss = pytorch_images_per_second(images, labels, args.batch, args.threads)
            strata_runs.append(s)
            torch_runs.append(t)
            print(f"  run {r + 1}: strata {s:8.0f} images/s (last loss {s_loss:.3f})   "
                  f"pytorch {t:8.0f} images/s (last loss {t_loss:.3f})")
    best_s, best_t = max(strata_runs), max(torch_runs)
    print(f"strata  {best_s:8.0f} images/s")
    print(f"pytorch {best_t:8.0f} images/s")
    print(f"ratio   {best_s / best_t:8.2f}x (strata / pytorch; target >= 1.5x)")


if __name__ == "__main__":
    main()
