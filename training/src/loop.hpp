// training/src/loop.hpp (private): what the training loop and its built-in hooks share.
//
// train_experiment (trainer.cpp) sets up a Run, builds the built-in hooks on it (the factories
// below, one file each) and runs the loop. The hooks read the Run and change only what their
// concern owns: the checkpoint hook `saved_epoch`, early stopping `stopped_early`, the interrupt
// hook `interrupted` and the partial epoch; the loop itself owns `state.epoch`, `state.iteration`
// and the per-epoch history series.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "strata/checkpoint.hpp"
#include "strata/plugin_records.hpp"
#include "strata/training/experiment.hpp"
#include "strata/training/hooks.hpp"
#include "strata/training/trainer.hpp"

namespace strata::training_loop {

class DataParallel;  // data_parallel.hpp

using Clock = std::chrono::steady_clock;

// PartialEpoch::rng_state as this Strata writes it: the epoch's order is drawn from (seed, epoch)
// (epoch_order(), strata/training/data_loader.hpp), not from the generator. An interrupted
// epoch saved with anything else there was shuffled by std::shuffle and cannot be finished in the
// same order (docs/checkpoint-format.md, "An interrupted epoch").
inline constexpr const char* kStreamOrder = "order: strata::Stream(seed, epoch)";

// The per-epoch history series; a resume checks that each holds one value per completed epoch.
inline const std::string kHistorySeries[] = {
    "train_loss", "train_regularization", "train_accuracy",   "val_loss", "val_accuracy",
    "lr",         "epoch_seconds",        "images_per_second"};

// A progress bar redrawn in place on a terminal, or plain lines (at most one every 10 s).
class Progress {
 public:
  Progress(const std::string& mode, int64_t epochs, int64_t steps);
  void step(int64_t epoch, int64_t step, double loss, double accuracy, double images_per_second);
  // A line of its own (a warning, a sanity check), also in bar mode.
  void note(const std::string& text);
  void epoch_done(const EpochReport& report);

 private:
  int64_t epochs_, steps_;
  bool bar_ = false, quiet_ = false;
  Clock::time_point last_ = Clock::now();
};

struct Run {
  Run(Experiment& experiment, const TrainOptions& options)
      : experiment(experiment),
        options(options),
        checkpoint_path(options.out_dir / "model.h5"),
        best_path(options.out_dir / "best.h5") {}

  Experiment& experiment;
  const TrainOptions& options;
  std::filesystem::path checkpoint_path, best_path;
  TrainingState state;  // epoch, iteration, history: what a checkpoint stores
  int64_t steps = 0;    // per epoch
  int64_t train_images = 0, validation_images = 0, test_images = 0;
  double initial_loss = std::numeric_limits<double>::quiet_NaN();
  // The process's resident set before the model's first forward (code, data, parameters): the
  // peak minus this is what training itself took (summary.json; docs/memory.md).
  int64_t resident_before_model = 0;
  int64_t saved_epoch = -1;    // the epoch model.h5 holds; -1: this run has not written one
  bool stopped_early = false;  // train.early_stopping ended the run
  bool interrupted = false;    // TrainOptions::stop ended the run
  std::vector<NamedTensor> preprocess_state;
  std::vector<PluginRecord> plugin_records;
  std::vector<std::string> epoch_notes;  // printed after the epoch's line, then cleared
  Progress* progress = nullptr;
  DataParallel* parallel = nullptr;  // the ranks of an MPI job (a no-op without one)
  int rank = 0;                      // this process's rank; only rank 0 prints and writes files
  // TrainOptions::stop as every rank agrees on it (the loop sets it at every step and epoch end).
  bool stop_requested = false;
  LoopTime time;  // where this invocation's time went (summary.json "time")

  bool writes_files() const { return rank == 0; }
  // A checkpoint of the run as it is now (weights, optimizer, schedule, state, generator); on
  // rank 0 only (the replicas are identical).
  void save(const std::filesystem::path& path);
};

// The built-in hooks, in the order the loop calls them (trainer.cpp, builtin_hooks()).
std::shared_ptr<TrainingHook> iteration_callback_hook(
    std::function<void(const IterationReport&)> on_iteration);  // search_hooks.cpp
std::shared_ptr<TrainingHook> divergence_guard_hook(Run& run);  // guard_hooks.cpp
std::shared_ptr<TrainingHook> diagnostics_hook(Run& run);       // diagnostics_hooks.cpp
std::shared_ptr<TrainingHook> early_stopping_hook(Run& run);    // checkpoint_hooks.cpp
std::shared_ptr<TrainingHook> checkpoint_hook(Run& run);        // checkpoint_hooks.cpp
std::shared_ptr<TrainingHook> progress_hook(Run& run);          // progress.cpp
std::shared_ptr<TrainingHook> epoch_callback_hook(
    std::function<void(const EpochReport&)> on_epoch);   // search_hooks.cpp
std::shared_ptr<TrainingHook> interrupt_hook(Run& run);  // checkpoint_hooks.cpp
std::shared_ptr<TrainingHook> summary_hook(Run& run);    // summary_hook.cpp

}  // namespace strata::training_loop
