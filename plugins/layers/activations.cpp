// Element-wise activations: relu, leaky_relu, tanh, sigmoid.
//
// WHAT THESE OBJECTS REPRESENT
//   y = f(x) applied to every element independently:
//     relu        f(x) = max(0, x)                      f'(0) is taken as 0, as in PyTorch
//     leaky_relu  f(x) = x > 0 ? x : negative_slope*x   key negative_slope (0.01)
//     tanh        f(x) = tanh(x)                        f' = 1 - y^2 (from the output)
//     sigmoid     f(x) = 1 / (1 + exp(-x))              f' = y (1 - y) (from the output)
//   relu and leaky_relu have a kink at 0: with a FrozenBranches in the Context (gradient checking)
//   they record which side of it each element lies on, then keep to that side.
//   No parameters. NaN propagates through every one of them, as in PyTorch (relu(NaN) = NaN), so
//   that a model with a NaN weight gives a NaN output instead of a plausible finite one.
//
// REQUIRES
//   - one input of any sample shape.
// ENSURES
//   - output sample shape == input sample shape.
//   - the work is split over the backend's parallel_for in chunks of kElementwiseGrain elements.
#include <cmath>

#include "common.hpp"

namespace strata::layers {

namespace {

// Op provides value(x) and derivative(x, y); both are pure functions of one element.
template <class Op>
class Elementwise final : public Layer {
 public:
  explicit Elementwise(const Config& config) : op_(config) {}

  std::string_view type() const override { return Op::kName; }

  void forward(Context& context, std::span<const Tensor> in, Tensor& out) override {
    prepare_output(out, in[0].shape());
    const float* x = in[0].data();
    float* y = out.data();
    const Op op = op_;
    if constexpr (requires(float v) { op.branch(v); }) {
      if (context.frozen != nullptr) {  // gradient checking: see FrozenBranches
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
    parallel_elementwise(context, in[0].numel(), [=](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) y[i] = op.value(x[i]);
    });
  }

  void backward(Context& context, std::span<const Tensor> in, const Tensor& out, const Tensor& dout,
                std::span<Tensor> din) override {
    if (!din[0].defined()) return;
    const float* x = in[0].data();
    const float* y = out.data();
    const float* dy = dout.data();
    float* dx = din[0].data();
    const Op op = op_;
    parallel_elementwise(context, in[0].numel(), [=](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) dx[i] = dy[i] * op.derivative(x[i], y[i]);
    });
  }

 protected:
  Shape infer_shape(const SetupContext&, std::span<const Shape> inputs) override {
    return inputs[0];
  }

 private:
  Op op_;
};

struct ReluOp {
  static constexpr const char* kName = "relu";
  explicit ReluOp(const Config&) {}
  // Written as "x <= 0 ? 0 : x" so that NaN passes through, as in PyTorch (threshold and
  // threshold_backward): a NaN weight must show in the output, where the divergence check sees it.
  float value(float x) const { return x <= 0.0f ? 0.0f : x; }
  float derivative(float x, float) const { return x <= 0.0f ? 0.0f : 1.0f; }
  // The smooth pieces, for FrozenBranches: 0 (y = 0) and 1 (y = x).
  int64_t branch(float x) const { return x <= 0.0f ? 0 : 1; }
  float value_on(int64_t branch, float x) const { return branch == 0 ? 0.0f : x; }
};

struct LeakyReluOp {
  static constexpr const char* kName = "leaky_relu";
  explicit LeakyReluOp(const Config& config) : slope(config.get<float>("negative_slope", 0.01f)) {}
  float value(float x) const { return x > 0.0f ? x : slope * x; }  // NaN: slope * NaN = NaN
  float derivative(float x, float) const { return x > 0.0f ? 1.0f : slope; }
  int64_t branch(float x) const { return x > 0.0f ? 1 : 0; }
  float value_on(int64_t branch, float x) const { return branch == 1 ? x : slope * x; }
  float slope;
};

struct TanhOp {
  static constexpr const char* kName = "tanh";
  explicit TanhOp(const Config&) {}
  float value(float x) const { return std::tanh(x); }
  float derivative(float, float y) const { return 1.0f - y * y; }
};

struct SigmoidOp {
  static constexpr const char* kName = "sigmoid";
  explicit SigmoidOp(const Config&) {}
  // Written so that exp() never overflows: for x < 0 use exp(x) / (1 + exp(x)).
  float value(float x) const {
    if (x >= 0.0f) return 1.0f / (1.0f + std::exp(-x));
    const float e = std::exp(x);
    return e / (1.0f + e);
  }
  float derivative(float, float y) const { return y * (1.0f - y); }
};

}  // namespace

void register_activations(Registries& registries) {
  registries.layers.add<Elementwise<ReluOp>>("relu");
  registries.layers.add<Elementwise<LeakyReluOp>>("leaky_relu");
  registries.layers.add<Elementwise<TanhOp>>("tanh");
  registries.layers.add<Elementwise<SigmoidOp>>("sigmoid");
}

}  // namespace strata::layers
