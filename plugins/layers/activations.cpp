// Element-wise activations: relu, leaky_relu, tanh, sigmoid, relu6, hard_sigmoid, hardswish.
//
// WHAT THESE OBJECTS REPRESENT
//   y = f(x) applied to every element independently:
//     relu        f(x) = max(0, x)                      f'(0) is taken as 0, as in PyTorch
//     leaky_relu  f(x) = x > 0 ? x : negative_slope*x   key negative_slope (0.01)
//     tanh        f(x) = tanh(x)                        f' = 1 - y^2 (from the output)
//     sigmoid     f(x) = 1 / (1 + exp(-x))              f' = y (1 - y) (from the output)
//   MobileNet's piecewise-linear pieces, exactly as torch.nn.ReLU6, Hardsigmoid and Hardswish,
//   including PyTorch's derivatives at the kinks and for NaN (checked by layers_vs_pytorch.py):
//     relu6         f(x) = min(max(x, 0), 6)          f' = 1 on (0, 6), else 0 (0 at x = 0 and 6)
//     hard_sigmoid  f(x) = relu6(x + 3) / 6           f' = 1/6 on (-3, 3), else 0 (0 at x = +-3)
//     hardswish     f(x) = x relu6(x + 3) / 6         f' = 0 for x < -3, x/3 + 1/2 on [-3, 3]
//                                                     (-1/2 at x = -3, 3/2 at x = 3), 1 above
//   A NaN input gives f' = 1 for relu6 and hardswish and 0 for hard_sigmoid, as PyTorch's
//   backward kernels do (their comparisons are false for NaN).
//   relu and leaky_relu have a kink at 0: with a FrozenBranches in the Context (gradient checking)
//   they record which side of it each element lies on, then keep to that side.
//   No parameters. NaN propagates through every one of them, as in PyTorch (relu(NaN) = NaN), so
//   that a model with a NaN weight gives a NaN output instead of a plausible finite one.
//
// REQUIRES
//   - one input of any sample shape.
// ENSURES
//   - output sample shape == input sample shape.
//   - forward and backward run on the backend's "activation" kernel (strata/ops.hpp holds the
//     per-element functions; every backend computes them element by element, so backends agree
//     bit for bit); the FrozenBranches path runs in the layer, over the backend's parallel_for.
#include <memory>

#include "common.hpp"
#include "strata/export.hpp"
#include "strata/ops.hpp"

namespace strata::layers {

namespace {

using Kind = ActivationDesc::Kind;

// Op provides the kernel's descriptor (desc()), the layer's name, its ONNX export and, for relu
// and leaky_relu, the branches FrozenBranches holds fixed. The math is strata::activation's
// (strata/ops.hpp), computed by the backend's "activation" kernel.
template <class Op>
class Elementwise final : public Layer {
 public:
  explicit Elementwise(const Config& config) : op_(config) {}

  std::string_view type() const override { return Op::kName; }
  std::string implementation() const override { return kernel_ ? kernel_->implementation() : ""; }
  // An op declares `kDeadUnits = true` when a unit can die (training diagnostics count them).
  bool has_dead_units() const override {
    if constexpr (requires { Op::kDeadUnits; }) return Op::kDeadUnits;
    return false;
  }
  // The derivative reads x or y, never both (strata/ops.hpp).
  bool backward_reads_inputs() const override {
    return activation::derivative_reads_input(op_.desc());
  }
  bool backward_reads_output() const override {
    return activation::derivative_reads_output(op_.desc());
  }
  bool recomputable() const override { return true; }

  // The graph may run it inside the layer before it (strata/graph.hpp, "Fusion").
  std::optional<ActivationDesc> fusable_activation() const override { return op_.desc(); }

  // Each op describes itself as ONNX nodes (export_to below).
  bool export_to(ExportContext& context) const override {
    op_.export_to(context);
    return true;
  }

  void forward(Context& context, std::span<const Tensor> in, Tensor& out) override {
    prepare_output(out, in[0].shape());
    if constexpr (requires(float v) { op_.branch(v); }) {
      if (context.frozen != nullptr) {  // gradient checking: see FrozenBranches
        const float* x = in[0].data();
        float* y = out.data();
        const Op op = op_;
        int64_t* taken = context.frozen->of(this, in[0].numel()).data();
        const bool recording = context.frozen->recording;
        parallel_elementwise(context, in[0].numel(), [=](int64_t lo, int64_t hi) {
          for (int64_t i = lo; i < hi; ++i) {
            if (recording) taken[i] = op.branch(x[i]);
            y[i] = op.value_on(taken[i], x[i]);
          }
        });
        return;
      }
    }
    kernel_->forward(in[0], out);
  }

