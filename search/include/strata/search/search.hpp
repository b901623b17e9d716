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
//
// THE PARTS
//   strata/search/space.hpp (the plan, its axes and the trials drawn from them), runner.hpp (how a
//   trial trains: the seam to training), journal.hpp (trials.jsonl and search.h5) and this
//   header, run_search(). search/src/internal.hpp lists the source file of each part.
#pragma once

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <vector>

#include "strata/communicator.hpp"
#include "strata/config.hpp"
#include "strata/search/runner.hpp"
#include "strata/search/space.hpp"

namespace strata::search {

struct SearchOptions {
  std::filesystem::path out_dir;
  bool resume = false;  // continue the search journaled in out_dir
  std::FILE* out = stdout;
  bool live = true;                         // the per-trial lines and the progress lines
  const std::atomic<bool>* stop = nullptr;  // set (by Ctrl-C) to stop: trials in flight abort
  std::optional<int> concurrency;           // overrides search.concurrency
  std::optional<int> threads_per_trial;     // overrides search.threads_per_trial
  // The ranks of an MPI job (docs/search.md, "On MPI"): rank 0 schedules, journals and prints,
  // every rank trains trials; null (or a job of one rank): one process.
  Communicator* communicator = nullptr;
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
