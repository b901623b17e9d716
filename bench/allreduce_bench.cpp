// allreduce_bench: the "mpi" communicator's allreduce bandwidth per bucket size, as nccl-tests
// reports it (algbw = bytes / time; busbw = algbw * 2(n-1)/n, what each rank's link carries in a
// ring allreduce, comparable across rank counts).
//
//   mpirun -np 2 --bind-to none build/bin/allreduce_bench [--raw] [--json FILE]
//          [--min-bytes N] [--max-bytes N] [--seconds S]
//
// Sums float buffers of 4 KiB to 64 MiB (powers of 4) through the communicator, loaded from the
// plugin as strata loads it (the time includes its queue and its waiting), or with --raw through
// MPI_Allreduce called directly on the main thread (the library alone, for comparison). Each size
// runs 4 warm-up sums, then batches of 4 until the slowest rank has spent S seconds in them
// (default 0.3, at least 20 sums); the time of a sum is the slowest rank's mean. Every batch is
// checked exactly (each rank starts from rank + 1); a wrong sum is an error.
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "strata/communicator.hpp"
#include "strata/config.hpp"
#include "strata/error.hpp"
#include "strata/plugin.hpp"
#include "strata/registry.hpp"

namespace {

using Clock = std::chrono::steady_clock;

struct Options {
  bool raw = false;
  std::string json;
  std::size_t min_bytes = std::size_t{4} << 10;
  std::size_t max_bytes = std::size_t{64} << 20;
  double seconds = 0.3;
};

struct Row {
  std::size_t bytes = 0;
  int iterations = 0;
  double seconds = 0;           // one sum, the slowest rank's mean
  double algbw = 0, busbw = 0;  // GB/s
};

// The operations the benchmark needs, on the communicator or on MPI directly.
struct Reducer {
  int rank = 0, size = 1;
  std::function<void(std::vector<float>&)> sum;
  std::function<double(double)> max;  // the maximum of a value over the ranks
};

Options parse(int argc, char** argv) {
  Options options;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const auto value = [&] {
      if (i + 1 >= argc) strata::fail("allreduce_bench: {} needs a value", arg);
      return std::string(argv[++i]);
    };
    if (arg == "--raw") {
      options.raw = true;
    } else if (arg == "--json") {
      options.json = value();
    } else if (arg == "--min-bytes") {
      options.min_bytes = std::stoull(value());
    } else if (arg == "--max-bytes") {
      options.max_bytes = std::stoull(value());
    } else if (arg == "--seconds") {
      options.seconds = std::stod(value());
    } else {
      strata::fail(
          "allreduce_bench: unknown argument '{}' (known: --raw, --json FILE, --min-bytes N, "
          "--max-bytes N, --seconds S)",
          arg);
    }
  }
  if (options.min_bytes < sizeof(float) || options.min_bytes > options.max_bytes) {
    strata::fail("allreduce_bench: need 4 <= --min-bytes ({}) <= --max-bytes ({})",
                 options.min_bytes, options.max_bytes);
  }
  return options;
}

Row measure(Reducer& reducer, std::size_t bytes, double seconds) {
  std::vector<float> data(bytes / sizeof(float));
  const double n = reducer.size;
  // After the first sum every element is n(n+1)/2, and each later sum multiplies it by n: exact
  // in float for batches of kBatch sums (few significant bits), so the check is exact.
  constexpr int kBatch = 4;
  const double expected = n * (n + 1) / 2 * std::pow(n, kBatch - 1);
  double timed = 0;
  int sums = 0;
  const auto batch = [&](bool counted) {
    std::fill(data.begin(), data.end(), static_cast<float>(reducer.rank + 1));
    const auto start = Clock::now();
    for (int i = 0; i < kBatch; ++i) reducer.sum(data);
    if (counted) {
      timed += std::chrono::duration<double>(Clock::now() - start).count();
      sums += kBatch;
    }
    for (float value : {data.front(), data[data.size() / 2], data.back()}) {
      if (value != static_cast<float>(expected)) {
        strata::fail("allreduce_bench: rank {}: {} sums of {} bytes gave {}, expected {}",
                     reducer.rank, kBatch, bytes, value, expected);
      }
    }
  };
  batch(false);  // warm-up
  // Until the slowest rank has spent `seconds` in sums (all ranks agree: one more collective).
  do {
    batch(true);
  } while (sums < 20 || reducer.max(timed) < seconds);
  Row row;
  row.bytes = bytes;
  row.iterations = sums;
  row.seconds = reducer.max(timed / sums);
  row.algbw = static_cast<double>(bytes) / row.seconds / 1e9;
  row.busbw = row.algbw * 2.0 * (n - 1) / n;
  return row;
}

