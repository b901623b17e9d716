// conv2d: 2-D convolution (cross-correlation, as in PyTorch's nn.Conv2d).
//
// WHAT THIS OBJECT REPRESENTS
//   y[n, k] = bias[k] + sum over the input channels c of group(k) of
//             weight[k, c, :, :] (*) x_padded[n, c] with the given stride and dilation.
//   Parameters (PyTorch names and shapes): weight [out_channels, in_channels/groups, kh, kw]
//   (default init he_normal, fan_in = in/groups*kh*kw, fan_out = out/groups*kh*kw) and, unless
//   `bias: false`, bias [out_channels] (default init constant 0, no weight decay).
//
// KEYS
//   out_channels  required, >= 1
//   kernel        required: k or [kh, kw]
//   stride        1 or [sh, sw]
//   padding       0, p, [ph, pw], or `same` (out = in). `same` is symmetric zero padding
//                 (effective kernel - 1)/2, so it requires stride 1 and an odd effective kernel
//                 dilation*(kernel-1)+1 on both axes (padding is always symmetric).
//   dilation      1 or [dh, dw]
//   groups        1; in_channels and out_channels must both be divisible by it
//   bias          true
//   round         exact (default): (in - F_eff + 2P)/S + 1 must be whole, else setup fails with
//                 the arithmetic; floor: PyTorch's floor((in - F_eff + 2P)/S) + 1
//
// REQUIRES
//   - one input with sample shape [C, H, W], C divisible by groups, and the dilated kernel fits
//     in the padded input.
// ENSURES
//   - output sample shape [out_channels, out_h, out_w].
//   - the arithmetic runs in the backend's "conv2d" kernel, chosen once at setup for this
//     geometry.
#include <fmt/format.h>

#include <memory>

#include "common.hpp"
#include "strata/error.hpp"
#include "strata/export.hpp"
#include "strata/ops.hpp"

namespace strata::layers {

namespace {

class Conv2d final : public Layer {
 public:
  explicit Conv2d(const Config& config)
      : out_channels_(config.get<int64_t>("out_channels")),
        kernel_(read_pair(config, "kernel", std::nullopt, 1)),
        stride_(read_pair(config, "stride", Pair{1, 1}, 1)),
        dilation_(read_pair(config, "dilation", Pair{1, 1}, 1)),
        groups_(config.get<int64_t>("groups", 1)),
        has_bias_(config.get<bool>("bias", true)),
        rounding_(read_rounding(config)) {
    if (out_channels_ < 1) {
      config.fail_key("out_channels", fmt::format("must be at least 1, found {}", out_channels_));
    }
    if (groups_ < 1) {
      config.fail_key("groups", fmt::format("must be at least 1, found {}", groups_));
    }
    if (out_channels_ % groups_ != 0) {
      config.fail_key("groups", fmt::format("out_channels {} is not divisible by groups {}",
                                            out_channels_, groups_));
    }
    read_padding(config);
  }

  std::string_view type() const override { return "conv2d"; }

  std::vector<Param*> params() override {
    if (has_bias_) return {&weight_, &bias_};
    return {&weight_};
  }

  int64_t multiply_adds() const override {
    return desc_.out_channels * desc_.out_h * desc_.out_w * (desc_.in_channels / groups_) *
           kernel_[0] * kernel_[1];
  }
  Window window() const override {
    Window window;
    window.kernel = kernel_;
    window.stride = stride_;
    window.dilation = dilation_;
    return window;
  }

  // ONNX Conv, whose output size is always floor()ed: the same as both `round` rules.
  bool export_to(ExportContext& context) const override {
    std::vector<std::string> inputs = {context.input(), context.parameter("weight", weight_.value)};
    if (has_bias_) inputs.push_back(context.parameter("bias", bias_.value));
    context.node("Conv", std::move(inputs), {context.output()})
        .set("kernel_shape", onnx_ints(kernel_))
        .set("strides", onnx_ints(stride_))
        .set("dilations", onnx_ints(dilation_))
        .set("pads", onnx_pads(padding_, padding_))
        .set("group", groups_);
    return true;
  }

