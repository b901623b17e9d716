// strata/graph.hpp: the network, built from the experiment's `model` section.
//
//   model:
//     input: [1, 28, 28]          # sample shape [C, H, W]
//     layers:
//       - {name: conv1, type: conv2d, out_channels: 6, kernel: 5, padding: 2}
//       - {name: relu1, type: relu}
//       - {name: sum, type: add, inputs: [relu1, conv1]}   # named inputs (default: previous)
//
// An entry whose type is a block (registries.blocks) expands in place into its sub-layers
// (strata/block.hpp); the graph remembers which layers belong to which block for `summary`.
//
// Layers run in file order; each produces one tensor named after the layer, and "input" names the
// model input. A layer may consume any earlier tensor, and a tensor may feed several layers: the
// graph sums the gradients flowing back into it. Activations and gradients are allocated once for
// the largest batch seen and reused (a smaller batch gets views), so a step allocates no
// activation or gradient tensor. It is not allocation-free: layers may allocate scratch (lrn's
// per-task plane, the params() lists), and the input-gradient buffers of gradient checking are
// made per call.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "strata/config.hpp"
#include "strata/layer.hpp"
#include "strata/optimizer.hpp"

namespace strata {

class Registries;
class Backend;
class Block;

// Wall time per layer, accumulated by Graph::forward()/backward() while attached with
// Graph::set_profile() (strata bench uses it). Detached, the graph pays one branch per layer.
struct GraphProfile {
  std::vector<double> forward_seconds, backward_seconds;  // indexed like the graph's layers
  void reset(std::size_t layers) {
    forward_seconds.assign(layers, 0.0);
    backward_seconds.assign(layers, 0.0);
  }
};

// `name` made a valid layer name by replacing what a layer name may not contain: '/', ',', '@'
// and control characters become '_', and so does every non-ASCII byte when `name` is not UTF-8;
// "input" becomes "input_", "." and ".." (and "") become "_". Other names are returned unchanged.
// ENSURES: the graph accepts the result as a layer name (unless another layer has it already).
// Used where names come from elsewhere (an imported ONNX graph's nodes).
std::string sanitized_layer_name(std::string name);

class Graph {
 public:
  // Builds and sets up every layer for `backend` (whose kernels the layers pick, falling back to
  // the reference ones), then initializes parameters with `init_rng`. Per-layer
  // `init: {weight: {type: xavier_uniform}}` overrides a parameter's default initializer.
  Graph(const Config& model, const Registries& registries, const Backend& backend, Rng& init_rng);
  // The same without initializing: parameters stay zero (for `strata summary`, or before loading
  // a checkpoint), which keeps a 140M-parameter model cheap to build.
  Graph(const Config& model, const Registries& registries, const Backend& backend);

  // One block entry of the model: nodes [first, end) are its sub-layers, in order.
  struct BlockInfo {
    std::string name;  // the entry's name: "layer1"
    std::string type;  // "residual_basic"
    int64_t repeat = 1;
    int first = 0, end = 0;
  };
  const std::vector<BlockInfo>& blocks() const { return blocks_; }
  int block_of(std::size_t i) const { return nodes_[i].block; }  // index in blocks(), or -1

  const Shape& input_shape() const { return input_shape_; }
  const Shape& output_shape() const;

  std::size_t size() const { return nodes_.size(); }
  Layer& layer(std::size_t i) { return *nodes_[i].layer; }
  const Layer& layer(std::size_t i) const { return *nodes_[i].layer; }
  const std::string& name(std::size_t i) const { return nodes_[i].layer->name(); }
  // -1 when there is no such layer. A block's name (and "block.<i>" for each copy) resolves to
  // the node producing its output.
  int index_of(std::string_view layer_name) const;
  std::vector<std::string> input_names(std::size_t i) const;
  // The sample shapes (no batch) of the tensors layer i reads, in the order of input_names(i).
  std::vector<Shape> input_shapes(std::size_t i) const;

