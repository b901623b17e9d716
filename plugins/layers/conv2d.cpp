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
//   padding       0, p, [ph, pw], [top, bottom, left, right], `same` or `same_lower`.
//                 [top, bottom, left, right] is not ONNX's `pads` order ([top, left, bottom,
//                 right]): reorder. `same` (out = in, stride 1 only) pads F_eff - 1 in all on each
//                 axis, F_eff = dilation*(kernel-1)+1, half before and half after, the odd one
//                 after for an even F_eff (PyTorch's padding='same', ONNX auto_pad SAME_UPPER);
//                 `same_lower` puts the odd one before (ONNX SAME_LOWER).
//   padding_mode  zeros (default) | reflect | replicate | circular: PyTorch's padding_mode (ONNX
//                 Pad modes reflect, edge, wrap before the Conv). Other than zeros, the input is
//                 padded explicitly (pad.hpp: reflect needs each padding less than the input,
//                 circular at most the input), then convolved without padding, as PyTorch does.
//                 Asymmetric zero padding is split the same way: the symmetric part stays in the
//                 kernel, the rest is padded explicitly (the fast kernels take symmetric padding).
//   dilation      1 or [dh, dw]
//   groups        1; in_channels and out_channels must both be divisible by it
//   bias          true
//   round         exact (default): (in - F_eff + 2P)/S + 1 must be whole, else setup fails with
//                 the arithmetic; floor: PyTorch's floor((in - F_eff + 2P)/S) + 1. (2P is
//                 top + bottom, or left + right.) No ceil: PyTorch's and ONNX's convolutions have
//                 none, and `round: ceil` is an error naming the key.
//
// REQUIRES
//   - one input with sample shape [C, H, W], C divisible by groups, and the dilated kernel fits
//     in the padded input.
// ENSURES
//   - output sample shape [out_channels, out_h, out_w].
//   - the arithmetic runs in the backend's "conv2d" kernel, chosen once at setup for this
//     geometry and the experiment's precision (bf16: x, weight and dy rounded to bfloat16, float
//     sums; the bias and its gradient stay float).
#include <fmt/format.h>

#include <algorithm>
#include <memory>
#include <optional>

