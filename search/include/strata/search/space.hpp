// strata/search/space.hpp: what a search searches (docs/search.md, "The search section").
//
// WHAT THIS REPRESENTS
//   The plan read from an experiment's `search:` section: its stages, each with the axes it
//   searches (a key path of the experiment and a distribution), and the trials drawn from them.
//   Log distributions are drawn, put on a grid and narrowed in log space; a later stage's axes
//   narrow around the best trials of the stage before it (coarse to fine).
//
// REQUIRES
//   - parse_search() is given the whole experiment (the key paths are checked against it).
// ENSURES
//   - draw_trials() depends only on the stage, its axes, the stage's index and the seed.
//   - narrow_axes() keeps each narrowed range inside the range it narrows.
#pragma once

#include <cstdint>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "strata/config.hpp"

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
  int rank = -1;  // distributed search: the MPI rank that ran it (its last job); -1 in one process

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

}  // namespace strata::search
