#include <algorithm>
#include <cmath>

#include "reference_kernels.hpp"

namespace strata::reference {

namespace {

constexpr std::string_view kName = "reference softmax";

}  // namespace

void ReferenceSoftmax::on_prepare() { validate(desc_, kName); }

int64_t ReferenceSoftmax::groups(const Tensor& t, std::string_view what) const {
  return sample_batch(t, desc_.outer * desc_.axis * desc_.inner, kName, what) * desc_.outer *
         desc_.inner;
}

void ReferenceSoftmax::forward(const Tensor& x_tensor, Tensor& y_tensor) {
  const int64_t groups = this->groups(x_tensor, "x");
  check_same_count(y_tensor, x_tensor, kName, "y");
  const float* x = x_tensor.data();
  float* y = y_tensor.data();
  const int64_t size = desc_.axis, stride = desc_.inner;
  for (int64_t group = 0; group < groups; ++group) {
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
  }
}

void ReferenceSoftmax::backward(const Tensor& y_tensor, const Tensor& dy_tensor,
                                Tensor& dx_tensor) {
  if (!dx_tensor.defined()) return;
  const int64_t groups = this->groups(y_tensor, "y");
  check_same_count(dy_tensor, y_tensor, kName, "dy");
  check_same_count(dx_tensor, y_tensor, kName, "dx");
  const float* y = y_tensor.data();
  const float* dy = dy_tensor.data();
  float* dx = dx_tensor.data();
  const int64_t size = desc_.axis, stride = desc_.inner;
  for (int64_t group = 0; group < groups; ++group) {
    const int64_t base = (group / stride) * size * stride + group % stride;
    double dot = 0.0;
    for (int64_t c = 0; c < size; ++c) {
      dot += static_cast<double>(dy[base + c * stride]) * y[base + c * stride];
    }
    for (int64_t c = 0; c < size; ++c) {
      const int64_t i = base + c * stride;
      dx[i] = static_cast<float>(y[i] * (dy[i] - dot));
    }
  }
}

}  // namespace strata::reference
