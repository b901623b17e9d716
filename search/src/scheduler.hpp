// search/src/scheduler.hpp: who trains what, when (private to libstrata_search).
//
// A stage's trials become jobs (train this trial up to that many epochs). A JobSource hands them
// out: AllTrials runs every trial once, in index order (random and grid stages); AshaTrials runs
// asynchronous successive halving. drive() runs jobs on its workers (threads of this process, and
// under MPI the trial slots of the other ranks) until the source has none left and none is
// running.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "strata/search/search.hpp"
#include "strata/search/space.hpp"

namespace strata::search {

struct Job {
  Trial trial;         // a copy, with its curves so far
  int64_t target = 0;  // epochs to reach
  bool resume = false;
};

// Hands out jobs and takes results; every call is made under the driver's lock.
class JobSource {
 public:
  virtual ~JobSource() = default;
  virtual std::optional<Job> next() = 0;
  virtual void finish(Trial result) = 0;
};

// One worker of drive(): runs a job to its end and returns the trial (run_trial here, or a
// worker rank of an MPI job that does so: remote.hpp).
using Worker = std::function<Trial(Job&)>;

// Runs the jobs of `source` on `workers`, each on a thread of its own (the calling thread alone
// for one worker), until none is left or `stop` is set. A free worker takes the next job: the
// load balances itself. The first exception of a worker, `next` or `finish` stops the workers
// and is rethrown once all have stopped.
void drive(JobSource& source, const std::vector<Worker>& workers, const std::atomic<bool>* stop);

// Random and grid stages: every trial once, in index order.
class AllTrials final : public JobSource {
 public:
  AllTrials(std::vector<Trial>& trials, std::function<void(Trial&&)> finish)
      : trials_(trials), finish_(std::move(finish)) {}
  std::optional<Job> next() override;
  void finish(Trial result) override { finish_(std::move(result)); }

 private:
  std::vector<Trial>& trials_;
  std::function<void(Trial&&)> finish_;
  std::size_t next_ = 0;
};

// ASHA (Li et al. 2020, "A System for Massively Parallel Hyperparameter Tuning"): a free worker
// promotes the best not-yet-promoted trial among the top 1/eta of the highest rung that has one,
// and otherwise starts a new trial at the bottom rung.
class AshaTrials final : public JobSource {
 public:
  AshaTrials(std::vector<Trial>& trials, const Asha& asha, bool maximize,
             std::function<void(Trial&&)> finish)
      : trials_(trials),
        rungs_(asha.rungs()),
        eta_(asha.eta),
        maximize_(maximize),
        finish_(std::move(finish)),
        table_(rungs_.size()),
        promoted_(rungs_.size()) {}

  // Rebuilds the rung tables from a trial's journal lines.
  void replay(const Trial& trial, const std::vector<nlohmann::json>& lines);
  std::optional<Job> next() override;
  void finish(Trial result) override;

 private:
  std::optional<Job> promotion();

  std::vector<Trial>& trials_;
  std::vector<int64_t> rungs_;
  int64_t eta_;
  bool maximize_;
  std::function<void(Trial&&)> finish_;
  std::vector<std::vector<std::pair<int64_t, double>>> table_;
  std::vector<std::set<int64_t>> promoted_;
  std::size_t next_ = 0;
};

// Counts the jobs handed out, for the progress line.
class Counting final : public JobSource {
 public:
  Counting(JobSource& inner, int64_t& running) : inner_(inner), running_(running) {}
  std::optional<Job> next() override {
    auto job = inner_.next();
    if (job) ++running_;
    return job;
  }
  void finish(Trial result) override { inner_.finish(std::move(result)); }

 private:
  JobSource& inner_;
  int64_t& running_;
};

// Whether metric `a` beats `b`.
inline bool better(double a, double b, bool maximize) { return maximize ? a > b : a < b; }

// The trials of a stage with a metric (ok, stopped early or paused), best first; under ASHA the
// longer-trained first.
std::vector<const Trial*> ranked(const std::vector<Trial>& trials, bool maximize);

// The axes of stage `index`: the previous stage's, narrowed around its best trials if the stage
// asks, then the stage's own entries (the first stage: its own). `axes_before` and
// `trials_before` hold the stages before it. `note` tells how they were narrowed (or stays).
std::vector<Axis> stage_axes(const Plan& plan, int index,
                             const std::vector<std::vector<Axis>>& axes_before,
                             const std::vector<std::vector<Trial>>& trials_before,
                             std::string& note);

// Fills result.best (among trials that ran all their stage's epochs; failing any, the
// longest-trained of those ASHA stopped early) and result.best_per_stage from `stages`.
void pick_best(const std::vector<std::vector<Trial>>& stages, bool maximize, SearchResult& result);

}  // namespace strata::search
