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
// graph sums the gradients flowing back into it.
//
// Memory. The layers' outputs are allocated once for the largest batch seen, in one arena. Under
// OutputRetention::kAll (the default) every output is kept until the next forward, so
// activation() returns any of them. Inference that needs only the model's output (strata eval,
// the analysis API's run(), which reads other layers through a forward observer) sets kOutput:
// every other output lives from its layer's forward to the last forward reading it, so a chain
// holds two or three at a time whatever its depth. Training sets kBackward: an output stays only
// when a backward reads it (Layer::backward_reads_inputs() of a consumer, backward_reads_output()
// of its producer) or it is the model's output; the others are live from the layer's forward to the
// last forward reading them, and share memory by lifetime; an activation that may fuse into its
// producer (Fusion below) runs in place over that producer's output and gradient. The gradients of
// the outputs exist only once a backward has run (an inference-only graph never holds any), and
// they share memory: a gradient is live from the backward step of the last layer reading that
// tensor to the backward step of the layer that produced it, and the buffers of all of them, with
// the per-consumer scratch of tensors read by several layers, are placed by lifetime in one arena
// (strata/memory_plan.hpp). In a chain of layers two gradients are live at a time, whatever the
// depth. memory() gives the figures for any batch without allocating. Buffers are allocated once
// for the largest batch seen and reused (a smaller batch gets views), so a step allocates no
// activation or gradient tensor. It is not allocation-free: layers may allocate scratch (lrn's
// per-task plane, the params() lists), and the input-gradient buffers of gradient checking are made
// per call.
//
// Fusion. An activation layer (Layer::fusable_activation(): relu, leaky_relu with a slope >= 0,
// relu6, tanh, sigmoid: those whose derivative reads only their output) that alone reads the
// output of a layer that fuses it (Layer::fuses(): batch_norm, add) runs inside that layer's
// forward: the producer writes f(its value) straight into the shared buffer and the activation's
// own forward pass is skipped (conv, batch norm, relu and ResNet's add, relu). Backward is not
// fused: the activation's backward runs as usual, in place over the gradient it shares with the
// producer (fusing it measured slower: docs/performance.md, section 16). The producer's output is
// never materialized, so a pair fuses only when that output is not kept
// (OutputRetention::kBackward, training's, and kOutput; under kAll nothing fuses and
// activation() returns every output), fusion is on (set_fusion), and the pass is not a gradient
// check (Context::frozen). The results are the unfused bits (the same float operations). A forward
// observer is called for a fused activation (with the output its producer wrote), not for the
// producer. fused_into() tells which activations the last forward fused.
//
// Recomputation (set_recomputation; off by default). Under kBackward the graph may keep fewer
// outputs still: it cuts the nodes into segments, keeps the outputs read past their segment's
// end, and computes the others that backward reads again, segment by segment, just before the
// segment's backward (strata/recompute_plan.hpp), with Context::recomputing set. Outputs,
// recomputed outputs and gradients then share one arena planned over the whole step, so an
// output's memory is reused once its last backward reader has run. Of the segmentations it tries,
// the graph keeps the one whose arena is smallest. The outputs and gradients are the same bits;
// the price is a second forward of the recomputed layers. Only layers that say
// Layer::recomputable() are run again; the others' outputs are kept.
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
#include "strata/memory_plan.hpp"
#include "strata/optimizer.hpp"
#include "strata/recompute_plan.hpp"

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

// Which layer outputs outlive the forward pass that wrote them (see Memory above).
enum class OutputRetention {
  kAll,       // every output, readable through activation() until the next forward
  kBackward,  // those a backward reads, and the model's output: what training needs
  kOutput,    // the model's output alone: inference (backward() is an Error)
};

