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
//   - the work runs over (sample, channel) planes split over the backend's parallel_for, in the
//     same order on every backend (identical results). backward keeps one workspace the size of
//     the input, grown only when the batch grows.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "common.hpp"
#include "strata/error.hpp"
#include "strata/export.hpp"

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

  void forward(Context& context, std::span<const Tensor> in, Tensor& out) override {
    prepare_output(out, in[0].shape());
    const float* x = in[0].data();
    float* y = out.data();
    const auto neg_beta = static_cast<float>(-beta_);
    for_planes(context, in[0].dim(0), [&](int64_t n, int64_t c, float* scale) {
      window_scale(x, n, c, scale);
      const int64_t offset = (n * channels_ + c) * area_;
      for (int64_t i = 0; i < area_; ++i) {
        y[offset + i] = x[offset + i] * std::pow(scale[i], neg_beta);
      }
    });
  }

  void backward(Context& context, std::span<const Tensor> in, const Tensor&, const Tensor& dout,
                std::span<Tensor> din) override {
    if (!din[0].defined()) return;
    const int64_t batch = in[0].dim(0);
    const float* x = in[0].data();
    const float* dy = dout.data();
    float* dx = din[0].data();
    workspace_.resize(static_cast<std::size_t>(batch * channels_ * area_));
    float* t = workspace_.data();
    const auto neg_beta = static_cast<float>(-beta_);
    const auto neg_beta_1 = static_cast<float>(-beta_ - 1.0);
    // Pass 1: dx = dy s^-beta, and t = dy x s^(-beta-1) for pass 2.
    for_planes(context, batch, [&](int64_t n, int64_t c, float* scale) {
      window_scale(x, n, c, scale);
      const int64_t offset = (n * channels_ + c) * area_;
      for (int64_t i = 0; i < area_; ++i) {
        dx[offset + i] = dy[offset + i] * std::pow(scale[i], neg_beta);
        t[offset + i] = dy[offset + i] * x[offset + i] * std::pow(scale[i], neg_beta_1);
      }
    });
    // Pass 2: channel i is in W(c) for c in [i - (size-1)/2, i + size/2].
    const auto factor = static_cast<float>(2.0 * alpha_ * beta_ / static_cast<double>(size_));
    for_planes(context, batch, [&](int64_t n, int64_t i, float* sum) {
      std::fill(sum, sum + area_, 0.0f);
      const int64_t lo = std::max<int64_t>(0, i - (size_ - 1) / 2);
      const int64_t hi = std::min<int64_t>(channels_ - 1, i + size_ / 2);
      for (int64_t c = lo; c <= hi; ++c) {
        const float* tc = t + (n * channels_ + c) * area_;
        for (int64_t p = 0; p < area_; ++p) sum[p] += tc[p];
      }
      const int64_t offset = (n * channels_ + i) * area_;
      for (int64_t p = 0; p < area_; ++p) dx[offset + p] -= factor * x[offset + p] * sum[p];
    });
  }

 protected:
  Shape infer_shape(const SetupContext&, std::span<const Shape> inputs) override {
    require_image_shape(inputs[0], "lrn");
    channels_ = inputs[0][0];
    area_ = inputs[0][1] * inputs[0][2];
    return inputs[0];
  }

 private:
  // scale[p] = k + alpha/size * sum over j in W(c) of x[n, j, p]^2, for the area_ positions p.
  void window_scale(const float* x, int64_t n, int64_t c, float* scale) const {
    const int64_t lo = std::max<int64_t>(0, c - size_ / 2);
    const int64_t hi = std::min<int64_t>(channels_ - 1, c + (size_ - 1) / 2);
    std::fill(scale, scale + area_, 0.0f);
    for (int64_t j = lo; j <= hi; ++j) {
      const float* xj = x + (n * channels_ + j) * area_;
      for (int64_t p = 0; p < area_; ++p) scale[p] += xj[p] * xj[p];
    }
    const auto a = static_cast<float>(alpha_ / static_cast<double>(size_));
    const auto k = static_cast<float>(k_);
    for (int64_t p = 0; p < area_; ++p) scale[p] = k + a * scale[p];
  }

  // Runs body(n, c, scratch) for every (sample, channel) plane; scratch holds area_ floats
  // private to the running task. A task takes about kElementwiseGrain / size values.
  template <class Body>
  void for_planes(Context& context, int64_t batch, const Body& body) const {
    const int64_t planes = batch * channels_;
    auto run = [&](int64_t lo, int64_t hi) {
      std::vector<float> scratch(static_cast<std::size_t>(area_));
      for (int64_t p = lo; p < hi; ++p) body(p / channels_, p % channels_, scratch.data());
    };
    parallel_elementwise(context, planes, area_ * size_, run);
  }

  int64_t size_;
  double alpha_, beta_, k_;
  int64_t channels_ = 0, area_ = 1;
  std::vector<float> workspace_;
};

}  // namespace

void register_lrn(Registries& registries) { registries.layers.add<Lrn>("lrn"); }

}  // namespace strata::layers
