// search/src/internal.hpp: what the parts of the search share (private to libstrata_search).
//
//   plan.cpp          reads the `search:` section into a Plan (stages, metric, concurrency, ...)
//   space.cpp         the axes: their key paths and distributions, drawing (in log space for log
//                     distributions), grids, narrowing coarse to fine, a trial's experiment
//   scheduler.cpp     runs a stage's jobs on `concurrency` workers: every trial once, or ASHA
//   trial_runner.cpp  one trial: train_experiment in its own task arena, the explosion abort and
//                     the ASHA pause
//   journal.cpp       trials.jsonl and search.h5: append, replay, resume
//   report.cpp        the live lines, the rankings, the summary and best.yaml
//   remote.cpp        under MPI: trials as messages, rank 0's remote slots, the workers' loop
//   search.cpp        run_search: the output folder, then each stage with the parts above
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "strata/config.hpp"
#include "strata/search/space.hpp"

namespace strata::search {

using Clock = std::chrono::steady_clock;
inline constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
// The most trials one stage may hold, drawn or on a grid: each is a line of the journal and a
// folder of checkpoints, so more is a typo, not a search.
inline constexpr int64_t kMaxGridPoints = 100000;

inline std::string trim(std::string text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  return text;
}

inline std::string short_metric(const std::string& metric) {
  if (metric == "val_accuracy") return "val_acc";
  if (metric == "train_accuracy") return "train_acc";
  return metric;
}

struct SearchOptions;

// search.cpp: the experiment's plan with the command line's --concurrency and
// --threads-per-trial; threads per trial default to the cores this rank's trials share
// (remote.hpp, rank_cores) / concurrency.
Plan plan_for(const Config& experiment, const SearchOptions& options);

// space.cpp: the axes of a `space:` map, each key path checked against `experiment`.
std::vector<Axis> parse_space(const Config& space, const Config& experiment);

// space.cpp: puts each axis of `from` into `into`, replacing the axis of the same key path or
// appending it.
void merge_axes(std::vector<Axis>& into, const std::vector<Axis>& from);

// space.cpp: a drawn value as YAML text (for Config::set and best.yaml), as shown in the live
// lines, and as JSON (the journal: numbers stay numbers, a choice is its value).
std::string value_yaml(const Axis& axis, const Value& value);
std::string value_display(const Axis& axis, const Value& value);
nlohmann::json value_json(const Axis& axis, const Value& value);
nlohmann::json number_json(double value);  // null for NaN and Inf


}  // namespace strata::search
