// bf16 mixed precision (docs/precision.md): the rounding, the reference backend's emulation, and
// the tbb backend's AVX512-BF16 kernels against it.
//
// Oracle: the product of the bf16-rounded inputs summed in double (the reference's emulation).
// A fast kernel multiplies the same rounded values exactly (bf16 x bf16 fits in a float) and sums
// in float, so it may differ by the float accumulation order only: kRelativeTolerance times the
// largest magnitude of the oracle's result (at least 1), as in test_kernels.
//
// On a CPU without AVX512-BF16 the tbb kernels must refuse with an error naming the feature; the
// positive cases then check that error instead, and STRATA_NO_AVX512BF16 makes this CPU take the
// same path whatever it has (bf16_refused_without_the_cpu_feature).
#define BOOST_TEST_MODULE bf16
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <boost/test/unit_test.hpp>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "strata/backend.hpp"
#include "strata/error.hpp"
#include "strata/ops.hpp"
#include "strata/registry.hpp"
#include "strata/training/experiment.hpp"
#include "test_support.hpp"

namespace {

using strata::GemmDesc;
using strata::GemmKernel;
using strata::Precision;
using strata::round_to_bf16;
using strata::Tensor;
using strata::test::random_tensor;
using strata::test::registries;

constexpr float kRelativeTolerance = 1e-4f;

bool cpu_has_bf16() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512bf16");
}

float from_bits(uint32_t bits) {
  float v;
  std::memcpy(&v, &bits, sizeof v);
  return v;
}
uint32_t bits_of(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  return bits;
}

// Sets an environment variable for the life of the object.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    const char* old = std::getenv(name);
    had_ = old != nullptr;
    if (had_) old_ = old;
    setenv(name, value, 1);
  }
  ~ScopedEnv() {
    if (had_) {
      setenv(name_, old_.c_str(), 1);
    } else {
      unsetenv(name_);
    }
  }

 private:
  const char* name_;
  bool had_ = false;
  std::string old_;
};

const GemmDesc kBf16Gemm{Precision::kBf16};

// C = alpha op(A) op(B) + beta C with the inputs rounded to bf16, summed in double.
void oracle_gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                 const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
                 int64_t ldc) {
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double sum = 0;
      for (int64_t p = 0; p < k; ++p) {
        const float a_ip = round_to_bf16(trans_a ? a[p * lda + i] : a[i * lda + p]);
        const float b_pj = round_to_bf16(trans_b ? b[j * ldb + p] : b[p * ldb + j]);
        sum += static_cast<double>(a_ip) * b_pj;
      }
      const double scaled = alpha * sum;
      c[i * ldc + j] =
          static_cast<float>(beta == 0.0f ? scaled : scaled + double{beta} * c[i * ldc + j]);
    }
  }
}

}  // namespace

BOOST_AUTO_TEST_CASE(precision_names) {
  BOOST_TEST(strata::precision_name(Precision::kFp32) == "fp32");
  BOOST_TEST(strata::precision_name(Precision::kBf16) == "bf16");
  BOOST_TEST((strata::parse_precision("bf16") == Precision::kBf16));
  BOOST_TEST((strata::parse_precision("fp32") == Precision::kFp32));
  BOOST_TEST(!strata::parse_precision("fp16").has_value());
  BOOST_TEST(!strata::parse_precision("BF16").has_value());
}

// round_to_bf16 on known answers: ties to even, carries into the exponent, denormals to zero,
// overflow to infinity, NaN stays NaN.
BOOST_AUTO_TEST_CASE(round_to_bf16_known_answers) {
  BOOST_TEST(round_to_bf16(1.0f) == 1.0f);
  BOOST_TEST(round_to_bf16(-2.5f) == -2.5f);
  // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: to even (1).
  BOOST_TEST(round_to_bf16(1.0f + std::ldexp(1.0f, -8)) == 1.0f);
  // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6: to even (1 + 2^-6).
  BOOST_TEST(round_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)) == 1.0f + std::ldexp(1.0f, -6));
  // Just above the halfway point rounds up.
  BOOST_TEST(round_to_bf16(from_bits(0x3f808001u)) == from_bits(0x3f810000u));
  BOOST_TEST(round_to_bf16(from_bits(0x3f807fffu)) == 1.0f);
  // The largest significand rounds up into the next binade.
  BOOST_TEST(round_to_bf16(from_bits(0x3fffffffu)) == 2.0f);
  BOOST_TEST(bits_of(round_to_bf16(from_bits(0x00400000u))) == 0u);           // denormal
  BOOST_TEST(bits_of(round_to_bf16(from_bits(0x80000001u))) == 0x80000000u);  // -denormal
  BOOST_TEST(round_to_bf16(std::numeric_limits<float>::max()) ==
             std::numeric_limits<float>::infinity());
  BOOST_TEST(round_to_bf16(-std::numeric_limits<float>::infinity()) ==
             -std::numeric_limits<float>::infinity());
  BOOST_TEST(std::isnan(round_to_bf16(std::numeric_limits<float>::quiet_NaN())));
  BOOST_TEST(std::isnan(round_to_bf16(from_bits(0x7f800001u))));  // signalling NaN, low payload
  // 0.1 in bf16 is 0x3dcd (0.10009765625).
  BOOST_TEST(round_to_bf16(0.1f) == 0.10009765625f);
}

// The hardware's rounding (vcvtne2ps2bf16 in the tbb kernel's packing) equals round_to_bf16: a
// 1 x 1 x 1 product with an exact 1 returns the rounded value, over random bit patterns of every
// exponent (denormals included).
BOOST_AUTO_TEST_CASE(hardware_rounding_equals_round_to_bf16) {
  if (!cpu_has_bf16()) {
    BOOST_TEST_MESSAGE("no AVX512-BF16 here: bf16_refused_without_the_cpu_feature covers tbb");
    return;
  }
  auto gemm = registries().kernels.pick<GemmKernel>("gemm", "tbb", kBf16Gemm, "test_bf16");
  BOOST_TEST(gemm->implementation() == "bf16");
  std::mt19937 rng(3);
  const int count = 4000;
  const float one = 1.0f;
  int checked = 0;
  for (int t = 0; t < count; ++t) {
    float v = from_bits(static_cast<uint32_t>(rng()));
    if (std::isnan(v) || std::isinf(round_to_bf16(v))) continue;
    if (t < 8) v = from_bits(static_cast<uint32_t>(rng()) & 0x807fffffu);  // denormals
    float out = -7.0f;
    gemm->gemm(false, false, 1, 1, 1, 1.0f, &v, 1, &one, 1, 0.0f, &out, 1);
    // Values, not bits: the product's sum starts from +0, so a -0 comes out as +0.
    BOOST_TEST(out == round_to_bf16(v), "input bits " << std::hex << bits_of(v));
    ++checked;
  }
  BOOST_TEST(checked > 1000);
}

