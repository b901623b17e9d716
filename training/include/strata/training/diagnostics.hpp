// strata/training/diagnostics.hpp: watching a training run (CS231n's "babysitting the learning process").
//
// Per-layer health measured on one training step (layers with parameters, and activations with
// dead units: Layer::has_dead_units(), relu):
//   update_ratio     ||w_after - w_before|| / ||w_before||, over all the layer's parameters taken
//                    together (so a bias that starts at zero does not divide by zero). This is
//                    ||lr * update|| / ||w|| with everything the optimizer applied (momentum,
//                    weight decay). Healthy is about 1e-3; parameters with lr_mult 0 are left out.
//   grad_norm        ||dL/dw|| over the layer's parameters (data loss only: before weight decay).
//   weight_norm      ||w|| before the step.
//   activation_mean, activation_std
//                    mean and population standard deviation of the layer's output over the batch.
//   dead_fraction    activations with dead units only: the fraction of units (output elements of one sample,
//                    e.g. every (channel, y, x) of a conv feature map) whose output is <= 0 for
//                    every sample of the batch.
// Values that do not apply are NaN.
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "strata/graph.hpp"
#include "strata/optimizer.hpp"

namespace strata {

struct LayerDiagnostics {
  std::string layer;
  std::string type;
  double update_ratio, grad_norm, weight_norm;
  double activation_mean, activation_std;
  double dead_fraction;
  bool has_dead_units = false;  // Layer::has_dead_units(): dead_fraction is measured
};

// Healthy ranges behind the warnings printed during training.
inline constexpr double kUpdateRatioLow = 1e-4;
inline constexpr double kUpdateRatioHigh = 1e-2;
inline constexpr double kDeadFractionHigh = 0.5;

// Fraction of units of `activation` [N, ...] that are <= 0 for all N samples.
double dead_unit_fraction(const Tensor& activation);

// One measurement around one optimizer step.
//
// The activation statistics are taken while the forward runs (a Graph forward observer), since
// training keeps only the outputs a backward reads (OutputRetention::kBackward): arm with
// watch_forward(true) before the step's forward. Only training forwards (Context::training) are
// measured, so an evaluation in between does not count; the last one before before_step() does.
class StepDiagnostics {
 public:
  // Attaches a forward observer to `graph` (detached by the destructor).
  explicit StepDiagnostics(Graph& graph);
  ~StepDiagnostics();
  StepDiagnostics(const StepDiagnostics&) = delete;
  StepDiagnostics& operator=(const StepDiagnostics&) = delete;

  // Whether the training forwards from now on measure the watched layers' activations.
  // A watched forward runs unfused (Graph::set_fusion): the diagnostics read every layer's
  // output, and a fused pass does not write those of the layers activations are fused into.
  void watch_forward(bool on);
  // After forward() and backward(), before the optimizer step: takes the activation statistics
  // measured since watch_forward(true) (NaN when none was), reads the gradients, copies the
  // weights, and disarms.
  void before_step();
  // After the step: the update ratios. Returns one entry per watched layer, in graph order.
  std::vector<LayerDiagnostics> after_step();

 private:
  struct Watched {
    std::size_t node;
    std::vector<Param*> params;
    std::vector<Tensor> before;
    LayerDiagnostics result;
    double activation_mean, activation_std, dead_fraction;  // from the last measured forward
  };
  void observe(std::size_t node, const Tensor& out);
  Graph& graph_;
  std::vector<Watched> watched_;
  std::vector<int> watched_index_;  // per node: its index in watched_, or -1
  bool armed_ = false;
  bool fusion_ = true;  // the graph's fusion setting when attached, restored between watches
};

// Appends `results` at `iteration` to a history: "diagnostics/iteration" and
// "diagnostics/<layer>/<metric>" (every array grows by one value per measurement).
void record_diagnostics(std::map<std::string, std::vector<double>>& history, int64_t iteration,
                        std::span<const LayerDiagnostics> results);

// Short notes on what is outside the healthy ranges above ("conv1 update/weight 3.1e-02"), empty
// when all is well.
std::vector<std::string> diagnostic_warnings(std::span<const LayerDiagnostics> results);

// The warnings of one epoch, summarized: the trainer adds every measurement of the epoch and
// prints, at its end, at most one line per layer that was outside a healthy range in more than
// half of the epoch's checks (any non-finite gradient norm counts), saying how often and how far,
// instead of a line at every measurement:
//   epoch 3 diagnostics: conv1 update/weight up to 3.1e-02 (lr too high?) in 7 of 8 checks
//   epoch 3 diagnostics: relu2 up to 76% dead in 8 of 8 checks
class DiagnosticsSummary {
 public:
  // One measurement (one call of StepDiagnostics::after_step()).
  void add(std::span<const LayerDiagnostics> results);
  // Measurements added since the last take_lines().
  int64_t checks() const { return checks_; }
  // One line per layer with warnings, in graph order, prefixed "epoch <epoch> diagnostics: ";
  // empty when all was well. Starts a new epoch (forgets what was added).
  std::vector<std::string> take_lines(int64_t epoch);

 private:
  enum Kind { kUpdateHigh, kUpdateLow, kGradientNotFinite, kDead, kKinds };
  struct Issue {
    int64_t count = 0;
    double extreme = 0;  // the largest ratio or dead fraction, the smallest low ratio
  };
  struct LayerIssues {
    std::string layer;
    Issue issues[kKinds];
  };
  int64_t checks_ = 0;
  std::vector<LayerIssues> layers_;  // in the order layers first had an issue within the epoch
};

// The best value of a per-epoch metric so far and how long ago it was.
struct MetricProgress {
  int64_t best_epoch = 0;  // 1-based; 0 when no value was finite
  double best = 0;
  int64_t epochs_without_improvement = 0;  // since best_epoch (all epochs when best_epoch is 0)
};
// An epoch improves when its value beats the best so far by more than `min_delta` (higher for
// `maximize`, lower otherwise); the first finite value always does. NaN never improves.
MetricProgress metric_progress(std::span<const double> values, bool maximize, double min_delta);

}  // namespace strata
