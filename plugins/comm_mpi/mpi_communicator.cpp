// The "mpi" communicator (mpi_communicator.hpp): the queue, the communication thread, the watchdog.
//
// HOW THE COMMUNICATION THREAD WAITS (measured on the 2-core VM, OpenMPI 4.1.4, 2 ranks, each a
// compute thread beside its communication thread: bench/mpi_progress_bench.cpp, medians of 7
// rounds x 2-3 runs, under other engineers' builds, so the spread is wide)
//
//   every 1 MiB sum after 0-4 ms of jitter   time per sum   comm thread CPU   compute vs alone
//   MPI_Allreduce (blocking)                 42-82 ms       9-17 %            0.51-0.64
//   the same, mpi_yield_when_idle=1          11-23 ms       1-2 %             0.71-0.97
//   MPI_Iallreduce + MPI_Test/sched_yield    11-25 ms       1-3 %             0.85-1.08
//   MPI_Iallreduce + MPI_Test, 20 us busy,
//     then sleeps 50 us doubling to 250 us   1.3-3.1 ms     5-7 %             >= 0.84
//   16 MiB, no jitter: blocking 47-63 ms, +yield_when_idle 35-37 ms, the sleeps 21-26 ms;
//   1 MiB over TCP (btl tcp,self): blocking 51-56 ms, +yield_when_idle 28-32 ms, sleeps 3.4-4.4 ms.
//
// With more threads than cores (ranks x (compute + communication) > 2 here, and on any node where
// threads per rank fill the cores), OpenMPI's blocking collectives busy-poll a core that a
// compute thread needs, and progress only when both ranks' spinning threads happen to hold a core
// at once: a sum takes scheduler time slices. sched_yield (OpenMPI's own mpi_yield_when_idle, or
// ours) hands the core to the compute thread for its whole slice, so the sum waits for slices
// too. Sleeping between tests costs a few percent of a core and wakes within the sleep, so every
// collective here is nonblocking and complete() tests it: busy for a short spell (ranks that are
// all there finish within it), then asleep. The same holds for receive's Imrecv and, at start-up,
// for MPI_Comm_idup, where early ranks wait for late ones.
//
// The spell and the sleeps: with 20 us busy and sleeps of 50 us doubling to 250 us, back-to-back
// 64 KiB sums between 2 ranks took 230-370 us in 6 runs of 6, a lock-step where each rank sleeps
// while the other sends: OpenMPI's in-place MPI_Iallreduce is a tree of rounds, and each round
// waits for the sleeping side's next test. With 50 us busy, sleeps of 20 us doubling to 200 us
// and a timer slack of 1 us on this thread (so that a 20 us sleep is not 70 us): 34-43 us in 5
// runs of 6 (417 us in one; allreduce_bench). LeNet-5 on Fashion-MNIST, 2 ranks x 1 thread, 3
// epochs, 3 runs each: 21000-46000 images/s with these settings, 17600-28900 with the former,
// 8000-24600 with blocking MPI_Allreduce.
//
// OMPI_MCA_mpi_yield_when_idle is left as the user set it (OpenMPI turns it on itself when a node
// is oversubscribed): our MPI calls are nonblocking tests, where it would only add a sched_yield
// to every test that finds nothing to do, which is the slow row of the table above.
//
// ABORTS are made on the communication thread (MPI_THREAD_FUNNELED): the watchdog and abort()
// post a request that complete() and the idle loop act on; only when that thread is stuck in a
// blocking call (MPI_Init_thread, MPI_Finalize) does the requesting thread call MPI_Abort itself,
// after 3 s, and _exit ends the process 3 s after that in any case. (MPI_Abort called from the
// watchdog thread while the communication thread was inside MPI_Allreduce printed
// "ORTE_ERROR_LOG: Data unpack had inadequate space" instead of OpenMPI's abort message.)
#include "mpi_communicator.hpp"

#include <dlfcn.h>
#include <fmt/format.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "strata/error.hpp"

