// strata/optimizer.hpp: optimizers and learning-rate schedules.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "strata/layer.hpp"

namespace strata {

// A parameter with its checkpoint key ("conv1/weight").
struct ParamRef {
  std::string key;
  Param* param;
};

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  // Called once with every parameter of the model; allocate per-parameter state here.
  virtual void setup(std::span<const ParamRef> params) = 0;
  // One update from the current gradients, at learning rate `lr` (before lr_mult).
  virtual void step(float lr) = 0;
  // The learning rate from the config (`lr`), which schedules scale.
  virtual float base_lr() const = 0;
  // Per-parameter state to checkpoint, named "<param key>/<slot>" ("conv1/weight/momentum").
  virtual std::vector<NamedTensor> state() = 0;
  // The regularization term the update minimizes besides the data loss, reported beside it
  // (the trainer's "regularization"): for an L2 penalty applied as grad += weight_decay *
  // decay_mult * w, that is l2_penalty(params, weight_decay). The default 0 is right only for an
  // optimizer with no such term (decoupled weight decay, as in AdamW, adds none to the loss).
  virtual double regularization_loss() const { return 0.0; }
};

// 0.5 * weight_decay * sum over params of decay_mult * ||w||^2 (in double precision; defined in
// core/src/diagnostics.cpp).
double l2_penalty(std::span<const ParamRef> params, double weight_decay);

// Learning rate as a function of progress. `epoch` counts from 0; `iteration` is global.
class Schedule {
 public:
  virtual ~Schedule() = default;
  virtual float lr(float base_lr, int64_t epoch, int64_t iteration, int64_t iterations_per_epoch) const = 0;
};

}  // namespace strata
