// mpi_check: drives the "mpi" communicator (plugins/comm_mpi) the way Strata does, through the
// plugin loader and the registry, for tests/scripts/test_mpi_communicator.sh. Run under mpirun:
//
//   mpi_check all DIR          collectives, async tickets, broadcasts, messages; DIR is a folder
//                              every rank can see (the async check signals through it)
//   mpi_check watchdog SECONDS the last rank skips a collective; the others' watchdog must abort
//   mpi_check late SECONDS     the last rank creates its communicator 120 s late; the others'
//                              watchdog (watchdog_seconds: SECONDS) must abort during start-up
//   mpi_check abort CODE       rank size-1 calls abort("...", CODE) while the others wait
//   mpi_check twice            creating a second communicator in one process is an error
//
// Prints "ok NAME" or "FAIL NAME: why" per check (rank 0 prints the collective ones), and exits 0
// only when every check passed on every rank. Data are random, drawn from seeds every rank knows,
// so each rank computes what every other rank holds.
#include <sys/resource.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "strata/communicator.hpp"
#include "strata/config.hpp"
#include "strata/error.hpp"
#include "strata/plugin.hpp"
#include "strata/registry.hpp"

using namespace strata;
using Clock = std::chrono::steady_clock;

namespace {

int failures = 0;

// Every rank runs every check; a rank prints only its failures, rank 0 also the passes.
void check(Communicator& comm, bool ok, const std::string& name, const std::string& why = "") {
  if (!ok) {
    std::printf("FAIL %s: %s: %s\n", rank_label(comm).c_str(), name.c_str(), why.c_str());
    ++failures;
  } else if (comm.rank() == 0) {
    std::printf("ok   %s\n", name.c_str());
  }
  std::fflush(stdout);
}

// Random values of rank `rank` for a check seeded `seed`: away from zero, both signs, and of
// magnitudes that make the order of a float sum matter.
template <class T>
std::vector<T> values_of(int rank, uint64_t seed, std::size_t count) {
  std::mt19937_64 random(seed * 1000003 + static_cast<uint64_t>(rank));
  std::vector<T> values(count);
  if constexpr (std::is_integral_v<T>) {
    std::uniform_int_distribution<int64_t> draw(-(int64_t{1} << 40), int64_t{1} << 40);
    for (T& v : values) v = draw(random) | 1;
  } else {
    std::uniform_real_distribution<double> draw(0.5, 2.0);
    std::uniform_int_distribution<int> exponent(-8, 8);
    std::bernoulli_distribution negative(0.5);
    for (T& v : values) {
      v = static_cast<T>((negative(random) ? -1 : 1) * std::ldexp(draw(random), exponent(random)));
    }
  }
  return values;
}

// True when every rank holds the same bytes as rank 0.
bool same_on_all_ranks(Communicator& comm, std::span<const std::byte> bytes,
                       const std::string& what) {
  std::vector<std::byte> root(bytes.begin(), bytes.end());
  comm.broadcast(root, 0, what);
  int64_t differs = std::memcmp(root.data(), bytes.data(), bytes.size()) != 0 ? 1 : 0;
  comm.allreduce(std::span<int64_t>(&differs, 1), ReduceOp::max, what + " (agreement)");
  return differs == 0;
}

template <class T>
void check_reduction(Communicator& comm, ReduceOp op, std::size_t count, uint64_t seed) {
  const char* op_name = op == ReduceOp::sum ? "sum" : op == ReduceOp::min ? "min" : "max";
  const std::string name = fmt::format("{} of {} {}", op_name, count,
                                       std::is_same_v<T, float>    ? "floats"
                                       : std::is_same_v<T, double> ? "doubles"
                                                                   : "int64s");
  const std::vector<T> mine = values_of<T>(comm.rank(), seed, count);
  std::vector<T> data = mine;
  comm.allreduce(std::span<T>(data), op, name);
  if (comm.size() == 1) {
    check(comm, std::memcmp(data.data(), mine.data(), count * sizeof(T)) == 0,
          name + ": one rank leaves the data bitwise unchanged");
    return;
  }
  // The expected result, from every rank's values, in double (exact for int64 sums here).
  std::vector<double> expected(count, op == ReduceOp::sum ? 0.0 : NAN);
  std::vector<double> magnitude(count, 0.0);
  for (int r = 0; r < comm.size(); ++r) {
    const std::vector<T> theirs = values_of<T>(r, seed, count);
    for (std::size_t i = 0; i < count; ++i) {
      const double v = static_cast<double>(theirs[i]);
      magnitude[i] += std::abs(v);
      if (op == ReduceOp::sum) expected[i] += v;
      if (op == ReduceOp::min && !(expected[i] <= v)) expected[i] = v;
      if (op == ReduceOp::max && !(expected[i] >= v)) expected[i] = v;
    }
  }
  // A float sum of n terms is off by at most about n ulps of the sum of magnitudes.
  const double epsilon = std::numeric_limits<T>::epsilon() * comm.size();
  std::size_t wrong = 0, first_wrong = 0;
  for (std::size_t i = 0; i < count; ++i) {
    const bool ok = op != ReduceOp::sum || std::is_integral_v<T>
                        ? static_cast<double>(data[i]) == expected[i]
                        : std::abs(data[i] - expected[i]) <= epsilon * magnitude[i];
    if (!ok && wrong++ == 0) first_wrong = i;
  }
  check(comm, wrong == 0, name + ": equals the expected result",
        fmt::format("{} elements wrong, first [{}] = {} (expected {})", wrong, first_wrong,
                    static_cast<double>(data[first_wrong]), expected[first_wrong]));
  check(comm, same_on_all_ranks(comm, std::as_bytes(std::span<const T>(data)), name),
        name + ": bitwise identical on every rank", "differs from rank 0");
}

void check_collectives(Communicator& comm) {
  // Sizes on both sides of OpenMPI's switches between allreduce algorithms (recursive doubling
  // for short messages, ring and Rabenseifner above about 10 KB), and one odd size.
  uint64_t seed = 1;
  for (std::size_t count : {1, 1000, 65537, 1 << 20}) {
    check_reduction<float>(comm, ReduceOp::sum, count, seed++);
  }
  check_reduction<double>(comm, ReduceOp::sum, 30001, seed++);
  check_reduction<int64_t>(comm, ReduceOp::sum, 777, seed++);
  for (ReduceOp op : {ReduceOp::min, ReduceOp::max}) {
    check_reduction<float>(comm, op, 4099, seed++);
    check_reduction<double>(comm, op, 513, seed++);
    check_reduction<int64_t>(comm, op, 1025, seed++);
  }
  comm.barrier("barrier after the reductions");
}

// start_allreduce returns before the collective completes: the last rank joins only after rank 0
// has written a file after its start_allreduce returned (a blocking start would never return).
// While it waits, rank 0 works; tickets complete in order (waiting for the last one finds every
// earlier one complete).
void check_async(Communicator& comm, const std::filesystem::path& dir) {
  const int buckets = 4;
  std::vector<std::vector<float>> data;
  for (int b = 0; b < buckets; ++b)
    data.push_back(values_of<float>(comm.rank(), 100 + b, 50000 + b));
  const std::filesystem::path started = dir / "rank0_started";
  if (comm.rank() == comm.size() - 1 && comm.size() > 1) {
    const auto give_up = Clock::now() + std::chrono::seconds(20);
    while (!std::filesystem::exists(started) && Clock::now() < give_up) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    check(comm, std::filesystem::exists(started), "start_allreduce returns at once",
          "rank 0 never signalled that its start_allreduce had returned");
  }
  std::vector<Communicator::Ticket> tickets;
  for (int b = 0; b < buckets; ++b) {
    tickets.push_back(comm.start_allreduce(data[b], fmt::format("bucket {} of {}", b, buckets)));
  }
  if (comm.rank() == 0) {
    std::ofstream(started) << "started\n";
    // Work that overlaps the reductions (its result is checked so it cannot be optimized away).
    std::vector<double> work = values_of<double>(0, 99, 200000);
    double total = 0;
    for (int repeat = 0; repeat < 20; ++repeat) {
      for (double& v : work) total += (v = v * 0.999 + 1e-3);
    }
    check(comm, std::isfinite(total) && total != 0, "work overlaps the reductions");
  }
  comm.wait(tickets.back());
  bool in_order = true;
  for (int b = 0; b < buckets; ++b) {
    std::vector<float> expected(data[b].size(), 0.0f);
    for (int r = 0; r < comm.size(); ++r) {
      std::vector<float> theirs = values_of<float>(r, 100 + b, data[b].size());
      for (std::size_t i = 0; i < expected.size(); ++i) expected[i] += theirs[i];
    }
    for (std::size_t i = 0; i < expected.size(); ++i) {
      const float tolerance = 1e-5f * comm.size() * (std::abs(expected[i]) + 256.0f);
      if (std::abs(data[b][i] - expected[i]) > tolerance) in_order = false;
    }
  }
  check(comm, in_order, "tickets complete in order",
        "after wait(last ticket) an earlier bucket was not yet summed");
  for (Communicator::Ticket ticket : tickets) comm.wait(ticket);  // waiting again returns at once
  bool refused = false;
  try {
    comm.wait(tickets.back() + 1000);
  } catch (const Error& e) {
    refused = std::string(e.what()).find("never issued") != std::string::npos;
  }
  check(comm, refused, "wait() on a ticket never issued is an error");
}

void check_broadcasts(Communicator& comm) {
  std::vector<std::byte> bytes(12345);
  for (int root = 0; root < comm.size(); ++root) {
    std::mt19937_64 random(500 + root);
    std::vector<std::byte> expected(bytes.size());
    for (std::byte& b : expected) b = static_cast<std::byte>(random());
    if (comm.rank() == root)
      bytes = expected;
    else
      std::fill(bytes.begin(), bytes.end(), std::byte{0x5a});
    comm.broadcast(std::span<std::byte>(bytes), root, fmt::format("bytes from rank {}", root));
    check(comm, bytes == expected,
          fmt::format("broadcast of {} bytes from rank {}", bytes.size(), root));
  }
  for (std::size_t length : {0, 1, 7, 1000, 300000}) {
    const int root = static_cast<int>(length % static_cast<std::size_t>(comm.size()));
    std::mt19937_64 random(700 + length);
    std::string expected(length, ' ');
    for (char& c : expected) c = static_cast<char>('a' + random() % 26);
    std::string text =
        comm.rank() == root ? expected : std::string("something else, longer or shorter");
    comm.broadcast(text, root, fmt::format("string of {} characters", length));
    check(comm, text == expected,
          fmt::format("broadcast of a string of {} characters from rank {}", length, root));
  }
  bool refused = false;
  try {
    comm.broadcast(std::span<std::byte>(bytes), comm.size(), "bad root");
  } catch (const Error& e) {
    refused = std::string(e.what()).find("is not a rank") != std::string::npos;
  }
  check(comm, refused, "broadcast from a rank that does not exist is an error");
}

double cpu_seconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) +
         1e-6 * static_cast<double>(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec);
}

