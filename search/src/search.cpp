// Hyperparameter search: parsing the search section, drawing trials, narrowing stages, running
// trials side by side (one task arena each), ASHA, the journal and resume. See strata/search/search.hpp
// and docs/search.md.
#include "strata/search/search.hpp"

#include <fcntl.h>
#include <tbb/info.h>
#include <tbb/task_arena.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include "strata/config_origin.hpp"
#include "strata/checkpoint.hpp"
#include "strata/error.hpp"
#include "strata/files.hpp"
#include "strata/random.hpp"

namespace strata::search {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

using Clock = std::chrono::steady_clock;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
// The most trials one stage may hold, drawn or on a grid: each is a line of the journal and a
// folder of checkpoints, so more is a typo, not a search.
constexpr int64_t kMaxGridPoints = 100000;

const std::vector<std::string> kDistributions = {"log_uniform", "uniform", "int", "log_int",
                                                 "choice"};
const std::vector<std::string> kMetrics = {"val_accuracy", "val_loss", "train_accuracy",
                                           "train_loss"};
const std::vector<std::string> kCurves = {
    "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "epoch_seconds"};


std::string trim(std::string text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  return text;
}

std::string short_metric(const std::string& metric) {
  if (metric == "val_accuracy") return "val_acc";
  if (metric == "train_accuracy") return "train_acc";
  return metric;
}

// ---- key paths ----

// "model.layers[2].keep_prob" -> {"model", "layers", "[2]", "keep_prob"}
std::vector<std::string> split_key_path(const std::string& path) {
  std::vector<std::string> parts;
  std::string current;
  for (char c : path) {
    if (c == '.') {
      parts.push_back(current);
      current.clear();
    } else if (c == '[') {
      parts.push_back(current);
      current = "[";
    } else {
      current.push_back(c);
    }
  }
  parts.push_back(current);
  std::vector<std::string> result;
  for (auto& part : parts) {
    if (!part.empty()) result.push_back(part);
  }
  return result;
}

void collect_paths(const Config& node, const std::string& prefix, std::vector<std::string>& out) {
  if (node.is_map()) {
    for (const std::string& key : node.keys()) {
      const std::string path = prefix.empty() ? key : prefix + "." + key;
      out.push_back(path);
      collect_paths(node.at(key), path, out);
    }
  } else if (node.is_sequence()) {
    const auto items = node.items();
    for (std::size_t i = 0; i < items.size(); ++i) {
      const std::string path = fmt::format("{}[{}]", prefix, i);
      out.push_back(path);
      collect_paths(items[i], path, out);
    }
  }
}

// Fails at `entry` unless `path` names a value the experiment `root` has.
void check_key_path(const Config& root, const std::string& path, const Config& entry) {
  const Config probe = root.clone();  // reading marks keys used; keep `root` untouched
  Config node = probe;
  std::string walked;
  auto missing = [&](const std::string& why) {
    std::vector<std::string> all;
    collect_paths(probe.clone(), "", all);
    const std::string match = closest_match(path, all);
    entry.fail(
        fmt::format("the experiment has no key path '{}': {}{}", path, why,
                    match.empty() ? std::string() : fmt::format("\n  did you mean '{}'?", match)));
  };
  for (const std::string& part : split_key_path(path)) {
    if (part.front() == '[') {
      if (part.back() != ']') missing(fmt::format("'{}' is not an index like [2]", part));
      int64_t index = -1;
      try {
        index = std::stoll(part.substr(1, part.size() - 2));
      } catch (const std::exception&) {
        missing(fmt::format("'{}' is not an index like [2]", part));
      }
      if (!node.is_sequence()) missing(fmt::format("{} is not a list", walked));
      const auto items = node.items();
      if (index < 0 || index >= static_cast<int64_t>(items.size())) {
        missing(fmt::format("{} has {} entries", walked, items.size()));
      }
      node = items[index];
      walked += part;
      continue;
    }
    if (!node.is_map())
      missing(fmt::format("{} is not a map", walked.empty() ? "the top" : walked));
    if (!node.has(part)) {
      const auto keys = node.keys();
      missing(fmt::format("{} has no key '{}' (it has: {})",
                          walked.empty() ? "the top level" : walked, part, fmt::join(keys, ", ")));
    }
    node = node.at(part);
    walked += (walked.empty() ? "" : ".") + part;
  }
  if (walked.empty()) missing("empty key path");
  if (walked == "search" || walked.starts_with("search.")) {
    entry.fail("the search section cannot search itself");
  }
}

// ---- parsing ----

Axis parse_axis(const std::string& path, const Config& entry) {
  Axis axis;
  axis.path = path;
  axis.where = entry.where();
  axis.key = entry.path();
  const auto parts = split_key_path(path);
  axis.name = parts.empty() ? path : parts.back();
  if (!entry.is_map()) {
    entry.fail(
        fmt::format("expected a distribution such as {{log_uniform: [1e-6, 1e-3]}} (one of "
                    "{}), found {}",
                    fmt::join(kDistributions, ", "),
                    entry.is_scalar() ? "'" + entry.as<std::string>() + "'" : "a list"));
  }
  std::string found;
  for (const std::string& key : entry.keys()) {
    if (key == "name" || key == "points") continue;
    if (std::find(kDistributions.begin(), kDistributions.end(), key) == kDistributions.end()) {
      entry.fail_key(key, fmt::format("unknown distribution '{}'\n  {}", key,
                                      suggestion_text(key, kDistributions, "distributions")));
    }
    if (!found.empty()) {
      entry.fail_key(key, fmt::format("two distributions ('{}' and '{}'); give one", found, key));
    }
    found = key;
  }
  if (found.empty()) {
    entry.fail(
        fmt::format("no distribution given; expected one of {}", fmt::join(kDistributions, ", ")));
  }
  axis.name = entry.get<std::string>("name", axis.name);
  axis.points = entry.get<int64_t>("points", 0);
  if (entry.has("points") && axis.points < 2) entry.fail_key("points", "must be at least 2");
  if (axis.points > kMaxGridPoints) {
    entry.fail_key("points",
                   fmt::format("must be at most {}, found {}", kMaxGridPoints, axis.points));
  }
  const Config value = entry.at(found);
  if (found == "choice") {
    axis.distribution = Distribution::kChoice;
    if (!value.is_sequence()) value.fail("expected a list of values to choose from");
    for (const Config& item : value.items()) axis.choices.push_back(trim(item.dump()));
    if (axis.choices.size() < 2) value.fail("a choice needs at least two values");
    return axis;
  }
  axis.distribution = found == "uniform"       ? Distribution::kUniform
                      : found == "log_uniform" ? Distribution::kLogUniform
                      : found == "int"         ? Distribution::kInt
                                               : Distribution::kLogInt;
  if (!value.is_sequence() || value.items().size() != 2) {
    value.fail(fmt::format("expected a range [low, high], found {}", trim(value.dump())));
  }
  if (axis.is_integer()) {
    const auto range = value.as<std::vector<int64_t>>();
    axis.low = static_cast<double>(range[0]);
    axis.high = static_cast<double>(range[1]);
  } else {
    const auto range = value.as<std::vector<double>>();
    axis.low = range[0];
    axis.high = range[1];
  }
  if (axis.low == axis.high) {
    value.fail(
        fmt::format("empty range [{}, {}]: low must be below high (to fix the value, set it "
                    "in the experiment instead of searching it)",
                    axis.low, axis.high));
  }
  if (axis.low > axis.high) {
    value.fail(fmt::format("inverted range [{}, {}]: low must be below high", axis.low, axis.high));
  }
  if (axis.is_log() && axis.low <= 0) {
    value.fail(
        fmt::format("{} needs a positive range, found [{}, {}] (the logarithm of {} is "
                    "undefined); use uniform or int for ranges that include 0",
                    found, axis.low, axis.high, axis.low));
  }
  return axis;
}

std::vector<Axis> parse_space(const Config& space, const Config& experiment) {
  if (!space.is_map()) space.fail("expected a map of key paths to distributions");
  std::vector<Axis> axes;
  for (const std::string& path : space.keys()) {
    const Config entry = space.at(path);
    check_key_path(experiment, path, entry);
    axes.push_back(parse_axis(path, entry));
  }
  return axes;
}

// The keys a stage may set; `defaults` is the search section's own stage (or nothing).
Stage parse_stage(const Config& c, const Stage* defaults, bool first, const Config& experiment,
                  int64_t experiment_epochs) {
  Stage stage = defaults ? *defaults : Stage{};
  stage.where = c.where();
  if (!defaults) stage.epochs = experiment_epochs;
  stage.mode = c.get<std::string>("mode", stage.mode);
  if (stage.mode != "random" && stage.mode != "grid") {
    c.fail_key("mode", fmt::format("expected random or grid, found '{}'", stage.mode));
  }
  if (c.has("trials")) {
    if (stage.mode == "grid") {
      c.fail_key("trials",
                 "a grid stage runs every grid point: give grid_points (or points: on "
                 "an axis) instead of trials");
    }
    stage.trials = c.get<int64_t>("trials");
    if (stage.trials < 1) c.fail_key("trials", "must be at least 1");
    if (stage.trials > kMaxGridPoints) {
      c.fail_key("trials",
                 fmt::format("must be at most {}, found {}", kMaxGridPoints, stage.trials));
    }
  }
  stage.epochs = c.get<int64_t>("epochs", stage.epochs);
  if (stage.epochs < 1) c.fail_key("epochs", "must be at least 1");
  stage.grid_points = c.get<int64_t>("grid_points", stage.grid_points);
  if (stage.grid_points < 2) c.fail_key("grid_points", "must be at least 2");
  if (stage.grid_points > kMaxGridPoints) {
    c.fail_key("grid_points",
               fmt::format("must be at most {}, found {}", kMaxGridPoints, stage.grid_points));
  }
  // The section's own space is the first stage's; a first stage's entries add to it or replace
  // entries for the same key path. A later stage lists only what it changes: the rest comes
  // from the previous stage (narrowed, with `narrow:`).
  if (!defaults) {
    if (auto space = c.find("space")) stage.written = parse_space(*space, experiment);
  } else if (first) {
    if (auto space = c.find("space")) {
      for (Axis& axis : parse_space(*space, experiment)) {
        auto same = std::find_if(stage.written.begin(), stage.written.end(),
                                 [&](const Axis& a) { return a.path == axis.path; });
        if (same != stage.written.end())
          *same = axis;
        else
          stage.written.push_back(axis);
      }
    }
  } else {
    stage.written.clear();
    if (auto space = c.find("space")) stage.written = parse_space(*space, experiment);
  }
  if (auto narrow = c.find("narrow")) {
    if (first) narrow->fail("the first stage has no earlier stage to narrow around");
    stage.narrow_top_k = narrow->get<int64_t>("top_k");
    if (stage.narrow_top_k < 1) narrow->fail_key("top_k", "must be at least 1");
    stage.narrow_margin = narrow->get<double>("margin", 0.25);
    if (stage.narrow_margin < 0) narrow->fail_key("margin", "must be 0 or positive");
  } else if (defaults) {
    stage.narrow_top_k = 0;
  }
  if (auto asha = c.find("asha")) {
    Asha a;
    a.min_epochs = asha->get<int64_t>("min_epochs", 1);
    a.eta = asha->get<int64_t>("eta", 3);
    a.max_epochs = asha->get<int64_t>("max_epochs", stage.epochs);
    if (a.min_epochs < 1) asha->fail_key("min_epochs", "must be at least 1");
    if (a.eta < 2) asha->fail_key("eta", "must be at least 2 (keep the best 1/eta at each rung)");
    if (a.max_epochs <= a.min_epochs) {
      asha->fail(
          fmt::format("max_epochs ({}) must be above min_epochs ({})", a.max_epochs, a.min_epochs));
    }
    if (c.has("epochs") && a.max_epochs != stage.epochs) {
      asha->fail_key(
          "max_epochs",
          fmt::format("differs from the stage's epochs ({}); give one of them", stage.epochs));
    }
    if (stage.mode == "grid") asha->fail("ASHA draws its trials at random: use mode: random");
    stage.epochs = a.max_epochs;
    stage.asha = a;
  } else if (stage.asha &&
             c.has("epochs")) {  // inherited ASHA: its top rung is this stage's epochs
    if (stage.epochs <= stage.asha->min_epochs) {
      c.fail_key("epochs",
                 fmt::format("must be above asha.min_epochs ({})", stage.asha->min_epochs));
    }
    stage.asha->max_epochs = stage.epochs;
  }
  return stage;
}

int64_t grid_size(const Stage& stage, const std::vector<Axis>& axes);

}  // namespace

std::string Axis::describe() const {
  static const char* names[] = {"uniform", "log_uniform", "int", "log_int", "choice"};
  const char* kind = names[static_cast<int>(distribution)];
  if (distribution == Distribution::kChoice) {
    return fmt::format("{} [{}]", kind, fmt::join(choices, ", "));
  }
  return fmt::format("{} [{:.6g}, {:.6g}]", kind, low, high);
}

std::vector<int64_t> Asha::rungs() const {
  std::vector<int64_t> result;
  for (int64_t r = min_epochs; r < max_epochs; r *= eta) result.push_back(r);
  result.push_back(max_epochs);
  return result;
}

Plan parse_search(const Config& experiment, int cores) {
  auto section = experiment.find("search");
  if (!section) {
    experiment.fail("the experiment has no `search:` section (docs/search.md describes it)");
  }
  const Config& s = *section;
  if (!s.is_map()) s.fail("expected a map (space, trials, epochs, stages, ...)");
  Plan plan;
  plan.base = experiment.clone();
  plan.base.erase("search");

  plan.seed = static_cast<uint64_t>(s.get<int64_t>("seed", 1));
  plan.metric = s.get<std::string>("metric", "val_accuracy");
  if (std::find(kMetrics.begin(), kMetrics.end(), plan.metric) == kMetrics.end()) {
    std::string hint = suggestion_text(plan.metric, kMetrics, "metrics");
    for (const std::string& known : kMetrics) {  // the lecture's short names: val_acc, train_acc
      if (short_metric(known) == plan.metric && !hint.starts_with("did you mean")) {
        hint = fmt::format("did you mean '{}'? {}", known, hint);
      }
    }
    s.fail_key("metric", fmt::format("unknown metric '{}'\n  {}", plan.metric, hint));
  }
  const std::string goal =
      s.get<std::string>("goal", plan.metric.ends_with("loss") ? "min" : "max");
  if (goal != "max" && goal != "min") {
    s.fail_key("goal", fmt::format("expected max or min, found '{}'", goal));
  }
  plan.maximize = goal == "max";
  plan.concurrency = s.get<int>("concurrency", 1);
  if (plan.concurrency < 1) s.fail_key("concurrency", "must be at least 1");
  plan.threads_per_trial = s.get<int>("threads_per_trial", 0);
  if (plan.threads_per_trial < 0)
    s.fail_key("threads_per_trial", "must be 0 (cores / concurrency) or positive");
  if (plan.threads_per_trial == 0) plan.threads_per_trial = std::max(1, cores / plan.concurrency);
  plan.explode_factor = s.get<double>("explode_factor", 3.0);
  if (plan.explode_factor != 0 && plan.explode_factor <= 1) {
    s.fail_key("explode_factor",
               "must be above 1 (abort when loss > factor x the first loss), "
               "or 0 to never abort");
  }
  plan.top = s.get<int64_t>("top", 10);
  if (plan.top < 1) s.fail_key("top", "must be at least 1");
  if (auto overrides = s.find("overrides")) {
    if (!overrides->is_map()) overrides->fail("expected a map of key paths to values");
    for (const std::string& path : overrides->keys()) {
      const Config value = overrides->at(path);
      plan.overrides.emplace_back(path, trim(value.dump()));
      plan.override_origins.push_back(fmt::format("{} ({})", value.path(), value.where()));
    }
  }

  // The experiment every trial starts from, for key paths and the epochs default.
  Config with_overrides = plan.base.clone();
  for (std::size_t i = 0; i < plan.overrides.size(); ++i) {
    const SetOrigin origin(plan.override_origins[i]);
    with_overrides.set(plan.overrides[i].first, plan.overrides[i].second);
  }
  int64_t experiment_epochs = 1;
  if (auto train = with_overrides.clone().find("train")) {
    experiment_epochs = train->get<int64_t>("epochs", 1);
  }

  const Stage defaults = parse_stage(s, nullptr, true, with_overrides, experiment_epochs);
  if (auto stages = s.find("stages")) {
    const auto items = stages->items();
    if (items.empty()) stages->fail("expected at least one stage");
    for (std::size_t i = 0; i < items.size(); ++i) {
      if (!items[i].is_map()) items[i].fail("expected a map (trials, epochs, space, narrow, ...)");
      plan.stages.push_back(
          parse_stage(items[i], &defaults, i == 0, with_overrides, experiment_epochs));
      items[i].check_unused();
    }
  } else {
    plan.stages.push_back(defaults);
  }
  s.check_unused();
  if (plan.stages[0].written.empty()) {
    s.fail("nothing to search: give `space:` (key paths of the experiment with distributions)");
  }
  for (std::size_t i = 0; i < plan.stages.size(); ++i) {
    const Stage& stage = plan.stages[i];
    if (stage.mode == "random" && stage.trials < 1) {
      Config where = s.find("stages") ? s.at("stages").items()[i] : s;
      where.fail("missing `trials:` (how many random trials this stage draws)");
    }
  }

  // A validation metric needs a validation split.
  if (plan.metric.starts_with("val_")) {
    int64_t validation = 0;
    if (auto data = with_overrides.clone().find("data"))
      validation = data->get<int64_t>("validation", 0);
    if (validation <= 0) {
      s.fail_key("metric",
                 fmt::format("{} needs a validation split, but data.validation is {}; set "
                             "data.validation (images held out of training) or search "
                             "on train_loss/train_accuracy",
                             plan.metric, validation));
    }
  }
  return plan;
}

// ---- drawing ----

namespace {

Value draw(const Axis& axis, Stream& stream) {
  const double u = stream.uniform();
  Value v;
  switch (axis.distribution) {
    case Distribution::kUniform:
      v.number = axis.low + u * (axis.high - axis.low);
      break;
    case Distribution::kLogUniform:
      v.number = std::exp(std::log(axis.low) + u * (std::log(axis.high) - std::log(axis.low)));
      v.number = std::clamp(v.number, axis.low, axis.high);
      break;
    case Distribution::kInt:
      v.number = std::min(axis.high, axis.low + std::floor(u * (axis.high - axis.low + 1)));
      break;
    case Distribution::kLogInt:
      v.number = std::floor(
          std::exp(std::log(axis.low) + u * (std::log(axis.high + 1) - std::log(axis.low))));
      v.number = std::clamp(v.number, axis.low, axis.high);
      break;
    case Distribution::kChoice:
      v.choice = std::min(static_cast<int>(axis.choices.size()) - 1,
                          static_cast<int>(u * static_cast<double>(axis.choices.size())));
      break;
  }
  return v;
}

std::vector<Value> grid_values(const Axis& axis, int64_t points) {
  std::vector<Value> values;
  if (axis.distribution == Distribution::kChoice) {
    for (std::size_t i = 0; i < axis.choices.size(); ++i)
      values.push_back({0, static_cast<int>(i)});
    return values;
  }
  const int64_t p = axis.points > 0 ? axis.points : points;
  const double lo = axis.is_log() ? std::log(axis.low) : axis.low;
  const double hi = axis.is_log() ? std::log(axis.high) : axis.high;
  for (int64_t i = 0; i < p; ++i) {
    double t = lo + (hi - lo) * static_cast<double>(i) / static_cast<double>(p - 1);
    double x = axis.is_log() ? std::exp(t) : t;
    if (i == 0) x = axis.low;
    if (i == p - 1) x = axis.high;
    if (axis.is_integer()) x = std::round(x);
    if (!values.empty() && values.back().number == x) continue;  // integer axes: no repeats
    values.push_back({x, -1});
  }
  return values;
}

// The number of grid points, or kMaxGridPoints + 1 as soon as the product passes kMaxGridPoints
// (a product of axes' sizes may overflow int64: 2^32 x 2^32 "points" were once 0 trials).
int64_t grid_size(const Stage& stage, const std::vector<Axis>& axes) {
  int64_t size = 1;
  for (const Axis& axis : axes) {
    const auto n = static_cast<int64_t>(grid_values(axis, stage.grid_points).size());
    if (n > 0 && size > kMaxGridPoints / n) return kMaxGridPoints + 1;
    size *= n;
  }
  return size;
}

}  // namespace

std::vector<Trial> draw_trials(const Stage& stage, const std::vector<Axis>& axes, int stage_index,
                               uint64_t seed) {
  std::vector<Trial> trials;
  if (stage.mode == "grid") {
    std::vector<std::vector<Value>> per_axis;
    for (const Axis& axis : axes) per_axis.push_back(grid_values(axis, stage.grid_points));
    const int64_t size = grid_size(stage, axes);
    if (size > kMaxGridPoints) {
      std::vector<std::string> sizes;
      for (const Axis& axis : axes) {
        sizes.push_back(
            fmt::format("{} ({})", axis.path, grid_values(axis, stage.grid_points).size()));
      }
      fail(
          "{}: the grid has more than {} points (the axes give {}); lower grid_points or the "
          "axes' points",
          stage.where, kMaxGridPoints, fmt::join(sizes, " x "));
    }
    for (int64_t i = 0; i < size; ++i) {
      Trial trial;
      trial.stage = stage_index;
      trial.index = i;
      trial.axes = axes;
      int64_t rest = i;
      trial.values.resize(axes.size());
      for (std::size_t a = axes.size(); a-- > 0;) {  // the last axis varies fastest
        const int64_t n = static_cast<int64_t>(per_axis[a].size());
        trial.values[a] = per_axis[a][rest % n];
        rest /= n;
      }
      trials.push_back(std::move(trial));
    }
    return trials;
  }
  Stream stream(seed, static_cast<uint64_t>(stage_index) + 1);
  for (int64_t i = 0; i < stage.trials; ++i) {
    Trial trial;
    trial.stage = stage_index;
    trial.index = i;
    trial.axes = axes;
    for (const Axis& axis : axes) trial.values.push_back(draw(axis, stream));
    trials.push_back(std::move(trial));
  }
  return trials;
}

std::vector<Axis> narrow_axes(const std::vector<Axis>& axes, const std::vector<const Trial*>& best,
                              double margin) {
  if (best.empty()) fail("cannot narrow around no trials");
  std::vector<Axis> result;
  for (const Axis& axis : axes) {
    Axis narrowed = axis;
    // The trials may come from a stage whose axes differ: find this path among theirs.
    std::vector<Value> values;
    for (const Trial* trial : best) {
      for (std::size_t a = 0; a < trial->axes.size(); ++a) {
        if (trial->axes[a].path == axis.path) values.push_back(trial->values[a]);
      }
    }
    if (values.empty()) {
      result.push_back(narrowed);
      continue;
    }
    if (axis.distribution == Distribution::kChoice) {
      std::set<int> kept;
      for (const Value& v : values) kept.insert(v.choice);
      const auto& previous = best.front()->axes;
      auto source = std::find_if(previous.begin(), previous.end(),
                                 [&](const Axis& a) { return a.path == axis.path; });
      narrowed.choices.clear();
      for (int index : kept) narrowed.choices.push_back(source->choices[index]);
      if (narrowed.choices.size() < axis.choices.size() && narrowed.choices.size() >= 1) {
        result.push_back(narrowed);
      } else {
        result.push_back(axis);
      }
      continue;
    }
    auto to = [&](double x) { return axis.is_log() ? std::log(x) : x; };
    auto from = [&](double t) { return axis.is_log() ? std::exp(t) : t; };
    double lo = to(values[0].number), hi = lo;
    for (const Value& v : values) {
      lo = std::min(lo, to(v.number));
      hi = std::max(hi, to(v.number));
    }
    const double full = to(axis.high) - to(axis.low);
    const double pad = hi > lo ? margin * (hi - lo) : 0.1 * full;
    lo -= pad;
    hi += pad;
    narrowed.low = lo <= to(axis.low) ? axis.low : from(lo);  // exact at the previous bounds
    narrowed.high = hi >= to(axis.high) ? axis.high : from(hi);
    if (axis.is_integer()) {
      narrowed.low = std::floor(narrowed.low + 1e-9);
      narrowed.high = std::ceil(narrowed.high - 1e-9);
      if (narrowed.high <= narrowed.low) narrowed.high = std::min(axis.high, narrowed.low + 1);
      if (narrowed.high <= narrowed.low) narrowed.low = narrowed.high - 1;
    }
    if (axis.is_log()) {  // exp(log(x)) may land a hair outside the previous range
      narrowed.low = std::clamp(narrowed.low, axis.low, axis.high);
      narrowed.high = std::clamp(narrowed.high, axis.low, axis.high);
    }
    result.push_back(narrowed);
  }
  return result;
}

namespace {

// best.yaml is written to the search's output folder, not beside the experiment. A relative entry
// of `plugins:` is relative to the experiment file's folder (apps/strata/cli.cpp,
// load_experiment_plugins), so it is rewritten relative to best.yaml's folder: `strata train
// best.yaml` then loads the same file, and moving the project with its runs keeps it working.
// Absolute entries stay as they are.
void rebase_plugin_paths(Config& experiment, const fs::path& experiment_dir,
                         const fs::path& out_dir) {
  std::optional<Config> plugins = experiment.find("plugins");
  if (!plugins || !plugins->is_sequence()) return;
  const std::vector<Config> items = plugins->items();
  const fs::path from = fs::weakly_canonical(fs::absolute(out_dir));
  for (std::size_t i = 0; i < items.size(); ++i) {
    if (!items[i].is_scalar()) continue;
    const fs::path file = items[i].as<std::string>();
    if (file.empty() || file.is_absolute()) continue;
    const fs::path target = fs::weakly_canonical(fs::absolute(experiment_dir / file));
    fs::path rebased = target.lexically_relative(from);
    if (rebased.empty()) rebased = target;
    std::string quoted = "\"";
    for (const char c : rebased.string()) {
      if (c == '"' || c == '\\') quoted += '\\';
      quoted += c;
    }
    experiment.set(fmt::format("plugins[{}]", i), quoted + "\"");
  }
}

std::string value_yaml(const Axis& axis, const Value& value) {
  if (axis.distribution == Distribution::kChoice) return axis.choices[value.choice];
  if (axis.is_integer()) return fmt::format("{}", static_cast<int64_t>(value.number));
  return fmt::format("{}", value.number);
}

std::string value_display(const Axis& axis, const Value& value) {
  if (axis.distribution == Distribution::kChoice) return axis.choices[value.choice];
  if (axis.is_integer()) return fmt::format("{}", static_cast<int64_t>(value.number));
  return fmt::format("{:.6e}", value.number);
}

json value_json(const Axis& axis, const Value& value) {
  if (axis.distribution != Distribution::kChoice) {
    if (axis.is_integer()) return static_cast<int64_t>(value.number);
    return value.number;
  }
  const std::string& text = axis.choices[value.choice];
  try {
    json parsed = json::parse(text);  // numbers, true/false, null and ["lists"] stay themselves
    if (!parsed.is_object()) return parsed;
  } catch (const json::exception&) {
  }
  return text;
}

json number_json(double value) { return std::isfinite(value) ? json(value) : json(nullptr); }

}  // namespace

Config trial_experiment(const Plan& plan, const Trial& trial, bool with_overrides) {
  Config config = plan.base.clone();
  if (with_overrides) {
    for (std::size_t i = 0; i < plan.overrides.size(); ++i) {
      const SetOrigin origin(i < plan.override_origins.size() ? plan.override_origins[i]
                                                              : "search.overrides");
      config.set(plan.overrides[i].first, plan.overrides[i].second);
    }
  }
  // A drawn value's errors point at the search entry that drew it, not at a `--set` nobody typed.
  for (std::size_t a = 0; a < trial.axes.size(); ++a) {
    const Axis& axis = trial.axes[a];
    const std::string value = value_yaml(axis, trial.values[a]);
    const SetOrigin origin(fmt::format("{} ({}): drawn value {}",
                                       axis.key.empty() ? axis.path : axis.key, axis.where, value));
    config.set(axis.path, value);
  }
  return config;
}

// ---- the trainer as a trial runner ----

namespace {

class TrainerRunner final : public TrialRunner {
 public:
  explicit TrainerRunner(const Registries& registries) : registries_(registries) {}

