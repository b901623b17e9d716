#include <algorithm>
#include <cmath>

#include "reference_kernels.hpp"

namespace strata::reference {

namespace {

constexpr std::string_view kName = "reference lrn";

}  // namespace

void ReferenceLrn::on_prepare() {
  validate(desc_, kName);
  scale_.resize(static_cast<std::size_t>(desc_.area));
}

void ReferenceLrn::window_scale(const float* x, int64_t n, int64_t c, float* scale) const {
  const int64_t channels = desc_.channels, area = desc_.area, size = desc_.size;
  const ChannelRange window = lrn_window(desc_, c);
  std::fill(scale, scale + area, 0.0f);
  for (int64_t j = window.first; j <= window.last; ++j) {
    const float* xj = x + (n * channels + j) * area;
    for (int64_t p = 0; p < area; ++p) scale[p] += xj[p] * xj[p];
  }
  const auto a = static_cast<float>(desc_.alpha / static_cast<double>(size));
  const auto k = static_cast<float>(desc_.k);
  for (int64_t p = 0; p < area; ++p) scale[p] = k + a * scale[p];
}

void ReferenceLrn::forward(const Tensor& x_tensor, Tensor& y_tensor) {
  const int64_t channels = desc_.channels, area = desc_.area;
  const int64_t batch = sample_batch(x_tensor, channels * area, kName, "x");
  check_same_count(y_tensor, x_tensor, kName, "y");
  const float* x = x_tensor.data();
  float* y = y_tensor.data();
  float* scale = scale_.data();
  const auto neg_beta = static_cast<float>(-desc_.beta);
  for (int64_t n = 0; n < batch; ++n) {
    for (int64_t c = 0; c < channels; ++c) {
      window_scale(x, n, c, scale);
      const int64_t offset = (n * channels + c) * area;
      for (int64_t i = 0; i < area; ++i) {
        y[offset + i] = x[offset + i] * std::pow(scale[i], neg_beta);
      }
    }
  }
}

void ReferenceLrn::backward(const Tensor& x_tensor, const Tensor& dy_tensor, Tensor& dx_tensor) {
  if (!dx_tensor.defined()) return;
  const int64_t channels = desc_.channels, area = desc_.area, size = desc_.size;
  const int64_t batch = sample_batch(x_tensor, channels * area, kName, "x");
  check_same_count(dy_tensor, x_tensor, kName, "dy");
  check_same_count(dx_tensor, x_tensor, kName, "dx");
  const float* x = x_tensor.data();
  const float* dy = dy_tensor.data();
  float* dx = dx_tensor.data();
  workspace_.resize(static_cast<std::size_t>(batch * channels * area));
  float* t = workspace_.data();
  float* scale = scale_.data();
  const auto neg_beta = static_cast<float>(-desc_.beta);
  const auto neg_beta_1 = static_cast<float>(-desc_.beta - 1.0);
  // Pass 1: dx = dy s^-beta, and t = dy x s^(-beta-1) for pass 2.
  for (int64_t n = 0; n < batch; ++n) {
    for (int64_t c = 0; c < channels; ++c) {
      window_scale(x, n, c, scale);
      const int64_t offset = (n * channels + c) * area;
      for (int64_t i = 0; i < area; ++i) {
        dx[offset + i] = dy[offset + i] * std::pow(scale[i], neg_beta);
        t[offset + i] = dy[offset + i] * x[offset + i] * std::pow(scale[i], neg_beta_1);
      }
    }
  }
  // Pass 2: the sum of t over the windows that hold channel i.
  const auto factor =
      static_cast<float>(2.0 * desc_.alpha * desc_.beta / static_cast<double>(size));
  float* sum = scale;
  for (int64_t n = 0; n < batch; ++n) {
    for (int64_t i = 0; i < channels; ++i) {
      std::fill(sum, sum + area, 0.0f);
      const ChannelRange holding = lrn_windows_holding(desc_, i);
      for (int64_t c = holding.first; c <= holding.last; ++c) {
        const float* tc = t + (n * channels + c) * area;
        for (int64_t p = 0; p < area; ++p) sum[p] += tc[p];
      }
      const int64_t offset = (n * channels + i) * area;
      for (int64_t p = 0; p < area; ++p) dx[offset + p] -= factor * x[offset + p] * sum[p];
    }
  }
}

}  // namespace strata::reference
