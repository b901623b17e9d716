#!/usr/bin/python3
"""Writes measured figures into README.md and docs/*.md from the files the benchmarks wrote, so
that no figure in the docs is typed by hand.

A block in a Markdown file

    <!-- bench:KIND FILE.json -->
    (generated text)
    <!-- /bench -->

is replaced by KIND rendered from FILE.json (a path relative to the source tree). Every rendered
block names the machine (CPU model from lscpu, cores), the date and the command of the
measurement. KINDs:

  quickstart   `make run`'s training (bench/quickstart.py --json FILE)
  conv         table 1 of bench/compare_pytorch.py --json FILE (conv2d fwd+bwd GFLOP/s)
  train        tables 2 and 3 of the same file (training images/s, peak memory)
  threads      table 4 of the same file (1 -> 2 threads)

usage: bench/render_docs.py [--check] [--root DIR] [FILE.md ...]
  (default: README.md and docs/*.md). --check changes nothing and exits 1, printing a diff, when
  a block differs from what its JSON renders to (tests/scripts/test_docs.sh runs it).
"""
import argparse
import difflib
import glob
import json
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
BLOCK = re.compile(r"(<!-- bench:(\w+) (\S+) -->\n)(.*?)(<!-- /bench -->)", re.S)


def machine():
    """The CPU model as lscpu names it, its vector extensions and the number of CPUs."""
    model, cpus, flags = "unknown CPU", os.cpu_count(), ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model name":
                model = value.strip()
            elif key.strip() == "Flags":
                flags = value
    except (OSError, subprocess.CalledProcessError):
        pass
    isa = "AVX-512" if "avx512f" in flags.split() else "AVX2" if "avx2" in flags.split() else ""
    return f"{model}{', ' + isa if isa else ''}, {cpus} CPUs"


def provenance(data):
    for key in ("machine", "date", "command"):
        if not data.get(key):
            raise ValueError(f"the measurement has no \"{key}\"")
    load = data.get("load_average")
    load_text = f", load average {load:.2f} at the start" if isinstance(load, (int, float)) else ""
    note = f" {data['note']}" if data.get("note") else ""
    cpus = re.search(r"(\d+) CPUs", data["machine"])
    if isinstance(load, (int, float)) and cpus and load > int(cpus.group(1)):
        note += (" The machine was busy (a load average above its CPU count), so the speeds are lower"
                 " bounds: rerun it on a quiet machine, then bench/render_docs.py.")
    return f"Measured on {data['machine']}, {data['date']}{load_text}, by `{data['command']}`.{note}"


def verdict(ratio, target):
    return "hit" if ratio >= target else "**missed**"


def render_quickstart(data):
    seconds = data["train_seconds"]
    seconds = f"{seconds:.0f}" if seconds >= 10 else f"{seconds:.1f}"
    return (f"{provenance(data)} Training took {seconds} s at "
            f"{data['train_images_per_second']:,.0f} images/s and reached "
            f"{data['test_accuracy']:.4f} test accuracy; the last lines it printed:\n\n"
            "```\n" + "\n".join(data["last_lines"]) + "\n```\n")


def render_conv(data):
    lines = ["| conv2d fwd+bwd (N, C, HxW, K, filter, stride, pad, dilation, groups) | Strata GFLOP/s | "
             "PyTorch GFLOP/s | ratio | target |", "| --- | ---: | ---: | ---: | --- |"]
    for row in data["conv"]:
        lines.append(f"| {row['shape']} | {row['strata_gflops']:.1f} | {row['pytorch_gflops']:.1f} | "
                     f"{row['ratio']:.2f}x | ≥ {row['target']}x {verdict(row['ratio'], row['target'])} |")
    return provenance(data) + "\n\n" + "\n".join(lines) + "\n"


