#!/usr/bin/python3
"""Data-parallel scaling on this machine: 1 rank x 2 threads against 2 ranks x 1 thread.

For LeNet-5 (experiments/lenet5_fashion.yaml, Fashion-MNIST), the small ResNet
(experiments/resnet_fashion.yaml) and ResNet-18 at 224x224 (experiments/resnet18.yaml, its synthetic
3x224x224 data) this runs `strata train` in three configurations, with the same global batch:

  1x2            one process, 2 threads (no mpirun)
  2x1            mpirun -np 2 --bind-to none, 1 thread per rank, distributed.overlap true
  2x1-serial     the same with distributed.overlap false (every bucket summed after backward)

The rounds alternate, each starting with the next configuration (1x2, 2x1, 2x1-serial; 2x1,
2x1-serial, 1x2; ...), so that a change in the machine's load falls on every configuration alike
and none always runs after the same one. Each run is short: a few epochs of a few steps, set with
--set overrides (the experiment files are used as checked in otherwise).

What is reported, per model and configuration, as min / median / max over the rounds:
  images/s        training images / training seconds of the epochs after the first (the first
                  pays for first-touch allocation and kernel workspaces), from summary.json's
                  history (epoch_seconds, images_per_second): the steps only, no evaluation;
  comm ms/step    summary.json's communication_seconds_per_step: what a rank's training loop
                  waited for the others per step (the two small agreements, and the part of the
                  gradient sums that backward did not hide), over every step of the run;
  comm share      comm ms/step / (train_seconds / steps) over the whole run;
  others          the CPU the rest of the machine used during the run, in cores (busy time from
                  /proc/stat minus this run's own CPU time, over its wall time): the noise.
                  --wait-quiet CORES waits before each run until the others use fewer than CORES.
Then the ratio of the medians (2x1 / 1x2) and what the overlap gains (2x1 / 2x1-serial).

usage: /usr/bin/python3 bench/mpi_scaling.py [--build build] [--repeats 3]
         [--models lenet5,resnet_fashion,resnet18] [--configs 1x2,2x1,2x1-serial]
         [--bucket-mb MB] [--wait-quiet CORES [--patience S]] [--json FILE] [--quick]
       /usr/bin/python3 bench/mpi_scaling.py --report FILE... [--quiet CORES]   (earlier runs' tables)
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

import machine

SOURCE = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))

# Global batch and the overrides that make a run short. `epochs`: the first is discarded.
MODELS = {
    "lenet5": {
        "title": "LeNet-5 (1x28x28)",
        "experiment": "experiments/lenet5_fashion.yaml",
        "batch": 128,
        "epochs": 3,
        # 8448 - 256 = 8192 training images: 64 steps per epoch
        "set": ["data.train_limit=8448", "data.validation=256", "data.test_limit=256"],
        "quick_set": ["data.train_limit=2304", "data.validation=256", "data.test_limit=128"],
    },
    "resnet_fashion": {
        "title": "small ResNet (resnet_fashion, 1x28x28)",
        "experiment": "experiments/resnet_fashion.yaml",
        "batch": 128,
        "epochs": 3,
        # 1152 - 128 = 1024 training images: 8 steps per epoch
        "set": ["data.train_limit=1152", "data.validation=128", "data.test_limit=128"],
        "quick_set": ["data.train_limit=640", "data.validation=128", "data.test_limit=128"],
    },
    "resnet18": {
        "title": "ResNet-18 (3x224x224, synthetic)",
        "experiment": "experiments/resnet18.yaml",
        "batch": 16,
        "epochs": 2,
        # 80 - 16 = 64 training images: 4 steps per epoch of batch 16
        "set": ["data.train_size=80", "data.validation=16", "data.test_size=16"],
        "quick_set": ["data.train_size=48", "data.validation=16", "data.test_size=16"],
    },
}

CONFIGS = {
    "1x2": {"ranks": 1, "threads": 2, "overlap": None},
    "2x1": {"ranks": 2, "threads": 1, "overlap": True},
    "2x1-serial": {"ranks": 2, "threads": 1, "overlap": False},
}


def run_once(args, model, config, out):
    spec, conf = MODELS[model], CONFIGS[config]
    strata = os.path.join(args.build, "bin", "strata")
    sets = list(spec["quick_set"] if args.quick else spec["set"])
    sets += [f"train.batch_size={spec['batch']}", f"train.eval_batch_size={spec['batch']}",
             f"train.epochs={spec['epochs']}", "checkpoint.every=0"]
    if conf["overlap"] is not None:
        sets.append(f"distributed.overlap={'true' if conf['overlap'] else 'false'}")
        if args.bucket_mb is not None:
            sets.append(f"distributed.bucket_mb={args.bucket_mb}")
    command = [strata, "train", os.path.join(SOURCE, spec["experiment"]), "--out", out,
               "--overwrite", "--progress", "none", "--threads", str(conf["threads"])]
    for s in sets:
        command += ["--set", s]
    if conf["ranks"] > 1:
        command = ["mpirun", "-np", str(conf["ranks"]), "--bind-to", "none"] + command
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    if args.wait_quiet is not None:
        machine.wait_for_quiet(args.wait_quiet, args.patience)
    load = os.getloadavg()[0]
    share = machine.CpuShare()
    result = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    wall, own, others = share.stop()
    if result.returncode != 0:
        sys.exit(f"mpi_scaling: {model} {config} failed (exit {result.returncode}):\n"
                 f"{' '.join(command)}\n{result.stdout[-3000:]}")
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    seconds = summary["history"]["epoch_seconds"]
    rates = summary["history"]["images_per_second"]
    steady_images = sum(s * r for s, r in zip(seconds[1:], rates[1:]))
    images = sum(s * r for s, r in zip(seconds, rates))
    step_count = round(images / spec["batch"])
    step_seconds = summary["train_seconds"] / step_count
    comm = summary.get("communication_seconds_per_step", 0.0)
    return {
        "model": model, "config": config, "ranks": conf["ranks"], "threads": conf["threads"],
        "overlap": conf["overlap"], "bucket_mb": args.bucket_mb if conf["overlap"] is not None else None,
        "global_batch": spec["batch"], "steps": step_count,
        "images_per_second": steady_images / sum(seconds[1:]),
        "step_seconds": step_seconds,
        "communication_seconds_per_step": comm,
        "communication_share": comm / step_seconds,
        "gradient_bytes_per_step": summary.get("gradient_bytes_per_step", 0),
        "load_average": load, "own_cores": own, "others_cores": others, "wall_seconds": wall,
        "command": " ".join(command),
    }


def spread(values, fmt):
    values = sorted(values)
    return f"{fmt(values[0])} / {fmt(statistics.median(values))} / {fmt(values[-1])}"


def report(results, models, configs):
    lines = ["| model, global batch | configuration | images/s (min / median / max) | vs 1x2 (medians; "
             "bests) | comm ms/step (min / median / max) | comm share (median) | others, cores "
             "(min-max) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    number = lambda v: f"{v:,.1f}" if v < 100 else f"{v:,.0f}"  # noqa: E731
    for model in models:
        rows = {c: [r for r in results if r["model"] == model and r["config"] == c] for c in configs}
        base = [r["images_per_second"] for r in rows.get("1x2", [])]
        for config in configs:
            rs = rows[config]
            if not rs:
                continue
            rates = [r["images_per_second"] for r in rs]
            ratio = f"{statistics.median(rates) / statistics.median(base):.2f}; {max(rates) / max(base):.2f}" \
                if base else "-"
            two = CONFIGS[config]["ranks"] > 1
            comm = spread([1e3 * r["communication_seconds_per_step"] for r in rs], lambda v: f"{v:.1f}") if two else "-"
            share = f"{100 * statistics.median(r['communication_share'] for r in rs):.0f} %" if two else "-"
            others = sorted(r["others_cores"] for r in rs)
            lines.append(f"| {MODELS[model]['title']}, {MODELS[model]['batch']} | {config} | "
                         f"{spread(rates, number)} | {ratio} | {comm} | {share} | "
                         f"{others[0]:.2f}-{others[-1]:.2f} |")
    gains = []
    for model in models:
        a = [r for r in results if r["model"] == model and r["config"] == "2x1"]
        b = [r for r in results if r["model"] == model and r["config"] == "2x1-serial"]
        if a and b:
            ra = statistics.median(r["images_per_second"] for r in a)
            rb = statistics.median(r["images_per_second"] for r in b)
            ca = statistics.median(r["communication_seconds_per_step"] for r in a)
            cb = statistics.median(r["communication_seconds_per_step"] for r in b)
            gains.append(f"- {MODELS[model]['title']}: images/s with overlap / without "
                         f"{ra / rb:.2f} (medians; bests {max(r['images_per_second'] for r in a) / max(r['images_per_second'] for r in b):.2f}); "
                         f"comm {1e3 * ca:.1f} ms/step with, {1e3 * cb:.1f} without; "
                         f"{a[0]['gradient_bytes_per_step'] / 1e6:.2f} MB of gradients per step")
    return "\n".join(lines + ([""] + ["What the overlap gains:"] + gains if gains else []))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--build", default=os.path.join(SOURCE, "build"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--bucket-mb", type=float, default=None,
                        help="distributed.bucket_mb for the 2-rank runs (default: the experiment's, 25)")
    parser.add_argument("--wait-quiet", type=float, default=None, metavar="CORES",
                        help="before each run, wait until the rest of the machine uses fewer than "
                             "CORES CPUs (at most --patience seconds)")
    parser.add_argument("--patience", type=float, default=120)
    parser.add_argument("--json", help="write every run and the machine to FILE")
    parser.add_argument("--quick", action="store_true", help="fewer steps (a smoke run)")
    parser.add_argument("--quiet", type=float, metavar="CORES",
                        help="with --report: also the tables of the runs during which the rest of "
                             "the machine used fewer than CORES cores")
    parser.add_argument("--report", nargs="+", metavar="FILE",
                        help="print the tables of earlier --json files (their runs together); run nothing")
    args = parser.parse_args()
    if args.report:
        results = []
        for path in args.report:
            with open(path) as f:
                results += json.load(f)["runs"]
        models = [m for m in MODELS if any(r["model"] == m for r in results)]
        configs = [c for c in CONFIGS if any(r["config"] == c for r in results)]
        print(report(results, models, configs))
        if args.quiet is not None:
            quiet = [r for r in results if r["others_cores"] < args.quiet]
            print(f"\nOnly the runs while the rest of the machine used less than {args.quiet:g} cores "
                  f"({len(quiet)} of {len(results)}):\n")
            print(report(quiet, [m for m in models if any(r["model"] == m for r in quiet)],
                         [c for c in configs if any(r["config"] == c for r in quiet)]))
        return 0
    models = args.models.split(",")
    configs = args.configs.split(",")
    for name in models:
        if name not in MODELS:
            sys.exit(f"mpi_scaling: unknown model '{name}' (known: {', '.join(MODELS)})")
    for name in configs:
        if name not in CONFIGS:
            sys.exit(f"mpi_scaling: unknown configuration '{name}' (known: {', '.join(CONFIGS)})")
    if any(CONFIGS[c]["ranks"] > 1 for c in configs) and shutil.which("mpirun") is None:
        sys.exit("mpi_scaling: mpirun not found (Debian: apt-get install openmpi-bin)")
    host = machine.record()
    print(f"mpi_scaling: {host['cpu']}; {host['start']}; load average "
          f"{host['load_average_start']:.2f} at the start; {args.repeats} alternating rounds",
          flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="mpi_scaling_") as work:
        for model in models:
            for repeat in range(args.repeats):
                # Each round starts with the next configuration: none always follows the same one.
                for config in configs[repeat % len(configs):] + configs[:repeat % len(configs)]:
                    r = run_once(args, model, config, os.path.join(work, f"{model}_{config}"))
                    r["round"] = repeat + 1
                    results.append(r)
                    if args.json:  # after every run: a failure later keeps what was measured
                        with open(args.json, "w") as f:
                            json.dump({"machine": host, "bucket_mb": args.bucket_mb, "runs": results}, f, indent=1)
                    print(f"  {model:15} {config:11} round {repeat + 1}: {r['images_per_second']:9.1f} img/s, "
                          f"step {1e3 * r['step_seconds']:8.1f} ms, comm {1e3 * r['communication_seconds_per_step']:7.2f} ms "
                          f"({100 * r['communication_share']:4.1f} %), load {r['load_average']:.1f}, "
                          f"got {r['own_cores']:.2f} cores, others {r['others_cores']:.2f}, {r['wall_seconds']:.0f} s", flush=True)
    host["load_average_end"] = os.getloadavg()[0]
    print()
    print(report(results, models, configs))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": host, "bucket_mb": args.bucket_mb, "runs": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
