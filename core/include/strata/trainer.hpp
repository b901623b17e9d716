// strata/trainer.hpp: one experiment file, end to end.
//
// Reads every section of the experiment up front (so a typo anywhere fails before any work),
// loads and preprocesses the data, builds the model, and trains: epochs of shuffled mini-batches,
// evaluation on the validation split after each epoch and on the test split at the end, a
// progress display, an atomic checkpoint every `checkpoint.every` epochs, and summary.json.
// A NaN or infinite loss stops training with an Error naming the epoch and iteration; a
// non-finite validation loss, weight or optimizer state stops it at the end of the epoch, before
// the save, so a diverged model never replaces the last good checkpoint.
// With `resume`, a run continues from the checkpoint in its output folder, which must exist, must
// have been written by the same experiment (apart from the keys resume_may_change() allows, unless
// `force`), and must hold a whole training state (docs/checkpoint-format.md, "Resuming").
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>

#include "strata/config.hpp"
#include "strata/registry.hpp"

namespace strata {

struct TrainOptions {
  std::filesystem::path out_dir;  // receives model.h5 and summary.json
  bool resume = false;            // continue from out_dir/model.h5 (an error when there is none)
  bool force = false;             // resume even when the experiment differs from the checkpoint's
  bool allow_nonfinite = false;   // resume from a checkpoint holding NaN or infinite values
  std::string progress = "auto";  // auto (bar on a terminal, lines otherwise), bar, lines, none
};

// One line of the history: what a finished epoch measured.
struct EpochReport {
  int64_t epoch = 0;  // 1-based
  int64_t epochs = 0;
  double train_loss = 0, train_accuracy = 0;
  double val_loss = 0, val_accuracy = 0;  // NaN without a validation split
  double lr = 0;
  double seconds = 0;
  double images_per_second = 0;
};

struct TrainSummary {
  double test_accuracy = 0;
  double test_loss = 0;
  int64_t epochs = 0;
  double train_seconds = 0;
  double train_images_per_second = 0;
  std::filesystem::path checkpoint;
  std::filesystem::path summary;
};

// Trains the experiment described by `experiment` (a parsed file, with --set overrides applied).
// `on_epoch`, when set, is called after every epoch (after the checkpoint is written).
TrainSummary train_experiment(const Config& experiment, const Registries& registries,
                              const TrainOptions& options,
                              const std::function<void(const EpochReport&)>& on_epoch = {});

}  // namespace strata
