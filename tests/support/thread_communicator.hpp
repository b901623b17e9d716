// tests/support/thread_communicator.hpp: an MPI job whose ranks are threads of one process.
//
// WHAT THIS REPRESENTS
//   ThreadJob is a job of size() ranks, each a strata::Communicator (ThreadCommunicator) that
//   behaves as the "mpi" plugin's does, but in one process: point-to-point messages go through a
//   mailbox per rank, collectives meet at a rendezvous. Tests run code written against
//   strata/communicator.hpp (the distributed search, the trainer's gradient averaging) on N ranks
//   without mpirun: ThreadJob::run calls a body once per rank, on a thread of its own.
//
// ENSURES (the contract of strata/communicator.hpp, and these test-friendly specifics)
//   - Messages: send() never blocks; receive() returns the oldest message matching (from, tag),
//     so messages from one rank with one tag arrive in the order sent (MPI's non-overtaking rule).
//     It waits on a condition variable, never spinning.
//   - Collectives sum in rank order, so every rank gets the same bits; with size() == 1 they leave
//     the data unchanged. start_allreduce() only queues; wait() performs the queued reductions in
//     order (a collective, as MPI's would be once started on every rank).
//   - A collective called with another kind, element count or root than the other ranks'
//     (a broken "same order, same sizes" contract) aborts the job with a message naming both
//     calls instead of hanging.
//   - abort() ends every rank as MPI_Abort ends every process: the caller throws JobAborted, and
//     every other rank throws it from its next (or current) communicator call. So does a rank
//     whose body ends with an exception (mpirun tears a job down when one process fails).
//     JobAborted is no std::exception, so `catch (const std::exception&)` lets it pass, as a real
//     abort never returns.
//   - The watchdog: a collective that waits longer than set_watchdog()'s seconds aborts the job
//     with a message naming the rank and the collective's `what`.
//   - Ranks are grouped into nodes of ranks_per_node (local_rank, local_size, host "nodeK").
#pragma once

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "strata/communicator.hpp"

namespace strata::test {

// What ends every rank's communicator calls after an abort (see above).
struct JobAborted {
  int rank = -1;  // the rank that aborted (or whose body threw)
  int code = 0;
  std::string message;
};

class ThreadJob;

class ThreadCommunicator final : public Communicator {
 public:
  ThreadCommunicator(ThreadJob& job, int rank) : job_(job), rank_(rank) {}

  std::string_view type() const override { return "thread"; }
  int rank() const override { return rank_; }
  int size() const override;
  int local_rank() const override;
  int local_size() const override;
  std::string host() const override;
  std::string description() const override {
    return "threads of one process (tests/support/thread_communicator.hpp)";
  }

  // Any thread may start (backward's callbacks) and wait; the queued reductions run in ticket
  // order, one wait() at a time, as the plugin's communication thread runs them.
  Ticket start_allreduce(std::span<float> data, std::string what) override {
    std::lock_guard lock(pending_mutex_);
    pending_.push_back({data, std::move(what), ++last_ticket_});
    return last_ticket_;
  }
  void wait(Ticket ticket) override {
    std::lock_guard in_order(wait_mutex_);
    for (;;) {
      Pending next;
      {
        std::lock_guard lock(pending_mutex_);
        if (pending_.empty() || pending_.front().ticket > ticket) return;
        next = std::move(pending_.front());
        pending_.pop_front();
      }
      allreduce(next.data, ReduceOp::sum, next.what);
    }
  }
  void allreduce(std::span<float> data, ReduceOp op, std::string_view what) override {
    reduce(data, op, what, "float");
  }
  void allreduce(std::span<double> data, ReduceOp op, std::string_view what) override {
    reduce(data, op, what, "double");
  }
  void allreduce(std::span<int64_t> data, ReduceOp op, std::string_view what) override {
    reduce(data, op, what, "int64");
  }
  using Communicator::broadcast;  // the string helper
  void broadcast(std::span<std::byte> data, int root, std::string_view what) override;
  void barrier(std::string_view what) override {
    collective("barrier", {}, what, [](Contributions&) {});
  }

  void send(int to, int tag, std::string body) override;
  std::optional<Message> receive(int from, int tag, std::chrono::milliseconds timeout) override;

  void set_watchdog(double seconds) override { watchdog_seconds_ = seconds; }
  [[noreturn]] void abort(const std::string& message, int code) override;