// The tbb bf16 GEMM against the double product of the rounded inputs: sizes that are not
// multiples of the 8 x 48 tile, odd K, K over several blocks of 256, every transposition, beta 0
// (C not read), 1 and -0.5, padded leading dimensions. The reference's emulation must equal the
// oracle exactly (it is the same arithmetic).
BOOST_AUTO_TEST_CASE(gemm_against_rounded_double_product) {
  struct Size {
    int64_t m, n, k;
  };
  const std::vector<Size> sizes = {{1, 1, 1},     {1, 1, 2},     {3, 7, 5},       {9, 49, 3},
                                   {8, 48, 256},  {17, 95, 257}, {64, 1, 41},     {5, 300, 601},
                                   {100, 97, 33}, {130, 200, 9}, {200, 210, 150}, {33, 2000, 64}};
  std::mt19937 rng(17);
  auto reference = registries().kernels.pick<GemmKernel>("gemm", "reference", kBf16Gemm, "t");
  std::shared_ptr<GemmKernel> fast;
  if (cpu_has_bf16()) {
    fast = registries().kernels.pick<GemmKernel>("gemm", "tbb", kBf16Gemm, "test_bf16");
    BOOST_TEST(fast->implementation() == "bf16");
  }
  for (const Size& s : sizes) {
    for (int t = 0; t < 4; ++t) {
      const bool trans_a = (t & 1) != 0, trans_b = (t & 2) != 0;
      const int64_t a_rows = trans_a ? s.k : s.m, a_cols = trans_a ? s.m : s.k;
      const int64_t b_rows = trans_b ? s.n : s.k, b_cols = trans_b ? s.k : s.n;
      const int64_t lda = a_cols + t % 3, ldb = b_cols + (t + 1) % 3, ldc = s.n + t % 2;
      const Tensor a = random_tensor({a_rows, lda}, rng), b = random_tensor({b_rows, ldb}, rng);
      const Tensor c0 = random_tensor({s.m, ldc}, rng);
      for (float beta : {0.0f, 1.0f, -0.5f}) {
        BOOST_TEST_CONTEXT(fmt::format("m={} n={} k={} trans_a={} trans_b={} beta={}", s.m, s.n,
                                       s.k, trans_a, trans_b, beta)) {
          Tensor want = c0.clone(), emulated = c0.clone(), got = c0.clone();
          if (beta == 0.0f) {  // C must not be read
            emulated.fill(std::numeric_limits<float>::quiet_NaN());
            got.fill(std::numeric_limits<float>::quiet_NaN());
          }
          oracle_gemm(trans_a, trans_b, s.m, s.n, s.k, 0.75f, a.data(), lda, b.data(), ldb, beta,
                      want.data(), ldc);
          reference->gemm(trans_a, trans_b, s.m, s.n, s.k, 0.75f, a.data(), lda, b.data(), ldb,
                          beta, emulated.data(), ldc);
          float max_want = 1.0f, diff_emulated = 0.0f, diff_fast = 0.0f;
          if (fast) {
            fast->gemm(trans_a, trans_b, s.m, s.n, s.k, 0.75f, a.data(), lda, b.data(), ldb, beta,
                       got.data(), ldc);
          }
          bool finite = true;
          for (int64_t i = 0; i < s.m; ++i) {
            for (int64_t j = 0; j < s.n; ++j) {
              const float w = want.data()[i * ldc + j];
              max_want = std::max(max_want, std::abs(w));
              diff_emulated = std::max(diff_emulated, std::abs(emulated.data()[i * ldc + j] - w));
              const float g = got.data()[i * ldc + j];
              finite = finite && std::isfinite(g);
              diff_fast = std::max(diff_fast, std::abs(g - w));
            }
          }
          BOOST_TEST(diff_emulated == 0.0f);
          if (fast) {
            BOOST_TEST(finite, "non-finite value (C read with beta 0, or not written)");
            BOOST_TEST(diff_fast <= kRelativeTolerance * max_want,
                       "max |tbb - oracle| = " << diff_fast << ", largest " << max_want);
          }
        }
      }
    }
  }
  // The rounding matters: a product of inputs that are not bf16 differs from the fp32 one.
  if (fast) {
    const float a = 1.0f + std::ldexp(1.0f, -10), b = 3.0f;
    float c = 0.0f;
    fast->gemm(false, false, 1, 1, 1, 1.0f, &a, 1, &b, 1, 0.0f, &c, 1);
    BOOST_TEST(c == 3.0f);
  }
}

// fp32 GEMM descriptors never reach the bf16 implementation, and bf16 ones never reach OpenBLAS.
BOOST_AUTO_TEST_CASE(gemm_implementations_by_precision) {
  BOOST_TEST(registries().kernels.pick<GemmKernel>("gemm", "tbb", {}, "t")->implementation() ==
             "openblas");
  const std::string refused = strata::test::error_of(
      [] { registries().kernels.create<GemmKernel>("gemm", "tbb", "openblas", kBf16Gemm); });
  BOOST_TEST(refused.find("does not support") != std::string::npos, refused);
}