  void validate(const Config& experiment) override {
    TrainOptions options;
    options.quiet = true;
    options.validate_only = true;
    train_experiment(experiment, registries_, options);
  }

  void run(const TrialSpec& spec, TrialMonitor& monitor) override {
    TrainOptions options;
    options.out_dir = spec.out_dir;
    options.resume = spec.resume;
    options.progress = "none";
    options.quiet = true;
    options.on_iteration = [&](const IterationReport& report) { monitor.iteration(report.loss); };
    train_experiment(spec.experiment, registries_, options,
                     [&](const EpochReport& report) { monitor.epoch(report); });
  }

 private:
  const Registries& registries_;
};

}  // namespace

std::unique_ptr<TrialRunner> trainer_runner(const Registries& registries) {
  return std::make_unique<TrainerRunner>(registries);
}

// ---- running a search ----

namespace {

class Monitor final : public TrialMonitor {
 public:
  Monitor(Trial& trial, double factor, int64_t stop_epoch, int64_t max_epochs,
          const std::atomic<bool>* stop)
      : trial_(trial),
        factor_(factor),
        stop_epoch_(stop_epoch),
        max_epochs_(max_epochs),
        stop_(stop) {}

  void iteration(double loss) override {
    ++trial_.iterations;
    trial_.curves["iteration_loss"].push_back(loss);
    if (std::isnan(trial_.initial_loss)) trial_.initial_loss = loss;
    if (stop_ && stop_->load()) throw TrialStop{TrialStop::kInterrupted, "interrupted"};
    if (!std::isfinite(loss)) {
      throw TrialStop{TrialStop::kExploded,
                      fmt::format("loss {} at iteration {}", loss, trial_.iterations)};
    }
    if (factor_ > 0 && loss > factor_ * trial_.initial_loss) {
      throw TrialStop{TrialStop::kExploded,
                      fmt::format("loss {:.4g} > {:g} x the first loss {:.4g} at iteration {}",
                                  loss, factor_, trial_.initial_loss, trial_.iterations)};
    }
  }

