#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>

#include <algorithm>
#include <array>

#include "tbb_kernels.hpp"

namespace strata::tbb_backend {

namespace {

constexpr std::string_view kName = "tbb batch_norm";

// Partial sums per block: 16 lanes in double (two AVX-512 registers, four AVX2 ones), so that the
// adds of consecutive elements do not wait on each other; element s of an image's run goes to
// lane s mod 16.
constexpr int kLanes = 16;

template <class Value>
void accumulate(double* lanes, int64_t n, const Value& value) {
  int64_t s = 0;
  for (; s + kLanes <= n; s += kLanes) {
    for (int j = 0; j < kLanes; ++j) lanes[j] += value(s + j);
  }
  for (int j = 0; s < n; ++s, ++j) lanes[j] += value(s);
}

double lane_total(const double* lanes) {
  double pairs[kLanes / 2];
  for (int j = 0; j < kLanes / 2; ++j) pairs[j] = lanes[2 * j] + lanes[2 * j + 1];
  return ((pairs[0] + pairs[1]) + (pairs[2] + pairs[3])) +
         ((pairs[4] + pairs[5]) + (pairs[6] + pairs[7]));
}

}  // namespace

void TbbBatchNorm::on_prepare() { validate(desc_, kName); }

TbbBatchNorm::Blocks TbbBatchNorm::blocks(int64_t batch) const {
  Blocks b;
  b.batch = batch;
  b.count = std::clamp<int64_t>((batch * desc_.spatial + kBlockValues - 1) / kBlockValues, 1,
                                std::max<int64_t>(batch, 1));
  return b;
}

template <int kSums, class BlockSums>
void TbbBatchNorm::reduce(int64_t batch, const BlockSums& block_sums,
                          const std::array<double*, kSums>& out) {
  const Blocks b = blocks(batch);
  const int64_t channels = desc_.channels;
  const int64_t tasks = channels * b.count;
  partials_.resize(static_cast<std::size_t>(tasks * kSums));
  double* partials = partials_.data();
  const int64_t grain =
      std::max<int64_t>(1, kBlockValues / std::max<int64_t>(1, b.values(desc_.spatial)));
  parallel_chunks(tasks, grain, [&](int64_t lo, int64_t hi) {
    for (int64_t task = lo; task < hi; ++task) {
      const int64_t c = task / b.count, block = task % b.count;
      block_sums(c, b.first(block), b.first(block + 1), partials + task * kSums);
    }
  });
  // Blocks in order, whatever ran where: the bits depend on the shape only.
  for (int64_t c = 0; c < channels; ++c) {
    for (int k = 0; k < kSums; ++k) {
      double total = partials[c * b.count * kSums + k];
      for (int64_t block = 1; block < b.count; ++block) {
        total += partials[(c * b.count + block) * kSums + k];
      }
      out[k][c] = total;
    }
  }
}

template <class Term>
void TbbBatchNorm::sum_channels(const Tensor& x, double* out, const Term& term) {
  const int64_t batch = batch_norm_batch(desc_, x, kName, "x");
  const int64_t channels = desc_.channels, spatial = desc_.spatial;
  const float* px = x.data();
  reduce<1>(batch,
            [&](int64_t c, int64_t n0, int64_t n1, double* result) {
              double lanes[kLanes] = {};
              const auto value = term(c);
              for (int64_t n = n0; n < n1; ++n) {
                const float* xs = px + (n * channels + c) * spatial;
                accumulate(lanes, spatial, [xs, &value](int64_t s) { return value(xs[s]); });
              }
              result[0] = lane_total(lanes);
            },
            {out});
}

void TbbBatchNorm::channel_sums(const Tensor& x, double* sum) {
  sum_channels(x, sum, [](int64_t) { return [](float v) { return static_cast<double>(v); }; });
}

void TbbBatchNorm::channel_squares(const Tensor& x, const double* mean, double* squares) {
  sum_channels(x, squares, [mean](int64_t c) {
    return [m = mean[c]](float v) {
      const double d = v - m;
      return d * d;
    };
  });
}

void TbbBatchNorm::gradient_sums(const Tensor& x, const Tensor& dy, const double* mean,
                                 const double* inv_std, double* sum_dy, double* sum_dy_xhat) {
  const int64_t batch = batch_norm_batch(desc_, x, kName, "x");
  batch_norm_batch(desc_, dy, kName, "dy");
  const int64_t channels = desc_.channels, spatial = desc_.spatial;
  const float *px = x.data(), *pdy = dy.data();
  reduce<2>(batch,
            [&](int64_t c, int64_t n0, int64_t n1, double* result) {
              double dy_lanes[kLanes] = {}, dy_xhat_lanes[kLanes] = {};
              const double m = mean[c], inv = inv_std[c];
              for (int64_t n = n0; n < n1; ++n) {
                const float* xs = px + (n * channels + c) * spatial;
                const float* dys = pdy + (n * channels + c) * spatial;
                accumulate(dy_lanes, spatial,
                           [dys](int64_t s) { return static_cast<double>(dys[s]); });
                accumulate(dy_xhat_lanes, spatial,
                           [xs, dys, m, inv](int64_t s) { return dys[s] * ((xs[s] - m) * inv); });
              }
              result[0] = lane_total(dy_lanes);
              result[1] = lane_total(dy_xhat_lanes);
            },
            {sum_dy, sum_dy_xhat});
}

template <class PlaneBody>
void TbbBatchNorm::for_planes(int64_t batch, const PlaneBody& body) const {
  const int64_t grain = std::max<int64_t>(1, kBlockValues / desc_.spatial);
  parallel_chunks(batch * desc_.channels, grain, [&](int64_t lo, int64_t hi) {
    for (int64_t plane = lo; plane < hi; ++plane) {
      body(plane % desc_.channels, plane * desc_.spatial);
    }
  });
}

void TbbBatchNorm::normalize(const Tensor& x, const float* center, const float* scale,
                             const float* shift, Tensor& y, const ActivationDesc* fused) {
  const int64_t batch = batch_norm_batch(desc_, x, kName, "x");
  batch_norm_batch(desc_, y, kName, "y");
  const int64_t spatial = desc_.spatial;
  const float* px = x.data();
  float* py = y.data();
  visit_fused(fused, [&](const auto f) {
    for_planes(batch, [&, f](int64_t c, int64_t offset) {
      const float* xs = px + offset;
      float* ys = py + offset;
      const float m = center[c], a = scale[c], b = shift[c];
      for (int64_t s = 0; s < spatial; ++s) ys[s] = f.value((xs[s] - m) * a + b);
    });
  });
}

void TbbBatchNorm::input_gradient(const Tensor& x, const Tensor& dy, const double* mean,
                                  const double* inv_std, const double* scale, const double* mean_dy,
                                  const double* mean_dy_xhat, Tensor& dx) {
  if (!dx.defined()) return;
  const int64_t batch = batch_norm_batch(desc_, x, kName, "x");
  batch_norm_batch(desc_, dy, kName, "dy");
  batch_norm_batch(desc_, dx, kName, "dx");
  const int64_t spatial = desc_.spatial;
  const float *px = x.data(), *pdy = dy.data();
  float* pdx = dx.data();
  for_planes(batch, [&](int64_t c, int64_t offset) {
    const float *xs = px + offset, *dys = pdy + offset;
    float* dxs = pdx + offset;
    const double m = mean[c], inv = inv_std[c], a = scale[c], b = mean_dy[c], k = mean_dy_xhat[c];
    for (int64_t s = 0; s < spatial; ++s) {
      const double x_hat = (xs[s] - m) * inv;
      dxs[s] = static_cast<float>(a * (dys[s] - b - x_hat * k));
    }
  });
}

}  // namespace strata::tbb_backend
