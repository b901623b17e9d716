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
//   - sums run in double; groups are split over the backend's parallel_for.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>

#include "common.hpp"
#include "strata/error.hpp"

namespace strata::layers {

namespace {

class Softmax final : public Layer {
 public:
  explicit Softmax(const Config& config) : axis_(config.get<int64_t>("axis", 1)), origin_(config) {}

  std::string_view type() const override { return "softmax"; }

  void forward(Context& context, std::span<const Tensor> in, Tensor& out) override {
    prepare_output(out, in[0].shape());
    const float* x = in[0].data();
    float* y = out.data();
    const int64_t size = size_, stride = stride_;
    for_groups(context, in[0].dim(0), [=](int64_t group) {
      // group = (n * outer + o) * stride + position; the elements are stride apart.
      const int64_t base = (group / stride) * size * stride + group % stride;
      float max = x[base];
      for (int64_t c = 1; c < size; ++c) max = std::max(max, x[base + c * stride]);
      double sum = 0.0;
      for (int64_t c = 0; c < size; ++c) {
        const float e = std::exp(x[base + c * stride] - max);
        y[base + c * stride] = e;
        sum += e;
      }
      const auto inverse = static_cast<float>(1.0 / sum);
      for (int64_t c = 0; c < size; ++c) y[base + c * stride] *= inverse;
    });
  }

  void backward(Context& context, std::span<const Tensor> in, const Tensor& out, const Tensor& dout,
                std::span<Tensor> din) override {
    if (!din[0].defined()) return;
    const float* y = out.data();
    const float* dy = dout.data();
    float* dx = din[0].data();
    const int64_t size = size_, stride = stride_;
    for_groups(context, in[0].dim(0), [=](int64_t group) {
      const int64_t base = (group / stride) * size * stride + group % stride;
      double dot = 0.0;
      for (int64_t c = 0; c < size; ++c) {
        dot += static_cast<double>(dy[base + c * stride]) * y[base + c * stride];
      }
      for (int64_t c = 0; c < size; ++c) {
        const int64_t i = base + c * stride;
        dx[i] = static_cast<float>(y[i] * (dy[i] - dot));
      }
    });
  }

 protected:
  Shape infer_shape(const SetupContext&, std::span<const Shape> inputs) override {
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
    size_ = in[axis - 1];
    stride_ = 1;
    for (int64_t a = axis; a < rank - 1; ++a) stride_ *= in[a];
    outer_ = in.numel() / (size_ * stride_);
    return in;
  }

 private:
  template <class Body>
  void for_groups(Context& context, int64_t batch, const Body& body) const {
    const int64_t groups = batch * outer_ * stride_;
    auto run = [&](int64_t lo, int64_t hi) {
      for (int64_t g = lo; g < hi; ++g) body(g);
    };
    parallel_elementwise(context, groups, size_, run);
  }

  int64_t axis_;        // as configured (negative: from the end)
  Config origin_;       // for errors at the key, found at setup
  int64_t size_ = 1;    // elements in one softmax group (along the axis)
  int64_t stride_ = 1;  // distance between them (the elements after the axis)
  int64_t outer_ = 1;   // groups of groups per sample (the sample axes before the axis)
};

}  // namespace

void register_softmax(Registries& registries) { registries.layers.add<Softmax>("softmax"); }

}  // namespace strata::layers
