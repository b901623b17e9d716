// vector_math.hpp: exp and log in float for loops that must vectorize.
//
// std::exp, std::log and std::pow are library calls that GCC vectorizes only under -ffast-math
// (through glibc's vector math library), which the project does not use. These are written with
// float arithmetic, comparisons and integer bit operations only, so a loop over them compiles to
// vector code on whatever ISA the plugin is built for. Accuracy: within 2 ulp of the true value
// (checked against double over every 37th float bit pattern when written; tests/test_kernels.cpp
// compares the kernels built on them with the reference's std::exp and std::pow).
#pragma once
#include <bit>
#include <cstdint>
#include <limits>

namespace strata::tbb_backend::vector_math {

// exp(x) in float to about 2 ulp for every x (NaN in, NaN out; below about -103.97 it is 0, above
// 88.72 +inf), written with float arithmetic, comparisons and integer bit operations only, so that
// a loop calling it vectorizes (std::exp does not without -ffast-math). Cody-Waite reduction
// x = n ln2 + r, |r| <= ln2/2, Cephes' polynomial for exp(r), and 2^n built as two powers of two
// (so that n from -150 to 128 needs no special case: the product underflows or overflows
// correctly).
inline float exp(float x) {
  x = x < -104.0f ? -104.0f : x;  // NaN passes both
  x = x > 89.0f ? 89.0f : x;
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float shifted = x * kLog2e + kRound;
  const float n = shifted - kRound;
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const uint32_t biased = std::bit_cast<uint32_t>(shifted) - 0x4B400000u;  // n, two's complement
  const uint32_t half = static_cast<uint32_t>(static_cast<int32_t>(biased) >> 1);
  const uint32_t rest = biased - half;
  const float a = std::bit_cast<float>((half + 127u) << 23);
  const float b = std::bit_cast<float>((rest + 127u) << 23);
  return p * a * b;
}

// ln(s) in float for positive normal s, about 2 ulp; +inf and NaN pass through. s = m 2^e with m
// in [sqrt(1/2), sqrt(2)), ln m = 2 atanh(z) with z = (m - 1)/(m + 1), |z| <= 0.172, by its series
// to z^9 (the next term is below 4e-10 relative).
inline float log(float s) {
  const uint32_t bits = std::bit_cast<uint32_t>(s);
  float m = std::bit_cast<float>((bits & 0x007FFFFFu) | 0x3F800000u);
  float e = static_cast<float>(static_cast<int32_t>((bits >> 23) & 0xFFu) - 127);
  const bool high = m > 1.41421356f;
  m = high ? m * 0.5f : m;
  e = high ? e + 1.0f : e;
  const float z = (m - 1.0f) / (m + 1.0f);
  const float z2 = z * z;
  float series = 1.0f / 9.0f;
  series = series * z2 + 1.0f / 7.0f;
  series = series * z2 + 1.0f / 5.0f;
  series = series * z2 + 1.0f / 3.0f;
  series = series * z2 + 1.0f;
  const float ln_m = 2.0f * z * series;
  const float result = e * 0.693359375f + (e * -2.12194440e-4f + ln_m);
  return s < std::numeric_limits<float>::infinity() ? result : s;
}

}  // namespace strata::tbb_backend::vector_math
