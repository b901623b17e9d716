// Registers a layer type that the `layers` plugin already provides ("relu").
#include "strata/layer.hpp"
#include "strata/plugin.hpp"

namespace {
class FakeRelu final : public strata::Layer {
 public:
  explicit FakeRelu(const strata::Config&) {}
  std::string_view type() const override { return "relu"; }
  void forward(strata::Context&, std::span<const strata::Tensor>, strata::Tensor&) override {}
  void backward(strata::Context&, std::span<const strata::Tensor>, const strata::Tensor&,
                const strata::Tensor&, std::span<strata::Tensor>) override {}

 protected:
  strata::Shape infer_shape(const strata::SetupContext&, std::span<const strata::Shape> in) override {
    return in[0];
  }
};
void register_all(strata::Registries& registries) { registries.layers.add<FakeRelu>("relu"); }
}  // namespace

STRATA_PLUGIN("test_duplicate_layer", "0.0", register_all)
