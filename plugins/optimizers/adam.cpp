// adam and adamw: torch.optim.Adam and torch.optim.AdamW (the single-tensor code path of
// PyTorch 1.13), per parameter w with gradient g, at step t (its own count, from 1), with
// lr = lr * lr_mult and wd = weight_decay * decay_mult:
//     adam:  g = g + wd * w                           (L2 added to the gradient)
//     adamw: w = w * (1 - lr * wd)                    (decoupled weight decay)
//     m = beta1 * m + (1 - beta1) * g
//     v = beta2 * v + (1 - beta2) * g * g
//     vmax = max(vmax, v)                             (amsgrad only; then v below is vmax)
//     w = w - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
//   keys: lr (0.001, > 0), betas ([0.9, 0.999], each in [0, 1)), eps (1e-8, >= 0),
//         weight_decay (adam 0, adamw 0.01; >= 0), amsgrad (false)
//   state(): "<param>/exp_avg", "<param>/exp_avg_sq", with amsgrad "<param>/max_exp_avg_sq",
//            and "<param>/step" (the names of torch's optimizer state).
#include <algorithm>

#include "common.hpp"

namespace strata::optimizers {

namespace {

class Adam final : public PerParameterOptimizer {
 public:
  Adam(const Config& config, bool decoupled)
      : PerParameterOptimizer(decoupled ? "adamw" : "adam",
                              read_checked(config, "lr", 1e-3, is_positive, "positive")),
        decoupled_(decoupled) {
    const std::vector<double> betas = config.get<std::vector<double>>("betas", {0.9, 0.999});
    if (betas.size() != 2 || !is_probability(betas[0]) || !is_probability(betas[1])) {
      config.fail_key("betas", fmt::format("expected [beta1, beta2], each in [0, 1), found [{}]",
                                           fmt::join(betas, ", ")));
    }
    beta1_ = betas[0];
    beta2_ = betas[1];
    eps_ = read_checked(config, "eps", 1e-8, is_non_negative, ">= 0");
    set_weight_decay(
        read_checked(config, "weight_decay", decoupled ? 1e-2 : 0.0, is_non_negative, ">= 0"),
        /*is_l2=*/!decoupled);
    amsgrad_ = config.get<bool>("amsgrad", false);
    exp_avg_ = add_slot("exp_avg");
    exp_avg_sq_ = add_slot("exp_avg_sq");
    if (amsgrad_) max_exp_avg_sq_ = add_slot("max_exp_avg_sq");
  }

 protected:
  void update(std::size_t p, Param& param, double lr, double weight_decay, float step) override {
    const int64_t n = param.value.numel();
    float* w = param.value.data();
    const float* grad = param.grad.data();
    float* m = slot(exp_avg_, p);
    float* v = slot(exp_avg_sq_, p);
    float* vmax = amsgrad_ ? slot(max_exp_avg_sq_, p) : nullptr;
    const auto beta1 = static_cast<float>(beta1_), beta2 = static_cast<float>(beta2_);
    const auto one_minus_beta1 = static_cast<float>(1.0 - beta1_);
    const auto one_minus_beta2 = static_cast<float>(1.0 - beta2_);
    const double bias_correction1 = 1.0 - std::pow(beta1_, static_cast<double>(step));
    const double bias_correction2 = 1.0 - std::pow(beta2_, static_cast<double>(step));
    const auto step_size = static_cast<float>(lr / bias_correction1);
    const auto bias_correction2_sqrt = static_cast<float>(std::sqrt(bias_correction2));
    const auto eps = static_cast<float>(eps_);
    const auto decay = static_cast<float>(weight_decay);
    const auto shrink = static_cast<float>(1.0 - lr * weight_decay);
    for (int64_t i = 0; i < n; ++i) {
      float g = grad[i];
      if (decoupled_) {
        w[i] *= shrink;
      } else if (weight_decay != 0.0) {
        g += decay * w[i];
      }
      m[i] = m[i] * beta1 + one_minus_beta1 * g;
      v[i] = v[i] * beta2 + one_minus_beta2 * g * g;
      float second = v[i];
      if (vmax != nullptr) {
        vmax[i] = std::max(vmax[i], v[i]);
        second = vmax[i];
      }
      const float denom = std::sqrt(second) / bias_correction2_sqrt + eps;
      w[i] += -step_size * (m[i] / denom);
    }
  }

 private:
  bool decoupled_;
  double beta1_ = 0.9, beta2_ = 0.999, eps_ = 1e-8;
  bool amsgrad_ = false;
  std::size_t exp_avg_ = 0, exp_avg_sq_ = 0, max_exp_avg_sq_ = 0;
};

}  // namespace

std::unique_ptr<Optimizer> make_adam(const Config& config) {
  return std::make_unique<Adam>(config, false);
}
std::unique_ptr<Optimizer> make_adamw(const Config& config) {
  return std::make_unique<Adam>(config, true);
}

}  // namespace strata::optimizers