class Graph {
 public:
  // Builds and sets up every layer for `backend` (whose kernels the layers pick, falling back to
  // the reference ones), then initializes parameters with `init_rng`. Per-layer
  // `init: {weight: {type: xavier_uniform}}` overrides a parameter's default initializer.
  // `precision` reaches every layer's SetupContext (conv2d and linear compute in it).
  Graph(const Config& model, const Registries& registries, const Backend& backend, Rng& init_rng,
        Precision precision = Precision::kFp32);
  // The same without initializing: parameters stay zero (for `strata summary`, or before loading
  // a checkpoint), which keeps a 140M-parameter model cheap to build.
  Graph(const Config& model, const Registries& registries, const Backend& backend,
        Precision precision = Precision::kFp32);

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
  // A layer's output from the last forward(). Under OutputRetention::kBackward, an Error for an
  // output that was not kept (its memory was reused later in the pass); see set_forward_observer.
  const Tensor& activation(std::string_view layer_name) const;
  // kAll by default. A change takes effect at the next forward(), which re-plans the outputs (the
  // outputs of earlier passes are lost).
  void set_output_retention(OutputRetention retention);
  OutputRetention output_retention() const { return retention_; }
  // Whether activation(name of node i) is readable after a forward under the current retention.
  bool keeps_output(std::size_t i) const;
  // Called by forward() after each layer's forward with the node's index, its output and the
  // pass's Context, while set (an empty function detaches it). This is how code that watches
  // activations (training diagnostics) reads outputs that kBackward does not keep.
  using ForwardObserver = std::function<void(std::size_t, const Tensor&, const Context&)>;
  void set_forward_observer(ForwardObserver observer) { observer_ = std::move(observer); }
  // Whether forward() fuses activations into the layer before them (see Fusion above). On by
  // default; training diagnostics turn it off for the passes they watch, whose every output
  // they read. A change takes effect at the next forward().
  void set_fusion(bool on) { fusion_ = on; }
  bool fusion() const { return fusion_; }
  // The node activation node i ran inside in the last forward, or -1.
  int fused_into(std::size_t i) const;
  // Whether training (kBackward) recomputes outputs in backward instead of keeping them (see
  // Recomputation above). A change takes effect at the next forward(), which re-plans.
  void set_recomputation(bool on);
  bool recomputation() const { return recompute_; }
  // Whether the last plan computes node i's output again in backward (false unless a forward
  // under kBackward with recomputation on has run).
  bool recomputes(std::size_t i) const;
  // Attaches a profile (sized to size() by the graph) or detaches it (nullptr). The backward time
  // of a layer includes summing its input gradients into tensors read by several layers.
  void set_profile(GraphProfile* profile);

