// test_init_spec: an identity layer with one parameter "weight" [3] whose default initializer is
// taken verbatim from the key `default_init`, for the graph's tests of Param::default_init specs.
#include "strata/config.hpp"
#include "strata/layer.hpp"
#include "strata/plugin.hpp"

namespace {
class InitSpec final : public strata::Layer {
 public:
  explicit InitSpec(const strata::Config& config)
      : spec_(config.get<std::string>("default_init")) {}
  std::string_view type() const override { return "test_init_spec"; }
  std::vector<strata::Param*> params() override { return {&weight_}; }
  void forward(strata::Context&, std::span<const strata::Tensor> in, strata::Tensor& out) override {
    out.copy_from(in[0]);
  }
  void backward(strata::Context&, std::span<const strata::Tensor>, const strata::Tensor&,
                const strata::Tensor& dout, std::span<strata::Tensor> din) override {
    if (din[0].defined()) din[0].copy_from(dout);
    weight_.grad.fill(0.0f);
  }

 protected:
  strata::Shape infer_shape(const strata::SetupContext&,
                            std::span<const strata::Shape> in) override {
    weight_ = strata::Param::make("weight", strata::Shape{3}, spec_, 3, 3);
    return in[0];
  }

 private:
  std::string spec_;
  strata::Param weight_;
};
void register_all(strata::Registries& registries) {
  registries.layers.add<InitSpec>("test_init_spec");
}
}  // namespace

STRATA_PLUGIN("test_init_spec", "0.0", register_all)
