#!/usr/bin/python3
"""The cost model of data-parallel training (docs/distributed.md, "What to expect"): predicted weak-scaling
efficiency of every zoo model at 2 to 64 nodes on 10, 25 and 100 Gb/s, from measured compute.

Two steps:

  --measure FILE   measures, on this machine, every zoo model's training step with
                   `strata bench --json --threads 2` (synthetic data at the model's input shape),
                   with the per-layer forward and backward times, and reads each layer's parameters
                   from `strata summary --expand --json`; writes FILE. Also, for the models of
                   bench/mpi_scaling.py, the step of one rank of two: two `strata bench --threads 1`
                   run at the same time at half the global batch (the two ranks share the cores,
                   caches and memory as they do under mpirun).
  (default)        reads FILE (--measurements, default docs/generated/distributed_cost.json)
                   and prints the tables, then checks the model against the measured 2-rank
                   training: --scaling (bench/mpi_scaling.py --json files) and --allreduce
                   (bench/mpi_allreduce.py --json for 2 ranks on this machine), by default the
                   docs' measurements in docs/generated.

THE MODEL (one rank per node; N nodes; each computes a per-rank batch b; weak scaling)
  gradient bytes per step  G = 4 x parameters (float32; every parameter, frozen ones included,
                           in buckets of up to distributed.bucket_mb, 25 MiB, last layer first,
                           as training/src/data_parallel.cpp builds them)
  ring allreduce of a bucket of g bytes  t(g) = 2(N-1)/N x g / (line rate x line fraction)
                                                + 2(N-1) x latency
                           Rabenseifner's (reduce-scatter by recursive halving, allgather by
                           doubling), what the "mpi" communicator asks libnbc for: the ring's
                           bytes, 2 ceil(log2 N) x latency. Open MPI 4.1's own choice for an
                           in-place MPI_Iallreduce, the binomial tree: 2 ceil(log2 N) x
                           (g / rate + latency)
  the step's agreements    3 small allreduces, each 2 ceil(log2 N) x latency
  compute                  t_c = the measured step (forward, loss, backward, optimizer) at the
                           per-rank batch, divided by a node speed-up (--node-speedups; 1: this
                           machine's 2 cores, 16: a 32-core node of the same cores)
  overlap (the default)    the buckets' allreduces run one after another on the communication
                           thread, each starting when backward has finished its layers (from the
                           measured per-layer backward times) and the previous one is done; what
                           runs past the end of backward is exposed. Communication is assumed not
                           to slow computation (on a many-core node the communication thread has
                           a core of its own; on this 2-core machine it does not).
  no overlap (the bound)   every bucket's allreduce after backward.
  t_step = t_c + exposed allreduce + agreements;  efficiency E(N) = t_c / t_step.

usage: /usr/bin/python3 bench/distributed_cost_model.py --measure FILE [--build build] [--only a,b]
           [--wait-quiet CORES [--patience S]]
       /usr/bin/python3 bench/distributed_cost_model.py [--measurements FILE] [--scaling FILE]
           [--allreduce FILE] [--quiet CORES] [--line-fraction 0.9] [--latency-us 25] [--bucket-mb 25]
           [--node-speedups 1,16] [--json FILE]
"""
import argparse
import datetime
import json
import math
import os
import subprocess
import sys
import tempfile

import machine

SOURCE = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
DEFAULT_MEASUREMENTS = os.path.join(SOURCE, "docs", "generated", "distributed_cost.json")

# The zoo (docs/zoo.md): every architecture among experiments/*.yaml once. The other files train
# one of these models (lenet5_fashion_adam_cosine, _augment, _finetune; imagenet_resnet18_folder)
# or are searches.
ZOO = ["lenet5_fashion", "swish_fashion", "resnet_fashion", "inception_fashion", "dilated_fashion",
       "alexnet", "alexnet_grouped", "zfnet", "vgg16", "vgg19", "googlenet", "resnet18", "resnet34",
       "resnet50", "resnet101", "resnet152", "context_net"]
