// Registers the "tbb" backend and its conv2d, pool2d, gemm, batch_norm, activation, softmax, lrn
// and global_avg_pool kernels.
#include <tbb/blocked_range.h>
#include <tbb/info.h>
#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>

#include <algorithm>

#include "bf16_conv2d.hpp"
#include "openblas.hpp"
#include "strata/error.hpp"
#include "strata/isa.hpp"
#include "strata/plugin.hpp"
#include "strata/registry.hpp"
#include "tbb_kernels.hpp"

#if !defined(STRATA_PLUGIN_ISAS)
#error "backend_tbb is built once per ISA: strata_add_plugin(backend_tbb ISAS ...) defines this"
#endif

namespace strata::tbb_backend {

namespace {

// Which copy of the kernels runs, and why (strata/isa.hpp); set at registration.
isa::Choice chosen_isa;

}  // namespace

int allowed_threads() {
  const auto limit = static_cast<int>(
      tbb::global_control::active_value(tbb::global_control::max_allowed_parallelism));
  return std::max(1, std::min(limit, tbb::this_task_arena::max_concurrency()));
}

TbbBackend::TbbBackend(const Config&) : threads_(tbb::info::default_concurrency()) {}

TbbBackend::~TbbBackend() = default;

std::string TbbBackend::description() const {
  return fmt::format("oneTBB {}.{}, {}; {}", TBB_VERSION_MAJOR, TBB_VERSION_MINOR,
                     isa::describe(chosen_isa), openblas::describe());
}

void TbbBackend::set_threads(int threads) {
  if (threads < 0)
    fail("backend 'tbb': threads must be 0 (all cores) or positive, got {}", threads);
  threads_ = threads == 0 ? tbb::info::default_concurrency() : threads;
  control_.reset();  // at most one limit of ours alive at a time
  control_ = std::make_unique<tbb::global_control>(tbb::global_control::max_allowed_parallelism,
                                                   static_cast<std::size_t>(threads_));
}

void TbbBackend::parallel_for(int64_t begin, int64_t end, int64_t grain,
                              const std::function<void(int64_t, int64_t)>& body) {
  if (begin >= end) return;
  // Split into whole chunks of at least `grain` ourselves: a blocked_range would halve a range of
  // 1.5 grains into pieces shorter than the grain the caller asked for.
  const int64_t length = end - begin;
  const int64_t chunks = std::max<int64_t>(1, length / std::max<int64_t>(grain, 1));
  if (chunks == 1) {
    body(begin, end);
    return;
  }
  tbb::parallel_for(
      tbb::blocked_range<int64_t>(0, chunks, 1), [&](const tbb::blocked_range<int64_t>& range) {
        body(begin + range.begin() * length / chunks, begin + range.end() * length / chunks);
      });
}

namespace {

void register_all(Registries& r) {
  // The same choice the dispatcher made when it opened this copy (the environment is read again).
  chosen_isa = isa::choose(STRATA_PLUGIN_ISAS);
  // Before anything can run a kernel; pins OpenBLAS to one thread (an OpenBLAS thread pool under
  // TBB tasks would oversubscribe) and chooses its kernel set (openblas.hpp).
  openblas::load();
  r.backends.add<TbbBackend>("tbb");
  // The default backend of an experiment that names none (else "reference" is).
  r.backends.declare_default("tbb");
  // conv2d and pool2d: one implementation each, which chooses its own path per descriptor (conv2d
  // per pass, from ordered lists) and names it in implementation().
  // TbbConv2d takes fp32, and bf16 descriptors but those of large GEMM-shaped layers (its methods
  // on inputs rounded to bf16); those go on to bf16_gemm (AVX512-BF16). Both refuse bf16 without
  // the CPU feature.
  r.kernels.add<TbbConv2d>("conv2d", "tbb");
  r.kernels.add<TbbBf16Conv2d>("conv2d", "tbb", "bf16_gemm");
  r.kernels.add<TbbPool2d>("pool2d", "tbb");
  r.kernels.add<TbbBf16Gemm>("gemm", "tbb", "bf16");  // precision bf16 only
  r.kernels.add<TbbGemm>("gemm", "tbb", "openblas");
  r.kernels.add<TbbBatchNorm>("batch_norm", "tbb", "blocked_sums");
  r.kernels.add<TbbActivation>("activation", "tbb", "elementwise");
  r.kernels.add<TbbSoftmax>("softmax", "tbb", "vector_exp");
  r.kernels.add<TbbLrn>("lrn", "tbb", "channel_window");
  r.kernels.add<TbbGlobalAvgPool>("global_avg_pool", "tbb", "planes");
}

}  // namespace

}  // namespace strata::tbb_backend

STRATA_PLUGIN("backend_tbb", "1.0", strata::tbb_backend::register_all)
