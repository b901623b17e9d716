#include "bf16_direct.hpp"

#include <immintrin.h>

#define STRATA_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16")))

namespace strata::tbb_backend::bf16 {

STRATA_BF16_TARGET void interleave_rows(const float* a, const float* b, int64_t n, uint32_t* dst) {
  alignas(64) static constexpr uint16_t kInterleave[32] = {
      0, 16, 1, 17, 2,  18, 3,  19, 4,  20, 5,  21, 6,  22, 7,  23,
      8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  const __m512i interleave = _mm512_load_si512(kInterleave);
  for (int64_t j = 0; j < n; j += 16) {
    const int64_t lanes = n - j < 16 ? n - j : 16;
    const __mmask16 mask = static_cast<__mmask16>((1u << lanes) - 1u);
    const __m512 low = _mm512_maskz_loadu_ps(mask, a + j);
    const __m512 high = b != nullptr ? _mm512_maskz_loadu_ps(mask, b + j) : _mm512_setzero_ps();
    // vcvtne2ps2bf16: `low` into the lower 16 halves, `high` into the upper; then (low j, high j)
    // side by side.
    const __m512i both = (__m512i)_mm512_cvtne2ps_pbh(high, low);
    _mm512_mask_storeu_epi32(dst + j, mask, _mm512_permutexvar_epi16(interleave, both));
  }
}

STRATA_BF16_TARGET void shifted_gemm_pairs(const uint32_t* packed, int64_t rows, const uint32_t* b,
                                           const int32_t* offset, int64_t pair_taps,
                                           int64_t columns, float* c, int64_t ldc) {
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

}  // namespace strata::tbb_backend::bf16