  void epoch(const EpochReport& r) override {
    const std::pair<const char*, double> values[] = {{"train_loss", r.train_loss},
                                                     {"train_accuracy", r.train_accuracy},
                                                     {"val_loss", r.val_loss},
                                                     {"val_accuracy", r.val_accuracy},
                                                     {"lr", r.lr},
                                                     {"epoch_seconds", r.seconds}};
    for (const auto& [name, value] : values) {
      auto& curve = trial_.curves[name];
      curve.resize(static_cast<std::size_t>(std::max<int64_t>(r.epoch - 1, 0)), kNaN);
      curve.push_back(value);
      if (std::string_view(name) != "lr" && std::string_view(name) != "epoch_seconds") {
        trial_.last[name] = value;
      }
    }
    trial_.epochs = r.epoch;
    if (stop_ && stop_->load()) throw TrialStop{TrialStop::kInterrupted, "interrupted"};
    if (stop_epoch_ > 0 && r.epoch >= stop_epoch_ && r.epoch < max_epochs_) {
      throw TrialStop{TrialStop::kRungReached, ""};
    }
  }

 private:
  Trial& trial_;
  double factor_;
  int64_t stop_epoch_, max_epochs_;
  const std::atomic<bool>* stop_;
};

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

void drive(JobSource& source, int concurrency, const std::function<Trial(Job&)>& run,
           const std::atomic<bool>* stop) {
  std::mutex mutex;
  std::condition_variable changed;
  int running = 0;
  std::exception_ptr fatal;
  auto worker = [&] {
    std::unique_lock lock(mutex);
    for (;;) {
      if (fatal || (stop && stop->load())) break;
      std::optional<Job> job;
      try {
        job = source.next();
      } catch (...) {
        fatal = std::current_exception();
        break;
      }
      if (!job) {
        if (running == 0) break;
        changed.wait(lock);
        continue;
      }
      ++running;
      lock.unlock();
      Trial result;
      std::exception_ptr error;
      try {
        result = run(*job);
      } catch (...) {
        error = std::current_exception();
      }
      lock.lock();
      --running;
      if (error) {
        fatal = error;
      } else {
        try {
          source.finish(std::move(result));
        } catch (...) {
          fatal = std::current_exception();
        }
      }
      changed.notify_all();
    }
    changed.notify_all();
  };
  if (concurrency <= 1) {
    worker();
  } else {
    std::vector<std::thread> threads;
    for (int i = 0; i < concurrency; ++i) threads.emplace_back(worker);
    for (auto& thread : threads) thread.join();
  }
  if (fatal) std::rethrow_exception(fatal);
}

std::string format_seconds(double seconds) {
  const auto s = static_cast<int64_t>(std::llround(seconds));
  if (s < 60) return fmt::format("{}s", s);
  if (s < 3600) return fmt::format("{}m{:02}s", s / 60, s % 60);
  return fmt::format("{}h{:02}m", s / 3600, (s % 3600) / 60);
}

void append_and_sync(const fs::path& path, const std::string& line) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0666);
  if (fd < 0) fail("{}: cannot open for appending: {}", path.string(), std::strerror(errno));
  const char* bytes = line.data();
  std::size_t size = line.size();
  while (size > 0) {
    const ssize_t written = ::write(fd, bytes, size);
    if (written < 0 && errno == EINTR) continue;
    if (written < 0) {
      const int error = errno;
      ::close(fd);
      fail("{}: cannot append: {}", path.string(), std::strerror(error));
    }
    bytes += written;
    size -= static_cast<std::size_t>(written);
  }
  const bool synced = ::fsync(fd) == 0;
  ::close(fd);
  if (!synced) fail("{}: cannot sync: {}", path.string(), std::strerror(errno));
}

