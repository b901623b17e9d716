// test_broken_scale: out = weight * in, elementwise (weight has the sample's shape), with a
// backward() that is wrong on purpose, for the gradient checker's tests.
//   broken: none    both gradients right
//   broken: input   din = 1.05 * weight * dout (5% too large)
//   broken: weight  dweight leaves out the last sample of the batch
//   broken: one     one element wrong, the rest right: din of the middle element of the batch
//                   has the wrong sign, and dweight of the middle element is 10% too large
#include "strata/config.hpp"
#include "strata/layer.hpp"
#include "strata/plugin.hpp"

namespace {
class BrokenScale final : public strata::Layer {
 public:
  explicit BrokenScale(const strata::Config& config)
      : broken_(config.get<std::string>("broken", "none")) {
    if (broken_ != "none" && broken_ != "input" && broken_ != "weight" && broken_ != "one") {
      config.fail_key("broken", "expected none, input, weight or one");
    }
  }
  std::string_view type() const override { return "test_broken_scale"; }
  std::vector<strata::Param*> params() override { return {&weight_}; }
  void forward(strata::Context&, std::span<const strata::Tensor> in, strata::Tensor& out) override {
    const int64_t per_sample = weight_.value.numel();
    for (int64_t i = 0; i < out.numel(); ++i)
      out.data()[i] = weight_.value.data()[i % per_sample] * in[0].data()[i];
  }
  void backward(strata::Context&, std::span<const strata::Tensor> in, const strata::Tensor&,
                const strata::Tensor& dout, std::span<strata::Tensor> din) override {
    const int64_t per_sample = weight_.value.numel();
    const int64_t batch = dout.numel() / per_sample;
    if (din[0].defined()) {
      const float factor = broken_ == "input" ? 1.05f : 1.0f;
      for (int64_t i = 0; i < dout.numel(); ++i) {
        din[0].data()[i] = factor * weight_.value.data()[i % per_sample] * dout.data()[i];
      }
    }
    weight_.grad.fill(0.0f);
    const int64_t samples = broken_ == "weight" ? batch - 1 : batch;
    for (int64_t i = 0; i < samples * per_sample; ++i) {
      weight_.grad.data()[i % per_sample] += in[0].data()[i] * dout.data()[i];
    }
    if (broken_ == "one") {
      if (din[0].defined()) din[0].data()[dout.numel() / 2] *= -1.0f;
      weight_.grad.data()[per_sample / 2] *= 1.1f;
    }
  }

 protected:
  strata::Shape infer_shape(const strata::SetupContext&,
                            std::span<const strata::Shape> in) override {
    weight_ = strata::Param::make("weight", in[0], "xavier_uniform", 1, 1);  // U(-1.7, 1.7)
    return in[0];
  }

 private:
  std::string broken_;
  strata::Param weight_;
};
void register_all(strata::Registries& registries) {
  registries.layers.add<BrokenScale>("test_broken_scale");
}
}  // namespace

STRATA_PLUGIN("test_broken_backward", "0.0", register_all)