std::string body_of(int from, int tag, std::size_t length) {
  std::mt19937_64 random(static_cast<uint64_t>(from) * 7919 + static_cast<uint64_t>(tag));
  std::string body(length, ' ');
  for (char& c : body) c = static_cast<char>(random());
  return body;
}

// Every other rank sends rank 0 two messages (one short, one longer than OpenMPI's eager limit);
// rank 0 receives them from any source, then answers each rank on a tag of its own.
void check_messages(Communicator& comm) {
  const int n = comm.size();
  if (comm.rank() != 0) {
    comm.send(0, 10 + comm.rank(), body_of(comm.rank(), 10 + comm.rank(), 100 + comm.rank()));
    comm.send(0, 1000, body_of(comm.rank(), 1000, (1 << 20) + comm.rank()));
  } else {
    std::set<int> short_from, long_from;
    bool bodies_ok = true;
    for (int i = 0; i < 2 * (n - 1); ++i) {
      std::optional<Message> m =
          comm.receive(Communicator::kAnySource, Communicator::kAnyTag, std::chrono::seconds(20));
      if (!m) break;
      (m->tag == 1000 ? long_from : short_from).insert(m->source);
      const std::size_t length = m->tag == 1000 ? (1u << 20) + m->source : 100 + m->source;
      bodies_ok = bodies_ok && m->body == body_of(m->source, m->tag, length);
    }
    check(
        comm,
        static_cast<int>(short_from.size()) == n - 1 && static_cast<int>(long_from.size()) == n - 1,
        "receive from any source gets every rank's messages, short and long",
        fmt::format("{} short and {} long of {}", short_from.size(), long_from.size(), n - 1));
    check(comm, bodies_ok, "received bodies equal the sent ones");
    for (int r = 1; r < n; ++r) comm.send(r, 2000 + r, body_of(0, 2000 + r, 5000 + r));
  }
  if (comm.rank() != 0) {
    // A message with another tag is not taken for this one.
    std::optional<Message> none = comm.receive(0, 3000, std::chrono::milliseconds(50));
    std::optional<Message> m = comm.receive(0, 2000 + comm.rank(), std::chrono::seconds(20));
    check(comm,
          !none && m && m->source == 0 &&
              m->body == body_of(0, 2000 + comm.rank(), 5000 + comm.rank()),
          fmt::format("rank {} receives rank 0's answer on its own tag", comm.rank()));
  }
  // Nothing arrives: receive returns nothing after its timeout and does not spin a core.
  const auto t0 = Clock::now();
  const double cpu0 = cpu_seconds();
  std::optional<Message> nothing =
      comm.receive(Communicator::kAnySource, 4000, std::chrono::milliseconds(400));
  const double waited = std::chrono::duration<double>(Clock::now() - t0).count();
  const double cpu = cpu_seconds() - cpu0;
  check(comm, !nothing && waited >= 0.4 && waited < 5, "receive returns nothing after its timeout",
        fmt::format("waited {:.3f} s for a 0.4 s timeout", waited));
  // Polling every millisecond costs a few percent of a core; spinning costs most of one (of two:
  // the caller's thread and the communication thread share the work).
  check(comm, cpu < 0.15 * waited,
        fmt::format("receive does not spin a core while it waits ({:.0f} % of a core)",
                    100 * cpu / waited),
        fmt::format("{:.3f} s of CPU in {:.3f} s", cpu, waited));
  comm.barrier("barrier after the messages");
}