  void forward(Context&, std::span<const Tensor> in, Tensor& out) override {
    prepare_output(out, output_shape().with_batch(in[0].dim(0)));
    kernel_impl_->forward(in[0], weight_.value, has_bias_ ? &bias_.value : nullptr, out);
  }

  void backward(Context&, std::span<const Tensor> in, const Tensor&, const Tensor& dout,
                std::span<Tensor> din) override {
    if (din[0].defined()) kernel_impl_->backward_data(dout, weight_.value, din[0]);
    kernel_impl_->backward_params(in[0], dout, weight_.grad, has_bias_ ? &bias_.grad : nullptr);
  }

 protected:
  Shape infer_shape(const SetupContext& context, std::span<const Shape> inputs) override {
    const Shape& in = inputs[0];
    require_image_shape(in, "conv2d");
    const int64_t in_channels = in[0];
    if (in_channels % groups_ != 0) {
      fail("input channels {} are not divisible by groups {} (each group sees in/groups channels)",
           in_channels, groups_);
    }
    Conv2dDesc desc;
    desc.in_channels = in_channels;
    desc.in_h = in[1];
    desc.in_w = in[2];
    desc.out_channels = out_channels_;
    desc.kernel_h = kernel_[0];
    desc.kernel_w = kernel_[1];
    desc.stride_h = stride_[0];
    desc.stride_w = stride_[1];
    desc.pad_h = padding_[0];
    desc.pad_w = padding_[1];
    desc.dilation_h = dilation_[0];
    desc.dilation_w = dilation_[1];
    desc.groups = groups_;
    desc.out_h = output_extent("height", in[1], kernel_[0], dilation_[0], padding_[0], stride_[0],
                               rounding_);
    desc.out_w =
        output_extent("width", in[2], kernel_[1], dilation_[1], padding_[1], stride_[1], rounding_);

    const int64_t per_group_in = in_channels / groups_;
    const int64_t per_group_out = out_channels_ / groups_;
    const int64_t window = kernel_[0] * kernel_[1];
    weight_ = Param::make("weight", Shape{out_channels_, per_group_in, kernel_[0], kernel_[1]},
                          "he_normal", per_group_in * window, per_group_out * window);
    if (has_bias_) {
      bias_ = Param::make("bias", Shape{out_channels_}, "constant", per_group_in * window,
                          per_group_out * window, 0.0f);
    }
    kernel_impl_ = context.kernel<Conv2dKernel>("conv2d", desc);
    desc_ = desc;
    return Shape{out_channels_, desc.out_h, desc.out_w};
  }

 private:
  void read_padding(const Config& config) {
    std::optional<Config> node = config.find("padding");
    const std::string text = node && node->is_scalar() ? node->as<std::string>() : std::string();
    if (!text.empty() && text != "same" &&
        text.find_first_not_of("+-0123456789") != std::string::npos) {
      node->fail(
          fmt::format("expected an integer, a list [height, width] or 'same', found '{}'", text));
    }
    if (text == "same") {
      for (int axis = 0; axis < 2; ++axis) {
        const char* name = axis == 0 ? "height" : "width";
        const int64_t window = dilation_[axis] * (kernel_[axis] - 1) + 1;
        if (stride_[axis] != 1) {
          config.fail_key("padding", fmt::format("'same' needs stride 1, but the {} stride is {}; "
                                                 "give the padding as numbers",
                                                 name, stride_[axis]));
        }
        if (window % 2 == 0) {
          config.fail_key("padding",
                          fmt::format("'same' needs an odd kernel extent, but the {} kernel spans "
                                      "{} (asymmetric padding is not supported); give the "
                                      "padding as numbers",
                                      name, window));
        }
        padding_[axis] = (window - 1) / 2;
      }
      return;
    }
    padding_ = read_pair(config, "padding", Pair{0, 0}, 0);
  }

  int64_t out_channels_;
  Pair kernel_, stride_, dilation_;
  Pair padding_{0, 0};
  int64_t groups_;
  bool has_bias_;
  Rounding rounding_;
  Param weight_, bias_;
  Conv2dDesc desc_;
  std::shared_ptr<Conv2dKernel> kernel_impl_;
};

}  // namespace

void register_conv2d(Registries& registries) { registries.layers.add<Conv2d>("conv2d"); }

}  // namespace strata::layers
