// The "blocks" plugin: blocks that expand into sub-graphs of layers (strata/block.hpp).
// Each block lives in its own file, whose header comment is its specification; this file only
// registers them. The parts use the layer types conv2d, batch_norm, relu, add, concat and
// max_pool of the "layers" plugin.
#include "strata/plugin.hpp"

#include "strata/registry.hpp"

namespace strata::blocks {

void register_residual_basic(Registries& registries);
void register_residual_bottleneck(Registries& registries);
void register_inception(Registries& registries);
void register_context_module(Registries& registries);

namespace {

void register_all(Registries& registries) {
  register_residual_basic(registries);
  register_residual_bottleneck(registries);
  register_inception(registries);
  register_context_module(registries);
}

}  // namespace

}  // namespace strata::blocks

STRATA_PLUGIN("blocks", "1.0", strata::blocks::register_all)
