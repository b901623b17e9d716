// What strata/optimizer.hpp declares beside the interfaces.
#include "strata/optimizer.hpp"

#include "strata/error.hpp"

namespace strata {

double l2_penalty(std::span<const ParamRef> params, double weight_decay) {
  if (weight_decay == 0) return 0;
  double sum = 0;
  for (const ParamRef& ref : params) {
    if (ref.param->decay_mult == 0.0f) continue;
    double squares = 0;
    for (float v : ref.param->value.span()) squares += static_cast<double>(v) * v;
    sum += ref.param->decay_mult * squares;
  }
  return 0.5 * weight_decay * sum;
}

PerParameterOptimizer::PerParameterOptimizer(std::string type, double lr)
    : type_(std::move(type)), lr_(lr) {}

void PerParameterOptimizer::setup(std::span<const ParamRef> params) {
  params_.assign(params.begin(), params.end());
  steps_.clear();
  for (auto& slot : slots_) slot.tensors.clear();
  for (const ParamRef& ref : params_) {
    if (step_counts_) steps_.emplace_back(Shape{});
    for (auto& slot : slots_) {
      slot.tensors.emplace_back(ref.param->value.shape());
      slot.tensors.back().fill(slot.initial_value);
    }
  }
}

void PerParameterOptimizer::step(float lr) {
  for (std::size_t p = 0; p < params_.size(); ++p) {
    Param& param = *params_[p].param;
    if (param.frozen) continue;
    if (param.grad.numel() != param.value.numel()) {
      fail("{}: {} has {} gradient values for {} parameters", type_, params_[p].key,
           param.grad.numel(), param.value.numel());
    }
    float count = 0.0f;
    if (step_counts_) {
      float& stored = steps_[p].data()[0];
      stored += 1.0f;
      count = stored;
    }
    update(p, param, static_cast<double>(lr) * param.lr_mult,
           weight_decay_ * static_cast<double>(param.decay_mult), count);
  }
}

float PerParameterOptimizer::base_lr() const { return static_cast<float>(lr_); }

double PerParameterOptimizer::regularization_loss() const {
  return decay_is_l2_ ? l2_penalty(params_, weight_decay_) : 0.0;
}

std::vector<NamedTensor> PerParameterOptimizer::state() {
  std::vector<NamedTensor> result;
  for (std::size_t p = 0; p < params_.size(); ++p) {
    for (const auto& slot : slots_) {
      result.push_back({params_[p].key + "/" + slot.name, slot.tensors[p]});
    }
    if (step_counts_) result.push_back({params_[p].key + "/step", steps_[p]});
  }
  return result;
}

std::size_t PerParameterOptimizer::add_slot(std::string name, float initial_value) {
  slots_.push_back({std::move(name), initial_value, {}});
  return slots_.size() - 1;
}

void PerParameterOptimizer::set_weight_decay(double weight_decay, bool is_l2) {
  weight_decay_ = weight_decay;
  decay_is_l2_ = is_l2;
}

}  // namespace strata
