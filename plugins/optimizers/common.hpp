// Shared by the optimizers of the "optimizers" plugin: the per-parameter loop, frozen parameters,
// lr_mult/decay_mult, the step counts and the naming of state slots.
#pragma once

#include <fmt/format.h>

#include <cmath>
#include <span>
#include <string>
#include <vector>

#include "strata/config.hpp"
#include "strata/error.hpp"
#include "strata/optimizer.hpp"

namespace strata::optimizers {

// Reads a key with a torch.optim default and checks `ok`, failing with "must be <what>".
inline double read_checked(const Config& config, const char* key, double fallback,
                           bool (*ok)(double), const char* what) {
  const double value = config.get<double>(key, fallback);
  if (!std::isfinite(value) || !ok(value)) {
    config.fail_key(key, fmt::format("must be {}, found {}", what, value));
  }
  return value;
}
inline bool is_positive(double v) { return v > 0.0; }
inline bool is_non_negative(double v) { return v >= 0.0; }
inline bool is_probability(double v) { return v >= 0.0 && v < 1.0; }  // [0, 1)

// Subclasses declare their slots (one tensor per parameter each) and update one parameter at a
// time. For each parameter that is not frozen, step() increments its step count, then calls
// update() with lr * lr_mult and weight_decay * decay_mult, so every optimizer honours the
// multipliers and `freeze` the same way. state() lists, per parameter, the slots in declaration
// order and then "step" (a rank-0 float32 tensor, as torch.optim keeps it).
class PerParameterOptimizer : public Optimizer {
 public:
  PerParameterOptimizer(std::string type, double lr) : type_(std::move(type)), lr_(lr) {}

  void setup(std::span<const ParamRef> params) final {
    params_.assign(params.begin(), params.end());
    steps_.clear();
    for (auto& slot : slots_) slot.tensors.clear();
    for (const ParamRef& ref : params_) {
      steps_.emplace_back(Shape{});
      for (auto& slot : slots_) {
        slot.tensors.emplace_back(ref.param->value.shape());
        slot.tensors.back().fill(slot.initial_value);
      }
    }
  }

  void step(float lr) final {
    for (std::size_t p = 0; p < params_.size(); ++p) {
      Param& param = *params_[p].param;
      if (param.frozen) continue;
      if (param.grad.numel() != param.value.numel()) {
        fail("{}: {} has {} gradient values for {} parameters", type_, params_[p].key,
             param.grad.numel(), param.value.numel());
      }
      float& count = steps_[p].data()[0];
      count += 1.0f;
      update(p, param, static_cast<double>(lr) * param.lr_mult,
             weight_decay_ * static_cast<double>(param.decay_mult), count);
    }
  }

  float base_lr() const final { return static_cast<float>(lr_); }

  // The L2 term whose gradient the update adds (0 for decoupled weight decay, as in adamw, which
  // shrinks the weights directly rather than through the loss).
  double regularization_loss() const final {
    return decay_is_l2_ ? l2_penalty(params_, weight_decay_) : 0.0;
  }

  std::vector<NamedTensor> state() final {
    std::vector<NamedTensor> result;
    for (std::size_t p = 0; p < params_.size(); ++p) {
      for (const auto& slot : slots_) {
        result.push_back({params_[p].key + "/" + slot.name, slot.tensors[p]});
      }
      result.push_back({params_[p].key + "/step", steps_[p]});
    }
    return result;
  }

 protected:
  // Declares a state slot; call from the constructor. Returns its index for slot().
  std::size_t add_slot(std::string name, float initial_value = 0.0f) {
    slots_.push_back({std::move(name), initial_value, {}});
    return slots_.size() - 1;
  }
  float* slot(std::size_t index, std::size_t p) { return slots_[index].tensors[p].data(); }
  // `is_l2`: the decay is added to the gradient (an L2 term of the loss), not decoupled.
  void set_weight_decay(double weight_decay, bool is_l2 = true) {
    weight_decay_ = weight_decay;
    decay_is_l2_ = is_l2;
  }

  // One update of parameter `p` at learning rate `lr` (lr_mult applied) with `weight_decay`
  // (decay_mult applied); `step` is this parameter's step count, 1 on its first update.
  virtual void update(std::size_t p, Param& param, double lr, double weight_decay, float step) = 0;

 private:
  struct Slot {
    std::string name;
    float initial_value;
    std::vector<Tensor> tensors;  // parallel to params_
  };
  std::string type_;
  double lr_;
  double weight_decay_ = 0.0;
  bool decay_is_l2_ = true;
  std::vector<ParamRef> params_;
  std::vector<Tensor> steps_;  // rank 0, parallel to params_
  std::vector<Slot> slots_;
};

}  // namespace strata::optimizers
