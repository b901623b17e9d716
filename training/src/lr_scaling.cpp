// optimizer.lr_scaling (strata/training/lr_scaling.hpp).
#include "strata/training/lr_scaling.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "strata/error.hpp"

namespace strata {

namespace {

// The schedule with the scaled base rate and the warmup factor in front.
class ScaledSchedule final : public Schedule {
 public:
  ScaledSchedule(LrScaling scaling, std::shared_ptr<Schedule> schedule)
      : scaling_(std::move(scaling)), schedule_(std::move(schedule)) {}

  void setup(const SchedulePlan& plan) override {
    SchedulePlan scaled = plan;
    scaled.base_lr = scaling_.peak_lr(plan.base_lr);
    schedule_->setup(scaled);
    const double k = scaling_.factor();
    warmup_iterations_ = k > 1.0 ? scaling_.warmup_epochs * plan.iterations_per_epoch : 0;
    start_factor_ = 1.0 / k;
  }
  float lr(int64_t epoch, int64_t iteration) override {
    const float rate = schedule_->lr(epoch, iteration);
    if (iteration >= warmup_iterations_) return rate;
    const double factor = start_factor_ + (1.0 - start_factor_) * static_cast<double>(iteration) /
                                              static_cast<double>(warmup_iterations_);
    return static_cast<float>(factor * rate);
  }
  void on_epoch_end(int64_t epoch, const Metrics& metrics) override {
    schedule_->on_epoch_end(epoch, metrics);
  }
  std::vector<NamedTensor> state() override { return schedule_->state(); }

 private:
  LrScaling scaling_;
  std::shared_ptr<Schedule> schedule_;
  int64_t warmup_iterations_ = 0;
  double start_factor_ = 1.0;
};

}  // namespace

std::optional<LrScaling> LrScaling::read(const Config& optimizer, int64_t batch_size,
                                         const std::string& schedule_type) {
  std::optional<Config> config = optimizer.find("lr_scaling");
  if (!config) return std::nullopt;
  if (!config->is_map()) {
    config->fail(
        "expected a map such as {rule: linear, reference_batch: 256, warmup_epochs: 5} "
        "(docs/experiment-file.md)");
  }
  LrScaling scaling;
  scaling.batch_size = batch_size;
  scaling.rule = config->get<std::string>("rule");
  static const std::vector<std::string> kRules = {"linear"};
  if (std::find(kRules.begin(), kRules.end(), scaling.rule) == kRules.end()) {
    config->fail_key("rule", fmt::format("unknown rule '{}'; known: {} (Goyal et al. 2017: the "
                                         "rate grows with the batch)",
                                         scaling.rule, fmt::join(kRules, ", ")));
  }
  scaling.reference_batch = config->get<int64_t>("reference_batch");
  if (scaling.reference_batch < 1) {
    config->fail_key("reference_batch",
                     fmt::format("must be at least 1 (the batch optimizer.lr was tuned for), "
                                 "found {}",
                                 scaling.reference_batch));
  }
  scaling.warmup_epochs = config->get<int64_t>("warmup_epochs");
  if (scaling.warmup_epochs < 0) {
    config->fail_key("warmup_epochs", fmt::format("must be 0 (no warmup) or a number of epochs, "
                                                  "found {}",
                                                  scaling.warmup_epochs));
  }
  if (scaling.warmup_epochs > 0 && schedule_type == "warmup") {
    config->fail_key("warmup_epochs",
                     fmt::format("optimizer.schedule is a `warmup` already, and two ramps would "
                                 "multiply: set warmup_epochs: 0 here, or use the schedule's "
                                 "`then` without its warmup"));
  }
  config->check_unused();
  return scaling;
}

double LrScaling::factor() const {
  return static_cast<double>(batch_size) / static_cast<double>(reference_batch);
}

float LrScaling::peak_lr(float base_lr) const {
  return static_cast<float>(static_cast<double>(base_lr) * factor());
}

std::string LrScaling::describe(float base_lr, int64_t epochs) const {
  std::string line = fmt::format(
      "lr scaling ({}, Goyal et al. 2017): global batch {} / reference "
      "{}: lr {} -> {}",
      rule, batch_size, reference_batch, base_lr, peak_lr(base_lr));
  if (factor() <= 1.0) return line + ", no warmup (the rate is not raised)";
  if (warmup_epochs == 0) return line + ", no warmup";
  line += fmt::format(", warmed up over {} epoch{}", warmup_epochs, warmup_epochs == 1 ? "" : "s");
  if (warmup_epochs > epochs) {
    line += fmt::format(" (longer than this run's {}: the rate stays below {})", epochs,
                        peak_lr(base_lr));
  }
  return line;
}

std::shared_ptr<Schedule> scaled_schedule(const LrScaling& scaling,
                                          std::shared_ptr<Schedule> schedule) {
  return std::make_shared<ScaledSchedule>(scaling, std::move(schedule));
}

}  // namespace strata
