// Register-blocked micro-kernels for stride-1 convolution without im2col (internal to backend_tbb).
//
// Both kernels read a "shifted-row" matrix B: row p of B is the contiguous run b + offset[p],
// offset[p] + 1, ... of one zero-padded image (offset[p] encodes channel, kernel row and kernel
// column). With stride 1, output pixel j of a "wide" output (rows as wide as the padded input)
// reads b[offset[p] + j] for tap p, so B is the im2col matrix without ever being written out.
// Columns of the wide output that fall in the padding are computed and discarded.
//
// Why not OpenBLAS here: LeNet-sized convolutions have 6-16 filters and 25-150 taps, so a GEMM
// spends as long packing and im2col as multiplying; these kernels keep a 6x16 (or 4x3 dot-product)
// block of accumulators in registers and read the padded image straight from L1/L2.
#pragma once

#include <algorithm>
#include <cstdint>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

namespace strata::tbb_backend::direct {

// Filters per register block of shifted_gemm, and output columns per block: 8 x 2 AVX-512
// vectors (16 of the 32 registers), or 6 x 2 AVX2 ones (12 of 16). kVector: floats per vector;
// shifted_dot runs its dot products to a multiple of it.
#if defined(__AVX512F__)
inline constexpr int kRows = 8;
inline constexpr int kColumns = 32;
inline constexpr int kVector = 16;
#else
inline constexpr int kRows = 6;
inline constexpr int kColumns = 16;
inline constexpr int kVector = 8;
#endif

// Packs A (rows x taps, element (i, p) = value(i, p)) into blocks of kRows rows interleaved by
// tap, packed[block][p][i], so shifted_gemm broadcasts from one cache line. Rows past the end are
// zero. `packed` holds packed_size(rows, taps) floats.
inline int64_t packed_size(int64_t rows, int64_t taps) {
  return (rows + kRows - 1) / kRows * kRows * taps;
}
template <class Value>
void pack_rows(int64_t rows, int64_t taps, Value value, float* packed) {
  for (int64_t block = 0; block * kRows < rows; ++block) {
    float* out = packed + block * kRows * taps;
    for (int64_t p = 0; p < taps; ++p) {
      for (int64_t i = 0; i < kRows; ++i) {
        const int64_t row = block * kRows + i;
        out[p * kRows + i] = row < rows ? value(row, p) : 0.0f;
      }
    }
  }
}

// The vector type of the kernels below: 16-float AVX-512 registers, or 8-float AVX2 ones. A Mask
// selects the first `left` lanes of a load or store; fold() sums one vector to 8 lanes for sum4.
#if defined(__AVX512F__)
struct Lanes {
  using V = __m512;
  using Mask = __mmask16;
  static V zero() { return _mm512_setzero_ps(); }
  static V splat(const float* p) { return _mm512_set1_ps(*p); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static V load(const float* p, Mask m) { return _mm512_maskz_loadu_ps(m, p); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static Mask mask(int64_t left) {
    return left >= 16 ? Mask(0xFFFF) : left <= 0 ? Mask(0) : Mask((1u << left) - 1);
  }
  static void store(float* p, Mask m, V v) { _mm512_mask_storeu_ps(p, m, v); }
  // (The halves by __builtin_shufflevector: GCC 12's extract and permute intrinsics trip
  // -Wuninitialized inside its own headers.)
  static __m256 fold(V a) {
    return _mm256_add_ps(__builtin_shufflevector(a, a, 0, 1, 2, 3, 4, 5, 6, 7),
                         __builtin_shufflevector(a, a, 8, 9, 10, 11, 12, 13, 14, 15));
  }
};
#elif defined(__AVX2__) && defined(__FMA__)
struct Lanes {
  using V = __m256;
  using Mask = __m256i;
  static V zero() { return _mm256_setzero_ps(); }
  static V splat(const float* p) { return _mm256_broadcast_ss(p); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static V load(const float* p, Mask m) { return _mm256_maskload_ps(p, m); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static Mask mask(int64_t left) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(std::clamp<int64_t>(left, 0, 8))),
                              lane);
  }
  static void store(float* p, Mask m, V v) { _mm256_maskstore_ps(p, m, v); }
  static __m256 fold(V a) { return a; }
};
#endif

// C[i][j] = sum_p A[i][p] * b[offset[p] + j] for i < rows, j < columns, with A packed by
// pack_rows. C is row-major with row stride ldc. Reads b up to max(offset) + round_up(columns,
// kColumns) - 1: callers leave kColumns floats of slack after the padded image.
inline void shifted_gemm(const float* packed, int64_t rows, const float* b, const int32_t* offset,
                         int64_t taps, int64_t columns, float* c, int64_t ldc) {
#if defined(__AVX2__) && defined(__FMA__)
  using V = Lanes::V;
  constexpr int kWidth = kColumns / 2;
  for (int64_t j0 = 0; j0 < columns; j0 += kColumns) {
    const int64_t left = columns - j0;
    const Lanes::Mask mask0 = Lanes::mask(left), mask1 = Lanes::mask(left - kWidth);
    const float* bj = b + j0;
    for (int64_t block = 0; block * kRows < rows; ++block) {
      const float* ap = packed + block * kRows * taps;
      V acc[kRows][2];
#pragma GCC unroll 8
      for (int i = 0; i < kRows; ++i) acc[i][0] = acc[i][1] = Lanes::zero();
      for (int64_t p = 0; p < taps; ++p, ap += kRows) {
        const float* bp = bj + offset[p];
        const V b0 = Lanes::load(bp), b1 = Lanes::load(bp + kWidth);
#pragma GCC unroll 8
        for (int i = 0; i < kRows; ++i) {
          const V av = Lanes::splat(ap + i);
          acc[i][0] = Lanes::fma(av, b0, acc[i][0]);
          acc[i][1] = Lanes::fma(av, b1, acc[i][1]);
        }
      }
      const int64_t block_rows = rows - block * kRows < kRows ? rows - block * kRows : kRows;
      // Constant trip counts, fully unrolled, keep acc in registers (a runtime bound would make
      // GCC spill the whole array to the stack on every iteration of the tap loop).
#pragma GCC unroll 8
      for (int i = 0; i < kRows; ++i) {
        if (i >= block_rows) break;
        float* ci = c + (block * kRows + i) * ldc + j0;
        if (left >= kColumns) {
          Lanes::store(ci, acc[i][0]);
          Lanes::store(ci + kWidth, acc[i][1]);
        } else {
          Lanes::store(ci, mask0, acc[i][0]);
          Lanes::store(ci + kWidth, mask1, acc[i][1]);
        }
      }
    }
  }
#else
  for (int64_t i = 0; i < rows; ++i) {
    const float* ap = packed + (i / kRows) * kRows * taps + i % kRows;
    for (int64_t j = 0; j < columns; ++j) {
      float sum = 0.0f;
      for (int64_t p = 0; p < taps; ++p) sum += ap[p * kRows] * b[offset[p] + j];
      c[i * ldc + j] = sum;
    }
  }
#endif
}

// An output of `rows` rows of `width` pixels, row i read from b + i * b_stride: one run over its
// wide layout (rows b_stride apart, the columns past `width` in the padding) computes
// wide_columns; by_rows says whether computing it a row at a time, each row a whole number of
// `block` columns (shifted_gemm's kColumns, shifted_dot's kVector), computes no more. A 32x32
// image with padding 4, by kColumns = 32: 32 blocks by rows against 40 wide; at 16x16 with
// padding 1: 16 against 9. gemm_columns: the columns shifted_gemm then computes (the arithmetic
// TbbConv2d reports).
inline int64_t wide_columns(int64_t rows, int64_t width, int64_t b_stride) {
  return (rows - 1) * b_stride + width;
}
inline bool by_rows(int64_t rows, int64_t width, int64_t b_stride, int64_t block = kColumns) {
  const auto blocks = [block](int64_t columns) { return (columns + block - 1) / block; };
  return rows * blocks(width) <= blocks(wide_columns(rows, width, b_stride));
}
inline int64_t gemm_columns(int64_t rows, int64_t width, int64_t b_stride) {
  return by_rows(rows, width, b_stride) ? rows * width : wide_columns(rows, width, b_stride);
}

// shifted_gemm of that output a row at a time, straight into C's compact rows: row i of plane r
// at c + r * ldc + i * width. Reads b no further than the wide call does, plus less than kColumns.
inline void shifted_gemm_rows(const float* packed, int64_t filters, const float* b,
                              int64_t b_stride, const int32_t* offset, int64_t taps, int64_t rows,
                              int64_t width, float* c, int64_t ldc) {
  for (int64_t i = 0; i < rows; ++i) {
    shifted_gemm(packed, filters, b + i * b_stride, offset, taps, width, c + i * width, ldc);
  }
}

// The runs of floats shifted_dot sums over: for each of `images` images (A and B advancing by
// their image strides), `segments` runs of `length` floats (A and B advancing by their segment
// strides): one run over the wide output, or one per output row.
struct DotRuns {
  int64_t length = 0;
  int64_t images = 1, a_image_stride = 0, b_image_stride = 0;
  int64_t segments = 1, a_segment_stride = 0, b_segment_stride = 0;
};

// Image `image`'s run pointers in one block of a dot kernel (shifted_dot's, and bf16_direct.cpp's
// on bf16 values: T float or uint16_t): A's rows [i0, i0 + KB) and B at the taps [p0, p0 + QB),
// those past `rows_here` and `taps_here` repeating the last real one.
template <int KB, int QB, class T>
inline void dot_block_pointers(const T* a, int64_t lda, const T* b, const int32_t* offset,
                               const DotRuns& runs, int64_t image, int64_t i0, int rows_here,
                               int64_t p0, int taps_here, const T* (&ai)[KB], const T* (&bp)[QB]) {
#pragma GCC unroll 8
  for (int i = 0; i < KB; ++i) {
    ai[i] = a + image * runs.a_image_stride + (i0 + (i < rows_here ? i : rows_here - 1)) * lda;
  }
#pragma GCC unroll 8
  for (int t = 0; t < QB; ++t) {
    bp[t] = b + image * runs.b_image_stride + offset[p0 + (t < taps_here ? t : taps_here - 1)];
  }
}

#if defined(__AVX2__) && defined(__FMA__)
// Horizontal sums of four vectors, as one 4-float vector: {sum v0, sum v1, sum v2, sum v3}.
inline __m128 sum4(__m256 v0, __m256 v1, __m256 v2, __m256 v3) {
  const __m256 s = _mm256_hadd_ps(_mm256_hadd_ps(v0, v1), _mm256_hadd_ps(v2, v3));
  return _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
}
#endif

#if defined(__AVX2__) && defined(__FMA__)
// One block of shifted_dot: rows [i0, i0 + KB) x taps [p0, p0 + QB), with `rows_here` and
// `taps_here` of them real (the others repeat the last real one and are not stored).
template <int KB, int QB>
void shifted_dot_block(const float* a, int64_t lda, const float* b, const int32_t* offset,
                       const DotRuns& runs, int64_t i0, int rows_here, int64_t p0, int taps_here,
                       float* c, int64_t ldc) {
  using V = Lanes::V;
  V acc[KB][QB];
#pragma GCC unroll 8
  for (int i = 0; i < KB; ++i) {
#pragma GCC unroll 8
    for (int t = 0; t < QB; ++t) acc[i][t] = Lanes::zero();
  }
  for (int64_t image = 0; image < runs.images; ++image) {
    const float* ai[KB];
    const float* bp[QB];
    dot_block_pointers<KB, QB>(a, lda, b, offset, runs, image, i0, rows_here, p0, taps_here, ai,
                               bp);
    for (int64_t segment = 0; segment < runs.segments; ++segment) {
      for (int64_t j = 0; j < runs.length; j += kVector) {
        V bv[QB];
#pragma GCC unroll 8
        for (int t = 0; t < QB; ++t) bv[t] = Lanes::load(bp[t] + j);
#pragma GCC unroll 8
        for (int i = 0; i < KB; ++i) {
          const V av = Lanes::load(ai[i] + j);
#pragma GCC unroll 8
          for (int t = 0; t < QB; ++t) acc[i][t] = Lanes::fma(av, bv[t], acc[i][t]);
        }
      }
#pragma GCC unroll 8
      for (int i = 0; i < KB; ++i) ai[i] += runs.a_segment_stride;
#pragma GCC unroll 8
      for (int t = 0; t < QB; ++t) bp[t] += runs.b_segment_stride;
    }
  }
  // Reduce in groups of four accumulators (row-major over the block): each folded to 8 lanes,
  // then summed by sum4's tree, then scattered. (A scalar sum per accumulator was a chain of 16
  // dependent adds, as slow as the products for LeNet-sized images.)
  alignas(16) float sums[KB * QB + 3];
  constexpr int kCount = KB * QB;
  const auto fold = [&](int k) {
    return k < kCount ? Lanes::fold(acc[k / QB][k % QB]) : _mm256_setzero_ps();
  };
#pragma GCC unroll 8
  for (int g = 0; g < kCount; g += 4) {
    _mm_store_ps(sums + g, sum4(fold(g), fold(g + 1), fold(g + 2), fold(g + 3)));
  }
  for (int i = 0; i < rows_here; ++i) {
    for (int t = 0; t < taps_here; ++t) c[(i0 + i) * ldc + p0 + t] += sums[i * QB + t];
  }
}

template <int KB, int QB>
void shifted_dot_blocks(const float* a, int64_t rows, int64_t lda, const float* b,
                        const int32_t* offset, int64_t taps, const DotRuns& runs, float* c,
                        int64_t ldc) {
  for (int64_t i0 = 0; i0 < rows; i0 += KB) {
    const int rows_here = static_cast<int>(rows - i0 < KB ? rows - i0 : KB);
    for (int64_t p0 = 0; p0 < taps; p0 += QB) {
      const int taps_here = static_cast<int>(taps - p0 < QB ? taps - p0 : QB);
      shifted_dot_block<KB, QB>(a, lda, b, offset, runs, i0, rows_here, p0, taps_here, c, ldc);
    }
  }
}
#endif

// C[i][p] += sum over the runs (DotRuns) and j < runs.length of A_r[i][j] * B_r[offset[p] + j],
// for i < rows, p < taps, where A_r and B_r are a and b advanced to run r (A's row stride lda):
// the weight gradient, a dot product per (filter, tap) over the output of several images. A must
// be zero from `length` up to the next multiple of kVector (and in discarded columns); B is read
// that far past offset[p] + length. C has row stride ldc.
inline void shifted_dot(const float* a, int64_t rows, int64_t lda, const float* b,
                        const int32_t* offset, int64_t taps, const DotRuns& runs, float* c,
                        int64_t ldc) {
#if defined(__AVX512F__)
  // 24 accumulators of the 32 registers either way (12 loads per 24 multiply-adds); pick the
  // shape that wastes no rows when there are 6 filters.
  if (rows % 4 != 0 && rows % 6 == 0) {
    shifted_dot_blocks<6, 4>(a, rows, lda, b, offset, taps, runs, c, ldc);
  } else {
    shifted_dot_blocks<4, 6>(a, rows, lda, b, offset, taps, runs, c, ldc);
  }
#elif defined(__AVX2__) && defined(__FMA__)
  // 12 accumulators either way; pick the shape that wastes no rows when there are 6 filters.
  if (rows % 4 != 0 && rows % 6 == 0) {
    shifted_dot_blocks<6, 2>(a, rows, lda, b, offset, taps, runs, c, ldc);
  } else {
    shifted_dot_blocks<4, 3>(a, rows, lda, b, offset, taps, runs, c, ldc);
  }
#else
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t p = 0; p < taps; ++p) {
      float sum = 0.0f;
      for (int64_t m = 0; m < runs.images; ++m) {
        for (int64_t r = 0; r < runs.segments; ++r) {
          const float* am = a + m * runs.a_image_stride + r * runs.a_segment_stride + i * lda;
          const float* bm = b + m * runs.b_image_stride + r * runs.b_segment_stride + offset[p];
          for (int64_t j = 0; j < runs.length; ++j) sum += am[j] * bm[j];
        }
      }
      c[i * ldc + p] += sum;
    }
  }
#endif
}

}  // namespace strata::tbb_backend::direct
