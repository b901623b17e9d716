"""Strata against PyTorch, side by side in one run, on this machine (issue 9's instruments).

Four tables, each with the ratio Strata / PyTorch (higher is better for Strata, except memory):
  1. conv2d forward + backward (data and weights) GFLOP/s for seven layer shapes;
  2. training images/s (forward, loss, backward, SGD step) on synthetic data of each net's input
     shape at its batch size: LeNet-5, the CIFAR-style VGG net and a small ResNet;
  3. peak resident memory of each training workload (each framework in a child process of its
     own, under /usr/bin/time, so neither counts the other);
  4. speed-up from 1 to 2 threads on the conv-heavy workloads.

Both sides use the same thread count (torch.set_num_threads; Strata --threads). Runs alternate
between the two frameworks (--repeats rounds) and the best round of each is compared, to damp the
noise of a shared machine. Strata's conv layers are timed by build/bin/conv_bench, its training by
`strata bench`; PyTorch's by this script (torch.autograd.grad for the conv shapes, nn.Module +
torch.optim.SGD for training).

usage: /usr/bin/python3 bench/compare_pytorch.py [--build build] [--repeats 5] [--quick]
                                                 [--only conv,train,memory,threads] [--json FILE]
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

# (label, N, C, H, W, K, filter, stride, pad, dilation, groups)
CONV_SHAPES = [
    ("VGG-like 3x3", 32, 64, 56, 56, 64, 3, 1, 1, 1, 1),
    ("ResNet-like 3x3", 32, 128, 28, 28, 128, 3, 1, 1, 1, 1),
    ("dilated 3x3 d2", 32, 64, 28, 28, 64, 3, 1, 2, 2, 1),
    ("first layer 7x7/2", 16, 3, 112, 112, 64, 7, 2, 3, 1, 1),
    ("pointwise 1x1", 32, 256, 28, 28, 64, 1, 1, 0, 1, 1),
    ("LeNet conv2 5x5", 128, 6, 14, 14, 16, 5, 1, 0, 1, 1),
    ("depthwise 3x3", 32, 128, 28, 28, 128, 3, 1, 1, 1, 128),
]

# name -> (experiment file, batch, timed steps): about 2 s of work per run on 2 idle cores
WORKLOADS = {
    "lenet5": (os.path.join(ROOT, "experiments", "lenet5_fashion.yaml"), 128, 100),
    "cifar_vgg": (os.path.join(HERE, "workloads", "cifar_vgg.yaml"), 64, 10),
    "resnet_small": (os.path.join(HERE, "workloads", "resnet_small.yaml"), 64, 20),
}
CONV_HEAVY = ["cifar_vgg", "resnet_small"]

TARGETS = {
    "conv": 1.2, "conv3x3": 1.5, "lenet5": 5.0, "cifar_vgg": 1.5, "resnet_small": 1.5,
    "memory": 1.0, "threads": 1.8,
}


# ---- PyTorch side -----------------------------------------------------------------------------

def torch_models():
    import torch.nn as nn
    import torch.nn.functional as F

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

    def cifar_vgg():
        return nn.Sequential(
            nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(),
            nn.Conv2d(128, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(128, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(256 * 4 * 4, 10))

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.proj = None
            if stride != 1 or cin != cout:
                self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

        def forward(self, x):
            out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
            return F.relu(out + (x if self.proj is None else self.proj(x)))

    def resnet_small():
        return nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
            Block(16, 16, 1), Block(16, 32, 2), Block(32, 64, 2), nn.AvgPool2d(7), nn.Flatten(),
            nn.Linear(64, 10))

    return {"lenet5": (LeNet5, (1, 28, 28), 0.05), "cifar_vgg": (cifar_vgg, (3, 32, 32), 0.01),
            "resnet_small": (resnet_small, (1, 28, 28), 0.1)}


def torch_train_child(name, threads, iterations, warmup):
    """Runs in a child process: trains `name` on synthetic data and prints images/s as JSON."""
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    factory, shape, lr = torch_models()[name]
    batch = WORKLOADS[name][1]
    model = factory()
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    x = torch.rand(batch, *shape)
    y = torch.randint(0, 10, (batch,))
    for i in range(warmup + iterations):
        if i == warmup:
            start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - start
    print(json.dumps({"images_per_second": batch * iterations / seconds, "loss": float(loss)}))


def torch_conv(shape, threads, iterations, warmup):
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(threads)
    _, n, c, h, w, k, f, stride, pad, dil, groups = shape
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(n, c, h, w, generator=g) * 2 - 1).requires_grad_(True)
    weight = (torch.rand(k, c // groups, f, f, generator=g) * 2 - 1).requires_grad_(True)
    bias = (torch.rand(k, generator=g) * 2 - 1).requires_grad_(True)
    best = float("inf")
    dy = None
    for i in range(warmup + iterations):
        start = time.perf_counter()
        y = F.conv2d(x, weight, bias, stride, pad, dil, groups)
        if dy is None:
            dy = torch.rand(y.shape, generator=g) * 2 - 1
        torch.autograd.grad(y, [x, weight, bias], dy)
        elapsed = time.perf_counter() - start
        if i >= warmup:
            best = min(best, elapsed)
    oh, ow = y.shape[2], y.shape[3]
    flops = 3 * 2.0 * n * k * (c // groups) * f * f * oh * ow
    return flops / best * 1e-9


# ---- Strata side ------------------------------------------------------------------------------

def strata_conv(build, shape, threads, iterations, warmup):
    _, n, c, h, w, k, f, stride, pad, dil, groups = shape
    spec = ",".join(str(v) for v in (n, c, h, w, k, f, f, stride, pad, dil, groups))
    cmd = [os.path.join(build, "bin", "conv_bench"), "--shape", spec, "--threads", str(threads),
           "--iterations", str(iterations), "--warmup", str(warmup)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"conv_bench failed: {' '.join(cmd)}\n{out.stderr}")
    return json.loads(out.stdout)["gflops"]


def run_child(cmd):
    """Runs cmd under /usr/bin/time; returns (stdout, peak resident bytes of cmd alone).

    Not wait4() on our own child: Linux keeps a process's peak RSS across exec(), so a child forked
    from this Python (with torch loaded) would report at least this process's size. /usr/bin/time
    is small, and the process it forks starts from its size, not ours."""
    with tempfile.NamedTemporaryFile("r") as peak:
        result = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", peak.name] + cmd,
                                capture_output=True, text=True)
        if result.returncode != 0:
            sys.exit(f"failed: {' '.join(cmd)}\n{result.stdout}\n{result.stderr}")
        kib = int(peak.read().strip().splitlines()[-1])
    return result.stdout, kib * 1024


def strata_train(build, name, threads, iterations, warmup):
    experiment = WORKLOADS[name][0]
    cmd = [os.path.join(build, "bin", "strata"), "bench", experiment, "--threads", str(threads),
           "--iterations", str(iterations), "--warmup", str(warmup), "--json"]
    stdout, rss = run_child(cmd)
    return json.loads(stdout)["images_per_second"], rss


def torch_train(name, threads, iterations, warmup):
    cmd = [sys.executable, os.path.abspath(__file__), "--torch-child", name, "--threads",
           str(threads), "--iterations", str(iterations), "--warmup", str(warmup)]
    stdout, rss = run_child(cmd)
    return json.loads(stdout.strip().splitlines()[-1])["images_per_second"], rss


# ---- the tables -------------------------------------------------------------------------------

def verdict(ratio, target, lower_is_better=False):
    ok = ratio <= target if lower_is_better else ratio >= target
    return f"{'hit ' if ok else 'MISS'} (target {'<=' if lower_is_better else '>='} {target}x)"


def strata_has_workload(build, name):
    """False when the experiment needs a layer type the built plugins do not register."""
    cmd = [os.path.join(build, "bin", "strata"), "bench", WORKLOADS[name][0], "--iterations", "1",
           "--warmup", "0", "--json"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode == 0:
        return True, ""
    return False, result.stderr.strip().splitlines()[0] if result.stderr.strip() else "failed"


def strata_backend_description(build):
    """The tbb backend's libraries and kernel sets, as `strata bench` reports them."""
    cmd = [os.path.join(build, "bin", "strata"), "bench", WORKLOADS["lenet5"][0], "--iterations",
           "1", "--warmup", "0", "--json"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        return "unknown (strata bench failed)"
    return json.loads(result.stdout).get("backend_description", "") or "(no description)"


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--build", default=os.path.join(ROOT, "build"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="fewer iterations (a smoke run)")
    parser.add_argument("--only", default="conv,train,memory,threads")
    parser.add_argument("--shapes", default="",
                        help="conv shapes to run: indices into the list, comma-separated (all)")
    parser.add_argument("--workloads", default=",".join(WORKLOADS),
                        help="training workloads to run (comma-separated)")
    parser.add_argument("--json", help="also write every measurement to this file")
    parser.add_argument("--torch-child", help=argparse.SUPPRESS)
    parser.add_argument("--iterations", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.torch_child:
        torch_train_child(args.torch_child, args.threads, args.iterations, args.warmup)
        return

    import torch
    parts = set(args.only.split(","))
    conv_iters, conv_warm = (2, 1) if args.quick else (5, 2)
    train_warm = 1 if args.quick else 3

    def train_iters(name):
        return 3 if args.quick else WORKLOADS[name][2]
    t = args.threads
    # Where, when and how this was measured: bench/render_docs.py prints it above every figure
    # it puts into the docs.
    from render_docs import machine
    results = {"threads": t, "repeats": args.repeats, "torch": torch.__version__,
               "machine": machine(), "date": time.strftime("%Y-%m-%d", time.gmtime()),
               "command": " ".join(["bench/compare_pytorch.py"] + sys.argv[1:]),
               "load_average": os.getloadavg()[0], "quick": args.quick}
    print(f"Strata vs PyTorch {torch.__version__}, {t} threads, best of {args.repeats} "
          f"alternating rounds{' (quick)' if args.quick else ''}")
    results["strata_backend"] = strata_backend_description(args.build)
    results["cpu"] = f"{cpu_model()}, {os.cpu_count()} cores"
    print(f"CPU: {results['cpu']}; load average {os.getloadavg()[0]:.2f} at the start")
    print(f"Strata: backend tbb, {results['strata_backend']}")
    print(f"PyTorch: oneDNN (MKL-DNN) {'on' if torch.backends.mkldnn.is_available() else 'off'}"
          f"\n")
    missed = []

    if "conv" in parts:
        print("1. conv2d forward + backward (data and weights), GFLOP/s")
        print(f"   {'shape (N, C, HxW, K, filter, stride, pad, dilation, groups)':62} "
              f"{'strata':>8} {'pytorch':>8} {'ratio':>7}")
        rows = []
        chosen = [int(i) for i in args.shapes.split(",")] if args.shapes else range(len(CONV_SHAPES))
        for shape in [CONV_SHAPES[i] for i in chosen]:
            s_best = p_best = 0.0
            for _ in range(args.repeats):
                s_best = max(s_best, strata_conv(args.build, shape, t, conv_iters, conv_warm))
                p_best = max(p_best, torch_conv(shape, t, conv_iters, conv_warm))
            label, n, c, h, w, k, f, stride, pad, dil, groups = shape
            desc = f"{label}: ({n}, {c}, {h}x{w}, {k}, {f}x{f}, {stride}, {pad}, {dil}, {groups})"
            ratio = s_best / p_best
            three = f == 3 and stride == 1 and dil == 1 and groups == 1
            target = TARGETS["conv3x3" if three else "conv"]
            v = verdict(ratio, target)
            if v.startswith("MISS"):
                missed.append(f"conv {label}: {ratio:.2f}x < {target}x")
            print(f"   {desc:62} {s_best:8.1f} {p_best:8.1f} {ratio:6.2f}x  {v}", flush=True)
            rows.append({"shape": desc, "strata_gflops": s_best, "pytorch_gflops": p_best,
                         "ratio": ratio, "target": target})
        results["conv"] = rows
        print()

    selected = [name for name in WORKLOADS if name in args.workloads.split(",")]
    available = {}
    for name in selected:
        available[name] = strata_has_workload(args.build, name)

    train_rows, memory_rows = [], []
    if "train" in parts or "memory" in parts:
        print("2. training images/s (synthetic data, SGD momentum 0.9)      3. peak resident memory")
        print(f"   {'workload':14} {'strata':>9} {'pytorch':>9} {'ratio':>7}                "
              f"{'strata MB':>10} {'pytorch MB':>10} {'ratio':>7}")
        for name in selected:
            ok, why = available[name]
            if not ok:
                print(f"   {name:14} pending: strata cannot run it yet ({why})")
                missed.append(f"{name}: pending ({why})")
                continue
            s_best = p_best = 0.0
            s_rss = p_rss = float("inf")
            for _ in range(args.repeats):
                s, s_mem = strata_train(args.build, name, t, train_iters(name), train_warm)
                p, p_mem = torch_train(name, t, train_iters(name), train_warm)
                s_best, p_best = max(s_best, s), max(p_best, p)
                s_rss, p_rss = min(s_rss, s_mem), min(p_rss, p_mem)
            ratio, mem_ratio = s_best / p_best, s_rss / p_rss
            v = verdict(ratio, TARGETS[name])
            mv = verdict(mem_ratio, TARGETS["memory"], lower_is_better=True)
            if v.startswith("MISS"):
                missed.append(f"training {name}: {ratio:.2f}x < {TARGETS[name]}x")
            if mv.startswith("MISS"):
                missed.append(f"memory {name}: {mem_ratio:.2f}x > 1x")
            print(f"   {name:14} {s_best:9.0f} {p_best:9.0f} {ratio:6.2f}x {v[:4]:5}         "
                  f"{s_rss / 2**20:10.0f} {p_rss / 2**20:10.0f} {mem_ratio:6.2f}x {mv[:4]}",
                  flush=True)
            train_rows.append({"workload": name, "strata_images_per_second": s_best,
                               "pytorch_images_per_second": p_best, "ratio": ratio,
                               "target": TARGETS[name]})
            memory_rows.append({"workload": name, "strata_bytes": s_rss, "pytorch_bytes": p_rss,
                                "ratio": mem_ratio})
        results["train"], results["memory"] = train_rows, memory_rows
        print()

    if "threads" in parts:
        print("4. speed-up from 1 to 2 threads, training images/s")
        print(f"   {'workload':14} {'strata 1':>9} {'strata 2':>9} {'speed-up':>9}   "
              f"{'pytorch 1':>9} {'pytorch 2':>9} {'speed-up':>9}")
        rows = []
        for name in [n for n in CONV_HEAVY if n in selected]:
            if not available[name][0]:
                print(f"   {name:14} pending: strata cannot run it yet")
                continue
            best = {}
            for threads in (1, 2):
                s_best = p_best = 0.0
                for _ in range(args.repeats):
                    s_best = max(s_best, strata_train(args.build, name, threads,
                                                      train_iters(name), train_warm)[0])
                    p_best = max(p_best, torch_train(name, threads, train_iters(name),
                                                     train_warm)[0])
                best[threads] = (s_best, p_best)
            s_up, p_up = best[2][0] / best[1][0], best[2][1] / best[1][1]
            v = verdict(s_up, TARGETS["threads"])
            if v.startswith("MISS"):
                missed.append(f"threads {name}: {s_up:.2f}x < 1.8x")
            print(f"   {name:14} {best[1][0]:9.0f} {best[2][0]:9.0f} {s_up:8.2f}x   "
                  f"{best[1][1]:9.0f} {best[2][1]:9.0f} {p_up:8.2f}x  {v}", flush=True)
            rows.append({"workload": name, "strata_1": best[1][0], "strata_2": best[2][0],
                         "strata_speedup": s_up, "pytorch_1": best[1][1],
                         "pytorch_2": best[2][1], "pytorch_speedup": p_up})
        results["threads_speedup"] = rows
        print()

    print("missed targets: " + ("none" if not missed else "\n  " + "\n  ".join(missed)))
    results["missed"] = missed
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
