// mpi_progress_bench: how should the communication thread wait for an allreduce? (the experiment
// behind the choice in plugins/comm_mpi/mpi_communicator.cpp). Plain MPI, no Strata.
//
//   mpirun -np 2 --bind-to none build/bin/mpi_progress_bench MODE [BYTES] [ITERATIONS] [JITTER_MS]
//
// Each rank runs a compute thread (a fixed floating-point kernel, counted in chunks) beside a
// communication thread that owns MPI, as the "mpi" communicator does. In each of 7 rounds the
// communication thread first sleeps 0.3 s while the compute thread runs alone (the baseline
// rate), then ITERATIONS/7 times sleeps a random 0..JITTER_MS ms (so the ranks arrive at
// different times, as they do after backward passes of uneven length) and sums BYTES of floats
// with every rank, waiting by MODE:
//   blocking    MPI_Allreduce (OpenMPI polls for progress: a busy core while it waits)
//   yield       MPI_Iallreduce, then MPI_Test + sched_yield() until done
//   sleep:US    MPI_Iallreduce, then MPI_Test + a sleep of US microseconds until done
//   spinsleep:SPIN:FIRST:LAST  MPI_Iallreduce, then MPI_Test in a busy loop for SPIN us, then
//               MPI_Test + sleeps from FIRST us doubling up to LAST us
//   gate:US     MPI_Ibarrier waited for as sleep:US (asleep while a rank is late), then the
//               blocking MPI_Allreduce (its algorithms, and its spinning only while data move)
// Prints per rank, as medians over the rounds: the compute rate during the reductions relative to
// the baseline of the same round, the mean time of one allreduce from the call to its completion
// (waiting for the late rank included), and the share of a core the communication thread used.
// Run with OMPI_MCA_mpi_yield_when_idle=1 in the environment to see what OpenMPI's own yield does.
#include <mpi.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

