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

}  // namespace strata::tbb_backend
