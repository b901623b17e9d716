#include "bf16_direct.hpp"

#include <immintrin.h>

#define STRATA_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16")))

namespace strata::tbb_backend::bf16 {

namespace {

// The row loops' masks: whole vectors of 16, then `tail` lanes.
struct RowMasks {
  int64_t whole;
  __mmask16 tail;
};
inline RowMasks row_masks(int64_t width) {
  return {width / 16, static_cast<__mmask16>((1u << (width % 16)) - 1u)};
}

// vcvtne2ps2bf16: `low` into the lower 16 halves, `high` into the upper; then (low j, high j)
// side by side.
STRATA_BF16_TARGET inline __m512i pair_words(__m512 low, __m512 high, __m512i interleave) {
  return _mm512_permutexvar_epi16(interleave, (__m512i)_mm512_cvtne2ps_pbh(high, low));
}

}  // namespace

STRATA_BF16_TARGET void interleave_rows(const float* a, const float* b, int64_t rows, int64_t width,
                                        int64_t src_stride, uint32_t* dst, int64_t dst_stride) {
  alignas(64) static constexpr uint16_t kInterleave[32] = {
      0, 16, 1, 17, 2,  18, 3,  19, 4,  20, 5,  21, 6,  22, 7,  23,
      8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  const __m512i interleave = _mm512_load_si512(kInterleave);
  const RowMasks m = row_masks(width);
  for (int64_t i = 0; i < rows; ++i) {
    const float* ai = a + i * src_stride;
    const float* bi = b != nullptr ? b + i * src_stride : nullptr;
    uint32_t* out = dst + i * dst_stride;
    for (int64_t v = 0; v < m.whole; ++v) {
      const __m512 high = bi != nullptr ? _mm512_loadu_ps(bi + 16 * v) : _mm512_setzero_ps();
      _mm512_storeu_si512(out + 16 * v, pair_words(_mm512_loadu_ps(ai + 16 * v), high, interleave));
    }
    if (m.tail != 0) {
      const int64_t j = 16 * m.whole;
      const __m512 high =
          bi != nullptr ? _mm512_maskz_loadu_ps(m.tail, bi + j) : _mm512_setzero_ps();
      _mm512_mask_storeu_epi32(out + j, m.tail,
                               pair_words(_mm512_maskz_loadu_ps(m.tail, ai + j), high, interleave));
    }
  }
}

STRATA_BF16_TARGET void shifted_gemm_pairs(const uint32_t* packed, int64_t rows, const uint32_t* b,
                                           const int32_t* offset, int64_t pair_taps,
                                           int64_t columns, float* c, int64_t ldc,
                                           bool accumulate) {
  constexpr int kRows = 8, kWidth = 16, kColumns = 2 * kWidth;
  static_assert(direct::kRows == kRows || direct::kRows == 6,
                "the packing's row blocks (direct::kRows) must match");
  constexpr int64_t kPackRows = direct::kRows;
  for (int64_t j0 = 0; j0 < columns; j0 += kColumns) {
    const int64_t left = columns - j0;
    const auto mask_of = [](int64_t n) {
      return n >= 16 ? __mmask16(0xFFFF) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1u);
    };
    const __mmask16 mask0 = mask_of(left), mask1 = mask_of(left - kWidth);
    const uint32_t* bj = b + j0;
    for (int64_t block = 0; block * kPackRows < rows; ++block) {
      const uint32_t* ap = packed + block * kPackRows * pair_taps;
      __m512 acc[kRows][2];
#pragma GCC unroll 8
      for (int i = 0; i < kRows; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
      for (int64_t q = 0; q < pair_taps; ++q, ap += kPackRows) {
        const uint32_t* bq = bj + offset[q];
        const __m512bh b0 = (__m512bh)_mm512_loadu_si512(bq);
        const __m512bh b1 = (__m512bh)_mm512_loadu_si512(bq + kWidth);
#pragma GCC unroll 8
        for (int i = 0; i < kPackRows; ++i) {
          const __m512bh av = (__m512bh)_mm512_set1_epi32(static_cast<int>(ap[i]));
          acc[i][0] = _mm512_dpbf16_ps(acc[i][0], av, b0);
          acc[i][1] = _mm512_dpbf16_ps(acc[i][1], av, b1);
        }
      }
      const int64_t block_rows =
          rows - block * kPackRows < kPackRows ? rows - block * kPackRows : kPackRows;
#pragma GCC unroll 8
      for (int i = 0; i < kPackRows; ++i) {
        if (i >= block_rows) break;
        float* ci = c + (block * kPackRows + i) * ldc + j0;
        if (accumulate) {
          acc[i][0] = _mm512_add_ps(acc[i][0], _mm512_maskz_loadu_ps(mask0, ci));
          acc[i][1] = _mm512_add_ps(acc[i][1], _mm512_maskz_loadu_ps(mask1, ci + kWidth));
        }
        if (left >= kColumns) {
          _mm512_storeu_ps(ci, acc[i][0]);
          _mm512_storeu_ps(ci + kWidth, acc[i][1]);
        } else {
          _mm512_mask_storeu_ps(ci, mask0, acc[i][0]);
          _mm512_mask_storeu_ps(ci + kWidth, mask1, acc[i][1]);
        }
      }
    }
  }
}

STRATA_BF16_TARGET void convert_rows(const float* src, int64_t rows, int64_t width,
                                     int64_t src_stride, uint16_t* dst, int64_t dst_stride) {
  const RowMasks m = row_masks(width);
  for (int64_t i = 0; i < rows; ++i) {
    const float* in = src + i * src_stride;
    uint16_t* out = dst + i * dst_stride;
    for (int64_t v = 0; v < m.whole; ++v) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 16 * v),
                          (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(in + 16 * v)));
    }
    if (m.tail != 0) {
      const int64_t j = 16 * m.whole;
      _mm256_mask_storeu_epi16(out + j, m.tail,
                               (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m.tail, in + j)));
    }
  }
}

