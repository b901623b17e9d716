// The "schedules" plugin: learning-rate schedules, each matching its torch.optim.lr_scheduler
// counterpart stepped once per epoch (or once per iteration where noted). `base` is the
// optimizer's `lr`; `e` is the 0-based epoch, `i` the 0-based global iteration.
//
//   constant     lr = base
//   step         lr = base * gamma^floor(e / step_size)              (StepLR)
//                  keys: step_size (epochs, required, >= 1), gamma (0.1, > 0)
//   multistep    lr = base * gamma^(number of milestones <= e)        (MultiStepLR)
//                  keys: milestones (epochs, required, increasing, >= 1), gamma (0.1, > 0)
//   exponential  lr = base * gamma^e                                  (ExponentialLR)
//                  keys: gamma (required, > 0), e.g. 0.9: CS231n's learning_rate_decay
//   cosine       lr = eta_min + (base - eta_min) * (1 + cos(pi * t / T)) / 2, t = min(e, T)
//                  (CosineAnnealingLR; it stays at eta_min after T where torch would rise again)
//                  keys: eta_min (0, >= 0), epochs (T, default train.epochs),
//                        per_iteration (false; true: t = e + (i mod n) / n with n the steps per
//                        epoch, a smooth decay within epochs)
//   warmup       lr = f * (the `then` schedule's lr), f rising linearly from start_factor to 1:
//                  f = start + (1 - start) * min(t, n) / n, t the epoch (with `epochs: n`) or the
//                  iteration (with `iterations: n`); as torch's LinearLR(start_factor, 1, n)
//                  chained with the other schedule. The `then` schedule counts from the start of
//                  the run, not from the end of the warmup.
//                  keys: epochs or iterations (one of them, >= 1), start_factor (1/3, in (0, 1]),
//                        then (a schedule, default {type: constant})
//   plateau      ReduceLROnPlateau: after each epoch, the named metric is compared with the best
//                  so far; after more than `patience` epochs without improvement the rate is
//                  multiplied by `factor` (not below min_lr), followed by `cooldown` epochs in
//                  which bad epochs are not counted.
//                  keys: metric (val_accuracy; any of train_loss, train_accuracy, val_loss,
//                        val_accuracy), mode (max for an accuracy, min otherwise), factor (0.1,
//                        in (0, 1)), patience (10, >= 0), threshold (1e-4, >= 0),
//                        threshold_mode (rel or abs; rel), cooldown (0, >= 0), min_lr (0, >= 0),
//                        eps (1e-8: smaller reductions are skipped)
//                  improvement: rel max: m > best * (1 + threshold); rel min: m < best * (1 -
//                  threshold); abs max: m > best + threshold; abs min: m < best - threshold.
//                  state(): best, num_bad_epochs, cooldown_counter, lr (float32 scalars).
//
// Schedules with state keep it in float32, so a checkpoint stores it exactly and a resumed run
// makes the same decisions as an uninterrupted one.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <numbers>
#include <optional>
#include <string>
#include <vector>

#include "strata/config.hpp"
#include "strata/error.hpp"
#include "strata/optimizer.hpp"
#include "strata/plugin.hpp"
#include "strata/registry.hpp"

namespace strata::schedules {

namespace {

double positive(const Config& config, const char* key, double value) {
  if (!(value > 0.0) || !std::isfinite(value)) {
    config.fail_key(key, fmt::format("must be positive, found {}", value));
  }
  return value;
}

class ConstantSchedule final : public Schedule {
 public:
  explicit ConstantSchedule(const Config&) {}
  void setup(const SchedulePlan& plan) override { base_ = plan.base_lr; }
  float lr(int64_t, int64_t) override { return base_; }

 private:
  float base_ = 0;
};

class StepSchedule final : public Schedule {
 public:
  explicit StepSchedule(const Config& config)
      : step_size_(config.get<int64_t>("step_size")), gamma_(config.get<double>("gamma", 0.1)) {
    if (step_size_ < 1) {
      config.fail_key("step_size", fmt::format("must be at least 1 epoch, found {}", step_size_));
    }
    positive(config, "gamma", gamma_);
  }
  void setup(const SchedulePlan& plan) override { base_ = plan.base_lr; }
  float lr(int64_t epoch, int64_t) override {
    return static_cast<float>(base_ * std::pow(gamma_, static_cast<double>(epoch / step_size_)));
  }

 private:
  int64_t step_size_;
  double gamma_;
  double base_ = 0;
};

class MultiStepSchedule final : public Schedule {
 public:
  explicit MultiStepSchedule(const Config& config)
      : milestones_(config.get<std::vector<int64_t>>("milestones")),
        gamma_(config.get<double>("gamma", 0.1)) {
    if (milestones_.empty()) config.fail_key("milestones", "needs at least one epoch");
    for (std::size_t k = 0; k < milestones_.size(); ++k) {
      if (milestones_[k] < 1 || (k > 0 && milestones_[k] <= milestones_[k - 1])) {
        config.fail_key("milestones", fmt::format("must be increasing epochs >= 1, found [{}]",
                                                  fmt::join(milestones_, ", ")));
      }
    }
    positive(config, "gamma", gamma_);
  }
  void setup(const SchedulePlan& plan) override { base_ = plan.base_lr; }
  float lr(int64_t epoch, int64_t) override {
    const auto passed =
        std::upper_bound(milestones_.begin(), milestones_.end(), epoch) - milestones_.begin();
    return static_cast<float>(base_ * std::pow(gamma_, static_cast<double>(passed)));
  }

