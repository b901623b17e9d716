// The divergence and explosion guards. A NaN or infinite batch loss, or one above
// train.explode_factor x the initial loss, stops the run before that step touches the weights; a
// non-finite validation loss, weight or optimizer state stops it at the end of the epoch, before
// the checkpoint hook saves, so a diverged model never replaces the last good checkpoint.
#include <cmath>

#include "loop.hpp"
#include "strata/error.hpp"
#include "strata/graph.hpp"
#include "strata/training/checks.hpp"

namespace strata::training_loop {

namespace {

class DivergenceGuard : public TrainingHook {
 public:
  explicit DivergenceGuard(Run& run) : run_(run) {}

  void on_loss(const StepEvent& e) override {
    const double factor = run_.experiment.train.explode_factor;
    const float loss = static_cast<float>(e.loss);
    const bool exploded = factor > 0 && loss > factor * run_.initial_loss;
    if (std::isfinite(loss) && !exploded) return;
    const std::string what = exploded ? fmt::format(
                                            "the loss {:.4g} exceeds {} x the initial loss {:.4g} "
                                            "(train.explode_factor)",
                                            loss, factor, run_.initial_loss)
                                      : fmt::format("the loss is {}", number_text(loss));
    fail(
        "training diverged at iteration {} (epoch {}, step {} of {}, learning rate {:.4g}): "
        "{}; {}. Stopped without saving: {}",
        e.iteration, e.epoch, e.step, e.steps, static_cast<float>(e.lr), what,
        run_.experiment.divergence_advice,
        kept_checkpoint_text(run_.checkpoint_path, run_.saved_epoch));
  }

  void on_epoch_end(const EpochReport& r) override {
    check_not_diverged(r.epoch, r.train_loss, r.val_loss, run_.validation_images > 0,
                       run_.experiment.graph->state_tensors(), run_.experiment.optimizer->state(),
                       run_.checkpoint_path, run_.saved_epoch, run_.experiment.divergence_advice);
  }

 private:
  Run& run_;
};

}  // namespace

std::shared_ptr<TrainingHook> divergence_guard_hook(Run& run) {
  return std::make_shared<DivergenceGuard>(run);
}

}  // namespace strata::training_loop
