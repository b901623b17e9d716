// Small matrix products without packing (internal to backend_tbb): C = A B (or C += A B) for A
// (rows x depth, row-major or transposed), row-major B (depth x columns) and C; and C += A B^T for
// row-major A (rows x depth) and B (columns x depth). All three already in L1 or L2.
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
#include <type_traits>

#include "direct_conv.hpp"

namespace strata::tbb_backend::panel {

// A's element (i, p) is at data[i * row + p * column]: row-major (lda, 1) or its transpose (1,
// lda).
struct Matrix {
  const float* data;
  int64_t row, column;
};

#if defined(__AVX512F__)
inline constexpr int kPanelRows = 8, kPanelVectors = 3;  // 24 of the 32 registers accumulate
inline constexpr int kDotRows = 6;                       // multiply_nt: 6 x 4 of them
#else
inline constexpr int kPanelRows = 4, kPanelVectors = 3;  // 12 of the 16
inline constexpr int kDotRows = 2;                       // 2 x 4
#endif
inline constexpr int kDotColumns = 4;  // one sum4 per row of a multiply_nt tile
// multiply_nt pays for its final sums from about this depth (docs/performance.md, section 19).
inline constexpr int64_t kDotMinDepth = 96;

#if defined(__AVX2__) && defined(__FMA__)
// One register tile: rows [i0, i0 + kPanelRows) of C (the first `rows_here` real: the others
// repeat the last real row of A and are not stored) by the columns [j0, j0 + vectors * width),
// masked past `left` columns; added to C's values with `accumulate`. A is row-major
// (a.column == 1, a stride the compiler knows: a runtime one cost the Winograd products 4 %)
// or, with Transposed, its transpose.
template <int Vectors, bool Transposed>
inline void panel_tile(Matrix a, int rows_here, const float* b, int64_t ldb, int64_t depth,
                       int64_t left, bool accumulate, float* c, int64_t ldc) {
  using L = direct::Lanes;
  using V = L::V;
  constexpr int kWidth = direct::kVector;
  typename L::Mask mask[Vectors];
#pragma GCC unroll 4
  for (int v = 0; v < Vectors; ++v) mask[v] = L::mask(left - v * kWidth);
  const bool whole = left >= Vectors * kWidth;
  const float* ai[kPanelRows];
#pragma GCC unroll 8
  for (int i = 0; i < kPanelRows; ++i) ai[i] = a.data + (i < rows_here ? i : rows_here - 1) * a.row;
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
      const V av = L::splat(ai[i] + (Transposed ? p * a.column : p));
#pragma GCC unroll 4
      for (int v = 0; v < Vectors; ++v) acc[i][v] = L::fma(av, bv[v], acc[i][v]);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < kPanelRows; ++i) {
    if (i >= rows_here) break;
#pragma GCC unroll 4
    for (int v = 0; v < Vectors; ++v) {
      float* ci = c + i * ldc + v * kWidth;
      if (whole) {
        L::store(ci, accumulate ? acc[i][v] + L::load(ci) : acc[i][v]);
      } else {
        L::store(ci, mask[v], accumulate ? acc[i][v] + L::load(ci, mask[v]) : acc[i][v]);
      }
    }
  }
}
#endif

// C (rows x columns, row stride ldc) = A (rows x depth) * B (depth x columns, ldb), or with
// `accumulate` C += A * B.
inline void multiply(Matrix a, const float* b, int64_t ldb, int64_t rows, int64_t depth,
                     int64_t columns, float* c, int64_t ldc, bool accumulate = false) {
#if defined(__AVX2__) && defined(__FMA__)
  const bool transposed = a.column != 1;
  constexpr int64_t kPanel = int64_t{kPanelVectors} * direct::kVector;
  const auto tile = [&](int64_t i0, int64_t j0) {
    const int64_t left = columns - j0;
    const int64_t vectors =
        left >= kPanel ? kPanelVectors : (left + direct::kVector - 1) / direct::kVector;
    const int rows_here = static_cast<int>(rows - i0 < kPanelRows ? rows - i0 : kPanelRows);
    const Matrix ai{a.data + i0 * a.row, a.row, a.column};
    float* ci = c + i0 * ldc + j0;
    static_assert(kPanelVectors == 3);
    const auto run = [&](auto transposed) {
      constexpr bool kT = decltype(transposed)::value;
      if (vectors == 3) {
        panel_tile<3, kT>(ai, rows_here, b + j0, ldb, depth, left, accumulate, ci, ldc);
      } else if (vectors == 2) {
        panel_tile<2, kT>(ai, rows_here, b + j0, ldb, depth, left, accumulate, ci, ldc);
      } else {
        panel_tile<1, kT>(ai, rows_here, b + j0, ldb, depth, left, accumulate, ci, ldc);
      }
    };
    if (transposed) {
      run(std::true_type{});
    } else {
      run(std::false_type{});
    }
  };
  // Row-major A: a panel of B's columns stays in L1 while every block of A's rows (whole lines)
  // passes over it. Transposed A: a block of rows takes part of a line per p, so the block stays
  // and B's panels pass instead (pointwise backward_data 256 <- 64 at 28x28: 3.3 -> 2.8 ms).
  if (transposed) {
    for (int64_t i0 = 0; i0 < rows; i0 += kPanelRows) {
      for (int64_t j0 = 0; j0 < columns; j0 += kPanel) tile(i0, j0);
    }
  } else {
    for (int64_t j0 = 0; j0 < columns; j0 += kPanel) {
      for (int64_t i0 = 0; i0 < rows; i0 += kPanelRows) tile(i0, j0);
    }
  }
#else
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < columns; ++j) {
      float sum = 0.0f;
      for (int64_t p = 0; p < depth; ++p) sum += a.data[i * a.row + p * a.column] * b[p * ldb + j];
      c[i * ldc + j] = accumulate ? c[i * ldc + j] + sum : sum;
    }
  }
