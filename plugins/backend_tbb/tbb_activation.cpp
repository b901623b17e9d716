#include "strata/elementwise.hpp"
#include "tbb_kernels.hpp"

namespace strata::tbb_backend {

namespace {

constexpr std::string_view kName = "tbb activation";

}  // namespace

void TbbActivation::forward(const Tensor& x, Tensor& y) {
  check_same_count(y, x, kName, "y");
  const float* in = x.data();
  float* out = y.data();
  parallel_chunks(x.numel(), kElementwiseGrain, [&](int64_t lo, int64_t hi) {
    activation::forward_range(desc_, in, out, lo, hi);
  });
}

void TbbActivation::backward(const Tensor& x, const Tensor& y, const Tensor& dy, Tensor& dx) {
  if (!dx.defined()) return;
  check_backward_counts(x, y, dy, dx, kName);
  const float *in = x.data(), *out = y.data(), *grad_out = dy.data();
  float* grad_in = dx.data();
  parallel_chunks(x.numel(), kElementwiseGrain, [&](int64_t lo, int64_t hi) {
    activation::backward_range(desc_, in, out, grad_out, grad_in, lo, hi);
  });
}

}  // namespace strata::tbb_backend
