// A layer whose objects report their destruction through a counter owned by the test, so the test
// can check that the plugin library outlives every object it created.
#include "strata/layer.hpp"
#include "strata/plugin.hpp"

namespace {
int* g_destroyed = nullptr;

class Probe final : public strata::Layer {
 public:
  explicit Probe(const strata::Config& config) {
    g_destroyed = reinterpret_cast<int*>(config.get<int64_t>("counter_address"));
  }
  ~Probe() override {
    if (g_destroyed) ++*g_destroyed;
  }
  std::string_view type() const override { return "lifetime_probe"; }
  void forward(strata::Context&, std::span<const strata::Tensor>, strata::Tensor&) override {}
  void backward(strata::Context&, std::span<const strata::Tensor>, const strata::Tensor&,
                const strata::Tensor&, std::span<strata::Tensor>) override {}

 protected:
  strata::Shape infer_shape(const strata::SetupContext&, std::span<const strata::Shape> in) override {
    return in[0];
  }
};
void register_all(strata::Registries& registries) { registries.layers.add<Probe>("lifetime_probe"); }
}  // namespace

STRATA_PLUGIN("test_lifetime", "0.0", register_all)