class Search {
 public:
  Search(const Config& experiment, TrialRunner& runner, const SearchOptions& options)
      : experiment_(experiment),
        runner_(runner),
        options_(options),
        plan_(parse_search(experiment, static_cast<int>(tbb::info::default_concurrency()))) {
    if (options.concurrency) {
      if (*options.concurrency < 1) fail("--concurrency must be at least 1");
      plan_.concurrency = *options.concurrency;
      if (!options.threads_per_trial) {
        plan_.threads_per_trial =
            std::max(1, static_cast<int>(tbb::info::default_concurrency()) / plan_.concurrency);
      }
    }
    if (options.threads_per_trial) {
      if (*options.threads_per_trial < 1) fail("--threads-per-trial must be at least 1");
      plan_.threads_per_trial = *options.threads_per_trial;
    }
    journal_ = options.out_dir / "trials.jsonl";
    curves_ = options.out_dir / "search.h5";
    tty_ = options.live && ::isatty(::fileno(options.out)) != 0;
  }

  SearchResult run();

 private:
  void say(const std::string& text) {
    if (!options_.live) return;
    if (tty_ && progress_shown_) std::fputs("\r\033[K", options_.out);
    std::fputs(text.c_str(), options_.out);
    std::fputc('\n', options_.out);
    progress_shown_ = false;
    std::fflush(options_.out);
  }
  void prepare_folder();
  void load_journal();
  void validate_first_trial(const std::vector<Trial>& trials);
  void run_stage(int index);
  Trial run_job(Job& job);
  void record(const Trial& trial);  // search.h5, then the journal line
  void print_line(const Trial& trial, const std::string& counter);
  void print_progress(bool force);
  void print_ranking(int stage);
  std::vector<const Trial*> ranked(int stage) const;
  bool better(double a, double b) const { return plan_.maximize ? a > b : a < b; }
  json trial_json(const Trial& trial) const;
  void restore(Trial& trial, const json& record) const;