// Without AVX512-BF16 (here: the override) the tbb backend refuses bf16 with an error naming the
// feature: no silent fp32 run and no fallback.
BOOST_AUTO_TEST_CASE(bf16_refused_without_the_cpu_feature) {
  ScopedEnv no_bf16("STRATA_NO_AVX512BF16", "1");
  const std::string message = strata::test::error_of(
      [] { registries().kernels.pick<GemmKernel>("gemm", "tbb", kBf16Gemm, "fc1"); });
  BOOST_TEST(message.find("AVX512-BF16") != std::string::npos, message);
  BOOST_TEST(message.find("precision bf16") != std::string::npos, message);
  BOOST_TEST(message.find("STRATA_NO_AVX512BF16") != std::string::npos, message);
  // The reference's emulation runs anywhere.
  BOOST_TEST(registries()
                 .kernels.pick<GemmKernel>("gemm", "reference", kBf16Gemm, "t")
                 ->implementation() == "reference");
}

namespace {

using strata::Conv2dDesc;
using strata::Conv2dKernel;

struct ConvCase {
  int64_t n, c, h, w, k, kh, kw, sh, sw, ph, pw, dh, dw, groups;
  int64_t pad_bottom = -1, pad_right = -1;
};

Conv2dDesc bf16_conv(const ConvCase& t) {
  Conv2dDesc d;
  d.in_channels = t.c;
  d.in_h = t.h;
  d.in_w = t.w;
  d.out_channels = t.k;
  d.kernel_h = t.kh;
  d.kernel_w = t.kw;
  d.stride_h = t.sh;
  d.stride_w = t.sw;
  d.pad_h = t.ph;
  d.pad_w = t.pw;
  d.pad_h_end = t.pad_bottom;
  d.pad_w_end = t.pad_right;
  d.dilation_h = t.dh;
  d.dilation_w = t.dw;
  d.groups = t.groups;
  d.out_h = (t.h + t.ph + d.pad_bottom() - t.dh * (t.kh - 1) - 1) / t.sh + 1;
  d.out_w = (t.w + t.pw + d.pad_right() - t.dw * (t.kw - 1) - 1) / t.sw + 1;
  d.precision = Precision::kBf16;
  return d;
}

float largest(const Tensor& t) {
  float m = 1.0f;
  for (float v : t.span()) m = std::max(m, std::abs(v));
  return m;
}

void check_near(const Tensor& got, const Tensor& want, const std::string& what) {
  BOOST_TEST_CONTEXT(what) {
    bool finite = true;
    for (float v : got.span()) finite = finite && std::isfinite(v);
    BOOST_TEST(finite, "non-finite value (an element not written?)");
    const float diff = strata::test::max_abs_diff(got, want);
    BOOST_TEST(diff <= kRelativeTolerance * largest(want),
               "max |tbb - reference| = " << diff << ", largest " << largest(want));
  }
}

Tensor nan_filled(const strata::Shape& shape) {
  Tensor t(shape);
  t.fill(std::numeric_limits<float>::quiet_NaN());
  return t;
}

std::string describe(const ConvCase& t, const Conv2dDesc& d) {
  return fmt::format(
      "n={} c={} {}x{} k={} {}x{} stride {},{} pad {},{} end {},{} dilation {},{} groups {}", t.n,
      t.c, t.h, t.w, t.k, t.kh, t.kw, t.sh, t.sw, t.ph, t.pw, d.pad_bottom(), d.pad_right(), t.dh,
      t.dw, t.groups);
}

// True on a CPU without AVX512-BF16, after checking that tbb refuses d with an error naming it.
bool refused_without_the_feature(const Conv2dDesc& d) {
  if (cpu_has_bf16()) return false;
  const std::string message = strata::test::error_of(
      [&] { registries().kernels.pick<Conv2dKernel>("conv2d", "tbb", d, "conv1"); });
  BOOST_TEST(message.find("AVX512-BF16") != std::string::npos, message);
  return true;
}

// Random inputs of every pass of case t.
struct PassInputs {
  Tensor x, w, b, dy;
};
PassInputs random_inputs(const ConvCase& t, const Conv2dDesc& d, std::mt19937& rng) {
  return {random_tensor({t.n, t.c, t.h, t.w}, rng),
          random_tensor({t.k, t.c / t.groups, t.kh, t.kw}, rng), random_tensor({t.k}, rng),
          random_tensor({t.n, t.k, d.out_h, d.out_w}, rng)};
}

// Runs the three passes of `fast` and of `ref` (the reference's emulation) on `in` and compares
// every output; without `bias`, forward adds none and backward_params computes no bias gradient.
// Every output of `fast` starts as NaN, so an element left unwritten fails. Returns fast's y.
Tensor check_passes(Conv2dKernel& fast, Conv2dKernel& ref, const PassInputs& in, bool bias) {
  const Tensor* b = bias ? &in.b : nullptr;
  Tensor y_ref(in.dy.shape()), y = nan_filled(in.dy.shape());
  ref.forward(in.x, in.w, b, y_ref);
  fast.forward(in.x, in.w, b, y);
  check_near(y, y_ref, "forward");
  Tensor dx_ref(in.x.shape()), dx = nan_filled(in.x.shape());
  ref.backward_data(in.dy, in.w, dx_ref);
  fast.backward_data(in.dy, in.w, dx);
  check_near(dx, dx_ref, "backward_data");
  Tensor dw_ref(in.w.shape()), dw = nan_filled(in.w.shape()), db_ref(in.b.shape()),
                               db = nan_filled(in.b.shape());
  ref.backward_params(in.x, in.dy, dw_ref, bias ? &db_ref : nullptr);
  fast.backward_params(in.x, in.dy, dw, bias ? &db : nullptr);
  check_near(dw, dw_ref, "backward_params weight");
  if (bias) check_near(db, db_ref, "backward_params bias");
  // The passes run twice give the same bits (workspace reuse, no accumulation).
  Tensor y_again = nan_filled(y.shape());
  fast.forward(in.x, in.w, b, y_again);
  BOOST_TEST(strata::test::max_abs_diff(y_again, y) == 0.0f);
  return y;
}

// The methods TbbConv2d runs a bf16 layer with, from the fp32 layer's ("fwd=A bwd_data=B
// bwd_weights=C"): the same, named bf16_<method>, but a weight gradient that fp32 runs on Winograd
// with fewer than 32 channels or filters runs on the direct method, whose vdpbf16ps products win
// there (winograd_params_fits).
std::string bf16_names(const std::string& fp32, const Conv2dDesc& d) {
  std::vector<std::string> passes;
  std::istringstream words(fp32);
  for (std::string word; words >> word;) {
    const std::size_t eq = word.find('=');
    std::string method = word.substr(eq + 1);
    const bool narrow = std::min(d.in_channels, d.out_channels) / d.groups < 32;
    if (word.starts_with("bwd_weights=winograd") && narrow) method = "direct";
    passes.push_back(fmt::format("{}bf16_{}", word.substr(0, eq + 1), method));
  }
  return fmt::format("{}", fmt::join(passes, " "));
}

}  // namespace

