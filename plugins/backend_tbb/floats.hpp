// Copies and zero-fills of short float runs (internal to backend_tbb).
//
// Rows of LeNet- and CIFAR-sized images are 5 to 32 floats: a memmove or memset call per row
// costs more than the copy (measured: 34 % of a depthwise convolution's time was in those two
// calls). These move 8 floats at a time with fixed-size memcpy, which the compiler inlines, the
// last move overlapping the one before.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "strata/ops.hpp"

namespace strata::tbb_backend {

// dst[i] = src[i * step] for i < n, step 0 (a fill from src[0..7]) or 1. Under 8 floats, at most
// two overlapping moves of 4, 2 or 1 (a plain loop there becomes `rep stos` or a memmove call,
// each slower than the copy for a row of 1 to 7 floats).
inline void move_floats(float* dst, const float* src, int64_t step, int64_t n) {
  const auto move = [&](int64_t at, auto count) {
    std::memcpy(dst + at, src + at * step, decltype(count)::value * sizeof(float));
  };
  using C8 = std::integral_constant<int, 8>;
  using C4 = std::integral_constant<int, 4>;
  using C2 = std::integral_constant<int, 2>;
  using C1 = std::integral_constant<int, 1>;
  if (n >= 8) {
    for (int64_t i = 0; i + 8 <= n; i += 8) move(i, C8{});
    move(n - 8, C8{});
  } else if (n >= 4) {
    move(0, C4{});
    move(n - 4, C4{});
  } else if (n >= 2) {
    move(0, C2{});
    move(n - 2, C2{});
  } else if (n == 1) {
    move(0, C1{});
  }
}

inline void copy_floats(float* dst, const float* src, int64_t n) { move_floats(dst, src, 1, n); }

inline void zero_floats(float* dst, int64_t n) {
  static constexpr float kZeros[8] = {};
  move_floats(dst, kZeros, 0, n);
}

// Asks for the cache lines of floats [p, p + n) ahead of their use: a depthwise plane is 49 lines
// read once, too short a run for the hardware prefetcher to get ahead of the loads.
inline void prefetch_floats(const float* p, int64_t n) {
  constexpr int64_t kLineFloats = 16;
  for (int64_t i = 0; i < n; i += kLineFloats) __builtin_prefetch(p + i);
  if (n > 0) __builtin_prefetch(p + n - 1);
}

// A column split by two and its inverse, 16 floats at a time: even[j] = src[2 * j] and
// odd[j] = src[2 * j + 1] for indices below n, and back (stride 2's phases in the depthwise
// method, dilation 2's in Winograd's). As scalar loops these were most of a stride-2 pass.
inline void split_pairs(const float* src, int64_t n, float* even, float* odd) {
  using Whole = float __attribute__((vector_size(64)));
  using Half = float __attribute__((vector_size(32)));
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    Whole v;
    std::memcpy(&v, src + i, sizeof v);
    const Half e = __builtin_shufflevector(v, v, 0, 2, 4, 6, 8, 10, 12, 14);
    const Half o = __builtin_shufflevector(v, v, 1, 3, 5, 7, 9, 11, 13, 15);
    std::memcpy(even + i / 2, &e, sizeof e);
    std::memcpy(odd + i / 2, &o, sizeof o);
  }
  for (; i < n; ++i) (i % 2 == 0 ? even : odd)[i / 2] = src[i];
}

inline void merge_pairs(const float* even, const float* odd, int64_t n, float* dst) {
  using Half = float __attribute__((vector_size(32)));
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    Half e, o;
    std::memcpy(&e, even + i / 2, sizeof e);
    std::memcpy(&o, odd + i / 2, sizeof o);
    const auto v =
        __builtin_shufflevector(e, o, 0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15);
    std::memcpy(dst + i, &v, sizeof v);
  }
  for (; i < n; ++i) dst[i] = (i % 2 == 0 ? even : odd)[i / 2];
}

// strata::round_to_bf16 on every lane of Bits, a GCC vector of uint32_t holding floats' bits: its
// three cases as lane selects (zero and denormals to signed zero, NaN kept quiet, everything else
// rounded to nearest even, past the largest bf16 to infinity), no branch.
// (In place: a 64-byte vector passed by value would change the ABI of the builds without
// AVX-512.)
template <class Bits>
inline void round_bits_to_bf16(Bits& b) {
  Bits r = (b + 0x7fffu + ((b >> 16) & 1u)) & 0xffff0000u;
  r = (b & 0x7fffffffu) > 0x7f800000u ? (b | 0x00400000u) & 0xffff0000u : r;
  b = (b & 0x7f800000u) == 0 ? b & 0x80000000u : r;
}

// The uint32_t vector as wide as a float vector of `Bytes` (spelled out per width: GCC drops
// vector_size on a dependent type).
template <int Bytes>
struct LaneBits;
template <>
struct LaneBits<16> {
  using type = uint32_t __attribute__((vector_size(16)));
};
template <>
struct LaneBits<32> {
  using type = uint32_t __attribute__((vector_size(32)));
};
template <>
struct LaneBits<64> {
  using type = uint32_t __attribute__((vector_size(64)));
};

// A vector of floats (__m128, __m256, __m512) with every lane rounded to bf16.
template <class V>
inline V round_lanes_to_bf16(V v) {
  typename LaneBits<sizeof(V)>::type b;
  std::memcpy(&b, &v, sizeof b);
  round_bits_to_bf16(b);
  std::memcpy(&v, &b, sizeof v);
  return v;
}

// dst[i] = strata::round_to_bf16(src[i]) for i < n (dst may be src), 16 floats at a time: the
// same bits (precision bf16's inputs, docs/precision.md).
inline void round_floats_to_bf16(const float* src, int64_t n, float* dst) {
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    LaneBits<64>::type b;
    std::memcpy(&b, src + j, sizeof b);
    round_bits_to_bf16(b);
    std::memcpy(dst + j, &b, sizeof b);
  }
  for (; j < n; ++j) dst[j] = strata::round_to_bf16(src[j]);
}

}  // namespace strata::tbb_backend
