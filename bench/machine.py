"""What the MPI benchmarks record about the machine they ran on, and the CPU time others took from
it (bench/mpi_scaling.py, bench/mpi_allreduce.py, bench/distributed_cost_model.py). The machine is
shared: a figure means little without the load it was measured under."""
import datetime
import os
import resource
import sys


def cpu_model():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown CPU"


def busy_seconds():
    """The machine's busy CPU time so far (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds():
    """CPU time of this process's finished children (and theirs: mpirun waits for its ranks)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class CpuShare:
    """Started before a child process runs; stop() after it has been waited for gives the cores
    it got (`own`) and the cores the rest of the machine used meanwhile (`others`), averaged over
    the wall time."""

    def __init__(self):
        import time
        self._time = time.monotonic
        self.busy0, self.own0, self.wall0 = busy_seconds(), children_cpu_seconds(), self._time()

    def stop(self):
        wall = self._time() - self.wall0
        own = (children_cpu_seconds() - self.own0) / wall
        others = max(0.0, (busy_seconds() - self.busy0) / wall - own)
        return wall, own, others


def wait_for_quiet(cores, patience):
    """Waits (at most `patience` seconds) until the rest of the machine has used fewer than
    `cores` CPUs over 3 s. Returns what it used over the last 3 s."""
    import time
    deadline = time.monotonic() + patience
    while True:
        share = CpuShare()
        time.sleep(3)
        _, _, others = share.stop()
        if others < cores or time.monotonic() > deadline:
            return others


def record():
    """The machine and the moment, for a benchmark's JSON file."""
    started = datetime.datetime.now(datetime.timezone.utc)
    return {"cpu": f"{cpu_model()}, {os.cpu_count()} cores", "date": started.strftime("%Y-%m-%d"),
            "start": started.isoformat(timespec="seconds"), "load_average_start": os.getloadavg()[0],
            "command": " ".join(sys.argv)}
