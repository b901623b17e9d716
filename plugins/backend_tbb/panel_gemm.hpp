// A small matrix product without packing (internal to backend_tbb): C = A B for row-major A
// (rows x depth), B (depth x columns) and C, all three already in L1 or L2.
//
// Winograd's products are many and small (64 filters x 64 channels x 100-250 tiles, 16 or 36 of
// them per block of tiles), and their operands were just written by the transforms: U once per
// pass, V and M per block. OpenBLAS packs both operands on every call, which at these sizes took
// as long as a third of the multiply-adds (docs/performance.md, section 19). Here a register tile
// of kPanelRows rows of C by kPanelVectors vectors of columns is accumulated over the whole depth,
// broadcasting A's values from its rows in place and loading B's rows in place; the last panel of
// columns is masked, so nothing past a row of B or C is read or written.
#pragma once

#include <cstdint>

#include "direct_conv.hpp"

namespace strata::tbb_backend::panel {

#if defined(__AVX512F__)
inline constexpr int kPanelRows = 8, kPanelVectors = 3;  // 24 of the 32 registers accumulate
#else
inline constexpr int kPanelRows = 4, kPanelVectors = 3;  // 12 of the 16
#endif

#if defined(__AVX2__) && defined(__FMA__)
// One register tile: rows [i0, i0 + kPanelRows) of C (the first `rows_here` real: the others
// repeat the last real row of A and are not stored) by the columns [j0, j0 + vectors * width),
// masked past `left` columns.
template <int Vectors>
inline void panel_tile(const float* a, int64_t lda, int rows_here, const float* b, int64_t ldb,
                       int64_t depth, int64_t left, float* c, int64_t ldc) {
  using L = direct::Lanes;
  using V = L::V;
  constexpr int kWidth = direct::kVector;
  typename L::Mask mask[Vectors];
#pragma GCC unroll 4
  for (int v = 0; v < Vectors; ++v) mask[v] = L::mask(left - v * kWidth);
  const bool whole = left >= Vectors * kWidth;
  const float* ai[kPanelRows];
#pragma GCC unroll 8
  for (int i = 0; i < kPanelRows; ++i) ai[i] = a + (i < rows_here ? i : rows_here - 1) * lda;
  V acc[kPanelRows][Vectors];
#pragma GCC unroll 8
  for (int i = 0; i < kPanelRows; ++i) {
#pragma GCC unroll 4
    for (int v = 0; v < Vectors; ++v) acc[i][v] = L::zero();
  }
  for (int64_t p = 0; p < depth; ++p) {
    const float* bp = b + p * ldb;
    V bv[Vectors];
#pragma GCC unroll 4
    for (int v = 0; v < Vectors; ++v) {
      bv[v] = whole ? L::load(bp + v * kWidth) : L::load(bp + v * kWidth, mask[v]);
    }
#pragma GCC unroll 8
    for (int i = 0; i < kPanelRows; ++i) {
      const V av = L::splat(ai[i] + p);
#pragma GCC unroll 4
      for (int v = 0; v < Vectors; ++v) acc[i][v] = L::fma(av, bv[v], acc[i][v]);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < kPanelRows; ++i) {
    if (i >= rows_here) break;
#pragma GCC unroll 4
    for (int v = 0; v < Vectors; ++v) {
      if (whole) {
        L::store(c + i * ldc + v * kWidth, acc[i][v]);
      } else {
        L::store(c + i * ldc + v * kWidth, mask[v], acc[i][v]);
      }
    }
  }
}
#endif

// C (rows x columns, row stride ldc) = A (rows x depth, lda) * B (depth x columns, ldb).
inline void multiply(const float* a, int64_t lda, const float* b, int64_t ldb, int64_t rows,
                     int64_t depth, int64_t columns, float* c, int64_t ldc) {
#if defined(__AVX2__) && defined(__FMA__)
  constexpr int64_t kPanel = int64_t{kPanelVectors} * direct::kVector;
  for (int64_t j0 = 0; j0 < columns; j0 += kPanel) {
    const int64_t left = columns - j0;
    const int64_t vectors =
        left >= kPanel ? kPanelVectors : (left + direct::kVector - 1) / direct::kVector;
    for (int64_t i0 = 0; i0 < rows; i0 += kPanelRows) {
      const int rows_here = static_cast<int>(rows - i0 < kPanelRows ? rows - i0 : kPanelRows);
      const float* ai = a + i0 * lda;
      float* ci = c + i0 * ldc + j0;
      static_assert(kPanelVectors == 3);
      if (vectors == 3) {
        panel_tile<3>(ai, lda, rows_here, b + j0, ldb, depth, left, ci, ldc);
      } else if (vectors == 2) {
        panel_tile<2>(ai, lda, rows_here, b + j0, ldb, depth, left, ci, ldc);
      } else {
        panel_tile<1>(ai, lda, rows_here, b + j0, ldb, depth, left, ci, ldc);
      }
    }
  }
#else
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < columns; ++j) {
      float sum = 0.0f;
      for (int64_t p = 0; p < depth; ++p) sum += a[i * lda + p] * b[p * ldb + j];
      c[i * ldc + j] = sum;
    }
  }
#endif
}

}  // namespace strata::tbb_backend::panel
