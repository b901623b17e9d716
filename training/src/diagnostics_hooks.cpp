// Per-iteration records: every train.log_every steps the loss, regularization, learning rate (and
// gradient norm under train.clipping) go to the history's iterations/ series; every
// train.diagnostics_every steps the per-layer diagnostics (strata/training/diagnostics.hpp) go to
// its diagnostics/ series, and their warnings are printed once at the end of the epoch.
#include "loop.hpp"
#include "strata/graph.hpp"
#include "strata/training/diagnostics.hpp"

namespace strata::training_loop {

namespace {

class DiagnosticsHook : public TrainingHook {
 public:
  explicit DiagnosticsHook(Run& run) : run_(run), diagnostics_(*run.experiment.graph) {}

  // The activations are measured during the forward of a measured step: armed before it.
  void on_run_start(const RunStartEvent& e) override {
    diagnostics_.watch_forward(measures(e.iteration + 1));
  }

  void on_gradients(const StepEvent& e) override {
    measuring_ = measures(e.iteration);
    if (measuring_) diagnostics_.before_step();
  }

  void on_step(const StepEvent& e) override {
    auto& history = run_.state.history;
    if (measuring_) {
      const std::vector<LayerDiagnostics> results = diagnostics_.after_step();
      record_diagnostics(history, e.iteration, results);
      summary_.add(results);
    }
    diagnostics_.watch_forward(measures(e.iteration + 1));
    const int64_t log_every = run_.experiment.train.log_every;
    if (log_every > 0 && e.iteration % log_every == 0) {
      history["iterations/iteration"].push_back(static_cast<double>(e.iteration));
      history["iterations/loss"].push_back(e.loss);
      history["iterations/regularization"].push_back(
          run_.experiment.optimizer->regularization_loss());
      history["iterations/lr"].push_back(e.lr);
      if (run_.experiment.train.clipping.enabled()) {
        history["iterations/grad_norm"].push_back(e.grad_norm);
      }
    }
  }

  // Whether the step with this (1-based) iteration is measured: every train.diagnostics_every.
  bool measures(int64_t iteration) const {
    const int64_t every = run_.experiment.train.diagnostics_every;
    return every > 0 && iteration % every == 0;
  }

  void on_epoch_end(const EpochReport& report) override {
    for (std::string& line : summary_.take_lines(report.epoch)) {
      run_.epoch_notes.push_back(std::move(line));
    }
  }

 private:
  Run& run_;
  StepDiagnostics diagnostics_;
  DiagnosticsSummary summary_;  // the epoch's warnings
  bool measuring_ = false;
};

}  // namespace

std::shared_ptr<TrainingHook> diagnostics_hook(Run& run) {
  return std::make_shared<DiagnosticsHook>(run);
}

}  // namespace strata::training_loop
