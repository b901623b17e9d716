// prelu: the parametric ReLU of He et al. (2015), as torch.nn.PReLU(num_parameters=C).
//
// WHAT THIS OBJECT REPRESENTS
//   out = x for x > 0, weight[c] * x otherwise, where c is the channel (dimension 1 of the
//   batched input). The slope `weight` [C] is learned; PyTorch's name and shape, so a PReLU
//   state_dict maps onto /model/<layer>/weight.
//
// CONFIGURATION
//   slope: the slope at initialization, default 0.25 (PyTorch's default). It is the parameter's
//         default initializer, "{type: constant, value: <slope>}"; the experiment's per-layer
//         `init: {weight: ...}` overrides it as for any parameter.
//   (no other keys: any other key is an error)
//
// REQUIRES
//   - one input, of any sample shape [C, ...] (rank >= 1)
// ENSURES
//   - output shape = input shape; weight has shape [C], is excluded from weight decay
//     (decay_mult 0: decaying a slope towards 0 would turn PReLU into ReLU).
//   - export_to() writes it as ONNX PRelu, so models using it export with `strata export`.
#include <fmt/format.h>

#include "strata/conformance_cases.hpp"
#include "strata/elementwise.hpp"
#include "strata/export.hpp"
#include "strata/layer.hpp"
#include "strata/plugin.hpp"

namespace {

using strata::Config;
using strata::Context;
using strata::Param;
using strata::Shape;
using strata::Tensor;

class PRelu final : public strata::Layer {
 public:
  explicit PRelu(const Config& config) : init_(config.get<double>("slope", 0.25)) {}

  std::string_view type() const override { return "prelu"; }
  std::vector<Param*> params() override { return {&weight_}; }

  // The optional export hook (`strata export --onnx`, docs/writing-a-plugin.md "Export"): ONNX
  // PRelu, with the slope as the initializer "<layer>.weight" viewed as [C, 1, ...] so that it
  // broadcasts over the sample's other axes, as torch.onnx.export writes nn.PReLU.
  bool export_to(strata::ExportContext& context) const override {
    std::vector<int64_t> dims(context.input_shape().rank(), 1);
    dims[0] = channels_;
    const std::string slope = context.parameter("weight", weight_.value.view(Shape(dims)));
    context.node("PRelu", {context.input(), slope}, {context.output()});
    return true;
  }

  // Element-wise, so it runs through strata::parallel_elementwise (strata/elementwise.hpp): chunks
  // on the backend's threads, each a plain loop the compiler vectorizes.
  void forward(Context& context, std::span<const Tensor> in, Tensor& out) override {
    const Tensor& x = in[0];
    const int64_t n = x.dim(0), per_sample = x.numel() / std::max<int64_t>(n, 1);
    const int64_t inner = per_sample / channels_;
    const float* slope = weight_.value.data();
    const float* xs = x.data();
    float* ys = out.data();
    strata::parallel_elementwise(context, x.numel(), [=](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        const float v = xs[i];
        ys[i] = v > 0.0f ? v : slope[(i % per_sample) / inner] * v;
      }
    });
  }

  void backward(Context& context, std::span<const Tensor> in, const Tensor& out, const Tensor& dout,
                std::span<Tensor> din) override {
    const Tensor& x = in[0];
    const int64_t n = x.dim(0), per_sample = x.numel() / std::max<int64_t>(n, 1);
    const int64_t inner = per_sample / channels_;
    const float* slope = weight_.value.data();
    const float* xs = x.data();
    const float* dys = dout.data();
    if (din[0].defined()) {
      float* dxs = din[0].data();
      strata::parallel_elementwise(context, x.numel(), [=](int64_t lo, int64_t hi) {
        for (int64_t i = lo; i < hi; ++i) {
          dxs[i] = xs[i] > 0.0f ? dys[i] : slope[(i % per_sample) / inner] * dys[i];
        }
      });
    }
    // The slope's gradient sums over every element of a channel: a reduction, kept serial (and
    // in double) rather than split into chunks that would race on dslope.
    std::vector<double> dslope(static_cast<std::size_t>(channels_), 0.0);
    for (int64_t i = 0; i < x.numel(); ++i) {
      const float v = xs[i];
      if (v <= 0.0f)
        dslope[static_cast<std::size_t>((i % per_sample) / inner)] +=
            static_cast<double>(v) * dys[i];
    }
    for (int64_t c = 0; c < channels_; ++c) weight_.grad.data()[c] = static_cast<float>(dslope[c]);
  }

 protected:
  Shape infer_shape(const strata::SetupContext&, std::span<const Shape> in) override {
    if (in[0].rank() < 1)
      strata::fail("expects a sample of rank >= 1 [C, ...], got {}", in[0].str());
    channels_ = in[0][0];
    weight_ =
        Param::make("weight", Shape{channels_}, fmt::format("{{type: constant, value: {}}}", init_),
                    /*fan_in=*/1, /*fan_out=*/1, /*decay_mult=*/0.0f);
    return in[0];
  }

 private:
  double init_;
  int64_t channels_ = 0;
  Param weight_;
};

void register_all(strata::Registries& registries) { registries.layers.add<PRelu>("prelu"); }

}  // namespace

STRATA_PLUGIN("prelu", "1.0", register_all)
// What `strata check-plugin libstrata_prelu.so` runs: an image and a feature vector.
STRATA_CONFORMANCE_CASES({"{type: prelu}", "3,5,5", "3,5,5"},
                         {"{type: prelu, slope: 0.1}", "7", "7"})