namespace strata::comm_mpi {

namespace {

// Collectives on longer buffers go in pieces of at most this many bytes. MPI counts are ints, but
// the reason for 16 MiB is memory: OpenMPI allocates a temporary as large as the buffer for every
// allreduce, glibc serves allocations above 32 MiB with a fresh mmap each time, and first-touching
// fresh pages costs 170 ms per 64 MiB on this VM (2.4 ms to rewrite them). A 64 MiB allreduce took
// 380-590 ms in one piece and 33-65 ms in four (allreduce_bench, 2 ranks).
constexpr std::size_t kMaxChunkBytes = std::size_t{16} << 20;
// complete() tests a request this many times per wake-up (see there).
constexpr int kTestsPerWake = 8;
// How long receive() sleeps between two probes.
constexpr auto kProbeInterval = std::chrono::milliseconds(1);
// How long abort_job() lets MPI_Abort take before it ends this process itself.
constexpr auto kAbortGrace = std::chrono::seconds(3);

// Set by the first MpiCommunicator: MPI cannot be initialized twice in one process.
std::atomic<bool> communicator_created{false};

// Calls body(first element, count) for each piece of at most kMaxChunkBytes of `data`.
template <class T, class Body>
void for_each_chunk(std::span<T> data, Body&& body) {
  const std::size_t most = std::max<std::size_t>(1, kMaxChunkBytes / sizeof(T));
  for (std::size_t begin = 0; begin < data.size(); begin += most) {
    body(begin, static_cast<int>(std::min(most, data.size() - begin)));
  }
}

template <class T>
MPI_Datatype mpi_type();
template <>
MPI_Datatype mpi_type<float>() {
  return MPI_FLOAT;
}
template <>
MPI_Datatype mpi_type<double>() {
  return MPI_DOUBLE;
}
template <>
MPI_Datatype mpi_type<int64_t>() {
  return MPI_INT64_T;
}

MPI_Op mpi_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum:
      return MPI_SUM;
    case ReduceOp::min:
      return MPI_MIN;
    case ReduceOp::max:
      return MPI_MAX;
  }
  fail("communicator 'mpi': unknown reduction {}", static_cast<int>(op));
}

std::string error_text(int error_code) {
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  if (MPI_Error_string(error_code, text, &length) != MPI_SUCCESS) {
    return fmt::format("MPI error {}", error_code);
  }
  return std::string(text, static_cast<std::size_t>(length));
}

std::string thread_level_name(int level) {
  switch (level) {
    case MPI_THREAD_SINGLE:
      return "single";
    case MPI_THREAD_FUNNELED:
      return "funneled";
    case MPI_THREAD_SERIALIZED:
      return "serialized";
    case MPI_THREAD_MULTIPLE:
      return "multiple";
  }
  return fmt::format("level {}", level);
}

// Boost.DLL opens plugins with RTLD_LOCAL, so the libmpi this plugin links is not in the global
// symbol scope. OpenMPI dlopen()s its components (mca_*.so) at MPI_Init, and some of them leave
// their libmpi/libopen-pal symbols undefined, expecting the global scope to provide them: Debian's
// mca_pml_ob1.so and mca_btl_tcp.so do (`ldd -r` lists 69 undefined symbols each). Here it works
// anyway, by luck of the load order: components that do link libmpi (mca_op_avx, mca_bml_r2) are
// opened first with RTLD_GLOBAL, which promotes libmpi and its dependencies to the global scope.
// We do not rely on that: promoting libmpi ourselves (RTLD_NOLOAD: it is loaded already) is one
// call, and keeps MPI_Init from failing with "undefined symbol" on a build where the order differs.
void make_libmpi_global() {
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(&MPI_Init_thread), &info) == 0 || info.dli_fname == nullptr) {
    fail("communicator 'mpi': cannot find the file of the MPI library (dladdr on MPI_Init_thread)");
  }
  // The handle is never closed: libmpi stays loaded for the life of the process (KEEP_LOADED).
  if (dlopen(info.dli_fname, RTLD_NOW | RTLD_GLOBAL | RTLD_NOLOAD) == nullptr) {
    const char* error = dlerror();
    fail("communicator 'mpi': cannot make {} global: {}", info.dli_fname,
         error != nullptr ? error : "dlopen failed");
  }
}

