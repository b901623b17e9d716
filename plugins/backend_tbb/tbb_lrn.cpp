#include <algorithm>

#include "tbb_kernels.hpp"
#include "vector_math.hpp"

namespace strata::tbb_backend {

namespace {

constexpr std::string_view kName = "tbb lrn";

// The constants of one kernel's arithmetic, in float.
struct Constants {
  float a, k, neg_beta, factor;
  explicit Constants(const LrnDesc& d)
      : a(static_cast<float>(d.alpha / static_cast<double>(d.size))),
        k(static_cast<float>(d.k)),
        neg_beta(static_cast<float>(-d.beta)),
        factor(static_cast<float>(2.0 * d.alpha * d.beta / static_cast<double>(d.size))) {}
};

// scale[p] = k + a * sum over j in W(c) of x[j, p]^2 for the `length` positions of a tile; x
// points at the tile's first position in channel 0, channels `stride` apart. The squares are added
// in channel order, as the reference adds them.
void window_scale(const float* x, int64_t stride, const LrnDesc& d, int64_t c, int64_t length,
                  const Constants& constants, float* scale) {
  const ChannelRange window = lrn_window(d, c);
  std::fill(scale, scale + length, 0.0f);
  for (int64_t j = window.first; j <= window.last; ++j) {
    const float* xj = x + j * stride;
    for (int64_t p = 0; p < length; ++p) scale[p] += xj[p] * xj[p];
  }
  for (int64_t p = 0; p < length; ++p) scale[p] = constants.k + constants.a * scale[p];
}

}  // namespace

void TbbLrn::on_prepare() {
  validate(desc_, kName);
  // Whole multiples of 16 positions (one AVX-512 vector), about kTileValues values per task.
  tile_ = std::min(desc_.area, std::max<int64_t>(16, kTileValues / desc_.channels / 16 * 16));
}

template <class Body>
void TbbLrn::for_tiles(int64_t batch, const Body& body) {
  const int64_t tiles = (desc_.area + tile_ - 1) / tile_;
  const auto scratch_values = static_cast<std::size_t>((desc_.channels + 1) * tile_);
  const int64_t grain = std::max<int64_t>(1, kTileValues / (desc_.channels * tile_));
  parallel_chunks(batch * tiles, grain, [&](int64_t lo, int64_t hi) {
    std::vector<float>& scratch = scratch_.local();
    if (scratch.size() < scratch_values) scratch.resize(scratch_values);
    for (int64_t task = lo; task < hi; ++task) {
      const int64_t first = task % tiles * tile_;
      body(task / tiles, first, std::min(desc_.area, first + tile_), scratch.data());
    }
  });
}

void TbbLrn::forward(const Tensor& x, Tensor& y) {
  const int64_t channels = desc_.channels, area = desc_.area;
  const int64_t batch = sample_batch(x, channels * area, kName, "x");
  check_same_count(y, x, kName, "y");
  const float* in = x.data();
  float* out = y.data();
  const Constants constants(desc_);
  for_tiles(batch, [&](int64_t n, int64_t first, int64_t end, float* scale) {
    const int64_t length = end - first;
    const float* image = in + n * channels * area + first;
    for (int64_t c = 0; c < channels; ++c) {
      window_scale(image, area, desc_, c, length, constants, scale);
      const float* xc = image + c * area;
      float* yc = out + n * channels * area + c * area + first;
      for (int64_t p = 0; p < length; ++p) {
        yc[p] = xc[p] * vector_math::exp(constants.neg_beta * vector_math::log(scale[p]));
      }
    }
  });
}

void TbbLrn::backward(const Tensor& x, const Tensor& dy, Tensor& dx) {
  if (!dx.defined()) return;
  const int64_t channels = desc_.channels, area = desc_.area;
  const int64_t batch = sample_batch(x, channels * area, kName, "x");
  check_same_count(dy, x, kName, "dy");
  check_same_count(dx, x, kName, "dx");
  const Constants constants(desc_);
  for_tiles(batch, [&](int64_t n, int64_t first, int64_t end, float* scratch) {
    const int64_t length = end - first, offset = n * channels * area + first;
    const float *image = x.data() + offset, *grad_out = dy.data() + offset;
    float* grad_in = dx.data() + offset;
    float* scale = scratch;
    float* t = scratch + tile_;  // channels rows of tile_: dy x s^(-beta-1)
    // Pass 1: dx = dy s^-beta, and t = dy x s^(-beta-1) = dy x s^-beta / s.
    for (int64_t c = 0; c < channels; ++c) {
      window_scale(image, area, desc_, c, length, constants, scale);
      const float *xc = image + c * area, *dyc = grad_out + c * area;
      float *dxc = grad_in + c * area, *tc = t + c * tile_;
      for (int64_t p = 0; p < length; ++p) {
        const float power = vector_math::exp(constants.neg_beta * vector_math::log(scale[p]));
        dxc[p] = dyc[p] * power;
        tc[p] = dyc[p] * xc[p] * power / scale[p];
      }
    }
    // Pass 2: the sum of t over the windows that hold channel i.
    float* sum = scale;
    for (int64_t i = 0; i < channels; ++i) {
      const ChannelRange holding = lrn_windows_holding(desc_, i);
      std::fill(sum, sum + length, 0.0f);
      for (int64_t c = holding.first; c <= holding.last; ++c) {
        const float* tc = t + c * tile_;
        for (int64_t p = 0; p < length; ++p) sum[p] += tc[p];
      }
      const float* xi = image + i * area;
      float* dxi = grad_in + i * area;
      for (int64_t p = 0; p < length; ++p) dxi[p] -= constants.factor * xi[p] * sum[p];
    }
  });
}

}  // namespace strata::tbb_backend
