// The search space: each axis's key path and distribution (read and checked against the
// experiment), drawing trials at random (log distributions uniformly in log space) or on a grid,
// narrowing a stage's axes around the best trials of the stage before it, and a trial's
// experiment. See strata/search/space.hpp.
#include "strata/search/space.hpp"

#include <algorithm>
#include <cmath>
#include <set>

#include "internal.hpp"
#include "strata/config_origin.hpp"
#include "strata/error.hpp"
#include "strata/random.hpp"

namespace strata::search {

using json = nlohmann::json;

namespace {

const std::vector<std::string> kDistributions = {"log_uniform", "uniform", "int", "log_int",
                                                 "choice"};

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

// The one distribution key of an axis's entry (its other keys: name, points).
std::string distribution_key(const Config& entry) {
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
  return found;
}

// A numeric axis's distribution `found` and its range [low, high] from `value`.
void read_range(Axis& axis, const std::string& found, const Config& value) {
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
}

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
  const std::string found = distribution_key(entry);
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
  read_range(axis, found, value);
  return axis;
}

}  // namespace

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

void merge_axes(std::vector<Axis>& into, const std::vector<Axis>& from) {
  for (const Axis& axis : from) {
    auto same =
        std::find_if(into.begin(), into.end(), [&](const Axis& a) { return a.path == axis.path; });
    if (same != into.end())
      *same = axis;
    else
      into.push_back(axis);
  }
}

std::string Axis::describe() const {
  static const char* names[] = {"uniform", "log_uniform", "int", "log_int", "choice"};
  const char* kind = names[static_cast<int>(distribution)];
  if (distribution == Distribution::kChoice) {
    return fmt::format("{} [{}]", kind, fmt::join(choices, ", "));
  }
  return fmt::format("{} [{:.6g}, {:.6g}]", kind, low, high);
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

// ---- drawn values ----

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

}  // namespace strata::search
