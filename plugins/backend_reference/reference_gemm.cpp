#include "reference_kernels.hpp"
#include "strata/error.hpp"

namespace strata::reference {

void ReferenceGemm::gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                         const float* a, int64_t lda, const float* b, int64_t ldb, float beta,
                         float* c, int64_t ldc) {
  if (m < 0 || n < 0 || k < 0) fail("reference gemm: negative size m={} n={} k={}", m, n, k);
  if (lda < (trans_a ? m : k) || ldb < (trans_b ? k : n) || ldc < n) {
    fail("reference gemm: leading dimensions too small (m={} n={} k={} lda={} ldb={} ldc={})", m, n,
         k, lda, ldb, ldc);
  }
  const bool bf16 = desc_.precision == Precision::kBf16;  // the emulation: inputs rounded
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double sum = 0;
      for (int64_t p = 0; p < k; ++p) {
        float a_ip = trans_a ? a[p * lda + i] : a[i * lda + p];
        float b_pj = trans_b ? b[j * ldb + p] : b[p * ldb + j];
        if (bf16) {
          a_ip = round_to_bf16(a_ip);
          b_pj = round_to_bf16(b_pj);
        }
        sum += static_cast<double>(a_ip) * b_pj;
      }
      float& out = c[i * ldc + j];
      const double scaled = static_cast<double>(alpha) * sum;
      out = static_cast<float>(beta == 0.0f ? scaled : scaled + static_cast<double>(beta) * out);
    }
  }
}

}  // namespace strata::reference