  const Config& experiment_;
  TrialRunner& runner_;
  const SearchOptions& options_;
  Plan plan_;
  fs::path journal_, curves_;
  bool tty_ = false, progress_shown_ = false;
  std::vector<std::vector<Trial>> stages_;  // stable once a stage is drawn
  std::vector<std::vector<Axis>> stage_axes_;
  std::map<std::string, std::vector<json>> journaled_;  // trial id -> its journal lines, in order
  std::map<std::string, std::map<std::string, std::vector<double>>> stored_curves_;
  Clock::time_point start_ = Clock::now(), stage_start_ = Clock::now();
  int current_stage_ = 0;
  int64_t done_in_stage_ = 0, running_ = 0, last_progress_ = -1;
  bool interrupted_ = false;
  std::optional<OutputLock> lock_;  // on the search folder, from prepare_folder() on
};

void Search::prepare_folder() {
  const fs::path& dir = options_.out_dir;
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) fail("{}: cannot create the search folder: {}", dir.string(), ec.message());
  // The lock `strata train` takes: two searches, or a search and a run, never share a folder.
  lock_.emplace(dir, std::vector<std::string>{"trials.jsonl", "search.h5", "search.yaml",
                                              "search.json", "best.yaml"});
  const fs::path stored = dir / "search.yaml";
  const std::string text = experiment_.dump();
  const bool has_journal = fs::exists(journal_) && fs::file_size(journal_) > 0;
  if (options_.resume) {
    if (!has_journal && !fs::exists(stored)) {
      fail(
          "{}: there is no search to resume here (no trials.jsonl); run without --resume to "
          "start one",
          dir.string());
    }
    if (fs::exists(stored)) {
      std::ifstream in(stored);
      std::stringstream buffer;
      buffer << in.rdbuf();
      if (buffer.str() != text) {
        fail(
            "{}: the experiment differs from the one this search started with ({}); resuming "
            "would mix two searches. Restore the experiment, or start a new search in another "
            "--out folder",
            dir.string(), stored.string());
      }
    }
  } else if (has_journal) {
    fail(
        "{}: already holds a search (trials.jsonl); continue it with --resume, or choose another "
        "--out folder",
        dir.string());
  }
  write_file_atomically(stored, text);
  // How each key path is distributed, for tools that read the search without a YAML parser
  // (strata-plot draws log-distributed parameters on log axes).
  json space = json::object();
  for (const Stage& stage : plan_.stages) {
    for (const Axis& axis : stage.written) {
      space[axis.path] = {{"log", axis.is_log()}, {"name", axis.name}, {"distribution", axis.describe()}};
    }
  }
  write_file_atomically(dir / "search.json", json{{"space", space}}.dump(2) + "\n");
}

void Search::load_journal() {
  if (!fs::exists(journal_)) return;
  std::ifstream in(journal_, std::ios::binary);
  std::string line;
  std::vector<std::string> good;
  std::size_t number = 0;
  bool truncated = false;
  while (std::getline(in, line)) {
    ++number;
    if (line.empty()) continue;
    json record;
    try {
      record = json::parse(line);
    } catch (const json::exception& error) {
      if (in.peek() == EOF) {  // a line cut short by kill -9: drop it, the trial runs again
        truncated = true;
        break;
      }
      fail("{}:{}: not a JSON object ({}); the journal is damaged", journal_.string(), number,
           error.what());
    }
    if (!record.is_object() || !record.contains("stage") || !record.contains("index")) {
      fail("{}:{}: expected a trial record with stage and index", journal_.string(), number);
    }
    journaled_[fmt::format("{}_{}", record["stage"].get<int>(), record["index"].get<int64_t>())]
        .push_back(record);
    good.push_back(line);
  }
  if (truncated) {
    std::string text;
    for (const auto& kept : good) text += kept + "\n";
    write_file_atomically(journal_, text);
    say(fmt::format("note: dropped an incomplete last line of {}", journal_.string()));
  }
  if (fs::exists(curves_)) stored_curves_ = read_hdf5_series(curves_, "/trials");
}

json Search::trial_json(const Trial& trial) const {
  json record;
  record["stage"] = trial.stage;
  record["index"] = trial.index;
  json params = json::object();
  for (std::size_t a = 0; a < trial.axes.size(); ++a) {
    params[trial.axes[a].path] = value_json(trial.axes[a], trial.values[a]);
  }
  record["params"] = params;
  record["metric_name"] = plan_.metric;
  record["metric"] = number_json(trial.metric);
  record["status"] = trial.status;
  record["epochs"] = trial.epochs;
  record["iterations"] = trial.iterations;
  record["seconds"] = trial.seconds;
  record["initial_loss"] = number_json(trial.initial_loss);
  json last = json::object();
  for (const auto& [name, value] : trial.last) last[name] = number_json(value);
  record["last"] = last;
  if (trial.rung >= 0) record["rung"] = trial.rung;
  if (!trial.error.empty()) record["error"] = trial.error;
  return record;
}

