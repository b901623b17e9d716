// lrn: local response normalization across channels (AlexNet), as torch.nn.LocalResponseNorm.
//
// WHAT THIS OBJECT REPRESENTS
//   y[c] = x[c] / (k + alpha/size * sum over j in W(c) of x[j]^2)^beta, at every (h, w), where
//   the window W(c) = [c - floor(size/2), c + floor((size-1)/2)] is clipped to the channels
//   that exist. This is PyTorch's definition exactly: alpha is divided by size (the mean of the
//   squares, with missing channels counting as zeros), and an even size reaches one channel
//   further down than up. AlexNet's paper adds alpha*sum without dividing: use alpha*size here
//   to get its numbers. No parameters.
//
// KEYS
//   size   required, >= 1: channels in the window
//   alpha  1e-4, >= 0
//   beta   0.75
//   k      1.0, > 0 (so the denominator never vanishes)
//
// REQUIRES
//   - one input with sample shape [C, H, W].
// ENSURES
//   - output sample shape == input sample shape.
//   - backward, with s[c] = k + alpha/size * sum_{W(c)} x^2:
//       dx[i] = dy[i] s[i]^-beta
//               - 2 alpha beta / size * x[i] * sum over c with i in W(c) of dy[c] x[c]
//               s[c]^(-beta-1)
//   - forward and backward run on the backend's "lrn" kernel (strata/ops.hpp's LrnDesc), which
//     keeps the workspace backward needs for the second sum (it depends on how the kernel
//     splits the work: the reference's is the size of the input, grown only when the batch
//     grows; tbb's one tile per thread). Every backend agrees with the reference within the
//     conformance tolerance.
#include <fmt/format.h>

#include <memory>

#include "common.hpp"
#include "strata/error.hpp"
#include "strata/export.hpp"
#include "strata/ops.hpp"

namespace strata::layers {

namespace {

class Lrn final : public Layer {
 public:
  explicit Lrn(const Config& config)
      : size_(config.get<int64_t>("size")),
        alpha_(config.get<double>("alpha", 1e-4)),
        beta_(config.get<double>("beta", 0.75)),
        k_(config.get<double>("k", 1.0)) {
    if (size_ < 1) config.fail_key("size", fmt::format("must be at least 1, found {}", size_));
    if (!(alpha_ >= 0.0)) config.fail_key("alpha", fmt::format("must be >= 0, found {}", alpha_));
    if (!(k_ > 0.0)) config.fail_key("k", fmt::format("must be positive, found {}", k_));
  }

  std::string_view type() const override { return "lrn"; }
  // backward reads its input (the kernel recomputes the scale from x), never its output.
  bool backward_reads_output() const override { return false; }
  bool recomputable() const override { return true; }
  std::string implementation() const override { return kernel_ ? kernel_->implementation() : ""; }

  // ONNX LRN: the same formula (alpha divided by size) over the window
  // [c - floor((size-1)/2), c + ceil((size-1)/2)], which is PyTorch's for an odd size only.
  bool export_to(ExportContext& context) const override {
    if (size_ % 2 == 0) {
      fail(
          "size {} is even: ONNX LRN's window then reaches one channel further up, PyTorch's "
          "(and this layer's) one further down, so there is no exact ONNX mapping",
          size_);
    }
    context.node("LRN", {context.input()}, {context.output()})
        .set("size", size_)
        .set("alpha", static_cast<float>(alpha_))
        .set("beta", static_cast<float>(beta_))
        .set("bias", static_cast<float>(k_));
    return true;
  }

  void forward(Context&, std::span<const Tensor> in, Tensor& out) override {
    prepare_output(out, in[0].shape());
    kernel_->forward(in[0], out);
  }

  void backward(Context&, std::span<const Tensor> in, const Tensor&, const Tensor& dout,
                std::span<Tensor> din) override {
    kernel_->backward(in[0], dout, din[0]);
  }

 protected:
  Shape infer_shape(const SetupContext& context, std::span<const Shape> inputs) override {
    require_image_shape(inputs[0], "lrn");
    LrnDesc desc;
    desc.channels = inputs[0][0];
    desc.area = inputs[0][1] * inputs[0][2];
    desc.size = size_;
    desc.alpha = alpha_;
    desc.beta = beta_;
    desc.k = k_;
    kernel_ = context.kernel<LrnKernel>("lrn", desc);
    return inputs[0];
  }

 private:
  int64_t size_;
  double alpha_, beta_, k_;
  std::shared_ptr<LrnKernel> kernel_;
};

}  // namespace

void register_lrn(Registries& registries) { registries.layers.add<Lrn>("lrn"); }

}  // namespace strata::layers