// A receive waiting on one thread does not hold up a collective queued by another: rank 1 sends
// only after an allreduce that rank 0 queues while its receive waits.
void check_receive_interleaves(Communicator& comm) {
  if (comm.size() == 1) return;
  std::optional<Message> got;
  std::thread receiver;
  if (comm.rank() == 0) {
    receiver = std::thread([&] { got = comm.receive(1, 77, std::chrono::seconds(20)); });
    std::this_thread::sleep_for(std::chrono::milliseconds(50));  // let the receive start polling
  }
  std::vector<double> data = values_of<double>(comm.rank(), 31, 1000);
  comm.allreduce(std::span<double>(data), ReduceOp::sum, "allreduce during a receive");
  if (comm.rank() == 1) comm.send(0, 77, "after the allreduce");
  if (comm.rank() == 0) {
    receiver.join();
    check(comm, got && got->body == "after the allreduce",
          "a collective runs while another thread waits in receive");
  }
  comm.barrier("barrier after the interleaving");
}

int run_all(Communicator& comm, const std::filesystem::path& dir) {
  if (comm.rank() == 0) {
    std::printf("%s; local rank %d of %d\n%s\n", rank_label(comm).c_str(), comm.local_rank(),
                comm.local_size(), comm.description().c_str());
  }
  check(comm,
        comm.type() == "mpi" && comm.size() >= 1 && comm.local_size() >= 1 &&
            comm.local_rank() < comm.local_size() && !comm.host().empty(),
        "rank, size, local rank and host");
  check_collectives(comm);
  check_async(comm, dir);
  check_broadcasts(comm);
  check_messages(comm);
  check_receive_interleaves(comm);
  int64_t total = failures;
  comm.allreduce(std::span<int64_t>(&total, 1), ReduceOp::sum, "failure count");
  if (comm.rank() == 0)
    std::printf("%lld failures on %d ranks\n", static_cast<long long>(total), comm.size());
  return total == 0 ? 0 : 1;
}