WORKLOAD_NAMES = {"lenet5": "LeNet-5 (1x28x28, batch 128)", "cifar_vgg": "CIFAR-style VGG (3x32x32, batch 64)",
                  "resnet_small": "small ResNet (`bench/workloads/resnet_small.yaml`, batch 64)",
                  "cifar_resnet20": "ResNet-20 (3x32x32, batch 64)",
                  "mobilenet_cifar": "depthwise-separable net (3x32x32, batch 64)",
                  "dilated_cifar": "dilated stack (`bench/workloads/dilated_cifar.yaml`, batch 64)",
                  "resnet18": "resnet18 (3x224x224, batch 32)", "resnet50": "resnet50 (3x224x224, batch 32)",
                  "googlenet": "GoogLeNet with batch norm (3x224x224, batch 32)"}


def render_train(data):
    memory = {row["workload"]: row for row in data.get("memory", [])}
    lines = [f"| training, synthetic data, {data['threads']} threads | Strata images/s | PyTorch images/s | "
             "ratio | target | peak RSS Strata / PyTorch |", "| --- | ---: | ---: | ---: | --- | --- |"]
    for row in data["train"]:
        mem = memory.get(row["workload"])
        rss = f"{mem['strata_bytes'] / 2**20:.0f} MB / {mem['pytorch_bytes'] / 2**20:.0f} MB" if mem else ""
        lines.append(f"| {WORKLOAD_NAMES.get(row['workload'], row['workload'])} | "
                     f"{row['strata_images_per_second']:,.0f} | {row['pytorch_images_per_second']:,.0f} | "
                     f"{row['ratio']:.2f}x | ≥ {row['target']:g}x {verdict(row['ratio'], row['target'])} | {rss} |")
    return provenance(data) + "\n\n" + "\n".join(lines) + "\n"


def render_threads(data):
    parts = []
    for row in data["threads_speedup"]:
        name = WORKLOAD_NAMES.get(row["workload"], row["workload"]).split(" (")[0]
        parts.append(f"{name} {row['strata_1']:,.0f} → {row['strata_2']:,.0f} images/s "
                     f"({row['strata_speedup']:.2f}x; PyTorch {row['pytorch_speedup']:.2f}x)")
    return (f"1 → 2 threads (target ≥ 1.8x): {'; '.join(parts)}. {provenance(data)}\n")


RENDER = {"quickstart": render_quickstart, "conv": render_conv, "train": render_train,
          "threads": render_threads}


def render_file(text, root, where):
    def replace(match):
        kind, source = match.group(2), match.group(3)
        if kind not in RENDER:
            raise ValueError(f"{where}: unknown bench block kind '{kind}' (known: {', '.join(RENDER)})")
        path = os.path.join(root, source)
        try:
            with open(path) as f:
                data = json.load(f)
            body = RENDER[kind](data)
        except (OSError, ValueError, KeyError) as error:
            raise ValueError(f"{where}: bench:{kind} {source}: {error}") from None
        return match.group(1) + body + match.group(5)
    return BLOCK.sub(replace, text)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--root", default=os.path.dirname(HERE))
    parser.add_argument("files", nargs="*")
    args = parser.parse_args()
    files = args.files or ["README.md"] + sorted(
        os.path.relpath(p, args.root) for p in glob.glob(os.path.join(args.root, "docs", "*.md")))
    stale = 0
    for name in files:
        path = os.path.join(args.root, name)
        with open(path, encoding="utf-8") as f:
            text = f.read()
        try:
            new = render_file(text, args.root, name)
        except ValueError as error:
            print(f"render_docs: {error}", file=sys.stderr)
            return 1
        if new == text:
            continue
        if args.check:
            stale += 1
            print(f"{name}: a bench block differs from what its JSON renders to "
                  f"(run bench/render_docs.py):")
            sys.stdout.writelines(difflib.unified_diff(text.splitlines(True), new.splitlines(True),
                                                       name, name + " (rendered)"))
        else:
            with open(path, "w", encoding="utf-8") as f:
                f.write(new)
            print(f"rendered {name}")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
