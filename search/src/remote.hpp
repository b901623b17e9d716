// search/src/remote.hpp: the search on the ranks of an MPI job (private to libstrata_search;
// docs/search.md, "On MPI").
//
// WHAT THIS REPRESENTS
//   With SearchOptions::communicator of more than one rank, rank 0 runs the search as one process
//   does: it draws and schedules the trials, journals them (trials.jsonl, search.h5, best.yaml)
//   and prints. Every rank, rank 0 included, trains trials: `concurrency` at once (its "slots"),
//   each with threads_per_trial threads (by default the node's cores / the ranks on the node /
//   concurrency, so that ranks sharing a machine do not oversubscribe it). A scheduler that sat on
//   a rank of its own would leave that rank's cores idle: it sleeps in receive() almost always.
//
//   drive() on rank 0 gets one Worker per slot of the job: its own slots call run_trial, and
//   WorkerRanks::slot() stands for each slot of every other rank: it sends the job there and
//   waits for the trial to come back. One thread of WorkerRanks receives every message sent to
//   rank 0 and hands each result to the slot waiting for it: one receiver, however many slots
//   (a receive polls the MPI library, so a receiver per slot would multiply the polling). A slot
//   asks for its next trial by finishing one: drive() hands a free slot the next job (a new trial
//   or an ASHA promotion, on whichever rank), so the load balances itself and a promotion may
//   continue on another rank the checkpoint another rank paused. The other ranks run
//   serve_trials(): they say they are ready, then run the jobs they are sent until rank 0 tells
//   them to stop.
//
// THE PROTOCOL: Communicator::send/receive between rank 0 and one worker rank; bodies are JSON.
//   tag 7101 ready      worker -> 0   first thing: {"host", "experiment"}, a hash of the experiment
//                                     as the worker read it (with --set, --concurrency and
//                                     --threads-per-trial): every rank must run the same search.
//   tag 7102 job        0 -> worker   {"slot", "target", "resume", "out", "trial"}: run the job in
//                                     that (free) slot; "out" is rank 0's search folder, absolute.
//   tag 7103 interrupt  0 -> worker   {"slot"}: stop that slot's trial (rank 0 was interrupted);
//                                     its result still comes back, as "interrupted".
//   tag 7104 stop       0 -> worker   {"interrupted", "failed"}: no more jobs; leave
//                                     serve_trials() (slots still running are interrupted first).
//   tag 7200 + slot     worker -> 0   the slot's trial once its job has ended.
//   A trial travels whole (axes, values, results, curves, the rank that ran it) as trial_json():
//   finite numbers round-trip exactly, and NaN and the infinities (which JSON lacks) are the
//   strings "nan", "inf" and "-inf".
//
// FAILURES
//   - A trial that fails in training comes back "failed", as in one process.
//   - Anything else going wrong on a worker rank (its trial folder, the search folder not visible
//     there, a message it cannot read) aborts the job (Communicator::abort) with a message naming
//     the rank and the trial: rank 0 must not wait for a result that will never come.
//   - A rank that dies (SIGKILL, a lost node) ends the job, as the launcher ends MPI jobs. The
//     journal holds every trial that had finished; --resume runs the ones in flight again.
//   - An error on rank 0, before or during the search: it tells the workers to stop, then fails.
//   - Ctrl-C (SIGINT/SIGTERM, which mpirun and srun pass to every rank): each rank's trials end as
//     "interrupted". Rank 0 also sends `interrupt` to the slots it waits on (for a signal that
//     reached rank 0 alone), stops handing out jobs once any trial comes back interrupted (a
//     signal that reached a worker alone), and finally tells every rank to stop: all return
//     `interrupted`, and the journal holds every trial that finished.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <filesystem>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "scheduler.hpp"
#include "strata/communicator.hpp"
#include "strata/config.hpp"
#include "strata/search/runner.hpp"
#include "strata/search/search.hpp"

namespace strata::search {

inline constexpr int kTagReady = 7101;
inline constexpr int kTagJob = 7102;
inline constexpr int kTagInterrupt = 7103;
inline constexpr int kTagStop = 7104;
inline constexpr int kTagResult = 7200;  // + slot
inline constexpr int kMaxSlots = 1000;   // trials one rank runs at once (tags 7200 .. 8199)

// A trial as JSON and back; trial_from_json(trial_json(t)) equals t, every double bit for bit
// (NaN as NaN). Malformed JSON throws nlohmann::json::exception.
nlohmann::json trial_json(const Trial& trial);
Trial trial_from_json(const nlohmann::json& json);

// The cores the trials of this rank share: all of them in one process, and under MPI the node's
// cores divided among the ranks on the node (Communicator::local_size), at least 1.
int rank_cores(const Communicator* communicator);
// A warning when the launcher bound this rank to fewer cores than the `threads` its trials run
// (mpirun binds each rank to one core by default); "" otherwise.
std::string binding_warning(const Communicator& communicator, int threads);

// What identifies the search a rank runs: a hash of the experiment's text and of the options that
// change the plan. Equal on every rank of a job that runs one search. Take it before the
// experiment is read (reading a Config may add the defaults it looked up to its text).
std::string search_fingerprint(const Config& experiment, const SearchOptions& options);

// ---- rank 0 ----

// Rank 0's side of the job: the other ranks, each running serve_trials().
class WorkerRanks {
 public:
  // Starts the thread that receives every message sent to rank 0. `fingerprint`: rank 0's
  // search_fingerprint().
  WorkerRanks(Communicator& communicator, std::string fingerprint);
  ~WorkerRanks();
  WorkerRanks(const WorkerRanks&) = delete;
  WorkerRanks& operator=(const WorkerRanks&) = delete;

  // Waits for every other rank's `ready` and checks that each runs rank 0's search (an Error
  // naming the rank otherwise). Returns how many machines (hosts) the job spans.
  int meet();
  // The Worker for slot `slot` of rank `rank`: sends it each job and waits for the trial. Once
  // `stop` is set it interrupts the trial there; a trial that comes back interrupted sets `stop`.
  Worker slot(int rank, int slot, const std::filesystem::path& out_dir, std::atomic<bool>& stop);
  // Tells every other rank to leave serve_trials().
  void release(bool interrupted, bool failed);

 private:
  void receive_messages();
  // Under mutex_: rethrows what ended the receiving thread, if anything did.
  void check_receiver() const;

  Communicator& communicator_;
  std::string fingerprint_;
  std::mutex mutex_;
  std::condition_variable arrived_;
  std::vector<Message> ready_;
  std::map<std::pair<int, int>, std::string> results_;  // (rank, slot) -> the trial's JSON
  std::exception_ptr receiver_failure_;
  std::atomic<bool> done_{false};
  std::thread thread_;
};

// Sets `to` once `from` is set (checked every 50 ms) while it lives: rank 0's trials and slots
// watch `to`, which a worker's interrupted trial sets too.
class StopRelay {
 public:
  StopRelay(const std::atomic<bool>* from, std::atomic<bool>& to);
  ~StopRelay();
  StopRelay(const StopRelay&) = delete;
  StopRelay& operator=(const StopRelay&) = delete;

 private:
  std::atomic<bool> done_{false};
  std::thread thread_;
};

// ---- the other ranks ----

// Runs the jobs rank 0 sends (see above) until it says stop. Prints nothing; a failure outside
// a trial's training aborts the job. Returns a result with only `interrupted` set.
SearchResult serve_trials(const Config& experiment, TrialRunner& runner,
                          const SearchOptions& options);

}  // namespace strata::search