// The last rank takes a different path: it never joins "the collective the last rank skips".
int run_watchdog(Communicator& comm, double seconds) {
  comm.set_watchdog(seconds);
  comm.barrier("barrier before the skipped collective");
  if (comm.rank() == comm.size() - 1) {
    std::this_thread::sleep_for(std::chrono::seconds(120));
    return 0;
  }
  std::vector<float> data = values_of<float>(comm.rank(), 5, 1000);
  comm.allreduce(std::span<float>(data), ReduceOp::sum, "the collective the last rank skips");
  std::printf("the watchdog did not fire\n");
  return 0;
}

int run_abort(Communicator& comm, int code) {
  comm.barrier("barrier before the abort");
  if (comm.rank() == comm.size() - 1) {
    comm.abort(fmt::format("a data error on rank {} (test)", comm.rank()), code);
  }
  comm.barrier("a barrier the aborting rank never joins");
  std::this_thread::sleep_for(std::chrono::seconds(120));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string scenario = argc >= 2 ? argv[1] : "";
  if (argc != 3 && !(argc == 2 && scenario == "twice")) {
    std::fprintf(stderr,
                 "usage: mpi_check all DIR | watchdog SECONDS | late SECONDS | abort CODE | "
                 "twice\n");
    return 2;
  }
  try {
    Registries registries;
    PluginLoader loader(registries);
    loader.load_default();
    if (scenario == "late") {
      // The last rank (OpenMPI's launcher says which we are) starts long after the others.
      const char* rank = std::getenv("OMPI_COMM_WORLD_RANK");
      const char* size = std::getenv("OMPI_COMM_WORLD_SIZE");
      if (rank && size && std::atoi(rank) == std::atoi(size) - 1) {
        std::this_thread::sleep_for(std::chrono::seconds(120));
      }
      registries.communicators.create(
          "mpi", Config::parse_string(fmt::format("watchdog_seconds: {}", argv[2]), "<mpi_check>"));
      std::printf("the watchdog did not fire during start-up\n");
      return 0;
    }
    std::shared_ptr<Communicator> comm = registries.communicators.create("mpi", Config());
    if (scenario == "all") return run_all(*comm, argv[2]);
    if (scenario == "watchdog") return run_watchdog(*comm, std::stod(argv[2]));
    if (scenario == "abort") return run_abort(*comm, std::stoi(argv[2]));
    if (scenario == "twice") {
      try {
        registries.communicators.create("mpi", Config());
      } catch (const Error& e) {
        std::printf("second communicator refused: %s\n", e.what());
        return 0;
      }
      std::printf("a second communicator was created\n");
      return 1;
    }
    std::fprintf(stderr, "mpi_check: unknown scenario '%s'\n", scenario.c_str());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mpi_check: %s\n", e.what());
    return 1;
  }
}
