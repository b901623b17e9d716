// strata/layer.hpp: the Layer interface every layer plugin implements.
//
// Lifecycle:
//   1. construction from the layer's Config (its own keys only: the graph has already read
//      `name`, `type`, `inputs` and `init`);
//   2. setup(): once, with the *sample* shapes of the inputs (no batch dimension). The layer
//      validates them, allocates its parameters, builds its op descriptors and picks kernels;
//   3. forward()/backward(): every step, with batch-first tensors whose first dimension is N.
//
// Contract of backward(): `din[i]` has the shape of `in[i]` and is overwritten; an undefined
// `din[i]` (Tensor::defined() false: no storage) means nobody needs that gradient and the layer
// should skip computing it. Parameter gradients (Param::grad) are overwritten, not accumulated.
// Pointers in the Context may be null (see Context); `out` and `dout` are always defined.
#pragma once

#include <array>
#include <memory>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "strata/backend.hpp"
#include "strata/error.hpp"
#include "strata/ops.hpp"
#include "strata/registry.hpp"
#include "strata/tensor.hpp"

namespace strata {

class ExportContext;
using Rng = std::mt19937;

// A learnable parameter. Names and shapes follow PyTorch ("weight" [out, in, kh, kw], "bias").
//
// default_init is the initializer used when the experiment's `init:` names none, written as in
// an experiment file (flow YAML), so a plugin can give settings without touching yaml-cpp:
//   "he_normal"                         a type with its default settings
//   "{type: constant, value: 1}"        a type with settings (batch norm's weight)
// The Graph builds it through the initializer registry; a bad spec is an Error naming the layer
// and the parameter.
struct Param {
  std::string name;
  Tensor value;
  Tensor grad;
  std::string default_init;  // initializer spec used when the experiment names none (see above)
  int64_t fan_in = 0;
  int64_t fan_out = 0;
  float lr_mult = 1.0f;     // scales the learning rate for this parameter
  float decay_mult = 1.0f;  // scales weight decay: 0 excludes the parameter (biases, batch norm)
  bool frozen = false;      // `freeze: true` in the experiment: optimizers leave it untouched

  // value and grad of `shape`, zero-filled.
  static Param make(std::string name, Shape shape, std::string default_init, int64_t fan_in,
                    int64_t fan_out, float decay_mult = 1.0f);
};

// What setup() may use: the kernel registry, the chosen backend and the experiment's precision
// (which layers with matrix products, conv2d and linear, put into their op descriptors).
class SetupContext {
 public:
  SetupContext(const KernelRegistry& kernels, std::string_view backend, std::string layer_name,
               Precision precision = Precision::kFp32)
      : kernels_(kernels),
        backend_(backend),
        layer_name_(std::move(layer_name)),
        precision_(precision) {}

  template <class K>
  std::shared_ptr<K> kernel(std::string_view op, const typename K::Desc& desc) const {
    return kernels_.pick<K>(op, backend_, desc, layer_name_);
  }
  std::string_view backend() const { return backend_; }
  Precision precision() const { return precision_; }

 private:
  const KernelRegistry& kernels_;
  std::string_view backend_;
  std::string layer_name_;
  Precision precision_;
};

// Branch decisions held fixed, for gradient checking (strata/tools/gradcheck.hpp). A layer whose output
// is only piecewise smooth in its input (relu, leaky_relu, max_pool) takes, per output element, one
// of several smooth pieces (relu: x or 0; max_pool: which window element). With a FrozenBranches in
// the Context, such a layer records the piece of each element while `recording`, and on later
// passes takes the recorded piece whatever its input. The network then computes one smooth
// function that equals the real one around the recorded point, so a finite difference of any step
// measures the derivative there instead of straddling a kink. Layers key their record by `this`.
class FrozenBranches {
 public:
  bool recording = true;

  // The record of `layer` with `count` entries: reset to zeros while recording; afterwards an
  // Error unless the layer recorded exactly `count` entries.
  std::span<int64_t> of(const void* layer, int64_t count) {
    std::vector<int64_t>& taken = taken_[layer];
    if (recording) {
      taken.assign(static_cast<std::size_t>(count), 0);
    } else if (static_cast<int64_t>(taken.size()) != count) {
      fail("frozen branches: a layer recorded {} decisions but now needs {}", taken.size(), count);
    }
    return taken;
  }

