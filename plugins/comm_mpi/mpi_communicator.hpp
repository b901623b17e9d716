// The "mpi" communicator: strata::Communicator on MPI (OpenMPI 4.1).
//
// WHAT THIS REPRESENTS
//   This process's rank in MPI_COMM_WORLD (duplicated, so no other library's traffic can match
//   ours), with one communication thread that makes every MPI call of the process: it initializes
//   MPI (MPI_THREAD_FUNNELED: only it calls MPI), serves a FIFO queue of operations that any thread
//   may add, and finalizes MPI when the communicator is destroyed. Operations complete in the order
//   they were queued, so tickets complete in order.
//
//   A watchdog thread aborts the job when one collective has run for longer than the watchdog limit
//   (the config key watchdog_seconds, then set_watchdog; default 600 s), naming this rank, its host
//   and the collective: on a job where one rank crashed or took a different path, every other rank
//   would otherwise wait forever. Aborts (the watchdog's and abort()'s) are carried out by the
//   communication thread, which checks for them between tests; MPI_Abort from the requesting thread
//   and then _exit follow 3 s apart if it does not.
//
// REQUIRES
//   - At most one MpiCommunicator per process, ever (MPI cannot be initialized twice); a second one
//     is an error.
//   - The calling program was started by mpirun/srun, or MPI can start a singleton.
//
// ENSURES
//   - Everything strata/communicator.hpp promises. Sums are bitwise identical on every rank:
//     collectives are nonblocking (MPI_Iallreduce, OpenMPI's coll/libnbc), and each of libnbc's
//     allreduce algorithms computes every element's final value on one rank and copies it to the
//     others (an in-place call always takes the binomial tree: sum up to rank 0, broadcast down;
//     ring and Rabenseifner, which a user may force, do the same per block).
//     tests/scripts/test_mpi_communicator.sh checks it on 2 and 4 ranks at several sizes.
//   - No MPI call spins: the communication thread tests each request, busy for 50 us and then
//     asleep between tests (mpi_communicator.cpp says why, with measurements), and sleeps on a
//     condition variable when the queue is empty. Only MPI_Init_thread, MPI_Comm_split_type (at
//     start-up, once every rank is there) and MPI_Finalize, which have no nonblocking form, block.
//   - receive() never occupies the communication thread while it waits: it queues one probe at a
//     time (MPI_Improbe) and sleeps 1 ms between probes on the calling thread, so collectives that
//     other threads queue meanwhile run between the probes.
//   - A send's body is owned by the communicator until MPI has sent it (MPI_Isend), so a send
//     never waits for the receiver to post its receive, and never deadlocks against a collective.
//   - A failing collective (MPI reports an error: a peer that vanished, sizes that differ between
//     ranks) aborts the job with a message naming the rank and the collective: its ranks can no
//     longer agree on anything. A failing send or receive throws strata::Error.
#pragma once

#include <mpi.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "strata/communicator.hpp"
#include "strata/config.hpp"

namespace strata::comm_mpi {

class MpiCommunicator final : public Communicator {
 public:
  // `config` may set watchdog_seconds (the limit until set_watchdog is called, start-up
  // included; default kDefaultWatchdogSeconds).
  explicit MpiCommunicator(const Config& config);
  // Completes every queued operation and every pending send, then finalizes MPI.
  ~MpiCommunicator() override;
  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;

  std::string_view type() const override { return "mpi"; }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int local_rank() const override { return local_rank_; }
  int local_size() const override { return local_size_; }
  std::string host() const override { return host_; }
  std::string description() const override { return description_; }

  Ticket start_allreduce(std::span<float> data, std::string what) override;
  void wait(Ticket ticket) override;
  void allreduce(std::span<float> data, ReduceOp op, std::string_view what) override;
  void allreduce(std::span<double> data, ReduceOp op, std::string_view what) override;
  void allreduce(std::span<int64_t> data, ReduceOp op, std::string_view what) override;
  void broadcast(std::span<std::byte> data, int root, std::string_view what) override;
  using Communicator::broadcast;
  void barrier(std::string_view what) override;

  void send(int to, int tag, std::string body) override;
  std::optional<Message> receive(int from, int tag, std::chrono::milliseconds timeout) override;

  void set_watchdog(double seconds) override;
  [[noreturn]] void abort(const std::string& message, int code) override;

  // The watchdog's limit when set_watchdog() was never called.
  static constexpr double kDefaultWatchdogSeconds = 600;

