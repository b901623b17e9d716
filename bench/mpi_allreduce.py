#!/usr/bin/python3
"""Allreduce bus bandwidth per bucket size on this machine, over shared memory and over TCP.

Runs build/bin/allreduce_bench (bench/allreduce_bench.cpp: the "mpi" communicator's allreduce, as
`strata train` sums its gradient buckets, or with --raw MPI_Allreduce on the main thread) under
`mpirun -np 2 --bind-to none`, in alternating rounds over the transports

  shm   Open MPI's default on one node (the vader shared-memory BTL)
  tcp   --mca btl tcp,self (the path between hosts, here over loopback)

and reports, per size, the time of one sum and the bus bandwidth (nccl-tests: algbw = bytes /
time, busbw = algbw x 2(n-1)/n; for 2 ranks busbw = algbw) as min / median / max over the rounds.

The communicator asks libnbc for Rabenseifner's allreduce (coll_libnbc_iallreduce_algorithm=3,
plugins/comm_mpi/mpi_communicator.cpp). --tree also runs it with algorithm 2, the binomial tree
(reduce to rank 0, then broadcast) that Open MPI 4.1 uses for an in-place MPI_Iallreduce unless
told otherwise; --ring with algorithm 1, the ring that the cost model's formula assumes.

usage: /usr/bin/python3 bench/mpi_allreduce.py [--build build] [--repeats 3] [--raw] [--tree] [--ring]
         [--transports shm,tcp] [--seconds 0.3] [--json FILE]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

import machine

SOURCE = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
TRANSPORTS = {"shm": [], "tcp": ["--mca", "btl", "tcp,self"]}


def size_text(n):
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB" if n >= 1 << 10 else f"{n} B"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--build", default=os.path.join(SOURCE, "build"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--transports", default="shm,tcp")
    parser.add_argument("--raw", action="store_true", help="also MPI_Allreduce on the main thread")
    parser.add_argument("--tree", action="store_true",
                        help="also the communicator with coll_libnbc_iallreduce_algorithm=2 (tree)")
    parser.add_argument("--ring", action="store_true",
                        help="also the communicator with coll_libnbc_iallreduce_algorithm=1 (ring)")
    parser.add_argument("--seconds", default="0.3", help="allreduce_bench --seconds per size")
    parser.add_argument("--json")
    args = parser.parse_args()
    bench = os.path.join(args.build, "bin", "allreduce_bench")
    if not os.path.exists(bench):
        sys.exit(f"mpi_allreduce: {bench} not found (it is built where MPI is found)")
    modes = [("communicator", [], [])]
    if args.tree:
        modes.append(("communicator, tree", [], ["--mca", "coll_libnbc_iallreduce_algorithm", "2"]))
    if args.ring:
        modes.append(("communicator, ring", [], ["--mca", "coll_libnbc_iallreduce_algorithm", "1"]))
    if args.raw:
        modes.append(("MPI_Allreduce", ["--raw"], []))
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    host = machine.record()
    print(f"mpi_allreduce: {host['cpu']}; {host['start']}; load average "
          f"{host['load_average_start']:.2f}; {args.repeats} alternating rounds", flush=True)
    runs = []
    with tempfile.TemporaryDirectory(prefix="mpi_allreduce_") as work:
        for repeat in range(args.repeats):
            for transport in args.transports.split(","):
                for mode, bench_args, mca in modes:
                    out = os.path.join(work, "out.json")
                    command = ["mpirun", "-np", "2", "--bind-to", "none"] + TRANSPORTS[transport] + mca + \
                              [bench, "--json", out, "--seconds", args.seconds] + bench_args
                    load = os.getloadavg()[0]
                    result = subprocess.run(command, env=env, stdout=subprocess.PIPE,
                                            stderr=subprocess.STDOUT, text=True)
                    if result.returncode != 0:
                        sys.exit(f"mpi_allreduce: {' '.join(command)} failed:\n{result.stdout[-3000:]}")
                    with open(out) as f:
                        rows = json.load(f)["rows"]
                    runs.append({"round": repeat + 1, "transport": transport, "mode": mode,
                                 "load_average": load, "command": " ".join(command), "rows": rows})
                    print(f"  round {repeat + 1} {transport} {mode}: load {load:.1f}; busbw GB/s "
                          + " ".join(f"{r['busbw_gbps']:.2f}" for r in rows), flush=True)
    keys = [(t, m) for t in args.transports.split(",") for m, _, _ in modes]
    sizes = [r["bytes"] for r in runs[0]["rows"]]
    summary = []
    for t, m in keys:
        for i, nbytes in enumerate(sizes):
            rows = [run["rows"][i] for run in runs if run["transport"] == t and run["mode"] == m]
            summary.append({"transport": t, "mode": m, "bytes": nbytes,
                            "seconds": sorted(r["seconds"] for r in rows),
                            "busbw_gbps": sorted(r["busbw_gbps"] for r in rows)})
    print()
    print("Time of one sum, microseconds (median), and busbw, GB/s (median, min-max), 2 ranks:")
    print()
    print("| size | " + " | ".join(f"{t}, {m}" for t, m in keys) + " |")
    print("| ---: | " + " | ".join("---:" for _ in keys) + " |")
    for nbytes in sizes:
        cells = []
        for t, m in keys:
            s = next(x for x in summary if x["transport"] == t and x["mode"] == m and x["bytes"] == nbytes)
            bw = s["busbw_gbps"]
            cells.append(f"{1e6 * statistics.median(s['seconds']):,.0f} us, {statistics.median(bw):.2f} "
                         f"({bw[0]:.2f}-{bw[-1]:.2f})")
        print(f"| {size_text(nbytes)} | " + " | ".join(cells) + " |")
    host["load_average_end"] = os.getloadavg()[0]
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": host, "ranks": 2, "runs": runs, "summary": summary}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
