#!/usr/bin/env python3
"""The training input pipeline, Strata against PyTorch's DataLoader, side by side in one run.

Both read the same ImageFolder of synthetic photographs (generated once, see make_photos) through
the standard ImageNet training pipeline and deliver batches of 64:
  Strata:  `strata bench --data EXP --json` on an experiment with data.type image_folder and
           transforms random_resized_crop 224, hflip, normalize (preset imagenet); 2 threads.
  PyTorch: torchvision.datasets.ImageFolder + Compose([RandomResizedCrop(224),
           RandomHorizontalFlip(), ToTensor(), Normalize(imagenet)]) + DataLoader(batch_size=64,
           shuffle=True, num_workers=2, persistent_workers=True); torch.set_num_threads(1) in the
           parent (its only work is to take the batches), Pillow decodes with libjpeg-turbo.
Each side takes --warmup batches untimed, then times --batches batches and touches each (one value
per image). Rounds alternate Strata, PyTorch (--repeats, default 5); each round prints both
images/s and their ratio, and the run ends with the ratio's min / median / max against the target
(Strata >= 2x PyTorch in every round). Exit status 0 whatever the ratio: this reports, it does
not gate.

  /usr/bin/python3 bench/data_loader_vs_pytorch.py --strata build/bin/strata
  /usr/bin/python3 bench/data_loader_vs_pytorch.py --repeats 1 --batches 5 --warmup 2   # smoke
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

GENERATOR_VERSION = 1  # bump when make_photos changes: the cached folder is then made again
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def make_photo(path, cls, index, width=500, height=375, quality=90):
    """One synthetic 'photograph': a smooth random colour field (a 4x3 grid of random colours
    upscaled bicubically to the full size), 3 to 6 filled ellipses and rectangles whose hue leans
    on the class, and Gaussian noise (sigma 6 levels), saved as a JPEG of `quality`. Seeded by
    (class, index), so the folder is the same on every machine."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(1000003 * cls + index)
    field = rng.integers(0, 256, size=(3, 4, 3), dtype=np.uint8)
    img = Image.fromarray(field, "RGB").resize((width, height), Image.BICUBIC)
    draw = ImageDraw.Draw(img)
    base = np.array([(cls * 25) % 256, (cls * 67) % 256, (cls * 131) % 256])
    for _ in range(int(rng.integers(3, 7))):
        x0, y0 = int(rng.integers(0, width - 40)), int(rng.integers(0, height - 40))
        x1 = x0 + int(rng.integers(30, width // 2))
        y1 = y0 + int(rng.integers(30, height // 2))
        colour = tuple(int(v) for v in (base + rng.integers(-40, 41, size=3)) % 256)
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=colour)
    pixels = np.asarray(img, dtype=np.float32) + rng.normal(0, 6, size=(height, width, 3))
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB").save(path, "JPEG",
                                                                           quality=quality)


def _make_class(args):
    root, cls, per_class = args
    folder = os.path.join(root, f"class{cls:02d}")
    os.makedirs(folder, exist_ok=True)
    for i in range(per_class):
        make_photo(os.path.join(folder, f"{i:05d}.jpg"), cls, i)


def make_photos(root, classes=10, per_class=200):
    """root/train/classNN/NNNNN.jpg, made once: a folder with a complete marker is reused."""
    train = os.path.join(root, "train")
    marker = os.path.join(root, f"complete-v{GENERATOR_VERSION}-{classes}x{per_class}")
    if os.path.exists(marker):
        return train
    from multiprocessing import Pool

    start = time.time()
    with Pool(2) as pool:
        pool.map(_make_class, [(train, c, per_class) for c in range(classes)])
    open(marker, "w").close()
    print(f"generated {classes * per_class} JPEGs in {train} ({time.time() - start:.0f} s)",
          flush=True)
    return train


EXPERIMENT = """\
# bench/data_loader_vs_pytorch.py: the ImageNet training pipeline on a folder of JPEGs.
# The model is a placeholder of the right input shape: `strata bench --data` never runs it.
seed: 1
threads: {threads}
data:
  type: image_folder
  train: {train}
  test: {train}
  transforms:
    - {{type: random_resized_crop, size: 224}}
    - {{type: hflip}}
    - {{type: normalize, preset: imagenet}}
model:
  input: [3, 224, 224]
  layers:
    - {{name: pool, type: global_avg_pool}}
    - {{name: fc, type: linear, out_features: {classes}}}
optimizer: {{type: sgd, lr: 0.01}}
train: {{epochs: 1, batch_size: {batch}}}
"""


def run_strata(strata, experiment, args):
    cmd = [strata, "bench", "--data", experiment, "--json", "--batches", str(args.batches),
           "--warmup", str(args.warmup), "--threads", str(args.threads)] + args.strata_args
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


TORCH_CHILD = r"""
import json, sys, time
import torch, torchvision
from torchvision import transforms as T
root, batch, workers, warmup, batches, seed = sys.argv[1], *map(int, sys.argv[2:7])
torch.set_num_threads(1)
torch.manual_seed(seed)
pipeline = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(),
                      T.Normalize(%r, %r)])
dataset = torchvision.datasets.ImageFolder(root, transform=pipeline)
loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True,
                                     num_workers=workers, persistent_workers=workers > 0)
def batches_forever():
    while True:
        yield from loader
it = batches_forever()
touched = 0.0
for _ in range(warmup):
    images, labels = next(it)
images_seen = 0
start = time.perf_counter()
for _ in range(batches):
    images, labels = next(it)
    touched += float(images[:, 0, 0, 0].sum())
    images_seen += images.shape[0]
elapsed = time.perf_counter() - start
print(json.dumps({"images": images_seen, "seconds": elapsed,
                  "images_per_second": images_seen / elapsed, "touched": touched}))
""" % (IMAGENET_MEAN, IMAGENET_STD)


def run_torch(train, args):
    cmd = [sys.executable, "-c", TORCH_CHILD, train, str(args.batch), str(args.threads),
           str(args.warmup), str(args.batches), "1"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--strata", default=None, help="the strata binary (default: BUILD/bin/strata)")
    parser.add_argument("--build", default="build", help="the build folder")
    parser.add_argument("--cache", default=None,
                        help="where the photos are generated once (default: BUILD/data_bench_photos)")
    parser.add_argument("--repeats", type=int, default=5, help="alternating rounds")
    parser.add_argument("--batches", type=int, default=30, help="timed batches per side per round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed batches first")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2,
                        help="Strata's threads and PyTorch's DataLoader workers")
    parser.add_argument("--per-class", type=int, default=200, help="images per class (10 classes)")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--strata-arg", dest="strata_args", action="append", default=[],
                        help="passed on to strata bench --data (e.g. --set=data.min_size=240)")
    args = parser.parse_args()
    strata = args.strata or os.path.join(args.build, "bin", "strata")
    cache = args.cache or os.path.join(args.build, "data_bench_photos")
    train = make_photos(os.path.abspath(cache), per_class=args.per_class)

    with tempfile.TemporaryDirectory() as work:
        experiment = os.path.join(work, "loader.yaml")
        with open(experiment, "w") as f:
            f.write(EXPERIMENT.format(threads=args.threads, train=train, classes=10,
                                      batch=args.batch))
        print(f"{args.batches} batches of {args.batch} after {args.warmup} warm-up, "
              f"{args.threads} threads / workers, RandomResizedCrop(224) + flip + normalize, "
              f"{10 * args.per_class} JPEGs 500x375 q90; load average {os.getloadavg()[0]:.1f}")
        print(f"{'round':>5}  {'strata img/s':>12}  {'pytorch img/s':>13}  {'ratio':>6}")
        rounds = []
        for r in range(args.repeats):
            s = run_strata(strata, experiment, args)
            t = run_torch(train, args)
            ratio = s["images_per_second"] / t["images_per_second"]
            rounds.append({"strata": s, "pytorch": t, "ratio": ratio})
            print(f"{r + 1:>5}  {s['images_per_second']:12.1f}  {t['images_per_second']:13.1f}  "
                  f"{ratio:6.2f}", flush=True)
    ratios = [x["ratio"] for x in rounds]
    met = all(x >= 2.0 for x in ratios)
    print(f"ratio min {min(ratios):.2f}  median {statistics.median(ratios):.2f}  "
          f"max {max(ratios):.2f}  -- target >= 2x in every round: {'met' if met else 'MISSED'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rounds": rounds, "ratios": ratios, "target_met": met,
                       "load_average": os.getloadavg(), "args": vars(args)}, f, indent=2)


if __name__ == "__main__":
    main()