// Fills `trial`'s results from its journal line, after checking that the line was drawn the same.
void Search::restore(Trial& trial, const json& record) const {
  const json& params = record.at("params");
  for (std::size_t a = 0; a < trial.axes.size(); ++a) {
    const json expected = value_json(trial.axes[a], trial.values[a]);
    const json* found =
        params.contains(trial.axes[a].path) ? &params.at(trial.axes[a].path) : nullptr;
    bool same = found != nullptr;
    if (same && expected.is_number() && found->is_number()) {
      const double x = expected.get<double>(), y = found->get<double>();
      same = std::abs(x - y) <= 1e-9 * std::max(std::abs(x), std::abs(y));
    } else if (same) {
      same = expected == *found;
    }
    if (!same) {
      fail(
          "{}: trial {} of stage {} was run with {} = {}, but the search now draws {}: the search "
          "section or its seed changed. Start a new search in another --out folder",
          journal_.string(), trial.index, trial.stage + 1, trial.axes[a].path,
          found ? found->dump() : "nothing", expected.dump());
    }
  }
  auto number = [](const json& j) { return j.is_number() ? j.get<double>() : kNaN; };
  trial.status = record.at("status").get<std::string>();
  trial.metric = number(record.value("metric", json()));
  trial.epochs = record.value("epochs", int64_t{0});
  trial.iterations = record.value("iterations", int64_t{0});
  trial.seconds = record.value("seconds", 0.0);
  trial.initial_loss = number(record.value("initial_loss", json()));
  trial.rung = record.value("rung", int64_t{-1});
  trial.error = record.value("error", std::string());
  trial.last.clear();
  if (record.contains("last")) {
    for (const auto& [name, value] : record["last"].items()) trial.last[name] = number(value);
  }
  trial.curves.clear();
  if (auto stored = stored_curves_.find("/trials/" + trial.id()); stored != stored_curves_.end()) {
    trial.curves = stored->second;
    // search.h5 may be one write ahead of the journal (written first): cut back to the line.
    for (auto& [name, values] : trial.curves) {
      const auto keep =
          static_cast<std::size_t>(name == "iteration_loss" ? trial.iterations : trial.epochs);
      if (values.size() > keep) values.resize(keep);
    }
  }
}

void Search::record(const Trial& trial) {
  std::vector<SeriesGroup> groups;
  for (const auto& stage : stages_) {
    for (const Trial& t : stage) {
      if (t.status == "pending" || (t.status == "running" && t.rung < 0)) continue;
      SeriesGroup group;
      group.path = "/trials/" + t.id();
      group.series = t.curves;
      group.numbers["stage"] = t.stage;
      group.numbers["index"] = static_cast<double>(t.index);
      group.numbers["metric"] = t.metric;
      group.numbers["epochs"] = static_cast<double>(t.epochs);
      group.numbers["seconds"] = t.seconds;
      group.numbers["initial_loss"] = t.initial_loss;
      group.texts["status"] = t.status == "running" ? "paused" : t.status;
      if (!t.error.empty()) group.texts["error"] = t.error;
      for (std::size_t a = 0; a < t.axes.size(); ++a) {
        if (t.axes[a].distribution == Distribution::kChoice) {
          group.texts[t.axes[a].path] = t.axes[a].choices[t.values[a].choice];
        } else {
          group.numbers[t.axes[a].path] = t.values[a].number;
        }
      }
      groups.push_back(std::move(group));
    }
  }
  write_hdf5_series(curves_, groups,
                    {{"metric", plan_.metric}, {"experiment", experiment_.source_file()}});
  append_and_sync(journal_, trial_json(trial).dump() + "\n");
}

void Search::print_line(const Trial& trial, const std::string& counter) {
  std::vector<std::string> parts;
  const std::string metric = short_metric(plan_.metric);
  if (trial.status == "ok" || trial.status == "paused" || trial.status == "stopped_early") {
    parts.push_back(fmt::format("{}: {:.6f}", metric, trial.metric));
  } else {
    parts.push_back(fmt::format("{}: {}", metric, trial.status));
  }
  for (std::size_t a = 0; a < trial.axes.size(); ++a) {
    parts.push_back(
        fmt::format("{}: {}", trial.axes[a].name, value_display(trial.axes[a], trial.values[a])));
  }
  std::string line = fmt::format("{}, {}", fmt::join(parts, ", "), counter);
  if (trial.status == "exploded") line += "  exploded: " + trial.error;
  if (trial.status == "failed") line += "  failed: " + trial.error;
  say(line);
}

void Search::print_progress(bool force) {
  if (!options_.live) return;
  const auto& trials = stages_[current_stage_];
  int64_t exploded = 0, failed = 0, finished = 0;
  const Trial* best = nullptr;
  for (const Trial& t : trials) {
    if (t.status == "exploded") ++exploded;
    if (t.status == "failed") ++failed;
    if (t.status != "pending" && t.status != "running") ++finished;
    if (!std::isnan(t.metric) && (!best || better(t.metric, best->metric))) best = &t;
  }
  const int64_t total = static_cast<int64_t>(trials.size());
  const double elapsed = std::chrono::duration<double>(Clock::now() - start_).count();
  const double stage_elapsed = std::chrono::duration<double>(Clock::now() - stage_start_).count();
  std::string left;
  if (done_in_stage_ > 0 && !plan_.stages[current_stage_].asha && finished < total) {
    left = fmt::format(", about {} left in this stage",
                       format_seconds(stage_elapsed / static_cast<double>(done_in_stage_) *
                                      static_cast<double>(total - finished)));
  }
  const std::string text = fmt::format(
      "[search] stage {}/{}: {}/{} trials done ({} running), {} exploded, {} failed; best {} {}; "
      "{} elapsed{}",
      current_stage_ + 1, plan_.stages.size(), finished, total, running_, exploded, failed,
      short_metric(plan_.metric),
      best ? fmt::format("{:.6f} (trial {})", best->metric, best->index) : "-",
      format_seconds(elapsed), left);
  if (tty_) {
    std::fprintf(options_.out, "\r\033[K%s", text.c_str());
    progress_shown_ = true;
    std::fflush(options_.out);
  } else {
    const int64_t every = std::max<int64_t>(1, total / 10);
    if ((force || finished % every == 0) && finished != last_progress_) say(text);
    last_progress_ = finished;
  }
}

std::vector<const Trial*> Search::ranked(int stage) const {
  std::vector<const Trial*> result;
  for (const Trial& t : stages_[stage]) {
    if ((t.status == "ok" || t.status == "stopped_early" || t.status == "paused") &&
        !std::isnan(t.metric)) {
      result.push_back(&t);
    }
  }
  std::stable_sort(result.begin(), result.end(), [&](const Trial* a, const Trial* b) {
    if (a->epochs != b->epochs) return a->epochs > b->epochs;  // ASHA: longer-trained first
    return better(a->metric, b->metric);
  });
  return result;
}

void Search::print_ranking(int stage) {
  if (!options_.live) return;
  const Stage& spec = plan_.stages[stage];
  const auto best = ranked(stage);
  const auto& trials = stages_[stage];
  std::map<std::string, int> counts;
  for (const Trial& t : trials) ++counts[t.status];
  std::vector<std::string> statuses;
  for (const auto& [status, count] : counts)
    statuses.push_back(fmt::format("{} {}", count, status));
  say(fmt::format("stage {}/{} ({}{}, {} trials, {} epochs): {}; best {} by {}:", stage + 1,
                  plan_.stages.size(), spec.mode, spec.asha ? " + ASHA" : "", trials.size(),
                  spec.epochs, fmt::join(statuses, ", "),
                  std::min<int64_t>(plan_.top, static_cast<int64_t>(best.size())), plan_.metric));
  std::string header =
      fmt::format("  {:>4}  {:>5}  {:>10}", "rank", "trial", short_metric(plan_.metric));
  for (const Axis& axis : stage_axes_[stage]) header += fmt::format("  {:>13}", axis.name);
  header += "  epochs";
  say(header);
  for (std::size_t r = 0; r < best.size() && static_cast<int64_t>(r) < plan_.top; ++r) {
    const Trial& t = *best[r];
    std::string row = fmt::format("  {:>4}  {:>5}  {:>10.6f}", r + 1, t.index, t.metric);
    for (std::size_t a = 0; a < t.axes.size(); ++a) {
      row += fmt::format("  {:>13}", value_display(t.axes[a], t.values[a]));
    }
    row += fmt::format("  {:>6}", t.epochs);
    say(row);
  }
}

