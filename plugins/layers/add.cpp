// add: element-wise sum of two or more inputs (ResNet's shortcut join).
//
// WHAT THIS OBJECT REPRESENTS
//   y = x_0 + x_1 + ... + x_{k-1}, element by element. No parameters, no keys.
//   Written in YAML with named inputs:
//     - {name: sum, type: add, inputs: [conv2, shortcut]}
//
// REQUIRES
//   - two or more inputs, all of the identical sample shape (no broadcasting: a mismatch is an
//     error naming both shapes, so a residual branch that changed shape is caught at setup).
// ENSURES
//   - output sample shape == the inputs' sample shape.
//   - backward: every wanted input gradient is a copy of dy.
//   - fusion (strata/graph.hpp): with an activation f fused into it, y = f(x_0 + ... + x_{k-1})
//     (ResNet's add, relu).
//   - the work is split over the backend's parallel_for in chunks of kElementwiseGrain elements.
#include <cstring>
#include <limits>
#include <optional>
#include <type_traits>

#include "common.hpp"
#include "strata/error.hpp"
#include "strata/export.hpp"

namespace strata::layers {

namespace {

// y[i] = f(x0[i] + x1[i]) for i in [lo, hi) (a function of its own: its loop vectorizes).
template <class F>
void sum_range(const F f, const float* x0, const float* x1, float* y, int64_t lo, int64_t hi) {
  for (int64_t i = lo; i < hi; ++i) y[i] = f.value(x0[i] + x1[i]);
}

class Add final : public Layer {
 public:
  explicit Add(const Config&) {}

  std::string_view type() const override { return "add"; }
  // backward copies or spreads dout: it reads neither tensor's values.
  bool backward_reads_inputs() const override { return false; }
  bool backward_reads_output() const override { return false; }
  bool recomputable() const override { return true; }
  // Fusion (Layer): any activation, applied as the sums are written.
  bool fuses(const ActivationDesc&) const override { return true; }
  void set_fused_activation(const std::optional<ActivationDesc>& activation) override {
    fused_ = activation;
  }
  // "+<activation>" while one is fused; the sums themselves run in the layer.
  std::string implementation() const override {
    return fused_ ? fmt::format("+{}", activation_name(*fused_)) : "";
  }
  int min_inputs() const override { return 2; }
  int max_inputs() const override { return std::numeric_limits<int>::max(); }

  // ONNX Add for two inputs, Sum for more.
  bool export_to(ExportContext& context) const override {
    context.node(context.num_inputs() == 2 ? "Add" : "Sum", context.inputs(), {context.output()});
    return true;
  }

  void forward(Context& context, std::span<const Tensor> in, Tensor& out) override {
    prepare_output(out, in[0].shape());
    float* y = out.data();
    visit_fused(fused_ ? &*fused_ : nullptr, [&](const auto f) {
      parallel_elementwise(context, out.numel(), [&, f](int64_t lo, int64_t hi) {
        const float* x0 = in[0].data();
        const float* x1 = in[1].data();
        if (in.size() == 2) {
          sum_range(f, x0, x1, y, lo, hi);
          return;
        }
        for (int64_t i = lo; i < hi; ++i) y[i] = x0[i] + x1[i];
        for (std::size_t k = 2; k < in.size(); ++k) {
          const float* xk = in[k].data();
          for (int64_t i = lo; i < hi; ++i) y[i] += xk[i];
        }
        if constexpr (!std::is_same_v<decltype(f), const activation::None>) {
          for (int64_t i = lo; i < hi; ++i) y[i] = f.value(y[i]);
        }
      });
    });
  }

  void backward(Context& context, std::span<const Tensor>, const Tensor&, const Tensor& dout,
                std::span<Tensor> din) override {
    const float* dy = dout.data();
    for (Tensor& dx : din) {
      if (!dx.defined()) continue;
      float* d = dx.data();
      parallel_elementwise(context, dout.numel(), [=](int64_t lo, int64_t hi) {
        std::memcpy(d + lo, dy + lo, static_cast<std::size_t>(hi - lo) * sizeof(float));
      });
    }
  }

 protected:
  Shape infer_shape(const SetupContext&, std::span<const Shape> inputs) override {
    for (std::size_t k = 1; k < inputs.size(); ++k) {
      if (inputs[k] != inputs[0]) {
        fail("add needs inputs of identical shape, but input 0 is {} and input {} is {}",
             inputs[0].str(), k, inputs[k].str());
      }
    }
    return inputs[0];
  }

 private:
  std::optional<ActivationDesc> fused_;  // the activation fused into its forward, or none
};

}  // namespace

void register_add(Registries& registries) { registries.layers.add<Add>("add"); }

}  // namespace strata::layers
