// strata/search/search.hpp: hyperparameter search over an experiment (`strata search`, docs/search.md).
//
// WHAT THIS REPRESENTS
//   The `search:` section of an experiment names key paths of that same experiment
//   (optimizer.lr, model.layers[2].keep_prob, train.batch_size, ...) and a distribution for each
//   (log_uniform, uniform, int, log_int, choice). A search runs one or more stages, coarse to fine.
//   Each stage draws its trials at random (or on a grid), sets the drawn values with Config::set
//   on a copy of the experiment, and trains each copy for the stage's epochs. A later stage takes
//   ranges written by hand or narrows each range around the best `top_k` trials of the stage
//   before it (in log space for log distributions). Optionally a stage runs ASHA: asynchronous
//   successive halving, which stops weak trials at rungs of min_epochs * eta^k epochs.
//
// REQUIRES
//   - every searched key path exists in the experiment, every range is non-empty and ordered, log
//     ranges are positive, the metric is one the trainer reports: all checked by parse_search(),
//     and a trial's whole experiment checked by TrialRunner::validate(), before any trial runs.
// ENSURES
//   - the same experiment and search.seed give the same trials, in the same order.
//   - a trial whose loss passes explode_factor x its first loss, or is NaN/Inf, stops at once with
//     status "exploded".
//   - DIR/trials.jsonl gets one line per finished trial (appended and fsynced: the journal that
//     --resume reads), DIR/search.h5 the curves of every trial (rewritten atomically before each
//     journal line), DIR/best.yaml the best experiment without its search section.
//   - a trial's result does not depend on how many trials run beside it: each runs in its own
//     tbb::task_arena of threads_per_trial threads, from its own copy of the experiment and seed.
#pragma once

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "strata/config.hpp"
#include "strata/registry.hpp"
#include "strata/training/trainer.hpp"

namespace strata::search {

enum class Distribution { kUniform, kLogUniform, kInt, kLogInt, kChoice };

// One searched key path and its distribution.
struct Axis {
  std::string path;  // "optimizer.lr"
  std::string name;  // short name for the live lines: `name:` in the entry, else the last key
  Distribution distribution = Distribution::kUniform;
  double low = 0, high = 0;          // numeric distributions, inclusive
  std::vector<std::string> choices;  // kChoice: each value as YAML text
  int64_t points = 0;                // grid points on this axis (0: the stage's grid_points)
  std::string where;                 // file:line:col of the entry, for errors
  std::string key;                   // its key path in the file: "search.space.optimizer.lr"

  bool is_log() const {
    return distribution == Distribution::kLogUniform || distribution == Distribution::kLogInt;
  }
  bool is_integer() const {
    return distribution == Distribution::kInt || distribution == Distribution::kLogInt;
  }
  std::string describe() const;  // "log_uniform [1e-06, 0.001]"
};

// A value drawn on one axis.
struct Value {
  double number = 0;  // numeric distributions (a whole number for int and log_int)
  int choice = -1;    // kChoice: index into Axis::choices
};

struct Asha {
  int64_t min_epochs = 1;
  int64_t eta = 3;
  int64_t max_epochs = 0;
  std::vector<int64_t> rungs() const;  // min*eta^k below max, then max
};

struct Stage {
  std::string mode = "random";  // random or grid
  int64_t trials = 0;           // random: trials drawn; grid: the grid's size
  int64_t epochs = 0;
  int64_t grid_points = 3;
  std::vector<Axis> written;  // axes written in this stage (the first stage: the whole space)
  int64_t narrow_top_k = 0;   // 0: no narrowing
  double narrow_margin = 0.25;
  std::optional<Asha> asha;
  std::string where;
};

struct Plan {
  Config base;  // the experiment without its search section, overrides not applied
  std::vector<std::pair<std::string, std::string>> overrides;  // applied to trials only
  std::vector<std::string> override_origins;  // each override's "key path (file:line:col)"
  std::vector<Stage> stages;
  std::string metric = "val_accuracy";
  bool maximize = true;
  uint64_t seed = 1;
  int concurrency = 1;
  int threads_per_trial = 1;
  double explode_factor = 3;
  int64_t top = 10;
};

// Reads and checks `experiment`'s search section (every error here names file, line and key path).
// `cores` is what threads_per_trial defaults from: max(1, cores / concurrency).
Plan parse_search(const Config& experiment, int cores);

// One trial of a stage: where it is and what it drew (aligned with its stage's axes).
struct Trial {
  int stage = 0;
  int64_t index = 0;
  std::vector<Axis> axes;
  std::vector<Value> values;