  // Collectives this rank has entered (a test can check that every rank made the same calls).
  int64_t collectives() const;

 private:
  struct Pending {
    std::span<float> data;
    std::string what;
    Ticket ticket = 0;
  };
  using Contributions = std::vector<std::vector<std::byte>>;

  template <class T>
  void reduce(std::span<T> data, ReduceOp op, std::string_view what, const char* type_name);
  // The rendezvous of one collective: every rank's `data` goes in, combine(contributions) makes
  // the result from them (it runs once, on the last rank to arrive), and it is copied back out
  // into every rank's `data`. `signature` must be the same on every rank.
  void collective(const std::string& signature, std::span<std::byte> data, std::string_view what,
                  const std::function<void(Contributions&)>& combine);

  ThreadJob& job_;
  int rank_;
  int64_t sequence_ = 0;  // under the job's mutex
  std::atomic<double> watchdog_seconds_{0};
  std::mutex pending_mutex_, wait_mutex_;
  Ticket last_ticket_ = 0;
  std::deque<Pending> pending_;
};

class ThreadJob {
 public:
  // A job of `size` ranks, `ranks_per_node` to a node (0: all on one node).
  explicit ThreadJob(int size, int ranks_per_node = 0)
      : size_(size), per_node_(ranks_per_node > 0 ? ranks_per_node : size), mailboxes_(size) {
    for (int r = 0; r < size; ++r) ranks_.push_back(std::make_unique<ThreadCommunicator>(*this, r));
  }

  int size() const { return size_; }
  ThreadCommunicator& communicator(int rank) { return *ranks_.at(rank); }

  // How one rank's body ended.
  struct Outcome {
    bool returned = false;
    std::optional<JobAborted> aborted;  // it threw JobAborted (its own abort or another's)
    std::exception_ptr error;           // it threw something else
  };

  // Runs body(rank's communicator) for every rank, each on its own thread, and waits for all.
  std::vector<Outcome> run(const std::function<void(ThreadCommunicator&)>& body) {
    std::vector<Outcome> outcomes(size_);
    std::vector<std::thread> threads;
    for (int r = 0; r < size_; ++r) {
      threads.emplace_back([&, r] {
        try {
          body(*ranks_[r]);
          outcomes[r].returned = true;
        } catch (const JobAborted& aborted) {
          outcomes[r].aborted = aborted;
        } catch (const std::exception& error) {
          outcomes[r].error = std::current_exception();
          end_job({r, 1, fmt::format("rank {} ended with an exception: {}", r, error.what())});
        } catch (...) {
          outcomes[r].error = std::current_exception();
          end_job({r, 1, fmt::format("rank {} ended with an exception", r)});
        }
      });
    }
    for (auto& thread : threads) thread.join();
    return outcomes;
  }

  // The first abort of the job, if any.
  std::optional<JobAborted> aborted() const {
    std::lock_guard lock(mutex_);
    return aborted_;
  }

 private:
  friend class ThreadCommunicator;

  struct Round {
    std::string signature, first_what;
    int first_rank = -1;
    std::vector<std::vector<std::byte>> contributions;
    std::vector<std::byte> result;
    int arrived = 0, departed = 0;
    bool done = false;
  };

  // Marks the job aborted (the first reason wins) and wakes every waiting rank.
  void end_job(JobAborted reason) {
    std::lock_guard lock(mutex_);
    if (!aborted_) aborted_ = std::move(reason);
    changed_.notify_all();
  }
  // Under mutex_: throws the job's abort, if there is one.
  void check_aborted() const {
    if (aborted_) throw *aborted_;
  }

