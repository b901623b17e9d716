// The "sgd" plugin: stochastic gradient descent (the schedules live in the "schedules" plugin).
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
//   A frozen parameter (`freeze: true` on its layer) is skipped: no update, its momentum stays.
//   Errors: "sgd: <param key> has N gradient values for M parameters" (from the base class).

#include <fmt/format.h>

#include <optional>
#include <string>
#include <vector>

#include "strata/config.hpp"
#include "strata/error.hpp"
#include "strata/optimizer.hpp"
#include "strata/plugin.hpp"
#include "strata/registry.hpp"

namespace strata::sgd {

namespace {

// The per-parameter loop, frozen parameters, the multipliers, state() naming and
// regularization_loss() are the runtime's PerParameterOptimizer (strata/optimizer.hpp), as for the
// optimizers plugin; sgd keeps no step counts (torch.optim.SGD has none either).
class Sgd final : public PerParameterOptimizer {
 public:
  explicit Sgd(const Config& config)
      : PerParameterOptimizer("sgd", config.get<double>("lr")),
        momentum_(config.get<double>("momentum", 0.0)),
        nesterov_(config.get<bool>("nesterov", false)),
        weight_decay_(config.get<double>("weight_decay", 0.0)) {
    const double lr = config.get<double>("lr");
    if (!(lr > 0.0)) config.fail_key("lr", fmt::format("must be positive, found {}", lr));
    if (!(momentum_ >= 0.0 && momentum_ < 1.0)) {
      config.fail_key("momentum", fmt::format("must be in [0, 1), found {}", momentum_));
    }
    if (nesterov_ && momentum_ == 0.0) {
      config.fail_key("nesterov", "Nesterov momentum needs momentum > 0");
    }
    if (!(weight_decay_ >= 0.0)) {
      config.fail_key("weight_decay", fmt::format("must be >= 0, found {}", weight_decay_));
    }
    set_weight_decay(weight_decay_);
    no_step_counts();
    if (momentum_ > 0.0) momentum_slot_ = add_slot("momentum");
  }

 protected:
  void update(std::size_t p, Param& param, double lr, double weight_decay, float) override {
    const int64_t n = param.value.numel();
    float* w = param.value.data();
    const float* grad = param.grad.data();
    // lr and lr_mult are floats: their product in double is exact, so rounding it to float gives
    // the float product, bit for bit.
    const auto step_size = static_cast<float>(lr);
    const auto decay = static_cast<float>(weight_decay);
    if (!momentum_slot_) {
      for (int64_t i = 0; i < n; ++i) w[i] -= step_size * (grad[i] + decay * w[i]);
      return;
    }
    const auto mu = static_cast<float>(momentum_);
    float* v = slot(*momentum_slot_, p);
    for (int64_t i = 0; i < n; ++i) {
      const float g = grad[i] + decay * w[i];
      v[i] = mu * v[i] + g;
      w[i] -= step_size * (nesterov_ ? g + mu * v[i] : v[i]);
    }
  }

 private:
  double momentum_;
  bool nesterov_;
  double weight_decay_;
  std::optional<std::size_t> momentum_slot_;  // only with momentum > 0
};

void register_all(Registries& registries) {
  registries.optimizers.add<Sgd>("sgd");
}

}  // namespace

}  // namespace strata::sgd

STRATA_PLUGIN("sgd", "1.0", strata::sgd::register_all)
