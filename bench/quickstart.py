#!/usr/bin/python3
"""Measures what `make run` does (strata train experiments/lenet5_fashion.yaml) and writes the
figures the README quotes, with where, when and how they were measured, to a JSON file that
bench/render_docs.py renders into README.md's <!-- bench:quickstart ... --> block.

usage: bench/quickstart.py [--build build] [--json docs/generated/quickstart.json] [--set k=v]...
  --set is passed to strata train (for a short smoke run; the README's figure is the full run).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from render_docs import machine  # noqa: E402

EXPERIMENT = "experiments/lenet5_fashion.yaml"
RUN_DIR = "runs/lenet5_fashion"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--build", default=os.path.join(ROOT, "build"))
    parser.add_argument("--json", default=os.path.join(ROOT, "docs", "generated", "quickstart.json"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    strata = os.path.abspath(os.path.join(args.build, "bin", "strata"))
    load = os.getloadavg()[0]
    command = "make run" if not args.set else f"strata train {EXPERIMENT} " + " ".join(
        f"--set {kv}" for kv in args.set)
    with tempfile.TemporaryDirectory() as work:
        # Run from a copy's point of view so that the printed paths are the README's.
        os.symlink(os.path.join(ROOT, "experiments"), os.path.join(work, "experiments"))
        cmd = [strata, "train", EXPERIMENT, "--out", RUN_DIR]
        for kv in args.set:
            cmd += ["--set", kv]
        done = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
        if done.returncode != 0:
            sys.stderr.write(done.stdout + done.stderr)
            return 1
        with open(os.path.join(work, RUN_DIR, "summary.json")) as f:
            summary = json.load(f)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    last_epoch = max(i for i, line in enumerate(lines) if line.startswith("epoch "))
    result = {
        "machine": machine(), "date": time.strftime("%Y-%m-%d", time.gmtime()), "command": command,
        "load_average": load, "epochs": summary["epochs"],
        "train_seconds": summary["train_seconds"],
        "train_images_per_second": summary["train_images_per_second"],
        "test_accuracy": summary["test_accuracy"], "last_lines": lines[last_epoch:],
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(f"{args.json}: {result['train_seconds']:.1f} s at {result['train_images_per_second']:.0f} "
          f"images/s, test accuracy {result['test_accuracy']:.4f} (load average {load:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
