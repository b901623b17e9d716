// global_avg_pool: the mean of each channel over all positions (ResNet's and GoogLeNet's head).
//
// WHAT THIS OBJECT REPRESENTS
//   y[n, c, 0, 0] = mean over (h, w) of x[n, c, h, w]: torch.nn.AdaptiveAvgPool2d((1, 1)), as in
//   torchvision's ResNet and GoogLeNet. The output keeps the [C, 1, 1] sample shape of PyTorch; a
//   following `linear` flattens it (as torch.flatten(x, 1) does before `fc`), and `flatten` makes
//   it [C] explicitly. No parameters, no keys.
//
// REQUIRES
//   - one input with sample shape [C, H, W].
// ENSURES
//   - output sample shape [C, 1, 1].
//   - backward: dx[n, c, h, w] = dy[n, c] / (H*W).
//   - forward and backward run on the backend's "global_avg_pool" kernel (strata/ops.hpp's
//     GlobalAvgPoolDesc); every kernel sums in double, and agrees with the reference within the
//     conformance tolerance.
#include <memory>

#include "common.hpp"
#include "strata/error.hpp"
#include "strata/export.hpp"
#include "strata/ops.hpp"

namespace strata::layers {

namespace {

class GlobalAvgPool final : public Layer {
 public:
  explicit GlobalAvgPool(const Config&) {}

  std::string_view type() const override { return "global_avg_pool"; }
  // backward copies or spreads dout: it reads neither tensor's values.
  bool backward_reads_inputs() const override { return false; }
  bool backward_reads_output() const override { return false; }
  bool recomputable() const override { return true; }
  std::string implementation() const override { return kernel_ ? kernel_->implementation() : ""; }
  Window window() const override {  // every output sees its whole channel
    Window window;
    window.global = true;
    return window;
  }

  // ONNX GlobalAveragePool, which keeps the [C, 1, 1] sample shape as this layer does.
  bool export_to(ExportContext& context) const override {
    context.node("GlobalAveragePool", {context.input()}, {context.output()});
    return true;
  }

  void forward(Context&, std::span<const Tensor> in, Tensor& out) override {
    prepare_output(out, output_shape().with_batch(in[0].dim(0)));
    kernel_->forward(in[0], out);
  }

  void backward(Context&, std::span<const Tensor>, const Tensor&, const Tensor& dout,
                std::span<Tensor> din) override {
    kernel_->backward(dout, din[0]);
  }

 protected:
  Shape infer_shape(const SetupContext& context, std::span<const Shape> inputs) override {
    require_image_shape(inputs[0], "global_avg_pool");
    GlobalAvgPoolDesc desc;
    desc.channels = inputs[0][0];
    desc.area = inputs[0][1] * inputs[0][2];
    kernel_ = context.kernel<GlobalAvgPoolKernel>("global_avg_pool", desc);
    return Shape{desc.channels, 1, 1};
  }

 private:
  std::shared_ptr<GlobalAvgPoolKernel> kernel_;
};

}  // namespace

void register_global_avg_pool(Registries& registries) {
  registries.layers.add<GlobalAvgPool>("global_avg_pool");
}

}  // namespace strata::layers
