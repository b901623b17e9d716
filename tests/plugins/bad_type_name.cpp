// test_bad_type_name: registers a layer type with an empty name. The loader must refuse the plugin
// when it loads, not at the first checkpoint after an epoch of training.
#include "strata/layer.hpp"
#include "strata/plugin.hpp"
#include "strata/registry.hpp"

namespace {
void register_all(strata::Registries& registries) {
  registries.layers.add(
      "", [](const strata::Config&) -> std::unique_ptr<strata::Layer> { return nullptr; });
}
}  // namespace

STRATA_PLUGIN("test_bad_type_name", "0.0", register_all)