namespace {

// The sum of v's 16 lanes. (Halves by __builtin_shufflevector: GCC 12's extract intrinsics, which
// _mm512_reduce_add_ps uses, trip -Wmaybe-uninitialized inside its own headers.)
STRATA_BF16_TARGET inline float sum16(__m512 v) {
  const __m256 h8 = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
                    __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m128 h4 =
      __builtin_shufflevector(h8, h8, 0, 1, 2, 3) + __builtin_shufflevector(h8, h8, 4, 5, 6, 7);
  return (h4[0] + h4[2]) + (h4[1] + h4[3]);
}

// One block of shifted_dot_pairs: rows [i0, i0 + KB) x taps [p0, p0 + QB), `rows_here` and
// `taps_here` of them real (the others repeat the last real one and are not stored).
template <int KB, int QB>
STRATA_BF16_TARGET void dot_pairs_block(const uint16_t* a, int64_t lda, const uint16_t* b,
                                        const int32_t* offset, const direct::DotRuns& runs,
                                        int64_t i0, int rows_here, int64_t p0, int taps_here,
                                        float* c, int64_t ldc) {
  __m512 acc[KB][QB];
#pragma GCC unroll 8
  for (int i = 0; i < KB; ++i) {
#pragma GCC unroll 8
    for (int t = 0; t < QB; ++t) acc[i][t] = _mm512_setzero_ps();
  }
  for (int64_t image = 0; image < runs.images; ++image) {
    const uint16_t* ai[KB];
    const uint16_t* bp[QB];
    direct::dot_block_pointers<KB, QB>(a, lda, b, offset, runs, image, i0, rows_here, p0, taps_here,
                                       ai, bp);
    for (int64_t segment = 0; segment < runs.segments; ++segment) {
      for (int64_t j = 0; j < runs.length; j += 32) {
        __m512bh bv[QB];
#pragma GCC unroll 8
        for (int t = 0; t < QB; ++t) bv[t] = (__m512bh)_mm512_loadu_si512(bp[t] + j);
#pragma GCC unroll 8
        for (int i = 0; i < KB; ++i) {
          const __m512bh av = (__m512bh)_mm512_loadu_si512(ai[i] + j);
#pragma GCC unroll 8
          for (int t = 0; t < QB; ++t) acc[i][t] = _mm512_dpbf16_ps(acc[i][t], av, bv[t]);
        }
      }
#pragma GCC unroll 8
      for (int i = 0; i < KB; ++i) ai[i] += runs.a_segment_stride;
#pragma GCC unroll 8
      for (int t = 0; t < QB; ++t) bp[t] += runs.b_segment_stride;
    }
  }
  for (int i = 0; i < rows_here; ++i) {
    for (int t = 0; t < taps_here; ++t) {
      c[(i0 + i) * ldc + p0 + t] += sum16(acc[i][t]);
    }
  }
}

}  // namespace

STRATA_BF16_TARGET void shifted_dot_pairs(const uint16_t* a, int64_t rows, int64_t lda,
                                          const uint16_t* b, const int32_t* offset, int64_t taps,
                                          const direct::DotRuns& runs, float* c, int64_t ldc) {
  // 24 accumulators, as the fp32 kernel: 6 x 4 when there are 6 filters, else 4 x 6.
  const bool six = rows % 4 != 0 && rows % 6 == 0;
  const int64_t kb = six ? 6 : 4, qb = six ? 4 : 6;
  for (int64_t i0 = 0; i0 < rows; i0 += kb) {
    const int rows_here = static_cast<int>(rows - i0 < kb ? rows - i0 : kb);
    for (int64_t p0 = 0; p0 < taps; p0 += qb) {
      const int taps_here = static_cast<int>(taps - p0 < qb ? taps - p0 : qb);
      if (six) {
        dot_pairs_block<6, 4>(a, lda, b, offset, runs, i0, rows_here, p0, taps_here, c, ldc);
      } else {
        dot_pairs_block<4, 6>(a, lda, b, offset, runs, i0, rows_here, p0, taps_here, c, ldc);
      }
    }
  }
}

}  // namespace strata::tbb_backend::bf16