// TbbConv2d's methods in bf16 (docs/precision.md): each pass runs the method the fp32 layer would
// (bf16_names), named bf16_<method>, on inputs rounded to bf16 (direct's and pointwise's products
// on pairs with vdpbf16ps, bf16_direct.hpp). All three passes against the reference's emulation,
// with and without bias, on geometries whose fp32 methods cover F(4x4) and F(2x2) Winograd,
// Winograd on dilation's phases, direct, lanes, small, polyphase (stride 2), blas (the 7x7 stride-2
// layer's backward_data) and pointwise (a GEMM too small for bf16_gemm). The rounding is real:
// fp32's forward differs from bf16's.
BOOST_AUTO_TEST_CASE(methods_on_rounded_inputs_against_reference_emulation) {
  const std::vector<ConvCase> cases = {
      {4, 32, 16, 16, 32, 3, 3, 1, 1, 1, 1, 1, 1, 1},  // F(4x4)
      {3, 40, 11, 11, 36, 3, 3, 1, 1, 1, 1, 1, 1, 1},  // F(4x4): edge tiles, 36 filters
      {2, 64, 14, 14, 64, 3, 3, 1, 1, 1, 1, 1, 1, 1},  // F(2x2): 14x14 outputs
      {2, 64, 28, 28, 64, 3, 3, 1, 1, 2, 2, 2, 2, 1},  // dilation 2: Winograd on the phases
      {2, 32, 16, 16, 32, 3, 3, 1, 1, 2, 2, 2, 2, 1},  // dilation 2, direct
      // direct's pairs of channels (forward) and filters (backward_data): odd counts (a last pair
      // with one real channel), groups, 5x5, dilation on a non-square image, no padding (the
      // wide output), rows shorter than the wide run (backward_data's wide output)
      {2, 15, 32, 32, 17, 3, 3, 1, 1, 1, 1, 1, 1, 1},
      {2, 16, 32, 32, 16, 3, 3, 1, 1, 1, 1, 1, 1, 2},
      {2, 12, 32, 32, 10, 5, 5, 1, 1, 2, 2, 1, 1, 1},
      {2, 9, 36, 30, 11, 3, 3, 1, 1, 2, 2, 2, 2, 1},
      {2, 5, 40, 40, 7, 3, 3, 1, 1, 0, 0, 1, 1, 1},
      {2, 16, 24, 20, 16, 3, 3, 1, 1, 1, 1, 1, 1, 1},
      {8, 6, 14, 14, 16, 5, 5, 1, 1, 0, 0, 1, 1, 1},   // LeNet's conv2: lanes
      {4, 16, 16, 16, 32, 3, 3, 2, 2, 1, 1, 1, 1, 1},  // stride 2, small: lanes, small
      {2, 16, 32, 32, 32, 3, 3, 2, 2, 1, 1, 1, 1, 1},  // stride 2: polyphase
      {2, 3, 64, 64, 16, 7, 7, 2, 2, 3, 3, 1, 1, 1},   // 7x7 stride 2: backward_data blas
      // pointwise (a GEMM too small for bf16_gemm): from 64 channels and filters and 256 pixels
      // pairs of channels (forward), filters (backward_data) and pixels (the weight gradient),
      // with odd counts and an odd number of pixels; below, float products on rounded copies
      {2, 64, 16, 16, 96, 1, 1, 1, 1, 0, 0, 1, 1, 1},
      {3, 65, 20, 20, 67, 1, 1, 1, 1, 0, 0, 1, 1, 1},
      {2, 96, 17, 17, 72, 1, 1, 1, 1, 0, 0, 1, 1, 1},
      {3, 65, 20, 20, 33, 1, 1, 1, 1, 0, 0, 1, 1, 1},
      {4, 16, 28, 28, 32, 1, 1, 2, 2, 0, 0, 1, 1, 1},  // 1x1 stride 2 (ResNet's shortcut): small
  };
  std::set<std::string> methods;
  std::mt19937 rng(37);
  for (const ConvCase& t : cases) {
    const Conv2dDesc d = bf16_conv(t);
    BOOST_TEST_CONTEXT(describe(t, d)) {
      if (refused_without_the_feature(d)) continue;
      Conv2dDesc fp32 = d;
      fp32.precision = Precision::kFp32;
      auto plain = registries().kernels.pick<Conv2dKernel>("conv2d", "tbb", fp32, "t");
      auto ref = registries().kernels.pick<Conv2dKernel>("conv2d", "reference", d, "t");
      auto fast = registries().kernels.pick<Conv2dKernel>("conv2d", "tbb", d, "t");
      std::istringstream passes(plain->implementation());
      for (std::string pass; passes >> pass;) methods.insert(pass.substr(pass.find('=') + 1));
      BOOST_TEST(fast->implementation() == bf16_names(plain->implementation(), d));
      for (const bool bias : {true, false}) {
        const PassInputs in = random_inputs(t, d, rng);
        const Tensor y = check_passes(*fast, *ref, in, bias);
        Tensor y_fp32(y.shape());
        plain->forward(in.x, in.w, bias ? &in.b : nullptr, y_fp32);
        BOOST_TEST(strata::test::max_abs_diff(y, y_fp32) > kRelativeTolerance * largest(y_fp32));
      }
    }
  }
  if (!cpu_has_bf16()) return;
  for (const char* method :
       {"winograd43", "winograd23", "direct", "lanes", "small", "polyphase", "blas"}) {
    BOOST_TEST(methods.count(method) == 1u, "no case ran " << method);
  }
}

