// Reading an experiment's `search:` section into a Plan: the metric and its goal, concurrency,
// the explosion factor, overrides, and the stages (each stage's trials, epochs, grid, space,
// narrowing and ASHA), every error naming the file, line and key path. See
// strata/search/space.hpp and docs/search.md ("The search section").
#include <algorithm>

#include "internal.hpp"
#include "strata/config_origin.hpp"
#include "strata/error.hpp"
#include "strata/search/space.hpp"

namespace strata::search {

namespace {

const std::vector<std::string> kMetrics = {"val_accuracy", "val_loss", "train_accuracy",
                                           "train_loss"};

// The stage's axes. The section's own space is the first stage's; a first stage's entries add to
// it or replace entries for the same key path. A later stage lists only what it changes: the rest
// comes from the previous stage (narrowed, with `narrow:`).
void read_stage_space(const Config& c, const Stage* defaults, bool first, const Config& experiment,
                      Stage& stage) {
  if (!defaults) {
    if (auto space = c.find("space")) stage.written = parse_space(*space, experiment);
  } else if (first) {
    if (auto space = c.find("space")) merge_axes(stage.written, parse_space(*space, experiment));
  } else {
    stage.written.clear();
    if (auto space = c.find("space")) stage.written = parse_space(*space, experiment);
  }
}

// `narrow:` (around the best top_k of the stage before); a stage narrows only if it says so.
void read_narrow(const Config& c, const Stage* defaults, bool first, Stage& stage) {
  if (auto narrow = c.find("narrow")) {
    if (first) narrow->fail("the first stage has no earlier stage to narrow around");
    stage.narrow_top_k = narrow->get<int64_t>("top_k");
    if (stage.narrow_top_k < 1) narrow->fail_key("top_k", "must be at least 1");
    stage.narrow_margin = narrow->get<double>("margin", 0.25);
    if (stage.narrow_margin < 0) narrow->fail_key("margin", "must be 0 or positive");
  } else if (defaults) {
    stage.narrow_top_k = 0;
  }
}

// `asha:`, or an ASHA inherited from the section whose top rung is this stage's epochs.
void read_asha(const Config& c, Stage& stage) {
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
  read_stage_space(c, defaults, first, experiment, stage);
  read_narrow(c, defaults, first, stage);
  read_asha(c, stage);
  return stage;
}

// `metric:` (one the trainer reports; the short names val_acc and train_acc get a hint) and
// `goal:` (max or min; by default min for a loss, max for an accuracy).
void read_metric(const Config& s, Plan& plan) {
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
}

// `overrides:` (set on every trial, not in best.yaml); returns the experiment every trial starts
// from, for key paths and the epochs default.
Config read_overrides(const Config& s, Plan& plan) {
  if (auto overrides = s.find("overrides")) {
    if (!overrides->is_map()) overrides->fail("expected a map of key paths to values");
    for (const std::string& path : overrides->keys()) {
      const Config value = overrides->at(path);
      plan.overrides.emplace_back(path, trim(value.dump()));
      plan.override_origins.push_back(fmt::format("{} ({})", value.path(), value.where()));
    }
  }
  Config with_overrides = plan.base.clone();
  for (std::size_t i = 0; i < plan.overrides.size(); ++i) {
    const SetOrigin origin(plan.override_origins[i]);
    with_overrides.set(plan.overrides[i].first, plan.overrides[i].second);
  }
  return with_overrides;
}

// The section's own stage, or each of `stages:` on top of it.
void read_stages(const Config& s, const Config& with_overrides, Plan& plan) {
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
}

// A validation metric needs a validation split.
void check_validation_split(const Config& s, const Plan& plan, const Config& with_overrides) {
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
}

}  // namespace

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
  read_metric(s, plan);
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
  const Config with_overrides = read_overrides(s, plan);

  read_stages(s, with_overrides, plan);
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

  check_validation_split(s, plan, with_overrides);
  return plan;
}

}  // namespace strata::search