  // Results.
  std::string status = "pending";  // ok, exploded, stopped_early, failed; paused (an ASHA rung)
  double metric = std::numeric_limits<double>::quiet_NaN();
  std::map<std::string, double> last;  // the last epoch's train/val loss and accuracy
  int64_t epochs = 0;
  int64_t iterations = 0;
  int64_t rung = -1;  // ASHA: the highest rung reached
  double seconds = 0;
  double initial_loss = std::numeric_limits<double>::quiet_NaN();
  std::string error;
  std::map<std::string, std::vector<double>> curves;

  std::string id() const { return std::to_string(stage) + "_" + std::to_string(index); }
};

// Draws `count` trials of `axes` from `seed` (random mode), or every grid point (grid mode).
std::vector<Trial> draw_trials(const Stage& stage, const std::vector<Axis>& axes, int stage_index,
                               uint64_t seed);
// The axes of a stage that narrows around the best `top_k` of `previous` (ranked best first).
std::vector<Axis> narrow_axes(const std::vector<Axis>& axes, const std::vector<const Trial*>& best,
                              double margin);
// `experiment` with the trial's values set (a fresh copy; search section removed).
Config trial_experiment(const Plan& plan, const Trial& trial, bool with_overrides);

// ---- running trials ----

// Thrown by TrialMonitor to stop a trial; runners must let it pass (it is no std::exception).
struct TrialStop {
  enum Reason { kExploded, kRungReached, kInterrupted } reason;
  std::string message;
};

// What a runner reports while a trial trains. The search decides from it whether to stop.
class TrialMonitor {
 public:
  // After every training step: throws TrialStop{kExploded} when the loss is NaN/Inf or passes
  // explode_factor x the trial's first loss, and TrialStop{kInterrupted} after Ctrl-C.
  virtual void iteration(double loss) = 0;
  // After every epoch (1-based `report.epoch`): records the curves; throws TrialStop{kRungReached}
  // when an ASHA rung's epoch is reached.
  virtual void epoch(const EpochReport& report) = 0;

 protected:
  ~TrialMonitor() = default;
};

struct TrialSpec {
  const Trial* trial = nullptr;
  Config experiment;              // values set, train.epochs set, search section removed
  std::filesystem::path out_dir;  // the trial's own folder (checkpoints)
  bool resume = false;            // continue from out_dir's checkpoint (an ASHA promotion)
};

// The seam between the search and training: `strata search` uses trainer_runner(); tests use
// fake runners whose metric is a known function of the parameters and the epoch.
class TrialRunner {
 public:
  virtual ~TrialRunner() = default;
  // Checks a trial's complete experiment without training; throws Error.
  virtual void validate(const Config& experiment) = 0;
  // Trains; calls monitor.iteration() and monitor.epoch() as it goes. Returning means every epoch
  // of spec.experiment's train.epochs ran. Errors are strata::Error (the trial then "failed").
  virtual void run(const TrialSpec& spec, TrialMonitor& monitor) = 0;
};

// A runner on train_experiment(): quiet, in the calling thread's task arena.
std::unique_ptr<TrialRunner> trainer_runner(const Registries& registries);

struct SearchOptions {
  std::filesystem::path out_dir;
  bool resume = false;  // continue the search journaled in out_dir
  std::FILE* out = stdout;
  bool live = true;                         // the per-trial lines and the progress lines
  const std::atomic<bool>* stop = nullptr;  // set (by Ctrl-C) to stop: trials in flight abort
  std::optional<int> concurrency;           // overrides search.concurrency
  std::optional<int> threads_per_trial;     // overrides search.threads_per_trial
};

struct SearchResult {
  std::vector<Trial> trials;  // every trial of every stage, in (stage, index) order
  std::vector<double> best_per_stage;
  const Trial* best = nullptr;  // into `trials`
  int best_stage = -1;
  int64_t best_index = -1;
  bool interrupted = false;
  double seconds = 0;
  std::filesystem::path best_yaml, journal, curves;
};

SearchResult run_search(const Config& experiment, TrialRunner& runner,
                        const SearchOptions& options);

}  // namespace strata::search