  // Runs every layer on `input` [N, C, H, W]; returns the last layer's output.
  const Tensor& forward(Context& context, const Tensor& input);
  // Back-propagates `doutput` (gradient of the last layer's output). Fills Param::grad of every
  // parameter that is not frozen. A layer runs no backward when nothing before it (or in it)
  // learns, so the gradients of frozen parameters are left as they were unless a trainable layer
  // further up makes the gradient pass through their layer anyway.
  // `node_done`, when given, is called with each node's index in the order backward finishes
  // with it (last node first), also for nodes it skipped: from then on backward no longer touches
  // that node's parameter gradients, so they may be sent (the MPI gradient buckets).
  // gradient_flowed(i) then tells whether node i's gradients were computed in this pass.
  void backward(Context& context, const Tensor& doutput,
                const std::function<void(std::size_t)>& node_done = {});
  bool gradient_flowed(std::size_t i) const { return i < flows_.size() && flows_[i] != 0; }
  // Whether backward() also computes the gradient of the model input (off by default; gradient
  // checking turns it on). input_gradient() is that gradient after the last backward().
  void set_input_gradient(bool wanted) { input_gradient_ = wanted; }
  const Tensor& input_gradient() const;
  // A layer's output from the last forward().
  const Tensor& activation(std::string_view layer_name) const;
  // Attaches a profile (sized to size() by the graph) or detaches it (nullptr). The backward time
  // of a layer includes summing its input gradients into tensors read by several layers.
  void set_profile(GraphProfile* profile);

  std::vector<ParamRef> params();            // keys "<layer>/<param>"
  std::vector<NamedTensor> state_tensors();  // parameters and buffers, "<layer>/<name>"
  int64_t num_parameters() const;

 private:
  struct Node {
    std::shared_ptr<Layer> layer;
    int block = -1;
    std::vector<int> inputs;  // indices of producing nodes; -1 is the model input
    int consumers = 0;
    std::vector<Tensor> in, din;  // per-step views handed to the layer (reused, not reallocated)
  };
  struct TrainingKeys;  // an entry's lr_mult, decay_mult and freeze (graph.cpp)
  // build(): the input shape, then each entry of `layers` in order, a layer or a block.
  void build(const Config& model, Rng* init_rng);
  void read_input_shape(const Config& model);
  void add_layer_entry(const Config& item, const std::string& name, const std::string& type,
                       const std::vector<std::string>& input_names, Rng* init_rng);
  void add_block_entry(const Config& item, const std::string& name, const std::string& type,
                       std::vector<std::string> input_names, Rng* init_rng);
  void add_block_copy(const Config& item, Block& block, const std::string& prefix, int64_t copy,
                      int64_t repeat, const std::vector<std::string>& input_names, Rng* init_rng,
                      int block_index);
  void apply_training_keys(const TrainingKeys& keys, std::size_t first);
  // Sets up and (with an rng) initializes one layer reading the tensors `input_names`, with the
  // initializers built from its `init` section (whose names are checked against the parameters);
  // errors are reported at `where` (the layer's or the block's entry).
  void add_node(const std::string& name, std::shared_ptr<Layer> layer,
                const std::vector<std::string>& input_names, const Config& where,
                const std::optional<Config>& init,
                const std::map<std::string, std::shared_ptr<Initializer>>& custom_initializers,
                Rng* init_rng, int block);
  void check_new_name(const std::string& name, const Config& where) const;
  // The sample shape of the tensor node `producer` gives (-1: the model input).
  const Shape& produced_shape(int producer) const {
    return producer < 0 ? input_shape_ : nodes_[producer].layer->output_shape();
  }
  void allocate(int64_t batch);
  void backward_node(Context& context, const Tensor& doutput, std::size_t i, int input_consumers,
                     Tensor& input_scratch);

  const Registries& registries_;
  std::string backend_;  // the name of the backend the layers pick their kernels for
  Shape input_shape_;
  std::vector<Node> nodes_;
  std::vector<BlockInfo> blocks_;
  std::vector<std::pair<std::string, int>> aliases_;  // block outputs: name -> node
  int64_t allocated_batch_ = -1;
  int64_t batch_ = -1;  // of the last forward(); -1 before the first (a batch may be empty)
  // Per node, sized for the largest batch seen: outputs, output gradients, and for tensors read
  // by several layers a scratch buffer each consumer writes its share of the gradient into.
  std::vector<Tensor> outputs_storage_, grads_storage_, edge_scratch_;
  std::vector<Tensor> outputs_, grads_, scratch_;  // views for the current batch
  Tensor input_;                                   // view of the current input
  GraphProfile* profile_ = nullptr;
  bool input_gradient_ = false;
  Tensor input_gradient_storage_;  // d(output)/d(input) when input_gradient_ is set
  std::vector<char> flows_;        // per node: does a gradient flow through it (last backward)
};

}  // namespace strata