#include "common.hpp"
#include "pad.hpp"
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
        rounding_(read_rounding(config, /*allow_ceil=*/false)),
        padding_mode_(read_pad_mode(config, "padding_mode", "zeros")) {
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
    padding_ = read_padding(config, Window{kernel_, stride_, dilation_});
  }

  std::string_view type() const override { return "conv2d"; }
  // backward reads its input (x, for the weight gradient), never its output.
  bool backward_reads_output() const override { return false; }
  bool recomputable() const override { return true; }

  std::vector<Param*> params() override {
    if (has_bias_) return {&weight_, &bias_};
    return {&weight_};
  }

  int64_t multiply_adds() const override {
    return desc_.out_channels * desc_.out_h * desc_.out_w * (desc_.in_channels / groups_) *
           kernel_[0] * kernel_[1];
  }
  Window window() const override { return Window{kernel_, stride_, dilation_}; }
  std::string implementation() const override {
    return kernel_impl_ ? kernel_impl_->implementation() : std::string();
  }

  // ONNX Conv (its output size is always floor()ed: both `round` rules), with `pads` [top,
  // left, bottom, right]; another padding_mode is a Pad (export_pad) before it.
  bool export_to(ExportContext& context) const override {
    std::string x = context.input();
    Padding conv_padding = padding_;
    if (padding_mode_ != PadMode::kConstant) {
      x = context.value("padded");
      export_pad(context, context.input(), x, padding_mode_, 0.0f, padding_);
      conv_padding = Padding{};
    }
    std::vector<std::string> inputs = {x, context.parameter("weight", weight_.value)};
    if (has_bias_) inputs.push_back(context.parameter("bias", bias_.value));
    context.node("Conv", std::move(inputs), {context.output()})
        .set("kernel_shape", onnx_ints(kernel_))
        .set("strides", onnx_ints(stride_))
        .set("dilations", onnx_ints(dilation_))
        .set("pads", onnx_pads(conv_padding.begin, conv_padding.end))
        .set("group", groups_);
    return true;
  }

  void forward(Context& context, std::span<const Tensor> in, Tensor& out) override {
    prepare_output(out, output_shape().with_batch(in[0].dim(0)));
    const Tensor& x = pad_plan_ ? padded(context, in[0]) : in[0];
    kernel_impl_->forward(x, weight_.value, has_bias_ ? &bias_.value : nullptr, out);
  }

  void backward(Context& context, std::span<const Tensor> in, const Tensor&, const Tensor& dout,
                std::span<Tensor> din) override {
    // Explicit padding: padded again from this backward's input (not the last forward's), and
    // the transpose of the padding sums the padded input's gradient back onto the input.
    const Tensor& x = pad_plan_ ? padded(context, in[0]) : in[0];
    if (din[0].defined()) {
      if (!pad_plan_) {
        kernel_impl_->backward_data(dout, weight_.value, din[0]);
      } else {
        reuse_buffer(padded_grad_, x.shape());
        kernel_impl_->backward_data(dout, weight_.value, padded_grad_);
        pad_backward(context, *pad_plan_, padded_grad_, din[0]);
      }
    }
    kernel_impl_->backward_params(x, dout, weight_.grad, has_bias_ ? &bias_.grad : nullptr);
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
    const Pair out = output_extents(in, window(), padding_, rounding_);
    desc.out_h = out[0];
    desc.out_w = out[1];
    // The kernel's (symmetric, zero) padding, and what is padded explicitly before it.
    Pair kernel_pad{0, 0};
    Padding explicit_pad = padding_;
    if (padding_mode_ == PadMode::kConstant) {
      for (int axis = 0; axis < 2; ++axis) {
        kernel_pad[axis] = std::min(padding_.begin[axis], padding_.end[axis]);
        explicit_pad.begin[axis] -= kernel_pad[axis];
        explicit_pad.end[axis] -= kernel_pad[axis];
      }
    }
    pad_plan_.reset();
    if (!explicit_pad.zero()) {
      pad_plan_ = make_pad_plan(padding_mode_, 0.0f, explicit_pad, in);
      desc.in_h = pad_plan_->out_h;
      desc.in_w = pad_plan_->out_w;
    }
    desc.out_channels = out_channels_;
    desc.kernel_h = kernel_[0];
    desc.kernel_w = kernel_[1];
    desc.stride_h = stride_[0];
    desc.stride_w = stride_[1];
    desc.pad_h = kernel_pad[0];
    desc.pad_w = kernel_pad[1];
    desc.dilation_h = dilation_[0];
    desc.dilation_w = dilation_[1];
    desc.groups = groups_;
    desc.precision = context.precision();

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
  // The input padded as pad_plan_ says, in a buffer kept between steps.
  //   requires: pad_plan_ (explicit padding).
  const Tensor& padded(Context& context, const Tensor& x) {
    pad_forward(context, *pad_plan_, x, padded_input_);
    return padded_input_;
  }

  int64_t out_channels_;
  Pair kernel_, stride_, dilation_;
  Padding padding_;
  int64_t groups_;
  bool has_bias_;
  Rounding rounding_;
  PadMode padding_mode_;
  // What is padded explicitly before the kernel (another padding_mode, or the asymmetric part of
  // zero padding); empty when the kernel's own padding does it all.
  std::optional<PadPlan> pad_plan_;
  Tensor padded_input_, padded_grad_;
  Param weight_, bias_;
  Conv2dDesc desc_;
  std::shared_ptr<Conv2dKernel> kernel_impl_;
};

}  // namespace

void register_conv2d(Registries& registries) { registries.layers.add<Conv2d>("conv2d"); }

}  // namespace strata::layers
