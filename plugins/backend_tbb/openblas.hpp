// OpenBLAS, loaded by the tbb backend itself (internal to backend_tbb).
//
// Why not link it: OpenBLAS picks its kernel set once, in its library constructor, from the CPU or
// from the environment variable OPENBLAS_CORETYPE, and nothing changes it afterwards. Machines
// here set OPENBLAS_CORETYPE=Haswell for every process (a platform default), and on their AMD
// EPYC (Zen 5, AVX-512) that runs 256-bit AVX2 kernels at about half the speed of OpenBLAS's
// AVX-512 ones (1024^3 sgemm, one core: 98-105 against 175-190 GFLOP/s; docs/performance.md).
// Linked, the constructor would run before any plugin code. So the plugin loads OpenBLAS with
// dlopen at registration, after setting OPENBLAS_CORETYPE:
//   - to STRATA_OPENBLAS_CORETYPE when that is set (a user's explicit choice for Strata);
//   - otherwise to SkylakeX when the CPU runs x86-64-v4 code (AVX-512 F, BW, CD, DQ and VL, with
//     the OS saving their registers: strata::isa::cpu_runs), even over an OPENBLAS_CORETYPE already
//     in the environment: a pre-AVX-512 kernel set there is right for other CPUs and half speed on
//     these (OpenBLAS 0.3.21 itself detects this CPU as Cooperlake, SkylakeX plus bfloat16, when
//     left alone);
//   - otherwise it is left alone, and OpenBLAS detects the CPU or reads the user's setting.
// The variable is set for the whole process (child processes inherit it). describe() says which
// kernels run and who chose them; `strata bench` and `strata train` print it.
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