 private:
  std::vector<int64_t> milestones_;
  double gamma_;
  double base_ = 0;
};

class ExponentialSchedule final : public Schedule {
 public:
  explicit ExponentialSchedule(const Config& config) : gamma_(config.get<double>("gamma")) {
    positive(config, "gamma", gamma_);
  }
  void setup(const SchedulePlan& plan) override { base_ = plan.base_lr; }
  float lr(int64_t epoch, int64_t) override {
    return static_cast<float>(base_ * std::pow(gamma_, static_cast<double>(epoch)));
  }

 private:
  double gamma_;
  double base_ = 0;
};

class CosineSchedule final : public Schedule {
 public:
  explicit CosineSchedule(const Config& config)
      : eta_min_(config.get<double>("eta_min", 0.0)),
        epochs_(config.get<int64_t>("epochs", 0)),
        per_iteration_(config.get<bool>("per_iteration", false)) {
    if (!(eta_min_ >= 0.0))
      config.fail_key("eta_min", fmt::format("must be >= 0, found {}", eta_min_));
    if (config.has("epochs") && epochs_ < 1) {
      config.fail_key("epochs", fmt::format("must be at least 1, found {}", epochs_));
    }
  }
  void setup(const SchedulePlan& plan) override {
    base_ = plan.base_lr;
    period_ = epochs_ > 0 ? epochs_ : plan.epochs;
    iterations_per_epoch_ = std::max<int64_t>(plan.iterations_per_epoch, 1);
  }
  float lr(int64_t epoch, int64_t iteration) override {
    double t = static_cast<double>(epoch);
    if (per_iteration_) {
      t += static_cast<double>(iteration % iterations_per_epoch_) /
           static_cast<double>(iterations_per_epoch_);
    }
    t = std::min(t, static_cast<double>(period_));
    const double cosine = std::cos(std::numbers::pi * t / static_cast<double>(period_));
    return static_cast<float>(eta_min_ + (base_ - eta_min_) * (1.0 + cosine) / 2.0);
  }

 private:
  double eta_min_;
  int64_t epochs_;
  bool per_iteration_;
  double base_ = 0;
  int64_t period_ = 1;
  int64_t iterations_per_epoch_ = 1;
};

class WarmupSchedule final : public Schedule {
 public:
  WarmupSchedule(const Config& config, const Registries& registries)
      : start_factor_(config.get<double>("start_factor", 1.0 / 3.0)) {
    const bool by_epoch = config.has("epochs"), by_iteration = config.has("iterations");
    if (by_epoch == by_iteration) {
      config.fail("warmup needs exactly one of `epochs` and `iterations` (its length)");
    }
    per_iteration_ = by_iteration;
    const char* length_key = by_epoch ? "epochs" : "iterations";
    length_ = config.get<int64_t>(length_key);
    if (length_ < 1)
      config.fail_key(length_key, fmt::format("must be at least 1, found {}", length_));
    if (!(start_factor_ > 0.0 && start_factor_ <= 1.0)) {
      config.fail_key("start_factor", fmt::format("must be in (0, 1], found {}", start_factor_));
    }
    if (auto then = config.find("then")) {
      then_ = registries.schedules.create(*then);
    } else {
      then_ = registries.schedules.create("constant", Config{});
    }
  }
  void setup(const SchedulePlan& plan) override { then_->setup(plan); }
  float lr(int64_t epoch, int64_t iteration) override {
    const int64_t t = std::min(per_iteration_ ? iteration : epoch, length_);
    const double factor = start_factor_ + (1.0 - start_factor_) * static_cast<double>(t) /
                                              static_cast<double>(length_);
    return static_cast<float>(factor * then_->lr(epoch, iteration));
  }
  void on_epoch_end(int64_t epoch, const Metrics& metrics) override {
    then_->on_epoch_end(epoch, metrics);
  }
  std::vector<NamedTensor> state() override {
    std::vector<NamedTensor> result;
    for (NamedTensor& t : then_->state()) result.push_back({"then/" + t.name, t.tensor});
    return result;
  }

