#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>

#include <algorithm>
#include <limits>

#include "bf16_gemm.hpp"
#include "openblas.hpp"
#include "strata/error.hpp"
#include "tbb_kernels.hpp"

namespace strata::tbb_backend {

namespace {

// Below this many multiply-adds (~20 us on one core) a task split costs more than it saves.
constexpr int64_t kParallelGemmMacs = int64_t{1} << 19;
// Smallest useful height or width of one task's block of C (the kernel tiles are 16 wide).
constexpr int64_t kMinSplitExtent = 32;

int to_blas(int64_t v) {
  if (v < 0 || v > std::numeric_limits<int>::max()) fail("tbb gemm: size {} out of range", v);
  return static_cast<int>(v);
}

}  // namespace

void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
           int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0) {  // C = beta * C, without trusting every BLAS to handle an empty product
    for (int64_t i = 0; i < m; ++i) {
      float* row = c + i * ldc;
      for (int64_t j = 0; j < n; ++j) row[j] = beta == 0.0f ? 0.0f : beta * row[j];
    }
    return;
  }
  openblas::sgemm(trans_a, trans_b, to_blas(m), to_blas(n), to_blas(k), alpha, a,
                  to_blas(std::max<int64_t>(lda, 1)), b, to_blas(std::max<int64_t>(ldb, 1)), beta,
                  c, to_blas(std::max<int64_t>(ldc, 1)));
}

void check_gemm_sizes(std::string_view kernel, bool trans_a, bool trans_b, int64_t m, int64_t n,
                      int64_t k, int64_t lda, int64_t ldb, int64_t ldc) {
  if (m < 0 || n < 0 || k < 0) fail("{}: negative size m={} n={} k={}", kernel, m, n, k);
  if (lda < (trans_a ? m : k) || ldb < (trans_b ? k : n) || ldc < n) {
    fail("{}: leading dimensions too small (m={} n={} k={} lda={} ldb={} ldc={})", kernel, m, n, k,
         lda, ldb, ldc);
  }
}

void TbbGemm::gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                   const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
                   int64_t ldc) {
  check_gemm_sizes("tbb gemm", trans_a, trans_b, m, n, k, lda, ldb, ldc);
  const int threads = allowed_threads();
  const bool split_rows = m >= std::max(n, 2 * kMinSplitExtent);
  const int64_t extent = split_rows ? m : n;
  const int64_t parts = std::min<int64_t>(threads, extent / kMinSplitExtent);
  if (m * n * k < kParallelGemmMacs || parts < 2) {
    sgemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    return;
  }
  tbb::parallel_for(
      tbb::blocked_range<int64_t>(0, parts, 1),
      [&](const tbb::blocked_range<int64_t>& range) {
        for (int64_t part = range.begin(); part != range.end(); ++part) {
          const int64_t lo = part * extent / parts, hi = (part + 1) * extent / parts;
          if (split_rows) {
            // Rows [lo, hi) of op(A) and of C.
            const float* a_rows = trans_a ? a + lo : a + lo * lda;
            sgemm(trans_a, trans_b, hi - lo, n, k, alpha, a_rows, lda, b, ldb, beta, c + lo * ldc,
                  ldc);
          } else {
            // Columns [lo, hi) of op(B) and of C.
            const float* b_cols = trans_b ? b + lo * ldb : b + lo;
            sgemm(trans_a, trans_b, m, hi - lo, k, alpha, a, lda, b_cols, ldb, beta, c + lo, ldc);
          }
        }
      },
      tbb::simple_partitioner());
}

void TbbBf16Gemm::on_prepare() { bf16::require_cpu("tbb gemm"); }

void TbbBf16Gemm::gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                       const float* a, int64_t lda, const float* b, int64_t ldb, float beta,
                       float* c, int64_t ldc) {
  check_gemm_sizes("tbb gemm (bf16)", trans_a, trans_b, m, n, k, lda, ldb, ldc);
  const auto grow = [](std::vector<uint16_t>& buffer, int64_t size) {
    if (static_cast<int64_t>(buffer.size()) < size) buffer.resize(static_cast<std::size_t>(size));
  };
  grow(packed_a_, bf16::packed_size(m, k, bf16::kRows));
  grow(packed_b_, bf16::packed_size(n, k, bf16::kColumns));
  bf16::gemm(bf16::matrix_a(a, lda, trans_a), bf16::matrix_b(b, ldb, trans_b), m, n, k, alpha, beta,
             c, ldc, packed_a_.data(), packed_b_.data());
}

}  // namespace strata::tbb_backend
