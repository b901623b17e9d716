// strata/training/hooks.hpp: what the training loop tells the code around it.
//
// train_experiment (strata/training/trainer.hpp) is a short loop over epochs and steps; everything
// else a run does (the progress display, per-iteration diagnostics, the divergence and explosion
// guards, early stopping, checkpoints and best.h5, summary.json, and the callbacks of
// `strata search`) is a TrainingHook that the loop calls at fixed points of each step and epoch.
// Hooks run in the order they were added; the built-in ones first, then TrainOptions::hooks.
//
// One step, with the event after each part:
//   batch = the epoch's next batch                 (the data seam: TrainingLoader today)
//   forward(batch), loss and its gradient       -> on_loss       (may throw: the step is not taken)
//   backward                                    -> on_backward   (where an MPI gradient reduction
//                                                                 goes: the gradients are whole)
//   clip the gradients (train.clipping)         -> on_gradients  (just before the update)
//   optimizer step                              -> on_step
// Then, once per epoch, after the validation evaluation and the history is recorded: on_epoch_end.
// on_run_start comes before the first step (after a resume is restored and the initial loss is
// measured); on_run_end once training stops, also when it was interrupted (not when a hook threw).
//
// A hook may throw (an Error, or the search's own abort): the exception leaves train_experiment
// unchanged, and no later hook sees that event.
#pragma once

#include <cstdint>

namespace strata {

struct EpochReport;   // strata/training/trainer.hpp
struct TrainSummary;  // strata/training/trainer.hpp

// Before the first step.
struct RunStartEvent {
  int64_t epochs = 0;           // train.epochs
  int64_t steps_per_epoch = 0;  // optimizer steps (batches) per epoch
  int64_t epoch = 0;            // epochs already done (> 0 after a resume)
  int64_t iteration = 0;        // optimizer steps already taken
  double initial_loss = 0;      // the loss before any step (NaN when it was not measured)
};

// One training step. The running totals cover the epoch up to and including this step (from an
// interrupted epoch's start, when it resumed); before on_step they do not count this step yet.
struct StepEvent {
  int64_t epoch = 0;      // 1-based
  int64_t step = 0;       // 1-based, within the epoch
  int64_t steps = 0;      // steps in the epoch
  int64_t iteration = 0;  // 1-based: this step's optimizer step, over the whole run
  int64_t images = 0;     // in the batch
  double lr = 0;          // the learning rate of this step
  double loss = 0;        // the batch's data loss
  double grad_norm = 0;   // the gradient norm before clipping (0 without train.clipping)
  double loss_sum = 0;    // sum of batch loss x batch size
  int64_t correct = 0;    // training predictions right
  int64_t seen = 0;       // images seen
  double seconds = 0;     // time spent in the epoch's steps
};

// After training, before train_experiment returns. `summary` may be completed by hooks (the
// summary writer sets `summary.summary`).
struct RunEndEvent {
  TrainSummary& summary;
  bool interrupted = false;  // TrainOptions::stop ended the run (no test evaluation was done)
};

class TrainingHook {
 public:
  virtual ~TrainingHook() = default;
  virtual void on_run_start(const RunStartEvent&) {}
  virtual void on_loss(const StepEvent&) {}
  virtual void on_backward(const StepEvent&) {}
  virtual void on_gradients(const StepEvent&) {}
  virtual void on_step(const StepEvent&) {}
  virtual void on_epoch_end(const EpochReport&) {}
  virtual void on_run_end(const RunEndEvent&) {}
};

}  // namespace strata