#endif
}

#if defined(__AVX2__) && defined(__FMA__)
// One tile of multiply_nt: C[i0 + r][j0 + q] += dot(A row r, B row q) for r < kDotRows, q <
// kDotColumns (the first rows_here and columns_here real: the others repeat the last real row and
// are not stored). Each dot product is kept in a vector over the depth, masked past its end, then
// the four of a row are summed at once by sum4.
inline void dot_tile(const float* a, int64_t lda, int rows_here, const float* b, int64_t ldb,
                     int columns_here, int64_t depth, float* c, int64_t ldc) {
  using L = direct::Lanes;
  using V = L::V;
  constexpr int kWidth = direct::kVector;
  const float* ar[kDotRows];
  const float* bq[kDotColumns];
#pragma GCC unroll 8
  for (int r = 0; r < kDotRows; ++r) ar[r] = a + (r < rows_here ? r : rows_here - 1) * lda;
#pragma GCC unroll 4
  for (int q = 0; q < kDotColumns; ++q) bq[q] = b + (q < columns_here ? q : columns_here - 1) * ldb;
  V acc[kDotRows][kDotColumns];
#pragma GCC unroll 8
  for (int r = 0; r < kDotRows; ++r) {
#pragma GCC unroll 4
    for (int q = 0; q < kDotColumns; ++q) acc[r][q] = L::zero();
  }
  const auto step = [&](int64_t p, auto load) {
    V bv[kDotColumns];
#pragma GCC unroll 4
    for (int q = 0; q < kDotColumns; ++q) bv[q] = load(bq[q] + p);
#pragma GCC unroll 8
    for (int r = 0; r < kDotRows; ++r) {
      const V av = load(ar[r] + p);
#pragma GCC unroll 4
      for (int q = 0; q < kDotColumns; ++q) acc[r][q] = L::fma(av, bv[q], acc[r][q]);
    }
  };
  int64_t p = 0;
  for (; p + kWidth <= depth; p += kWidth) step(p, [](const float* x) { return L::load(x); });
  if (p < depth) {
    const typename L::Mask mask = L::mask(depth - p);
    step(p, [&](const float* x) { return L::load(x, mask); });
  }
#pragma GCC unroll 8
  for (int r = 0; r < kDotRows; ++r) {
    if (r >= rows_here) break;
    alignas(16) float sums[kDotColumns];
    _mm_store_ps(sums, direct::sum4(L::fold(acc[r][0]), L::fold(acc[r][1]), L::fold(acc[r][2]),
                                    L::fold(acc[r][3])));
    float* cr = c + r * ldc;
    for (int q = 0; q < columns_here; ++q) cr[q] += sums[q];
  }
}
#endif

// C (rows x columns, row stride ldc) += A (rows x depth, lda) * B^T, B (columns x depth, ldb):
// every element of C a dot product of a row of A and a row of B.
inline void multiply_nt(const float* a, int64_t lda, const float* b, int64_t ldb, int64_t rows,
                        int64_t columns, int64_t depth, float* c, int64_t ldc) {
#if defined(__AVX2__) && defined(__FMA__)
  for (int64_t i0 = 0; i0 < rows; i0 += kDotRows) {
    const int rows_here = static_cast<int>(rows - i0 < kDotRows ? rows - i0 : kDotRows);
    for (int64_t j0 = 0; j0 < columns; j0 += kDotColumns) {
      const int columns_here =
          static_cast<int>(columns - j0 < kDotColumns ? columns - j0 : kDotColumns);
      dot_tile(a + i0 * lda, lda, rows_here, b + j0 * ldb, ldb, columns_here, depth,
               c + i0 * ldc + j0, ldc);
    }
  }
#else
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < columns; ++j) {
      float sum = 0.0f;
      for (int64_t p = 0; p < depth; ++p) sum += a[i * lda + p] * b[j * ldb + p];
      c[i * ldc + j] += sum;
    }
  }
#endif
}

}  // namespace strata::tbb_backend::panel
