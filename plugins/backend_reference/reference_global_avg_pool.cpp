#include <algorithm>

#include "reference_kernels.hpp"

namespace strata::reference {

namespace {

constexpr std::string_view kName = "reference global_avg_pool";

}  // namespace

void ReferenceGlobalAvgPool::on_prepare() { validate(desc_, kName); }

void ReferenceGlobalAvgPool::forward(const Tensor& x_tensor, Tensor& y_tensor) {
  const int64_t area = desc_.area;
  const int64_t planes =
      global_avg_pool_batch(desc_, x_tensor, y_tensor, kName, {"x", "y"}) * desc_.channels;
  const float* x = x_tensor.data();
  float* y = y_tensor.data();
  for (int64_t p = 0; p < planes; ++p) {
    const float* plane = x + p * area;
    double sum = 0.0;
    for (int64_t i = 0; i < area; ++i) sum += plane[i];
    y[p] = static_cast<float>(sum / static_cast<double>(area));
  }
}

void ReferenceGlobalAvgPool::backward(const Tensor& dy_tensor, Tensor& dx_tensor) {
  if (!dx_tensor.defined()) return;
  const int64_t area = desc_.area;
  const int64_t planes =
      global_avg_pool_batch(desc_, dx_tensor, dy_tensor, kName, {"dx", "dy"}) * desc_.channels;
  const float* dy = dy_tensor.data();
  float* dx = dx_tensor.data();
  const float inverse = 1.0f / static_cast<float>(area);
  for (int64_t p = 0; p < planes; ++p) {
    std::fill(dx + p * area, dx + (p + 1) * area, dy[p] * inverse);
  }
}

}  // namespace strata::reference