// tbb's bf16_gemm conv2d against the reference's bf16 emulation, all three passes, on geometries
// that cover 1x1 (pointwise, no im2col), 3x3 with padding, strides, dilation, groups (depthwise
// too: created by name, since pick() gives depthwise to bf16_depthwise), end padding, an image of
// one pixel, batches split into several blocks, channels that are not multiples of the 8 x 48
// tile and odd reduction lengths.
BOOST_AUTO_TEST_CASE(conv2d_against_reference_emulation) {
  const std::vector<ConvCase> cases = {
      {2, 3, 9, 9, 5, 3, 3, 1, 1, 1, 1, 1, 1, 1},        // odd C*R*S = 27
      {5, 16, 8, 8, 24, 1, 1, 1, 1, 0, 0, 1, 1, 1},      // pointwise
      {3, 6, 1, 1, 10, 1, 1, 1, 1, 0, 0, 1, 1, 1},       // pointwise, one pixel
      {4, 8, 11, 7, 12, 3, 3, 2, 2, 1, 1, 1, 1, 1},      // stride 2
      {2, 8, 12, 12, 8, 3, 3, 1, 1, 2, 2, 2, 2, 1},      // dilation 2
      {3, 12, 9, 10, 18, 3, 3, 1, 1, 1, 1, 1, 1, 3},     // groups
      {2, 16, 10, 10, 16, 3, 3, 1, 1, 1, 1, 1, 1, 16},   // depthwise
      {2, 6, 9, 8, 7, 5, 3, 1, 2, 2, 1, 1, 1, 1},        // 5x3, mixed strides
      {2, 5, 8, 8, 6, 3, 3, 1, 1, 0, 0, 1, 1, 1, 2, 1},  // end padding only
      {9, 32, 16, 16, 64, 3, 3, 1, 1, 1, 1, 1, 1, 1},    // several blocks, K over 256
      {3, 20, 7, 7, 50, 1, 1, 2, 2, 0, 0, 1, 1, 2},      // strided 1x1 with groups
  };
  std::mt19937 rng(29);
  for (const ConvCase& t : cases) {
    const Conv2dDesc d = bf16_conv(t);
    BOOST_TEST_CONTEXT(describe(t, d)) {
      if (refused_without_the_feature(d)) continue;
      auto ref = registries().kernels.pick<Conv2dKernel>("conv2d", "reference", d, "t");
      auto fast = registries().kernels.create<Conv2dKernel>("conv2d", "tbb", "bf16_gemm", d);
      BOOST_TEST(fast->implementation() == "bf16_gemm");
      check_passes(*fast, *ref, random_inputs(t, d, rng), true);
    }
  }
}

namespace {

constexpr const char* kBf16Depthwise =
    "fwd=bf16_depthwise bwd_data=bf16_depthwise bwd_weights=bf16_depthwise";
constexpr const char* kBf16Lanes = "fwd=bf16_lanes bwd_data=bf16_lanes bwd_weights=bf16_lanes";

}  // namespace

// Depthwise convolutions in bf16 run their fp32 twin's methods on rounded inputs: lanes (small
// planes: forward, the weight gradient, and backward_data at stride 1) and the depthwise method
// (strided backward_data, and every pass of planes past lanes' frames). All three passes against
// the reference's emulation, with bias and without, on stride 1 (the wide tap loops) and 2 (the
// row loops), 3x3 and 5x5, with and without padding, non-square images, dilation, a channel
// multiplier, rows longer than the 64-float vector block, and planes past lanes' frames. Both
// methods must run every pass somewhere. And the rounding is real: the fp32 methods' forward on
// the same inputs differs from the bf16 one by more than the tolerance.
BOOST_AUTO_TEST_CASE(depthwise_against_reference_emulation) {
  struct Case {
    ConvCase conv;
    bool bias;
  };
  const std::vector<Case> cases = {
      {{4, 16, 10, 10, 16, 3, 3, 1, 1, 1, 1, 1, 1, 16}, true},  // MobileNet's 3x3
      {{3, 8, 11, 11, 8, 3, 3, 2, 2, 1, 1, 1, 1, 8}, false},    // stride 2
      {{2, 12, 9, 14, 12, 5, 5, 1, 1, 2, 2, 1, 1, 12}, true},   // 5x5, non-square
      {{2, 6, 13, 9, 6, 5, 5, 2, 2, 2, 2, 1, 1, 6}, true},      // 5x5, stride 2, non-square
      {{2, 8, 8, 8, 8, 3, 3, 1, 1, 0, 0, 1, 1, 8}, false},      // no padding
      {{2, 5, 9, 7, 5, 3, 3, 2, 1, 1, 0, 1, 1, 5}, true},       // mixed strides and padding
      {{2, 8, 12, 12, 8, 3, 3, 1, 1, 2, 2, 2, 2, 8}, true},     // dilation 2
      {{2, 4, 9, 9, 8, 3, 3, 1, 1, 1, 1, 1, 1, 4}, false},      // two filters per channel
      {{2, 3, 20, 70, 3, 3, 3, 1, 1, 1, 1, 1, 1, 3}, true},     // rows over 64 floats
      {{2, 2, 96, 96, 2, 3, 3, 1, 1, 1, 1, 1, 1, 2}, true},     // past lanes' frames
      {{2, 2, 97, 95, 4, 3, 3, 2, 2, 1, 1, 1, 1, 2}, false},    // and strided, two filters
  };
  std::mt19937 rng(31);
  std::set<std::string> ran;
  for (const Case& c : cases) {
    const ConvCase& t = c.conv;
    const Conv2dDesc d = bf16_conv(t);
    BOOST_TEST_CONTEXT(describe(t, d) << (c.bias ? ", bias" : ", no bias")) {
      if (refused_without_the_feature(d)) continue;
      auto ref = registries().kernels.pick<Conv2dKernel>("conv2d", "reference", d, "t");
      auto fast = registries().kernels.pick<Conv2dKernel>("conv2d", "tbb", d, "t");
      Conv2dDesc fp32 = d;
      fp32.precision = Precision::kFp32;
      auto plain = registries().kernels.pick<Conv2dKernel>("conv2d", "tbb", fp32, "t");
      BOOST_TEST(fast->implementation() == bf16_names(plain->implementation(), d));
      std::istringstream words(fast->implementation());
      for (std::string word; words >> word;) ran.insert(word);
      const PassInputs in = random_inputs(t, d, rng);
      const Tensor y = check_passes(*fast, *ref, in, c.bias);
      Tensor y_fp32(y.shape());
      plain->forward(in.x, in.w, c.bias ? &in.b : nullptr, y_fp32);
      BOOST_TEST(strata::test::max_abs_diff(y, y_fp32) > kRelativeTolerance * largest(y_fp32));
    }
  }
  if (cpu_has_bf16()) {
    for (const std::string method : {"bf16_lanes", "bf16_depthwise"}) {
      for (const std::string pass : {"fwd=", "bwd_data=", "bwd_weights="}) {
        BOOST_TEST(ran.count(pass + method) == 1u, pass + method << " never ran");
      }
    }
  }
}

