// flatten: reshapes each sample to one dimension (torch.flatten(x, 1)).
//
// WHAT THIS OBJECT REPRESENTS
//   [C, H, W] (or any sample shape) -> [C*H*W], in row-major order. No parameters.
//
// REQUIRES
//   - one input of any non-empty sample shape.
// ENSURES
//   - output sample shape [numel of the input sample]; values unchanged and in the same order.
//   - forward/backward copy the data (one memcpy each) when the caller hands in its own output
//     or gradient buffer, as the graph does: those buffers belong to the caller, which reuses
//     them every step. When the output tensor is undefined, forward makes it a view of the
//     input instead (no copy).
#include <fmt/format.h>

#include "common.hpp"
#include "strata/error.hpp"
#include "strata/export.hpp"

namespace strata::layers {

namespace {

class Flatten final : public Layer {
 public:
  explicit Flatten(const Config&) {}

  std::string_view type() const override { return "flatten"; }
  // backward copies or spreads dout: it reads neither tensor's values.
  bool backward_reads_inputs() const override { return false; }
  bool backward_reads_output() const override { return false; }
  bool recomputable() const override { return true; }

  // ONNX Flatten with axis 1: [N, C, H, W] -> [N, C*H*W], row-major as here.
  bool export_to(ExportContext& context) const override {
    context.node("Flatten", {context.input()}, {context.output()}).set("axis", int64_t{1});
    return true;
  }

  void forward(Context&, std::span<const Tensor> in, Tensor& out) override {
    const Shape shape = output_shape().with_batch(in[0].dim(0));
    if (!out.defined()) {
      out = in[0].view(shape);
      return;
    }
    prepare_output(out, shape);
    out.copy_from(in[0]);  // no-op when `out` already aliases the input
  }

  void backward(Context&, std::span<const Tensor>, const Tensor&, const Tensor& dout,
                std::span<Tensor> din) override {
    if (din[0].defined()) din[0].copy_from(dout);
  }

 protected:
  Shape infer_shape(const SetupContext&, std::span<const Shape> inputs) override {
    const Shape& in = inputs[0];
    if (in.rank() == 0 || in.numel() < 1) {
      fail("flatten expects a non-empty sample shape, got {}", in.str());
    }
    return Shape{in.numel()};
  }
};

}  // namespace

void register_flatten(Registries& registries) { registries.layers.add<Flatten>("flatten"); }

}  // namespace strata::layers