// How the watchdog names this rank while MPI is starting: from the launcher's environment
// (OpenMPI's mpirun, PMI, Slurm's srun), as rank_label() does once MPI knows.
std::string label_before_start_up() {
  char host[256] = {};
  if (gethostname(host, sizeof(host) - 1) != 0) std::strcpy(host, "unknown host");
  const std::pair<const char*, const char*> sources[] = {
      {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"},
      {"PMI_RANK", "PMI_SIZE"},
      {"SLURM_PROCID", "SLURM_NTASKS"}};
  for (const auto& [rank, size] : sources) {
    const char* r = std::getenv(rank);
    const char* n = std::getenv(size);
    if (r != nullptr && n != nullptr && *r != '\0' && *n != '\0') {
      return fmt::format("rank {} of {} ({})", r, n, host);
    }
  }
  return fmt::format("a rank on {}", host);
}

// During initialization, where there is no rank to name yet.
void check_init(int error_code, const char* call) {
  if (error_code != MPI_SUCCESS) {
    fail("communicator 'mpi': {} failed: {}", call, error_text(error_code));
  }
}

}  // namespace

// ---- Construction and destruction ----

MpiCommunicator::MpiCommunicator(const Config& config)
    : watchdog_seconds_(config.get<double>("watchdog_seconds", kDefaultWatchdogSeconds)) {
  if (!(watchdog_seconds_ >= 0) || watchdog_seconds_ > 1e9) {
    fail("communicator 'mpi': watchdog_seconds: {} is not a time limit (0 turns the watchdog off)",
         watchdog_seconds_);
  }
  label_ = label_before_start_up();
  if (communicator_created.exchange(true)) {
    fail(
        "communicator 'mpi': a process can create it only once (MPI cannot be initialized again "
        "once finalized); keep the first one");
  }
  // The watchdog first: start-up waits for every rank (MPI_Init_thread, MPI_Comm_idup), and a
  // rank that never creates its communicator must not leave the others waiting forever.
  watchdog_ = std::thread([this] { watchdog_thread(); });
  communication_ = std::thread([this] { communication_thread(); });
  std::unique_lock lock(mutex_);
  completed_.wait(lock, [this] { return initialized_ || init_error_; });
  if (init_error_) {
    watchdog_stop_ = true;
    lock.unlock();
    watchdog_wake_.notify_all();
    communication_.join();
    watchdog_.join();
    std::rethrow_exception(init_error_);
  }
}

MpiCommunicator::~MpiCommunicator() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  queued_.notify_all();
  communication_.join();  // it completes the queue and the sends, then finalizes MPI (watched)
  {
    std::lock_guard lock(mutex_);
    watchdog_stop_ = true;
  }
  watchdog_wake_.notify_all();
  watchdog_.join();
}

// ---- The communication thread ----

void MpiCommunicator::communication_thread() {
  communication_id_ = std::this_thread::get_id();
  // complete()'s sleeps of 20 us would last 70 us with Linux's default timer slack of 50 us.
  prctl(PR_SET_TIMERSLACK, 1000UL, 0UL, 0UL, 0UL);
  {
    std::lock_guard lock(mutex_);
    running_ = Running{true,
                       "start-up (MPI_Init_thread and MPI_Comm_idup wait until every rank has "
                       "created its communicator)",
                       Clock::now()};
    if (watchdog_idle_) watchdog_wake_.notify_one();
  }
  try {
    initialize_mpi();
  } catch (...) {
    std::lock_guard lock(mutex_);
    running_.active = false;
    init_error_ = std::current_exception();
    completed_.notify_all();
    return;
  }
  {
    std::lock_guard lock(mutex_);
    running_.active = false;
    initialized_ = true;
  }
  completed_.notify_all();
  serve_queue();
  finish_sends();
  finalize_mpi();
}

