// strata/search/runner.hpp: the seam between a search and training: how one trial runs.
//
// WHAT THIS REPRESENTS
//   A TrialRunner trains one trial's experiment and reports each step's loss and each epoch to a
//   TrialMonitor, which the search gives it. The monitor stops the trial (by throwing TrialStop)
//   when it explodes, reaches an ASHA rung or the search is interrupted. `strata search` uses
//   trainer_runner() (train_experiment, through TrainOptions::on_iteration and the on_epoch
//   callback); tests use fake runners.
#pragma once

#include <filesystem>
#include <memory>
#include <string>

#include "strata/config.hpp"
#include "strata/registry.hpp"
#include "strata/search/space.hpp"
#include "strata/training/trainer.hpp"

namespace strata::search {

// Thrown by TrialMonitor to stop a trial; runners must let it pass (it is no std::exception).
struct TrialStop {
  enum Reason { kExploded, kRungReached, kInterrupted } reason;
  std::string message;
};

// What a runner reports while a trial trains. The search decides from it whether to stop.
class TrialMonitor {
 public:
  // After every training step: throws TrialStop{kExploded} when the loss is NaN/Inf or passes
  // explode_factor x the trial's first loss, and TrialStop{kInterrupted} after Ctrl-C.
  virtual void iteration(double loss) = 0;
  // After every epoch (1-based `report.epoch`): records the curves; throws TrialStop{kRungReached}
  // when an ASHA rung's epoch is reached.
  virtual void epoch(const EpochReport& report) = 0;

 protected:
  ~TrialMonitor() = default;
};

struct TrialSpec {
  const Trial* trial = nullptr;
  Config experiment;              // values set, train.epochs set, search section removed
  std::filesystem::path out_dir;  // the trial's own folder (checkpoints)
  bool resume = false;            // continue from out_dir's checkpoint (an ASHA promotion)
};

// The seam between the search and training: `strata search` uses trainer_runner(); tests use
// fake runners whose metric is a known function of the parameters and the epoch.
class TrialRunner {
 public:
  virtual ~TrialRunner() = default;
  // Checks a trial's complete experiment without training; throws Error.
  virtual void validate(const Config& experiment) = 0;
  // Trains; calls monitor.iteration() and monitor.epoch() as it goes. Returning means every epoch
  // of spec.experiment's train.epochs ran. Errors are strata::Error (the trial then "failed").
  virtual void run(const TrialSpec& spec, TrialMonitor& monitor) = 0;
};

// A runner on train_experiment(): quiet, in the calling thread's task arena.
std::unique_ptr<TrialRunner> trainer_runner(const Registries& registries);

}  // namespace strata::search