 private:
  using Clock = std::chrono::steady_clock;
  // A receive()'s probe for a message (guarded by mutex_): a probe that has not started when its
  // receive() times out is cancelled, so no message is ever received for a caller that has left.
  struct ProbeState {
    bool started = false;
    bool cancelled = false;
    std::optional<Message> message;
  };
  // One queued operation; `run` makes the MPI calls, on the communication thread.
  struct Operation {
    Ticket ticket = 0;
    std::string what;     // for the watchdog and error messages
    bool watched = true;  // collectives are; a receive's probe and a send's post are not
    std::function<void()> run;
    std::shared_ptr<ProbeState> probe;  // only a receive()'s probe has one
  };
  // What the communication thread is doing now, for the watchdog.
  struct Running {
    bool active = false;
    std::string what;
    Clock::time_point since;
  };

  Ticket enqueue(std::string what, bool watched, std::function<void()> run,
                 std::shared_ptr<ProbeState> probe = nullptr);
  // Waits for `ticket`, then rethrows what its operation threw, if anything.
  void wait_for(Ticket ticket);
  template <class T>
  Ticket queue_allreduce(std::span<T> data, ReduceOp op, std::string what);
  // Called on the communication thread when a collective's MPI call fails: aborts the job.
  [[noreturn]] void collective_failed(const std::string& what, int error_code);
  // On the communication thread: starts one collective (`start(MPI_Request*)` makes the MPI
  // call and returns its error code) and waits for it; a failure aborts the job.
  template <class Start>
  void run_collective(const std::string& what, Start&& start);
  // Tests `request` until it completes (yielding, then sleeping); returns MPI's error code.
  int complete(MPI_Request& request);
  [[noreturn]] void abort_from_communication_thread();
  void receive_if_there(ProbeState& probe, int source, int tag);

  void communication_thread();  // the whole life of MPI
  void initialize_mpi();
  void describe_job(int thread_level);  // the tag bound, the node count, description_
  void serve_queue();
  void progress_sends();   // tests the pending sends (a burst), drops the finished ones
  void test_sends_once();  // one test of each pending send
  void finish_sends();     // at shutdown: waits until every pending send is done
  void finalize_mpi();
  void watchdog_thread();
  [[noreturn]] void abort_job(const std::string& line, int code);

  // Set once by initialize_mpi() before the constructor returns, then read-only.
  int rank_ = 0;
  int size_ = 1;
  int local_rank_ = 0;
  int local_size_ = 1;
  int tag_upper_bound_ = 32767;
  std::string host_;
  std::string description_;
  // "rank 1 of 4 (node7)", from the launcher's environment until MPI knows. Written under mutex_.
  std::string label_;
  std::exception_ptr init_error_;
  bool initialized_ = false;

  std::mutex mutex_;
  std::condition_variable queued_;     // the communication thread waits here for work
  std::condition_variable completed_;  // callers wait here for their ticket
  std::deque<Operation> queue_;
  Ticket next_ticket_ = 1;
  Ticket completed_ticket_ = 0;  // every ticket up to this one is complete
  std::map<Ticket, std::exception_ptr> errors_;
  bool stopping_ = false;
  Running running_;
  double watchdog_seconds_ = kDefaultWatchdogSeconds;
  std::condition_variable watchdog_wake_;

  // Sends handed to MPI (MPI_Isend) that have not completed, with the bodies they read from (a
  // list: an element never moves, so neither does a short body kept inside its std::string).
  // Touched by the communication thread only.
  struct PendingSend {
    MPI_Request request = MPI_REQUEST_NULL;
    int to = 0;
    int tag = 0;
    std::string body;
  };
  std::list<PendingSend> pending_sends_;
  MPI_Comm comm_ = MPI_COMM_NULL;  // the duplicate of MPI_COMM_WORLD
  bool watchdog_idle_ = false;     // the watchdog sleeps until an operation starts
  bool watchdog_stop_ = false;
  // An abort requested by another thread, carried out by the communication thread.
  std::atomic<bool> abort_requested_{false};
  std::optional<int> abort_code_;  // guarded by mutex_
  std::atomic<std::thread::id> communication_id_;

  // complete()'s busy spell and sleeps (mpi_communicator.cpp says how they were chosen).
  std::chrono::microseconds spin_{50};
  std::chrono::microseconds first_pause_{20};
  std::chrono::microseconds longest_pause_{200};

  std::thread communication_;
  std::thread watchdog_;
};

}  // namespace strata::comm_mpi
