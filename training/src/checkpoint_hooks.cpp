// Early stopping, checkpoints and the interrupt save.
//
// - Early stopping (train.early_stopping) looks at the whole history, so a resumed run picks up
//   where the interrupted one was; it ends the run after the epoch that decides it.
// - The checkpoint hook saves model.h5 every checkpoint.every epochs, after the last epoch and
//   after the one early stopping ended on; best.h5 whenever checkpoint.best's metric is at its
//   best; and model.h5 at the end when no epoch saved it (a run of 0 epochs).
// - The interrupt hook honours TrainOptions::stop (Ctrl-C) at a step boundary: it saves a
//   resumable checkpoint of that point (TrainingState::partial in the middle of an epoch) and ends
//   the run. Placed after every other hook, so the search's on_epoch still sees the epoch.
#include <sstream>

#include "loop.hpp"
#include "strata/error.hpp"
#include "strata/graph.hpp"
#include "strata/optimizer.hpp"
#include "strata/training/checks.hpp"
#include "strata/training/diagnostics.hpp"

namespace strata::training_loop {

namespace fs = std::filesystem;

void Run::save(const fs::path& path) {
  if (path == checkpoint_path) saved_epoch = state.epoch;
  if (!writes_files()) return;
  Checkpoint checkpoint;
  checkpoint.model = experiment.graph->state_tensors();
  checkpoint.optimizer = experiment.optimizer->state();
  checkpoint.schedule = experiment.schedule->state();
  checkpoint.preprocess = preprocess_state;
  checkpoint.experiment_yaml = experiment.yaml;
  checkpoint.plugins = plugin_records;
  std::ostringstream rng_text;
  rng_text << experiment.rng;
  state.rng_state = rng_text.str();
  checkpoint.training = state;
  save_checkpoint(path, checkpoint);
}

namespace {

class EarlyStoppingHook : public TrainingHook {
 public:
  explicit EarlyStoppingHook(Run& run) : run_(run) {}

  // A resumed run that early stopping had already ended trains no further.
  void on_run_start(const RunStartEvent&) override {
    if (auto reason = stop_reason()) {
      run_.progress->note(*reason);
      run_.stopped_early = true;
    }
  }

  void on_epoch_end(const EpochReport&) override {
    std::optional<std::string> reason = stop_reason();
    run_.stopped_early = reason.has_value();
    if (reason) run_.epoch_notes.push_back(std::move(*reason));
  }

 private:
  std::optional<std::string> stop_reason() {
    const std::optional<EarlyStopping>& rule = run_.experiment.train.early_stopping;
    if (!rule) return std::nullopt;
    const auto& values = run_.state.history[rule->metric];
    const MetricProgress p =
        metric_progress(values, metric_is_maximized(rule->metric), rule->min_delta);
    if (p.epochs_without_improvement < rule->patience) return std::nullopt;
    return fmt::format(
        "early stopping after epoch {}: {} has not improved by more than {} for {} "
        "epochs (best {:.4f} at epoch {})",
        run_.state.epoch, rule->metric, rule->min_delta, p.epochs_without_improvement, p.best,
        p.best_epoch);
  }

  Run& run_;
};

class CheckpointHook : public TrainingHook {
 public:
  explicit CheckpointHook(Run& run) : run_(run) {}

  void on_epoch_end(const EpochReport&) override {
    const int64_t epoch = run_.state.epoch;
    const int64_t every = run_.experiment.checkpoint.every;
    if ((every > 0 && epoch % every == 0) || epoch == run_.experiment.train.epochs ||
        run_.stopped_early) {
      run_.save(run_.checkpoint_path);
    }
    const std::string& metric = run_.experiment.checkpoint.best_metric;
    if (metric != "none") {
      const MetricProgress best =
          metric_progress(run_.state.history[metric], metric_is_maximized(metric), 0.0);
      if (best.best_epoch == epoch) run_.save(run_.best_path);
    }
  }

  void on_run_end(const RunEndEvent& e) override {
    if (e.interrupted) return;
    if (run_.state.epoch == 0 || (run_.writes_files() && !fs::exists(run_.checkpoint_path))) {
      run_.save(run_.checkpoint_path);
    }
  }

 private:
  Run& run_;
};

class InterruptHook : public TrainingHook {
 public:
  explicit InterruptHook(Run& run) : run_(run) {}

  // The last step's stop request is honoured at the end of the epoch, after its save.
  void on_step(const StepEvent& e) override {
    if (e.step == e.steps || !stop_requested()) return;
    PartialEpoch partial;
    partial.step = e.step;
    partial.rng_state = kStreamOrder;
    partial.loss_sum = e.loss_sum;
    partial.correct = e.correct;
    partial.seen = e.seen;
    partial.seconds = e.seconds;
    run_.state.partial = std::move(partial);
    run_.save(run_.checkpoint_path);
    run_.progress->note(
        fmt::format("interrupted: stopped after iteration {} (epoch {}, step {} of "
                    "{}); {} holds this point",
                    run_.state.iteration, e.epoch, e.step, e.steps, run_.checkpoint_path.string()));
    run_.interrupted = true;
  }

  void on_epoch_end(const EpochReport&) override {
    if (run_.stopped_early || run_.state.epoch >= run_.experiment.train.epochs ||
        !stop_requested()) {
      return;
    }
    if (run_.saved_epoch != run_.state.epoch) run_.save(run_.checkpoint_path);
    run_.progress->note(
        fmt::format("interrupted: stopped after epoch {} (iteration {}); {} holds this "
                    "point",
                    run_.state.epoch, run_.state.iteration, run_.checkpoint_path.string()));
    run_.interrupted = true;
  }

 private:
  bool stop_requested() const { return run_.stop_requested; }

  Run& run_;
};

}  // namespace

std::shared_ptr<TrainingHook> early_stopping_hook(Run& run) {
  return std::make_shared<EarlyStoppingHook>(run);
}
std::shared_ptr<TrainingHook> checkpoint_hook(Run& run) {
  return std::make_shared<CheckpointHook>(run);
}
std::shared_ptr<TrainingHook> interrupt_hook(Run& run) {
  return std::make_shared<InterruptHook>(run);
}

}  // namespace strata::training_loop
