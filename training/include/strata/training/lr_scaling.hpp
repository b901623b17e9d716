// strata/training/lr_scaling.hpp: optimizer.lr_scaling, the learning-rate rule for a large batch.
//
// WHAT THIS REPRESENTS
//   The rule of Goyal et al. 2017 ("Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour"):
//   when the batch is k times a reference batch, the learning rate is k times the one tuned for
//   the reference (linear scaling), reached by a linear ramp over the first epochs (gradual
//   warmup). An experiment asks for it explicitly; nothing scales a rate otherwise.
//
//     optimizer:
//       lr: 0.1                     # the rate tuned for reference_batch
//       lr_scaling: {rule: linear, reference_batch: 256, warmup_epochs: 5}
//     train: {batch_size: 1024}     # the global batch (under MPI: all ranks together)
//
//   k = train.batch_size / reference_batch, lr_peak = optimizer.lr * k. The optimizer's schedule
//   is set up with lr_peak as its base rate (SchedulePlan::base_lr), so every schedule's
//   multiplier applies to lr_peak. Over the first W = warmup_epochs * (steps per epoch)
//   iterations the rate is f(i) * schedule(i), f rising linearly from 1/k at iteration 0 to 1 at
//   iteration W (per iteration, as Goyal et al. do): with a schedule that stays at its base
//   during the warmup (constant, step, multistep: the paper's setting), the rate goes from
//   optimizer.lr to lr_peak. The schedule counts from the start of the run, as under the
//   `warmup` schedule type. When k <= 1 the rate is not raised and there is no ramp
//   (f = 1): only the scaling applies.
//   train.batch_size is the global batch under MPI, so the rule does not depend on the number
//   of ranks.
//
// KEYS (all required: the rule is never applied by default)
//   rule             linear (the only rule so far)
//   reference_batch  >= 1: the batch that optimizer.lr was tuned for (256 in Goyal et al.)
//   warmup_epochs    >= 0, whole epochs; 0: no warmup. Cannot be combined with a schedule of
//                    type `warmup` (two ramps would multiply); longer than the run is allowed
//                    (a short smoke run), and `strata train` says so.
//
// ENSURES
//   - Errors point at the key (file:line:column key path) and say what was expected.
//   - The schedule's state (checkpoint /schedule) is the wrapped schedule's, unchanged.
//   - The keys may not change on --resume (resume_may_change): they change the rates of the
//     run.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "strata/config.hpp"
#include "strata/optimizer.hpp"

namespace strata {

struct LrScaling {
  std::string rule = "linear";
  int64_t reference_batch = 0;
  int64_t warmup_epochs = 0;
  int64_t batch_size = 0;  // train.batch_size, the global batch

  // optimizer.lr_scaling, when given; `optimizer` is the optimizer's section, `batch_size`
  // train.batch_size. `schedule_type` is optimizer.schedule's type (a warmup is refused beside
  // warmup_epochs > 0).
  static std::optional<LrScaling> read(const Config& optimizer, int64_t batch_size,
                                       const std::string& schedule_type);

  double factor() const;  // k = batch_size / reference_batch
  float peak_lr(float base_lr) const;
  // The line `strata train` prints: "lr scaling (linear, Goyal et al. 2017): global batch 1024 /
  // reference 256: lr 0.1 -> 0.4, warmed up over 5 epochs".
  std::string describe(float base_lr, int64_t epochs) const;
};

// `schedule` with the scaling and the warmup above in front of it.
std::shared_ptr<Schedule> scaled_schedule(const LrScaling& scaling,
                                          std::shared_ptr<Schedule> schedule);

}  // namespace strata
