#include "reference_kernels.hpp"

namespace strata::reference {

namespace {

constexpr std::string_view kName = "reference activation";

}  // namespace

void ReferenceActivation::forward(const Tensor& x, Tensor& y) {
  check_same_count(y, x, kName, "y");
  activation::forward_range(desc_, x.data(), y.data(), 0, x.numel());
}

void ReferenceActivation::backward(const Tensor& x, const Tensor& y, const Tensor& dy, Tensor& dx) {
  if (!dx.defined()) return;
  check_backward_counts(x, y, dy, dx, kName);
  activation::backward_range(desc_, x.data(), y.data(), dy.data(), dx.data(), 0, x.numel());
}

}  // namespace strata::reference
