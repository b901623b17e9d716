// OpenBLAS, loaded by the tbb backend itself (internal to backend_tbb).
//
// Why not link it: OpenBLAS picks its kernel set once, in its library constructor, from the CPU's
// family and model, and Debian 12's OpenBLAS (0.3.21) does not know AMD Zen 4 or Zen 5: it takes
// them for Haswell and runs 256-bit AVX2 kernels on CPUs with 512-bit AVX-512 units, at about half
// the speed its SkylakeX kernels reach there (measured: docs/performance.md). The constructor runs
// when the library is loaded, before any plugin code could intervene, and only the environment
// variable OPENBLAS_CORETYPE can change its choice. So the plugin loads OpenBLAS with dlopen at
// registration, after setting OPENBLAS_CORETYPE:
//   - to STRATA_OPENBLAS_CORETYPE when that is set (a user's explicit choice for Strata);
//   - otherwise to SkylakeX when the CPU has AVX-512 (F, DQ, BW and VL, with the OS saving their
//     registers), even over an OPENBLAS_CORETYPE already in the environment: machines with these
//     CPUs set OPENBLAS_CORETYPE=Haswell to stop OpenBLAS falling back to its generic kernels,
//     which is right for the CPUs OpenBLAS knows and half speed on these;
//   - otherwise it is left alone, and OpenBLAS detects the CPU or reads the user's setting.
// The variable is set for the whole process (child processes inherit it). describe() says which
// kernels run and who chose them; `strata bench` prints it.
#pragma once

#include <string>

namespace strata::tbb_backend::openblas {

// Loads OpenBLAS (idempotent, thread-safe) and pins it to one thread: TBB owns the parallelism.
// Fails with the reason when the library or one of its symbols is missing.
void load();

// Single-threaded row-major C = alpha op(A) op(B) + beta C, sizes already checked to fit in int.
void sgemm(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float* a, int lda,
           const float* b, int ldb, float beta, float* c, int ldc);

// "OpenBLAS 0.3.21 (SkylakeX kernels, chosen by the tbb backend for this AVX-512 CPU)", or with
// "... from the environment", or "detected by OpenBLAS".
std::string describe();

}  // namespace strata::tbb_backend::openblas