std::string size_text(std::size_t bytes) {
  if (bytes >= (std::size_t{1} << 20)) return std::to_string(bytes >> 20) + " MiB";
  if (bytes >= (std::size_t{1} << 10)) return std::to_string(bytes >> 10) + " KiB";
  return std::to_string(bytes) + " B";
}

void report(const std::vector<Row>& rows, const Options& options, int size,
            const std::string& description) {
  std::printf("# allreduce of floats (sum), %d ranks, %s\n# %s\n", size,
              options.raw ? "MPI_Allreduce called directly" : "through the 'mpi' communicator",
              description.c_str());
  std::printf("%10s %12s %8s %12s %12s\n", "size", "bytes", "sums", "time (us)", "busbw (GB/s)");
  for (const Row& row : rows) {
    std::printf("%10s %12zu %8d %12.1f %12.3f   algbw %.3f GB/s\n", size_text(row.bytes).c_str(),
                row.bytes, row.iterations, 1e6 * row.seconds, row.busbw, row.algbw);
  }
  if (options.json.empty()) return;
  std::ofstream out(options.json);
  out << "{\"ranks\": " << size << ", \"raw\": " << (options.raw ? "true" : "false")
      << ", \"rows\": [";
  for (std::size_t i = 0; i < rows.size(); ++i) {
    out << (i ? ", " : "") << "{\"bytes\": " << rows[i].bytes
        << ", \"sums\": " << rows[i].iterations << ", \"seconds\": " << rows[i].seconds
        << ", \"algbw_gbps\": " << rows[i].algbw << ", \"busbw_gbps\": " << rows[i].busbw << "}";
  }
  out << "]}\n";
  if (!out) strata::fail("allreduce_bench: cannot write {}", options.json);
}

int run(const Options& options, Reducer& reducer, const std::string& description) {
  std::vector<Row> rows;
  for (std::size_t bytes = options.min_bytes; bytes <= options.max_bytes; bytes *= 4) {
    rows.push_back(measure(reducer, bytes, options.seconds));
  }
  if (reducer.rank == 0) report(rows, options, reducer.size, description);
  return 0;
}

int run_raw(const Options& options) {
  MPI_Init(nullptr, nullptr);
  Reducer reducer;
  MPI_Comm_rank(MPI_COMM_WORLD, &reducer.rank);
  MPI_Comm_size(MPI_COMM_WORLD, &reducer.size);
  reducer.sum = [](std::vector<float>& data) {
    MPI_Allreduce(MPI_IN_PLACE, data.data(), static_cast<int>(data.size()), MPI_FLOAT, MPI_SUM,
                  MPI_COMM_WORLD);
  };
  reducer.max = [](double value) {
    MPI_Allreduce(MPI_IN_PLACE, &value, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    return value;
  };
  char version[MPI_MAX_LIBRARY_VERSION_STRING];
  int length = 0;
  MPI_Get_library_version(version, &length);
  std::string description(version);
  description = description.substr(0, description.find('\n'));
  const int status = run(options, reducer, description);
  MPI_Finalize();
  return status;
}

int run_communicator(const Options& options) {
  strata::Registries registries;
  strata::PluginLoader loader(registries);
  loader.load_default();
  std::shared_ptr<strata::Communicator> comm =
      registries.communicators.create("mpi", strata::Config());
  Reducer reducer;
  reducer.rank = comm->rank();
  reducer.size = comm->size();
  reducer.sum = [&](std::vector<float>& data) {
    comm->allreduce(std::span<float>(data), strata::ReduceOp::sum, "allreduce_bench");
  };
  reducer.max = [&](double value) {
    comm->allreduce(std::span<double>(&value, 1), strata::ReduceOp::max, "allreduce_bench time");
    return value;
  };
  return run(options, reducer, comm->description());
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Options options = parse(argc, argv);
    return options.raw ? run_raw(options) : run_communicator(options);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
}