 private:
  std::unordered_map<const void*, std::vector<int64_t>> taken_;
};

// Context: what forward()/backward() may use besides their tensors.
//
// WHAT IT REPRESENTS
//   The mode of one pass and the services of the run, owned by whoever runs the graph (the
//   trainer, `strata forward`, eval, bench, gradcheck, the conformance harness, tests). The layer
//   borrows them for the call and keeps no pointer.
// MAY BE NULL
//   - rng: null is allowed; the runtime's callers always set it, but a bare Context{} (tests)
//     has none. A stochastic layer that needs it in training fails with an Error when it is
//     null (dropout: "training needs a random generator in the Context"); in inference it is
//     not read.
//   - backend: null is allowed (a bare Context{}, or a caller that has no backend): the work
//     then runs serially on the calling thread. Never dereference it unchecked; use
//     parallel_elementwise (strata/elementwise.hpp), which does the check.
//   - frozen: null except under gradient checking (see FrozenBranches); layers with branch
//     decisions test it before use.
//   - communicator: the job's ranks under MPI (strata/communicator.hpp), null in a single process.
//     Only layers that reduce across ranks read it (batch_norm with `sync: true`); with it null
//     they compute what one process computes. It is set only in training passes, when every rank
//     runs the same forward and backward in step.
// RECOMPUTING
//   true while the graph runs a training forward a second time, between that forward and its
//   backward, to compute again an output it did not keep (Graph, "Recomputation"; only layers
//   that say Layer::recomputable()). The layer must write the same output as the first time and
//   leave what its backward reads as the first run left it, changing no other state: batch_norm
//   normalizes with the statistics it saved (no running-statistics update, no collective),
//   dropout applies the mask it drew.
struct Context {
  bool training = false;
  Rng* rng = nullptr;                // for stochastic layers (dropout); may be null, see above
  Backend* backend = nullptr;        // parallel_for for element-wise work; may be null, see above
  FrozenBranches* frozen = nullptr;  // gradient checking only; null otherwise
  Communicator* communicator = nullptr;  // the ranks of an MPI job; null in a single process
  bool recomputing = false;              // a forward run again for backward (see RECOMPUTING above)
};

// The sliding-window geometry of a layer along height and width, for receptive-field accounting
// (`strata summary`): a unit of the output sees `kernel` input units spaced `dilation` apart,
// and neighbouring outputs are `stride` input units apart. Element-wise layers keep the default
// (a 1x1 window, stride 1); `global` means every output sees the whole input (linear, global
// pooling). Layers with several inputs apply the same window to each.
struct Window {
  std::array<int64_t, 2> kernel{1, 1};
  std::array<int64_t, 2> stride{1, 1};
  std::array<int64_t, 2> dilation{1, 1};
  bool global = false;
};

class Layer {
 public:
  virtual ~Layer() = default;

  virtual std::string_view type() const = 0;
  // How many inputs the layer accepts (inclusive bounds); max_inputs() ==
  // std::numeric_limits<int>::max() means "no upper bound" (add, concat).
  virtual int min_inputs() const { return 1; }
  virtual int max_inputs() const { return 1; }

  // Checks the number of inputs, then calls infer_shape(). Errors raised inside are prefixed
  // with the layer's name and type. Returns the sample shape of the output.
  Shape setup(const SetupContext& context, std::span<const Shape> inputs);
  const Shape& output_shape() const { return output_shape_; }

  virtual void forward(Context& context, std::span<const Tensor> in, Tensor& out) = 0;
  virtual void backward(Context& context, std::span<const Tensor> in, const Tensor& out,
                        const Tensor& dout, std::span<Tensor> din) = 0;

  // Learnable parameters, allocated by setup().
  virtual std::vector<Param*> params() { return {}; }
  // Non-learnable state saved in checkpoints (batch norm's running statistics, for example).
  virtual std::vector<NamedTensor> buffers() { return {}; }

  // For `strata summary`, valid after setup(). multiply_adds(): the multiply-accumulates of one
  // forward pass over one sample in the layer's products of inputs with weights (conv2d, linear),
  // as papers and torchvision count FLOPs; element-wise work (activations, batch norm, pooling,
  // additions) counts 0. window(): see Window.
  virtual int64_t multiply_adds() const { return 0; }
  virtual Window window() const { return {}; }
  // The kernel implementation the layer runs (Kernel::implementation(), e.g. "direct" or
  // "fwd=direct bwd_data=small bwd_weights=winograd23"), for `strata bench`; empty for a layer
  // that computes without a kernel. Valid after setup().
  virtual std::string implementation() const { return {}; }

