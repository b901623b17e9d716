// rmsprop: torch.optim.RMSprop (PyTorch 1.13), per parameter w with gradient g, with
// lr = lr * lr_mult and wd = weight_decay * decay_mult:
//     g = g + wd * w
//     s = alpha * s + (1 - alpha) * g * g
//     a = alpha * a + (1 - alpha) * g              (centered only)
//     d = sqrt(centered ? s - a * a : s) + eps
//     b = momentum * b + g / d;  w = w - lr * b     (momentum > 0)
//     w = w - lr * g / d                           (momentum = 0)
//   keys: lr (0.01, > 0), alpha (0.99, in [0, 1)), eps (1e-8, >= 0), weight_decay (0, >= 0),
//         momentum (0, in [0, 1)), centered (false)
//   state(): "<param>/square_avg", with momentum "<param>/momentum_buffer", when centered
//            "<param>/grad_avg", and "<param>/step".
#include "common.hpp"

namespace strata::optimizers {

namespace {

class RmsProp final : public PerParameterOptimizer {
 public:
  explicit RmsProp(const Config& config)
      : PerParameterOptimizer("rmsprop", read_checked(config, "lr", 1e-2, is_positive, "positive")),
        alpha_(read_checked(config, "alpha", 0.99, is_probability, "in [0, 1)")),
        eps_(read_checked(config, "eps", 1e-8, is_non_negative, ">= 0")),
        momentum_(read_checked(config, "momentum", 0.0, is_probability, "in [0, 1)")),
        centered_(config.get<bool>("centered", false)) {
    set_weight_decay(read_checked(config, "weight_decay", 0.0, is_non_negative, ">= 0"));
    square_avg_ = add_slot("square_avg");
    if (momentum_ > 0.0) momentum_buffer_ = add_slot("momentum_buffer");
    if (centered_) grad_avg_ = add_slot("grad_avg");
  }

 protected:
  void update(std::size_t p, Param& param, double lr, double weight_decay, float) override {
    const int64_t n = param.value.numel();
    float* w = param.value.data();
    const float* grad = param.grad.data();
    float* s = slot(square_avg_, p);
    float* b = momentum_ > 0.0 ? slot(momentum_buffer_, p) : nullptr;
    float* a = centered_ ? slot(grad_avg_, p) : nullptr;
    const auto alpha = static_cast<float>(alpha_);
    const auto one_minus_alpha = static_cast<float>(1.0 - alpha_);
    const auto eps = static_cast<float>(eps_);
    const auto momentum = static_cast<float>(momentum_);
    const auto decay = static_cast<float>(weight_decay);
    const auto rate = static_cast<float>(lr);
    for (int64_t i = 0; i < n; ++i) {
      float g = grad[i];
      if (weight_decay != 0.0) g += decay * w[i];
      s[i] = s[i] * alpha + one_minus_alpha * g * g;
      float avg;
      if (a != nullptr) {
        a[i] = a[i] * alpha + one_minus_alpha * g;
        avg = std::sqrt(s[i] - a[i] * a[i]);
      } else {
        avg = std::sqrt(s[i]);
      }
      avg += eps;
      if (b != nullptr) {
        b[i] = b[i] * momentum + g / avg;
        w[i] += -rate * b[i];
      } else {
        w[i] += -rate * (g / avg);
      }
    }
  }

 private:
  double alpha_, eps_, momentum_;
  bool centered_;
  std::size_t square_avg_ = 0, momentum_buffer_ = 0, grad_avg_ = 0;
};

}  // namespace

std::unique_ptr<Optimizer> make_rmsprop(const Config& config) {
  return std::make_unique<RmsProp>(config);
}

}  // namespace strata::optimizers
