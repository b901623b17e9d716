// strata/communicator.hpp: the processes of one job, and what they do together.
//
// WHAT THIS OBJECT REPRESENTS
//   One process (a "rank") of a job of size() processes started together (by mpirun or srun),
//   and the operations they perform as a group. Communicators are a plugin kind beside backends
//   (Registries::communicators): the MPI one lives in plugins/comm_mpi, so the core and every other
//   plugin build and run without MPI. A process that no launcher started has no communicator at
//   all (TrainOptions::communicator is null) and runs exactly as a single process always has.
//
//   Collectives (allreduce, broadcast, barrier) must be called by every rank, in the same order,
//   with the same sizes: that order is the contract that keeps a job from hanging. The trainer
//   fixes it when the model is built (the gradient buckets), and decides everything else that
//   could differ between ranks (a data error, a NaN, a stop request) through one collective per
//   step that every rank takes whatever happened to it.
//
//   All MPI calls are made on one communication thread owned by the implementation; the calls
//   below queue work for it (start_allreduce returns at once, so a gradient bucket is summed while
//   backward still runs for earlier layers) and the blocking ones wait for their turn. Any
//   thread may call them, but the order of collectives must be the same on every rank.
//
// ENSURES
//   - A sum is the same, bit for bit, on every rank (the trainer relies on it to keep the replicas
//     identical; it checks a hash of the parameters, see docs/distributed.md).
//   - With size() == 1 every collective leaves its data unchanged, bit for bit.
//   - The watchdog: a collective that has not completed within watchdog_seconds (set_watchdog)
//     aborts the whole job with a message naming this rank, its host and the collective (`what`),
//     instead of hanging silently.
//   - abort() ends every process of the job (MPI_Abort), after printing its message on stderr.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace strata {

enum class ReduceOp { sum, min, max };

// A point-to-point message (the distributed search's requests and results).
struct Message {
  int source = -1;
  int tag = 0;
  std::string body;
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual std::string_view type() const = 0;  // "mpi"
  virtual int rank() const = 0;               // 0 .. size() - 1
  virtual int size() const = 0;
  // This rank among the ranks on its node, and how many share the node (threads per rank default
  // to the node's cores divided by local_size()).
  virtual int local_rank() const = 0;
  virtual int local_size() const = 0;
  virtual std::string host() const = 0;
  // One line for `strata train`'s header: library, version, thread level, transport.
  virtual std::string description() const { return {}; }

  // ---- Collectives: every rank, same order, same sizes. `what` names the call in a watchdog
  // abort ("gradient bucket 2 of 5 at iteration 17"). ----

  // Starts summing `data` over the ranks, in place, on the communication thread, and returns at
  // once; `data` must not be touched until wait(ticket) returns. Tickets complete in order.
  using Ticket = int64_t;
  virtual Ticket start_allreduce(std::span<float> data, std::string what) = 0;
  virtual void wait(Ticket ticket) = 0;
  // Blocking reductions, in place.
  virtual void allreduce(std::span<float> data, ReduceOp op, std::string_view what) = 0;
  virtual void allreduce(std::span<double> data, ReduceOp op, std::string_view what) = 0;
  virtual void allreduce(std::span<int64_t> data, ReduceOp op, std::string_view what) = 0;
  // Copies `root`'s bytes into every rank's `data` (all ranks pass the same size).
  virtual void broadcast(std::span<std::byte> data, int root, std::string_view what) = 0;
  virtual void barrier(std::string_view what) = 0;

  // ---- Messages ----
  // Sends `body` to rank `to` (returns once the message is handed to MPI; the buffer is copied).
  virtual void send(int to, int tag, std::string body) = 0;
  // The next message from `from` (kAnySource: any rank) with `tag` (kAnyTag: any), or nothing
  // once `timeout` has passed. Waiting does not spin a core (it polls and sleeps).
  static constexpr int kAnySource = -1;
  static constexpr int kAnyTag = -1;
  virtual std::optional<Message> receive(int from, int tag, std::chrono::milliseconds timeout) = 0;

  // Seconds a collective may take before the watchdog aborts the job; 0 turns it off.
  virtual void set_watchdog(double seconds) = 0;
  // Prints `message` (prefixed with this rank) on stderr and ends every process of the job with
  // exit status `code`.
  [[noreturn]] virtual void abort(const std::string& message, int code) = 0;

  // ---- Helpers on the calls above ----
  // Broadcasts a string of any length from `root` (its size first, then its bytes).
  void broadcast(std::string& text, int root, std::string_view what);
  // Broadcasts a vector of plain values whose size every rank already knows.
  template <class T>
  void broadcast_values(std::span<T> values, int root, std::string_view what) {
    broadcast(std::as_writable_bytes(values), root, what);
  }
};

// "rank 1 of 4 (node7)": how messages name a rank.
std::string rank_label(const Communicator& communicator);

}  // namespace strata
