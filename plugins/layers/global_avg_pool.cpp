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
//   - sums run in double, one (sample, channel) plane per step, split over the backend's
//     parallel_for, so every backend gives identical results.
#include <algorithm>

#include "common.hpp"
#include "strata/error.hpp"
#include "strata/export.hpp"

namespace strata::layers {

namespace {

class GlobalAvgPool final : public Layer {
 public:
  explicit GlobalAvgPool(const Config&) {}

  std::string_view type() const override { return "global_avg_pool"; }
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

  void forward(Context& context, std::span<const Tensor> in, Tensor& out) override {
    const int64_t planes = in[0].dim(0) * channels_;
    prepare_output(out, output_shape().with_batch(in[0].dim(0)));
    const float* x = in[0].data();
    float* y = out.data();
    const int64_t area = area_;
    for_planes(context, planes, [=](int64_t lo, int64_t hi) {
      for (int64_t p = lo; p < hi; ++p) {
        const float* plane = x + p * area;
        double sum = 0.0;
        for (int64_t i = 0; i < area; ++i) sum += plane[i];
        y[p] = static_cast<float>(sum / static_cast<double>(area));
      }
    });
  }

  void backward(Context& context, std::span<const Tensor> in, const Tensor&, const Tensor& dout,
                std::span<Tensor> din) override {
    if (!din[0].defined()) return;
    const int64_t planes = in[0].dim(0) * channels_;
    const float* dy = dout.data();
    float* dx = din[0].data();
    const int64_t area = area_;
    const float inverse = 1.0f / static_cast<float>(area);
    for_planes(context, planes, [=](int64_t lo, int64_t hi) {
      for (int64_t p = lo; p < hi; ++p) {
        const float value = dy[p] * inverse;
        std::fill(dx + p * area, dx + (p + 1) * area, value);
      }
    });
  }

 protected:
  Shape infer_shape(const SetupContext&, std::span<const Shape> inputs) override {
    require_image_shape(inputs[0], "global_avg_pool");
    channels_ = inputs[0][0];
    area_ = inputs[0][1] * inputs[0][2];
    return Shape{channels_, 1, 1};
  }

 private:
  void for_planes(Context& context, int64_t planes,
                  const std::function<void(int64_t, int64_t)>& body) const {
    parallel_elementwise(context, planes, area_, body);
  }

  int64_t channels_ = 0;
  int64_t area_ = 1;
};

}  // namespace

void register_global_avg_pool(Registries& registries) {
  registries.layers.add<GlobalAvgPool>("global_avg_pool");
}

}  // namespace strata::layers