void MpiCommunicator::initialize_mpi() {
  make_libmpi_global();
  int provided = MPI_THREAD_SINGLE;
  // OpenMPI's MPI_Init_thread waits here (asleep) until every rank has called it.
  check_init(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
  if (provided < MPI_THREAD_FUNNELED) {
    fail("communicator 'mpi': MPI_Init_thread provides thread level '{}', Strata needs 'funneled'",
         thread_level_name(provided));
  }
  check_init(MPI_Comm_rank(MPI_COMM_WORLD, &rank_), "MPI_Comm_rank");
  check_init(MPI_Comm_size(MPI_COMM_WORLD, &size_), "MPI_Comm_size");
  char name[MPI_MAX_PROCESSOR_NAME];
  int length = 0;
  check_init(MPI_Get_processor_name(name, &length), "MPI_Get_processor_name");
  host_.assign(name, strnlen(name, static_cast<std::size_t>(length)));
  {
    std::lock_guard lock(mutex_);  // the watchdog may read it already
    label_ = fmt::format("rank {} of {} ({})", rank_, size_, host_);
  }

  // The first collective of the job's own communicator (a duplicate of MPI_COMM_WORLD keeps any
  // other library's messages from matching ours), waited for asleep in complete().
  MPI_Request request = MPI_REQUEST_NULL;
  check_init(MPI_Comm_idup(MPI_COMM_WORLD, &comm_, &request), "MPI_Comm_idup");
  check_init(complete(request), "MPI_Comm_idup");
  // Errors come back to us, so that a failure names the rank and the operation.
  check_init(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");

  MPI_Comm node = MPI_COMM_NULL;
  check_init(MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node),
             "MPI_Comm_split_type");
  check_init(MPI_Comm_rank(node, &local_rank_), "MPI_Comm_rank");
  check_init(MPI_Comm_size(node, &local_size_), "MPI_Comm_size");
  check_init(MPI_Comm_free(&node), "MPI_Comm_free");
  describe_job(provided);
}

void MpiCommunicator::describe_job(int thread_level) {
  void* tag_bound = nullptr;
  int found = 0;
  check_init(MPI_Comm_get_attr(MPI_COMM_WORLD, MPI_TAG_UB, &tag_bound, &found),
             "MPI_Comm_get_attr(MPI_TAG_UB)");
  if (found) tag_upper_bound_ = *static_cast<int*>(tag_bound);

  // The number of nodes, for the description: one collective, at start-up.
  int first_on_node = local_rank_ == 0 ? 1 : 0;
  int nodes = 0;
  MPI_Request request = MPI_REQUEST_NULL;
  check_init(MPI_Iallreduce(&first_on_node, &nodes, 1, MPI_INT, MPI_SUM, comm_, &request),
             "MPI_Iallreduce");
  check_init(complete(request), "MPI_Iallreduce");

  char version[MPI_MAX_LIBRARY_VERSION_STRING];
  int length = 0;
  check_init(MPI_Get_library_version(version, &length), "MPI_Get_library_version");
  // OpenMPI counts the terminating zero in `length`: read the text up to it.
  std::string library(version, strnlen(version, static_cast<std::size_t>(length)));
  library = library.substr(0, library.find('\n'));
  while (!library.empty() && (library.back() == ',' || library.back() == ' ')) library.pop_back();
  description_ = fmt::format("{}; thread level {}; {} rank{} on {} node{}", library,
                             thread_level_name(thread_level), size_, size_ == 1 ? "" : "s", nodes,
                             nodes == 1 ? "" : "s");
  // The transport, when the user chose it (mpirun --mca btl tcp,self exports OMPI_MCA_btl); else
  // OpenMPI picks shared memory within a node and the fastest network between nodes.
  for (const char* variable : {"OMPI_MCA_pml", "OMPI_MCA_btl"}) {
    if (const char* value = std::getenv(variable); value != nullptr && *value != '\0') {
      description_ += fmt::format("; {} {}", std::string_view(variable).substr(9), value);
    }
  }
}

void MpiCommunicator::serve_queue() {
  for (;;) {
    Operation operation;
    bool cancelled = false;
    {
      std::unique_lock lock(mutex_);
      while (queue_.empty() && !stopping_) {
        if (abort_requested_) {
          lock.unlock();
          abort_from_communication_thread();
        }
        if (pending_sends_.empty()) {
          queued_.wait(lock);
        } else {
          // A send in flight needs MPI calls to progress (a long message goes in pieces, once
          // the receiver has posted its receive): test it every millisecond until it is done.
          lock.unlock();
          progress_sends();
          lock.lock();
          if (queue_.empty() && !stopping_ && !pending_sends_.empty()) {
            queued_.wait_for(lock, kProbeInterval);
          }
        }
      }
      if (queue_.empty()) return;  // stopping, and nothing left to do
      operation = std::move(queue_.front());
      queue_.pop_front();
      if (operation.probe) {
        cancelled = operation.probe->cancelled;
        operation.probe->started = true;
      }
      if (operation.watched && !cancelled) {
        running_ = Running{true, operation.what, Clock::now()};
        if (watchdog_idle_) watchdog_wake_.notify_one();
      }
    }
    std::exception_ptr error;
    if (!cancelled) {
      try {
        operation.run();
      } catch (...) {
        error = std::current_exception();
      }
    }
    if (!pending_sends_.empty()) progress_sends();
    {
      std::lock_guard lock(mutex_);
      running_.active = false;
      completed_ticket_ = operation.ticket;
      if (error) errors_[operation.ticket] = error;
    }
    completed_.notify_all();
  }
}

void MpiCommunicator::progress_sends() {
  // A burst of tests, as in complete(): a send over TCP moves only when OpenMPI polls its sockets.
  for (int round = 0; round < kTestsPerWake && !pending_sends_.empty(); ++round) {
    test_sends_once();
  }
}

void MpiCommunicator::test_sends_once() {
  for (auto it = pending_sends_.begin(); it != pending_sends_.end();) {
    int done = 0;
    MPI_Status status;
    if (const int code = MPI_Test(&it->request, &done, &status); code != MPI_SUCCESS) {
      abort_job(fmt::format("{}: sending {} bytes to rank {} (tag {}) failed: {}", label_,
                            it->body.size(), it->to, it->tag, error_text(code)),
                1);
    }
    it = done ? pending_sends_.erase(it) : std::next(it);
  }
}

void MpiCommunicator::finish_sends() {
  if (pending_sends_.empty()) return;
  {
    std::lock_guard lock(mutex_);
    running_ = Running{
        true,
        fmt::format("delivering {} sent message(s) before MPI_Finalize (first: to "
                    "rank {}, tag {})",
                    pending_sends_.size(), pending_sends_.front().to, pending_sends_.front().tag),
        Clock::now()};
    if (watchdog_idle_) watchdog_wake_.notify_one();
  }
  while (!pending_sends_.empty()) {
    if (abort_requested_.load(std::memory_order_relaxed)) abort_from_communication_thread();
    progress_sends();
    if (!pending_sends_.empty()) std::this_thread::sleep_for(kProbeInterval);
  }
  std::lock_guard lock(mutex_);
  running_.active = false;
}

void MpiCommunicator::finalize_mpi() {
  {
    std::lock_guard lock(mutex_);
    running_ = Running{true, "MPI_Finalize (every rank destroys its communicator)", Clock::now()};
    if (watchdog_idle_) watchdog_wake_.notify_one();
  }
  MPI_Comm_free(&comm_);
  MPI_Finalize();
  std::lock_guard lock(mutex_);
  running_.active = false;
}

// ---- Queueing ----

MpiCommunicator::Ticket MpiCommunicator::enqueue(std::string what, bool watched,
                                                 std::function<void()> run,
                                                 std::shared_ptr<ProbeState> probe) {
  Ticket ticket = 0;
  {
    std::lock_guard lock(mutex_);
    ticket = next_ticket_++;
    queue_.push_back(Operation{ticket, std::move(what), watched, std::move(run), std::move(probe)});
  }
  queued_.notify_one();
  return ticket;
}

void MpiCommunicator::wait_for(Ticket ticket) {
  std::unique_lock lock(mutex_);
  completed_.wait(lock, [&] { return completed_ticket_ >= ticket; });
  if (auto it = errors_.find(ticket); it != errors_.end()) {
    std::exception_ptr error = it->second;
    errors_.erase(it);
    lock.unlock();
    std::rethrow_exception(error);
  }
}

void MpiCommunicator::wait(Ticket ticket) {
  {
    std::lock_guard lock(mutex_);
    if (ticket <= 0 || ticket >= next_ticket_) {
      fail("{}: wait(): ticket {} was never issued (the last ticket issued is {})", label_, ticket,
           next_ticket_ - 1);
    }
  }
  wait_for(ticket);
}

[[noreturn]] void MpiCommunicator::collective_failed(const std::string& what, int error_code) {
  abort_job(fmt::format("{}: {} failed: {}; the ranks can no longer agree, aborting the job",
                        label_, what, error_text(error_code)),
            1);
}

// ---- Collectives ----

template <class Start>
void MpiCommunicator::run_collective(const std::string& what, Start&& start) {
  MPI_Request request = MPI_REQUEST_NULL;
  int code = start(&request);
  if (code == MPI_SUCCESS) code = complete(request);
  if (code != MPI_SUCCESS) collective_failed(what, code);
}

int MpiCommunicator::complete(MPI_Request& request) {
  // Tests in a busy loop for spin_ (a collective whose ranks are all there completes within it),
  // then sleeps between bursts of tests, from first_pause_ doubling up to longest_pause_: a rank
  // that is late costs sleeps, not a core, and is noticed within longest_pause_ (the top of this
  // file says how these were chosen). A burst is kTestsPerWake tests because OpenMPI polls its
  // sockets (the TCP transport) only on every 8th call of its progress engine: one test per
  // wake-up noticed TCP data 8 sleeps late.
  const Clock::time_point spin_until = Clock::now() + spin_;
  std::chrono::microseconds pause = first_pause_;
  for (;;) {
    for (int test = 0; test < kTestsPerWake; ++test) {
      int done = 0;
      if (const int code = MPI_Test(&request, &done, MPI_STATUS_IGNORE); code != MPI_SUCCESS) {
        return code;
      }
      if (done) return MPI_SUCCESS;
    }
    if (abort_requested_.load(std::memory_order_relaxed)) abort_from_communication_thread();
    if (Clock::now() < spin_until) continue;
    std::this_thread::sleep_for(pause);
    pause = std::min(longest_pause_, 2 * pause);
  }
}

template <class T>
MpiCommunicator::Ticket MpiCommunicator::queue_allreduce(std::span<T> data, ReduceOp op,
                                                         std::string what) {
  const MPI_Op reduction = mpi_op(op);
  return enqueue(what, true, [this, data, reduction, what] {
    for_each_chunk(data, [&](std::size_t begin, int count) {
      T* values = data.data() + begin;
      run_collective(what, [&](MPI_Request* request) {
        return MPI_Iallreduce(MPI_IN_PLACE, values, count, mpi_type<T>(), reduction, comm_,
                              request);
      });
    });
  });
}

MpiCommunicator::Ticket MpiCommunicator::start_allreduce(std::span<float> data, std::string what) {
  return queue_allreduce(data, ReduceOp::sum, std::move(what));
}

void MpiCommunicator::allreduce(std::span<float> data, ReduceOp op, std::string_view what) {
  wait_for(queue_allreduce(data, op, std::string(what)));
}
void MpiCommunicator::allreduce(std::span<double> data, ReduceOp op, std::string_view what) {
  wait_for(queue_allreduce(data, op, std::string(what)));
}
void MpiCommunicator::allreduce(std::span<int64_t> data, ReduceOp op, std::string_view what) {
  wait_for(queue_allreduce(data, op, std::string(what)));
}

void MpiCommunicator::broadcast(std::span<std::byte> data, int root, std::string_view what) {
  if (root < 0 || root >= size_) {
    fail("{}: broadcast '{}': root {} is not a rank (the job has ranks 0 to {})", label_, what,
         root, size_ - 1);
  }
  wait_for(enqueue(std::string(what), true, [this, data, root, what = std::string(what)] {
    for_each_chunk(data, [&](std::size_t begin, int count) {
      std::byte* bytes = data.data() + begin;
      run_collective(what, [&](MPI_Request* request) {
        return MPI_Ibcast(bytes, count, MPI_BYTE, root, comm_, request);
      });
    });
  }));
}

void MpiCommunicator::barrier(std::string_view what) {
  wait_for(enqueue(std::string(what), true, [this, what = std::string(what)] {
    run_collective(what, [&](MPI_Request* request) { return MPI_Ibarrier(comm_, request); });
  }));
}

// ---- Messages ----

void MpiCommunicator::send(int to, int tag, std::string body) {
  if (to < 0 || to >= size_) {
    fail("{}: send: rank {} does not exist (the job has ranks 0 to {})", label_, to, size_ - 1);
  }
  if (tag < 0 || tag > tag_upper_bound_) {
    fail("{}: send to rank {}: tag {} is outside MPI's range 0 to {}", label_, to, tag,
         tag_upper_bound_);
  }
  if (body.size() > static_cast<std::size_t>(INT_MAX)) {
    fail("{}: send to rank {}: a message of {} bytes is longer than MPI's limit of {} bytes",
         label_, to, body.size(), INT_MAX);
  }
  const std::string what =
      fmt::format("sending {} bytes to rank {} (tag {})", body.size(), to, tag);
  wait_for(enqueue(what, false, [this, to, tag, what, body = std::move(body)]() mutable {
    PendingSend& pending = pending_sends_.emplace_back();
    pending.to = to;
    pending.tag = tag;
    pending.body = std::move(body);
    const int code = MPI_Isend(pending.body.data(), static_cast<int>(pending.body.size()), MPI_BYTE,
                               to, tag, comm_, &pending.request);
    if (code != MPI_SUCCESS) {
      pending_sends_.pop_back();
      fail("{}: {} failed: {}", label_, what, error_text(code));
    }
  }));
}

// On the communication thread: one probe of receive(); a matching message goes into `probe`.
void MpiCommunicator::receive_if_there(ProbeState& probe, int source, int tag) {
  int found = 0;
  MPI_Message handle = MPI_MESSAGE_NULL;
  MPI_Status status;
  // A burst of probes, as in complete(): a message over TCP is seen only when OpenMPI polls its
  // sockets.
  for (int probe_count = 0; probe_count < kTestsPerWake && !found; ++probe_count) {
    if (const int code = MPI_Improbe(source, tag, comm_, &found, &handle, &status);
        code != MPI_SUCCESS) {
      fail("{}: receive: MPI_Improbe failed: {}", label_, error_text(code));
    }
  }
  if (!found) return;
  int bytes = 0;
  MPI_Get_count(&status, MPI_BYTE, &bytes);
  if (bytes < 0) {
    fail("{}: receive: a message from rank {} (tag {}) is longer than MPI can count", label_,
         status.MPI_SOURCE, status.MPI_TAG);
  }
  Message message{status.MPI_SOURCE, status.MPI_TAG,
                  std::string(static_cast<std::size_t>(bytes), '\0')};
  // Received like a collective: tested and slept on, not spun on (a long message over TCP
  // arrives as fast as the sender's communication thread pushes it).
  MPI_Request request = MPI_REQUEST_NULL;
  int code = MPI_Imrecv(message.body.data(), bytes, MPI_BYTE, &handle, &request);
  if (code == MPI_SUCCESS) code = complete(request);
  if (code != MPI_SUCCESS) {
    fail("{}: receive: MPI_Imrecv of {} bytes from rank {} failed: {}", label_, bytes,
         message.source, error_text(code));
  }
  std::lock_guard lock(mutex_);
  probe.message = std::move(message);
}

std::optional<Message> MpiCommunicator::receive(int from, int tag,
                                                std::chrono::milliseconds timeout) {
  if (from != kAnySource && (from < 0 || from >= size_)) {
    fail("{}: receive: rank {} does not exist (the job has ranks 0 to {}; kAnySource is {})",
         label_, from, size_ - 1, kAnySource);
  }
  if (tag != kAnyTag && (tag < 0 || tag > tag_upper_bound_)) {
    fail("{}: receive: tag {} is outside MPI's range 0 to {} (kAnyTag is {})", label_, tag,
         tag_upper_bound_, kAnyTag);
  }
  if (timeout.count() < 0) {
    fail("{}: receive: the timeout is negative ({} ms)", label_, timeout.count());
  }
  const int source = from == kAnySource ? MPI_ANY_SOURCE : from;
  const int mpi_tag = tag == kAnyTag ? MPI_ANY_TAG : tag;
  // A timeout beyond a year is "forever" (and keeps now + timeout from overflowing).
  const auto limit = std::min<std::chrono::milliseconds>(timeout, std::chrono::hours(24 * 366));
  const Clock::time_point deadline = Clock::now() + limit;
  for (;;) {
    auto probe = std::make_shared<ProbeState>();
    // The probe reads only its own state and the communicator: a cancelled probe never runs.
    const Ticket ticket = enqueue(
        "receive", false,
        [this, probe, source, mpi_tag] { receive_if_there(*probe, source, mpi_tag); },
        probe);  // the queue marks it started, or skips it once cancelled
    {
      std::unique_lock lock(mutex_);
      // The queue may be busy with a long collective: give up at the deadline unless the probe
      // has started (then it may be receiving a message, which must not be lost).
      if (!completed_.wait_until(lock, deadline, [&] { return completed_ticket_ >= ticket; }) &&
          !probe->started) {
        probe->cancelled = true;
        return std::nullopt;
      }
    }
    wait_for(ticket);  // rethrows the probe's error
    {
      std::lock_guard lock(mutex_);
      if (probe->message) return std::move(probe->message);
    }
    const auto now = Clock::now();
    if (now >= deadline) return std::nullopt;
    std::this_thread::sleep_for(std::min<Clock::duration>(kProbeInterval, deadline - now));
  }
}

// ---- Watchdog and abort ----

void MpiCommunicator::set_watchdog(double seconds) {
  if (!(seconds >= 0) || seconds > 1e9) {
    fail("{}: set_watchdog: {} s is not a time limit (0 turns the watchdog off)", label_, seconds);
  }
  {
    std::lock_guard lock(mutex_);
    watchdog_seconds_ = seconds;
  }
  watchdog_wake_.notify_all();
}

void MpiCommunicator::watchdog_thread() {
  std::unique_lock lock(mutex_);
  while (!watchdog_stop_) {
    if (!running_.active || watchdog_seconds_ <= 0) {
      // Woken when an operation starts (serve_queue), or by set_watchdog or the destructor.
      watchdog_idle_ = true;
      watchdog_wake_.wait(lock);
      watchdog_idle_ = false;
      continue;
    }
    const auto deadline = running_.since + std::chrono::duration_cast<Clock::duration>(
                                               std::chrono::duration<double>(watchdog_seconds_));
    if (Clock::now() < deadline) {
      // The operation may end before then: the next one is checked when this wait ends.
      watchdog_wake_.wait_until(lock, deadline);
      continue;
    }
    const std::string line = fmt::format(
        "{}: {} has not completed after {:g} s; another rank is not taking part (it crashed, "
        "hangs, or took a different path); aborting the job",
        label_, running_.what, watchdog_seconds_);
    lock.unlock();
    abort_job(line, 1);
  }
}

void MpiCommunicator::abort(const std::string& message, int code) {
  abort_job(fmt::format("{}: {}", label_, message), code);
}

void MpiCommunicator::abort_job(const std::string& line, int code) {
  std::fprintf(stderr, "strata: %s\n", line.c_str());
  std::fflush(stderr);
  // Whatever happens below, this process ends.
  std::thread([code] {
    std::this_thread::sleep_for(2 * kAbortGrace);
    _exit(code);
  }).detach();
  if (std::this_thread::get_id() != communication_id_.load()) {
    // MPI_THREAD_FUNNELED: MPI_Abort belongs on the communication thread, which checks for this
    // request between two tests of a collective and when idle. Only if it does not act (it is
    // inside a blocking call such as MPI_Finalize) does this thread call MPI_Abort itself.
    // The flag is set under the lock: the idle communication thread checks it under the lock
    // before it waits for work, so the notification cannot fall between the two.
    {
      std::lock_guard lock(mutex_);
      if (!abort_code_) abort_code_ = code;
      abort_requested_ = true;
    }
    queued_.notify_all();
    std::this_thread::sleep_for(kAbortGrace);
  }
  MPI_Abort(MPI_COMM_WORLD, code);
  _exit(code);
}

void MpiCommunicator::abort_from_communication_thread() {
  int code = 1;
  {
    std::lock_guard lock(mutex_);
    if (abort_code_) code = *abort_code_;
  }
  MPI_Abort(MPI_COMM_WORLD, code);
  _exit(code);
}

}  // namespace strata::comm_mpi
