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
};

// Learning rate as a function of progress. `epoch` counts from 0; `iteration` is global.
class Schedule {
 public:
  virtual ~Schedule() = default;
  virtual float lr(float base_lr, int64_t epoch, int64_t iteration, int64_t iterations_per_epoch) const = 0;
};

}  // namespace strata