Trial Search::run_job(Job& job) {
  Trial trial = std::move(job.trial);
  const Stage& stage = plan_.stages[trial.stage];
  TrialSpec spec;
  spec.trial = &trial;
  spec.experiment = trial_experiment(plan_, trial, true);
  {
    const SetOrigin origin(fmt::format("the search's stage {} ({})", trial.stage + 1, stage.where));
    spec.experiment.set("train.epochs", std::to_string(stage.epochs));
    spec.experiment.set("threads", std::to_string(plan_.threads_per_trial));
    spec.experiment.set("checkpoint.every", stage.asha ? "1" : "0");
  }
  spec.out_dir = options_.out_dir / "trials" / trial.id();
  spec.resume = job.resume;
  std::error_code ec;
  const fs::path paused = spec.out_dir / "paused.h5", model = spec.out_dir / "model.h5";
  if (job.resume) {
    // Continue from the state journaled at the rung, not from a later epoch an interrupted
    // promotion may have saved.
    if (!fs::exists(paused))
      fail("{}: missing; cannot continue trial {}", paused.string(), trial.id());
    fs::copy_file(paused, model, fs::copy_options::overwrite_existing, ec);
    if (ec) fail("{}: cannot copy to {}: {}", paused.string(), model.string(), ec.message());
  } else {
    fs::remove_all(spec.out_dir, ec);
    trial.curves.clear();
    trial.iterations = 0;
    trial.epochs = 0;
    trial.initial_loss = kNaN;
    trial.seconds = 0;
  }
  fs::create_directories(spec.out_dir, ec);
  if (ec) fail("{}: cannot create: {}", spec.out_dir.string(), ec.message());

  Monitor monitor(trial, plan_.explode_factor, stage.asha ? job.target : 0, stage.epochs,
                  options_.stop);
  const auto start = Clock::now();
  trial.error.clear();
  try {
    tbb::task_arena arena(plan_.threads_per_trial);
    arena.execute([&] { runner_.run(spec, monitor); });
    trial.status = "ok";
  } catch (const TrialStop& stop) {
    trial.status = stop.reason == TrialStop::kExploded      ? "exploded"
                   : stop.reason == TrialStop::kRungReached ? "paused"
                                                            : "interrupted";
    trial.error = stop.message;
  } catch (const Error& error) {
    trial.status = "failed";
    trial.error = error.what();
  } catch (const std::exception& error) {
    trial.status = "failed";
    trial.error = fmt::format("internal: {}", error.what());
  }
  trial.seconds += std::chrono::duration<double>(Clock::now() - start).count();
  trial.metric = kNaN;
  if (trial.status == "ok" || trial.status == "paused") {
    auto it = trial.last.find(plan_.metric);
    trial.metric = it != trial.last.end() ? it->second : kNaN;
  }
  if (stage.asha && (trial.status == "ok" || trial.status == "paused")) {
    const auto rungs = stage.asha->rungs();
    trial.rung = std::find(rungs.begin(), rungs.end(), trial.epochs) - rungs.begin();
  }
  if (trial.status == "paused") {
    fs::rename(model, paused, ec);
    if (ec) fail("{}: cannot keep the paused trial's checkpoint: {}", model.string(), ec.message());
  } else if (trial.status != "interrupted") {
    fs::remove_all(spec.out_dir, ec);
  }
  return trial;
}

// Random and grid stages: every trial once, in index order.
class AllTrials final : public JobSource {
 public:
  AllTrials(std::vector<Trial>& trials, std::function<void(Trial&&)> finish)
      : trials_(trials), finish_(std::move(finish)) {}
  std::optional<Job> next() override {
    while (next_ < trials_.size() && trials_[next_].status != "pending") ++next_;
    if (next_ == trials_.size()) return std::nullopt;
    Job job{trials_[next_], 0, false};
    trials_[next_].status = "running";
    ++next_;
    return job;
  }
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
  void replay(const Trial& trial, const std::vector<json>& lines) {
    for (std::size_t i = 0; i < lines.size(); ++i) {
      const json& line = lines[i];
      if (!line.contains("rung")) continue;
      const auto rung = line["rung"].get<int64_t>();
      const std::string status = line.value("status", "");
      if (rung < 0 || rung >= static_cast<int64_t>(rungs_.size())) continue;
      if (status != "paused" && status != "ok") continue;
      table_[rung].emplace_back(trial.index,
                                line["metric"].is_number() ? line["metric"].get<double>() : kNaN);
      if (i + 1 < lines.size()) promoted_[rung].insert(trial.index);
    }
  }

  std::optional<Job> next() override {
    for (std::size_t k = rungs_.size() - 1; k-- > 0;) {
      auto& rung = table_[k];
      std::vector<std::pair<int64_t, double>> sorted;
      for (const auto& entry : rung) {
        if (!std::isnan(entry.second)) sorted.push_back(entry);
      }
      std::stable_sort(sorted.begin(), sorted.end(), [&](const auto& a, const auto& b) {
        return maximize_ ? a.second > b.second : a.second < b.second;
      });
      const std::size_t keep = sorted.size() / static_cast<std::size_t>(eta_);
      for (std::size_t i = 0; i < keep; ++i) {
        const int64_t index = sorted[i].first;
        Trial& trial = trials_[index];
        if (promoted_[k].count(index) || trial.status != "paused") continue;
        promoted_[k].insert(index);
        trial.status = "running";
        return Job{trial, rungs_[k + 1], true};
      }
    }
    while (next_ < trials_.size() && trials_[next_].status != "pending") ++next_;
    if (next_ == trials_.size()) return std::nullopt;
    Trial& trial = trials_[next_++];
    trial.status = "running";
    return Job{trial, rungs_[0], false};
  }

  void finish(Trial result) override {
    if ((result.status == "paused" || result.status == "ok") && result.rung >= 0) {
      table_[result.rung].emplace_back(result.index, result.metric);
    }
    finish_(std::move(result));
  }

