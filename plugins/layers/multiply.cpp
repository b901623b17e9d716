// multiply: element-wise product of two inputs (squeeze-and-excitation's channel gate).
//
// WHAT THIS OBJECT REPRESENTS
//   y = a * b for the two `inputs` [a, b], in one of two forms (no other broadcasting):
//     same shape     a and b of the identical sample shape (any rank): y = a * b element by
//                    element;
//     channel gate   one input [C, 1, 1] (the gate g) and the other [C, H, W] (the feature map x),
//                    in either order, with the same C: y[c, h, w] = x[c, h, w] * g[c, 0, 0], as
//                    PyTorch's broadcasting computes x * g in torchvision's SqueezeExcitation.
//   Written in YAML with named inputs, after a gate built from global_avg_pool, 1x1 convs and
//   hard_sigmoid (or sigmoid):
//     - {name: scale, type: multiply, inputs: [features, gate]}
//   No parameters, no keys.
//
// REQUIRES
//   - exactly two inputs, of shapes in one of the two forms above. Anything else is an error at
//     setup naming both shapes (a [C] vector beside [C, H, W], [1, H, W] spatial maps, a gate
//     whose C differs from the feature map's), because PyTorch's broadcasting would line [C] up
//     with W and the result would be silently wrong.
// ENSURES
//   - output sample shape: the inputs' shape, or the feature map's [C, H, W] for a gate.
//   - backward: da = dy * b and db = dy * a; for a gate dx = dy * g[c] and
//     dg[c] = sum over (h, w) of dy * x, summed in double one (sample, channel) plane at a time,
//     so every backend and thread count gives identical results.
//   - same-shape work is split over the backend's parallel_for in chunks of kElementwiseGrain
//     elements, gate work in whole (sample, channel) planes of about as many elements.
#include <algorithm>

#include "common.hpp"
#include "strata/error.hpp"
#include "strata/export.hpp"

namespace strata::layers {

namespace {

class Multiply final : public Layer {
 public:
  explicit Multiply(const Config&) {}

  std::string_view type() const override { return "multiply"; }
  // backward reads its inputs (each is the other's derivative), never its output.
  bool backward_reads_output() const override { return false; }
  bool recomputable() const override { return true; }
  int min_inputs() const override { return 2; }
  int max_inputs() const override { return 2; }

  // ONNX Mul: its broadcasting of a gate [N, C, 1, 1] over [N, C, H, W] is this layer's.
  bool export_to(ExportContext& context) const override {
    context.node("Mul", {context.input(0), context.input(1)}, {context.output()});
    return true;
  }

  void forward(Context& context, std::span<const Tensor> in, Tensor& out) override {
    prepare_output(out, output_shape().with_batch(in[0].dim(0)));
    float* y = out.data();
    if (gate_ < 0) {
      const float* a = in[0].data();
      const float* b = in[1].data();
      parallel_elementwise(context, out.numel(), [=](int64_t lo, int64_t hi) {
        for (int64_t i = lo; i < hi; ++i) y[i] = a[i] * b[i];
      });
      return;
    }
    const float* x = in[1 - gate_].data();
    const float* g = in[gate_].data();
    const int64_t area = area_;
    for_planes(context, out.numel() / area, [=](int64_t lo, int64_t hi) {
      for (int64_t p = lo; p < hi; ++p) {
        const float scale = g[p];
        const float* xp = x + p * area;
        float* yp = y + p * area;
        for (int64_t i = 0; i < area; ++i) yp[i] = xp[i] * scale;
      }
    });
  }

  void backward(Context& context, std::span<const Tensor> in, const Tensor&, const Tensor& dout,
                std::span<Tensor> din) override {
    const float* dy = dout.data();
    if (gate_ < 0) {
      for (int k = 0; k < 2; ++k) {
        if (!din[k].defined()) continue;
        const float* other = in[1 - k].data();
        float* d = din[k].data();
        parallel_elementwise(context, dout.numel(), [=](int64_t lo, int64_t hi) {
          for (int64_t i = lo; i < hi; ++i) d[i] = dy[i] * other[i];
        });
      }
      return;
    }
    const float* x = in[1 - gate_].data();
    const float* g = in[gate_].data();
    float* dx = din[1 - gate_].defined() ? din[1 - gate_].data() : nullptr;
    float* dg = din[gate_].defined() ? din[gate_].data() : nullptr;
    if (dx == nullptr && dg == nullptr) return;
    const int64_t area = area_;
    for_planes(context, dout.numel() / area, [=](int64_t lo, int64_t hi) {
      for (int64_t p = lo; p < hi; ++p) {
        const float* dyp = dy + p * area;
        if (dx != nullptr) {
          const float scale = g[p];
          float* dxp = dx + p * area;
          for (int64_t i = 0; i < area; ++i) dxp[i] = dyp[i] * scale;
        }
        if (dg != nullptr) {
          const float* xp = x + p * area;
          double sum = 0.0;
          for (int64_t i = 0; i < area; ++i) sum += static_cast<double>(dyp[i]) * xp[i];
          dg[p] = static_cast<float>(sum);
        }
      }
    });
  }

 protected:
  Shape infer_shape(const SetupContext&, std::span<const Shape> inputs) override {
    const Shape& a = inputs[0];
    const Shape& b = inputs[1];
    gate_ = -1;
    area_ = 1;
    if (a == b) return a;
    auto is_gate_for = [](const Shape& gate, const Shape& map) {
      return gate.rank() == 3 && map.rank() == 3 && gate[1] == 1 && gate[2] == 1 &&
             gate[0] == map[0];
    };
    if (is_gate_for(a, b) || is_gate_for(b, a)) {
      gate_ = is_gate_for(a, b) ? 0 : 1;
      const Shape& map = inputs[1 - gate_];
      area_ = map[1] * map[2];
      return map;
    }
    fail(
        "multiply needs two inputs of the same shape, or a per-channel gate [C, 1, 1] and a "
        "feature map [C, H, W] with the same C, but input 0 is {} and input 1 is {}",
        a.str(), b.str());
  }

 private:
  // Runs body(lo, hi) over (sample, channel) planes of area_ elements, in chunks of about
  // kElementwiseGrain elements (serially when the context has no backend).
  void for_planes(Context& context, int64_t planes,
                  const std::function<void(int64_t, int64_t)>& body) const {
    parallel_elementwise(context, planes, area_, body);
  }

  int gate_ = -1;     // which input is the [C, 1, 1] gate; -1: same shapes
  int64_t area_ = 1;  // H * W of the feature map when gating
};

}  // namespace

void register_multiply(Registries& registries) { registries.layers.add<Multiply>("multiply"); }

}  // namespace strata::layers
