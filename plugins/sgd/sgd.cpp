// The "sgd" plugin: stochastic gradient descent and the learning-rate schedules.
//
// sgd — the update of PyTorch's torch.optim.SGD with dampening 0, per parameter w with gradient
// g, multipliers lr_mult and decay_mult from its layer:
//     g = g + weight_decay * decay_mult * w          (L2 regularisation, when weight_decay > 0)
//     v = momentum * v + g                           (when momentum > 0; v starts at 0, so the
//                                                     first step sets v = g, as in PyTorch)
//     d = nesterov ? g + momentum * v : v            (d = g without momentum)
//     w = w - lr * lr_mult * d
//   keys: lr (required, > 0), momentum (0, in [0, 1)), nesterov (false; needs momentum > 0),
//         weight_decay (0, >= 0)
//   state(): one "<param key>/momentum" tensor per parameter when momentum > 0.
//   regularization_loss(): 0.5 * weight_decay * sum decay_mult * ||w||^2, the L2 term whose
//   gradient the update adds.
//
// Schedules, as a function of the epoch (counted from 0):
//   constant  lr = base
//   step      lr = base * gamma^floor(epoch / step_size)   keys: step_size (epochs, required, >=
//   1),
//                                                          gamma (0.1, > 0)
#include <fmt/format.h>

#include <cmath>
#include <string>
#include <vector>

#include "strata/config.hpp"
#include "strata/error.hpp"
#include "strata/optimizer.hpp"
#include "strata/plugin.hpp"
#include "strata/registry.hpp"

namespace strata::sgd {

namespace {

class Sgd final : public Optimizer {
 public:
  explicit Sgd(const Config& config)
      : lr_(config.get<double>("lr")),
        momentum_(config.get<double>("momentum", 0.0)),
        nesterov_(config.get<bool>("nesterov", false)),
        weight_decay_(config.get<double>("weight_decay", 0.0)) {
    if (!(lr_ > 0.0)) config.fail_key("lr", fmt::format("must be positive, found {}", lr_));
    if (!(momentum_ >= 0.0 && momentum_ < 1.0)) {
      config.fail_key("momentum", fmt::format("must be in [0, 1), found {}", momentum_));
    }
    if (nesterov_ && momentum_ == 0.0) {
      config.fail_key("nesterov", "Nesterov momentum needs momentum > 0");
    }
    if (!(weight_decay_ >= 0.0)) {
      config.fail_key("weight_decay", fmt::format("must be >= 0, found {}", weight_decay_));
    }
  }

  void setup(std::span<const ParamRef> params) override {
    params_.assign(params.begin(), params.end());
    velocity_.clear();
    if (momentum_ > 0.0) {
      for (const ParamRef& ref : params_) velocity_.push_back(Tensor(ref.param->value.shape()));
    }
  }

  void step(float lr) override {
    const auto mu = static_cast<float>(momentum_);
    for (std::size_t p = 0; p < params_.size(); ++p) {
      Param& param = *params_[p].param;
      if (param.grad.numel() != param.value.numel()) {
        fail("sgd: {} has {} gradient values for {} parameters", params_[p].key, param.grad.numel(),
             param.value.numel());
      }
      const int64_t n = param.value.numel();
      float* w = param.value.data();
      const float* grad = param.grad.data();
      const float step_size = lr * param.lr_mult;
      const auto decay = static_cast<float>(weight_decay_ * param.decay_mult);
      if (velocity_.empty()) {
        for (int64_t i = 0; i < n; ++i) w[i] -= step_size * (grad[i] + decay * w[i]);
        continue;
      }
      float* v = velocity_[p].data();
      for (int64_t i = 0; i < n; ++i) {
        const float g = grad[i] + decay * w[i];
        v[i] = mu * v[i] + g;
        w[i] -= step_size * (nesterov_ ? g + mu * v[i] : v[i]);
      }
    }
  }

  float base_lr() const override { return static_cast<float>(lr_); }

  double regularization_loss() const override { return l2_penalty(params_, weight_decay_); }

  std::vector<NamedTensor> state() override {
    std::vector<NamedTensor> result;
    for (std::size_t p = 0; p < velocity_.size(); ++p) {
      result.push_back({params_[p].key + "/momentum", velocity_[p]});
    }
    return result;
  }

 private:
  double lr_;
  double momentum_;
  bool nesterov_;
  double weight_decay_;
  std::vector<ParamRef> params_;
  std::vector<Tensor> velocity_;  // parallel to params_, empty without momentum
};

class ConstantSchedule final : public Schedule {
 public:
  explicit ConstantSchedule(const Config&) {}
  float lr(float base_lr, int64_t, int64_t, int64_t) const override { return base_lr; }
};

class StepSchedule final : public Schedule {
 public:
  explicit StepSchedule(const Config& config)
      : step_size_(config.get<int64_t>("step_size")), gamma_(config.get<double>("gamma", 0.1)) {
    if (step_size_ < 1) {
      config.fail_key("step_size", fmt::format("must be at least 1 epoch, found {}", step_size_));
    }
    if (!(gamma_ > 0.0))
      config.fail_key("gamma", fmt::format("must be positive, found {}", gamma_));
  }

  float lr(float base_lr, int64_t epoch, int64_t, int64_t) const override {
    const int64_t decays = epoch / step_size_;
    return static_cast<float>(base_lr * std::pow(gamma_, static_cast<double>(decays)));
  }

 private:
  int64_t step_size_;
  double gamma_;
};

void register_all(Registries& registries) {
  registries.optimizers.add<Sgd>("sgd");
  registries.schedules.add<ConstantSchedule>("constant");
  registries.schedules.add<StepSchedule>("step");
}

}  // namespace

}  // namespace strata::sgd

STRATA_PLUGIN("sgd", "1.0", strata::sgd::register_all)