  int size_, per_node_;
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::vector<std::deque<Message>> mailboxes_;
  std::map<int64_t, Round> rounds_;  // collective number -> its rendezvous
  std::optional<JobAborted> aborted_;
  std::vector<std::unique_ptr<ThreadCommunicator>> ranks_;
};

// ---- ThreadCommunicator, inline ----

inline int ThreadCommunicator::size() const { return job_.size_; }
inline int ThreadCommunicator::local_rank() const { return rank_ % job_.per_node_; }
inline int ThreadCommunicator::local_size() const {
  const int first = rank_ / job_.per_node_ * job_.per_node_;
  return std::min(job_.per_node_, job_.size_ - first);
}
inline int64_t ThreadCommunicator::collectives() const {
  std::lock_guard lock(job_.mutex_);
  return sequence_;
}
inline std::string ThreadCommunicator::host() const {
  return fmt::format("node{}", rank_ / job_.per_node_);
}

template <class T>
void ThreadCommunicator::reduce(std::span<T> data, ReduceOp op, std::string_view what,
                                const char* type_name) {
  const char* op_name = op == ReduceOp::sum ? "sum" : op == ReduceOp::min ? "min" : "max";
  const std::size_t count = data.size();
  collective(fmt::format("allreduce of {} {} ({})", count, type_name, op_name),
             std::as_writable_bytes(data), what, [&](Contributions& all) {
               std::vector<T> total(count), value(count);
               for (std::size_t r = 0; r < all.size(); ++r) {
                 std::memcpy(value.data(), all[r].data(), count * sizeof(T));
                 for (std::size_t i = 0; i < count; ++i) {
                   const T a = total[i], b = value[i];
                   total[i] = r == 0                ? b
                              : op == ReduceOp::sum ? a + b
                              : op == ReduceOp::min ? std::min(a, b)
                                                    : std::max(a, b);
                 }
               }
               std::memcpy(all[0].data(), total.data(), count * sizeof(T));
             });
}

inline void ThreadCommunicator::broadcast(std::span<std::byte> data, int root,
                                          std::string_view what) {
  collective(fmt::format("broadcast of {} bytes from rank {}", data.size(), root), data, what,
             [&](Contributions& all) { all[0] = all.at(root); });
}

inline void ThreadCommunicator::collective(const std::string& signature, std::span<std::byte> data,
                                           std::string_view what,
                                           const std::function<void(Contributions&)>& combine) {
  std::unique_lock lock(job_.mutex_);
  job_.check_aborted();
  const int64_t number = sequence_++;
  auto& round = job_.rounds_[number];
  if (round.first_rank < 0) {
    round.signature = signature;
    round.first_what = std::string(what);
    round.first_rank = rank_;
    round.contributions.resize(job_.size_);
  } else if (round.signature != signature) {
    const std::string message = fmt::format(
        "collective {} differs between ranks: rank {} called {} ({}), rank {} called {} ({})",
        number, round.first_rank, round.signature, round.first_what, rank_, signature, what);
    lock.unlock();
    abort(message, 1);
  }
  round.contributions[rank_].assign(data.begin(), data.end());
  if (++round.arrived == job_.size_) {
    combine(round.contributions);
    round.result = round.contributions[0];
    round.done = true;
    job_.changed_.notify_all();
  }
  const double watchdog = watchdog_seconds_.load();
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(watchdog);
  while (!round.done) {
    job_.check_aborted();
    if (watchdog > 0) {
      if (job_.changed_.wait_until(lock, deadline) == std::cv_status::timeout && !round.done) {
        lock.unlock();
        abort(fmt::format("watchdog: {} ({}) did not complete within {} s on {}", what, signature,
                          watchdog, rank_label(*this)),
              1);
      }
    } else {
      job_.changed_.wait(lock);
    }
  }
  std::copy(round.result.begin(), round.result.end(), data.begin());
  if (++round.departed == job_.size_) job_.rounds_.erase(number);
}

inline void ThreadCommunicator::send(int to, int tag, std::string body) {
  std::lock_guard lock(job_.mutex_);
  job_.check_aborted();
  if (to < 0 || to >= job_.size_) {
    throw std::out_of_range(
        fmt::format("send from rank {} to rank {} of {}", rank_, to, job_.size_));
  }
  job_.mailboxes_[to].push_back(Message{rank_, tag, std::move(body)});
  job_.changed_.notify_all();
}

inline std::optional<Message> ThreadCommunicator::receive(int from, int tag,
                                                          std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::unique_lock lock(job_.mutex_);
  auto& mailbox = job_.mailboxes_[rank_];
  for (;;) {
    job_.check_aborted();
    const auto match = std::find_if(mailbox.begin(), mailbox.end(), [&](const Message& m) {
      return (from == kAnySource || m.source == from) && (tag == kAnyTag || m.tag == tag);
    });
    if (match != mailbox.end()) {
      Message message = std::move(*match);
      mailbox.erase(match);
      return message;
    }
    if (std::chrono::steady_clock::now() >= deadline) return std::nullopt;
    job_.changed_.wait_until(lock, deadline);
  }
}

inline void ThreadCommunicator::abort(const std::string& message, int code) {
  job_.end_job({rank_, code, message});
  throw *job_.aborted();
}

}  // namespace strata::test
