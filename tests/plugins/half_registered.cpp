// test_half_registered: registers a layer type and an optimizer type, then throws, as a plugin
// that fails halfway through register_all() might. The loader must leave neither type behind.
// Built a second time with STRATA_TEST_HALF_REGISTERED_OK as test_half_registered_ok, which
// registers the same two names and does not throw: it must load after the failed one.
#include <stdexcept>

#include "strata/layer.hpp"
#include "strata/optimizer.hpp"
#include "strata/plugin.hpp"
#include "strata/registry.hpp"

namespace {
void register_all(strata::Registries& registries) {
  registries.layers.add(
      "half_layer", [](const strata::Config&) -> std::unique_ptr<strata::Layer> { return nullptr; });
  registries.optimizers.add("half_optimizer", [](const strata::Config&)
                                                  -> std::unique_ptr<strata::Optimizer> {
    return nullptr;
  });
#ifndef STRATA_TEST_HALF_REGISTERED_OK
  throw std::runtime_error("failed after registering two types");
#endif
}
}  // namespace

#ifdef STRATA_TEST_HALF_REGISTERED_OK
STRATA_PLUGIN("test_half_registered_ok", "0.0", register_all)
#else
STRATA_PLUGIN("test_half_registered", "0.0", register_all)
#endif
