#include <algorithm>
#include <limits>

#include "strata/elementwise.hpp"
#include "tbb_kernels.hpp"
#include "vector_math.hpp"

namespace strata::tbb_backend {

namespace {

constexpr std::string_view kName = "tbb softmax";
constexpr int kLanes = TbbSoftmax::kLanes;
constexpr int64_t kTile = TbbSoftmax::kTile;

// TBB tasks of about kElementwiseGrain values, for items of `values` values each.
int64_t grain_for(int64_t values) {
  return std::max<int64_t>(1, kElementwiseGrain / std::max<int64_t>(values, 1));
}

// Lane j of kLanes takes elements j, j + kLanes, ...: value(i) for i in [0, n) into lanes.
template <class T, class Value, class Combine>
void over_lanes(T* lanes, int64_t n, const Value& value, const Combine& combine) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) lanes[j] = combine(lanes[j], value(i + j));
  }
  for (int j = 0; i < n; ++i, ++j) lanes[j] = combine(lanes[j], value(i));
}

double lane_sum(const double* lanes) {
  double total = 0.0;
  for (int j = 0; j < kLanes; ++j) total += lanes[j];
  return total;
}

float greater(float m, float v) { return v > m ? v : m; }  // the reference's std::max(m, v)
double plus(double s, double v) { return s + v; }

// One contiguous group (inner == 1) of n values.
void row_forward(const float* x, float* y, int64_t n) {
  float maxima[kLanes];
  std::fill(maxima, maxima + kLanes, -std::numeric_limits<float>::infinity());
  over_lanes(
      maxima, n, [&](int64_t i) { return x[i]; }, greater);
  float max = maxima[0];
  for (int j = 1; j < kLanes; ++j) max = greater(max, maxima[j]);
  // The exponentials first, summed in a loop of their own: GCC 12 does not vectorize a loop that
  // mixes them with the double sums ("control flow in loop").
  for (int64_t i = 0; i < n; ++i) y[i] = vector_math::exp(x[i] - max);
  double sums[kLanes] = {};
  over_lanes(
      sums, n, [&](int64_t i) { return static_cast<double>(y[i]); }, plus);
  const auto inverse = static_cast<float>(1.0 / lane_sum(sums));
  for (int64_t i = 0; i < n; ++i) y[i] *= inverse;
}

void row_backward(const float* y, const float* dy, float* dx, int64_t n) {
  double dots[kLanes] = {};
  over_lanes(
      dots, n, [&](int64_t i) { return static_cast<double>(dy[i]) * y[i]; }, plus);
  const auto dot = static_cast<float>(lane_sum(dots));
  for (int64_t i = 0; i < n; ++i) dx[i] = y[i] * (dy[i] - dot);
}

// The groups of `length` <= kTile neighbouring positions, `axis` rows `stride` apart.
void tile_forward(const float* x, float* y, int64_t axis, int64_t stride, int64_t length) {
  float max[kTile];
  double sum[kTile];
  float inverse[kTile];
  std::copy(x, x + length, max);
  for (int64_t a = 1; a < axis; ++a) {
    const float* row = x + a * stride;
    for (int64_t p = 0; p < length; ++p) max[p] = greater(max[p], row[p]);
  }
  std::fill(sum, sum + length, 0.0);
  for (int64_t a = 0; a < axis; ++a) {
    const float* row = x + a * stride;
    float* out = y + a * stride;
    for (int64_t p = 0; p < length; ++p) out[p] = vector_math::exp(row[p] - max[p]);
    for (int64_t p = 0; p < length; ++p) sum[p] += out[p];  // apart: see row_forward
  }
  for (int64_t p = 0; p < length; ++p) inverse[p] = static_cast<float>(1.0 / sum[p]);
  for (int64_t a = 0; a < axis; ++a) {
    float* out = y + a * stride;
    for (int64_t p = 0; p < length; ++p) out[p] *= inverse[p];
  }
}

void tile_backward(const float* y, const float* dy, float* dx, int64_t axis, int64_t stride,
                   int64_t length) {
  double dot[kTile];
  float dot_f[kTile];
  std::fill(dot, dot + length, 0.0);
  for (int64_t a = 0; a < axis; ++a) {
    const float *y_row = y + a * stride, *dy_row = dy + a * stride;
    for (int64_t p = 0; p < length; ++p) dot[p] += static_cast<double>(dy_row[p]) * y_row[p];
  }
  for (int64_t p = 0; p < length; ++p) dot_f[p] = static_cast<float>(dot[p]);
  for (int64_t a = 0; a < axis; ++a) {
    const int64_t offset = a * stride;
    for (int64_t p = 0; p < length; ++p) {
      dx[offset + p] = y[offset + p] * (dy[offset + p] - dot_f[p]);
    }
  }
}

}  // namespace

void TbbSoftmax::on_prepare() { validate(desc_, kName); }

template <class Body>
void TbbSoftmax::for_tiles(const Tensor& t, std::string_view what, const Body& body) const {
  const int64_t axis = desc_.axis, inner = desc_.inner;
  const int64_t blocks = sample_batch(t, desc_.outer * axis * inner, kName, what) * desc_.outer;
  if (inner == 1) {  // one task item per group
    parallel_chunks(blocks, grain_for(axis), [&](int64_t lo, int64_t hi) {
      for (int64_t block = lo; block < hi; ++block) body(block, 0, 1);
    });
    return;
  }
  const int64_t tiles = (inner + kTile - 1) / kTile;
  parallel_chunks(blocks * tiles, grain_for(axis * std::min(inner, kTile)),
                  [&](int64_t lo, int64_t hi) {
                    for (int64_t task = lo; task < hi; ++task) {
                      const int64_t first = task % tiles * kTile;
                      body(task / tiles, first, std::min(inner, first + kTile));
                    }
                  });
}

void TbbSoftmax::forward(const Tensor& x, Tensor& y) {
  check_same_count(y, x, kName, "y");
  const float* in = x.data();
  float* out = y.data();
  const int64_t axis = desc_.axis, inner = desc_.inner;
  for_tiles(x, "x", [&](int64_t block, int64_t first, int64_t end) {
    const int64_t offset = block * axis * inner + first;
    if (inner == 1) {
      row_forward(in + offset, out + offset, axis);
    } else {
      tile_forward(in + offset, out + offset, axis, inner, end - first);
    }
  });
}

void TbbSoftmax::backward(const Tensor& y, const Tensor& dy, Tensor& dx) {
  if (!dx.defined()) return;
  check_same_count(dy, y, kName, "dy");
  check_same_count(dx, y, kName, "dx");
  const float *out = y.data(), *grad_out = dy.data();
  float* grad_in = dx.data();
  const int64_t axis = desc_.axis, inner = desc_.inner;
  for_tiles(y, "y", [&](int64_t block, int64_t first, int64_t end) {
    const int64_t offset = block * axis * inner + first;
    if (inner == 1) {
      row_backward(out + offset, grad_out + offset, grad_in + offset, axis);
    } else {
      tile_backward(out + offset, grad_out + offset, grad_in + offset, axis, inner, end - first);
    }
  });
}

}  // namespace strata::tbb_backend
