// test_bad_gradient: "test_double" computes out = 2 * in but its backward returns dout (a wrong
// gradient), so the conformance checks must fail it; it exports its own conformance case.
// "test_square" computes out = in^2 with the right gradient 2 in dout, but says its backward
// does not read its input, which the `reads` check must catch. "test_false_fusion" computes
// out = 2 * in (gradient 2 dout) and says it fuses every activation, but ignores the one it is
// given, which the `fusion` check must catch. "test_false_recompute" computes out = in and says
// it is recomputable, but adds noise drawn from the Context's generator when it recomputes, as a
// stochastic layer that draws again would, which the `recompute` check must catch.
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
class Square final : public strata::Layer {
 public:
  explicit Square(const strata::Config&) {}
  std::string_view type() const override { return "test_square"; }
  bool backward_reads_inputs() const override { return false; }  // wrong on purpose
  void forward(strata::Context&, std::span<const strata::Tensor> in, strata::Tensor& out) override {
    for (int64_t i = 0; i < out.numel(); ++i) out.data()[i] = in[0].data()[i] * in[0].data()[i];
  }
  void backward(strata::Context&, std::span<const strata::Tensor> in, const strata::Tensor&,
                const strata::Tensor& dout, std::span<strata::Tensor> din) override {
    if (!din[0].defined()) return;
    for (int64_t i = 0; i < dout.numel(); ++i)
      din[0].data()[i] = 2.0f * in[0].data()[i] * dout.data()[i];
  }

 protected:
  strata::Shape infer_shape(const strata::SetupContext&,
                            std::span<const strata::Shape> in) override {
    return in[0];
  }
};

class FalseFusion final : public strata::Layer {
 public:
  explicit FalseFusion(const strata::Config&) {}
  std::string_view type() const override { return "test_false_fusion"; }
  bool backward_reads_inputs() const override { return false; }
  bool backward_reads_output() const override { return false; }
  bool fuses(const strata::ActivationDesc&) const override { return true; }  // wrong on purpose
  void forward(strata::Context&, std::span<const strata::Tensor> in, strata::Tensor& out) override {
    for (int64_t i = 0; i < out.numel(); ++i) out.data()[i] = 2.0f * in[0].data()[i];
  }
  void backward(strata::Context&, std::span<const strata::Tensor>, const strata::Tensor&,
                const strata::Tensor& dout, std::span<strata::Tensor> din) override {
    if (!din[0].defined()) return;
    for (int64_t i = 0; i < dout.numel(); ++i) din[0].data()[i] = 2.0f * dout.data()[i];
  }

 protected:
  strata::Shape infer_shape(const strata::SetupContext&,
                            std::span<const strata::Shape> in) override {
    return in[0];
  }
};

class FalseRecompute final : public strata::Layer {
 public:
  explicit FalseRecompute(const strata::Config&) {}
  std::string_view type() const override { return "test_false_recompute"; }
  bool backward_reads_inputs() const override { return false; }
  bool backward_reads_output() const override { return false; }
  bool recomputable() const override { return true; }  // wrong on purpose: it draws
  void forward(strata::Context& context, std::span<const strata::Tensor> in,
               strata::Tensor& out) override {
    std::uniform_real_distribution<float> noise(0.0f, 1e-3f);
    for (int64_t i = 0; i < out.numel(); ++i) {
      out.data()[i] = in[0].data()[i] + (context.recomputing ? noise(*context.rng) : 0.0f);
    }
  }
  void backward(strata::Context&, std::span<const strata::Tensor>, const strata::Tensor&,
                const strata::Tensor& dout, std::span<strata::Tensor> din) override {
    if (din[0].defined()) din[0].copy_from(dout);
  }

 protected:
  strata::Shape infer_shape(const strata::SetupContext&,
                            std::span<const strata::Shape> in) override {
    return in[0];
  }
};

void register_all(strata::Registries& registries) {
  registries.layers.add<Double>("test_double");
  registries.layers.add<Square>("test_square");
  registries.layers.add<FalseFusion>("test_false_fusion");
  registries.layers.add<FalseRecompute>("test_false_recompute");
}
}  // namespace

STRATA_PLUGIN("test_bad_gradient", "0.0", register_all)
STRATA_CONFORMANCE_CASES({"{type: test_double}", "2,3,3", "2,3,3"})