 private:
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

void Search::validate_first_trial(const std::vector<Trial>& trials) {
  if (trials.empty()) return;
  Trial probe = trials.front();
  auto check = [&](const Trial& trial, const std::string& what) {
    Config config = trial_experiment(plan_, trial, true);
    {
      const SetOrigin origin(fmt::format("the search's stage 1 ({})", plan_.stages[0].where));
      config.set("train.epochs", std::to_string(plan_.stages[0].epochs));
      config.set("threads", std::to_string(plan_.threads_per_trial));
    }
    try {
      runner_.validate(config);
    } catch (const Error& error) {
      fail("{}\n  (checking {} before any trial starts: {})", error.what(), what,
           fmt::format("{}", fmt::join(
                                 [&] {
                                   std::vector<std::string> parts;
                                   for (std::size_t a = 0; a < trial.axes.size(); ++a) {
                                     parts.push_back(trial.axes[a].path + "=" +
                                                     value_yaml(trial.axes[a], trial.values[a]));
                                   }
                                   return parts;
                                 }(),
                                 ", ")));
    }
  };
  check(probe, "the first trial");
  // Every value of a choice goes into the experiment as written: check each one.
  for (std::size_t a = 0; a < probe.axes.size(); ++a) {
    if (probe.axes[a].distribution != Distribution::kChoice) continue;
    for (std::size_t c = 0; c < probe.axes[a].choices.size(); ++c) {
      Trial variant = probe;
      variant.values[a].choice = static_cast<int>(c);
      check(variant, fmt::format("choice {} of {}", probe.axes[a].choices[c], probe.axes[a].path));
    }
  }
}

void Search::run_stage(int index) {
  const Stage& stage = plan_.stages[index];
  current_stage_ = index;
  stage_start_ = Clock::now();
  done_in_stage_ = 0;
  running_ = 0;
  last_progress_ = -1;

  // The axes: the previous stage's, narrowed if asked, then this stage's own entries.
  std::vector<Axis> axes = index == 0 ? stage.written : stage_axes_[index - 1];
  std::string narrowed_note;
  if (index > 0 && stage.narrow_top_k > 0) {
    auto best = ranked(index - 1);
    if (best.empty()) {
      fail(
          "stage {} narrows around the best {} trials of stage {}, but no trial of stage {} "
          "finished with a {} (all exploded or failed)",
          index + 1, stage.narrow_top_k, index, index, plan_.metric);
    }
    if (static_cast<int64_t>(best.size()) > stage.narrow_top_k) best.resize(stage.narrow_top_k);
    axes = narrow_axes(axes, best, stage.narrow_margin);
    narrowed_note = fmt::format(" (narrowed around the best {} of stage {})", best.size(), index);
  }
  if (index > 0) {
    for (const Axis& axis : stage.written) {
      auto same = std::find_if(axes.begin(), axes.end(),
                               [&](const Axis& a) { return a.path == axis.path; });
      if (same != axes.end())
        *same = axis;
      else
        axes.push_back(axis);
    }
  }
  stage_axes_.push_back(axes);
  stages_.push_back(draw_trials(stage, axes, index, plan_.seed));
  auto& trials = stages_.back();
  if (index == 0) validate_first_trial(trials);

  std::vector<std::string> ranges;
  for (const Axis& axis : axes)
    ranges.push_back(fmt::format("{} ({}) {}", axis.path, axis.name, axis.describe()));
  say(fmt::format("stage {}/{}: {} {} trials x {} epochs{}{}", index + 1, plan_.stages.size(),
                  trials.size(), stage.mode, stage.epochs,
                  stage.asha ? fmt::format(" (ASHA: rungs at {} epochs, keep 1/{})",
                                           fmt::join(stage.asha->rungs(), ", "), stage.asha->eta)
                             : std::string(),
                  narrowed_note));
  for (const auto& range : ranges) say("  " + range);

  // Resume: trials the journal holds are done (or, under ASHA, paused at a rung).
  int64_t restored = 0;
  for (Trial& trial : trials) {
    auto it = journaled_.find(trial.id());
    if (it == journaled_.end()) continue;
    restore(trial, it->second.back());
    ++restored;
  }
  if (restored > 0)
    say(fmt::format("  resuming: {} trials of this stage are in {}", restored, journal_.string()));

  const int64_t total = static_cast<int64_t>(trials.size());
  auto finish = [&](Trial&& result) {
    --running_;
    if (result.status == "interrupted") {
      Trial& slot = trials[result.index];
      slot.status = slot.rung >= 0 ? "paused" : "pending";  // as it was before this job
      interrupted_ = true;
      return;
    }
    Trial& slot = trials[result.index];
    slot = std::move(result);
    ++done_in_stage_;
    record(slot);
    int64_t finished = 0;
    for (const Trial& t : trials) finished += t.status != "pending" && t.status != "running";
    std::string counter = fmt::format("({} / {})", finished, total);
    if (stage.asha) {
      counter = fmt::format("(trial {} of {}, {} epochs{})", slot.index, total, slot.epochs,
                            slot.status == "paused" ? ", paused at a rung" : "");
    }
    print_line(slot, counter);
    print_progress(false);
  };
  auto run = [&](Job& job) { return run_job(job); };
  std::unique_ptr<JobSource> source;
  if (stage.asha) {
    auto asha = std::make_unique<AshaTrials>(trials, *stage.asha, plan_.maximize, finish);
    for (Trial& trial : trials) {
      if (auto it = journaled_.find(trial.id()); it != journaled_.end())
        asha->replay(trial, it->second);
    }
    source = std::move(asha);
  } else {
    source = std::make_unique<AllTrials>(trials, finish);
  }
  Counting counting(*source, running_);
  drive(counting, plan_.concurrency, run, options_.stop);
  if (options_.stop && options_.stop->load()) interrupted_ = true;
  for (Trial& trial : trials) {
    if (trial.status == "running") trial.status = "pending";
  }
  if (interrupted_) return;
  // ASHA: trials left at a rung below the top were stopped early; that is their final line.
  for (Trial& trial : trials) {
    if (trial.status != "paused") continue;
    trial.status = "stopped_early";
    record(trial);
    std::error_code ec;
    fs::remove_all(options_.out_dir / "trials" / trial.id(), ec);
  }
  print_progress(true);
  print_ranking(index);
}

SearchResult Search::run() {
  prepare_folder();
  if (options_.resume) load_journal();
  say(
      fmt::format("search: {} stage(s), metric {} ({}), seed {}; {} trial(s) at a time x {} "
                  "thread(s) each; results in {}",
                  plan_.stages.size(), plan_.metric, plan_.maximize ? "max" : "min", plan_.seed,
                  plan_.concurrency, plan_.threads_per_trial, options_.out_dir.string()));
  for (int s = 0; s < static_cast<int>(plan_.stages.size()); ++s) {
    run_stage(s);
    if (interrupted_) break;
  }

  SearchResult result;
  result.interrupted = interrupted_;
  result.journal = journal_;
  result.curves = curves_;
  result.seconds = std::chrono::duration<double>(Clock::now() - start_).count();
  for (auto& stage : stages_) {
    for (Trial& trial : stage) result.trials.push_back(trial);
  }
  // The best trial over every stage, among trials that ran all their stage's epochs; failing
  // any, the longest-trained of those ASHA stopped early.
  for (const Trial& t : result.trials) {
    if (t.status != "ok" || std::isnan(t.metric)) continue;
    if (!result.best || better(t.metric, result.best->metric)) result.best = &t;
  }
  for (const Trial& t : result.trials) {
    if (result.best && result.best->status == "ok") break;
    if (t.status != "stopped_early" || std::isnan(t.metric)) continue;
    if (!result.best || t.epochs > result.best->epochs ||
        (t.epochs == result.best->epochs && better(t.metric, result.best->metric))) {
      result.best = &t;
    }
  }
  for (std::size_t s = 0; s < stages_.size(); ++s) {
    double best = kNaN;
    for (const Trial& t : stages_[s]) {
      if (t.status != "ok" || std::isnan(t.metric)) continue;
      if (std::isnan(best) || better(t.metric, best)) best = t.metric;
    }
    result.best_per_stage.push_back(best);
  }
  std::error_code ec;
  if (fs::is_empty(options_.out_dir / "trials", ec)) fs::remove(options_.out_dir / "trials", ec);
  if (interrupted_) {
    say(fmt::format("interrupted after {}: finished trials are in {}; continue with --resume",
                    format_seconds(result.seconds), journal_.string()));
    return result;
  }
  if (!result.best) {
    say("no trial has a result: every trial exploded or failed, so there is no best.yaml");
    return result;
  }
  const Trial& best = *result.best;
  result.best_stage = best.stage;
  result.best_index = best.index;
  Config winner = trial_experiment(plan_, best, false);
  rebase_plugin_paths(winner, fs::path(experiment_.source_file()).parent_path(), options_.out_dir);
  std::vector<std::string> values;
  for (std::size_t a = 0; a < best.axes.size(); ++a) {
    values.push_back(
        fmt::format("{} = {}", best.axes[a].path, value_yaml(best.axes[a], best.values[a])));
  }
  const std::string header = fmt::format(
      "# The best trial of `strata search {}`: stage {}, trial {}, {} {:.6f} after {} epochs.\n"
      "# {}\n# The search section is removed; train it with: strata train <this file>\n",
      experiment_.source_file(), best.stage + 1, best.index, plan_.metric, best.metric, best.epochs,
      fmt::join(values, ", "));
  result.best_yaml = options_.out_dir / "best.yaml";
  write_file_atomically(result.best_yaml, header + winner.dump());
  std::vector<std::string> per_stage;
  for (std::size_t s = 0; s < result.best_per_stage.size(); ++s) {
    per_stage.push_back(fmt::format("stage {} {:.6f}", s + 1, result.best_per_stage[s]));
  }
  say(fmt::format(
      "best {}: {}; {} in {}", short_metric(plan_.metric), fmt::join(per_stage, ", "),
      result.trials.size() == 1 ? "1 trial" : fmt::format("{} trials", result.trials.size()),
      format_seconds(result.seconds)));
  say(fmt::format("best trial: stage {}, trial {}: {}", best.stage + 1, best.index,
                  fmt::join(values, ", ")));
  say(fmt::format("wrote {}, {} and {}", result.best_yaml.string(), journal_.string(),
                  curves_.string()));
  return result;
}

}  // namespace

SearchResult run_search(const Config& experiment, TrialRunner& runner,
                        const SearchOptions& options) {
  Search search(experiment, runner, options);
  SearchResult result = search.run();
  // `best` pointed into a vector that may have moved since: find it again.
  if (result.best) {
    const int stage = result.best_stage;
    const int64_t index = result.best_index;
    result.best = nullptr;
    for (const Trial& t : result.trials) {
      if (t.stage == stage && t.index == index) result.best = &t;
    }
  }
  return result;
}

}  // namespace strata::search
