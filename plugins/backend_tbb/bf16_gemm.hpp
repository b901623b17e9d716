// backend_tbb: the bf16 matrix product (AVX512-BF16), internal to backend_tbb.
//
// C = alpha * op(A) * op(B) + beta * C with every element of A and B rounded to bfloat16 (round to
// nearest even, vcvtne2ps2bf16, denormals to zero: strata::round_to_bf16) and the products summed
// in float by vdpbf16ps. Debian's OpenBLAS 0.3.21 has no sbgemm, so this is ours.
//
// PACKED LAYOUT
//   Both operands are packed into panels of `width` rows of op(A) (kRows) or columns of op(B)
//   (kColumns). A panel holds, for each pair p of k (K rounded up to even), `width` 32-bit words,
//   word j = (x[j][2p], x[j][2p + 1]) as two bfloat16, the low half first: exactly what vdpbf16ps
//   multiplies pairwise and adds into float lane j. Rows or columns past the operand's end and the
//   odd k's partner are zeros. A panel is width * pairs(k) words (2 * width * pairs(k) uint16).
// THE MICRO-KERNEL
//   kRows x kColumns (8 x 48) of float accumulators in 24 zmm registers: per pair of k, 3 loads of
//   B, 8 broadcasts of A and 24 vdpbf16ps. K is walked in blocks of kBlockPairs pairs (a B panel
//   block is 24 KiB, in L1), and C accumulates across blocks in float.
// ISA
//   Every function that uses AVX-512 or BF16 instructions is compiled for that target alone
//   (__attribute__((target(...))) in bf16_gemm.cpp) and touches raw pointers only, so this file
//   builds and runs under any -march; call them only when cpu_supported() holds.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace strata::tbb_backend::bf16 {

inline constexpr int64_t kRows = 8;          // of the micro-kernel's tile (rows of C)
inline constexpr int64_t kColumns = 48;      // of the micro-kernel's tile (columns of C)
inline constexpr int64_t kBlockPairs = 128;  // pairs of k per block of the product

// The CPU has AVX-512 F, BW, DQ, VL and BF16 (cpuid), and STRATA_NO_AVX512BF16 is unset or empty
// (set it to make a CPU that has them behave as one that lacks them: the error path's test).
bool cpu_supported();
// Throws an Error naming `who` ("tbb conv2d"), precision bf16 and the missing CPU feature, unless
// cpu_supported().
void require_cpu(std::string_view who);

inline int64_t pairs(int64_t k) { return (k + 1) / 2; }
inline int64_t panels(int64_t count, int64_t width) { return (count + width - 1) / width; }
// uint16 elements of `count` rows (or columns) packed into panels of `width`.
inline int64_t packed_size(int64_t count, int64_t k, int64_t width) {
  return panels(count, width) * width * pairs(k) * 2;
}

// Where element (i, k) of an operand lives: i a row of op(A) or a column of op(B). One of the two
// axes is contiguous and may be cut into runs of `run` elements `run_stride` apart (the images of
// a batch: element t of the axis is at (t / run) * run_stride + t % run); run = 0 means one run.
// The other axis steps by `stride`.
struct Operand {
  const float* data = nullptr;
  bool k_contiguous = true;  // else i is the contiguous axis
  int64_t stride = 0;        // of the other axis
  int64_t run = 0, run_stride = 0;

  // (i, k) at data[i * i_stride + along(k)]
  static Operand along_k(const float* data, int64_t i_stride, int64_t run = 0,
                         int64_t run_stride = 0) {
    return {data, true, i_stride, run, run_stride};
  }
  // (i, k) at data[k * k_stride + along(i)]
  static Operand along_i(const float* data, int64_t k_stride, int64_t run = 0,
                         int64_t run_stride = 0) {
    return {data, false, k_stride, run, run_stride};
  }
};

// Packs panels [first, end) of `count` indices x k of `src`, each `width` wide (kRows or
// kColumns), into `out` (panel p at out + p * width * pairs(k) * 2). Needs cpu_supported().
void pack(const Operand& src, int64_t count, int64_t k, int64_t width, int64_t first, int64_t end,
          uint16_t* out);

// The col matrix (im2col) of a block of images, read in place by the packing (AVX-512 gathers,
// masked at the padding), never stored: row (c, r, s) = (c * kh + r) * kw + s, column j an output
// position of one image; entry (row, j) = data[base[j] + c * in_plane + r * dh * in_w + s * dw]
// when ih0[j] + r * dh is in [0, in_h) and iw0[j] + s * dw in [0, in_w), else 0. base, ih0 and
// iw0 (one per column, int32) are the caller's: column j's image offset + ih0 * in_w + iw0, and its
// top-left input row and column (negative in the padding).
struct Im2col {
  const float* data = nullptr;
  int64_t channels = 0, kh = 1, kw = 1, dh = 1, dw = 1;
  int64_t in_h = 0, in_w = 0, in_plane = 0;
  const int32_t* base = nullptr;
  const int32_t* ih0 = nullptr;
  const int32_t* iw0 = nullptr;
  bool unit_stride = false;  // columns of one output row read consecutive inputs (stride 1)
  // Per row (rows() of each): c * in_plane + r * dh * in_w + s * dw, r * dh and s * dw
  // (tabulate_taps() fills them).
  const int32_t* tap_offset = nullptr;
  const int32_t* tap_dr = nullptr;
  const int32_t* tap_ds = nullptr;
  int64_t rows() const { return channels * kh * kw; }
};

// Fills offset, dr and ds (g.rows() each) with g's per-row taps (see Im2col).
void tabulate_taps(const Im2col& g, int32_t* offset, int32_t* dr, int32_t* ds);

// Packs panels [first, end) of kColumns columns of the col matrix (i = column, k = row): the B of
// W x cols. Needs cpu_supported().
void pack_im2col_columns(const Im2col& g, int64_t columns, int64_t first, int64_t end,
                         uint16_t* out);
// Packs panels [first, end) of kColumns rows of the col matrix (i = row, k = column): the B of
// dy x cols^T. Needs cpu_supported().
void pack_im2col_rows(const Im2col& g, int64_t columns, int64_t first, int64_t end, uint16_t* out);

// C[m0..m1) x [n0..n1) of alpha * A * B + beta * C, single-threaded, from packed A (kRows panels)
// and B (kColumns panels) of m x k and k x n. m0 a multiple of kRows, n0 of kColumns. beta == 0:
// C is not read. Needs cpu_supported().
void multiply(const uint16_t* a, const uint16_t* b, int64_t k, int64_t m0, int64_t m1, int64_t n0,
              int64_t n1, float alpha, float beta, float* c, int64_t ldc);

// The whole product, packing and multiplying in TBB tasks (over panels, then over blocks of C).
// packed_a and packed_b hold packed_size(m, k, kRows) and packed_size(n, k, kColumns) elements.
void gemm(const Operand& a, const Operand& b, int64_t m, int64_t n, int64_t k, float alpha,
          float beta, float* c, int64_t ldc, uint16_t* packed_a, uint16_t* packed_b);

// Operands of a row-major matrix product: op(A) of m x k stored with row stride lda (transposed
// when trans), op(B) of k x n likewise.
Operand matrix_a(const float* a, int64_t lda, bool trans);
Operand matrix_b(const float* b, int64_t ldb, bool trans);

}  // namespace strata::tbb_backend::bf16
