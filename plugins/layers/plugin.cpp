// The "layers" plugin: the standard CNN layers and the softmax cross-entropy loss.
// Each layer lives in its own file (conv2d.cpp, pool2d.cpp, ...), whose header comment is its
// specification; this file only registers them.
#include "strata/plugin.hpp"

#include "strata/registry.hpp"

namespace strata::layers {

void register_conv2d(Registries& registries);
void register_pooling(Registries& registries);
void register_pad(Registries& registries);
void register_linear(Registries& registries);
void register_activations(Registries& registries);
void register_flatten(Registries& registries);
void register_dropout(Registries& registries);
void register_losses(Registries& registries);
void register_batch_norm(Registries& registries);
void register_add(Registries& registries);
void register_multiply(Registries& registries);
void register_concat(Registries& registries);
void register_global_avg_pool(Registries& registries);
void register_softmax(Registries& registries);
void register_lrn(Registries& registries);

namespace {

void register_all(Registries& registries) {
  register_conv2d(registries);
  register_pooling(registries);
  register_pad(registries);
  register_linear(registries);
  register_activations(registries);
  register_flatten(registries);
  register_dropout(registries);
  register_losses(registries);
  register_batch_norm(registries);
  register_add(registries);
  register_multiply(registries);
  register_concat(registries);
  register_global_avg_pool(registries);
  register_softmax(registries);
  register_lrn(registries);
}

}  // namespace

}  // namespace strata::layers

STRATA_PLUGIN("layers", "1.0", strata::layers::register_all)