double thread_cpu_seconds() {
  timespec t{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

// The compute thread: chunks of a kernel that stays in L1 (about 50 us each).
std::atomic<long> chunks{0};
std::atomic<bool> stop_compute{false};
void compute() {
  std::vector<float> a(4096, 1.0001f), b(4096, 0.9999f);
  float sink = 0;
  while (!stop_compute.load(std::memory_order_relaxed)) {
    for (int repeat = 0; repeat < 16; ++repeat) {
      for (std::size_t i = 0; i < a.size(); ++i) a[i] = a[i] * b[i] + 1e-7f;
    }
    sink += a[17];
    chunks.fetch_add(1, std::memory_order_relaxed);
  }
  if (sink == 12345) std::printf("%f\n", sink);  // keeps the kernel
}

// The wait after MPI_Iallreduce: sched_yield() between tests ("yield"), or a busy spell of
// SPIN_US microseconds of tests, then sleeps from FIRST_US doubling up to LAST_US
// ("spinsleep:SPIN_US:FIRST_US:LAST_US"; "sleep:US" is spinsleep:0:US:US).
void wait_for(MPI_Request& request, const std::string& mode) {
  int done = 0;
  if (mode == "yield") {
    for (MPI_Test(&request, &done, MPI_STATUS_IGNORE); !done;
         MPI_Test(&request, &done, MPI_STATUS_IGNORE)) {
      sched_yield();
    }
    return;
  }
  long spin_us = 0, first_us = 0, last_us = 0;
  if (mode.rfind("sleep:", 0) == 0) {
    first_us = last_us = std::stol(mode.substr(6));
  } else if (std::sscanf(mode.c_str(), "spinsleep:%ld:%ld:%ld", &spin_us, &first_us, &last_us) !=
             3) {
    std::fprintf(stderr, "unknown mode %s\n", mode.c_str());
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  const auto spin_until = Clock::now() + std::chrono::microseconds(spin_us);
  long pause_us = first_us;
  for (;;) {
    MPI_Test(&request, &done, MPI_STATUS_IGNORE);
    if (done) return;
    if (Clock::now() < spin_until) continue;
    std::this_thread::sleep_for(std::chrono::microseconds(pause_us));
    pause_us = std::min(last_us, 2 * pause_us);
  }
}

struct Result {
  double compute_ratio = 0, allreduce_ms = 0, comm_cpu_fraction = 0, total_s = 0;
};

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

void allreduce(std::vector<float>& data, const std::string& mode) {
  const int count = static_cast<int>(data.size());
  if (mode == "blocking") {
    MPI_Allreduce(MPI_IN_PLACE, data.data(), count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
  } else if (mode.rfind("gate:", 0) == 0) {
    MPI_Request request;
    MPI_Ibarrier(MPI_COMM_WORLD, &request);
    wait_for(request, "spinsleep:0:" + mode.substr(5) + ":" + mode.substr(5));
    MPI_Allreduce(MPI_IN_PLACE, data.data(), count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
  } else {
    MPI_Request request;
    MPI_Iallreduce(MPI_IN_PLACE, data.data(), count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &request);
    wait_for(request, mode);
  }
}

// Rounds of a baseline phase (the communication thread asleep) and an active phase (it reduces),
// so that each active phase is compared with the baseline just before it: the machine's other
// load drifts less within a round than over the whole run. The medians over the rounds count.
Result run(const std::string& mode, std::size_t bytes, int iterations, int jitter_ms, int rank) {
  constexpr int kRounds = 7;
  std::vector<float> data(bytes / sizeof(float), 1.0f);
  std::mt19937 random(static_cast<unsigned>(rank) * 7 + 1);
  std::uniform_int_distribution<int> jitter(0, jitter_ms * 1000);
  std::vector<double> ratios, times, cpu;
  double total = 0;
  std::thread worker(compute);
  for (int round = 0; round < kRounds; ++round) {
    MPI_Barrier(MPI_COMM_WORLD);
    long before = chunks.load();
    auto start = Clock::now();
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    const double baseline = static_cast<double>(chunks.load() - before) / seconds_since(start);
    MPI_Barrier(MPI_COMM_WORLD);
    before = chunks.load();
    start = Clock::now();
    const double cpu0 = thread_cpu_seconds();
    double in_allreduce = 0;
    for (int i = 0; i < iterations / kRounds; ++i) {
      std::this_thread::sleep_for(std::chrono::microseconds(jitter(random)));
      const auto t0 = Clock::now();
      allreduce(data, mode);
      in_allreduce += seconds_since(t0);
    }
    const double active = seconds_since(start);
    total += active;
    ratios.push_back(static_cast<double>(chunks.load() - before) / active / baseline);
    times.push_back(1e3 * in_allreduce / (iterations / kRounds));
    cpu.push_back((thread_cpu_seconds() - cpu0) / active);
  }
  stop_compute = true;
  worker.join();
  return Result{median(ratios), median(times), median(cpu), total};
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr,
                 "usage: mpi_progress_bench blocking|yield|sleep:US [BYTES] [ITERATIONS] "
                 "[JITTER_MS]\n");
    return 2;
  }
  const std::string mode = argv[1];
  const std::size_t bytes = argc > 2 ? std::stoul(argv[2]) : (std::size_t{1} << 20);
  const int iterations = argc > 3 ? std::stoi(argv[3]) : 200;
  const int jitter_ms = argc > 4 ? std::stoi(argv[4]) : 4;
  Result result;
  int rank = 0, size = 1;
  // MPI on a thread of its own, as in the plugin (MPI_THREAD_FUNNELED).
  std::thread communication([&] {
    int provided = 0;
    MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    result = run(mode, bytes, iterations, jitter_ms, rank);
    std::vector<double> all(4 * static_cast<std::size_t>(size));
    double mine[4] = {result.compute_ratio, result.allreduce_ms, result.comm_cpu_fraction,
                      result.total_s};
    MPI_Gather(mine, 4, MPI_DOUBLE, all.data(), 4, MPI_DOUBLE, 0, MPI_COMM_WORLD);
    if (rank == 0) {
      const char* yield = std::getenv("OMPI_MCA_mpi_yield_when_idle");
      for (int r = 0; r < size; ++r) {
        std::printf(
            "mode %-10s yield_when_idle=%s bytes %zu rank %d: compute %.2f of alone, allreduce "
            "%.2f ms, comm thread CPU %.0f %%, %.1f s\n",
            mode.c_str(), yield ? yield : "unset", bytes, r, all[4 * r], all[4 * r + 1],
            100 * all[4 * r + 2], all[4 * r + 3]);
      }
    }
    MPI_Finalize();
  });
  communication.join();
  return 0;
}