  // Traits the runtime asks of a layer instead of naming its type. has_dead_units(): an
  // activation whose output is exactly 0 over a whole region of inputs (relu), so that a unit
  // may die; training diagnostics then report the fraction of units that output 0 for a batch.
  virtual bool has_dead_units() const { return false; }
  // communicates(): its training forward/backward make collective calls through
  // Context::communicator (batch_norm with `sync: true`). Under MPI the trainer then runs every
  // training pass on every rank, with a batch of 0 images on a rank that has none that step, so
  // the collectives match; such a layer must handle an empty batch.
  virtual bool communicates() const { return false; }
  // mixes_samples_in_inference(): an inference forward's output for a sample depends on the
  // other samples of the batch (batch_norm without running statistics). Otherwise (the default)
  // evaluation may run a batch in pieces of any size, which bounds its memory, and conformance's
  // batch-independence check holds the layer to it.
  virtual bool mixes_samples_in_inference() const { return false; }
  // What backward() reads besides `dout`: the values of `in` (backward_reads_inputs()) and of
  // `out` (backward_reads_output()). Shapes may always be read. The graph keeps a tensor from
  // forward to backward only when some backward reads it, and reuses the memory of the others
  // (Graph, OutputRetention::kBackward), so a layer that answers no gets tensors of the right
  // shapes whose values are unspecified. The defaults (yes) are always safe; conformance checks a
  // layer's no by running its backward again with those tensors overwritten.
  virtual bool backward_reads_inputs() const { return true; }
  virtual bool backward_reads_output() const { return true; }

  // recomputable(): the graph may run the layer's training forward again, with
  // Context::recomputing set, between a forward and its backward (Graph, "Recomputation"), and
  // the layer then keeps the promise written at Context's RECOMPUTING. A layer that does not say
  // so (the default) is never run again: training keeps its output instead. Conformance checks a
  // yes by running the forward again and comparing the output and the backward's results.
  virtual bool recomputable() const { return false; }
  // Fusion (Graph, "Fusion" in strata/graph.hpp): an activation layer that alone reads the
  // output of the layer before it runs inside that layer's forward. fusable_activation(): an
  // activation layer returns what it computes; other layers return nothing (the default).
  // fuses(): whether this layer can apply `activation` to its own output in forward (it is
  // offered only activations whose derivative reads y alone, activation::derivative_reads_output,
  // and only when its backward_reads_output() says no: the activation then runs in place over
  // that output). set_fused_activation(): the activation fused into the forwards that follow, or
  // std::nullopt for none (the graph sets it before every forward). While one is set, forward()
  // writes f(the layer's value) to `out`; backward() is unchanged (the activation's own backward
  // has run first). The defaults: nothing fuses.
  virtual std::optional<ActivationDesc> fusable_activation() const { return std::nullopt; }
  virtual bool fuses(const ActivationDesc& activation) const {
    (void)activation;
    return false;
  }
  virtual void set_fused_activation(const std::optional<ActivationDesc>& activation) {
    (void)activation;
  }

  // Describes the layer's inference-mode computation as nodes of the ONNX operator vocabulary
  // (strata/export.hpp), for `strata export`; valid after setup(). Returns false when the layer
  // has no such description (the default): exporting a model with it is then an Error naming the
  // layer, its type and its plugin. A setting the mapping cannot express is an Error (fail()).
  virtual bool export_to(ExportContext& context) const {
    (void)context;
    return false;
  }

  const std::string& name() const { return name_; }
  void set_name(std::string name) { name_ = std::move(name); }

 protected:
  // Validate input sample shapes, allocate parameters, build descriptors, pick kernels.
  // Throw strata::Error (via fail()) with a message naming the offending shapes.
  virtual Shape infer_shape(const SetupContext& context, std::span<const Shape> inputs) = 0;

 private:
  std::string name_;
  Shape output_shape_;
};

// Loss functions map logits [N, classes] and integer labels to a mean loss and its gradient.
class Loss {
 public:
  virtual ~Loss() = default;
  // Returns the mean loss over the batch; writes d(loss)/d(logits) when dlogits is non-null.
  virtual float forward_backward(const Tensor& logits, std::span<const int32_t> labels,
                                 Tensor* dlogits) = 0;
  // The loss of a model that knows nothing (uniform predictions over `classes`): ln(classes) for
  // softmax cross-entropy. The trainer prints it beside the initial loss. nullopt: no such value.
  virtual std::optional<double> chance_loss(int64_t classes) const {
    (void)classes;
    return std::nullopt;
  }
};

// Fills a parameter at initialization.
class Initializer {
 public:
  virtual ~Initializer() = default;
  virtual void fill(Tensor& value, int64_t fan_in, int64_t fan_out, Rng& rng) const = 0;
};

}  // namespace strata