// The emulation really rounds: for inputs that are not bf16, the bf16 reference differs from the
// fp32 one, and equals the fp32 reference run on inputs rounded beforehand.
BOOST_AUTO_TEST_CASE(reference_emulation_rounds_the_inputs) {
  const ConvCase t{2, 4, 6, 6, 3, 3, 3, 1, 1, 1, 1, 1, 1, 1};
  const Conv2dDesc bf16 = bf16_conv(t);
  Conv2dDesc fp32 = bf16;
  fp32.precision = Precision::kFp32;
  auto emulated = registries().kernels.pick<Conv2dKernel>("conv2d", "reference", bf16, "t");
  auto plain = registries().kernels.pick<Conv2dKernel>("conv2d", "reference", fp32, "t");
  std::mt19937 rng(5);
  const Tensor x = random_tensor({t.n, t.c, t.h, t.w}, rng), w = random_tensor({3, 4, 3, 3}, rng);
  const Tensor dy = random_tensor({t.n, 3, 6, 6}, rng);
  const auto rounded = [](const Tensor& t) {
    Tensor r = t.clone();
    for (float& v : r.span()) v = round_to_bf16(v);
    return r;
  };
  Tensor y_bf16({t.n, 3, 6, 6}), y_fp32(y_bf16.shape()), y_pre(y_bf16.shape());
  emulated->forward(x, w, nullptr, y_bf16);
  plain->forward(x, w, nullptr, y_fp32);
  plain->forward(rounded(x), rounded(w), nullptr, y_pre);
  BOOST_TEST(strata::test::max_abs_diff(y_bf16, y_fp32) > 1e-4f);
  BOOST_TEST(strata::test::max_abs_diff(y_bf16, y_pre) == 0.0f);
  Tensor dx_bf16(x.shape()), dx_pre(x.shape());
  emulated->backward_data(dy, w, dx_bf16);
  plain->backward_data(rounded(dy), rounded(w), dx_pre);
  BOOST_TEST(strata::test::max_abs_diff(dx_bf16, dx_pre) == 0.0f);
  Tensor dw_bf16(w.shape()), dw_pre(w.shape()), db_bf16({3}), db_fp32({3});
  emulated->backward_params(x, dy, dw_bf16, &db_bf16);
  plain->backward_params(rounded(x), rounded(dy), dw_pre, nullptr);
  BOOST_TEST(strata::test::max_abs_diff(dw_bf16, dw_pre) == 0.0f);
  plain->backward_params(x, dy, dw_pre, &db_fp32);  // the bias gradient sums the float dy
  BOOST_TEST(strata::test::max_abs_diff(db_bf16, db_fp32) == 0.0f);
}

// Precision picks the implementation: fp32 descriptors never reach bf16_gemm; bf16 ones whose fp32
// method is a large GEMM (pointwise 256 -> 512 here) go to bf16_gemm, the others (a smaller
// pointwise layer too) run TbbConv2d's bf16_ methods.
BOOST_AUTO_TEST_CASE(conv2d_implementations_by_precision) {
  Conv2dDesc d = bf16_conv({2, 256, 14, 14, 512, 1, 1, 1, 1, 0, 0, 1, 1, 1});
  // "tbb" (TbbConv2d) first: it takes the bf16 descriptors whose fp32 method is not a GEMM before
  // bf16_gemm, which takes every other bf16 one.
  const std::vector<std::string> list = registries().kernels.implementations("conv2d", "tbb");
  BOOST_TEST_REQUIRE(list.size() == 2u);
  BOOST_TEST(list[0] == "tbb");
  BOOST_TEST(list[1] == "bf16_gemm");
  const std::string refused = strata::test::error_of(
      [&] { registries().kernels.create<Conv2dKernel>("conv2d", "tbb", "tbb", d); });
  BOOST_TEST(refused.find("does not support") != std::string::npos, refused);
  d.precision = Precision::kFp32;
  BOOST_TEST(registries().kernels.pick<Conv2dKernel>("conv2d", "tbb", d, "t")->implementation() ==
             "fwd=pointwise bwd_data=pointwise bwd_weights=pointwise");
  const std::string refused_fp32 = strata::test::error_of(
      [&] { registries().kernels.create<Conv2dKernel>("conv2d", "tbb", "bf16_gemm", d); });
  BOOST_TEST(refused_fp32.find("does not support") != std::string::npos, refused_fp32);
  if (!cpu_has_bf16()) return;  // bf16 is refused here: conv2d_refused_without_the_cpu_feature
  d.precision = Precision::kBf16;
  BOOST_TEST(registries().kernels.pick<Conv2dKernel>("conv2d", "tbb", d, "t")->implementation() ==
             "bf16_gemm");
  const Conv2dDesc winograd = bf16_conv({2, 32, 16, 16, 32, 3, 3, 1, 1, 1, 1, 1, 1, 1});
  BOOST_TEST(
      registries().kernels.pick<Conv2dKernel>("conv2d", "tbb", winograd, "t")->implementation() ==
      "fwd=bf16_winograd43 bwd_data=bf16_winograd43 bwd_weights=bf16_winograd43");
  const Conv2dDesc pointwise = bf16_conv({2, 256, 14, 14, 256, 1, 1, 1, 1, 0, 0, 1, 1, 1});
  BOOST_TEST(
      registries().kernels.pick<Conv2dKernel>("conv2d", "tbb", pointwise, "t")->implementation() ==
      "fwd=bf16_pointwise bwd_data=bf16_pointwise bwd_weights=bf16_pointwise");
  // ResNet-20's first stage (16 channels): fp32 takes Winograd for the weight gradient, bf16 the
  // direct method's vdpbf16ps products in all three passes.
  const Conv2dDesc stage1 = bf16_conv({2, 16, 32, 32, 16, 3, 3, 1, 1, 1, 1, 1, 1, 1});
  BOOST_TEST(
      registries().kernels.pick<Conv2dKernel>("conv2d", "tbb", stage1, "t")->implementation() ==
      "fwd=bf16_direct bwd_data=bf16_direct bwd_weights=bf16_direct");
  // Depthwise in bf16: bf16_lanes on small planes, bf16_depthwise past lanes' frames; with end
  // padding (which TbbConv2d refuses) bf16_gemm.
  const Conv2dDesc depthwise = bf16_conv({2, 8, 8, 8, 8, 3, 3, 1, 1, 1, 1, 1, 1, 8});
  BOOST_TEST(
      registries().kernels.pick<Conv2dKernel>("conv2d", "tbb", depthwise, "t")->implementation() ==
      kBf16Lanes);
  const Conv2dDesc large = bf16_conv({2, 8, 96, 96, 8, 3, 3, 1, 1, 1, 1, 1, 1, 8});
  BOOST_TEST(
      registries().kernels.pick<Conv2dKernel>("conv2d", "tbb", large, "t")->implementation() ==
      kBf16Depthwise);
  const Conv2dDesc end_padded = bf16_conv({2, 8, 8, 8, 8, 3, 3, 2, 2, 0, 0, 1, 1, 8, 1, 1});
  BOOST_TEST(
      registries().kernels.pick<Conv2dKernel>("conv2d", "tbb", end_padded, "t")->implementation() ==
      "bf16_gemm");
}