# Per-rank batch: 32 images per worker for the ImageNet-shaped models (Goyal et al. 2017 used 32
# per GPU); the 28x28 models' experiment batch, 128.
LARGE_BATCH, SMALL_BATCH = 32, 128
# The bench runs at most this much training memory (strata summary's estimate) on the shared
# machine; a model that needs more at the per-rank batch is measured at a smaller one and its
# times scaled linearly (per image; see --measure's linearity check).
MEMORY_CAP = [5 << 30]  # --memory-cap-gib
# The models and global batches of bench/mpi_scaling.py.
SCALING = {"lenet5": ("lenet5_fashion", 128), "resnet_fashion": ("resnet_fashion", 128),
           "resnet18": ("resnet18", 16)}
NODES = [2, 4, 8, 16, 32, 64]
RATES_GBIT = [10, 25, 100]


def strata_json(build, *args):
    out = subprocess.run([os.path.join(build, "bin", "strata")] + list(args), check=True,
                         stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out)


def bench_args(path, batch, threads, iterations):
    return ["bench", path, "--json", "--threads",
            str(threads), "--warmup", "1", "--iterations", str(iterations), "--set",
            f"train.batch_size={batch}"]


def iterations_for(macs_per_image, batch):
    """About 20 s of timed steps at ~50 GFLOP/s (fwd + bwd = 6 FLOPs per multiply-add), 1 to 10."""
    step = 6 * macs_per_image * batch / 50e9
    return max(1, min(10, round(20 / max(step, 1e-3))))


def trainable_copy(name, work):
    """The experiment file, or, when its model ends in a [C, 1, 1] map (context_net.yaml ends in
    global_avg_pool, which `strata train` refuses before the loss), a copy in `work` with a
    flatten layer appended: the step's cost is the same to within that layer."""
    path = os.path.join(SOURCE, "experiments", f"{name}.yaml")
    import yaml
    with open(path) as f:
        experiment = yaml.safe_load(f)
    rows = strata_json(BUILD[0], "summary", path, "--json")["rows"]
    if len(rows[-1]["output"]) == 1:
        return path, None
    experiment["model"]["layers"].append({"name": "flatten", "type": "flatten"})
    copy = os.path.join(work, f"{name}.yaml")
    with open(copy, "w") as f:
        yaml.safe_dump(experiment, f, sort_keys=False)
    return copy, f"{name}.yaml ends in {rows[-1]['output']}: measured with a flatten layer appended"


BUILD = [None]  # the build folder, for trainable_copy
WAIT_QUIET = [None, 0]  # --wait-quiet CORES, --patience S


def measure_model(build, name, work):
    BUILD[0] = build
    path, note = trainable_copy(name, work)
    summary = strata_json(build, "summary", path, "--expand", "--json")
    rows, totals = summary["rows"], summary["totals"]
    large = summary["input"][-1] >= 200
    per_rank = LARGE_BATCH if large else SMALL_BATCH
    batch = per_rank
    while batch > 4:
        estimate = strata_json(build, "summary", path, "--json",
                               "--set", f"train.batch_size={batch}")["totals"]
        if estimate["training_bytes_estimate"] <= MEMORY_CAP[0]:
            break
        batch //= 2
    iterations = iterations_for(totals["multiply_adds_per_image"], batch)
    if WAIT_QUIET[0] is not None:
        machine.wait_for_quiet(*WAIT_QUIET)
    load, share = os.getloadavg()[0], machine.CpuShare()
    report = strata_json(build, *bench_args(path, batch, 2, iterations))
    wall, own, others = share.stop()
    if note:
        print(f"  note: {note}", flush=True)
    names = [r["name"] for r in rows]
    if names != [layer["name"] for layer in report["layers"]]:
        sys.exit(f"distributed_cost_model: {name}: strata summary --expand and strata bench list "
                 f"different layers")
    # What the overlap model needs, per layer in graph order: parameters and backward time.
    layers = [{"name": r["name"], "parameters": r["parameters"],
               "backward_seconds": float(f"{b['backward_seconds']:.4g}")}
              for r, b in zip(rows, report["layers"])]
    record = {"model": name, "input": summary["input"], "parameters": totals["parameters"],
              "multiply_adds_per_image": totals["multiply_adds_per_image"],
              "per_rank_batch": per_rank, "measured_batch": batch, "iterations": iterations,
              "threads": report["threads"], "step_seconds": report["step_seconds"],
              "forward_seconds": report["forward_seconds"], "loss_seconds": report["loss_seconds"],
              "backward_seconds": report["backward_seconds"],
              "optimizer_seconds": report["optimizer_seconds"], "layers": layers,
              # the cores the bench got (of its 2 threads) and those the rest of the machine used
              "load_average": load, "wall_seconds": wall, "own_cores": own, "others_cores": others,
              "note": note}
    return record


