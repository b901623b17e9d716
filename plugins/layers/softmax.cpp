// softmax: turns scores into probabilities, for inference outputs.
//
// WHAT THIS OBJECT REPRESENTS
//   y = exp(x - max) / sum exp(x - max) over one axis, by default the first axis of the sample:
//   over the features of [F] (a classifier's logits), and over the channels at each position of
//   [C, H, W] (a dense prediction). This is torch.softmax(x, dim=axis) and ONNX Softmax (opset
//   13) with the same axis. No parameters.
//   For training, end the model with the logits: the softmax_cross_entropy loss applies the
//   softmax itself, in a numerically safer way. Add this layer for `strata forward` outputs.
//
// KEYS
//   axis  1: counted as PyTorch and ONNX count it, on the batch [N, ...sample]: 1 is the first
//         sample axis, 2 the next, -1 the last (of [N, C, H, W]: 3 or -1, the width). The batch
//         axis (0, or -(R + 1)) is refused: it would mix the samples.
//
// REQUIRES
//   - one input of any non-empty sample shape, of rank R; axis in [1, R] or [-R, -1].
// ENSURES
//   - output sample shape == input sample shape; each softmax group sums to 1.
//   - backward: dx = y * (dy - sum over the group of dy * y).
//   - forward and backward run on the backend's "softmax" kernel (strata/ops.hpp's SoftmaxDesc:
//     the sample axes before the axis, the axis, and those after it); the reference's sums run
//     in double, and every backend agrees with it within the conformance tolerance.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <memory>

#include "common.hpp"
#include "strata/error.hpp"
#include "strata/export.hpp"
#include "strata/ops.hpp"

namespace strata::layers {

namespace {

class Softmax final : public Layer {
 public:
  explicit Softmax(const Config& config) : axis_(config.get<int64_t>("axis", 1)), origin_(config) {}

  std::string_view type() const override { return "softmax"; }
  // backward reads its output (y), never its input.
  bool backward_reads_inputs() const override { return false; }
  bool recomputable() const override { return true; }
  std::string implementation() const override { return kernel_ ? kernel_->implementation() : ""; }

  // ONNX Softmax over the same axis (counted on [N, ...sample] as ONNX does); its single-axis
  // meaning is opset 13's.
  bool export_to(ExportContext& context) const override {
    context.node("Softmax", {context.input()}, {context.output()}).set("axis", axis_);
    return true;
  }

  void forward(Context&, std::span<const Tensor> in, Tensor& out) override {
    prepare_output(out, in[0].shape());
    kernel_->forward(in[0], out);
  }

  void backward(Context&, std::span<const Tensor>, const Tensor& out, const Tensor& dout,
                std::span<Tensor> din) override {
    kernel_->backward(out, dout, din[0]);
  }

 protected:
  Shape infer_shape(const SetupContext& context, std::span<const Shape> inputs) override {
    const Shape& in = inputs[0];
    if (in.rank() == 0 || in.numel() == 0) {
      fail("softmax expects a non-empty sample ([features] or [channels, ...]), got {}", in.str());
    }
    const auto rank = static_cast<int64_t>(in.rank()) + 1;  // with the batch axis
    const int64_t axis = axis_ < 0 ? axis_ + rank : axis_;
    if (axis < 1 || axis >= rank) {
      origin_.fail_key("axis",
                       fmt::format("must be a sample axis of the input [N, {}]: 1 to {} or "
                                   "{} to -1 (0 is the batch axis), found {}",
                                   fmt::join(in.dims(), ", "), rank - 1, -(rank - 1), axis_));
    }
    SoftmaxDesc desc;
    desc.axis = in[axis - 1];
    for (int64_t a = axis; a < rank - 1; ++a) desc.inner *= in[a];
    desc.outer = in.numel() / (desc.axis * desc.inner);
    kernel_ = context.kernel<SoftmaxKernel>("softmax", desc);
    return in;
  }

 private:
  int64_t axis_;   // as configured (negative: from the end)
  Config origin_;  // for errors at the key, found at setup
  std::shared_ptr<SoftmaxKernel> kernel_;
};

}  // namespace

void register_softmax(Registries& registries) { registries.layers.add<Softmax>("softmax"); }

}  // namespace strata::layers