// Depthwise too: bf16_depthwise needs no bf16 instruction, but precision bf16 means the same on
// every tbb method (docs/precision.md), so it is refused the same way.
BOOST_AUTO_TEST_CASE(conv2d_refused_without_the_cpu_feature) {
  ScopedEnv no_bf16("STRATA_NO_AVX512BF16", "1");
  for (const int64_t groups : {1, 8}) {
    const Conv2dDesc d = bf16_conv({2, 8, 8, 8, 8, 3, 3, 1, 1, 1, 1, 1, 1, groups});
    const std::string message = strata::test::error_of(
        [&] { registries().kernels.pick<Conv2dKernel>("conv2d", "tbb", d, "conv1"); });
    BOOST_TEST(message.find("tbb conv2d: precision bf16 needs a CPU with AVX512-BF16") !=
                   std::string::npos,
               "groups " << groups << ": " << message);
  }
}

// The bf16 kernel's arithmetic per image (Conv2dKernel::arithmetic(), conv_bench's roofline):
// direct convolution's count, but for backward_data, which with stride 1 correlates the padded dy
// with the flipped weights over every dx position (C * K * R * S * H * W), and otherwise adds
// col2im's additions to W^T dy's direct count. Needs the CPU feature (prepare refuses without).
BOOST_AUTO_TEST_CASE(conv2d_arithmetic) {
  if (!cpu_has_bf16()) {
    BOOST_TEST_MESSAGE("no AVX512-BF16 on this CPU: the bf16 kernel's arithmetic is not checked");
    return;
  }
  // Stride 1, no padding, 8x8 -> 6x6: 6 * 4 * 9 * 36 products forward and for the weights;
  // backward_data 4 * 6 * 9 * 64.
  const auto unit = registries().kernels.create<Conv2dKernel>(
      "conv2d", "tbb", "bf16_gemm", bf16_conv({1, 4, 8, 8, 6, 3, 3, 1, 1, 0, 0, 1, 1, 1}));
  BOOST_TEST_REQUIRE(unit->implementation() == "bf16_gemm");
  const strata::Conv2dArithmetic a = unit->arithmetic();
  BOOST_TEST((a.forward == strata::Conv2dPassArithmetic{7776, 0}));
  BOOST_TEST((a.backward_data == strata::Conv2dPassArithmetic{13824, 0}));
  BOOST_TEST((a.backward_params == strata::Conv2dPassArithmetic{7776, 0}));
  // Stride 2, padding 1, 7x7 -> 4x4: 70 * 36 * 16 products a pass, and col2im adds the 10 of 12
  // (tap, output) pairs per axis that read real pixels: 4 * 10 * 10.
  const auto strided = registries().kernels.create<Conv2dKernel>(
      "conv2d", "tbb", "bf16_gemm", bf16_conv({1, 4, 7, 7, 70, 3, 3, 2, 2, 1, 1, 1, 1, 1}));
  const strata::Conv2dArithmetic b = strided->arithmetic();
  BOOST_TEST((b.forward == strata::Conv2dPassArithmetic{40320, 0}));
  BOOST_TEST((b.backward_data == strata::Conv2dPassArithmetic{40320, 400}));
  BOOST_TEST((b.backward_params == strata::Conv2dPassArithmetic{40320, 0}));
  // bf16_depthwise counts what the depthwise loops run, as the fp32 depthwise method does: 2
  // filters of 9 taps, stride 1 on 96x96 padded by 1, each tap over the 98x98 padded plane in
  // every pass.
  Conv2dDesc d = bf16_conv({1, 2, 96, 96, 2, 3, 3, 1, 1, 1, 1, 1, 1, 2});
  const auto depthwise = registries().kernels.pick<Conv2dKernel>("conv2d", "tbb", d, "t");
  BOOST_TEST_REQUIRE(depthwise->implementation() == kBf16Depthwise);
  const strata::Conv2dArithmetic c = depthwise->arithmetic();
  BOOST_TEST((c.forward == strata::Conv2dPassArithmetic{2 * 9 * 98 * 98, 0}));
  BOOST_TEST((c.backward_data == strata::Conv2dPassArithmetic{2 * 9 * 98 * 98, 0}));
  BOOST_TEST((c.backward_params == strata::Conv2dPassArithmetic{2 * 9 * 98 * 98, 0}));
  // Every bf16_ method counts what its fp32 twin does (the same loops on rounded inputs).
  for (const Conv2dDesc& bf16 : {d, bf16_conv({2, 32, 16, 16, 32, 3, 3, 1, 1, 1, 1, 1, 1, 1}),
                                 bf16_conv({1, 16, 10, 10, 16, 3, 3, 2, 2, 1, 1, 1, 1, 16})}) {
    Conv2dDesc fp32_desc = bf16;
    fp32_desc.precision = Precision::kFp32;
    const strata::Conv2dArithmetic a16 =
        registries().kernels.pick<Conv2dKernel>("conv2d", "tbb", bf16, "t")->arithmetic();
    const strata::Conv2dArithmetic fp32 =
        registries().kernels.pick<Conv2dKernel>("conv2d", "tbb", fp32_desc, "t")->arithmetic();
    BOOST_TEST((fp32.forward == a16.forward && fp32.backward_data == a16.backward_data &&
                fp32.backward_params == a16.backward_params));
  }
}

