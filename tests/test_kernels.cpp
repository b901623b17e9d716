// Compute kernels: the reference backend against hand-computed answers and against its own
// adjoint identities, then every other backend's kernels against the reference on random
// descriptors and fresh random data.
//
// Tolerance: a backend's result may differ from the reference (which sums in double) by
// kRelativeTolerance times the largest magnitude of the reference result (at least 1), the error
// float sums of a few thousand terms can reach. Max pooling selects elements, so it must match
// exactly.
#define BOOST_TEST_MODULE kernels
#include <fmt/format.h>

#include <algorithm>
#include <boost/test/unit_test.hpp>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <ostream>
#include <random>
#include <string>
#include <thread>
#include <typeinfo>
#include <vector>

#include "strata/backend.hpp"
#include "strata/error.hpp"
#include "strata/ops.hpp"
#include "strata/registry.hpp"
#include "test_support.hpp"

// For BOOST_TEST's message when two conv2d arithmetic counts differ.
namespace strata {
std::ostream& operator<<(std::ostream& out, const Conv2dPassArithmetic& a) {
  return out << "{multiply_adds " << a.multiply_adds << ", other_flops " << a.other_flops << "}";
}
}  // namespace strata

namespace {

using strata::Conv2dDesc;
using strata::Conv2dKernel;
using strata::GemmKernel;
using strata::Pool2dDesc;
using strata::Pool2dKernel;
using strata::Shape;
using strata::Tensor;
using strata::test::random_tensor;
using strata::test::registries;
using strata::test::StderrCapture;
using Mode = Pool2dDesc::Mode;

constexpr float kRelativeTolerance = 1e-4f;
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// Every backend other than the reference that has a kernel for `op`.
std::vector<std::string> fast_backends(const std::string& op) {
  std::vector<std::string> names;
  for (const auto& [key, list] : registries().kernels.entries()) {
    if (key.first == op && key.second != "reference") names.push_back(key.second);
  }
  return names;
}

template <class K>
std::shared_ptr<K> kernel(const std::string& op, const std::string& backend,
                          const typename K::Desc& desc) {
  return registries().kernels.pick<K>(op, backend, desc, "test_kernels");
}

Tensor make_tensor(const Shape& shape, const std::vector<float>& values) {
  Tensor t(shape);
  BOOST_REQUIRE_EQUAL(static_cast<std::size_t>(t.numel()), values.size());
  std::copy(values.begin(), values.end(), t.data());
  return t;
}

// An output buffer full of NaNs: a kernel that accumulates instead of overwriting, or leaves an
// element unwritten, shows up as a non-finite result.
Tensor poisoned(const Shape& shape) {
  Tensor t(shape);
  t.fill(kNaN);
  return t;
}

float max_abs(const Tensor& t) {
  float m = 0.0f;
  for (float v : t.span()) m = std::max(m, std::abs(v));
  return m;
}

bool all_finite(const Tensor& t) {
  for (float v : t.span()) {
    if (!std::isfinite(v)) return false;
  }
  return true;
}

// `got` agrees with `want` within kRelativeTolerance of max(|want|, 1) (exactly when `exact`).
void check_close(const Tensor& got, const Tensor& want, const std::string& what,
                 bool exact = false) {
  BOOST_TEST_CONTEXT(what) {
    BOOST_TEST_REQUIRE((got.shape() == want.shape()), got.shape().str()
                                                          << " vs " << want.shape().str());
    BOOST_TEST(all_finite(got), "non-finite value (not overwritten?)");
    const float diff = strata::test::max_abs_diff(got, want);
    const float tolerance = exact ? 0.0f : kRelativeTolerance * std::max(max_abs(want), 1.0f);
    BOOST_TEST(diff <= tolerance, "max |got - want| = " << diff << " > " << tolerance);
  }
}

void check_values(const Tensor& got, const std::vector<float>& want, const std::string& what) {
  BOOST_TEST_CONTEXT(what) {
    BOOST_TEST_REQUIRE(static_cast<std::size_t>(got.numel()) == want.size());
    for (std::size_t i = 0; i < want.size(); ++i) {
      BOOST_TEST(got.data()[i] == want[i],
                 "element " << i << ": " << got.data()[i] << " != " << want[i]);
    }
  }
}

double dot(const Tensor& a, const Tensor& b) {
  double sum = 0;
  for (int64_t i = 0; i < a.numel(); ++i) sum += static_cast<double>(a.data()[i]) * b.data()[i];
  return sum;
}

double abs_dot(const Tensor& a, const Tensor& b) {
  double sum = 0;
  for (int64_t i = 0; i < a.numel(); ++i)
    sum += std::abs(static_cast<double>(a.data()[i]) * b.data()[i]);
  return sum;
}

std::string describe(const Conv2dDesc& d, int64_t n) {
  return fmt::format(
      "conv2d N={} C={} H={} W={} K={} kernel={}x{} stride={}x{} pad={}x{} dilation={}x{} "
      "groups={} out={}x{}",
      n, d.in_channels, d.in_h, d.in_w, d.out_channels, d.kernel_h, d.kernel_w, d.stride_h,
      d.stride_w, d.pad_h, d.pad_w, d.dilation_h, d.dilation_w, d.groups, d.out_h, d.out_w);
}

std::string describe(const Pool2dDesc& d, int64_t n) {
  return fmt::format(
      "pool2d {} N={} C={} H={} W={} kernel={}x{} stride={}x{} pad={}x{} count_include_pad={} "
      "out={}x{}",
      d.mode == Mode::kMax ? "max" : "avg", n, d.channels, d.in_h, d.in_w, d.kernel_h, d.kernel_w,
      d.stride_h, d.stride_w, d.pad_h, d.pad_w, d.count_include_pad, d.out_h, d.out_w);
}

// PyTorch's output size (floor); 0 when the window does not fit even once.
int64_t out_extent(int64_t in, int64_t kernel, int64_t stride, int64_t pad, int64_t dilation) {
  const int64_t span = in + 2 * pad - dilation * (kernel - 1) - 1;
  return span < 0 ? 0 : span / stride + 1;
}

// PyTorch's ceil_mode size: rounded up, but the last window must start inside the input or its
// left padding. The layer decides rounding, so kernels must handle windows that overhang the
// padded input.
int64_t out_extent_ceil(int64_t in, int64_t kernel, int64_t stride, int64_t pad, int64_t dilation) {
  const int64_t span = in + 2 * pad - dilation * (kernel - 1) - 1;
  if (span < 0) return 0;
  int64_t out = (span + stride - 1) / stride + 1;
  if ((out - 1) * stride >= in + pad) --out;
  return out;
}

Conv2dDesc conv_desc(int64_t c, int64_t h, int64_t w, int64_t k, int64_t kh, int64_t kw, int64_t sh,
                     int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw, int64_t groups) {
  Conv2dDesc d;
  d.in_channels = c;
  d.in_h = h;
  d.in_w = w;
  d.out_channels = k;
  d.kernel_h = kh;
  d.kernel_w = kw;
  d.stride_h = sh;
  d.stride_w = sw;
  d.pad_h = ph;
  d.pad_w = pw;
  d.dilation_h = dh;
  d.dilation_w = dw;
  d.groups = groups;
  d.out_h = out_extent(h, kh, sh, ph, dh);
  d.out_w = out_extent(w, kw, sw, pw, dw);
  return d;
}

Pool2dDesc pool_desc(Mode mode, int64_t c, int64_t h, int64_t w, int64_t kh, int64_t kw, int64_t sh,
                     int64_t sw, int64_t ph, int64_t pw, bool count_include_pad) {
  Pool2dDesc d;
  d.mode = mode;
  d.channels = c;
  d.in_h = h;
  d.in_w = w;
  d.kernel_h = kh;
  d.kernel_w = kw;
  d.stride_h = sh;
  d.stride_w = sw;
  d.pad_h = ph;
  d.pad_w = pw;
  d.count_include_pad = count_include_pad;
  d.out_h = out_extent(h, kh, sh, ph, 1);
  d.out_w = out_extent(w, kw, sw, pw, 1);
  return d;
}

int64_t uniform(std::mt19937& rng, int64_t lo, int64_t hi) {
  return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
}

enum class GroupKind { kOne, kTwo, kDepthwise };

// A random valid convolution (output at least 1x1); one in eight rounds its output size up.
Conv2dDesc random_conv(std::mt19937& rng, GroupKind kind, bool pointwise) {
  for (;;) {
    int64_t groups = 1, c = 0, k = 0;
    switch (kind) {
      case GroupKind::kOne:
        c = uniform(rng, 1, 5);
        k = uniform(rng, 1, 6);
        break;
      case GroupKind::kTwo:
        groups = 2;
        c = 2 * uniform(rng, 1, 3);
        k = 2 * uniform(rng, 1, 3);
        break;
      case GroupKind::kDepthwise:
        c = groups = uniform(rng, 1, 6);
        k = c * uniform(rng, 1, 2);
        break;
    }
    const int64_t h = uniform(rng, 1, 16), w = uniform(rng, 1, 16);
    Conv2dDesc d =
        pointwise ? conv_desc(c, h, w, k, 1, 1, 1, 1, 0, 0, 1, 1, groups)
                  : conv_desc(c, h, w, k, uniform(rng, 1, 5), uniform(rng, 1, 5),
                              uniform(rng, 1, 3), uniform(rng, 1, 3), uniform(rng, 0, 3),
                              uniform(rng, 0, 3), uniform(rng, 1, 3), uniform(rng, 1, 3), groups);
    if (!pointwise && uniform(rng, 0, 7) == 0) {
      d.out_h = out_extent_ceil(d.in_h, d.kernel_h, d.stride_h, d.pad_h, d.dilation_h);
      d.out_w = out_extent_ceil(d.in_w, d.kernel_w, d.stride_w, d.pad_w, d.dilation_w);
    }
    if (d.out_h >= 1 && d.out_w >= 1) return d;
  }
}

// A random valid pooling (PyTorch's rule: padding at most half the kernel). `pairs` asks for the
// common 2x2, stride 2 window (which fast kernels may special-case); one in four rounds up.
Pool2dDesc random_pool(std::mt19937& rng, Mode mode, bool count_include_pad, bool pairs = false) {
  for (;;) {
    const int64_t kh = pairs ? 2 : uniform(rng, 1, 4), kw = pairs ? 2 : uniform(rng, 1, 4);
    const int64_t sh = pairs ? 2 : uniform(rng, 1, 3), sw = pairs ? 2 : uniform(rng, 1, 3);
    Pool2dDesc d =
        pool_desc(mode, uniform(rng, 1, 4), uniform(rng, 1, 40), uniform(rng, 1, 40), kh, kw, sh,
                  sw, uniform(rng, 0, kh / 2), uniform(rng, 0, kw / 2), count_include_pad);
    if (uniform(rng, 0, 3) == 0) {
      d.out_h = out_extent_ceil(d.in_h, kh, sh, d.pad_h, 1);
      d.out_w = out_extent_ceil(d.in_w, kw, sw, d.pad_w, 1);
    }
    if (d.out_h >= 1 && d.out_w >= 1) return d;
  }
}

// Runs every conv2d entry point of `backend` and of the reference on the same random data.
void compare_conv(const Conv2dDesc& d, int64_t n, const std::string& backend, std::mt19937& rng) {
  BOOST_TEST_CONTEXT(backend << " vs reference, " << describe(d, n)) {
    auto ref = kernel<Conv2dKernel>("conv2d", "reference", d);
    auto fast = kernel<Conv2dKernel>("conv2d", backend, d);
    const Shape x_shape{n, d.in_channels, d.in_h, d.in_w};
    const Shape y_shape{n, d.out_channels, d.out_h, d.out_w};
    const Shape w_shape{d.out_channels, d.in_channels / d.groups, d.kernel_h, d.kernel_w};
    const Shape b_shape{d.out_channels};
    const Tensor x = random_tensor(x_shape, rng), w = random_tensor(w_shape, rng);
    const Tensor bias = random_tensor(b_shape, rng), dy = random_tensor(y_shape, rng);

    for (const Tensor* b : {static_cast<const Tensor*>(nullptr), &bias}) {
      Tensor y_ref = poisoned(y_shape), y_fast = poisoned(y_shape);
      ref->forward(x, w, b, y_ref);
      fast->forward(x, w, b, y_fast);
      check_close(y_fast, y_ref, b != nullptr ? "forward with bias" : "forward without bias");
    }
    Tensor dx_ref = poisoned(x_shape), dx_fast = poisoned(x_shape);
    ref->backward_data(dy, w, dx_ref);
    fast->backward_data(dy, w, dx_fast);
    check_close(dx_fast, dx_ref, "backward_data");

    for (bool with_bias : {false, true}) {
      Tensor dw_ref = poisoned(w_shape), dw_fast = poisoned(w_shape);
      Tensor db_ref = poisoned(b_shape), db_fast = poisoned(b_shape);
      ref->backward_params(x, dy, dw_ref, with_bias ? &db_ref : nullptr);
      fast->backward_params(x, dy, dw_fast, with_bias ? &db_fast : nullptr);
      check_close(dw_fast, dw_ref, with_bias ? "dweight (with bias)" : "dweight (no bias)");
      if (with_bias) check_close(db_fast, db_ref, "dbias");
    }
    // Only the bias gradient wanted.
    Tensor no_weight, db_ref = poisoned(b_shape), db_fast = poisoned(b_shape);
    ref->backward_params(x, dy, no_weight, &db_ref);
    fast->backward_params(x, dy, no_weight, &db_fast);
    check_close(db_fast, db_ref, "dbias alone");
  }
}

void compare_pool(const Pool2dDesc& d, int64_t n, const std::string& backend, const Tensor& x,
                  std::mt19937& rng) {
  BOOST_TEST_CONTEXT(backend << " vs reference, " << describe(d, n)) {
    auto ref = kernel<Pool2dKernel>("pool2d", "reference", d);
    auto fast = kernel<Pool2dKernel>("pool2d", backend, d);
    const Shape y_shape{n, d.channels, d.out_h, d.out_w};
    const bool exact = d.mode == Mode::kMax;
    Tensor y_ref = poisoned(y_shape), y_fast = poisoned(y_shape);
    ref->forward(x, y_ref);
    fast->forward(x, y_fast);
    check_close(y_fast, y_ref, "forward", exact);

    const Tensor dy = random_tensor(y_shape, rng);
    Tensor dx_ref = poisoned(x.shape()), dx_fast = poisoned(x.shape());
    ref->backward(x, y_ref, dy, dx_ref);
    fast->backward(x, y_fast, dy, dx_fast);
    check_close(dx_fast, dx_ref, "backward", exact);
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Batch normalization and activations: helpers.

using strata::ActivationDesc;
using strata::ActivationKernel;
using strata::BatchNormDesc;
using strata::BatchNormKernel;
using Kind = ActivationDesc::Kind;

// Everything a batch-norm layer computes in one training step, through one kernel: the statistics
// (as batch_norm.cpp forms them from the kernel's sums), y, the gradient sums and dx.
struct BatchNormStep {
  std::vector<double> sum, squares, sum_dy, sum_dy_xhat;
  Tensor y, dx;
};

// Training's passes, as the layer runs them; with `activation`, fused into normalize.
BatchNormStep batch_norm_step(BatchNormKernel& kernel, const Tensor& x, const Tensor& dy,
                              double eps, const std::vector<float>& weight,
                              const std::vector<float>& bias,
                              const ActivationDesc* activation = nullptr) {
  const auto channels = static_cast<std::size_t>(kernel.desc().channels);
  const double m = static_cast<double>(x.numel()) / static_cast<double>(channels);
  BatchNormStep step;
  step.sum.assign(channels, kNaN);
  step.squares.assign(channels, kNaN);
  step.sum_dy.assign(channels, kNaN);
  step.sum_dy_xhat.assign(channels, kNaN);
  kernel.channel_sums(x, step.sum.data());
  std::vector<double> mean(channels), inv_std(channels), scale(channels), mean_dy(channels),
      mean_dy_xhat(channels);
  for (std::size_t c = 0; c < channels; ++c) mean[c] = step.sum[c] / m;
  kernel.channel_squares(x, mean.data(), step.squares.data());
  std::vector<float> center_f(channels), scale_f(channels), shift_f(channels);
  for (std::size_t c = 0; c < channels; ++c) {
    inv_std[c] = 1.0 / std::sqrt(step.squares[c] / m + eps);
    scale[c] = weight[c] * inv_std[c];
    center_f[c] = static_cast<float>(mean[c]);
    scale_f[c] = static_cast<float>(scale[c]);
    shift_f[c] = static_cast<float>(bias[c]);
  }
  step.y = poisoned(x.shape());
  kernel.normalize(x, center_f.data(), scale_f.data(), shift_f.data(), step.y, activation);
  kernel.gradient_sums(x, dy, mean.data(), inv_std.data(), step.sum_dy.data(),
                       step.sum_dy_xhat.data());
  for (std::size_t c = 0; c < channels; ++c) {
    mean_dy[c] = step.sum_dy[c] / m;
    mean_dy_xhat[c] = step.sum_dy_xhat[c] / m;
  }
  step.dx = poisoned(x.shape());
  kernel.input_gradient(x, dy, mean.data(), inv_std.data(), scale.data(), mean_dy.data(),
                        mean_dy_xhat.data(), step.dx);
  return step;
}

// got agrees with want element by element: equal (infinities too), or within tolerance *
// max(|want|, 1), and NaN where want is NaN (and only there).
void check_close_elementwise(const Tensor& got, const Tensor& want, float tolerance,
                             const std::string& what) {
  BOOST_TEST_CONTEXT(what) {
    BOOST_TEST_REQUIRE((got.shape() == want.shape()));
    int64_t bad = 0, first_bad = -1;
    for (int64_t i = 0; i < got.numel(); ++i) {
      const float g = got.data()[i], w = want.data()[i];
      const bool ok =
          g == w || (std::isnan(w) ? std::isnan(g)
                                   : std::abs(g - w) <= tolerance * std::max(std::abs(w), 1.0f));
      if (!ok && bad++ == 0) first_bad = i;
    }
    BOOST_TEST(bad == 0, bad << " elements differ, first " << first_bad << ": got "
                             << got.data()[std::max<int64_t>(first_bad, 0)] << ", want "
                             << want.data()[std::max<int64_t>(first_bad, 0)]);
  }
}

// Per-channel double sums agree within `bound[c]` (NaN where want is NaN).
void check_sums(const std::vector<double>& got, const std::vector<double>& want,
                const std::vector<double>& bound, const std::string& what) {
  BOOST_TEST_CONTEXT(what) {
    for (std::size_t c = 0; c < want.size(); ++c) {
      if (std::isnan(want[c])) {
        BOOST_TEST(std::isnan(got[c]), "channel " << c << ": got " << got[c] << ", want NaN");
      } else {
        BOOST_TEST(std::abs(got[c] - want[c]) <= bound[c],
                   "channel " << c << ": got " << got[c] << ", want " << want[c] << " (bound "
                              << bound[c] << ")");
      }
    }
  }
}

// Sums in double may differ between backends by their order of addition (at most
// 2 (n - 1) 2^-53 sum |term|, 1.6e-12 relative for n = 9 x 800 terms) and through the terms, which
// use each backend's own mean and inv_std (a relative ~1e-13 when |mean| is 100 std): 1e-10 of
// sum |term| bounds both, and is still far below anything a lost or doubled term would change.
constexpr double kSumTolerance = 1e-10;

// kSumTolerance * sum over channel c's values of |term(index, x value)|.
std::vector<double> sum_bound(const Tensor& x, int64_t channels, int64_t spatial,
                              const std::function<double(int64_t, float)>& term) {
  std::vector<double> bound(static_cast<std::size_t>(channels), 0.0);
  for (int64_t i = 0; i < x.numel(); ++i) {
    bound[static_cast<std::size_t>(i / spatial % channels)] += std::abs(term(i, x.data()[i]));
  }
  for (double& b : bound) b *= kSumTolerance;
  return bound;
}

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() &&
         std::memcmp(a.data(), b.data(), static_cast<std::size_t>(a.numel()) * sizeof(float)) == 0;
}

bool same_bits(const std::vector<double>& a, const std::vector<double>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(double)) == 0;
}

ActivationDesc activation_desc(Kind kind, float slope = 0.01f) {
  ActivationDesc d;
  d.kind = kind;
  d.negative_slope = slope;
  return d;
}

constexpr Kind kActivationKinds[] = {Kind::kRelu,     Kind::kLeakyRelu, Kind::kTanh,
                                     Kind::kSigmoid,  Kind::kRelu6,     Kind::kHardSigmoid,
                                     Kind::kHardswish};

// Tolerance of y and dx: both backends compute them element by element with the same formulas,
// from statistics that agree to ~1e-13; what remains is float rounding, chiefly whether
// x * scale + shift is contracted into an FMA (half an ulp of x * scale, which is about
// |x - mean| / std + |mean| / std times |weight| ulps of y). 1e-5 of max(|y|, 1) allows |mean| up
// to about 80 std, and the inputs below stay under 70.
constexpr float kNormTolerance = 1e-5f;

std::string describe(const BatchNormDesc& d, int64_t n, double eps, bool affine) {
  return fmt::format("batch_norm N={} C={} spatial={} eps={} affine={}", n, d.channels, d.spatial,
                     eps, affine);
}

// A batch [n, C, spatial] whose channels have means in [-4, 4] and spreads in [0.1, 2].
Tensor batch_norm_input(const BatchNormDesc& d, int64_t n, std::mt19937& rng) {
  Tensor x = random_tensor({n, d.channels, d.spatial}, rng);
  std::uniform_real_distribution<float> offset(-4.0f, 4.0f), spread(0.1f, 2.0f);
  std::vector<float> offsets(static_cast<std::size_t>(d.channels)),
      spreads(static_cast<std::size_t>(d.channels));
  for (int64_t c = 0; c < d.channels; ++c) {
    offsets[static_cast<std::size_t>(c)] = offset(rng);
    spreads[static_cast<std::size_t>(c)] = spread(rng);
  }
  for (int64_t i = 0; i < x.numel(); ++i) {
    const auto c = static_cast<std::size_t>(i / d.spatial % d.channels);
    x.data()[i] = offsets[c] + spreads[c] * x.data()[i];
  }
  return x;
}

void compare_batch_norm(const BatchNormDesc& d, const Tensor& x, double eps, bool affine,
                        const std::string& backend, std::mt19937& rng) {
  const int64_t n = x.dim(0);
  BOOST_TEST_CONTEXT(backend << " " << describe(d, n, eps, affine)) {
    const auto channels = static_cast<std::size_t>(d.channels);
    std::vector<float> weight(channels, 1.0f), bias(channels, 0.0f);
    if (affine) {
      std::uniform_real_distribution<float> w(-2.0f, 2.0f), b(-1.0f, 1.0f);
      for (std::size_t c = 0; c < channels; ++c) {
        weight[c] = w(rng);
        bias[c] = b(rng);
      }
    }
    const Tensor dy = random_tensor(x.shape(), rng);
    auto ref = kernel<BatchNormKernel>("batch_norm", "reference", d);
    auto fast = kernel<BatchNormKernel>("batch_norm", backend, d);
    const BatchNormStep want = batch_norm_step(*ref, x, dy, eps, weight, bias);
    const BatchNormStep got = batch_norm_step(*fast, x, dy, eps, weight, bias);
    const double m = static_cast<double>(n * d.spatial);
    const auto mean = [&](int64_t i) {
      return want.sum[static_cast<std::size_t>(i / d.spatial % d.channels)] / m;
    };
    const auto x_hat = [&](int64_t i, float v) {
      const auto c = static_cast<std::size_t>(i / d.spatial % d.channels);
      return (v - mean(i)) / std::sqrt(want.squares[c] / m + eps);
    };
    check_sums(got.sum, want.sum,
               sum_bound(x, d.channels, d.spatial, [](int64_t, float v) { return v; }), "sum");
    check_sums(got.squares, want.squares,
               sum_bound(x, d.channels, d.spatial,
                         [&](int64_t i, float v) { return (v - mean(i)) * (v - mean(i)); }),
               "squares");
    check_sums(got.sum_dy, want.sum_dy,
               sum_bound(x, d.channels, d.spatial, [&](int64_t i, float) { return dy.data()[i]; }),
               "sum dy");
    check_sums(got.sum_dy_xhat, want.sum_dy_xhat,
               sum_bound(x, d.channels, d.spatial,
                         [&](int64_t i, float v) { return dy.data()[i] * x_hat(i, v); }),
               "sum dy * x_hat");
    check_close_elementwise(got.y, want.y, kNormTolerance, "y");
    check_close_elementwise(got.dx, want.dx, kNormTolerance, "dx");
  }
}

// Each activation's x: uniform on [-8, 8] with the kinks, zeros, infinities and NaN mixed in.
Tensor activation_input(int64_t n, std::mt19937& rng) {
  Tensor x = random_tensor({n}, rng, -8.0f, 8.0f);
  const float inf = std::numeric_limits<float>::infinity();
  const float special[] = {0.0f, -0.0f, 3.0f, -3.0f, 6.0f, -6.0f, inf, -inf, kNaN, 1e-30f};
  for (int64_t i = 0; i < n; i += 1 + uniform(rng, 0, 12)) {
    x.data()[i] = special[uniform(rng, 0, std::size(special) - 1)];
  }
  return x;
}

std::string describe(const ActivationDesc& d) {
  static const char* const kNames[] = {"relu",  "leaky_relu",   "tanh",     "sigmoid",
                                       "relu6", "hard_sigmoid", "hardswish"};
  return fmt::format("activation {} (negative_slope {})", kNames[static_cast<int>(d.kind)],
                     d.negative_slope);
}

// ---------------------------------------------------------------------------------------------
// Softmax, LRN and global average pooling: helpers.

using strata::GlobalAvgPoolDesc;
using strata::GlobalAvgPoolKernel;
using strata::LrnDesc;
using strata::LrnKernel;
using strata::SoftmaxDesc;
using strata::SoftmaxKernel;

// The reference and every fast backend: known answers hold for all of them.
std::vector<std::string> all_backends(const std::string& op) {
  std::vector<std::string> names = fast_backends(op);
  names.insert(names.begin(), "reference");
  return names;
}

std::string describe(const SoftmaxDesc& d, int64_t n) {
  return fmt::format("softmax N={} outer={} axis={} inner={}", n, d.outer, d.axis, d.inner);
}

std::string describe(const LrnDesc& d, int64_t n) {
  return fmt::format("lrn N={} channels={} area={} size={} alpha={} beta={} k={}", n, d.channels,
                     d.area, d.size, d.alpha, d.beta, d.k);
}

std::string describe(const GlobalAvgPoolDesc& d, int64_t n) {
  return fmt::format("global_avg_pool N={} channels={} area={}", n, d.channels, d.area);
}

LrnDesc lrn_desc(int64_t channels, int64_t area, int64_t size, double alpha, double beta,
                 double k) {
  LrnDesc d;
  d.channels = channels;
  d.area = area;
  d.size = size;
  d.alpha = alpha;
  d.beta = beta;
  d.k = k;
  return d;
}

// Both passes of a kernel with forward(x, y) and backward(input, dy, dx) on `backend` and on the
// reference, element by element within `tolerance` of max(|reference|, 1). backward's input is x,
// or with `backward_reads_y` the reference's y on both (softmax's), so that the passes are
// compared one at a time.
template <class K>
void compare_passes(const std::string& op, const typename K::Desc& d, const std::string& what,
                    const Tensor& x, bool backward_reads_y, float tolerance,
                    const std::string& backend, std::mt19937& rng) {
  BOOST_TEST_CONTEXT(backend << " " << what) {
    auto ref = kernel<K>(op, "reference", d);
    auto fast = kernel<K>(op, backend, d);
    Tensor y_ref = poisoned(x.shape()), y_fast = poisoned(x.shape());
    ref->forward(x, y_ref);
    fast->forward(x, y_fast);
    check_close_elementwise(y_fast, y_ref, tolerance, "forward");
    const Tensor dy = random_tensor(x.shape(), rng);
    const Tensor& input = backward_reads_y ? y_ref : x;
    Tensor dx_ref = poisoned(x.shape()), dx_fast = poisoned(x.shape());
    ref->backward(input, dy, dx_ref);
    fast->backward(input, dy, dx_fast);
    check_close_elementwise(dx_fast, dx_ref, tolerance, "backward");
  }
}

// Softmax: exp within 2 ulp, sums in double, so a few float roundings of each y in [0, 1].
void compare_softmax(const SoftmaxDesc& d, const Tensor& x, const std::string& backend,
                     std::mt19937& rng) {
  compare_passes<SoftmaxKernel>("softmax", d, describe(d, x.dim(0)), x, true, 1e-6f, backend, rng);
}

// LRN: the powers, std::pow against exp(-beta log s) within a few ulp, times beta log s (< 20
// here) in the exponent: 1e-5 of max(|y|, 1).
void compare_lrn(const LrnDesc& d, const Tensor& x, const std::string& backend, std::mt19937& rng) {
  compare_passes<LrnKernel>("lrn", d, describe(d, x.dim(0)), x, false, 1e-5f, backend, rng);
}

void compare_global_avg_pool(const GlobalAvgPoolDesc& d, int64_t n, const std::string& backend,
                             std::mt19937& rng) {
  BOOST_TEST_CONTEXT(backend << " " << describe(d, n)) {
    auto ref = kernel<GlobalAvgPoolKernel>("global_avg_pool", "reference", d);
    auto fast = kernel<GlobalAvgPoolKernel>("global_avg_pool", backend, d);
    const Shape planes{n, d.channels, d.area, 1}, means{n, d.channels, 1, 1};
    const Tensor x = random_tensor(planes, rng, -3.0f, 5.0f), dy = random_tensor(means, rng);
    Tensor y_ref = poisoned(means), y_fast = poisoned(means);
    ref->forward(x, y_ref);
    fast->forward(x, y_fast);
    // Both sum in double, in different orders: the float results differ by at most one rounding.
    check_close_elementwise(y_fast, y_ref, 2e-7f, "forward");
    Tensor dx_ref = poisoned(planes), dx_fast = poisoned(planes);
    ref->backward(dy, dx_ref);
    fast->backward(dy, dx_fast);
    check_close_elementwise(dx_fast, dx_ref, 0.0f, "backward");
  }
}

// ---------------------------------------------------------------------------------------------
// The ground truth, checked by hand.

BOOST_AUTO_TEST_SUITE(reference_known_answers)

// x = 1..9 (3x3), w = [[1,2],[3,4]], bias 0.5, stride 2, padding 1: four non-overlapping windows
// over the zero-padded 5x5 input. dy = [[1,2],[3,4]].
BOOST_AUTO_TEST_CASE(conv2d_stride2_pad1) {
  const Conv2dDesc d = conv_desc(1, 3, 3, 1, 2, 2, 2, 2, 1, 1, 1, 1, 1);
  BOOST_TEST_REQUIRE(d.out_h == 2);
  BOOST_TEST_REQUIRE(d.out_w == 2);
  auto conv = kernel<Conv2dKernel>("conv2d", "reference", d);
  const Tensor x = make_tensor({1, 1, 3, 3}, {1, 2, 3, 4, 5, 6, 7, 8, 9});
  const Tensor w = make_tensor({1, 1, 2, 2}, {1, 2, 3, 4});
  const Tensor bias = make_tensor({1}, {0.5f});
  Tensor y = poisoned({1, 1, 2, 2});
  conv->forward(x, w, &bias, y);
  // [0 0; 0 1].w = 4, [0 0; 2 3].w = 18, [0 4; 0 7].w = 36, [5 6; 8 9].w = 77; plus 0.5
  check_values(y, {4.5f, 18.5f, 36.5f, 77.5f}, "y");

  const Tensor dy = make_tensor({1, 1, 2, 2}, {1, 2, 3, 4});
  Tensor dx = poisoned({1, 1, 3, 3});
  conv->backward_data(dy, w, dx);
  // Each input pixel lies in exactly one window: dx = w[tap] * dy[window].
  check_values(dx, {4, 6, 8, 6, 4, 8, 12, 12, 16}, "dx");

  Tensor dw = poisoned({1, 1, 2, 2}), db = poisoned({1});
  conv->backward_params(x, dy, dw, &db);
  // dw[r][s] = sum over windows of dy * xpad[2*oh + r][2*ow + s]
  check_values(dw, {20, 36, 36, 64}, "dweight");
  check_values(db, {10}, "dbias");
}

// Two groups, dilation 2, 4x4 input -> 2x2 output; channel 1 reads only channel 1, so a group
// mix-up changes every value of the second output channel.
BOOST_AUTO_TEST_CASE(conv2d_dilation2_groups2) {
  const Conv2dDesc d = conv_desc(2, 4, 4, 2, 2, 2, 1, 1, 0, 0, 2, 2, 2);
  BOOST_TEST_REQUIRE(d.out_h == 2);
  auto conv = kernel<Conv2dKernel>("conv2d", "reference", d);
  std::vector<float> values(32);
  for (int i = 0; i < 16; ++i) {
    values[i] = static_cast<float>(i);            // channel 0: 4*h + w
    values[16 + i] = static_cast<float>(16 + i);  // channel 1: 16 + 4*h + w
  }
  const Tensor x = make_tensor({1, 2, 4, 4}, values);
  const Tensor w = make_tensor({2, 1, 2, 2}, {1, 2, 3, 4, 0, -1, 2, 1});
  Tensor y = poisoned({1, 2, 2, 2});
  conv->forward(x, w, nullptr, y);
  // y0 = sum(w0) * (4*oh + ow) + sum w0[r][s] * (8r + 2s) = 10 * (4*oh + ow) + 68
  // y1 = sum(w1) * (16 + 4*oh + ow) + sum w1[r][s] * (8r + 2s) = 2 * (16 + 4*oh + ow) + 24
  check_values(y, {68, 78, 108, 118, 56, 58, 64, 66}, "y");
}

const std::vector<float> kPoolInput = {1,  3,  2,  2,   //
                                       3,  0,  1,  2,   //
                                       -1, -2, -5, -3,  //
                                       -4, -1, -3, -6};

// Ties: the gradient goes to the first maximum in row-major order.
BOOST_AUTO_TEST_CASE(max_pool_ties) {
  const Pool2dDesc d = pool_desc(Mode::kMax, 1, 4, 4, 2, 2, 2, 2, 0, 0, true);
  auto pool = kernel<Pool2dKernel>("pool2d", "reference", d);
  const Tensor x = make_tensor({1, 1, 4, 4}, kPoolInput);
  Tensor y = poisoned({1, 1, 2, 2});
  pool->forward(x, y);
  check_values(y, {3, 2, -1, -3}, "y");
  Tensor dx = poisoned({1, 1, 4, 4});
  pool->backward(x, y, make_tensor({1, 1, 2, 2}, {1, 2, 3, 4}), dx);
  check_values(dx, {0, 1, 2, 0, 0, 0, 0, 0, 3, 0, 0, 4, 0, 0, 0, 0}, "dx");
}

// Padding is -inf: the all-negative corner windows keep their negative maxima.
BOOST_AUTO_TEST_CASE(max_pool_padding) {
  const Pool2dDesc d = pool_desc(Mode::kMax, 1, 4, 4, 2, 2, 2, 2, 1, 1, true);
  BOOST_TEST_REQUIRE(d.out_h == 3);
  auto pool = kernel<Pool2dKernel>("pool2d", "reference", d);
  const Tensor x = make_tensor({1, 1, 4, 4}, kPoolInput);
  Tensor y = poisoned({1, 1, 3, 3});
  pool->forward(x, y);
  check_values(y, {1, 3, 2, 3, 1, 2, -4, -1, -6}, "y");
  Tensor dx = poisoned({1, 1, 4, 4});
  pool->backward(x, y, make_tensor({1, 1, 3, 3}, {1, 2, 3, 4, 5, 6, 7, 8, 9}), dx);
  check_values(dx, {1, 2, 0, 3, 4, 0, 5, 6, 0, 0, 0, 0, 7, 8, 0, 9}, "dx");
}

BOOST_AUTO_TEST_CASE(avg_pool_count_include_pad) {
  const Pool2dDesc d = pool_desc(Mode::kAverage, 1, 4, 4, 2, 2, 2, 2, 1, 1, true);
  auto pool = kernel<Pool2dKernel>("pool2d", "reference", d);
  const Tensor x = make_tensor({1, 1, 4, 4}, kPoolInput);
  Tensor y = poisoned({1, 1, 3, 3});
  pool->forward(x, y);
  // Every window divides by 4, padding included.
  check_values(y, {0.25f, 1.25f, 0.5f, 0.5f, -1.5f, -0.25f, -1, -1, -1.5f}, "y");
  Tensor dx = poisoned({1, 1, 4, 4});
  pool->backward(x, y, make_tensor({1, 1, 3, 3}, {1, 2, 3, 4, 5, 6, 7, 8, 9}), dx);
  check_values(
      dx,
      {0.25f, 0.5f, 0.5f, 0.75f, 1, 1.25f, 1.25f, 1.5f, 1, 1.25f, 1.25f, 1.5f, 1.75f, 2, 2, 2.25f},
      "dx");
}

BOOST_AUTO_TEST_CASE(avg_pool_exclude_pad) {
  const Pool2dDesc d = pool_desc(Mode::kAverage, 1, 4, 4, 2, 2, 2, 2, 1, 1, false);
  auto pool = kernel<Pool2dKernel>("pool2d", "reference", d);
  const Tensor x = make_tensor({1, 1, 4, 4}, kPoolInput);
  Tensor y = poisoned({1, 1, 3, 3});
  pool->forward(x, y);
  // Corner windows hold 1 real element, edge windows 2, the centre 4.
  check_values(y, {1, 2.5f, 2, 1, -1.5f, -0.5f, -4, -2, -6}, "y");
  Tensor dx = poisoned({1, 1, 4, 4});
  pool->backward(x, y, make_tensor({1, 1, 3, 3}, {1, 2, 3, 4, 5, 6, 7, 8, 9}), dx);
  check_values(dx, {1, 1, 1, 3, 2, 1.25f, 1.25f, 3, 2, 1.25f, 1.25f, 3, 7, 4, 4, 9}, "dx");
}

BOOST_AUTO_TEST_CASE(gemm_small) {
  auto gemm = kernel<GemmKernel>("gemm", "reference", {});
  // A = [[1,2,3],[4,5,6]] (2x3), B = [[1,0],[0,1],[1,1]] (3x2), C0 = [[1,1],[1,1]]
  const std::vector<float> a = {1, 2, 3, 4, 5, 6}, b = {1, 0, 0, 1, 1, 1};
  std::vector<float> c = {1, 1, 1, 1};
  gemm->gemm(false, false, 2, 2, 3, 2.0f, a.data(), 3, b.data(), 2, -1.0f, c.data(), 2);
  // A*B = [[4,5],[10,11]]; 2*AB - C0
  BOOST_TEST(c == std::vector<float>({7, 9, 19, 21}), boost::test_tools::per_element());
  std::vector<float> garbage = {kNaN, kNaN, kNaN, kNaN};
  // op(A) = A^T^T: pass A^T (3x2) transposed; beta = 0 ignores the NaNs in C.
  const std::vector<float> a_t = {1, 4, 2, 5, 3, 6};
  gemm->gemm(true, false, 2, 2, 3, 1.0f, a_t.data(), 2, b.data(), 2, 0.0f, garbage.data(), 2);
  BOOST_TEST(garbage == std::vector<float>({4, 5, 10, 11}), boost::test_tools::per_element());
}

// x [2, 2, 2] (N, C, spatial): channel 0 holds 1, 3, 5, 7 (mean 4), channel 1 -2, 0, 2, 4 (mean
// 1); every pass by hand, all values exact in float.
BOOST_AUTO_TEST_CASE(batch_norm_passes) {
  BatchNormDesc d;
  d.channels = 2;
  d.spatial = 2;
  auto bn = kernel<BatchNormKernel>("batch_norm", "reference", d);
  const Shape shape{2, 2, 2};
  const Tensor x = make_tensor(shape, {1, 3, -2, 0, 5, 7, 2, 4});
  const Tensor dy = make_tensor(shape, {1, 0, 2, -1, 0, -1, 1, 1});
  std::vector<double> sum(2), squares(2), sum_dy(2), sum_dy_xhat(2);
  bn->channel_sums(x, sum.data());
  BOOST_TEST(sum == (std::vector<double>{16, 4}), boost::test_tools::per_element());
  const double mean[] = {4, 1}, inv_std[] = {0.5, 0.25};
  bn->channel_squares(x, mean, squares.data());
  BOOST_TEST(squares == (std::vector<double>{20, 20}), boost::test_tools::per_element());
  const float center_f[] = {1, 2}, scale_f[] = {2, -1}, shift_f[] = {1, 0.5};
  Tensor y = poisoned(shape);
  bn->normalize(x, center_f, scale_f, shift_f, y, nullptr);
  check_values(y, {1, 5, 4.5, 2.5, 9, 13, 0.5, -1.5}, "normalize");
  bn->gradient_sums(x, dy, mean, inv_std, sum_dy.data(), sum_dy_xhat.data());
  BOOST_TEST(sum_dy == (std::vector<double>{0, 3}), boost::test_tools::per_element());
  BOOST_TEST(sum_dy_xhat == (std::vector<double>{-3, -0.25}), boost::test_tools::per_element());
  const double scale[] = {1, 2}, mean_dy[] = {0, 0.75}, mean_dy_xhat[] = {-0.75, -0.0625};
  Tensor dx = poisoned(shape);
  bn->input_gradient(x, dy, mean, inv_std, scale, mean_dy, mean_dy_xhat, dx);
  check_values(dx, {-0.125, -0.375, 2.40625, -3.53125, 0.375, 0.125, 0.53125, 0.59375},
               "input gradient");
}

// PyTorch's values and derivatives at the kinks of relu6, hard_sigmoid and hardswish, and for NaN
// (activations.cpp states them).
BOOST_AUTO_TEST_CASE(activation_kinks_and_nan) {
  const Tensor x = make_tensor({7}, {-4, -3, 0, 3, 6, 7, kNaN});
  Tensor dy({7});
  dy.fill(1.0f);
  struct Case {
    Kind kind;
    std::vector<float> value, derivative;
  };
  const float sixth = 1.0f / 6.0f;
  const std::vector<Case> cases = {
      {Kind::kRelu, {0, 0, 0, 3, 6, 7, kNaN}, {0, 0, 0, 1, 1, 1, 1}},
      {Kind::kRelu6, {0, 0, 0, 3, 6, 6, kNaN}, {0, 0, 0, 1, 0, 0, 1}},
      {Kind::kHardSigmoid, {0, 0, 0.5, 1, 1, 1, kNaN}, {0, 0, sixth, 0, 0, 0, 0}},
      {Kind::kHardswish, {0, 0, 0, 3, 6, 7, kNaN}, {0, -0.5, 0.5, 1.5, 1, 1, 1}},
  };
  for (const Case& c : cases) {
    const ActivationDesc d = activation_desc(c.kind);
    auto act = kernel<ActivationKernel>("activation", "reference", d);
    Tensor y = poisoned({7}), dx = poisoned({7});
    act->forward(x, y);
    act->backward(x, y, dy, dx);
    check_close_elementwise(y, make_tensor({7}, c.value), 0.0f, describe(d) + " value");
    check_close_elementwise(dx, make_tensor({7}, c.derivative), 0.0f, describe(d) + " derivative");
  }
}

// Softmax over axis 2 of [1, 2, 2] (inner 2): groups (0, ln 3) -> (1/4, 3/4) and (1, 1) -> (1/2,
// 1/2); backward with dy (1, 0) and (2, -2): dot 1/4 and 0. On every backend.
BOOST_AUTO_TEST_CASE(softmax_groups) {
  SoftmaxDesc d;
  d.axis = 2;
  d.inner = 2;
  const float ln3 = std::log(3.0f);
  const Tensor x = make_tensor({1, 2, 2}, {0, 1, ln3, 1});
  const Tensor dy = make_tensor({1, 2, 2}, {1, 2, 0, -2});
  for (const std::string& backend : all_backends("softmax")) {
    BOOST_TEST_CONTEXT(backend) {
      auto softmax = kernel<SoftmaxKernel>("softmax", backend, d);
      Tensor y = poisoned({1, 2, 2}), dx = poisoned({1, 2, 2});
      softmax->forward(x, y);
      check_close_elementwise(y, make_tensor({1, 2, 2}, {0.25f, 0.5f, 0.75f, 0.5f}), 1e-6f, "y");
      softmax->backward(y, dy, dx);
      check_close_elementwise(dx, make_tensor({1, 2, 2}, {0.1875f, 1, -0.1875f, -1}), 1e-6f, "dx");
    }
  }
}

// LRN over 3 channels at one position, size 3, alpha 3 (alpha/size = 1), beta 1, k 1, x = (1, 2,
// 3): s = (1 + 1 + 4, 1 + 1 + 4 + 9, 1 + 4 + 9) = (6, 15, 14), y = x / s; backward with dy = 1:
// dx[i] = 1/s[i] - 2 x[i] * sum over the windows holding i of x[c] / s[c]^2. On every backend.
BOOST_AUTO_TEST_CASE(lrn_window) {
  const LrnDesc d = lrn_desc(3, 1, 3, 3.0, 1.0, 1.0);
  const Tensor x = make_tensor({1, 3, 1, 1}, {1, 2, 3});
  Tensor dy({1, 3, 1, 1});
  dy.fill(1.0f);
  const double t0 = 1.0 / 36, t1 = 2.0 / 225, t2 = 3.0 / 196;
  const auto f = [](double v) { return static_cast<float>(v); };
  for (const std::string& backend : all_backends("lrn")) {
    BOOST_TEST_CONTEXT(backend) {
      auto lrn = kernel<LrnKernel>("lrn", backend, d);
      Tensor y = poisoned(x.shape()), dx = poisoned(x.shape());
      lrn->forward(x, y);
      check_close_elementwise(y, make_tensor(x.shape(), {f(1.0 / 6), f(2.0 / 15), f(3.0 / 14)}),
                              1e-6f, "y");
      lrn->backward(x, dy, dx);
      check_close_elementwise(
          dx,
          make_tensor(x.shape(), {f(1.0 / 6 - 2 * (t0 + t1)), f(1.0 / 15 - 4 * (t0 + t1 + t2)),
                                  f(1.0 / 14 - 6 * (t1 + t2))}),
          1e-6f, "dx");
    }
  }
}

// Two images of 2 channels of 3 positions: the means, and dy / 3 back. On every backend.
BOOST_AUTO_TEST_CASE(global_avg_pool_means) {
  const GlobalAvgPoolDesc d{2, 3};
  const Tensor x = make_tensor({2, 2, 3, 1}, {1, 2, 3, -1, 0, 4, 6, 6, 6, 0.5f, 0, 1});
  const Tensor dy = make_tensor({2, 2, 1, 1}, {3, 6, -1.5f, 0});
  for (const std::string& backend : all_backends("global_avg_pool")) {
    BOOST_TEST_CONTEXT(backend) {
      auto pool = kernel<GlobalAvgPoolKernel>("global_avg_pool", backend, d);
      Tensor y = poisoned(dy.shape()), dx = poisoned(x.shape());
      pool->forward(x, y);
      check_values(y, {2, 1, 6, 0.5f}, "y");
      pool->backward(dy, dx);
      check_values(dx, {1, 1, 1, 2, 2, 2, -0.5f, -0.5f, -0.5f, 0, 0, 0}, "dx");
    }
  }
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------
// The reference's backward passes are the adjoints of its forward passes: for any x, w, dy,
// <conv(x, w), dy> = <x, backward_data(dy, w)> = <w, backward_params(x, dy)>, and likewise for
// pooling (max pooling is linear in x once its selection is fixed).

BOOST_AUTO_TEST_CASE(reference_adjoint_identities) {
  std::mt19937 rng(20240611);
  for (int i = 0; i < 60; ++i) {
    const auto kind = static_cast<GroupKind>(i % 3);
    const Conv2dDesc d = random_conv(rng, kind, i % 10 == 9);
    const int64_t n = uniform(rng, 1, 3);
    BOOST_TEST_CONTEXT(describe(d, n)) {
      auto conv = kernel<Conv2dKernel>("conv2d", "reference", d);
      const Tensor x = random_tensor({n, d.in_channels, d.in_h, d.in_w}, rng);
      const Tensor w =
          random_tensor({d.out_channels, d.in_channels / d.groups, d.kernel_h, d.kernel_w}, rng);
      const Tensor dy = random_tensor({n, d.out_channels, d.out_h, d.out_w}, rng);
      Tensor y(dy.shape()), dx(x.shape()), dw(w.shape()), db(Shape{d.out_channels});
      conv->forward(x, w, nullptr, y);
      conv->backward_data(dy, w, dx);
      conv->backward_params(x, dy, dw, &db);
      const double scale = std::max(1.0, abs_dot(y, dy));
      BOOST_TEST(std::abs(dot(y, dy) - dot(x, dx)) <= 1e-5 * scale);
      BOOST_TEST(std::abs(dot(y, dy) - dot(w, dw)) <= 1e-5 * scale);
      double dy_sum = 0;
      for (float v : dy.span()) dy_sum += v;
      double db_sum = 0;
      for (float v : db.span()) db_sum += v;
      BOOST_TEST(std::abs(dy_sum - db_sum) <= 1e-4 * std::max(1.0, std::abs(dy_sum)));
    }
  }
  for (int i = 0; i < 60; ++i) {
    const Mode mode = i % 3 == 0 ? Mode::kMax : Mode::kAverage;
    const Pool2dDesc d = random_pool(rng, mode, i % 3 == 1);
    const int64_t n = uniform(rng, 1, 3);
    BOOST_TEST_CONTEXT(describe(d, n)) {
      auto pool = kernel<Pool2dKernel>("pool2d", "reference", d);
      const Tensor x = random_tensor({n, d.channels, d.in_h, d.in_w}, rng);
      const Tensor dy = random_tensor({n, d.channels, d.out_h, d.out_w}, rng);
      Tensor y(dy.shape()), dx(x.shape());
      pool->forward(x, y);
      pool->backward(x, y, dy, dx);
      BOOST_TEST(std::abs(dot(y, dy) - dot(x, dx)) <= 1e-5 * std::max(1.0, abs_dot(y, dy)));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Every other backend against the reference.

BOOST_AUTO_TEST_SUITE(backends_match_reference)

BOOST_AUTO_TEST_CASE(there_is_a_fast_backend) {
  // Without one, the comparisons below would pass vacuously.
  BOOST_TEST(registries().kernels.contains("conv2d", "tbb"));
  BOOST_TEST(registries().kernels.contains("pool2d", "tbb"));
  BOOST_TEST(registries().kernels.contains("gemm", "tbb"));
  BOOST_TEST(registries().kernels.contains("batch_norm", "tbb"));
  BOOST_TEST(registries().kernels.contains("activation", "tbb"));
  BOOST_TEST(registries().kernels.contains("softmax", "tbb"));
  BOOST_TEST(registries().kernels.contains("lrn", "tbb"));
  BOOST_TEST(registries().kernels.contains("global_avg_pool", "tbb"));
}

BOOST_AUTO_TEST_CASE(conv2d_random) {
  std::mt19937 rng(7);
  for (const std::string& backend : fast_backends("conv2d")) {
    for (int i = 0; i < 1500; ++i) {
      const auto kind = static_cast<GroupKind>(i % 3);
      compare_conv(random_conv(rng, kind, i % 12 == 11), uniform(rng, 1, 5), backend, rng);
    }
  }
}

// A shape, a batch, and the implementations the tbb conv2d kernel runs for it, one per pass
// (TbbConv2d::implementation(), backend_tbb/tbb_kernels.hpp): a path test asserts the path it
// means to reach, so a retuned threshold that moves a shape to another path fails here rather
// than leaving the path untested. The names do not depend on the CPU's vector width: shapes with
// direct backward_data have at least 8 channels per group (direct::kRows is 8 with AVX-512, 6
// with AVX2).
struct PathCase {
  Conv2dDesc desc;
  int64_t n;
  std::string path;
};

// d with its output extent rounded up (ceil mode): a last window that starts inside the input
// and runs past the padding.
Conv2dDesc rounded_up(Conv2dDesc d) {
  d.out_h = out_extent_ceil(d.in_h, d.kernel_h, d.stride_h, d.pad_h, d.dilation_h);
  d.out_w = out_extent_ceil(d.in_w, d.kernel_w, d.stride_w, d.pad_w, d.dilation_w);
  return d;
}

void check_paths(const std::vector<PathCase>& cases, std::mt19937& rng) {
  BOOST_TEST_REQUIRE(registries().kernels.contains("conv2d", "tbb"));
  for (const PathCase& c : cases) {
    const std::string path = kernel<Conv2dKernel>("conv2d", "tbb", c.desc)->implementation();
    BOOST_TEST(path == c.path, describe(c.desc, c.n) << " runs " << path);
  }
  for (const std::string& backend : fast_backends("conv2d")) {
    for (const PathCase& c : cases) compare_conv(c.desc, c.n, backend, rng);
  }
}

// Shapes that reach every path of the tbb kernel (see TbbConv2d in backend_tbb/tbb_kernels.hpp):
// LeNet's layers (lanes), several images per block with a partial last block (lanes, and small
// backward_data: 3 channels are too few for direct backward_data, 64 filters of 12x12 too many for
// lanes' frames), direct backward_data (also with padding wider than the kernel reaches), bands
// of output rows (blas, over 64 channels so not polyphase), blas with many images per GEMM (over
// 64 filters), strided 1x1 ("small": polyphase refuses 1x1), pointwise (over 64 channels, so not
// direct; filters and pixels that are not whole panels of panel::multiply) and depthwise.
BOOST_AUTO_TEST_CASE(conv2d_block_paths) {
  std::mt19937 rng(11);
  const std::string direct = "fwd=direct bwd_data=direct bwd_weights=direct";
  const std::string direct_small = "fwd=direct bwd_data=small bwd_weights=direct";
  const std::string blas = "fwd=blas bwd_data=blas bwd_weights=blas";
  const std::string lanes = "fwd=lanes bwd_data=lanes bwd_weights=lanes";
  const std::vector<PathCase> cases = {
      {conv_desc(1, 28, 28, 6, 5, 5, 1, 1, 2, 2, 1, 1, 1), 9, lanes},    // LeNet conv1
      {conv_desc(6, 14, 14, 16, 5, 5, 1, 1, 0, 0, 1, 1, 1), 13, lanes},  // LeNet conv2
      {conv_desc(3, 5, 6, 4, 3, 3, 1, 1, 1, 1, 1, 1, 1), 37, lanes},     // 16 + 16 + 5 images
      {conv_desc(3, 12, 12, 64, 3, 3, 1, 1, 1, 1, 1, 1, 1), 37, direct_small},  // images per block
      {conv_desc(20, 30, 26, 6, 5, 5, 1, 1, 2, 2, 1, 1, 2), 2, direct},         // two groups
      {conv_desc(136, 24, 24, 4, 7, 3, 2, 1, 3, 1, 2, 1, 1), 2, blas},  // bands, strided, dilated
      {conv_desc(8, 9, 9, 12, 1, 1, 2, 2, 0, 0, 1, 1, 4), 5,
       "fwd=small bwd_data=small bwd_weights=small"},                     // 1x1 stride 2
      {conv_desc(32, 20, 20, 24, 1, 1, 1, 1, 0, 0, 1, 1, 1), 6, direct},  // 1x1, direct
      {conv_desc(72, 6, 6, 8, 1, 1, 1, 1, 0, 0, 1, 1, 1), 3,
       "fwd=pointwise bwd_data=pointwise bwd_weights=pointwise"},  // over 64 channels
      {conv_desc(75, 20, 21, 44, 1, 1, 1, 1, 0, 0, 1, 1, 1), 2,
       "fwd=pointwise bwd_data=pointwise bwd_weights=pointwise"},  // partial row and column panels
      {conv_desc(8, 8, 8, 6, 1, 1, 1, 1, 1, 1, 1, 1, 1), 3, direct},   // padding beyond the kernel
      {conv_desc(12, 9, 9, 8, 3, 3, 1, 1, 1, 1, 1, 1, 1), 17, lanes},  // odd size, 16 + 1 images
      {conv_desc(12, 28, 28, 8, 3, 3, 1, 1, 1, 1, 1, 1, 1), 5, direct},  // direct backward_data
      // Row by row (direct::by_rows): 32 and 64 columns a row, the padding 34 and 66 wide; two
      // groups, 10 filters (a partial register block), 9 images (weight-gradient blocks).
      {conv_desc(16, 32, 32, 20, 3, 3, 1, 1, 1, 1, 1, 1, 2), 9, direct},
      {conv_desc(8, 20, 64, 10, 3, 3, 1, 1, 1, 1, 1, 1, 1), 3, direct},
      {conv_desc(12, 24, 32, 16, 3, 3, 1, 1, 4, 4, 4, 4, 1), 2, direct},  // dilation 4
      // Past the L2 budget, where Winograd cannot run the shape: under 32 channels, a dilation
      // its padding does not divide, a 5x5 kernel (the last two with backward_data under 65 %
      // useful, which only blas would run otherwise).
      {conv_desc(16, 50, 47, 12, 3, 3, 1, 1, 1, 1, 1, 1, 1), 2, direct},
      {conv_desc(40, 30, 30, 36, 3, 3, 1, 1, 1, 1, 2, 2, 1), 2, direct},
      {conv_desc(24, 33, 34, 20, 5, 5, 1, 1, 4, 4, 2, 2, 1), 2, direct},
      // Up to 128 channels and filters where Winograd cannot run the shape
      // (kDirectLargeMaxChannels): 96 channels with a 5x5 kernel, 128 filters on 12 channels; the
      // weight gradient only from 27x27 outputs (kDirectLargeParamsMinOutput), blas below. From
      // 16 channels and filters Winograd takes a 3x3 weight gradient
      // (kWinogradParamsMinChannels).
      {conv_desc(96, 12, 12, 32, 5, 5, 1, 1, 2, 2, 1, 1, 1), 3,
       "fwd=direct bwd_data=direct bwd_weights=blas"},
      {conv_desc(12, 27, 27, 128, 3, 3, 1, 1, 1, 1, 1, 1, 1), 2, direct},
      {conv_desc(16, 27, 27, 128, 3, 3, 1, 1, 1, 1, 1, 1, 1), 2,
       "fwd=direct bwd_data=direct bwd_weights=winograd43"},
      {conv_desc(16, 32, 32, 16, 3, 3, 1, 1, 1, 1, 1, 1, 1), 2,
       "fwd=direct bwd_data=direct bwd_weights=winograd43"},              // ResNet-20's first stage
      {conv_desc(4, 25, 25, 130, 3, 3, 2, 2, 1, 1, 1, 1, 1), 9, blas},    // blas, many images
      {conv_desc(12, 11, 11, 12, 3, 3, 1, 1, 1, 1, 1, 1, 12), 7, lanes},  // depthwise
  };
  check_paths(cases, rng);
}

// The polyphase path (stride 2 to 4, more than one tap, at most 128 channels and filters per
// group, a small image but past the lanes method's frames, which come first in the lists, wide
// rows at least 65 % real): forward and the weight gradient run the
// direct kernels over the input's phase planes (polyphase.hpp); backward_data too, one product per
// phase of dx, where there are at least 8 channels per group, a tap on every phase and at least
// 128 wide columns a phase (else "small" or "blas"). ResNet-20's first stride-2 3x3 convolution
// (several images per weight-gradient block, a batch not a multiple of it; its second, with an
// 8x8 output, runs lanes: conv2d_lanes_paths) and its 1x1 downsample (refused: "small"
// throughout), 128 filters, odd sizes (the
// second phase row and column one shorter than the first: a partial last phase row and column),
// unequal padding, padding 0 and 2 (a 5x5 kernel: 3x3, 3x2, 2x3 and 2x2 sub-kernels), two groups,
// stride (2, 1), stride 3 (nine phases of one tap), dilation 2 with stride 2 (every tap on phase
// (0, 0): backward_data "small"), and a strided, dilated 7x3 kernel (every tap on even rows; a
// col matrix too big for "small").
BOOST_AUTO_TEST_CASE(conv2d_polyphase_paths) {
  std::mt19937 rng(29);
  const std::string polyphase = "fwd=polyphase bwd_data=polyphase bwd_weights=polyphase";
  const std::string small = "fwd=polyphase bwd_data=small bwd_weights=polyphase";
  const std::vector<PathCase> cases = {
      {conv_desc(16, 32, 32, 32, 3, 3, 2, 2, 1, 1, 1, 1, 1), 5, polyphase},  // ResNet-20 layer2.0
      {conv_desc(16, 32, 32, 32, 1, 1, 2, 2, 0, 0, 1, 1, 1), 3,
       "fwd=small bwd_data=small bwd_weights=small"},                        // 1x1 downsample
      {conv_desc(16, 25, 23, 8, 3, 3, 2, 2, 1, 1, 1, 1, 1), 11, polyphase},  // odd sizes
      {conv_desc(5, 45, 43, 8, 3, 3, 2, 2, 1, 1, 1, 1, 1), 3, small},        // odd, 5 channels
      {conv_desc(16, 26, 30, 12, 3, 3, 2, 2, 2, 0, 1, 1, 1), 4, polyphase},  // padding 2, 0
      {conv_desc(4, 47, 47, 6, 3, 3, 2, 2, 0, 0, 1, 1, 1), 3, small},        // padding 0
      {conv_desc(20, 25, 27, 7, 5, 5, 2, 2, 2, 2, 1, 1, 1), 2, polyphase},   // 5x5, padding 2
      {conv_desc(5, 39, 40, 7, 5, 5, 2, 2, 2, 2, 1, 1, 1), 3, small},        // 5x5, 5 channels
      {conv_desc(32, 28, 28, 16, 3, 3, 2, 2, 1, 1, 1, 1, 2), 3, polyphase},  // two groups
      {conv_desc(16, 20, 24, 8, 3, 3, 2, 1, 1, 1, 1, 1, 1), 2, polyphase},   // stride (2, 1)
      {conv_desc(8, 38, 38, 8, 3, 3, 3, 3, 1, 1, 1, 1, 1), 2, polyphase},    // stride 3
      {conv_desc(4, 46, 46, 8, 3, 3, 3, 3, 1, 1, 1, 1, 1), 2, small},        // stride 3, small
      {conv_desc(8, 33, 33, 8, 3, 3, 2, 2, 2, 2, 2, 2, 1), 2, small},        // dilation 2, stride 2
      {conv_desc(16, 24, 24, 4, 7, 3, 2, 1, 3, 1, 2, 1, 1), 2,
       "fwd=polyphase bwd_data=blas bwd_weights=polyphase"},  // 7x3, strided, dilated
      // Over 64 filters (kDirectLargeMaxChannels), outputs past lanes' strided ones: the weight
      // gradient at 27x27 (kDirectLargeParamsMinOutput) but not at 14x14.
      {conv_desc(8, 54, 54, 72, 3, 3, 2, 2, 1, 1, 1, 1, 1), 2, polyphase},
      {conv_desc(64, 28, 28, 128, 3, 3, 2, 2, 1, 1, 1, 1, 1), 2,
       "fwd=polyphase bwd_data=polyphase bwd_weights=blas"},
      // Phase planes past the L2 budget (kDirectLargeBudgetFloats): these ran "blas" before.
      {conv_desc(16, 70, 66, 24, 3, 3, 2, 2, 1, 1, 1, 1, 1), 2, polyphase},
      {conv_desc(3, 90, 90, 20, 7, 7, 2, 2, 3, 3, 1, 1, 1), 2,
       "fwd=polyphase bwd_data=blas bwd_weights=polyphase"},  // a 7x7/2 first layer
  };
  check_paths(cases, rng);
}

// The lanes method (backend_tbb/lanes.hpp: lanes::kLanes images across the vector lanes): blocks
// of exactly kLanes images and one more (kLanes is 16 or 8: 16 and 17 cover both), stride 2 and
// an output rounded up (forward and the weight gradient; backward_data is stride 1 only), dilation
// 2, a 5x5 kernel with padding short of its reach (rows of taps skipped on both sides), non-square
// images and kernels with unequal padding, two groups, and padding beyond the kernel's reach
// (backward_data refuses it). Tile shapes vary with the rows and columns, so partial tiles are
// reached on every vector width.
BOOST_AUTO_TEST_CASE(conv2d_lanes_paths) {
  std::mt19937 rng(29);
  const std::string lanes = "fwd=lanes bwd_data=lanes bwd_weights=lanes";
  const std::vector<PathCase> cases = {
      {conv_desc(6, 14, 14, 16, 5, 5, 1, 1, 0, 0, 1, 1, 1), 16, lanes},  // one full block
      {conv_desc(6, 14, 14, 16, 5, 5, 1, 1, 0, 0, 1, 1, 1), 17, lanes},  // and one image more
      {conv_desc(5, 15, 15, 6, 3, 3, 2, 2, 1, 1, 1, 1, 1), 19,
       "fwd=lanes bwd_data=small bwd_weights=lanes"},  // stride 2
      {rounded_up(conv_desc(4, 12, 11, 6, 3, 3, 2, 3, 1, 0, 1, 1, 1)), 5,
       "fwd=lanes bwd_data=small bwd_weights=lanes"},                    // rounded up
      {conv_desc(6, 11, 11, 5, 3, 3, 1, 1, 2, 2, 2, 2, 1), 18, lanes},   // dilation 2
      {conv_desc(4, 9, 13, 7, 5, 5, 1, 1, 1, 1, 1, 1, 1), 20, lanes},    // 5x5, padding 1
      {conv_desc(5, 8, 11, 9, 3, 5, 1, 1, 1, 2, 1, 1, 1), 11, lanes},    // 3x5, padding (1, 2)
      {conv_desc(8, 10, 10, 12, 3, 3, 1, 1, 1, 1, 1, 1, 2), 21, lanes},  // two groups
      {conv_desc(5, 7, 7, 10, 3, 3, 1, 1, 3, 3, 1, 1, 1), 9,
       "fwd=lanes bwd_data=small bwd_weights=lanes"},  // padding past the kernel's reach
      // Strided with at most 144 output pixels a plane: the larger budget
      // (kLanesStridedBudgetPixels). ResNet-20's layer3.0 (frames of 32 * 18 * 18 pixels); 64 ->
      // 128 (64 * 18 * 18); 12x12, the most output it takes; and 13x12, one row more: polyphase.
      {conv_desc(32, 16, 16, 64, 3, 3, 2, 2, 1, 1, 1, 1, 1), 17,
       "fwd=lanes bwd_data=small bwd_weights=lanes"},
      {conv_desc(64, 16, 16, 128, 3, 3, 2, 2, 1, 1, 1, 1, 1), 3,
       "fwd=lanes bwd_data=blas bwd_weights=lanes"},
      {conv_desc(24, 24, 24, 40, 3, 3, 2, 2, 1, 1, 1, 1, 1), 3,
       "fwd=lanes bwd_data=polyphase bwd_weights=lanes"},
      {conv_desc(24, 26, 24, 40, 3, 3, 2, 2, 1, 1, 1, 1, 1), 3,
       "fwd=polyphase bwd_data=polyphase bwd_weights=polyphase"},
  };
  check_paths(cases, rng);
}

// Depthwise shapes (one input channel per group, any geometry). Within the lanes method's frames
// (kLanesBudgetPixels) lanes runs their forward and weight gradient, one group's single filter over
// every output pixel at once (pixel_tiles in lanes.cpp), and their backward_data where
// lanes::data_fits (stride 1, padding within the kernel's reach); the depthwise method runs the
// rest: backward_data of the others, and every pass of planes past lanes' frames (the second
// list). Geometries: stride 1 (the wide tap loops, with long runs past 64 floats and short tails),
// dilation, a channel multiplier (backward_data adds two filters' shares), strides 2, (2, 1) and 3
// (the plane split into phases), stride with dilation (taps of one phase from different rows), a
// stride past the kernel (phases no tap reaches), a 5x5 kernel, padding wider than the kernel, an
// output size rounded up (a last window past the padding), a batch big enough to be split over
// threads and over groups (for_lanes_groups), and small planes stacked (depthwise.hpp) into a full
// block and a short one.
BOOST_AUTO_TEST_CASE(conv2d_depthwise_paths) {
  std::mt19937 rng(23);
  const std::string lanes = "fwd=lanes bwd_data=lanes bwd_weights=lanes";
  const std::string strided = "fwd=lanes bwd_data=depthwise bwd_weights=lanes";
  const std::string depthwise = "fwd=depthwise bwd_data=depthwise bwd_weights=depthwise";
  const std::vector<PathCase> cases = {
      {conv_desc(8, 28, 28, 8, 3, 3, 1, 1, 1, 1, 1, 1, 8), 3, lanes},    // MobileNet's 3x3
      {conv_desc(5, 13, 9, 5, 3, 3, 1, 1, 2, 2, 2, 2, 5), 2, lanes},     // dilation 2
      {conv_desc(4, 10, 12, 8, 3, 3, 1, 1, 1, 1, 1, 1, 4), 2, lanes},    // channel multiplier 2
      {conv_desc(6, 15, 15, 6, 3, 3, 2, 2, 1, 1, 1, 1, 6), 2, strided},  // stride 2
      {conv_desc(3, 11, 14, 6, 5, 5, 2, 1, 2, 2, 1, 1, 3), 2, strided},  // 5x5, stride (2, 1)
      {conv_desc(4, 17, 16, 4, 3, 3, 3, 3, 1, 1, 1, 1, 4), 2, strided},  // stride 3
      {conv_desc(4, 16, 19, 8, 3, 3, 2, 2, 2, 2, 3, 3, 4), 2, strided},  // stride 2, dilation 3
      {conv_desc(3, 13, 13, 3, 2, 2, 3, 3, 0, 0, 1, 1, 3), 2, strided},  // stride 3 > 2x2
      {conv_desc(8, 32, 32, 8, 3, 3, 2, 2, 1, 1, 1, 1, 8), 3, strided},  // MobileNet's stride 2
      {conv_desc(3, 5, 5, 3, 3, 3, 1, 1, 4, 4, 1, 1, 3), 2, strided},    // padding past the kernel
      {rounded_up(conv_desc(4, 12, 11, 4, 3, 3, 2, 3, 1, 0, 1, 1, 4)), 2, strided},  // rounded up
      {conv_desc(32, 14, 14, 32, 3, 3, 1, 1, 1, 1, 1, 1, 32), 16, lanes},  // split over threads
      {conv_desc(512, 4, 4, 512, 3, 3, 1, 1, 1, 1, 1, 1, 512), 2, lanes},  // and over groups
      {conv_desc(4, 6, 6, 4, 3, 3, 1, 1, 1, 1, 1, 1, 4), 70, lanes},    // 16-image blocks, then 6
      {conv_desc(3, 4, 4, 6, 3, 3, 2, 2, 1, 1, 1, 1, 3), 40, strided},  // stacked, stride 2
      {conv_desc(4, 3, 3, 4, 3, 3, 1, 1, 3, 3, 1, 1, 4), 70, strided},  // stacked, stride 1
      // Past lanes' frames (a padded plane of more than 8192 pixels): the depthwise method.
      {conv_desc(3, 96, 96, 3, 3, 3, 1, 1, 1, 1, 1, 1, 3), 2, depthwise},
      {conv_desc(2, 93, 95, 2, 3, 3, 1, 1, 2, 2, 2, 2, 2), 2, depthwise},  // dilation 2
      {conv_desc(2, 96, 94, 4, 3, 3, 1, 1, 1, 1, 1, 1, 2), 2, depthwise},  // channel multiplier 2
      {conv_desc(2, 97, 96, 2, 5, 5, 2, 1, 2, 2, 1, 1, 2), 2, depthwise},  // 5x5, stride (2, 1)
      {rounded_up(conv_desc(2, 100, 99, 2, 3, 3, 2, 3, 1, 0, 1, 1, 2)), 2, depthwise},
      {conv_desc(8, 96, 96, 8, 3, 3, 1, 1, 1, 1, 1, 1, 8), 3, depthwise},  // split over threads
  };
  check_paths(cases, rng);
}

// The Winograd paths, F(2x2, 3x3) and F(4x4, 3x3) (3x3, stride 1, one group, padding <= 2, >= 32
// channels and filters): odd output sizes (partial tiles on both edges), every padding it takes
// (backward_data runs with padding 2 - pad), unequal padding, more channels than filters and the
// reverse, several tile blocks with a partial last one; and the shapes just outside it (dilation 2,
// two groups, padding 3, 31 channels), which must still agree through their own paths (lanes, for
// these small images). Dilated 3x3 runs there too, as a batch of polyphase components, when the
// dilation divides the padding (of any extent: the phases of an extent it does not divide differ
// in size by one, and are padded to the larger). Where the direct kernels fit (at most 64 channels
// and filters, a small image) they run forward and often backward_data, and Winograd the weight
// gradient.
BOOST_AUTO_TEST_CASE(conv2d_winograd_paths) {
  std::mt19937 rng(17);
  const std::string direct_23 = "fwd=direct bwd_data=winograd23 bwd_weights=winograd23";
  const std::string direct_direct_23 = "fwd=direct bwd_data=direct bwd_weights=winograd23";
  const std::string lanes = "fwd=lanes bwd_data=lanes bwd_weights=lanes";
  const std::string winograd_43 = "fwd=winograd43 bwd_data=winograd43 bwd_weights=winograd43";
  const std::string all_direct = "fwd=direct bwd_data=direct bwd_weights=direct";
  const std::string direct_23_direct = "fwd=direct bwd_data=winograd23 bwd_weights=direct";
  const std::vector<PathCase> cases = {
      {conv_desc(32, 9, 11, 40, 3, 3, 1, 1, 1, 1, 1, 1, 1), 3, direct_23},        // odd 9x11 output
      {conv_desc(48, 8, 8, 32, 3, 3, 1, 1, 0, 0, 1, 1, 1), 2, direct_23},         // no padding: 6x6
      {conv_desc(32, 7, 6, 36, 3, 3, 1, 1, 2, 2, 1, 1, 1), 2, direct_direct_23},  // padding 2: 9x8
      {conv_desc(33, 10, 7, 32, 3, 3, 1, 1, 0, 2, 1, 1, 1), 2, direct_23},        // unequal padding
      {conv_desc(32, 28, 28, 32, 3, 3, 1, 1, 1, 1, 1, 1, 1), 5, winograd_43},     // many blocks
      {conv_desc(33, 30, 26, 38, 3, 3, 1, 1, 1, 1, 1, 1, 1), 2,
       winograd_43},  // 390 tiles; 38 filters: the weight gradient's dy transform ends in scalars
      {conv_desc(72, 9, 11, 40, 3, 3, 1, 1, 1, 1, 1, 1, 1), 3,
       "fwd=winograd23 bwd_data=winograd23 bwd_weights=winograd23"},  // over 64 channels: no direct
      // F(4x4, 3x3) (outputs of at least 16, at most 448 channels plus filters, in all three
      // passes; the weight gradient to 512):
      // (where the direct kernels fit too, F(4x4) runs forward and backward_data: it does a quarter
      // of their multiplications)
      {conv_desc(32, 17, 19, 40, 3, 3, 1, 1, 1, 1, 1, 1, 1), 3, winograd_43},  // direct fits
      {conv_desc(72, 17, 19, 40, 3, 3, 1, 1, 1, 1, 1, 1, 1), 3, winograd_43},  // partial 4x4 tiles
      {conv_desc(48, 18, 18, 32, 3, 3, 1, 1, 0, 0, 1, 1, 1), 2, winograd_43},  // no padding: 16x16
      {conv_desc(32, 16, 21, 36, 3, 3, 1, 1, 2, 0, 1, 1, 1), 2, winograd_43},  // padding 2, 0
      {conv_desc(48, 34, 36, 48, 3, 3, 1, 1, 2, 2, 2, 2, 1), 2,
       winograd_43},  // dilation 2: 17x18 phases
      // Under 16, F(4x4) where its 4x4 tiles cover the output with no more positions than
      // F(2x2)'s 2x2 ones (extents 3, 4, 7, 8, 11, 12, 15), also where direct fits; F(2x2) or
      // direct on 6, 10 and 14. Its weight gradient there only up to 256 channels plus filters.
      {conv_desc(64, 8, 8, 64, 3, 3, 1, 1, 1, 1, 1, 1, 1), 3, winograd_43},    // ResNet-20's 8x8
      {conv_desc(32, 7, 11, 40, 3, 3, 1, 1, 1, 1, 1, 1, 1), 3, winograd_43},   // partial tiles
      {conv_desc(48, 3, 4, 32, 3, 3, 1, 1, 1, 1, 1, 1, 1), 5, winograd_43},    // one tile an image
      {conv_desc(36, 14, 13, 48, 3, 3, 1, 1, 0, 0, 1, 1, 1), 2, winograd_43},  // no padding: 12x11
      {conv_desc(48, 12, 10, 48, 3, 3, 1, 1, 0, 0, 1, 1, 1), 2,
       "fwd=winograd23 bwd_data=winograd23 bwd_weights=winograd23"},  // 10x8: 4x4 tiles cover 96
                                                                      // positions, 2x2 80
      {conv_desc(64, 14, 14, 64, 3, 3, 1, 1, 1, 1, 1, 1, 1), 2,
       "fwd=winograd23 bwd_data=winograd23 bwd_weights=winograd23"},  // 14x14: F(2x2)
      {conv_desc(48, 6, 6, 48, 3, 3, 1, 1, 1, 1, 1, 1, 1), 2,
       "fwd=winograd23 bwd_data=winograd23 bwd_weights=winograd23"},  // 6x6: F(2x2)
      {conv_desc(128, 8, 7, 128, 3, 3, 1, 1, 1, 1, 1, 1, 1), 2,
       "fwd=winograd43 bwd_data=winograd43 bwd_weights=winograd43"},  // 256: F(4x4) throughout
      {conv_desc(160, 8, 8, 144, 3, 3, 1, 1, 1, 1, 1, 1, 1), 1,
       "fwd=winograd43 bwd_data=winograd43 bwd_weights=winograd23"},  // weight gradient at 8x8: 256
      // Dilated, Winograd needs 48 channels and filters to beat the direct kernels (which then
      // take the weight gradient too), and then runs odd phases as well.
      {conv_desc(32, 34, 36, 32, 3, 3, 1, 1, 2, 2, 2, 2, 1), 2, all_direct},  // 32 channels
      {conv_desc(48, 15, 13, 48, 3, 3, 1, 1, 2, 2, 2, 2, 1), 2,
       winograd_43},  // 8x7 and 7x6 phases, staged as 8x7: whole 4x4 tiles
      {conv_desc(128, 17, 16, 128, 3, 3, 1, 1, 1, 1, 1, 1, 1), 2,
       "fwd=winograd43 bwd_data=winograd43 bwd_weights=winograd43"},  // F(4x4) weight gradient too
      {conv_desc(64, 17, 16, 128, 3, 3, 1, 1, 1, 1, 1, 1, 1), 2,
       "fwd=winograd43 bwd_data=winograd43 bwd_weights=winograd43"},  // more filters than channels
      {conv_desc(160, 16, 17, 144, 3, 3, 1, 1, 1, 1, 1, 1, 1), 2,
       "fwd=winograd43 bwd_data=winograd43 bwd_weights=winograd43"},  // forward to 448
      {conv_desc(240, 16, 16, 232, 3, 3, 1, 1, 1, 1, 1, 1, 1), 1,
       "fwd=winograd23 bwd_data=winograd23 bwd_weights=winograd43"},  // to 512: blocks of 24, sgemm
      {conv_desc(264, 16, 16, 256, 3, 3, 1, 1, 1, 1, 1, 1, 1), 1,
       "fwd=winograd23 bwd_data=winograd23 bwd_weights=winograd23"},  // past 512: F(2x2)
      {conv_desc(32, 10, 12, 32, 3, 3, 1, 1, 2, 2, 2, 2, 1), 3,
       direct_23_direct},  // dilation 2: 4 phases (backward_data 40 % useful: under the floor)
      {conv_desc(32, 12, 9, 40, 3, 3, 1, 1, 3, 0, 3, 3, 1), 2,
       "fwd=winograd23 bwd_data=winograd23 bwd_weights=winograd23"},  // dilation 3, unequal pad
      {conv_desc(32, 8, 8, 32, 3, 3, 1, 1, 4, 4, 2, 2, 1), 2, all_direct},  // dil 2, pad 4
      // Dilated, of extents the dilation does not divide: phases of unequal size, the shorter
      // padded (direct runs forward where it fits, so most of these have over 64 channels).
      {conv_desc(32, 9, 9, 32, 3, 3, 1, 1, 2, 2, 2, 2, 1), 2,
       direct_23_direct},  // 5x5 and 4x4 phases
      {conv_desc(72, 13, 11, 40, 3, 3, 1, 1, 2, 2, 2, 2, 1), 2,
       "fwd=winograd23 bwd_data=winograd23 bwd_weights=winograd23"},  // 7x6 and 6x5 phases
      {conv_desc(72, 11, 12, 40, 3, 3, 1, 1, 0, 0, 2, 2, 1), 2,
       winograd_43},  // no padding: 7x8 output, phases of 4x4 and less
      {conv_desc(72, 35, 33, 40, 3, 3, 1, 1, 2, 2, 2, 2, 1), 2,
       winograd_43},  // F(4x4): 18x17 phases
      {conv_desc(72, 16, 17, 32, 3, 3, 1, 1, 3, 3, 3, 3, 1), 2,
       "fwd=winograd23 bwd_data=winograd23 bwd_weights=winograd23"},  // dilation 3: 6x6 .. 5x5
      {conv_desc(72, 18, 19, 32, 3, 3, 1, 1, 4, 4, 4, 4, 1), 1,
       "fwd=winograd23 bwd_data=winograd23 bwd_weights=winograd23"},     // dilation 4: 16 phases
      {conv_desc(32, 10, 10, 32, 3, 3, 1, 1, 1, 1, 2, 2, 1), 2, lanes},  // padding 1: not
      {conv_desc(64, 9, 9, 64, 3, 3, 1, 1, 1, 1, 1, 1, 2), 2, lanes},    // two groups: not
      {conv_desc(32, 6, 6, 32, 3, 3, 1, 1, 3, 3, 1, 1, 1), 2,
       "fwd=lanes bwd_data=direct bwd_weights=lanes"},                 // padding 3: not winograd
      {conv_desc(31, 9, 9, 32, 3, 3, 1, 1, 1, 1, 1, 1, 1), 2, lanes},  // 31 channels: not
  };
  check_paths(cases, rng);
}

// TbbConv2d keeps its per-call scratch (per-thread workspace, packed and Winograd-transformed
// weights, weight-gradient partials, a dilated convolution's split phases) in one pool shared by
// all its instances (backend_tbb/tbb_kernels.hpp, SHARED SCRATCH). Shapes reaching different
// methods, whose scratch sizes and layouts differ: F(4x4) and F(2x2) Winograd (dilated too, as
// 4 and 9 phase batches), polyphase, pointwise, 1x1 direct, small, lanes, blas bands, depthwise.
const std::vector<PathCase>& scratch_cases() {
  static const std::vector<PathCase> cases = {
      {conv_desc(128, 17, 16, 128, 3, 3, 1, 1, 1, 1, 1, 1, 1), 2,
       "fwd=winograd43 bwd_data=winograd43 bwd_weights=winograd43"},
      {conv_desc(72, 9, 11, 40, 3, 3, 1, 1, 1, 1, 1, 1, 1), 3,
       "fwd=winograd23 bwd_data=winograd23 bwd_weights=winograd23"},
      {conv_desc(48, 34, 36, 48, 3, 3, 1, 1, 2, 2, 2, 2, 1), 2,
       "fwd=winograd43 bwd_data=winograd43 bwd_weights=winograd43"},  // dilation 2
      {conv_desc(32, 12, 9, 40, 3, 3, 1, 1, 3, 0, 3, 3, 1), 2,
       "fwd=winograd23 bwd_data=winograd23 bwd_weights=winograd23"},  // dilation 3
      {conv_desc(16, 32, 32, 32, 3, 3, 2, 2, 1, 1, 1, 1, 1), 5,
       "fwd=polyphase bwd_data=polyphase bwd_weights=polyphase"},
      {conv_desc(72, 6, 6, 8, 1, 1, 1, 1, 0, 0, 1, 1, 1), 3,
       "fwd=pointwise bwd_data=pointwise bwd_weights=pointwise"},
      {conv_desc(32, 20, 20, 24, 1, 1, 1, 1, 0, 0, 1, 1, 1), 6,
       "fwd=direct bwd_data=direct bwd_weights=direct"},
      {conv_desc(3, 12, 12, 64, 3, 3, 1, 1, 1, 1, 1, 1, 1), 37,
       "fwd=direct bwd_data=small bwd_weights=direct"},
      {conv_desc(6, 14, 14, 16, 5, 5, 1, 1, 0, 0, 1, 1, 1), 17,
       "fwd=lanes bwd_data=lanes bwd_weights=lanes"},
      {conv_desc(136, 24, 24, 4, 7, 3, 2, 1, 3, 1, 2, 1, 1), 2,
       "fwd=blas bwd_data=blas bwd_weights=blas"},
      {conv_desc(12, 11, 11, 12, 3, 3, 1, 1, 1, 1, 1, 1, 12), 7,
       "fwd=lanes bwd_data=lanes bwd_weights=lanes"},
      {conv_desc(4, 96, 96, 4, 3, 3, 1, 1, 1, 1, 1, 1, 4), 2,
       "fwd=depthwise bwd_data=depthwise bwd_weights=depthwise"},
  };
  return cases;
}

// One conv's inputs (random, or all NaN) and what its three passes wrote.
struct ConvRun {
  Tensor x, w, bias, dy;  // inputs
  Tensor y, dx, dw, db;   // results
  ConvRun(const Conv2dDesc& d, int64_t n, std::mt19937& rng, bool nan = false) {
    const Shape x_shape{n, d.in_channels, d.in_h, d.in_w};
    const Shape y_shape{n, d.out_channels, d.out_h, d.out_w};
    const Shape w_shape{d.out_channels, d.in_channels / d.groups, d.kernel_h, d.kernel_w};
    x = random_tensor(x_shape, rng);
    w = random_tensor(w_shape, rng);
    bias = random_tensor(Shape{d.out_channels}, rng);
    dy = random_tensor(y_shape, rng);
    if (nan) {
      for (Tensor* t : {&x, &w, &bias, &dy}) t->fill(kNaN);
    }
    y = poisoned(y_shape);
    dx = poisoned(x_shape);
    dw = poisoned(w_shape);
    db = poisoned(Shape{d.out_channels});
  }
  // The same inputs (shared), fresh poisoned results.
  ConvRun with_fresh_results() const {
    ConvRun copy = *this;
    copy.y = poisoned(y.shape());
    copy.dx = poisoned(dx.shape());
    copy.dw = poisoned(dw.shape());
    copy.db = poisoned(db.shape());
    return copy;
  }
  // pass 0: forward, 1: backward_data, 2: backward_params (every gradient).
  void run(Conv2dKernel& k, int pass) {
    if (pass == 0) k.forward(x, w, &bias, y);
    if (pass == 1) k.backward_data(dy, w, dx);
    if (pass == 2) k.backward_params(x, dy, dw, &db);
  }
};

void check_same_run(const ConvRun& got, const ConvRun& want, const std::string& what) {
  check_close(got.y, want.y, what + ": forward", /*exact=*/true);
  check_close(got.dx, want.dx, what + ": backward_data", true);
  check_close(got.dw, want.dw, what + ": dweight", true);
  check_close(got.db, want.db, what + ": dbias", true);
}

// Each case run alone (its kernel the only TbbConv2d alive, so a fresh pool), checked against the
// reference; the results, from inputs drawn from rng(seed) in case order.
std::vector<ConvRun> scratch_runs_alone(unsigned seed) {
  std::mt19937 rng(seed);
  std::vector<ConvRun> runs;
  for (const PathCase& c : scratch_cases()) {
    ConvRun& run = runs.emplace_back(c.desc, c.n, rng);
    ConvRun ref = run.with_fresh_results();
    auto tbb = kernel<Conv2dKernel>("conv2d", "tbb", c.desc);
    BOOST_TEST(tbb->implementation() == c.path, describe(c.desc, c.n));
    auto reference = kernel<Conv2dKernel>("conv2d", "reference", c.desc);
    for (int pass = 0; pass < 3; ++pass) {
      run.run(*tbb, pass);
      ref.run(*reference, pass);
    }
    check_close(run.y, ref.y, describe(c.desc, c.n) + ": forward");
    check_close(run.dx, ref.dx, describe(c.desc, c.n) + ": backward_data");
    check_close(run.dw, ref.dw, describe(c.desc, c.n) + ": dweight");
    check_close(run.db, ref.db, describe(c.desc, c.n) + ": dbias");
  }
  return runs;
}

// All the instances alive at once, their passes interleaved (every case's forward, in one order,
// then every backward_data in the other, then every backward_params), and before each pass the
// next case's instance runs the same pass on NaN inputs: the shared scratch was last written by a
// different shape with NaNs. Any read of scratch the pass did not write itself in this call
// (stale data another layer left, or a buffer too small for this layer) shows as a NaN or a
// changed bit.
BOOST_AUTO_TEST_CASE(conv2d_shared_scratch_interleaved) {
  const std::vector<PathCase>& cases = scratch_cases();
  const std::vector<ConvRun> alone = scratch_runs_alone(41);
  std::mt19937 rng(41), nan_rng(5);
  std::vector<ConvRun> runs, nan_runs;
  std::vector<std::shared_ptr<Conv2dKernel>> kernels;
  for (const PathCase& c : cases) {
    runs.emplace_back(c.desc, c.n, rng);
    nan_runs.emplace_back(c.desc, c.n, nan_rng, /*nan=*/true);
    kernels.push_back(kernel<Conv2dKernel>("conv2d", "tbb", c.desc));
  }
  const std::size_t count = cases.size();
  for (int pass = 0; pass < 3; ++pass) {
    for (std::size_t step = 0; step < count; ++step) {
      const std::size_t i = pass == 1 ? count - 1 - step : step;
      const std::size_t other = (i + 1) % count;
      nan_runs[other].run(*kernels[other], pass);
      runs[i].run(*kernels[i], pass);
    }
  }
  for (std::size_t i = 0; i < count; ++i) {
    check_same_run(runs[i], alone[i], "interleaved, " + describe(cases[i].desc, cases[i].n));
  }
}

// The first of run's results that differs from want's in any bit, or "" if none.
std::string first_changed_result(const ConvRun& run, const ConvRun& want) {
  const auto same = [](const Tensor& a, const Tensor& b) {
    return std::memcmp(a.data(), b.data(), static_cast<std::size_t>(a.numel()) * sizeof(float)) ==
           0;
  };
  if (!same(run.y, want.y)) return "forward";
  if (!same(run.dx, want.dx)) return "backward_data";
  if (!same(run.dw, want.dw)) return "dweight";
  if (!same(run.db, want.db)) return "dbias";
  return "";
}

// Two std::threads, each with its own instance of every case, run all their passes for several
// rounds, one thread in case order and the other in reverse, so passes of different shapes
// overlap in time: they must take turns on the shared scratch (its mutex), and every round's
// results must equal the run alone bit for bit. The threads compare, the main thread reports
// (Boost.Test's assertions are not thread-safe). Without the mutex this failed in most runs.
BOOST_AUTO_TEST_CASE(conv2d_shared_scratch_two_threads) {
  const std::vector<PathCase>& cases = scratch_cases();
  const std::vector<ConvRun> alone = scratch_runs_alone(43);
  constexpr int kRounds = 4;
  // Per thread: its runs and instances, made here (the registry is not for concurrent use).
  std::vector<std::vector<ConvRun>> runs(2);
  std::vector<std::vector<std::shared_ptr<Conv2dKernel>>> kernels(2);
  for (std::size_t thread = 0; thread < 2; ++thread) {
    for (std::size_t i = 0; i < cases.size(); ++i) {
      runs[thread].push_back(alone[i].with_fresh_results());
      kernels[thread].push_back(kernel<Conv2dKernel>("conv2d", "tbb", cases[i].desc));
    }
  }
  std::vector<std::string> failures(2);
  const auto worker = [&](std::size_t thread) {
    try {
      for (int round = 0; round < kRounds; ++round) {
        for (std::size_t step = 0; step < cases.size(); ++step) {
          const std::size_t i = thread == 0 ? step : cases.size() - 1 - step;
          ConvRun& run = runs[thread][i];
          for (int pass = 0; pass < 3; ++pass) run.run(*kernels[thread][i], pass);
          const std::string changed = first_changed_result(run, alone[i]);
          if (!changed.empty() && failures[thread].empty()) {
            failures[thread] = fmt::format("round {}, {}: {} differs from the run alone", round,
                                           describe(cases[i].desc, cases[i].n), changed);
          }
        }
      }
    } catch (const std::exception& e) {
      failures[thread] = e.what();
    }
  };
  std::thread first(worker, 0), second(worker, 1);
  first.join();
  second.join();
  BOOST_TEST(failures[0] == "");
  BOOST_TEST(failures[1] == "");
}

// Conv2dKernel::arithmetic(), what conv_bench's roofline divides by the time: per image and pass,
// the multiply-adds and the other flops (Conv2dPassArithmetic), computed here by hand for shapes
// that reach each method of the tbb kernel (its path is asserted too, so a retuned threshold
// that moves a shape shows up here rather than as a wrong expectation).
struct ArithmeticCase {
  Conv2dDesc desc;
  std::string path;
  strata::Conv2dArithmetic expected;
};

BOOST_AUTO_TEST_CASE(conv2d_arithmetic_per_method) {
  BOOST_TEST_REQUIRE(registries().kernels.contains("conv2d", "tbb"));
  const std::vector<ArithmeticCase> cases = {
      // F(4x4) everywhere; 72 channels (too many for direct), 40 filters, 16x16: 4x4 tiles of
      // 4x4 (16).
      //   forward: 36 * 72 * 40 * 16 products; transforms 16 * (72 * 252 + 40 * 130)
      //   backward_data: channels and filters swapped: 16 * (40 * 252 + 72 * 130)
      //   backward_params: 36 * 72 * 40 * 16 products; transforms 16 * (72 * 252 + 40 * 110)
      {conv_desc(72, 16, 16, 40, 3, 3, 1, 1, 1, 1, 1, 1, 1),
       "fwd=winograd43 bwd_data=winograd43 bwd_weights=winograd43",
       {{1658880, 373504}, {1658880, 311040}, {1658880, 360704}}},
      // F(2x2) everywhere, 9x11: 5x6 tiles (30), the last row and column of tiles half outside.
      //   16 * 72 * 40 * 30 products each; transforms 30 * (72 * 32 + 40 * 24),
      //   30 * (40 * 32 + 72 * 24) and 30 * (72 * 32 + 40 * 18)
      {conv_desc(72, 9, 11, 40, 3, 3, 1, 1, 1, 1, 1, 1, 1),
       "fwd=winograd23 bwd_data=winograd23 bwd_weights=winograd23",
       {{1382400, 97920}, {1382400, 90240}, {1382400, 90720}}},
      // Dilation 2 as 4 polyphase components of 17x18 each: F(4x4) 5x5 tiles (100 per image).
      // 36 * 48 * 48 * 100 products in each pass, transforms 100 * 48 * (252 + 130), and for the
      // weight gradient 100 * 48 * (252 + 110).
      {conv_desc(48, 34, 36, 48, 3, 3, 1, 1, 2, 2, 2, 2, 1),
       "fwd=winograd43 bwd_data=winograd43 bwd_weights=winograd43",
       {{8294400, 1833600}, {8294400, 1833600}, {8294400, 1737600}}},
      // The direct kernels over the wide output, 14 columns a row (11 rows of 14, then 12):
      // 64 * 27 * 166; small backward_data (3 channels: too few for direct) the direct
      // 64 * 27 * 144 plus col2im's 3 * 34 * 34 additions (34 of the 36 (tap, output) pairs along
      // each axis read a real pixel); the weight gradient every wide row: 64 * 27 * 12 * 14.
      {conv_desc(3, 12, 12, 64, 3, 3, 1, 1, 1, 1, 1, 1, 1),
       "fwd=direct bwd_data=small bwd_weights=direct",
       {{286848, 0}, {248832, 3468}, {290304, 0}}},
      // Direct backward_data: 28x28 padded to 30x30, dy padded to 30x30: 8 * 108 * (27 * 30 + 28)
      // both ways, 8 * 108 * 28 * 30 for the weight gradient.
      {conv_desc(12, 28, 28, 8, 3, 3, 1, 1, 1, 1, 1, 1, 1),
       "fwd=direct bwd_data=direct bwd_weights=direct",
       {{724032, 0}, {724032, 0}, {725760, 0}}},
      // Row by row (direct::by_rows): 32x32 padded by 1, so one wide run would compute 34 columns
      // a row and row by row computes 32 (kColumns is 16 or 32, kVector 8 or 16: whole blocks).
      // Each pass then does exactly the multiply-adds of the convolution, 12 * 72 * 32 * 32.
      {conv_desc(8, 32, 32, 12, 3, 3, 1, 1, 1, 1, 1, 1, 1),
       "fwd=direct bwd_data=direct bwd_weights=direct",
       {{884736, 0}, {884736, 0}, {884736, 0}}},
      // Lanes: 8 filters (forward) and 4 channels (backward_data) by 10 columns are whole tiles on
      // every vector width. Output rows 0 and 9 skip the kernel row in the padding: 28 kernel rows
      // of taps instead of 30, each 4 * 3 taps forward (8 * 12 * 28 * 10) and 8 * 3 backward
      // (4 * 24 * 28 * 10); the weight gradient over all 100 pixels: 8 * 36 * 100.
      {conv_desc(4, 10, 10, 8, 3, 3, 1, 1, 1, 1, 1, 1, 1),
       "fwd=lanes bwd_data=lanes bwd_weights=lanes",
       {{26880, 0}, {26880, 0}, {28800, 0}}},
      // im2col + GEMM, stride 2, padding 1 (130 filters of 13x13: too many for lanes' frames and
      // polyphase): 130 * 36 * 169 products a pass; col2im adds the taps that read real pixels, 37
      // of the 39 (tap, output) pairs along each axis: 4 * 37 * 37.
      {conv_desc(4, 25, 25, 130, 3, 3, 2, 2, 1, 1, 1, 1, 1),
       "fwd=blas bwd_data=blas bwd_weights=blas",
       {{790920, 0}, {790920, 5476}, {790920, 0}}},
      // Polyphase, ResNet-20's 16 -> 32 3x3 stride 2 on 32x32: phase planes of 17x17, so 16 rows
      // of 17 wide columns less the last row's discarded one, 271, times 32 * 144 (forward); the
      // weight gradient every wide row, 16 * 17. backward_data: per phase of dx, its 16 real rows
      // as wide as the padded dy (17 + 1) but the last (17), 287 columns, for each of the 9 taps
      // (4 + 2 + 2 + 1 over the phases): 16 * 32 * 9 * 287.
      {conv_desc(16, 32, 32, 32, 3, 3, 2, 2, 1, 1, 1, 1, 1),
       "fwd=polyphase bwd_data=polyphase bwd_weights=polyphase",
       {{1248768, 0}, {1322496, 0}, {1253376, 0}}},
      // Pointwise: the GEMM on the images themselves, 8 * 72 * 36.
      {conv_desc(72, 6, 6, 8, 1, 1, 1, 1, 0, 0, 1, 1, 1),
       "fwd=pointwise bwd_data=pointwise bwd_weights=pointwise",
       {{20736, 0}, {20736, 0}, {20736, 0}}},
      // Depthwise, stride 1, past lanes' frames: 3 planes, 9 taps over the 98x98 padded plane (the
      // wide output's rows: depthwise.hpp).
      {conv_desc(3, 96, 96, 3, 3, 3, 1, 1, 1, 1, 1, 1, 3),
       "fwd=depthwise bwd_data=depthwise bwd_weights=depthwise",
       {{3 * 9 * 98 * 98, 0}, {3 * 9 * 98 * 98, 0}, {3 * 9 * 98 * 98, 0}}},
      // Depthwise, stride 2, in lanes' frames: forward and the weight gradient per image 9 taps
      // over the 64 output pixels of each of the 6 groups (8 output pixels a tile in every vector
      // width: kPixelTile; the weight gradient's 1x9 tile is whole); backward_data on the
      // depthwise method, each tap over one of the 17x17 padded plane's 9x9 phases.
      {conv_desc(6, 15, 15, 6, 3, 3, 2, 2, 1, 1, 1, 1, 6),
       "fwd=lanes bwd_data=depthwise bwd_weights=lanes",
       {{6 * 9 * 64, 0}, {6 * 9 * 81, 0}, {6 * 9 * 64, 0}}},
  };
  for (const ArithmeticCase& c : cases) {
    const auto conv = kernel<Conv2dKernel>("conv2d", "tbb", c.desc);
    BOOST_TEST_REQUIRE(conv->implementation() == c.path, describe(c.desc, 1));
    const strata::Conv2dArithmetic a = conv->arithmetic();
    BOOST_TEST_CONTEXT(describe(c.desc, 1) << ", " << c.path) {
      BOOST_TEST(a.forward == c.expected.forward);
      BOOST_TEST(a.backward_data == c.expected.backward_data);
      BOOST_TEST(a.backward_params == c.expected.backward_params);
    }
  }
  // flops(): 2 per multiply-add plus the others.
  BOOST_TEST((strata::Conv2dPassArithmetic{1658880, 373504}.flops() == 2 * 1658880 + 373504));
}

// The default (Conv2dKernel::arithmetic()), which the reference backend keeps: direct
// convolution's K * C/groups * R * S * out_h * out_w for every pass, nothing else.
BOOST_AUTO_TEST_CASE(conv2d_arithmetic_default_is_direct) {
  const Conv2dDesc plain = conv_desc(3, 10, 10, 8, 3, 3, 1, 1, 1, 1, 1, 1, 1);  // 8*3*9*100
  const Conv2dDesc grouped = conv_desc(4, 6, 6, 6, 3, 3, 1, 1, 0, 0, 1, 1, 2);  // 6*2*9*16
  BOOST_TEST(strata::conv2d_direct_multiply_adds(plain) == 21600);
  BOOST_TEST(strata::conv2d_direct_multiply_adds(grouped) == 1728);
  for (const auto& [d, count] :
       {std::pair{plain, int64_t{21600}}, std::pair{grouped, int64_t{1728}}}) {
    const strata::Conv2dArithmetic a = kernel<Conv2dKernel>("conv2d", "reference", d)->arithmetic();
    const strata::Conv2dPassArithmetic direct{count, 0};
    BOOST_TEST((a.forward == direct && a.backward_data == direct && a.backward_params == direct));
  }
}

BOOST_AUTO_TEST_CASE(pool2d_random) {
  std::mt19937 rng(13);
  for (const std::string& backend : fast_backends("pool2d")) {
    for (int i = 0; i < 1500; ++i) {
      const Mode mode = i % 3 == 0 ? Mode::kMax : Mode::kAverage;
      const Pool2dDesc d = random_pool(rng, mode, i % 3 == 1, i % 4 < 2);
      const int64_t n = uniform(rng, 1, 5);
      Tensor x = random_tensor({n, d.channels, d.in_h, d.in_w}, rng);
      if (i % 5 == 3) {
        // Few distinct values, so windows hold ties: both must pick the first maximum.
        for (float& v : x.span()) v = std::round(v * 2.0f);
      }
      compare_pool(d, n, backend, x, rng);
    }
    // Big enough to be split across tasks: LeNet's pooling layers at batch 64.
    for (Mode mode : {Mode::kMax, Mode::kAverage}) {
      for (const Pool2dDesc& d : {pool_desc(mode, 6, 28, 28, 2, 2, 2, 2, 0, 0, true),
                                  pool_desc(mode, 16, 10, 10, 2, 2, 2, 2, 0, 0, true)}) {
        compare_pool(d, 64, backend, random_tensor({64, d.channels, d.in_h, d.in_w}, rng), rng);
      }
    }
  }
}

// What interop needs: end padding that differs from the begin padding (ONNX pads, `same` with an
// even kernel), sizes rounded up (ceil_mode, the last window running past the padded input) and
// dilated max pooling. Window, divisor and first-maximum rules must match the reference.
BOOST_AUTO_TEST_CASE(pool2d_asymmetric_dilated_random) {
  std::mt19937 rng(19);
  for (const std::string& backend : fast_backends("pool2d")) {
    for (int i = 0; i < 600; ++i) {
      const Mode mode = i % 2 == 0 ? Mode::kMax : Mode::kAverage;
      Pool2dDesc d = random_pool(rng, mode, i % 4 == 1, i % 5 == 0);
      d.pad_h_end = uniform(rng, 0, d.kernel_h / 2);
      d.pad_w_end = uniform(rng, 0, d.kernel_w / 2);
      if (mode == Mode::kMax && i % 4 != 2) {
        d.dilation_h = uniform(rng, 1, 3);
        d.dilation_w = uniform(rng, 1, 3);
      }
      // PyTorch's ceil rule with the end padding: rounded up, the last window starting inside
      // the input or the begin padding; otherwise the floor.
      const bool ceil = i % 3 == 0;
      const auto extent = [&](int64_t in, int64_t kernel, int64_t stride, int64_t pad,
                              int64_t pad_end, int64_t dilation) -> int64_t {
        const int64_t span = in + pad + pad_end - dilation * (kernel - 1) - 1;
        if (span < 0) return 0;
        if (!ceil) return span / stride + 1;
        int64_t out = (span + stride - 1) / stride + 1;
        if ((out - 1) * stride >= in + pad) --out;
        return out;
      };
      d.out_h = extent(d.in_h, d.kernel_h, d.stride_h, d.pad_h, d.pad_h_end, d.dilation_h);
      d.out_w = extent(d.in_w, d.kernel_w, d.stride_w, d.pad_w, d.pad_w_end, d.dilation_w);
      if (d.out_h < 1 || d.out_w < 1) continue;
      // A dilated window may skip over a small input entirely (its max is -inf, which
      // check_close treats as unwritten): keep geometries where every window reads the input.
      const auto every_window_reads = [](int64_t out, int64_t in, int64_t kernel, int64_t stride,
                                         int64_t pad, int64_t dilation) {
        for (int64_t o = 0; o < out; ++o) {
          bool reads = false;
          for (int64_t i = 0; i < kernel; ++i) {
            const int64_t at = o * stride - pad + i * dilation;
            reads = reads || (at >= 0 && at < in);
          }
          if (!reads) return false;
        }
        return true;
      };
      if (!every_window_reads(d.out_h, d.in_h, d.kernel_h, d.stride_h, d.pad_h, d.dilation_h) ||
          !every_window_reads(d.out_w, d.in_w, d.kernel_w, d.stride_w, d.pad_w, d.dilation_w)) {
        continue;
      }
      const int64_t n = uniform(rng, 1, 3);
      Tensor x = random_tensor({n, d.channels, d.in_h, d.in_w}, rng);
      if (i % 7 == 3) {
        for (float& v : x.span()) v = std::round(v * 2.0f);  // ties
      }
      BOOST_TEST_CONTEXT("end padding " << d.pad_h_end << "x" << d.pad_w_end << ", dilation "
                                        << d.dilation_h << "x" << d.dilation_w) {
        compare_pool(d, n, backend, x, rng);
      }
    }
  }
}

// The fast convolution kernels take symmetric padding only (the conv2d layer pads the rest
// explicitly): asymmetric padding is refused when the kernel is prepared, never ignored. The
// reference handles it: the end padding only adds output rows and columns that read zeros.
BOOST_AUTO_TEST_CASE(conv2d_asymmetric_padding) {
  Conv2dDesc d = conv_desc(2, 6, 5, 3, 3, 2, 1, 1, 0, 1, 1, 1, 1);
  d.pad_h_end = 2;
  d.out_h = 6 + 0 + 2 - 3 + 1;
  const std::string refused =
      strata::test::error_of([&] { kernel<Conv2dKernel>("conv2d", "tbb", d); });
  BOOST_TEST(refused.find("tbb conv2d: asymmetric padding (top 0, bottom 2, left 1, right 1)") !=
                 std::string::npos,
             refused);
  // Reference: the same as padding the input with two zero rows at the bottom.
  std::mt19937 rng(23);
  auto asymmetric = kernel<Conv2dKernel>("conv2d", "reference", d);
  Conv2dDesc padded_desc = conv_desc(2, 8, 5, 3, 3, 2, 1, 1, 0, 1, 1, 1, 1);
  auto padded = kernel<Conv2dKernel>("conv2d", "reference", padded_desc);
  BOOST_TEST_REQUIRE(padded_desc.out_h == d.out_h);
  const Tensor x = random_tensor({2, 2, 6, 5}, rng), w = random_tensor({3, 2, 3, 2}, rng);
  Tensor x_padded({2, 2, 8, 5});
  x_padded.fill(0.0f);
  for (int64_t p = 0; p < 4; ++p) {
    std::copy_n(x.data() + p * 30, 30, x_padded.data() + p * 40);
  }
  Tensor y({2, 3, d.out_h, d.out_w}), y_padded({2, 3, d.out_h, d.out_w});
  asymmetric->forward(x, w, nullptr, y);
  padded->forward(x_padded, w, nullptr, y_padded);
  check_close(y, y_padded, "forward with bottom padding 2");
}

BOOST_AUTO_TEST_CASE(gemm_random) {
  std::mt19937 rng(17);
  struct Size {
    int64_t m, n, k;
  };
  // Small, then large enough to be split over rows of C, then short and wide (split over columns).
  const std::vector<Size> sizes = {{1, 1, 1},      {3, 7, 5},     {17, 33, 9},    {64, 1, 40},
                                   {300, 200, 64}, {8, 2000, 64}, {150, 160, 130}};
  for (const std::string& backend : fast_backends("gemm")) {
    auto ref = kernel<GemmKernel>("gemm", "reference", {});
    auto fast = kernel<GemmKernel>("gemm", backend, {});
    for (const Size& s : sizes) {
      for (int t = 0; t < 4; ++t) {
        const bool trans_a = (t & 1) != 0, trans_b = (t & 2) != 0;
        // Stored shapes, with extra row padding so a mix-up of leading dimensions shows.
        const int64_t a_rows = trans_a ? s.k : s.m, a_cols = trans_a ? s.m : s.k;
        const int64_t b_rows = trans_b ? s.n : s.k, b_cols = trans_b ? s.k : s.n;
        const int64_t lda = a_cols + uniform(rng, 0, 3), ldb = b_cols + uniform(rng, 0, 3);
        const int64_t ldc = s.n + uniform(rng, 0, 3);
        const Tensor a = random_tensor({a_rows, lda}, rng), b = random_tensor({b_rows, ldb}, rng);
        const Tensor c0 = random_tensor({s.m, ldc}, rng);
        for (float beta : {-0.5f, 0.0f}) {
          BOOST_TEST_CONTEXT(
              fmt::format("{} gemm m={} n={} k={} trans_a={} trans_b={} lda={} "
                          "ldb={} ldc={} alpha=0.75 beta={}",
                          backend, s.m, s.n, s.k, trans_a, trans_b, lda, ldb, ldc, beta)) {
            Tensor c_ref = c0.clone(), c_fast = c0.clone();
            if (beta == 0.0f) {  // C must not be read
              c_ref.fill(kNaN);
              c_fast.fill(kNaN);
            }
            ref->gemm(trans_a, trans_b, s.m, s.n, s.k, 0.75f, a.data(), lda, b.data(), ldb, beta,
                      c_ref.data(), ldc);
            fast->gemm(trans_a, trans_b, s.m, s.n, s.k, 0.75f, a.data(), lda, b.data(), ldb, beta,
                       c_fast.data(), ldc);
            // Padding columns of C are outside the product: compare only the m x n block.
            Tensor got({s.m, s.n}), want({s.m, s.n});
            for (int64_t i = 0; i < s.m; ++i) {
              for (int64_t j = 0; j < s.n; ++j) {
                got.data()[i * s.n + j] = c_fast.data()[i * ldc + j];
                want.data()[i * s.n + j] = c_ref.data()[i * ldc + j];
              }
            }
            check_close(got, want, "C");
          }
        }
      }
    }
  }
}

// Random descriptors: channels 1..70, spatial sizes 1..800, batches 1..9, three eps, with and
// without affine; then shapes whose channels are cut into several blocks of images (tbb's
// kBlockValues is 16384 values), a partial last block included; then a NaN in one channel, which
// must make that channel's statistics, y and dx NaN and leave the others as they were.
BOOST_AUTO_TEST_CASE(batch_norm_random) {
  std::mt19937 rng(23);
  for (const std::string& backend : fast_backends("batch_norm")) {
    for (int i = 0; i < 300; ++i) {
      BatchNormDesc d;
      d.channels = uniform(rng, 1, 70);
      d.spatial = i % 3 == 0 ? uniform(rng, 1, 20) : uniform(rng, 1, 800);
      const double eps = std::array{1e-5, 1e-3, 0.1}[static_cast<std::size_t>(i % 3)];
      compare_batch_norm(d, batch_norm_input(d, uniform(rng, 1, 9), rng), eps, i % 2 == 0, backend,
                         rng);
    }
    const std::array<std::array<int64_t, 3>, 4> large = {
        {{64, 16, 784}, {9, 3, 3000}, {3, 2, 20000}, {64, 64, 49}}};
    for (const auto& [n, channels, spatial] : large) {
      const BatchNormDesc d{channels, spatial};
      compare_batch_norm(d, batch_norm_input(d, n, rng), 1e-5, true, backend, rng);
    }
    for (const auto& [n, channels, spatial] : {std::array<int64_t, 3>{5, 7, 30}, {9, 2, 3000}}) {
      const BatchNormDesc d{channels, spatial};
      Tensor x = batch_norm_input(d, n, rng);
      x.data()[(n / 2 * channels + 1) * spatial + spatial / 2] = kNaN;  // channel 1
      compare_batch_norm(d, x, 1e-5, true, backend, rng);
    }
  }
}

// The same input gives the same bits, run after run and with 1 or 2 threads: the order of every
// sum is fixed by the shape (a synchronized batch norm with one rank equals the unsynchronized
// one only so).
BOOST_AUTO_TEST_CASE(batch_norm_is_deterministic) {
  std::mt19937 rng(29);
  auto tbb = registries().backends.create("tbb", strata::Config());
  for (const std::string& backend : fast_backends("batch_norm")) {
    for (const auto& [n, channels, spatial] :
         {std::array<int64_t, 3>{64, 16, 784}, {9, 5, 3000}, {64, 64, 49}}) {
      const BatchNormDesc d{channels, spatial};
      BOOST_TEST_CONTEXT(backend << " " << describe(d, n, 1e-5, true)) {
        const Tensor x = batch_norm_input(d, n, rng), dy = random_tensor(x.shape(), rng);
        const std::vector<float> weight(static_cast<std::size_t>(channels), 1.5f),
            bias(static_cast<std::size_t>(channels), 0.25f);
        auto bn = kernel<BatchNormKernel>("batch_norm", backend, d);
        std::vector<BatchNormStep> runs;
        for (int threads : {2, 2, 1, 2}) {
          tbb->set_threads(threads);
          runs.push_back(batch_norm_step(*bn, x, dy, 1e-5, weight, bias));
        }
        for (std::size_t r = 1; r < runs.size(); ++r) {
          BOOST_TEST_CONTEXT("run " << r) {
            BOOST_TEST(same_bits(runs[r].sum, runs[0].sum));
            BOOST_TEST(same_bits(runs[r].squares, runs[0].squares));
            BOOST_TEST(same_bits(runs[r].sum_dy, runs[0].sum_dy));
            BOOST_TEST(same_bits(runs[r].sum_dy_xhat, runs[0].sum_dy_xhat));
            BOOST_TEST(same_bits(runs[r].y, runs[0].y));
            BOOST_TEST(same_bits(runs[r].dx, runs[0].dx));
          }
        }
      }
    }
  }
  tbb->set_threads(0);
}

// An activation fused into batch norm's normalize (the graph's fusion) gives what the activation
// kernel gives on normalize's output: bit for bit for the piecewise-linear kinds (relu,
// leaky_relu, relu6: the same float operations), within 1e-6 for tanh and sigmoid (the activation
// kernel may evaluate exp and tanh with vector functions), on every backend, for shapes of one
// and of several tasks. The gradient passes are untouched by fusion (the graph runs the
// activation's backward first).
BOOST_AUTO_TEST_CASE(batch_norm_fused_activation) {
  std::mt19937 rng(37);
  const std::array<ActivationDesc, 6> activations = {
      activation_desc(Kind::kRelu),  activation_desc(Kind::kLeakyRelu, 0.1f),
      activation_desc(Kind::kRelu6), activation_desc(Kind::kLeakyRelu, 0.0f),
      activation_desc(Kind::kTanh),  activation_desc(Kind::kSigmoid)};
  for (const std::string& backend : all_backends("batch_norm")) {
    for (const auto& [n, channels, spatial] :
         {std::array<int64_t, 3>{5, 7, 30}, {64, 16, 784}, {9, 2, 3000}}) {
      const BatchNormDesc d{channels, spatial};
      const Tensor x = batch_norm_input(d, n, rng), dy = random_tensor(x.shape(), rng);
      const std::vector<float> weight(static_cast<std::size_t>(channels), 1.5f),
          bias(static_cast<std::size_t>(channels), 0.25f);
      auto bn = kernel<BatchNormKernel>("batch_norm", backend, d);
      const BatchNormStep plain = batch_norm_step(*bn, x, dy, 1e-5, weight, bias);
      for (const ActivationDesc& a : activations) {
        BOOST_TEST_CONTEXT(backend << " " << describe(d, n, 1e-5, true) << " " << describe(a)) {
          auto act = kernel<ActivationKernel>("activation", backend, a);
          Tensor want = poisoned(x.shape());
          act->forward(plain.y, want);
          const BatchNormStep got = batch_norm_step(*bn, x, dy, 1e-5, weight, bias, &a);
          if (a.kind != Kind::kTanh && a.kind != Kind::kSigmoid) {
            BOOST_TEST(same_bits(got.y, want));
          } else {
            check_close_elementwise(got.y, want, 1e-6f, "y");
          }
          BOOST_TEST(same_bits(got.sum, plain.sum));
          BOOST_TEST(same_bits(got.dx, plain.dx));
        }
      }
    }
  }
}

// Every kind on sizes below, at and above one task (kElementwiseGrain, 16384), kinks, infinities
// and NaN included. Both backends evaluate the same per-element functions (strata::activation),
// so they may differ only where one contracts a multiply and an add into an FMA (one rounding):
// 1e-6 of max(|want|, 1).
BOOST_AUTO_TEST_CASE(activation_random) {
  std::mt19937 rng(31);
  for (const std::string& backend : fast_backends("activation")) {
    for (Kind kind : kActivationKinds) {
      for (int64_t n : {int64_t{1}, int64_t{13}, int64_t{16384}, int64_t{16385}, int64_t{100003},
                        uniform(rng, 2, 50000)}) {
        const ActivationDesc d =
            activation_desc(kind, std::uniform_real_distribution<float>(0.0f, 0.5f)(rng));
        BOOST_TEST_CONTEXT(backend << " " << describe(d) << " n=" << n) {
          auto ref = kernel<ActivationKernel>("activation", "reference", d);
          auto fast = kernel<ActivationKernel>("activation", backend, d);
          const Tensor x = activation_input(n, rng), dy = random_tensor({n}, rng);
          Tensor y_ref = poisoned({n}), y_fast = poisoned({n});
          ref->forward(x, y_ref);
          fast->forward(x, y_fast);
          check_close_elementwise(y_fast, y_ref, 1e-6f, "forward");
          Tensor dx_ref = poisoned({n}), dx_fast = poisoned({n});
          ref->backward(x, y_ref, dy, dx_ref);
          fast->backward(x, y_ref, dy, dx_fast);
          check_close_elementwise(dx_fast, dx_ref, 1e-6f, "backward");
        }
      }
    }
  }
}

// Softmax on random shapes: inner 1 (one contiguous row per group: axis 1, below, at and above
// the 16 lanes, a classifier's 1000 and 1001) and inner > 1 (tiles of 256 positions: one, a
// partial second one, several), outer 1 and 3; values spread over [-30, 30] so that exp spans
// many binades; then groups holding a NaN, +inf or only -inf, which must come out NaN as the
// reference's do.
BOOST_AUTO_TEST_CASE(softmax_random) {
  std::mt19937 rng(37);
  for (const std::string& backend : fast_backends("softmax")) {
    for (int64_t axis : {1, 2, 7, 16, 17, 33, 1000, 1001}) {
      for (int64_t inner : {1, 3, 49, 256, 257, 600}) {
        SoftmaxDesc d;
        d.outer = uniform(rng, 0, 2) == 0 ? 3 : 1;
        d.axis = axis;
        d.inner = inner;
        if (d.outer * axis * inner > 400000) d.outer = 1;
        const int64_t n = uniform(rng, 1, 3);
        compare_softmax(d, random_tensor({n, d.outer * axis * inner}, rng, -30.0f, 30.0f), backend,
                        rng);
      }
    }
    for (const int64_t inner : {int64_t{1}, int64_t{20}}) {
      SoftmaxDesc d;
      d.axis = 40;
      d.inner = inner;
      Tensor x = random_tensor({4, 40 * inner}, rng);
      const float inf = std::numeric_limits<float>::infinity();
      x.data()[0 * 40 * inner + 5 * inner] = kNaN;  // image 0: its first group holds a NaN
      x.data()[1 * 40 * inner + 0] = kNaN;          // image 1: the NaN comes first
      x.data()[2 * 40 * inner + 7 * inner] = inf;   // image 2: +inf
      for (int64_t a = 0; a < 40; ++a) x.data()[3 * 40 * inner + a * inner] = -inf;  // image 3
      compare_softmax(d, x, backend, rng);
    }
  }
}

// LRN on random shapes: sizes 1 to 5 (even ones reach one channel further down), channels from 1
// (fewer than the window) to 40, positions 1 (fully connected features), 7x7 and odd sizes, alpha
// up to 1.5 and beta 0.5 to 2; then shapes cut into several tiles of positions (tbb's tile holds
// about kTileValues = 65536 values), the last one partial: AlexNet's norm1, a 56x56 one and a wide
// layer whose tile is the 16-position minimum; and AlexNet's norm2 (one tile of a whole plane).
BOOST_AUTO_TEST_CASE(lrn_random) {
  std::mt19937 rng(41);
  for (const std::string& backend : fast_backends("lrn")) {
    for (int i = 0; i < 120; ++i) {
      const int64_t size = 1 + i % 5;
      const int64_t channels = i % 4 == 0 ? uniform(rng, 1, size) : uniform(rng, 1, 40);
      const int64_t area =
          std::array<int64_t, 4>{1, 49, uniform(rng, 2, 40), uniform(rng, 41, 300)}[(i / 5) % 4];
      const LrnDesc d = lrn_desc(channels, area, size, std::array{1e-4, 0.5, 1.5}[i % 3],
                                 std::array{0.75, 0.5, 2.0, 1.3}[i % 4], i % 2 == 0 ? 1.0 : 2.0);
      const int64_t n = uniform(rng, 1, 4);
      compare_lrn(d, random_tensor({n, channels, area, 1}, rng, -3.0f, 3.0f), backend, rng);
    }
    for (const auto& [n, channels, area] : {std::array<int64_t, 3>{3, 96, 27 * 27},
                                            {2, 64, 56 * 56},
                                            {2, 5000, 37},
                                            {2, 256, 13 * 13}}) {
      const LrnDesc d = lrn_desc(channels, area, 5, 1e-4, 0.75, 2.0);
      compare_lrn(d, random_tensor({n, channels, area, 1}, rng, -40.0f, 40.0f), backend, rng);
    }
  }
}

// Global average pooling over 1x1, 7x7, 8x8 (ResNet-20's), odd and 56x56 planes, channels and
// batches of several sizes, some below and some above one task.
BOOST_AUTO_TEST_CASE(global_avg_pool_random) {
  std::mt19937 rng(43);
  for (const std::string& backend : fast_backends("global_avg_pool")) {
    for (int64_t area : {1, 7, 49, 64, 15 * 13, 56 * 56}) {
      for (int i = 0; i < 4; ++i) {
        const GlobalAvgPoolDesc d{uniform(rng, 1, i == 3 && area <= 64 ? 300 : 70), area};
        compare_global_avg_pool(d, uniform(rng, 1, area == 1 ? 200 : 9), backend, rng);
      }
    }
  }
}

// The same input gives the same bits, with 2 threads and with 1: the arithmetic of every group,
// tile and plane is fixed by the shape.
BOOST_AUTO_TEST_CASE(softmax_lrn_global_avg_pool_are_deterministic) {
  std::mt19937 rng(47);
  auto tbb = registries().backends.create("tbb", strata::Config());
  const auto runs = [&](const std::function<std::vector<Tensor>()>& run) {
    std::vector<std::vector<Tensor>> results;
    for (int threads : {2, 1, 2}) {
      tbb->set_threads(threads);
      results.push_back(run());
    }
    for (std::size_t r = 1; r < results.size(); ++r) {
      for (std::size_t t = 0; t < results[0].size(); ++t) {
        BOOST_TEST(same_bits(results[r][t], results[0][t]), "run " << r << ", tensor " << t);
      }
    }
  };
  for (const std::string& backend : fast_backends("softmax")) {
    for (int64_t inner : {1, 300}) {
      SoftmaxDesc d;
      d.axis = 1000 / inner + 3;
      d.inner = inner;
      BOOST_TEST_CONTEXT(backend << " " << describe(d, 64)) {
        const Tensor x = random_tensor({64, d.axis * inner}, rng, -10.0f, 10.0f),
                     dy = random_tensor(x.shape(), rng);
        auto softmax = kernel<SoftmaxKernel>("softmax", backend, d);
        runs([&] {
          Tensor y(x.shape()), dx(x.shape());
          softmax->forward(x, y);
          softmax->backward(y, dy, dx);
          return std::vector<Tensor>{y, dx};
        });
      }
    }
  }
  for (const std::string& backend : fast_backends("lrn")) {
    const LrnDesc d = lrn_desc(96, 27 * 27, 5, 1e-4, 0.75, 2.0);
    BOOST_TEST_CONTEXT(backend << " " << describe(d, 8)) {
      const Tensor x = random_tensor({8, 96, 27, 27}, rng, -20.0f, 20.0f),
                   dy = random_tensor(x.shape(), rng);
      auto lrn = kernel<LrnKernel>("lrn", backend, d);
      runs([&] {
        Tensor y(x.shape()), dx(x.shape());
        lrn->forward(x, y);
        lrn->backward(x, dy, dx);
        return std::vector<Tensor>{y, dx};
      });
    }
  }
  for (const std::string& backend : fast_backends("global_avg_pool")) {
    const GlobalAvgPoolDesc d{64, 49};
    BOOST_TEST_CONTEXT(backend << " " << describe(d, 64)) {
      const Tensor x = random_tensor({64, 64, 7, 7}, rng), dy = random_tensor({64, 64, 1, 1}, rng);
      auto pool = kernel<GlobalAvgPoolKernel>("global_avg_pool", backend, d);
      runs([&] {
        Tensor y(dy.shape()), dx(x.shape());
        pool->forward(x, y);
        pool->backward(dy, dx);
        return std::vector<Tensor>{y, dx};
      });
    }
  }
  tbb->set_threads(0);
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------
// Skipping, checking and picking.

BOOST_AUTO_TEST_CASE(unwanted_gradients_are_skipped) {
  const Conv2dDesc d = conv_desc(2, 6, 6, 3, 3, 3, 1, 1, 1, 1, 1, 1, 1);
  for (const std::string backend : {"reference", "tbb"}) {
    BOOST_TEST_CONTEXT(backend) {
      auto conv = kernel<Conv2dKernel>("conv2d", backend, d);
      Tensor undefined;
      // Returns before touching any input: even undefined inputs are fine.
      BOOST_CHECK_NO_THROW(conv->backward_data(undefined, undefined, undefined));
      BOOST_CHECK_NO_THROW(conv->backward_params(undefined, undefined, undefined, nullptr));
      BOOST_CHECK_NO_THROW(conv->backward_params(undefined, undefined, undefined, &undefined));
      auto pool = kernel<Pool2dKernel>("pool2d", backend,
                                       pool_desc(Mode::kMax, 2, 6, 6, 2, 2, 2, 2, 0, 0, true));
      BOOST_CHECK_NO_THROW(pool->backward(undefined, undefined, undefined, undefined));
      auto bn = kernel<BatchNormKernel>("batch_norm", backend, BatchNormDesc{2, 3});
      BOOST_CHECK_NO_THROW(bn->input_gradient(undefined, undefined, nullptr, nullptr, nullptr,
                                              nullptr, nullptr, undefined));
      auto act = kernel<ActivationKernel>("activation", backend, activation_desc(Kind::kTanh));
      BOOST_CHECK_NO_THROW(act->backward(undefined, undefined, undefined, undefined));
      SoftmaxDesc softmax_d;
      softmax_d.axis = 4;
      auto softmax = kernel<SoftmaxKernel>("softmax", backend, softmax_d);
      BOOST_CHECK_NO_THROW(softmax->backward(undefined, undefined, undefined));
      auto lrn = kernel<LrnKernel>("lrn", backend, lrn_desc(4, 9, 3, 1e-4, 0.75, 1.0));
      BOOST_CHECK_NO_THROW(lrn->backward(undefined, undefined, undefined));
      auto pool_avg = kernel<GlobalAvgPoolKernel>("global_avg_pool", backend, {4, 9});
      BOOST_CHECK_NO_THROW(pool_avg->backward(undefined, undefined));
    }
  }
}

BOOST_AUTO_TEST_CASE(shape_mismatch_is_an_error) {
  const Conv2dDesc d = conv_desc(2, 6, 6, 3, 3, 3, 1, 1, 1, 1, 1, 1, 1);
  std::mt19937 rng(3);
  for (const std::string backend : {"reference", "tbb"}) {
    auto conv = kernel<Conv2dKernel>("conv2d", backend, d);
    const Tensor x = random_tensor({1, 2, 6, 7}, rng), w = random_tensor({3, 2, 3, 3}, rng);
    Tensor y({1, 3, 6, 6});
    BOOST_CHECK_THROW(conv->forward(x, w, nullptr, y), strata::Error);
    // Every pass of every backend's conv2d runs the same checks (conv2d_*_batch in ops.hpp): the
    // message names the kernel, the tensor and both shapes.
    STRATA_CHECK_CONTAINS(strata::test::error_of([&] { conv->forward(x, w, nullptr, y); }),
                          "conv2d: x has shape [1, 2, 6, 7], expected [1, 2, 6, 6]");
    const Tensor x_ok = random_tensor({1, 2, 6, 6}, rng), dy = random_tensor({1, 3, 6, 6}, rng);
    Tensor dx({1, 2, 6, 6}), narrow_dw({3, 2, 3, 2});
    STRATA_CHECK_CONTAINS(strata::test::error_of([&] {
                            conv->backward_data(random_tensor({1, 3, 6, 5}, rng), w, dx);
                          }),
                          "conv2d: dy has shape [1, 3, 6, 5], expected [1, 3, 6, 6]");
    STRATA_CHECK_CONTAINS(
        strata::test::error_of([&] { conv->backward_params(x_ok, dy, narrow_dw, nullptr); }),
        "conv2d: dweight has shape [3, 2, 3, 2], expected [3, 2, 3, 3]");
    // Batch norm: 3 channels where the descriptor says 2, then 4 values per channel and image
    // where it says 3; the message names the kernel, the tensor and both shapes.
    auto bn = kernel<BatchNormKernel>("batch_norm", backend, BatchNormDesc{2, 3});
    std::vector<double> sums(3);
    STRATA_CHECK_CONTAINS(strata::test::error_of([&] {
                            bn->channel_sums(random_tensor({1, 3, 3}, rng), sums.data());
                          }),
                          "batch_norm: x has shape [1, 3, 3], expected [N, 2, ...]");
    BOOST_CHECK_THROW(bn->channel_sums(random_tensor({2, 2, 4}, rng), sums.data()), strata::Error);
    auto act = kernel<ActivationKernel>("activation", backend, activation_desc(Kind::kRelu));
    Tensor short_y({5});
    BOOST_CHECK_THROW(act->forward(random_tensor({6}, rng), short_y), strata::Error);
    // Softmax, LRN and global average pooling name the tensor and the values per sample their
    // descriptor expects.
    SoftmaxDesc softmax_d;
    softmax_d.axis = 3;
    softmax_d.inner = 2;
    auto softmax = kernel<SoftmaxKernel>("softmax", backend, softmax_d);
    Tensor y7({2, 7});
    STRATA_CHECK_CONTAINS(
        strata::test::error_of([&] {
          softmax->forward(random_tensor({2, 7}, rng), y7);
        }),
        "softmax: x has shape [2, 7], expected [N, ...] with 6 values per sample");
    Tensor y6({3, 6});
    BOOST_CHECK_THROW(softmax->forward(random_tensor({2, 6}, rng), y6), strata::Error);
    auto lrn = kernel<LrnKernel>("lrn", backend, lrn_desc(4, 9, 3, 1e-4, 0.75, 1.0));
    Tensor lrn_y({2, 4, 3, 3});
    STRATA_CHECK_CONTAINS(strata::test::error_of([&] {
                            lrn->forward(random_tensor({2, 5, 3, 3}, rng), lrn_y);
                          }),
                          "lrn: x has shape [2, 5, 3, 3], expected [N, ...] with 36 values");
    auto pool_avg = kernel<GlobalAvgPoolKernel>("global_avg_pool", backend, {4, 9});
    Tensor means({3, 4, 1, 1});
    STRATA_CHECK_CONTAINS(strata::test::error_of([&] {
                            pool_avg->forward(random_tensor({2, 4, 3, 3}, rng), means);
                          }),
                          "global_avg_pool: x has shape [2, 4, 3, 3] and y [3, 4, 1, 1]: they "
                          "must hold the same batch");
  }
  // Empty or invalid descriptors are refused when the kernel is prepared, by every backend.
  for (const std::string backend : {"reference", "tbb"}) {
    BOOST_CHECK_THROW(kernel<SoftmaxKernel>("softmax", backend, SoftmaxDesc{1, 0, 1}),
                      strata::Error);
    BOOST_CHECK_THROW(kernel<LrnKernel>("lrn", backend, lrn_desc(4, 9, 0, 1e-4, 0.75, 1.0)),
                      strata::Error);
    BOOST_CHECK_THROW(kernel<LrnKernel>("lrn", backend, lrn_desc(4, 9, 3, 1e-4, 0.75, 0.0)),
                      strata::Error);
    BOOST_CHECK_THROW(kernel<GlobalAvgPoolKernel>("global_avg_pool", backend, {0, 9}),
                      strata::Error);
  }
  // Batch norm refuses an empty descriptor when prepared.
  BOOST_CHECK_THROW(kernel<BatchNormKernel>("batch_norm", "tbb", BatchNormDesc{0, 3}),
                    strata::Error);
  // Groups that do not divide the channels are refused when the kernel is prepared.
  BOOST_CHECK_THROW(
      kernel<Conv2dKernel>("conv2d", "tbb", conv_desc(3, 6, 6, 4, 3, 3, 1, 1, 1, 1, 1, 1, 2)),
      strata::Error);
}

BOOST_AUTO_TEST_CASE(pick_returns_the_backends_kernel) {
  const Conv2dDesc d = conv_desc(2, 6, 6, 3, 3, 3, 1, 1, 1, 1, 1, 1, 1);
  const auto& entries = registries().kernels.entries();
  // The kernel implementation `name` of (op, backend) makes: the general (fp32) one for the
  // fp32 descriptors below, not the bf16 ones registered beside it.
  const auto made_by = [&](const std::string& op, const std::string& backend,
                           const std::string& name) -> const std::type_info& {
    static std::vector<std::unique_ptr<strata::Kernel>> keep;  // typeid of a live object
    const auto& list = entries.at({op, backend});
    const auto entry =
        std::find_if(list.begin(), list.end(), [&](const auto& e) { return e.name == name; });
    BOOST_TEST_REQUIRE((entry != list.end()), op << " has no implementation " << name);
    keep.push_back(entry->factory());
    const strata::Kernel& made = *keep.back();
    return typeid(made);
  };
  auto tbb_conv = kernel<Conv2dKernel>("conv2d", "tbb", d);
  const strata::Kernel& conv = *tbb_conv;
  BOOST_TEST((typeid(conv) == made_by("conv2d", "tbb", "tbb")));
  BOOST_TEST((typeid(conv) != made_by("conv2d", "reference", "reference")));
  auto tbb_pool = kernel<Pool2dKernel>("pool2d", "tbb",
                                       pool_desc(Mode::kAverage, 2, 6, 6, 2, 2, 2, 2, 0, 0, true));
  const strata::Kernel& pool = *tbb_pool;
  BOOST_TEST((typeid(pool) == made_by("pool2d", "tbb", "tbb")));
  auto tbb_gemm = kernel<GemmKernel>("gemm", "tbb", {});
  const strata::Kernel& gemm = *tbb_gemm;
  BOOST_TEST((typeid(gemm) == made_by("gemm", "tbb", "openblas")));
  BOOST_TEST(tbb_conv->desc().out_h == d.out_h, "the kernel was prepared with the descriptor");

  // A backend without kernels falls back to the reference, and says so on stderr.
  StderrCapture capture;
  auto fallback = kernel<Conv2dKernel>("conv2d", "no_such_backend", d);
  const std::string note = capture.finish();
  const strata::Kernel& fallen_back = *fallback;
  BOOST_TEST((typeid(fallen_back) == made_by("conv2d", "reference", "reference")));
  BOOST_TEST(note.find("no_such_backend") != std::string::npos, "note: " << note);
  BOOST_TEST(note.find("reference") != std::string::npos, "note: " << note);
}

// Pooling and GEMM name the path they run too (Kernel::implementation()); the reference kernels
// carry their registered name.
BOOST_AUTO_TEST_CASE(kernels_name_their_paths) {
  const auto pool_path = [](const std::string& backend, const Pool2dDesc& d) {
    return kernel<Pool2dKernel>("pool2d", backend, d)->implementation();
  };
  const Pool2dDesc pairs = pool_desc(Mode::kMax, 2, 8, 8, 2, 2, 2, 2, 0, 0, true);
  BOOST_TEST(pool_path("tbb", pairs) == "pairs2x2");
  BOOST_TEST(pool_path("tbb", pool_desc(Mode::kAverage, 2, 9, 9, 3, 3, 2, 2, 1, 1, true)) ==
             "windows");
  Pool2dDesc dilated = pool_desc(Mode::kMax, 2, 9, 9, 2, 2, 1, 1, 0, 0, true);
  dilated.dilation_h = dilated.dilation_w = 2;
  dilated.out_h = dilated.out_w = 7;
  BOOST_TEST(pool_path("tbb", dilated) == "dilated");
  BOOST_TEST(pool_path("reference", pairs) == "reference");
  BOOST_TEST(kernel<GemmKernel>("gemm", "tbb", {})->implementation() == "openblas");
  BOOST_TEST(kernel<GemmKernel>("gemm", "reference", {})->implementation() == "reference");
  // The normalization kernels' names (strata bench's column; docs/performance.md section 11).
  SoftmaxDesc softmax;
  softmax.axis = 10;
  BOOST_TEST(kernel<SoftmaxKernel>("softmax", "tbb", softmax)->implementation() == "vector_exp");
  BOOST_TEST(kernel<SoftmaxKernel>("softmax", "reference", softmax)->implementation() ==
             "reference");
  const LrnDesc lrn = lrn_desc(96, 729, 5, 1e-4, 0.75, 2.0);
  BOOST_TEST(kernel<LrnKernel>("lrn", "tbb", lrn)->implementation() == "channel_window");
  BOOST_TEST(kernel<LrnKernel>("lrn", "reference", lrn)->implementation() == "reference");
  BOOST_TEST(kernel<GlobalAvgPoolKernel>("global_avg_pool", "tbb", {64, 49})->implementation() ==
             "planes");
  BOOST_TEST(
      kernel<GlobalAvgPoolKernel>("global_avg_pool", "reference", {64, 49})->implementation() ==
      "reference");
  const Conv2dDesc conv = conv_desc(2, 6, 6, 3, 3, 3, 1, 1, 1, 1, 1, 1, 1);
  BOOST_TEST(kernel<Conv2dKernel>("conv2d", "reference", conv)->implementation() == "reference");
  // The registry lists each backend's implementations in the order pick() tries them.
  BOOST_TEST(registries().kernels.implementations("gemm", "tbb") ==
                 (std::vector<std::string>{"bf16", "openblas"}),
             boost::test_tools::per_element());
  // create() builds one named implementation, refusing a name the backend does not have.
  BOOST_TEST(
      registries().kernels.create<GemmKernel>("gemm", "tbb", "openblas", {})->implementation() ==
      "openblas");
  const std::string message = strata::test::error_of(
      [] { registries().kernels.create<GemmKernel>("gemm", "tbb", "mkl", {}); });
  BOOST_TEST(message.find("backend 'tbb' has no implementation 'mkl' of op 'gemm'; it has: "
                          "bf16, openblas") != std::string::npos,
             message);
}

BOOST_AUTO_TEST_CASE(backends_parallel_for) {
  for (const std::string name : {"reference", "tbb"}) {
    BOOST_TEST_CONTEXT(name) {
      auto backend = registries().backends.create(name, strata::Config());
      BOOST_TEST(backend->name() == name);
      backend->set_threads(name == "tbb" ? 2 : 5);
      BOOST_TEST(backend->threads() == (name == "tbb" ? 2 : 1));
      std::vector<int> hits(1000, 0);
      std::vector<int64_t> lengths(1000, 0);
      backend->parallel_for(0, 1000, 64, [&](int64_t lo, int64_t hi) {
        lengths[lo] = hi - lo;
        for (int64_t i = lo; i < hi; ++i) ++hits[i];
      });
      BOOST_TEST(std::count(hits.begin(), hits.end(), 1) == 1000, "each index exactly once");
      for (int64_t length : lengths) {
        BOOST_TEST((length == 0 || length >= 64), "chunk of " << length << " < grain");
      }
      bool called = false;
      backend->parallel_for(5, 5, 1, [&](int64_t, int64_t) { called = true; });
      BOOST_TEST(!called, "an empty range runs nothing");
    }
  }
}
