// strata/tools/bench.hpp: `strata bench`, timing an experiment's model the way training runs it.
//
// WHAT IT MEASURES
//   The experiment's model, loss and optimizer (its backend and threads unless overridden) run
//   training steps on synthetic data: uniform [0, 1) images of the model's input shape at
//   train.batch_size, with random labels below the number of outputs. `warmup` steps are run and
//   discarded (first-touch allocation, kernel workspaces), then `iterations` steps are timed:
//   the forward pass of each layer, the loss (forward and its gradient), the backward pass of each
//   layer, and the optimizer step. Times are means over the timed steps; images/s is
//   batch / mean step time. The experiment is read as every command reads it
//   (strata/training/experiment.hpp, Scope::optimization: seed, backend, threads, model, loss,
//   optimizer and schedule, train.batch_size); the `data`, the rest of `train`, `checkpoint` and
//   `plugins` sections are not used, so any experiment file runs as checked in, without its data.
//
//   FLOPs: a layer with a learnable `weight` of rank 2 or 4 (linear, conv2d, including grouped and
//   depthwise) does weight.numel() / weight.dim(0) multiply-adds per output element in forward
//   and twice that in backward (data and weight gradients; only the weight gradient for a layer
//   that reads nothing but the model input, whose gradient nobody needs); GFLOP/s counts 2 FLOPs
//   per multiply-add. Other layers report no FLOPs.
//
//   Each layer also reports its kernel implementation (Layer::implementation(): for conv2d on tbb
//   e.g. "fwd=direct bwd_data=small bwd_weights=winograd23"; empty for a layer without a kernel),
//   the path that produced its times.
//
//   Peak resident memory is getrusage(RUSAGE_SELF).ru_maxrss of the whole process at the end
//   (everything loaded, the model, activations, gradients, optimizer state and workspaces).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "strata/config.hpp"
#include "strata/registry.hpp"

namespace strata {

struct BenchOptions {
  int64_t iterations = 20;  // timed steps, at least 1
  int64_t warmup = 3;       // untimed steps first
  int threads = -1;         // -1: the experiment's `threads`; 0: all cores
  bool fusion = true;       // Graph::set_fusion: activations fused into the layer before them
};

struct LayerTiming {
  std::string name, type;
  std::vector<int64_t> output_shape;                 // per sample
  double forward_seconds = 0, backward_seconds = 0;  // mean per step
  double forward_flops = 0;                          // per step (whole batch); 0 when unknown
  double backward_flops = 0;
  // Layer::implementation(): the kernel path it runs; may be empty. For an activation fused
  // into the layer before it (Graph::fused_into), "fused into <that layer>".
  std::string implementation;
};

struct BenchReport {
  std::string experiment;  // the file
  std::string backend;
  std::string backend_description;  // Backend::description(): libraries and kernel sets
  int threads = 0;
  int64_t batch = 0, iterations = 0, warmup = 0, parameters = 0;
  bool fusion = true;  // BenchOptions::fusion
  // The experiment's `recompute` (Graph::set_recomputation): a recomputed layer's backward time
  // includes its second forward.
  bool recompute = false;
  std::vector<LayerTiming> layers;
  double forward_seconds = 0, loss_seconds = 0, backward_seconds = 0, optimizer_seconds = 0;
  double step_seconds = 0;  // the whole step, timed as one (>= the sum of the parts)
  double images_per_second = 0;
  double total_flops = 0;  // forward + backward FLOPs of one step
  int64_t peak_rss_bytes = 0;
};

// Runs the benchmark. Errors in the experiment are reported as for `strata train`.
BenchReport bench_experiment(const Config& experiment, const Registries& registries,
                             const BenchOptions& options);

// The human-readable table: one row per layer (forward ms, backward ms, share of the step,
// GFLOP/s where known), then the loss, the optimizer, the totals, images/s and peak memory.
std::string format_bench_report(const BenchReport& report);

}  // namespace strata
