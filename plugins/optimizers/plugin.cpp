// The "optimizers" plugin: adagrad, rmsprop, adam and adamw, each matching torch.optim step for
// step (see each file's header). sgd is its own plugin (plugins/sgd).
#include "strata/plugin.hpp"

#include "strata/optimizer.hpp"
#include "strata/registry.hpp"

namespace strata::optimizers {

std::unique_ptr<Optimizer> make_adagrad(const Config& config);
std::unique_ptr<Optimizer> make_rmsprop(const Config& config);
std::unique_ptr<Optimizer> make_adam(const Config& config);
std::unique_ptr<Optimizer> make_adamw(const Config& config);

namespace {
void register_all(Registries& registries) {
  registries.optimizers.add("adagrad", make_adagrad);
  registries.optimizers.add("rmsprop", make_rmsprop);
  registries.optimizers.add("adam", make_adam);
  registries.optimizers.add("adamw", make_adamw);
}
}  // namespace

}  // namespace strata::optimizers

STRATA_PLUGIN("optimizers", "1.0", strata::optimizers::register_all)