  void backward(Context&, std::span<const Tensor> in, const Tensor& out, const Tensor& dout,
                std::span<Tensor> din) override {
    kernel_->backward(in[0], out, dout, din[0]);
  }

 protected:
  Shape infer_shape(const SetupContext& context, std::span<const Shape> inputs) override {
    kernel_ = context.kernel<ActivationKernel>("activation", op_.desc());
    return inputs[0];
  }

 private:
  Op op_;
  std::shared_ptr<ActivationKernel> kernel_;
};

struct ReluOp {
  static constexpr const char* kName = "relu";
  static constexpr bool kDeadUnits = true;  // 0 for every x <= 0
  explicit ReluOp(const Config&) {}
  ActivationDesc desc() const { return {Kind::kRelu}; }
  // The smooth pieces, for FrozenBranches: 0 (y = 0) and 1 (y = x). "x <= 0" as in the value,
  // so that NaN takes the y = x piece and passes through.
  int64_t branch(float x) const { return x <= 0.0f ? 0 : 1; }
  float value_on(int64_t branch, float x) const { return branch == 0 ? 0.0f : x; }
  void export_to(ExportContext& c) const { c.node("Relu", {c.input()}, {c.output()}); }
};

struct LeakyReluOp {
  static constexpr const char* kName = "leaky_relu";
  explicit LeakyReluOp(const Config& config) : slope(config.get<float>("negative_slope", 0.01f)) {}
  ActivationDesc desc() const { return {Kind::kLeakyRelu, slope}; }
  int64_t branch(float x) const { return x > 0.0f ? 1 : 0; }
  float value_on(int64_t branch, float x) const { return branch == 1 ? x : slope * x; }
  void export_to(ExportContext& c) const {
    c.node("LeakyRelu", {c.input()}, {c.output()}).set("alpha", slope);
  }
  float slope;
};

struct TanhOp {
  static constexpr const char* kName = "tanh";
  explicit TanhOp(const Config&) {}
  ActivationDesc desc() const { return {Kind::kTanh}; }
  void export_to(ExportContext& c) const { c.node("Tanh", {c.input()}, {c.output()}); }
};

struct SigmoidOp {
  static constexpr const char* kName = "sigmoid";
  explicit SigmoidOp(const Config&) {}
  ActivationDesc desc() const { return {Kind::kSigmoid}; }
  void export_to(ExportContext& c) const { c.node("Sigmoid", {c.input()}, {c.output()}); }
};

// ONNX HardSigmoid, max(0, min(1, alpha x + beta)), from the layer's input to `output`, with
// PyTorch's alpha 1/6 and beta 0.5: relu6(x + 3) / 6.
void export_hard_sigmoid(ExportContext& c, const std::string& output) {
  c.node("HardSigmoid", {c.input()}, {output}).set("alpha", 1.0f / 6.0f).set("beta", 0.5f);
}

struct Relu6Op {
  static constexpr const char* kName = "relu6";
  explicit Relu6Op(const Config&) {}
  ActivationDesc desc() const { return {Kind::kRelu6}; }
  // Clip with its bounds as scalar inputs (opset 11 and later).
  void export_to(ExportContext& c) const {
    Tensor low(Shape{}), high(Shape{});
    high.fill(6.0f);
    c.node("Clip", {c.input(), c.parameter("min", low), c.parameter("max", high)}, {c.output()});
  }
};

struct HardSigmoidOp {
  static constexpr const char* kName = "hard_sigmoid";
  explicit HardSigmoidOp(const Config&) {}
  ActivationDesc desc() const { return {Kind::kHardSigmoid}; }
  void export_to(ExportContext& c) const { export_hard_sigmoid(c, c.output()); }
};

struct HardswishOp {
  static constexpr const char* kName = "hardswish";
  explicit HardswishOp(const Config&) {}
  ActivationDesc desc() const { return {Kind::kHardswish}; }
  // x * HardSigmoid(x): ONNX HardSwish exists only from opset 14, and OpenCV 4.6 lacks it.
  void export_to(ExportContext& c) const {
    const std::string gate = c.value("hard_sigmoid");
    export_hard_sigmoid(c, gate);
    c.node("Mul", {c.input(), gate}, {c.output()});
  }
};

}  // namespace

void register_activations(Registries& registries) {
  registries.layers.add<Elementwise<ReluOp>>("relu");
  registries.layers.add<Elementwise<LeakyReluOp>>("leaky_relu");
  registries.layers.add<Elementwise<TanhOp>>("tanh");
  registries.layers.add<Elementwise<SigmoidOp>>("sigmoid");
  registries.layers.add<Elementwise<Relu6Op>>("relu6");
  registries.layers.add<Elementwise<HardSigmoidOp>>("hard_sigmoid");
  registries.layers.add<Elementwise<HardswishOp>>("hardswish");
}

}  // namespace strata::layers
