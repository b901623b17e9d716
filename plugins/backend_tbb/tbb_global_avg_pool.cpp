#include <algorithm>

#include "strata/elementwise.hpp"
#include "tbb_kernels.hpp"

namespace strata::tbb_backend {

namespace {

constexpr std::string_view kName = "tbb global_avg_pool";
constexpr int kLanes = TbbGlobalAvgPool::kLanes;

// The sum of n values in double: kLanes lanes (element i in lane i mod kLanes), then the lanes
// in pairs, in a fixed order.
double plane_sum(const float* x, int64_t n) {
  double lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) lanes[j] += x[i + j];
  }
  for (int j = 0; i < n; ++i, ++j) lanes[j] += x[i];
  return ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) +
         ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
}

}  // namespace

void TbbGlobalAvgPool::on_prepare() { validate(desc_, kName); }

void TbbGlobalAvgPool::forward(const Tensor& x, Tensor& y) {
  const int64_t area = desc_.area;
  const int64_t planes = global_avg_pool_batch(desc_, x, y, kName, {"x", "y"}) * desc_.channels;
  const float* in = x.data();
  float* out = y.data();
  const auto divisor = static_cast<double>(area);
  parallel_chunks(planes, std::max<int64_t>(1, kElementwiseGrain / area),
                  [&](int64_t lo, int64_t hi) {
                    for (int64_t p = lo; p < hi; ++p) {
                      out[p] = static_cast<float>(plane_sum(in + p * area, area) / divisor);
                    }
                  });
}

void TbbGlobalAvgPool::backward(const Tensor& dy, Tensor& dx) {
  if (!dx.defined()) return;
  const int64_t area = desc_.area;
  const int64_t planes = global_avg_pool_batch(desc_, dx, dy, kName, {"dx", "dy"}) * desc_.channels;
  const float* grad_out = dy.data();
  float* grad_in = dx.data();
  const float inverse = 1.0f / static_cast<float>(area);
  parallel_chunks(
      planes, std::max<int64_t>(1, kElementwiseGrain / area), [&](int64_t lo, int64_t hi) {
        for (int64_t p = lo; p < hi; ++p) {
          std::fill(grad_in + p * area, grad_in + (p + 1) * area, grad_out[p] * inverse);
        }
      });
}

}  // namespace strata::tbb_backend
