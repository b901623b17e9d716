// strata/training/trainer.hpp: one experiment file, end to end.
//
// Reads every section of the experiment up front (so a typo anywhere fails before any work),
// loads and preprocesses the data, builds the model, and trains: epochs of shuffled mini-batches,
// evaluation on the validation split after each epoch and on the test split at the end, a
// progress display, an atomic checkpoint every `checkpoint.every` epochs, and summary.json.
// Training batches come from a prefetching, augmenting TrainingLoader (strata/training/data_loader.hpp).
// Babysitting (docs/training.md): the initial loss beside its chance value, per-iteration loss in
// the history, per-layer diagnostics, `train.overfit`, early stopping and best.h5. A NaN or
// infinite loss, or one above train.explode_factor x the initial loss, stops training with an
// Error naming the iteration, before the step and without saving; a non-finite validation loss,
// weight or optimizer state stops it at the end of the epoch, before the save, so a diverged model
// never replaces the last good checkpoint.
// With `resume`, a run continues from the checkpoint in its output folder, which must exist, must
// have been written by the same experiment (apart from the keys resume_may_change() allows, unless
// `force`), and must hold a whole training state (docs/checkpoint-format.md, "Resuming").
#pragma once

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "strata/communicator.hpp"
#include "strata/config.hpp"
#include "strata/dataset.hpp"
#include "strata/registry.hpp"
#include "strata/training/experiment.hpp"
#include "strata/training/hooks.hpp"

namespace strata {

// Under MPI: an Error that every rank of the job throws alike (one rank's data error, a loss that
// diverged: the ranks agree on them, docs/distributed.md), so each rank may end normally. Any
// other exception leaving train_experiment on one rank must end the whole job
// (Communicator::abort): the other ranks would wait for it in their next collective.
class JobError : public Error {
 public:
  using Error::Error;
};

// What one training step measured (for TrainOptions::on_iteration).
struct IterationReport {
  int64_t epoch = 0;      // 1-based
  int64_t iteration = 0;  // 1-based count of optimizer steps, over the whole run
  double loss = 0;        // the batch's loss, before the NaN/Inf check
};

struct TrainOptions {
  std::filesystem::path out_dir;  // receives model.h5 and summary.json
  bool resume = false;            // continue from out_dir/model.h5 (an error when there is none)
  bool force = false;             // resume even when the experiment differs from the checkpoint's
  // A new run (no `resume`) refuses a folder that holds a run (model.h5, best.h5 or summary.json)
  // unless `overwrite`: then those files are deleted once the data is loaded, before training.
  bool overwrite = false;
  bool allow_nonfinite = false;   // resume from a checkpoint holding NaN or infinite values
  // Fine-tuning: start a new run from this checkpoint's /model tensors, matched by layer and
  // parameter name. Every tensor of the model must be there with its shape, and nothing else,
  // unless `weights_partial`, which loads what matches and lists what it skipped.
  std::filesystem::path weights;
  bool weights_partial = false;
  std::string progress = "auto";  // auto (bar on a terminal, lines otherwise), bar, lines, none
  bool quiet = false;  // print nothing at all (trials of `strata search` run side by side)
  // Read and check the whole experiment and build the model, then return an empty summary
  // without loading data or writing anything (`strata search` checks a trial before running any).
  bool validate_only = false;
  // Called after every training step's forward pass, before its loss is checked for NaN. It may
  // throw to abort the run (the search's explosion abort); the exception propagates unchanged.
  std::function<void(const IterationReport&)> on_iteration;
  // When set and it becomes true (`strata train`'s SIGINT/SIGTERM handler sets it), the run stops
  // at the next step boundary: it saves a resumable checkpoint of that point (in the middle of an
  // epoch: TrainingState::partial), skips the test evaluation and summary.json, and returns with
  // TrainSummary::interrupted set. A resume from it ends bit-identical to an uninterrupted run.
  const std::atomic<bool>* stop = nullptr;
  // The ranks of an MPI job (data-parallel training, docs/distributed.md); null: one process.
  Communicator* communicator = nullptr;
  // More hooks (strata/training/hooks.hpp), called after the built-in ones at every event.
  std::vector<std::shared_ptr<TrainingHook>> hooks;
};

// One line of the history: what a finished epoch measured.
struct EpochReport {
  int64_t epoch = 0;  // 1-based
  int64_t epochs = 0;
  double train_loss = 0, train_accuracy = 0;  // data loss (mean over the epoch's batches)
  double train_regularization = 0;            // the optimizer's regularization term at the end
  double val_loss = 0, val_accuracy = 0;  // NaN without a validation split
  double lr = 0;
  double seconds = 0;
  double images_per_second = 0;
  int64_t skipped_images = 0;  // bad training images skipped this epoch (data.on_bad_image: skip)
};

// Where this invocation's time went, in seconds (a resumed run counts from its resume). `steps` is
// the work of the training steps themselves: forward, loss, backward, clipping, the optimizer
// step (and under MPI the agreements and gradient sums). The rest is the loop's overhead: waiting
// for the next batch, the hooks at every step (guards, diagnostics, progress), validation, the
// test evaluation, and the ends of epochs (checkpoints, best.h5, the epoch hooks).
struct LoopTime {
  double steps = 0;
  double data = 0;
  double step_hooks = 0;
  double validation = 0;
  double test = 0;
  double epoch_ends = 0;
  double overhead() const { return data + step_hooks + validation + test + epoch_ends; }
  // The overhead as a fraction of the steps' time (0 when no step ran).
  double overhead_fraction() const { return steps > 0 ? overhead() / steps : 0.0; }
};

struct TrainSummary {
  double test_accuracy = 0;
  double test_loss = 0;
  int64_t epochs = 0;
  double train_seconds = 0;
  double train_images_per_second = 0;
  std::filesystem::path checkpoint;
  std::filesystem::path summary;
  double initial_loss = 0;                  // before any step (sanity check)
  bool stopped_early = false;               // train.early_stopping ended the run
  int64_t best_epoch = 0;                   // of checkpoint.best's metric; 0 without one
  double best_value = 0;
  std::filesystem::path best_checkpoint;    // best.h5, empty when none was written
  bool interrupted = false;  // TrainOptions::stop ended the run; `checkpoint` holds where
  int64_t iterations = 0;    // optimizer steps taken, over the whole run
  // Under MPI (docs/distributed.md): the ranks, and per step of this process's run the seconds
  // the loop waited for the other ranks (agreements and gradient sums that backward did not
  // hide) and the gradient bytes each rank summed.
  int ranks = 1;
  double communication_seconds_per_step = 0;
  int64_t gradient_bytes_per_step = 0;
  LoopTime time;
};


// Trains the experiment described by `experiment` (a parsed file, with --set overrides applied).
// `on_epoch`, when set, is called after every epoch (after the checkpoint is written); it may
// throw to stop the run there, and the exception propagates unchanged.
TrainSummary train_experiment(const Config& experiment, const Registries& registries,
                              const TrainOptions& options,
                              const std::function<void(const EpochReport&)>& on_epoch = {});

}  // namespace strata
