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

// A double as the sum of two floats: hi, its rounding, and lo, the rounding of the rest.
struct Split {
  float hi, lo;
  explicit Split(double v)
      : hi(static_cast<float>(v)), lo(static_cast<float>(v - static_cast<double>(hi))) {}
};

}  // namespace

void TbbBatchNorm::on_prepare() { validate(desc_, kName); }

TbbBatchNorm::Blocks TbbBatchNorm::blocks(int64_t batch) const {
  Blocks b;
  b.batch = batch;
  b.channels = desc_.channels;
  const int64_t values = batch * desc_.channels * desc_.spatial;
  const int64_t tasks = std::max<int64_t>(1, (values + kBlockValues - 1) / kBlockValues);
  b.image_blocks = std::clamp<int64_t>(tasks, 1, std::max<int64_t>(batch, 1));
  b.channel_groups =
      std::clamp<int64_t>((tasks + b.image_blocks - 1) / b.image_blocks, 1, desc_.channels);
  return b;
}

template <int kSums, class PlaneSums>
void TbbBatchNorm::reduce(int64_t batch, const PlaneSums& plane_sums,
                          const std::array<double*, kSums>& out) {
  const Blocks b = blocks(batch);
  const int64_t channels = desc_.channels, spatial = desc_.spatial;
  partials_.resize(static_cast<std::size_t>(b.image_blocks * channels * kSums));
  double* partials = partials_.data();
  parallel_chunks(b.image_blocks * b.channel_groups, 1, [&](int64_t lo, int64_t hi) {
    thread_local std::vector<double> lanes;
    for (int64_t task = lo; task < hi; ++task) {
      const int64_t block = task / b.channel_groups, group = task % b.channel_groups;
      const int64_t c0 = b.first_channel(group), c1 = b.first_channel(group + 1);
      lanes.assign(static_cast<std::size_t>((c1 - c0) * kSums * kLanes), 0.0);
      // The block's images in memory order, each image's channels [c0, c1) one plane after
      // another: one run of (c1 - c0) * spatial values per image, which the prefetcher follows.
      for (int64_t n = b.first_image(block); n < b.first_image(block + 1); ++n) {
        for (int64_t c = c0; c < c1; ++c) {
          plane_sums(c, (n * channels + c) * spatial, lanes.data() + (c - c0) * kSums * kLanes);
        }
      }
      for (int64_t c = c0; c < c1; ++c) {
        for (int k = 0; k < kSums; ++k) {
          partials[(block * channels + c) * kSums + k] =
              lane_total(lanes.data() + ((c - c0) * kSums + k) * kLanes);
        }
      }
    }
  });
  // Blocks in order, whatever ran where: the bits depend on the shape only.
  for (int64_t c = 0; c < channels; ++c) {
    for (int k = 0; k < kSums; ++k) {
      double total = partials[c * kSums + k];
      for (int64_t block = 1; block < b.image_blocks; ++block) {
        total += partials[(block * channels + c) * kSums + k];
      }
      out[k][c] = total;
    }
  }
}

template <class Term>
void TbbBatchNorm::sum_channels(const Tensor& x, double* out, const Term& term) {
  const int64_t batch = batch_norm_batch(desc_, x, kName, "x");
  const int64_t spatial = desc_.spatial;
  const float* px = x.data();
  reduce<1>(batch,
            [&](int64_t c, int64_t offset, double* lanes) {
              const float* xs = px + offset;
              const auto value = term(c);
              accumulate(lanes, spatial, [xs, &value](int64_t s) { return value(xs[s]); });
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
  const int64_t spatial = desc_.spatial;
  const float *px = x.data(), *pdy = dy.data();
  reduce<2>(batch,
            [&](int64_t c, int64_t offset, double* lanes) {
              const float *xs = px + offset, *dys = pdy + offset;
              const double m = mean[c], inv = inv_std[c];
              accumulate(lanes, spatial, [dys](int64_t s) { return static_cast<double>(dys[s]); });
              accumulate(lanes + kLanes, spatial,
                         [xs, dys, m, inv](int64_t s) { return dys[s] * ((xs[s] - m) * inv); });
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
  // a ((dy - b) - k x_hat) with x_hat = (x - m) inv, as a ((dy - b) - (k inv) (x - m)) in float
  // (16 values to a vector, not 8 doubles): the coefficients computed in double and rounded once;
  // m and b, which the differences subtract from values close to them, split into a float and the
  // float of what it missed, so that the differences are as exact as in double (the rounding of
  // a mean of 4 with values 0.01 apart alone was 5e-5 of x_hat).
  for_planes(batch, [&](int64_t c, int64_t offset) {
    const float *xs = px + offset, *dys = pdy + offset;
    float* dxs = pdx + offset;
    const Split m(mean[c]), b(mean_dy[c]);
    const float a = static_cast<float>(scale[c]);
    const float k = static_cast<float>(mean_dy_xhat[c] * inv_std[c]);
    for (int64_t s = 0; s < spatial; ++s) {
      dxs[s] = a * (((dys[s] - b.hi) - b.lo) - k * ((xs[s] - m.hi) - m.lo));
    }
  });
}

}  // namespace strata::tbb_backend