namespace {

// A small model with a conv2d (3x3, padded), batch norm, relu, pooling and linear layers.
std::string experiment_text(const std::string& backend, const std::string& precision) {
  return fmt::format(R"(
backend: {}
precision: {}
seed: 3
model:
  input: [3, 12, 12]
  layers:
    - {{name: conv1, type: conv2d, out_channels: 16, kernel: 3, padding: 1}}
    - {{name: bn1, type: batch_norm}}
    - {{name: relu1, type: relu}}
    - {{name: pool1, type: max_pool, kernel: 2, stride: 2}}
    - {{name: conv2, type: conv2d, out_channels: 24, kernel: 1}}
    - {{name: fc, type: linear, out_features: 10}}
)",
                     backend, precision);
}

strata::Experiment read_model(const std::string& backend, const std::string& precision) {
  return strata::Experiment::read(strata::test::yaml(experiment_text(backend, precision)),
                                  registries(), strata::Experiment::Scope::model);
}

std::string implementation_of(const strata::Experiment& run, const std::string& layer) {
  return run.graph->layer(static_cast<std::size_t>(run.graph->index_of(layer))).implementation();
}

}  // namespace

// The experiment's `precision` reaches the layers: conv2d and linear pick bf16 implementations,
// the rest is unchanged; fp32 is the default; other values are errors naming the key.
BOOST_AUTO_TEST_CASE(experiment_precision_key) {
  const strata::Experiment fp32 = read_model("tbb", "fp32");
  BOOST_TEST((fp32.precision == Precision::kFp32));
  BOOST_TEST(implementation_of(fp32, "conv1") != "bf16_gemm");
  BOOST_TEST(implementation_of(fp32, "fc") == "openblas");
  const strata::Experiment emulated = read_model("reference", "bf16");
  BOOST_TEST((emulated.precision == Precision::kBf16));
  BOOST_TEST(implementation_of(emulated, "conv1") == "reference");
  const std::string bad = strata::test::error_of([] { read_model("tbb", "fp16"); });
  BOOST_TEST(bad.find("precision") != std::string::npos, bad);
  BOOST_TEST(bad.find("must be fp32 or bf16, found 'fp16'") != std::string::npos, bad);
  {
    // Without the CPU feature, setting up the model fails at the first conv2d, naming it.
    ScopedEnv no_bf16("STRATA_NO_AVX512BF16", "1");
    const std::string refused = strata::test::error_of([] { read_model("tbb", "bf16"); });
    BOOST_TEST(refused.find("conv1") != std::string::npos, refused);
    BOOST_TEST(refused.find("needs a CPU with AVX512-BF16") != std::string::npos, refused);
  }
  if (!cpu_has_bf16()) return;
  const strata::Experiment bf16 = read_model("tbb", "bf16");
  // Small layers: TbbConv2d's fp32 methods (lanes, direct) on rounded inputs.
  for (const char* conv : {"conv1", "conv2"}) {
    const std::string name = implementation_of(bf16, conv);
    BOOST_TEST(name.find("fwd=bf16_") == 0u, name);
    BOOST_TEST(name.find("bwd_weights=bf16_") != std::string::npos, name);
  }
  BOOST_TEST(implementation_of(bf16, "fc") == "bf16");
  BOOST_TEST(implementation_of(bf16, "bn1") == implementation_of(fp32, "bn1"));
}

// A whole model in bf16 on tbb against the same model on the reference's emulation (same
// parameters, same batch): the logits and the input gradient agree to float accumulation order.
BOOST_AUTO_TEST_CASE(model_bf16_tbb_matches_reference_emulation) {
  if (!cpu_has_bf16()) {
    const std::string message = strata::test::error_of([] { read_model("tbb", "bf16"); });
    BOOST_TEST(message.find("AVX512-BF16") != std::string::npos, message);
    return;
  }
  strata::Experiment fast = read_model("tbb", "bf16");
  strata::Experiment ref = read_model("reference", "bf16");
  strata::Experiment plain = read_model("reference", "fp32");
  std::vector<strata::NamedTensor> from = fast.graph->state_tensors();
  for (strata::Experiment* run : {&ref, &plain}) {
    std::vector<strata::NamedTensor> to = run->graph->state_tensors();
    BOOST_REQUIRE(to.size() == from.size());
    for (std::size_t i = 0; i < to.size(); ++i) to[i].tensor.copy_from(from[i].tensor);
  }
  std::mt19937 rng(8);
  const Tensor x = random_tensor({6, 3, 12, 12}, rng);
  strata::Context c_fast{false, &fast.rng, fast.backend.get()};
  strata::Context c_ref{false, &ref.rng, ref.backend.get()};
  strata::Context c_plain{false, &plain.rng, plain.backend.get()};
  fast.graph->forward(c_fast, x);
  ref.graph->forward(c_ref, x);
  plain.graph->forward(c_plain, x);
  check_near(fast.graph->activation("fc"), ref.graph->activation("fc"), "logits");
  // ... and bf16 is not fp32: the emulation's logits differ from the fp32 ones.
  BOOST_TEST(strata::test::max_abs_diff(ref.graph->activation("fc"),
                                        plain.graph->activation("fc")) > 1e-5f);
}
