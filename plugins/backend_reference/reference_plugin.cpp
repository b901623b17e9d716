// Registers the "reference" backend and its conv2d, pool2d, gemm, batch_norm, activation, softmax,
// lrn and global_avg_pool kernels.
#include "reference_kernels.hpp"
#include "strata/plugin.hpp"
#include "strata/registry.hpp"

namespace strata::reference {

void ReferenceBackend::parallel_for(int64_t begin, int64_t end, int64_t grain,
                                    const std::function<void(int64_t, int64_t)>& body) {
  if (begin < end) body(begin, end);
}

namespace {

void register_all(Registries& r) {
  r.backends.add<ReferenceBackend>("reference");
  r.kernels.add<ReferenceConv2d>("conv2d", "reference");
  r.kernels.add<ReferencePool2d>("pool2d", "reference");
  r.kernels.add<ReferenceGemm>("gemm", "reference");
  r.kernels.add<ReferenceBatchNorm>("batch_norm", "reference");
  r.kernels.add<ReferenceActivation>("activation", "reference");
  r.kernels.add<ReferenceSoftmax>("softmax", "reference");
  r.kernels.add<ReferenceLrn>("lrn", "reference");
  r.kernels.add<ReferenceGlobalAvgPool>("global_avg_pool", "reference");
}

}  // namespace

}  // namespace strata::reference

STRATA_PLUGIN("backend_reference", "1.0", strata::reference::register_all)
