// adagrad: torch.optim.Adagrad (PyTorch 1.13, dense gradients), per parameter w with gradient g,
// at step t (its own count, from 1), with lr = lr * lr_mult and wd = weight_decay * decay_mult:
//     g = g + wd * w
//     clr = lr / (1 + (t - 1) * lr_decay)
//     s = s + g * g                                (s starts at initial_accumulator_value)
//     w = w - clr * g / (sqrt(s) + eps)
//   keys: lr (0.01, > 0), lr_decay (0, >= 0), weight_decay (0, >= 0),
//         initial_accumulator_value (0, >= 0), eps (1e-10, >= 0)
//   state(): "<param>/sum" and "<param>/step".
#include "common.hpp"

namespace strata::optimizers {

namespace {

class Adagrad final : public PerParameterOptimizer {
 public:
  explicit Adagrad(const Config& config)
      : PerParameterOptimizer("adagrad", read_checked(config, "lr", 1e-2, is_positive, "positive")),
        lr_decay_(read_checked(config, "lr_decay", 0.0, is_non_negative, ">= 0")),
        eps_(read_checked(config, "eps", 1e-10, is_non_negative, ">= 0")) {
    set_weight_decay(read_checked(config, "weight_decay", 0.0, is_non_negative, ">= 0"));
    const double initial =
        read_checked(config, "initial_accumulator_value", 0.0, is_non_negative, ">= 0");
    sum_ = add_slot("sum", static_cast<float>(initial));
  }

 protected:
  void update(std::size_t p, Param& param, double lr, double weight_decay, float step) override {
    const int64_t n = param.value.numel();
    float* w = param.value.data();
    const float* grad = param.grad.data();
    float* s = slot(sum_, p);
    const auto clr = static_cast<float>(lr / (1.0 + (static_cast<double>(step) - 1.0) * lr_decay_));
    const auto eps = static_cast<float>(eps_);
    const auto decay = static_cast<float>(weight_decay);
    for (int64_t i = 0; i < n; ++i) {
      float g = grad[i];
      if (weight_decay != 0.0) g += decay * w[i];
      s[i] += g * g;
      const float std_dev = std::sqrt(s[i]) + eps;
      w[i] += -clr * (g / std_dev);
    }
  }

 private:
  double lr_decay_, eps_;
  std::size_t sum_ = 0;
};

}  // namespace

std::unique_ptr<Optimizer> make_adagrad(const Config& config) {
  return std::make_unique<Adagrad>(config);
}

}  // namespace strata::optimizers
