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

#include <algorithm>
#include <boost/test/unit_test.hpp>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "strata/backend.hpp"
#include "strata/error.hpp"
#include "strata/ops.hpp"
#include "strata/registry.hpp"
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