  // What the graph holds for a batch of `batch` images, in bytes, under `retention` (training's is
  // kBackward): the output arena, the gradient arena a backward allocates (output gradients
  // and scratch placed by lifetime), and the parameters' values and gradients. Layer scratch and
  // kernel workspaces are not included.
  // With recomputation under kBackward, outputs and gradients share one arena: `outputs` is
  // that arena and `gradients` 0.
  struct Memory {
    int64_t outputs = 0, gradients = 0, parameters = 0;
  };
  Memory memory(int64_t batch, OutputRetention retention) const;
  // What the graph holds now: the output arena for the largest batch seen, and the gradient arena
  // only once a backward has run (zero for a graph used for inference alone).
  Memory held() const;
  // Whether inference maps each sample on its own (no layer says it mixes_samples_in_inference):
  // then running a batch in smaller pieces gives the same outputs.
  bool samples_independent_in_inference() const;

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
    int last_consumer = -1;       // the highest index of a node reading this one (-1: none)
    // Fusion pairs (find_fusions): on a producer, the activation node that may run inside it; on
    // that activation, the producer. -1: none.
    int fusable = -1;
    int fused_producer = -1;
  };
  struct TrainingKeys;  // an entry's lr_mult, decay_mult and freeze (graph.cpp)
  // build(): the input shape, then each entry of `layers` in order, a layer or a block.
  void build(const Config& model, Rng* init_rng);
  void find_fusions();  // the fusion pairs (Fusion above), once the nodes are built
  // Before a forward: which pairs fuse in this pass (fused_), told to their producers.
  void plan_fusion(const Context& context);
  bool runs_fused(std::size_t i) const;  // node i is an activation fused in this pass
  // A fusion pair shares one output buffer, the activation running in place over its producer's
  // output (or inside it, fused), when that output is not kept; and one gradient buffer, unless
  // the activation is the last node (its gradient is then the caller's).
  bool shares_output(int producer, const std::vector<char>& kept) const;
  bool shares_gradient(int producer) const;
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
  // The output arena's buffers for `batch` images, one per node, over forward steps (node i runs
  // at step i): a kept output (keeps_output) lives to the last step, the others to their last
  // reader's forward.
  std::vector<BufferRequest> output_requests(int64_t batch, OutputRetention retention) const;
  bool keeps_output(std::size_t i, OutputRetention retention) const;
  // Recomputation: under kBackward with set_recomputation(true).
  bool recomputing(OutputRetention retention) const {
    return recompute_ && retention == OutputRetention::kBackward;
  }
  // The plan of a recomputing step for `batch` images: the segmentation whose arena is
  // smallest, and the arena's buffers: n outputs (at forward), n recomputed outputs (size 0
  // for those not recomputed), then gradient_requests() on the step's timeline.
  struct StepPlan {
    RecomputePlan recompute;
    std::vector<BufferRequest> requests;
    std::vector<std::pair<int, int>> gradient_slots;
    ArenaPlan arena;
  };
  StepPlan plan_step(int64_t batch) const;
  std::vector<BufferRequest> step_requests(const RecomputePlan& plan, int64_t batch,
                                           std::vector<std::pair<int, int>>* slots) const;
  void allocate_step(int64_t batch);  // allocate() when recomputing
  // Per node (those `only` marks, when given), its buffer in output_arena_ at `plan`'s offsets
  // from request `first` on, or its producer's when it shares it (shares_output, kept_).
  void place_outputs(const ArenaPlan& plan, std::size_t first, std::vector<Tensor>& storage,
                     int64_t batch, const std::vector<char>* only = nullptr);
  void bind_inputs(Node& node) const;  // node.in: views of the tensors it reads, as they are now
  // The gradient buffers' storage in `arena` for `batch` images, at `plan`'s offsets from
  // request `first` on, which are gradient_requests()' with these `slots`.
  void place_gradients(const std::vector<std::pair<int, int>>& slots, const ArenaPlan& plan,
                       std::size_t first, const Tensor& arena, int64_t batch);
  void replay_segment(Context& context, int segment);  // recomputes its outputs for backward
  void replan();  // drops the buffers' plan: the next forward makes a new one
  // The gradient arena's buffers for `batch` images, in this order: the output gradient of each
  // node that needs one, then a scratch per (node, input) whose producer is read by several
  // layers. `slots` (when given) receives, per request, the node and the input index (-1 for an
  // output gradient).
  // `backward_step` (when given) places node i's backward at backward_step[i] instead of
  // n - 1 - i.
  std::vector<BufferRequest> gradient_requests(
      int64_t batch, std::vector<std::pair<int, int>>* slots,
      const std::vector<int>* backward_step = nullptr) const;
  void allocate_gradients();  // for batch_ images: plans the arena when the batch outgrew it
  void backward_node(Context& context, const Tensor& doutput, std::size_t i, int input_consumers,
                     Tensor& input_scratch);

  const Registries& registries_;
  std::string backend_;  // the name of the backend the layers pick their kernels for
  Precision precision_ = Precision::kFp32;  // of the layers' matrix products
  Shape input_shape_;
  std::vector<Node> nodes_;
  std::vector<BlockInfo> blocks_;
  std::vector<std::pair<std::string, int>> aliases_;  // block outputs: name -> node
  int64_t allocated_batch_ = -1;
  int64_t batch_ = -1;  // of the last forward(); -1 before the first (a batch may be empty)
  OutputRetention retention_ = OutputRetention::kAll;
  ForwardObserver observer_;
  // Per node, sized for the largest batch seen: its output, a view into output_arena_.
  Tensor output_arena_;
  std::vector<Tensor> outputs_storage_;
  std::vector<Tensor> outputs_;  // views for the current batch
  // Backward's buffers, views into one arena planned by lifetime for gradient_batch_ images: per
  // node its output gradient (undefined when none is needed), and per node and input the scratch
  // it writes its share into when that input is read by several layers and another consumer
  // wrote first. grads_ and scratch_ are the views for the current batch.
  Tensor gradient_arena_;
  int64_t gradient_batch_ = -1;
  std::vector<Tensor> grads_storage_, grads_;
  std::vector<std::vector<Tensor>> scratch_storage_, scratch_;
  int64_t gradient_views_batch_ = -1;  // the batch of grads_ and scratch_
  std::vector<char> written_;       // per node: has a consumer written its gradient (this backward)
  std::vector<char> into_scratch_;  // per input of the node in backward_node: wrote its scratch
  Tensor input_;                                   // view of the current input
  GraphProfile* profile_ = nullptr;
  bool fusion_ = true;
  std::vector<char> kept_;   // per node: keeps_output() under retention_ (set by allocate())
  std::vector<char> fused_;  // per producer node: ran with its activation fused (last forward)
  bool recompute_ = false;
  RecomputePlan recompute_plan_;        // the plan allocated, while recomputing
  std::vector<Tensor> replay_storage_;  // per node recomputed: its output in backward
  bool input_gradient_ = false;
  Tensor input_gradient_storage_;  // d(output)/d(input) when input_gradient_ is set
  std::vector<char> flows_;        // per node: does a gradient flow through it (last backward)
};

}  // namespace strata
