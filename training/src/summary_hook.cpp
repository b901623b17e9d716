// summary.json: what a finished run measured, written atomically at its end (not when it was
// interrupted). Keys are in docs/experiment-file.md; non-finite numbers are written as null.
#include <cmath>
#include <nlohmann/json.hpp>

#include "loop.hpp"
#include "strata/error.hpp"
#include "strata/files.hpp"
#include "strata/graph.hpp"

namespace strata::training_loop {

namespace {

nlohmann::ordered_json number(double value) {
  if (!std::isfinite(value)) return nullptr;
  return value;
}

// What the graph holds: outputs, the gradient arena, parameters and their gradients.
int64_t model_bytes(const Graph& graph) {
  const Graph::Memory held = graph.held();
  return held.outputs + held.gradients + held.parameters;
}

class SummaryWriter : public TrainingHook {
 public:
  explicit SummaryWriter(Run& run) : run_(run) {}

  void on_run_end(const RunEndEvent& e) override {
    if (e.interrupted || !run_.writes_files()) return;
    TrainSummary& summary = e.summary;
    summary.summary = run_.options.out_dir / "summary.json";
    const Experiment& experiment = run_.experiment;
    nlohmann::ordered_json history = nlohmann::ordered_json::object();
    for (const auto& [metric, values] : run_.state.history) {
      nlohmann::ordered_json series = nlohmann::ordered_json::array();
      for (double value : values) series.push_back(number(value));
      history[metric] = std::move(series);
    }
    const nlohmann::ordered_json json = {
        {"test_accuracy", number(summary.test_accuracy)},
        {"test_loss", number(summary.test_loss)},
        {"epochs", summary.epochs},
        {"train_seconds", number(summary.train_seconds)},
        {"train_images_per_second", number(summary.train_images_per_second)},
        {"parameters", experiment.graph->num_parameters()},
        {"train_images", run_.train_images},
        {"validation_images", run_.validation_images},
        {"test_images", run_.test_images},
        {"backend", experiment.backend_name},
        {"threads", experiment.backend->threads()},
        {"batch_size", experiment.train.batch_size},
        {"checkpoint", summary.checkpoint.string()},
        {"initial_loss", number(summary.initial_loss)},
        {"stopped_early", summary.stopped_early},
        {"best_metric", experiment.checkpoint.best_metric},
        {"best_epoch", summary.best_epoch},
        {"best_value", number(summary.best_value)},
        {"best_checkpoint", summary.best_checkpoint.string()},
        {"ranks", summary.ranks},
        {"communication_seconds_per_step", number(summary.communication_seconds_per_step)},
        {"gradient_bytes_per_step", summary.gradient_bytes_per_step},
        {"peak_memory_bytes", peak_resident_bytes()},
        {"memory_before_model_bytes", run_.resident_before_model},
        {"model_memory_bytes", model_bytes(*experiment.graph)},
        {"time",
         {{"steps", number(summary.time.steps)},
          {"data", number(summary.time.data)},
          {"step_hooks", number(summary.time.step_hooks)},
          {"validation", number(summary.time.validation)},
          {"test", number(summary.time.test)},
          {"epoch_ends", number(summary.time.epoch_ends)},
          {"overhead_fraction", number(summary.time.overhead_fraction())}}},
        {"history", std::move(history)}};
    try {
      write_file_atomically(
          summary.summary,
          json.dump(2, ' ', false, nlohmann::ordered_json::error_handler_t::replace) + "\n");
    } catch (const Error& error) {
      fail("{} (the run itself finished: test accuracy {:.4f}, loss {:.4f}; checkpoint {})",
           error.what(), summary.test_accuracy, summary.test_loss, summary.checkpoint.string());
    }
  }

 private:
  Run& run_;
};

}  // namespace

std::shared_ptr<TrainingHook> summary_hook(Run& run) {
  return std::make_shared<SummaryWriter>(run);
}

}  // namespace strata::training_loop
