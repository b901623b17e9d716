// test_bad_gradient: "test_double" computes out = 2 * in but its backward returns dout (a wrong
// gradient), so the conformance checks must fail it; it exports its own conformance case.
#include "strata/conformance_cases.hpp"
#include "strata/layer.hpp"
#include "strata/plugin.hpp"

namespace {
class Double final : public strata::Layer {
 public:
  explicit Double(const strata::Config&) {}
  std::string_view type() const override { return "test_double"; }
  void forward(strata::Context&, std::span<const strata::Tensor> in, strata::Tensor& out) override {
    for (int64_t i = 0; i < out.numel(); ++i) out.data()[i] = 2.0f * in[0].data()[i];
  }
  void backward(strata::Context&, std::span<const strata::Tensor>, const strata::Tensor&,
                const strata::Tensor& dout, std::span<strata::Tensor> din) override {
    if (din[0].defined()) din[0].copy_from(dout);  // wrong on purpose: should be 2 * dout
  }

 protected:
  strata::Shape infer_shape(const strata::SetupContext&,
                            std::span<const strata::Shape> in) override {
    return in[0];
  }
};
void register_all(strata::Registries& registries) { registries.layers.add<Double>("test_double"); }
}  // namespace

STRATA_PLUGIN("test_bad_gradient", "0.0", register_all)
STRATA_CONFORMANCE_CASES({"{type: test_double}", "2,3,3", "2,3,3"})
