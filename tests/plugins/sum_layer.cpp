// test_sum: out = in[0] + in[1] (same shapes). A two-input layer for the graph's fan-out and
// named-input tests; the real `add` layer arrives with the residual blocks.
#include "strata/layer.hpp"
#include "strata/plugin.hpp"

namespace {
class Sum final : public strata::Layer {
 public:
  explicit Sum(const strata::Config&) {}
  std::string_view type() const override { return "test_sum"; }
  int min_inputs() const override { return 2; }
  int max_inputs() const override { return 2; }
  void forward(strata::Context&, std::span<const strata::Tensor> in, strata::Tensor& out) override {
    for (int64_t i = 0; i < out.numel(); ++i) out.data()[i] = in[0].data()[i] + in[1].data()[i];
  }
  void backward(strata::Context&, std::span<const strata::Tensor>, const strata::Tensor&,
                const strata::Tensor& dout, std::span<strata::Tensor> din) override {
    for (auto& d : din) {
      if (d.defined()) d.copy_from(dout);
    }
  }

 protected:
  strata::Shape infer_shape(const strata::SetupContext&, std::span<const strata::Shape> in) override {
    if (in[0] != in[1]) strata::fail("inputs differ: {} and {}", in[0].str(), in[1].str());
    return in[0];
  }
};
void register_all(strata::Registries& registries) { registries.layers.add<Sum>("test_sum"); }
}  // namespace

STRATA_PLUGIN("test_sum", "0.0", register_all)