 private:
  double start_factor_;
  bool per_iteration_ = false;
  int64_t length_ = 1;
  std::shared_ptr<Schedule> then_;
};

class PlateauSchedule final : public Schedule {
 public:
  explicit PlateauSchedule(const Config& config)
      : config_(config),
        metric_(config.get<std::string>("metric", "val_accuracy")),
        factor_(config.get<double>("factor", 0.1)),
        patience_(config.get<int64_t>("patience", 10)),
        threshold_(config.get<double>("threshold", 1e-4)),
        cooldown_(config.get<int64_t>("cooldown", 0)),
        min_lr_(config.get<double>("min_lr", 0.0)),
        eps_(config.get<double>("eps", 1e-8)) {
    const std::string default_mode = metric_.find("accuracy") != std::string::npos ? "max" : "min";
    const std::string mode = config.get<std::string>("mode", default_mode);
    if (mode != "max" && mode != "min") {
      config.fail_key("mode", fmt::format("expected 'max' or 'min', found '{}'", mode));
    }
    maximize_ = mode == "max";
    const std::string threshold_mode = config.get<std::string>("threshold_mode", "rel");
    if (threshold_mode != "rel" && threshold_mode != "abs") {
      config.fail_key("threshold_mode",
                      fmt::format("expected 'rel' or 'abs', found '{}'", threshold_mode));
    }
    relative_ = threshold_mode == "rel";
    if (!(factor_ > 0.0 && factor_ < 1.0)) {
      config.fail_key("factor", fmt::format("must be in (0, 1), found {}", factor_));
    }
    if (patience_ < 0)
      config.fail_key("patience", fmt::format("must be >= 0, found {}", patience_));
    if (cooldown_ < 0)
      config.fail_key("cooldown", fmt::format("must be >= 0, found {}", cooldown_));
    if (!(threshold_ >= 0.0))
      config.fail_key("threshold", fmt::format("must be >= 0, found {}", threshold_));
    if (!(min_lr_ >= 0.0))
      config.fail_key("min_lr", fmt::format("must be >= 0, found {}", min_lr_));
    if (!(eps_ >= 0.0)) config.fail_key("eps", fmt::format("must be >= 0, found {}", eps_));
  }

  void setup(const SchedulePlan& plan) override {
    if (std::find(plan.metrics.begin(), plan.metrics.end(), metric_) == plan.metrics.end()) {
      const bool validation = metric_.starts_with("val_");
      config_.fail_key(
          "metric", fmt::format("this run reports no metric '{}'{}\n  {}", metric_,
                                validation ? " (validation metrics need data.validation > 0)" : "",
                                suggestion_text(metric_, plan.metrics, "metrics")));
    }
    lr_.data()[0] = plan.base_lr;
    best_.data()[0] = maximize_ ? -std::numeric_limits<float>::infinity()
                                : std::numeric_limits<float>::infinity();
    bad_epochs_.data()[0] = 0;
    cooldown_counter_.data()[0] = 0;
  }

  float lr(int64_t, int64_t) override { return lr_.data()[0]; }

  void on_epoch_end(int64_t, const Metrics& metrics) override {
    auto it = metrics.find(metric_);
    if (it == metrics.end()) fail("plateau schedule: the epoch reported no metric '{}'", metric_);
    const auto current = static_cast<float>(it->second);
    float& best = best_.data()[0];
    float& bad = bad_epochs_.data()[0];
    float& cooldown = cooldown_counter_.data()[0];
    if (better(current, best)) {
      best = current;
      bad = 0;
    } else {
      bad += 1;
    }
    if (cooldown > 0) {
      cooldown -= 1;
      bad = 0;  // bad epochs in cooldown do not count
    }
    if (bad > static_cast<float>(patience_)) {
      const double old_lr = lr_.data()[0];
      const double new_lr = std::max(old_lr * factor_, min_lr_);
      if (old_lr - new_lr > eps_) lr_.data()[0] = static_cast<float>(new_lr);
      cooldown = static_cast<float>(cooldown_);
      bad = 0;
    }
  }

  std::vector<NamedTensor> state() override {
    return {{"best", best_},
            {"num_bad_epochs", bad_epochs_},
            {"cooldown_counter", cooldown_counter_},
            {"lr", lr_}};
  }

 private:
  bool better(double current, double best) const {
    if (std::isnan(current)) return false;
    if (relative_) {
      return maximize_ ? current > best * (1.0 + threshold_) : current < best * (1.0 - threshold_);
    }
    return maximize_ ? current > best + threshold_ : current < best - threshold_;
  }

  Config config_;
  std::string metric_;
  double factor_;
  int64_t patience_;
  double threshold_;
  int64_t cooldown_;
  double min_lr_;
  double eps_;
  bool maximize_ = true;
  bool relative_ = true;
  Tensor best_{Shape{}}, bad_epochs_{Shape{}}, cooldown_counter_{Shape{}}, lr_{Shape{}};
};

void register_all(Registries& registries) {
  registries.schedules.add<ConstantSchedule>("constant");
  registries.schedules.declare_default("constant");  // an optimizer without `schedule`
  registries.schedules.add<StepSchedule>("step");
  registries.schedules.add<MultiStepSchedule>("multistep");
  registries.schedules.add<ExponentialSchedule>("exponential");
  registries.schedules.add<CosineSchedule>("cosine");
  registries.schedules.add<PlateauSchedule>("plateau");
  // warmup builds the schedule it wraps through the registries, which outlive every schedule.
  const Registries* all = &registries;
  registries.schedules.add("warmup", [all](const Config& config) -> std::unique_ptr<Schedule> {
    return std::make_unique<WarmupSchedule>(config, *all);
  });
}

}  // namespace

}  // namespace strata::schedules

STRATA_PLUGIN("schedules", "1.0", strata::schedules::register_all)
