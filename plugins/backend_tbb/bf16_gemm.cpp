#include "bf16_gemm.hpp"

#include <immintrin.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "strata/error.hpp"
#include "strata/isa.hpp"
#include "tbb_kernels.hpp"

// Every function that executes AVX-512 or BF16 instructions carries this target, whatever the
// flags the file is compiled with; it touches raw pointers only (no std containers or templates
// instantiated elsewhere: their out-of-line copies must not pick up AVX-512 code).
#define STRATA_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16")))

namespace strata::tbb_backend::bf16 {

bool cpu_supported() {
  const char* off = std::getenv("STRATA_NO_AVX512BF16");
  if (off != nullptr && *off != '\0') return false;
  return isa::cpu_has_avx512_bf16();
}

void require_cpu(std::string_view who) {
  if (cpu_supported()) return;
  const char* off = std::getenv("STRATA_NO_AVX512BF16");
  fail(
      "{}: precision bf16 needs a CPU with AVX512-BF16 (cpuid flag avx512_bf16, with AVX-512 F, "
      "BW, DQ and VL); {}. Use precision fp32, or backend reference (an emulation, slow)",
      who,
      off != nullptr && *off != '\0' ? "STRATA_NO_AVX512BF16 is set, so it is treated as missing"
                                     : "this CPU lacks it");
}

Operand matrix_a(const float* a, int64_t lda, bool trans) {
  // op(A)(i, k) = trans ? a[k * lda + i] : a[i * lda + k]
  return trans ? Operand::along_i(a, lda) : Operand::along_k(a, lda);
}

Operand matrix_b(const float* b, int64_t ldb, bool trans) {
  // op(B)(k, j) = trans ? b[j * ldb + k] : b[k * ldb + j]; i is the column j
  return trans ? Operand::along_k(b, ldb) : Operand::along_i(b, ldb);
}

namespace {

// Offset of element t of the operand's contiguous axis.
inline int64_t along(const Operand& s, int64_t t) {
  return s.run > 0 ? (t / s.run) * s.run_stride + t % s.run : t;
}

// n (0..16) floats of the contiguous axis from element t, at `base` (the other axis' offset);
// the rest of the vector zero.
STRATA_BF16_TARGET inline __m512 load_run(const Operand& s, int64_t base, int64_t t, int64_t n) {
  if (n <= 0) return _mm512_setzero_ps();
  const __mmask16 mask = static_cast<__mmask16>((1u << n) - 1u);
  if (s.run == 0 || t % s.run + n <= s.run) {
    return _mm512_maskz_loadu_ps(mask, s.data + base + along(s, t));
  }
  float gathered[16] = {};
  for (int64_t j = 0; j < n; ++j) gathered[j] = s.data[base + along(s, t + j)];
  return _mm512_loadu_ps(gathered);
}

// Rows or columns contiguous (along_i): per pair of k, two rows of up to 16 indices
// converted together and interleaved into (k, k + 1) words.
STRATA_BF16_TARGET void pack_index_contiguous(const Operand& s, int64_t count, int64_t k,
                                              int64_t width, int64_t first, int64_t end,
                                              uint16_t* out) {
  const int64_t p_count = pairs(k);
  alignas(64) static constexpr uint16_t kInterleave[32] = {
      0, 16, 1, 17, 2,  18, 3,  19, 4,  20, 5,  21, 6,  22, 7,  23,
      8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  const __m512i interleave = _mm512_load_si512(kInterleave);
  for (int64_t panel = first; panel < end; ++panel) {
    uint16_t* dst = out + panel * width * p_count * 2;
    const int64_t i0 = panel * width;
    for (int64_t q = 0; q < p_count; ++q) {
      const int64_t k0 = 2 * q, k1 = 2 * q + 1;
      for (int64_t g = 0; g < width; g += 16) {
        const int64_t lanes = std::min<int64_t>(16, width - g);
        const int64_t valid = std::clamp<int64_t>(count - (i0 + g), 0, lanes);
        const __m512 v0 = load_run(s, k0 * s.stride, i0 + g, valid);
        const __m512 v1 = k1 < k ? load_run(s, k1 * s.stride, i0 + g, valid) : _mm512_setzero_ps();
        const __m512i both = (__m512i)_mm512_cvtne2ps_pbh(v1, v0);  // v0 low, v1 high
        const __m512i words = _mm512_permutexvar_epi16(interleave, both);
        const __mmask32 mask =
            lanes == 16 ? ~__mmask32{0} : static_cast<__mmask32>((1u << (2 * lanes)) - 1u);
        _mm512_mask_storeu_epi16(dst + (q * width + g) * 2, mask, words);
      }
    }
  }
}

// k contiguous (along_k): per index, 32 values of k converted in order (16 words of pairs),
// then the 16 x width words transposed into the panel.
STRATA_BF16_TARGET void pack_k_contiguous(const Operand& s, int64_t count, int64_t k, int64_t width,
                                          int64_t first, int64_t end, uint16_t* out) {
  const int64_t p_count = pairs(k);
  alignas(64) uint32_t words[kColumns][16];
  for (int64_t panel = first; panel < end; ++panel) {
    uint32_t* dst = reinterpret_cast<uint32_t*>(out + panel * width * p_count * 2);
    const int64_t i0 = panel * width;
    for (int64_t k0 = 0; k0 < k; k0 += 32) {
      const int64_t n = std::min<int64_t>(32, k - k0);
      for (int64_t j = 0; j < width; ++j) {
        if (i0 + j >= count) {
          _mm512_store_si512(words[j], _mm512_setzero_si512());
          continue;
        }
        const int64_t base = (i0 + j) * s.stride;
        const __m512 lo = load_run(s, base, k0, std::min<int64_t>(16, n));
        const __m512 hi = load_run(s, base, k0 + 16, n - 16);
        _mm512_store_si512(words[j], (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
      }
      const int64_t q0 = k0 / 2, q_count = std::min<int64_t>(16, p_count - q0);
      for (int64_t q = 0; q < q_count; ++q) {
        uint32_t* row = dst + (q0 + q) * width;
        for (int64_t j = 0; j < width; ++j) row[j] = words[j][q];
      }
    }
  }
}

// Two float vectors converted to bf16 and interleaved into 16 words (v0[j], v1[j]), stored at
// out (lanes words, the rest of the vector not written).
STRATA_BF16_TARGET inline void store_pairs(__m512 v0, __m512 v1, int64_t lanes, uint16_t* out) {
  alignas(64) static constexpr uint16_t kInterleave[32] = {
      0, 16, 1, 17, 2,  18, 3,  19, 4,  20, 5,  21, 6,  22, 7,  23,
      8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  const __m512i both = (__m512i)_mm512_cvtne2ps_pbh(v1, v0);
  const __m512i words = _mm512_permutexvar_epi16(_mm512_load_si512(kInterleave), both);
  const __mmask32 mask =
      lanes >= 16 ? ~__mmask32{0} : static_cast<__mmask32>((1u << (2 * lanes)) - 1u);
  _mm512_mask_storeu_epi16(out, mask, words);
}

// Row `row` of the col matrix: its offset from a column's base, and its tap (r * dh, s * dw).
struct Tap {
  int32_t offset, dr, ds;
};
inline Tap tap_of(const Im2col& g, int64_t row) {
  return {g.tap_offset[row], g.tap_dr[row], g.tap_ds[row]};
}

// Entries (row, j) for 16 columns j from `column` (valid of them), gathered with the padding zero.
STRATA_BF16_TARGET inline __m512 gather_columns(const Im2col& g, const Tap& t, int64_t column,
                                                int64_t valid) {
  if (valid <= 0) return _mm512_setzero_ps();
  const __mmask16 in_range = static_cast<__mmask16>(valid >= 16 ? 0xffffu : (1u << valid) - 1u);
  const __m512i ih =
      _mm512_add_epi32(_mm512_maskz_loadu_epi32(in_range, g.ih0 + column), _mm512_set1_epi32(t.dr));
  const __m512i iw =
      _mm512_add_epi32(_mm512_maskz_loadu_epi32(in_range, g.iw0 + column), _mm512_set1_epi32(t.ds));
  __mmask16 mask = in_range;
  mask &= _mm512_cmpge_epi32_mask(ih, _mm512_setzero_si512());
  mask &= _mm512_cmplt_epi32_mask(ih, _mm512_set1_epi32(static_cast<int32_t>(g.in_h)));
  mask &= _mm512_cmpge_epi32_mask(iw, _mm512_setzero_si512());
  mask &= _mm512_cmplt_epi32_mask(iw, _mm512_set1_epi32(static_cast<int32_t>(g.in_w)));
  const __m512i index = _mm512_add_epi32(_mm512_maskz_loadu_epi32(in_range, g.base + column),
                                         _mm512_set1_epi32(t.offset));
  return _mm512_mask_i32gather_ps(_mm512_setzero_ps(), mask, index, g.data, 4);
}

// 16 columns of the col matrix cut into runs of consecutive input positions (same image and
// input row, stride 1): lane L of run r reads data + start[r] + L + (the row's offset).
struct Runs {
  int count = 0;
  __mmask16 lanes[16];
  int32_t start[16], ih0[16];
};

// Row `row` of the col matrix at 16 columns from `column` (valid of them): a zero-masked load per
// run (independent loads, OR-ed), or a gather when the stride is not 1.
STRATA_BF16_TARGET inline __m512 run_values(const Im2col& g, const Runs& runs, __m512i iw0,
                                            int64_t row, int64_t column, int64_t valid) {
  const Tap t = tap_of(g, row);
  if (!g.unit_stride) return gather_columns(g, t, column, valid);
  const __m512i iw = _mm512_add_epi32(iw0, _mm512_set1_epi32(t.ds));
  const __mmask16 columns_in =
      _mm512_cmpge_epi32_mask(iw, _mm512_setzero_si512()) &
      _mm512_cmplt_epi32_mask(iw, _mm512_set1_epi32(static_cast<int32_t>(g.in_w)));
  __m512 v = _mm512_setzero_ps();
  for (int r = 0; r < runs.count; ++r) {
    const int64_t ih = runs.ih0[r] + t.dr;
    if (ih < 0 || ih >= g.in_h) continue;
    v = _mm512_or_ps(
        v, _mm512_maskz_loadu_ps(runs.lanes[r] & columns_in, g.data + runs.start[r] + t.offset));
  }
  return v;
}

STRATA_BF16_TARGET void pack_columns_gathered(const Im2col& g, int64_t columns, int64_t first,
                                              int64_t end, uint16_t* out) {
  const int64_t k = g.rows(), p_count = pairs(k);
  Runs runs;
  for (int64_t panel = first; panel < end; ++panel) {
    uint16_t* dst = out + panel * kColumns * p_count * 2;
    const int64_t j0 = panel * kColumns;
    for (int64_t c = 0; c < kColumns; c += 16) {
      const int64_t valid = std::min<int64_t>(16, columns - (j0 + c));
      if (g.unit_stride && valid > 0) {
        const int64_t j = j0 + c;
        runs.count = 0;
        for (int64_t l = 0; l < valid; ++l) {
          if (l == 0 || g.base[j + l] != g.base[j + l - 1] + 1 ||
              g.ih0[j + l] != g.ih0[j + l - 1]) {
            runs.start[runs.count] = g.base[j + l] - static_cast<int32_t>(l);
            runs.ih0[runs.count] = g.ih0[j + l];
            runs.lanes[runs.count] = 0;
            ++runs.count;
          }
          runs.lanes[runs.count - 1] |= static_cast<__mmask16>(1u << l);
        }
      }
      const __mmask16 in_range = static_cast<__mmask16>(valid >= 16  ? 0xffffu
                                                        : valid <= 0 ? 0u
                                                                     : (1u << valid) - 1u);
      const __m512i iw0 = _mm512_maskz_loadu_epi32(in_range, g.iw0 + j0 + c);
      for (int64_t q = 0; q < p_count; ++q) {
        const __m512 v0 =
            valid > 0 ? run_values(g, runs, iw0, 2 * q, j0 + c, valid) : _mm512_setzero_ps();
        const __m512 v1 = valid > 0 && 2 * q + 1 < k
                              ? run_values(g, runs, iw0, 2 * q + 1, j0 + c, valid)
                              : _mm512_setzero_ps();
        store_pairs(v0, v1, 16, dst + (q * kColumns + c) * 2);
      }
    }
  }
}

// Entries (row, column) for the 16 rows of `taps` (valid of them) at one column.
STRATA_BF16_TARGET inline __m512 gather_rows(const Im2col& g, const int32_t* offset,
                                             const int32_t* dr, const int32_t* ds, __mmask16 valid,
                                             int64_t column) {
  const __m512i ih = _mm512_add_epi32(_mm512_loadu_si512(dr), _mm512_set1_epi32(g.ih0[column]));
  const __m512i iw = _mm512_add_epi32(_mm512_loadu_si512(ds), _mm512_set1_epi32(g.iw0[column]));
  __mmask16 mask = valid;
  mask &= _mm512_cmpge_epi32_mask(ih, _mm512_setzero_si512());
  mask &= _mm512_cmplt_epi32_mask(ih, _mm512_set1_epi32(static_cast<int32_t>(g.in_h)));
  mask &= _mm512_cmpge_epi32_mask(iw, _mm512_setzero_si512());
  mask &= _mm512_cmplt_epi32_mask(iw, _mm512_set1_epi32(static_cast<int32_t>(g.in_w)));
  const __m512i index =
      _mm512_add_epi32(_mm512_loadu_si512(offset), _mm512_set1_epi32(g.base[column]));
  return _mm512_mask_i32gather_ps(_mm512_setzero_ps(), mask, index, g.data, 4);
}

STRATA_BF16_TARGET void pack_rows_gathered(const Im2col& g, int64_t columns, int64_t first,
                                           int64_t end, uint16_t* out) {
  const int64_t rows = g.rows(), p_count = pairs(columns);
  alignas(64) int32_t offset[kColumns], dr[kColumns], ds[kColumns];
  for (int64_t panel = first; panel < end; ++panel) {
    uint16_t* dst = out + panel * kColumns * p_count * 2;
    const int64_t i0 = panel * kColumns;
    for (int64_t i = 0; i < kColumns; ++i) {
      const Tap t = tap_of(g, std::min(i0 + i, rows - 1));
      offset[i] = t.offset;
      dr[i] = t.dr;
      ds[i] = t.ds;
    }
    for (int64_t q = 0; q < p_count; ++q) {
      const bool odd_end = 2 * q + 1 >= columns;
      for (int64_t c = 0; c < kColumns; c += 16) {
        const int64_t valid_rows = std::clamp<int64_t>(rows - (i0 + c), 0, 16);
        const __mmask16 valid =
            static_cast<__mmask16>(valid_rows >= 16 ? 0xffffu : (1u << valid_rows) - 1u);
        const __m512 v0 = gather_rows(g, offset + c, dr + c, ds + c, valid, 2 * q);
        const __m512 v1 = odd_end ? _mm512_setzero_ps()
                                  : gather_rows(g, offset + c, dr + c, ds + c, valid, 2 * q + 1);
        store_pairs(v0, v1, 16, dst + (q * kColumns + c) * 2);
      }
    }
  }
}

// One kRows x kColumns tile over `block` pairs of k: C = alpha * A B + beta * C for the first
// `rows` rows and `cols` columns (beta == 0: C not read).
STRATA_BF16_TARGET void tile(int64_t block, const uint16_t* a, const uint16_t* b, float* c,
                             int64_t ldc, int64_t rows, int64_t cols, float alpha, float beta) {
  __m512 acc[kRows][3];
#pragma GCC unroll 8
  for (int r = 0; r < kRows; ++r) {
    acc[r][0] = _mm512_setzero_ps();
    acc[r][1] = _mm512_setzero_ps();
    acc[r][2] = _mm512_setzero_ps();
  }
  for (int64_t p = 0; p < block; ++p) {
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(b);
    const __m512bh b1 = (__m512bh)_mm512_loadu_si512(b + 32);
    const __m512bh b2 = (__m512bh)_mm512_loadu_si512(b + 64);
#pragma GCC unroll 8
    for (int r = 0; r < kRows; ++r) {
      int32_t word;
      std::memcpy(&word, a + 2 * r, sizeof word);
      const __m512bh av = (__m512bh)_mm512_set1_epi32(word);
      acc[r][0] = _mm512_dpbf16_ps(acc[r][0], av, b0);
      acc[r][1] = _mm512_dpbf16_ps(acc[r][1], av, b1);
      acc[r][2] = _mm512_dpbf16_ps(acc[r][2], av, b2);
    }
    a += 2 * kRows;
    b += 2 * kColumns;
  }
  const __m512 alpha_v = _mm512_set1_ps(alpha), beta_v = _mm512_set1_ps(beta);
#pragma GCC unroll 8
  for (int r = 0; r < kRows; ++r) {
    if (r >= rows) break;
    float* row = c + r * ldc;
#pragma GCC unroll 3
    for (int v = 0; v < 3; ++v) {
      const int64_t n = std::min<int64_t>(16, cols - 16 * v);
      if (n <= 0) break;
      const __mmask16 mask = static_cast<__mmask16>((1u << n) - 1u);
      __m512 out = _mm512_mul_ps(alpha_v, acc[r][v]);
      if (beta != 0.0f) {
        out = _mm512_fmadd_ps(beta_v, _mm512_maskz_loadu_ps(mask, row + 16 * v), out);
      }
      _mm512_mask_storeu_ps(row + 16 * v, mask, out);
    }
  }
}

}  // namespace

void pack(const Operand& src, int64_t count, int64_t k, int64_t width, int64_t first, int64_t end,
          uint16_t* out) {
  if (src.k_contiguous) {
    pack_k_contiguous(src, count, k, width, first, end, out);
  } else {
    pack_index_contiguous(src, count, k, width, first, end, out);
  }
}

void tabulate_taps(const Im2col& g, int32_t* offset, int32_t* dr, int32_t* ds) {
  for (int64_t row = 0; row < g.rows(); ++row) {
    const int64_t s = row % g.kw, r = (row / g.kw) % g.kh, c = row / (g.kw * g.kh);
    offset[row] = static_cast<int32_t>(c * g.in_plane + r * g.dh * g.in_w + s * g.dw);
    dr[row] = static_cast<int32_t>(r * g.dh);
    ds[row] = static_cast<int32_t>(s * g.dw);
  }
}

void pack_im2col_columns(const Im2col& g, int64_t columns, int64_t first, int64_t end,
                         uint16_t* out) {
  pack_columns_gathered(g, columns, first, end, out);
}

void pack_im2col_rows(const Im2col& g, int64_t columns, int64_t first, int64_t end, uint16_t* out) {
  pack_rows_gathered(g, columns, first, end, out);
}

void multiply(const uint16_t* a, const uint16_t* b, int64_t k, int64_t m0, int64_t m1, int64_t n0,
              int64_t n1, float alpha, float beta, float* c, int64_t ldc) {
  const int64_t p_count = pairs(k);
  if (p_count == 0) {  // C = beta * C
    for (int64_t i = m0; i < m1; ++i) {
      for (int64_t j = n0; j < n1; ++j)
        c[i * ldc + j] = beta == 0.0f ? 0.0f : beta * c[i * ldc + j];
    }
    return;
  }
  for (int64_t kb = 0; kb < p_count; kb += kBlockPairs) {
    const int64_t block = std::min(kBlockPairs, p_count - kb);
    const float block_beta = kb == 0 ? beta : 1.0f;
    for (int64_t j0 = n0; j0 < n1; j0 += kColumns) {
      const uint16_t* b_panel = b + (j0 / kColumns) * kColumns * p_count * 2 + kb * kColumns * 2;
      const int64_t cols = std::min(kColumns, n1 - j0);
      for (int64_t i0 = m0; i0 < m1; i0 += kRows) {
        const uint16_t* a_panel = a + (i0 / kRows) * kRows * p_count * 2 + kb * kRows * 2;
        tile(block, a_panel, b_panel, c + i0 * ldc + j0, ldc, std::min(kRows, m1 - i0), cols, alpha,
             block_beta);
      }
    }
  }
}

namespace {
constexpr int64_t kTileRows = 12 * kRows;       // of one task's block of C
constexpr int64_t kTileColumns = 4 * kColumns;  // of one task's block of C
constexpr int64_t kParallelMacs = int64_t{1} << 18;
}  // namespace

void gemm(const Operand& a, const Operand& b, int64_t m, int64_t n, int64_t k, float alpha,
          float beta, float* c, int64_t ldc, uint16_t* packed_a, uint16_t* packed_b) {
  if (m <= 0 || n <= 0) return;
  const int64_t a_panels = panels(m, kRows), b_panels = panels(n, kColumns);
  if (m * n * k < kParallelMacs) {
    pack(a, m, k, kRows, 0, a_panels, packed_a);
    pack(b, n, k, kColumns, 0, b_panels, packed_b);
    multiply(packed_a, packed_b, k, 0, m, 0, n, alpha, beta, c, ldc);
    return;
  }
  // Packing in tasks of a few panels (each panel is width * k values).
  const int64_t grain_a = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, kRows * k));
  const int64_t grain_b = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, kColumns * k));
  parallel_chunks(a_panels, grain_a,
                  [&](int64_t lo, int64_t hi) { pack(a, m, k, kRows, lo, hi, packed_a); });
  parallel_chunks(b_panels, grain_b,
                  [&](int64_t lo, int64_t hi) { pack(b, n, k, kColumns, lo, hi, packed_b); });
  const int64_t row_blocks = panels(m, kTileRows), column_blocks = panels(n, kTileColumns);
  parallel_chunks(row_blocks * column_blocks, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t t = lo; t < hi; ++t) {
      const int64_t i0 = (t / column_blocks) * kTileRows, j0 = (t % column_blocks) * kTileColumns;
      multiply(packed_a, packed_b, k, i0, std::min(m, i0 + kTileRows), j0,
               std::min(n, j0 + kTileColumns), alpha, beta, c, ldc);
    }
  });
}

}  // namespace strata::tbb_backend::bf16