def measure_pair(build, name, global_batch):
    """Two 1-thread benches at once, each at half the batch: one rank of two, as under mpirun."""
    macs = strata_json(build, "summary", os.path.join(SOURCE, "experiments", f"{name}.yaml"),
                       "--json")["totals"]["multiply_adds_per_image"]
    iterations = iterations_for(macs, global_batch)
    strata = os.path.join(build, "bin", "strata")
    path = os.path.join(SOURCE, "experiments", f"{name}.yaml")
    if WAIT_QUIET[0] is not None:
        machine.wait_for_quiet(*WAIT_QUIET)
    share = machine.CpuShare()
    one = strata_json(build, *bench_args(path, global_batch, 2, iterations))
    _, _, others_one = share.stop()
    if WAIT_QUIET[0] is not None:
        machine.wait_for_quiet(*WAIT_QUIET)
    share = machine.CpuShare()
    procs = [subprocess.Popen([strata] + bench_args(path, global_batch // 2, 1, iterations),
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    pair = [json.loads(p.communicate()[0]) for p in procs]
    _, _, others_pair = share.stop()
    if any(p.returncode != 0 for p in procs):
        sys.exit(f"distributed_cost_model: the paired bench of {name} failed")
    keys = ["step_seconds", "forward_seconds", "backward_seconds", "optimizer_seconds"]
    return {"model": name, "global_batch": global_batch, "iterations": iterations,
            "one_process_2_threads": {k: one[k] for k in keys},
            "two_processes_1_thread": [{k: p[k] for k in keys} for p in pair],
            "others_cores": [others_one, others_pair], "load_average": os.getloadavg()[0]}


def measure(args):
    """Measures into args.measure, adding to (or replacing models in) the file if it exists, and
    writing it after each model so that an error later keeps what was measured."""
    WAIT_QUIET[:] = [args.wait_quiet, args.patience]
    MEMORY_CAP[0] = int(args.memory_cap_gib * (1 << 30))
    only = args.only.split(",") if args.only else ZOO + ["pairs"]
    data = {"machine": machine.record(), "models": [], "pairs": []}
    if os.path.exists(args.measure):
        with open(args.measure) as f:
            data = json.load(f)
    order = {n: i for i, n in enumerate(ZOO)}

    def save():
        data["machine"]["end"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        data["models"].sort(key=lambda m: order.get(m["model"], len(order)))
        with open(args.measure, "w") as f:  # one line per model: the layers make it long
            f.write("{\"machine\": " + json.dumps(data["machine"]) + ",\n \"models\": [\n  "
                    + ",\n  ".join(json.dumps(m) for m in data["models"]) + "],\n \"pairs\": [\n  "
                    + ",\n  ".join(json.dumps(p) for p in data["pairs"]) + "]}\n")

    for name in only:
        if name in ZOO:
            with tempfile.TemporaryDirectory(prefix="distributed_cost_") as work:
                record = measure_model(args.build, name, work)
            data["models"] = [m for m in data["models"] if m["model"] != name] + [record]
            print(f"  {name:17} batch {record['measured_batch']:3} x {record['iterations']:2}: "
                  f"step {record['step_seconds']:8.3f} s (backward {record['backward_seconds']:.3f} s), "
                  f"load {record['load_average']:.1f}, got {record['own_cores']:.2f} cores, "
                  f"others {record['others_cores']:.2f}", flush=True)
            save()
        elif name == "pairs":
            for key, (model, batch) in SCALING.items():
                pair = measure_pair(args.build, model, batch)
                data["pairs"] = [p for p in data["pairs"] if p["model"] != model] + [pair]
                print(f"  {model:17} 1 x 2 threads at batch {batch}: "
                      f"{pair['one_process_2_threads']['step_seconds'] * 1e3:.1f} ms; 2 x 1 thread at "
                      f"{batch // 2}: {max(p['step_seconds'] for p in pair['two_processes_1_thread']) * 1e3:.1f} ms",
                      flush=True)
                save()
        else:
            sys.exit(f"distributed_cost_model: --only {name}: not a zoo model ({', '.join(ZOO)}) or 'pairs'")
    return 0


# ---- The model ----

class Network:
    """A link of `gbit` Gb/s of which `fraction` is reached, and `latency` seconds per message.
    algorithm "ring": the bandwidth-optimal ring (reduce-scatter, then allgather), what the issue's
    formula assumes; "rabenseifner": the same bytes in 2 log2 N messages (recursive halving, then
    doubling; N a power of two), what the "mpi" communicator asks libnbc for
    (coll_libnbc_iallreduce_algorithm 3); "tree": what Open MPI 4.1 does with an in-place
    MPI_Iallreduce unless told otherwise (libnbc's binomial tree: ceil(log2 N) rounds of whole
    buffers into rank 0, then a binomial broadcast from it; rank 0's link carries 2 ceil(log2 N)
    buffers)."""

    def __init__(self, gbit, fraction, latency, algorithm="ring"):
        self.gbit, self.bytes_per_second, self.latency = gbit, gbit * 1e9 / 8 * fraction, latency
        self.algorithm = algorithm

    def allreduce(self, nbytes, nodes):
        if nodes <= 1:
            return 0.0
        if self.algorithm == "tree":
            return 2 * math.ceil(math.log2(nodes)) * (nbytes / self.bytes_per_second + self.latency)
        if self.algorithm == "rabenseifner":
            return (2 * (nodes - 1) / nodes * nbytes / self.bytes_per_second
                    + 2 * math.ceil(math.log2(nodes)) * self.latency)
        return 2 * (nodes - 1) / nodes * nbytes / self.bytes_per_second + 2 * (nodes - 1) * self.latency

    def agreements(self, nodes):
        return 3 * 2 * math.ceil(math.log2(nodes)) * self.latency if nodes > 1 else 0.0


def buckets(layers, bucket_bytes, bytes_per_parameter=4):
    """[(seconds into backward when the bucket is whole, bytes sent)], as DataParallel builds them
    (float32 parameters up to bucket_bytes); bytes_per_parameter 2 sends the same buckets as bf16."""
    out, current, elapsed = [], 0, 0.0
    for layer in reversed(layers):
        elapsed += layer["backward_seconds"]
        if layer["parameters"] == 0:
            continue
        current += 4 * layer["parameters"]
        ready = elapsed
        if current >= bucket_bytes:
            out.append((ready, current * bytes_per_parameter // 4))
            current = 0
    if current:
        out.append((ready, current * bytes_per_parameter // 4))
    return out


def normalized_layers(record):
    """The layers with their backward times scaled to add up to the measured backward pass (the
    per-layer timings miss the graph's own work between layers)."""
    total = sum(layer["backward_seconds"] for layer in record["layers"]) or 1.0
    factor = record["backward_seconds"] / total
    return [dict(layer, backward_seconds=layer["backward_seconds"] * factor) for layer in record["layers"]]


class Model:
    """One zoo model's measured step, at a per-rank batch and a node speed."""

    def __init__(self, record, batch=None, speedup=1.0):
        self.record = record
        self.batch = batch or record["per_rank_batch"]
        self.scale = self.batch / record["measured_batch"] / speedup
        self.compute = record["step_seconds"] * self.scale
        self.backward = record["backward_seconds"] * self.scale

    def step(self, nodes, network, overlap=True, bucket_mb=25.0, bytes_per_parameter=4,
             ranks_per_node=1, intra=None):
        if nodes * ranks_per_node <= 1:
            return self.compute
        layers = [dict(layer, backward_seconds=layer["backward_seconds"] * self.scale)
                  for layer in normalized_layers(self.record)]
        plan = buckets(layers, bucket_mb * 1024 * 1024, bytes_per_parameter)
        if ranks_per_node > 1:
            # Hierarchical: within the node over shared memory (intra: bytes/s, reduce-scatter and
            # allgather), then a ring over the nodes; flat: one ring over every rank.
            cost = (lambda g: intra.allreduce(g, ranks_per_node) + network.allreduce(g, nodes)) \
                if intra else (lambda g: network.allreduce(g, nodes * ranks_per_node))
        else:
            cost = lambda g: network.allreduce(g, nodes)  # noqa: E731
        if overlap:
            end = 0.0
            for ready, nbytes in plan:
                end = max(ready, end) + cost(nbytes)
            exposed = max(0.0, end - self.backward)
        else:
            exposed = sum(cost(nbytes) for _, nbytes in plan)
        return self.compute + exposed + network.agreements(nodes * ranks_per_node)

    def efficiency(self, nodes, network, **kw):
        return self.compute / self.step(nodes, network, **kw)


def first_below(model, network, threshold=0.9, **kw):
    for nodes in NODES:
        if model.efficiency(nodes, network, **kw) < threshold:
            return str(nodes)
    return "> 64"


def breakeven_speedup(record, network, nodes, batch=None, threshold=0.9, **kw):
    """The node speed-up over this machine at which E(nodes) falls to the threshold."""
    low, high = 1e-3, 1e5
    if Model(record, batch, high).efficiency(nodes, network, **kw) >= threshold:
        return high
    if Model(record, batch, low).efficiency(nodes, network, **kw) < threshold:
        return low
    for _ in range(80):
        mid = math.sqrt(low * high)
        if Model(record, batch, mid).efficiency(nodes, network, **kw) >= threshold:
            low = mid
        else:
            high = mid
    return low


def title(record):
    shape = "x".join(str(x) for x in record["input"])
    return f"{record['model']} ({shape})"


def network(args, gbit, algorithm="ring"):
    return Network(gbit, args.line_fraction, args.latency_us * 1e-6, algorithm)


def tables(data, args):
    records = data["models"]
    lines = []
    m = data["machine"]
    lines.append(f"Compute measured on {m['cpu']}, {m['date']} (`strata bench --threads 2`, "
                 f"synthetic data; load average {m['load_average_start']:.1f} at the start).")
    lines.append(f"Network: line rate x {args.line_fraction:.2f}, {args.latency_us:g} us per message; "
                 f"buckets of {args.bucket_mb:g} MiB; per-rank batch {LARGE_BATCH} (224x224-class inputs) "
                 f"or {SMALL_BATCH} (28x28).")
    lines.append("")
    lines.append("| model | parameters | gradient MB/step | per-rank batch | measured at (batch x steps) "
                 "| compute s/step | backward share | buckets |")
    lines.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in records:
        model = Model(r)
        plan = buckets(r["layers"], args.bucket_mb * 1024 * 1024)
        lines.append(f"| {title(r)} | {r['parameters']:,} | {4 * r['parameters'] / 1e6:,.1f} | "
                     f"{model.batch} | {r['measured_batch']} x {r['iterations']} | {model.compute:.3f} | "
                     f"{100 * r['backward_seconds'] / r['step_seconds']:.0f} % | {len(plan)} |")
    speedups = [float(x) for x in args.node_speedups.split(",")]
    lines.append("")
    lines.append("The smallest number of nodes (of 2 to 64) at which the predicted efficiency falls below "
                 "90 %, ring allreduce, overlapped (no overlap):")
    lines.append("")
    lines.append("| model | " + " | ".join(f"{g} Gb/s, node {x:g}x" for x in speedups for g in RATES_GBIT) + " |")
    lines.append("| --- | " + " | ".join("---:" for _ in speedups for _ in RATES_GBIT) + " |")
    for r in records:
        cells = []
        for x in speedups:
            model = Model(r, speedup=x)
            for g in RATES_GBIT:
                a = first_below(model, network(args, g), bucket_mb=args.bucket_mb)
                b = first_below(model, network(args, g), overlap=False, bucket_mb=args.bucket_mb)
                cells.append(a if a == b else f"{a} ({b})")
        lines.append(f"| {title(r)} | " + " | ".join(cells) + " |")
    for speedup in speedups:
        for gbit in RATES_GBIT:
            ring, strata, tree = (network(args, gbit), network(args, gbit, "rabenseifner"),
                                  network(args, gbit, "tree"))
            lines.append("")
            lines.append(f"Predicted weak-scaling efficiency, %, {gbit} Gb/s, compute of "
                         + ("this machine (2 cores)" if speedup == 1 else f"a node {speedup:g}x this machine")
                         + ": ring allreduce, overlapped (no overlap in parentheses where it is lower):")
            lines.append("")
            lines.append("| model | ring ms at 8 nodes | " + " | ".join(f"{n} nodes" for n in NODES)
                         + " | below 90 % from: ring, overlap / ring, none / Strata (Rabenseifner), "
                         "overlap / tree, overlap |")
            lines.append("| --- | ---: | " + " | ".join("---:" for _ in NODES) + " | --- |")
            for r in records:
                model = Model(r, speedup=speedup)
                cells = []
                for n in NODES:
                    e = round(100 * model.efficiency(n, ring, bucket_mb=args.bucket_mb))
                    e0 = round(100 * model.efficiency(n, ring, overlap=False, bucket_mb=args.bucket_mb))
                    cells.append(f"{e}" + (f" ({e0})" if e0 < e else ""))
                full = sum(ring.allreduce(b, 8) for _, b in buckets(r["layers"], args.bucket_mb * 1024 * 1024))
                lines.append(f"| {title(r)} | {1e3 * full:.1f} | " + " | ".join(cells) + " | "
                             f"{first_below(model, ring, bucket_mb=args.bucket_mb)} / "
                             f"{first_below(model, ring, overlap=False, bucket_mb=args.bucket_mb)} / "
                             f"{first_below(model, strata, bucket_mb=args.bucket_mb)} / "
                             f"{first_below(model, tree, bucket_mb=args.bucket_mb)} |")
    return "\n".join(lines)


def resnet50_table(data, args):
    record = next((r for r in data["models"] if r["model"] == "resnet50"), None)
    if record is None:
        return ""
    ring, strata, tree = network(args, 25), network(args, 25, "rabenseifner"), network(args, 25, "tree")
    base = Model(record)
    fast = Model(record, 32, 16.0)
    lines = [f"ResNet-50 on 25 Gb/s Ethernet: efficiency, %, at 2, 4 and 8 nodes of a node 16x this machine "
             f"({32 / fast.compute:,.0f} images/s at batch 32; this machine: {base.batch / base.compute:.1f}), "
             f"at 8 nodes of a node 64x, and the fastest node with which 8 nodes keep 90 %:", ""]
    lines.append("| variant | 2 nodes, 16x | 4 nodes, 16x | 8 nodes, 16x | 8 nodes, 64x | "
                 "90 % at 8 nodes up to a node of |")
    lines.append("| --- | ---: | ---: | ---: | ---: | ---: |")
    variants = [
        ("ring, fp32, batch 32, overlap", ring, {}, 32),
        ("ring, fp32, batch 32, no overlap", ring, {"overlap": False}, 32),
        ("Rabenseifner (Strata), fp32, batch 32, overlap", strata, {}, 32),
        (f"Rabenseifner (Strata), fp32, batch 32, overlap, {args.communicator_latency_us:g} us a message",
         Network(25, args.line_fraction, args.communicator_latency_us * 1e-6, "rabenseifner"), {}, 32),
        ("binomial tree (Open MPI's default in place), fp32, batch 32, overlap", tree, {}, 32),
        ("ring, fp32, batch 32, overlap, 60 % of line rate", Network(25, 0.6, args.latency_us * 1e-6), {}, 32),
        ("ring, fp32, batch 32, overlap, 6 MiB buckets", ring, {"bucket_mb": 6.0}, 32),
        ("ring, bf16 gradients, batch 32, overlap", ring, {"bytes_per_parameter": 2}, 32),
        ("ring, fp32, batch 64, overlap", ring, {}, 64),
        ("ring, fp32, batch 128, overlap", ring, {}, 128),
        ("ring, bf16 gradients, batch 64, overlap", ring, {"bytes_per_parameter": 2}, 64),
    ]
    for label, net, kw, batch in variants:
        even = breakeven_speedup(record, net, 8, batch=batch, **kw)
        model = Model(record, batch, 16.0)
        cells = " | ".join(f"{100 * model.efficiency(n, net, **kw):.1f}" for n in (2, 4, 8))
        lines.append(f"| {label} | {cells} | {100 * Model(record, batch, 64.0).efficiency(8, net, **kw):.1f} | "
                     f"{even:.0f}x ({even * batch / Model(record, batch).compute:,.0f} img/s) |")
    # Hierarchical: 2 ranks per node (one per socket) against one flat ring of 16 ranks.
    intra = Network(8 * args.intra_gbyte, 1.0, 2e-6)
    lines.append("")
    lines.append(f"Two ranks per node (one per socket, each 8x this machine), 8 and 32 nodes, batch 32 "
                 f"per rank, ring, overlap; within the node {args.intra_gbyte:g} GB/s and 2 us per message:")
    lines.append("")
    lines.append("| allreduce | 8 nodes x 2 ranks | 32 nodes x 2 ranks |")
    lines.append("| --- | ---: | ---: |")
    model = Model(record, 32, 8.0)
    for label, kw in (("flat ring over all ranks", {}),
                      ("hierarchical (within the node, then a ring over the nodes)", {"intra": intra})):
        cells = " | ".join(f"{100 * model.efficiency(n, ring, ranks_per_node=2, **kw):.1f} %" for n in (8, 32))
        lines.append(f"| {label} | {cells} |")
    return "\n".join(lines)


def interpolate_seconds(table, nbytes):
    """Allreduce seconds for nbytes from allreduce_bench rows (log-log between sizes; beyond the
    largest, at the largest size's bandwidth)."""
    rows = sorted((r["bytes"], r["seconds"]) for r in table)
    if nbytes <= rows[0][0]:
        return rows[0][1]
    for (b0, t0), (b1, t1) in zip(rows, rows[1:]):
        if nbytes <= b1:
            w = math.log(nbytes / b0) / math.log(b1 / b0)
            return math.exp(math.log(t0) + w * (math.log(t1) - math.log(t0)))
    b, t = rows[-1]
    return t * nbytes / b


def check(data, args):
    scaling = {"runs": []}
    for path in args.scaling:
        with open(path) as f:
            part = json.load(f)
        scaling["machine"] = part["machine"]
        scaling["runs"] += part["runs"]
    with open(args.allreduce) as f:
        allreduce = json.load(f)
    if "summary" in allreduce:  # bench/mpi_allreduce.py: the communicator over shared memory
        import statistics as st
        table = [{"bytes": x["bytes"], "seconds": st.median(x["seconds"])} for x in allreduce["summary"]
                 if x["transport"] == "shm" and x["mode"] == "communicator"]
    else:  # allreduce_bench --json
        table = allreduce["rows"]
    lines = [f"Check against bench/mpi_scaling.py ({scaling['machine']['date']}"
             + (f"; the runs while the rest of the machine used < {args.quiet:g} cores" if args.quiet else "")
             + f") with the measured 2-rank allreduce ({os.path.basename(args.allreduce)}):", ""]
    lines.append("| model, global batch, configuration | compute ms/step, 1x2 / one rank of 2x1 (bench) | "
                 "gradient allreduce ms (buckets) | comm ms/step, predicted / measured (median) | "
                 "2x1 / 1x2, predicted / measured (median; best) |")
    lines.append("| --- | --- | ---: | ---: | ---: |")
    import statistics
    for key, (name, batch) in SCALING.items():
        pair = next((p for p in data["pairs"] if p["model"] == name), None)
        record = next((r for r in data["models"] if r["model"] == name), None)
        runs = [r for r in scaling["runs"] if r["model"] == key
                and (args.quiet is None or r["others_cores"] < args.quiet)]
        if not pair or not record or not runs:
            continue
        one = pair["one_process_2_threads"]
        rank = max(pair["two_processes_1_thread"], key=lambda p: p["step_seconds"])
        plan = buckets(normalized_layers(record), (scaling.get("bucket_mb") or 25) * 1024 * 1024)
        small = interpolate_seconds(table, 8)
        ar = [interpolate_seconds(table, b) for _, b in plan]
        # Overlap: the scaled per-layer backward of one rank (1 thread, half batch).
        scale = rank["backward_seconds"] / record["backward_seconds"]
        end = 0.0
        for (ready, _), t in zip(plan, ar):
            end = max(ready * scale, end) + t
        exposed = max(0.0, end - rank["backward_seconds"])
        predicted = {"2x1": rank["step_seconds"] + exposed + 3 * small,
                     "2x1-serial": rank["step_seconds"] + sum(ar) + 3 * small}
        for config in ("2x1", "2x1-serial"):
            measured = [r["images_per_second"] for r in runs if r["config"] == config]
            base = [r["images_per_second"] for r in runs if r["config"] == "1x2"]
            if not measured or not base:
                continue
            comm = statistics.median(r["communication_seconds_per_step"] for r in runs if r["config"] == config)
            lines.append(f"| {name}, {batch}, {config} | {1e3 * one['step_seconds']:.1f} / "
                         f"{1e3 * rank['step_seconds']:.1f} | {1e3 * sum(ar):.2f} ({len(ar)}) | "
                         f"{1e3 * (predicted[config] - rank['step_seconds']):.1f} / {1e3 * comm:.1f} | "
                         f"{one['step_seconds'] / predicted[config]:.2f} / "
                         f"{statistics.median(measured) / statistics.median(base):.2f}; "
                         f"{max(measured) / max(base):.2f} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--build", default=os.path.join(SOURCE, "build"))
    parser.add_argument("--measure", metavar="FILE", help="measure this machine into FILE")
    parser.add_argument("--only", help="with --measure: these zoo models (and/or 'pairs') only")
    parser.add_argument("--wait-quiet", type=float, metavar="CORES",
                        help="with --measure: before each bench, wait until the rest of the machine "
                             "uses fewer than CORES CPUs (at most --patience seconds)")
    parser.add_argument("--patience", type=float, default=120)
    parser.add_argument("--memory-cap-gib", type=float, default=5.0,
                        help="with --measure: the largest training memory (strata summary's "
                             "estimate) a bench may take; above it the batch is halved")
    parser.add_argument("--quiet", type=float, metavar="CORES",
                        help="the check uses only the mpi_scaling runs during which the rest of the "
                             "machine used fewer than CORES CPUs")
    parser.add_argument("--measurements", default=DEFAULT_MEASUREMENTS)
    generated = os.path.join(SOURCE, "docs", "generated")
    parser.add_argument("--scaling", nargs="+", metavar="FILE",
                        default=[os.path.join(generated, "mpi_scaling.json")],
                        help="bench/mpi_scaling.py --json files to check against (default: the "
                             "docs' measurements)")
    parser.add_argument("--allreduce", default=os.path.join(generated, "mpi_allreduce.json"),
                        help="a bench/mpi_allreduce.py or allreduce_bench --json file (2 ranks, this "
                             "machine; default: the docs' measurements)")
    parser.add_argument("--no-check", action="store_true", help="no check against the measurements")
    parser.add_argument("--line-fraction", type=float, default=0.9)
    parser.add_argument("--latency-us", type=float, default=25.0)
    parser.add_argument("--communicator-latency-us", type=float, default=100.0,
                        help="a ResNet-50 variant with this latency per message, to show how much "
                             "the latency matters (the communicator's 4 KiB allreduce over loopback "
                             "TCP took 46 us here, two messages at 2 ranks: bench/mpi_allreduce.py)")
    parser.add_argument("--bucket-mb", type=float, default=25.0)
    parser.add_argument("--node-speedups", default="1,16",
                        help="compute of a node as a multiple of this machine's, one table set each")
    parser.add_argument("--intra-gbyte", type=float, default=10.0,
                        help="within-node allreduce bandwidth for the hierarchical case, GB/s")
    parser.add_argument("--json", help="write the predictions to FILE")
    args = parser.parse_args()
    if args.measure:
        return measure(args)
    with open(args.measurements) as f:
        data = json.load(f)
    print(tables(data, args))
    print()
    print(resnet50_table(data, args))
    if not args.no_check and all(os.path.exists(p) for p in args.scaling + [args.allreduce]):
        print()
        print(check(data, args))
    if args.json:
        out = {"machine": data["machine"], "assumptions": vars(args), "efficiency": {}}
        for r in data["models"]:
            for speedup in [float(x) for x in args.node_speedups.split(",")]:
                model = Model(r, speedup=speedup)
                for g in RATES_GBIT:
                    for algorithm in ("ring", "rabenseifner", "tree"):
                        key = f"{r['model']} x{speedup:g} {g}Gb/s {algorithm}"
                        out["efficiency"][key] = {str(n): model.efficiency(n, network(args, g, algorithm),
                                                                           bucket_mb=args.bucket_mb)
                                                  for n in NODES}
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
