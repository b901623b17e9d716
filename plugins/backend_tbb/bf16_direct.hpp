// backend_tbb: the direct method's products in bf16 (precision bf16, docs/precision.md), internal
// to backend_tbb.
//
// The direct method (direct_conv.hpp) multiplies a "shifted-row" matrix: row p of B is the run of
// a zero-padded image starting at offset[p] (channel, kernel row, kernel column). Here the rows go
// in pairs of channels at the same kernel tap: the padded image is stored as words of two bfloat16
// (pair_image), word j of pair plane q = (round(x[2q][j]), round(x[2q + 1][j])), the low half
// first, exactly what vdpbf16ps multiplies pairwise and adds into float lane j; the weights are
// packed the same way (pack_pair_rows). Each product of two bf16 values is exact in float and the
// sums stay in float, so the result is the fp32 direct kernel's on rounded inputs (and the
// reference's emulation's) up to the order of the float sums, with half the multiply
// instructions.
//
// The weight gradient (shifted_dot_pairs) pairs consecutive positions instead: plain bf16 rows of
// dy and of the padded image, read at any element offset.
//
// Functions that execute AVX-512 or BF16 instructions carry their own target attribute (as
// bf16_gemm.cpp's do): call them only where bf16::cpu_supported() holds, which TbbConv2d checks
// before any bf16 pass.
#pragma once

#include <cstdint>
#include <cstring>

#include "direct_conv.hpp"
#include "strata/ops.hpp"

namespace strata::tbb_backend::bf16 {

// The word of two values: round_to_bf16(low) in the low half, round_to_bf16(high) in the high.
inline uint32_t pair_word(float low, float high) {
  uint32_t a, b;
  const float ra = round_to_bf16(low), rb = round_to_bf16(high);
  std::memcpy(&a, &ra, sizeof a);
  std::memcpy(&b, &rb, sizeof b);
  return (b & 0xffff0000u) | (a >> 16);
}

// Packs A (rows x pair taps; value(i, q, h) is half h of pair tap q of row i) into blocks of
// direct::kRows rows interleaved by pair tap, packed[block][q][i], as direct::pack_rows does with
// floats. Rows past the end are zero. `packed` holds direct::packed_size(rows, pair_taps) words.
template <class Value>
void pack_pair_rows(int64_t rows, int64_t pair_taps, Value value, uint32_t* packed) {
  constexpr int64_t kRows = direct::kRows;
  for (int64_t block = 0; block * kRows < rows; ++block) {
    uint32_t* out = packed + block * kRows * pair_taps;
    for (int64_t q = 0; q < pair_taps; ++q) {
      for (int64_t i = 0; i < kRows; ++i) {
        const int64_t row = block * kRows + i;
        out[q * kRows + i] = row < rows ? pair_word(value(row, q, 0), value(row, q, 1)) : 0u;
      }
    }
  }
}

// Row i < rows of dst (dst_stride words apart), j < width: pair_word(a[i][j], b[i][j]), rows of a
// and b src_stride floats apart; b null: the high halves zero (an odd channel count's last pair).
void interleave_rows(const float* a, const float* b, int64_t rows, int64_t width,
                     int64_t src_stride, uint32_t* dst, int64_t dst_stride);

// C[i][j] = sum over pair taps q of the two products of A's pair (i, q) with the words
// b[offset[q] + j], for i < rows, j < columns: direct::shifted_gemm on pairs (same register tile,
// same columns read, in words). C row-major with row stride ldc; with `accumulate` the sums are
// added to C's values.
void shifted_gemm_pairs(const uint32_t* packed, int64_t rows, const uint32_t* b,
                        const int32_t* offset, int64_t pair_taps, int64_t columns, float* c,
                        int64_t ldc, bool accumulate);

// Row i < rows of dst (dst_stride apart), j < width: the bf16 of src[i][j] (round_to_bf16's top
// half), rows of src src_stride floats apart.
void convert_rows(const float* src, int64_t rows, int64_t width, int64_t src_stride, uint16_t* dst,
                  int64_t dst_stride);

// direct::shifted_dot on bf16 rows: C[i][p] += sum over the runs and j < runs.length of
// A_r[i][j] * B_r[offset[p] + j], A and B rows of bf16 values (element strides as DotRuns gives
// them, in bf16), 32 values (16 pairs) per vdpbf16ps. A must be zero from `length` up to the next
// multiple of 32, and B is read that far.
void shifted_dot_pairs(const uint16_t* a, int64_t rows, int64_t lda, const uint16_t* b,
                       const int32_t* offset, int64_t taps, const direct::DotRuns& runs, float* c,
                       int64_t ldc);

}  // namespace strata::tbb_backend::bf16
