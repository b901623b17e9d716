// strata/optimizer.hpp: optimizers and learning-rate schedules.
//
// One training step: the trainer asks the Schedule for the rate of this iteration, then calls
// Optimizer::step(lr). After each epoch's evaluation it hands the epoch's metrics to
// Schedule::on_epoch_end() (ReduceLROnPlateau-style schedules react to them). Both objects expose
// their state as float32 tensors, which the checkpoint stores (/optimizer and /schedule) and a
// resumed run loads back before its first step, so a resumed run continues bit for bit.
#pragma once

#include <cstdint>
#include <map>
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

// Every optimizer honours, per parameter: Param::frozen (no update, no state change, no step
// count), lr_mult (scales the learning rate) and decay_mult (scales weight_decay).
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
  // The tensors alias the optimizer's own state: loading into them restores it. Step counts are
  // rank-0 tensors (float32, exact up to 2^24 steps), as torch.optim keeps them.
  virtual std::vector<NamedTensor> state() = 0;
  // The regularization term the update minimizes besides the data loss, reported beside it
  // (the trainer's "regularization"): for an L2 penalty applied as grad += weight_decay *
  // decay_mult * w, that is l2_penalty(params, weight_decay). The default 0 is right only for an
  // optimizer with no such term (decoupled weight decay, as in AdamW, adds none to the loss).
  virtual double regularization_loss() const { return 0.0; }
};

// 0.5 * weight_decay * sum over params of decay_mult * ||w||^2 (in double precision; defined in
// core/src/optimizer.cpp).
double l2_penalty(std::span<const ParamRef> params, double weight_decay);

// PerParameterOptimizer: the machinery every in-tree optimizer (sgd, adam, adamw, adagrad,
// rmsprop) shares, for plugin optimizers that update one parameter at a time.
//
// WHAT IT REPRESENTS
//   An Optimizer whose state is a list of named slots (one float32 tensor per parameter each,
//   shaped like the parameter) plus, unless disabled, a step count per parameter. A subclass
//   declares its slots and implements update() for one parameter.
// REQUIRES
//   - add_slot(), set_weight_decay() and no_step_counts() are called from the subclass's
//     constructor, before setup().
//   - every parameter's grad has as many elements as its value, else step() fails naming
//     `type` and the parameter key.
// ENSURES
//   - setup() allocates every slot (filled with its initial value) and a rank-0 step count per
//     parameter.
//   - step(lr) skips frozen parameters (no update, no state change, no step count); for every other
//     parameter it increments the step count, then calls update() with lr * lr_mult and
//     weight_decay * decay_mult (products in double).
//   - state() lists, per parameter in setup() order, "<key>/<slot>" for each slot in declaration
//     order, then "<key>/step" (a rank-0 float32 tensor, as torch.optim keeps it) unless
//     no_step_counts() was called. The tensors alias the optimizer's state.
//   - regularization_loss() is l2_penalty(params, weight_decay) for an L2 decay, 0 for a decoupled
//     one (set_weight_decay(wd, false), as adamw shrinks the weights directly).
class PerParameterOptimizer : public Optimizer {
 public:
  // `type` names the optimizer in errors ("adam"); `lr` is base_lr().
  PerParameterOptimizer(std::string type, double lr);

  void setup(std::span<const ParamRef> params) final;
  void step(float lr) final;
  float base_lr() const final;
  double regularization_loss() const final;
  std::vector<NamedTensor> state() final;

 protected:
  // Declares a state slot; returns its index for slot().
  std::size_t add_slot(std::string name, float initial_value = 0.0f);
  // Slot `index` of parameter `p` (the p-th parameter of setup()), numel() floats.
  float* slot(std::size_t index, std::size_t p) { return slots_[index].tensors[p].data(); }
  // `is_l2`: the decay is added to the gradient (an L2 term of the loss), not decoupled.
  void set_weight_decay(double weight_decay, bool is_l2 = true);
  // Keeps no step counts: state() has no "<key>/step" and update() receives step 0 (sgd, whose
  // update does not depend on the step, as torch.optim.SGD keeps no step either).
  void no_step_counts() { step_counts_ = false; }

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
  bool step_counts_ = true;
  std::vector<ParamRef> params_;
  std::vector<Tensor> steps_;  // rank 0, parallel to params_ (empty without step counts)
  std::vector<Slot> slots_;
};

// What a run looks like, for schedules that span it (cosine) or check metric names (plateau).
struct SchedulePlan {
  float base_lr = 0;                 // the optimizer's `lr`
  int64_t epochs = 0;                // train.epochs
  int64_t iterations_per_epoch = 0;  // optimizer steps per epoch
  std::vector<std::string> metrics;  // names on_epoch_end() will receive
};

// Metric name -> value of one finished epoch: train_loss, train_accuracy, and with a validation
// split val_loss, val_accuracy.
using Metrics = std::map<std::string, double>;

// The learning rate as the run goes on. Schedules may keep state (the current rate, the best
// metric so far); they keep it in float32 so that state() round-trips through a checkpoint
// exactly.
class Schedule {
 public:
  virtual ~Schedule() = default;
  // Once, before the first lr() call and before a resumed run loads state().
  virtual void setup(const SchedulePlan& plan) = 0;
  // The rate for the optimizer step with global 0-based index `iteration`, taken during the
  // 0-based `epoch`. Called once per step, in order.
  virtual float lr(int64_t epoch, int64_t iteration) = 0;
  // After the evaluation that ends the 0-based `epoch`, before the checkpoint is written.
  virtual void on_epoch_end(int64_t /*epoch*/, const Metrics& /*metrics*/) {}
  // State to checkpoint under /schedule ("best", "num_bad_epochs", ...), aliasing the schedule's
  // own storage; empty for schedules that are a function of the epoch and iteration alone.
  virtual std::vector<NamedTensor> state() { return {}; }
};

}  // namespace strata
