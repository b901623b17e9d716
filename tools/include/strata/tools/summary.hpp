// strata/tools/summary.hpp: per-layer accounting of a built Graph, as in the CS231n VGG table.
//
// For each layer: output shape, activations (elements and bytes per image), parameters,
// multiply-adds (Layer::multiply_adds()) and the receptive field of one output unit on the model
// input, with its jump (the product of strides: the input distance between neighbouring output
// units). Receptive fields follow r_out = r_in + (k_eff - 1) * j_in, j_out = j_in * s with
// k_eff = dilation * (kernel - 1) + 1 (Layer::window()); a layer with several inputs starts
// from the largest r_in and j_in; a global window (linear, global pooling) spans its whole input.
//
// Totals: parameters; forward activation memory per image (the input plus every layer output,
// float32, as the graph allocates them); an estimate for training at a batch size (every
// activation twice, value and gradient, times the batch, plus parameters three times: value,
// gradient, momentum); multiply-adds per image.
//
// Blocks are collapsed into one row each (their activations, parameters and multiply-adds are
// sums over their layers; shape and receptive field are the block's output) unless `expand`.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "strata/tensor.hpp"

namespace strata {

class Graph;
class Config;
class Registries;

struct SummaryRow {
  std::string name;
  std::string type;  // the layer type, or the block type for a collapsed block
  std::string block;  // the block a layer belongs to ("" for none), when expanded
  int64_t repeat = 0;  // copies of a collapsed block (0 for a layer)
  int64_t layers = 1;  // layers this row accounts for
  std::vector<std::string> inputs;
  Shape output;
  int64_t activations = 0;  // per image
  int64_t activation_bytes = 0;
  int64_t parameters = 0;
  int64_t multiply_adds = 0;  // per image
  std::array<int64_t, 2> receptive_field{1, 1};  // height, width
  std::array<int64_t, 2> jump{1, 1};
};

struct ModelSummary {
  Shape input;
  std::vector<SummaryRow> rows;
  int64_t parameters = 0;
  int64_t parameter_bytes = 0;
  int64_t activations = 0;        // per image: input plus every layer output
  int64_t activation_bytes = 0;   // per image, forward
  int64_t batch_size = 0;
  // Training at batch_size, from the graph's plan (Graph::memory): every output, the gradient
  // arena (gradients placed by lifetime), and parameters with gradients and one optimizer slot.
  // With `recompute` (Graph::set_recomputation) outputs and gradients share one arena:
  // output_bytes is that arena and gradient_bytes 0.
  int64_t output_bytes = 0;
  int64_t gradient_bytes = 0;
  int64_t training_bytes = 0;  // their sum with 3 * parameter_bytes
  bool recompute = false;
  // With measure_run_memory(): a whole training run's peak, the model's training memory above
  // plus this process's resident set with the plugins loaded and the model built (code,
  // libraries) and what opening the data as training does added to it (the splits in-memory
  // readers hold, file lists). -1: not measured.
  int64_t process_bytes = -1;
  int64_t data_bytes = -1;
  int64_t run_bytes = -1;
  int64_t multiply_adds = 0;      // per image
};

// Requires a graph that has been built (no forward pass is needed).
ModelSummary summarize(Graph& graph, bool expand, int64_t batch_size);

// Builds the experiment's model (plugins named under `plugins:` must already be loaded) on its
// backend without initializing parameters or loading any data, and summarizes it at the
// experiment's train.batch_size (1 when the experiment has none). Every other section is left
// unchecked: only the model matters here.
ModelSummary summarize_experiment(const Config& experiment, const Registries& registries, bool expand);

// Fills summary.process_bytes, data_bytes and run_bytes for the experiment (`strata summary
// --memory`): measures this process's resident set, opens the data as `strata train` does
// (loading the splits of in-memory readers, building a missing data.cache), and measures it again.
void measure_run_memory(const Config& experiment, const Registries& registries,
                        ModelSummary& summary);

// A fixed-width table (one row per layer or block, then the totals).
std::string format_summary(const ModelSummary& summary);
// The same data as JSON (nlohmann-json), for scripts.
std::string summary_json(const ModelSummary& summary);

}  // namespace strata
