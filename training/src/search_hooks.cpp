// The callbacks `strata search` passes (TrainOptions::on_iteration and train_experiment's
// on_epoch), as hooks: the search's explosion abort sees each step's loss before the trainer's own
// guards, and its ASHA pause sees each epoch once it is saved and reported.
#include <utility>

#include "loop.hpp"

namespace strata::training_loop {

namespace {

class IterationCallback : public TrainingHook {
 public:
  explicit IterationCallback(std::function<void(const IterationReport&)> callback)
      : callback_(std::move(callback)) {}
  void on_loss(const StepEvent& e) override { callback_({e.epoch, e.iteration, e.loss}); }

 private:
  std::function<void(const IterationReport&)> callback_;
};

class EpochCallback : public TrainingHook {
 public:
  explicit EpochCallback(std::function<void(const EpochReport&)> callback)
      : callback_(std::move(callback)) {}
  void on_epoch_end(const EpochReport& report) override { callback_(report); }

 private:
  std::function<void(const EpochReport&)> callback_;
};

}  // namespace

std::shared_ptr<TrainingHook> iteration_callback_hook(
    std::function<void(const IterationReport&)> on_iteration) {
  if (!on_iteration) return nullptr;
  return std::make_shared<IterationCallback>(std::move(on_iteration));
}

std::shared_ptr<TrainingHook> epoch_callback_hook(
    std::function<void(const EpochReport&)> on_epoch) {
  if (!on_epoch) return nullptr;
  return std::make_shared<EpochCallback>(std::move(on_epoch));
}

}  // namespace strata::training_loop
