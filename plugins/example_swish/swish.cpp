// example_swish: the smallest complete layer plugin (see docs/writing-a-plugin.md).
//
// swish(x) = x * sigmoid(x)   (Ramachandran et al., 2017; "SiLU" in PyTorch)
//
//   requires: any input shape; no configuration keys.
//   ensures:  output has the input's shape; backward writes
//             din = dout * s * (1 + x * (1 - s)), with s = sigmoid(x); export_to() describes it
//             as ONNX Sigmoid and Mul for `strata export`.
#include <cmath>

#include "strata/elementwise.hpp"
#include "strata/export.hpp"
#include "strata/layer.hpp"
#include "strata/plugin.hpp"

namespace {

class Swish final : public strata::Layer {
 public:
  // The registry rejects any key this constructor does not read, so `{type: swish, beta: 2}`
  // is an error rather than a silently ignored setting.
  explicit Swish(const strata::Config&) {}

  std::string_view type() const override { return "swish"; }

  // Optional: how `strata export --onnx` writes the layer, x * Sigmoid(x) in ONNX operators.
  // Without it, exporting a model that uses swish is an error naming this plugin.
  bool export_to(strata::ExportContext& context) const override {
    const std::string gate = context.value("sigmoid");
    context.node("Sigmoid", {context.input()}, {gate});
    context.node("Mul", {context.input(), gate}, {context.output()});
    return true;
  }

  void forward(strata::Context& context, std::span<const strata::Tensor> in,
               strata::Tensor& out) override {
    const float* x = in[0].data();
    float* y = out.data();
    strata::parallel_elementwise(context, in[0].numel(), [=](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) y[i] = x[i] / (1.0f + std::exp(-x[i]));
    });
  }

  void backward(strata::Context& context, std::span<const strata::Tensor> in,
                const strata::Tensor& out, const strata::Tensor& dout,
                std::span<strata::Tensor> din) override {
    if (!din[0].defined()) return;  // nobody needs the input gradient
    const float* x = in[0].data();
    const float* dy = dout.data();
    float* dx = din[0].data();
    strata::parallel_elementwise(context, in[0].numel(), [=](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        const float s = 1.0f / (1.0f + std::exp(-x[i]));
        dx[i] = dy[i] * s * (1.0f + x[i] * (1.0f - s));
      }
    });
  }

 protected:
  strata::Shape infer_shape(const strata::SetupContext&,
                            std::span<const strata::Shape> inputs) override {
    return inputs[0];  // element-wise: same shape out
  }
};

void register_all(strata::Registries& registries) {
  registries.layers.add<Swish>("swish");
}

}  // namespace

STRATA_PLUGIN("example_swish", "1.0", register_all)
