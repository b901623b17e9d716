// max_pool, avg_pool: 2-D pooling over each channel (PyTorch's nn.MaxPool2d / nn.AvgPool2d).
//
// WHAT THIS OBJECT REPRESENTS
//   max_pool: y[n, c, i, j] = max of x[n, c] over the window at (i*sh - ph, j*sw - pw) of size
//             kh x kw, its taps dilation apart; padding never wins (it acts as -inf). The
//             gradient flows to the first maximum of each window.
//   avg_pool: the mean over the window. Padded zeros count toward the divisor when
//             count_include_pad (PyTorch's default), otherwise the divisor is the number of
//             real input elements in the window.
//   No parameters. With a FrozenBranches in the Context (gradient checking), max_pool records
//   which element won each window and then keeps taking it.
//
// KEYS
//   kernel             required: k or [kh, kw]
//   stride             default: the kernel (non-overlapping windows)
//   padding            0, p, [ph, pw], [top, bottom, left, right] (ONNX's `pads` order is
//                      [top, left, bottom, right]: reorder), `same` or `same_lower` (stride 1
//                      only: window - 1 in all, the odd one at the end, or the beginning for
//                      same_lower, as ONNX SAME_UPPER/SAME_LOWER). Each side at most half the
//                      kernel (as in PyTorch), so that every window covers a real element
//   round              exact (default) | floor | ceil. exact and floor: the same rule as conv2d;
//                      ceil: PyTorch's ceil_mode=True (ONNX ceil_mode=1): out =
//                      ceil((in + top + bottom - window)/stride) + 1, minus one when the last
//                      window would start at or past in + top. A window running past the padded
//                      input is clipped; avg_pool's divisor is then the clipped area (padding
//                      counts, the overhang does not), as in PyTorch
//   dilation           1 or [dh, dw] (max_pool only; PyTorch's MaxPool2d dilation, ONNX
//                      MaxPool dilations): window = dilation*(kernel-1)+1
//   count_include_pad  true (avg_pool only)
//
// REQUIRES
//   - one input with sample shape [C, H, W] in which the window fits.
// ENSURES
//   - output sample shape [C, out_h, out_w]; computed by the backend's "pool2d" kernel.
#include <fmt/format.h>

#include <memory>

#include "common.hpp"
#include "strata/error.hpp"
#include "strata/export.hpp"
#include "strata/ops.hpp"

namespace strata::layers {

namespace {

class Pool2d : public Layer {
 public:
  Pool2d(const Config& config, Pool2dDesc::Mode mode)
      : mode_(mode),
        kernel_(read_pair(config, "kernel", std::nullopt, 1)),
        stride_(read_pair(config, "stride", kernel_, 1)),
        dilation_(mode == Pool2dDesc::Mode::kMax ? read_pair(config, "dilation", Pair{1, 1}, 1)
                                                 : Pair{1, 1}),
        rounding_(read_rounding(config)),
        count_include_pad_(mode == Pool2dDesc::Mode::kAverage
                               ? config.get<bool>("count_include_pad", true)
                               : true) {
    if (mode == Pool2dDesc::Mode::kAverage && config.has("dilation")) {
      config.fail_key("dilation",
                      "avg_pool has no dilation (nor has PyTorch's AvgPool2d or ONNX "
                      "AveragePool); use max_pool, or dilation 1");
    }
    padding_ = read_padding(config, Window{kernel_, stride_, dilation_});
    for (int axis = 0; axis < 2; ++axis) {
      for (const bool end : {false, true}) {
        const int64_t pad = end ? padding_.end[axis] : padding_.begin[axis];
        if (2 * pad <= kernel_[axis]) continue;
        const char* side = padding_.symmetric() ? (axis == 0 ? "height" : "width")
                           : axis == 0          ? (end ? "bottom" : "top")
                                                : (end ? "right" : "left");
        config.fail_key("padding",
                        fmt::format("{} padding {} is more than half the kernel {}: some windows "
                                    "would cover only padding",
                                    side, pad, kernel_[axis]));
      }
    }
  }

  std::string_view type() const override {
    return mode_ == Pool2dDesc::Mode::kMax ? "max_pool" : "avg_pool";
  }
  // Max pooling's backward finds each window's maximum in x again; average pooling spreads dout
  // by the window's divisor. Neither reads y.
  bool backward_reads_inputs() const override { return mode_ == Pool2dDesc::Mode::kMax; }
  bool backward_reads_output() const override { return false; }
  bool recomputable() const override { return true; }

  Window window() const override { return Window{kernel_, stride_, dilation_}; }
  std::string implementation() const override {
    return kernel_impl_ ? kernel_impl_->implementation() : std::string();
  }

  // ONNX MaxPool / AveragePool. round: exact and floor are ceil_mode 0 (exact: the division is
  // whole, so flooring changes nothing), ceil is ceil_mode 1; pads [top, left, bottom, right].
  bool export_to(ExportContext& context) const override {
    const bool max = mode_ == Pool2dDesc::Mode::kMax;
    ExportNode& node =
        context.node(max ? "MaxPool" : "AveragePool", {context.input()}, {context.output()});
    node.set("kernel_shape", onnx_ints(kernel_))
        .set("strides", onnx_ints(stride_))
        .set("pads", onnx_pads(padding_.begin, padding_.end))
        .set("ceil_mode", int64_t{rounding_ == Rounding::kCeil ? 1 : 0});
    if (max && dilation_ != Pair{1, 1}) node.set("dilations", onnx_ints(dilation_));
    if (!max) node.set("count_include_pad", int64_t{count_include_pad_ ? 1 : 0});
    return true;
  }

  void forward(Context& context, std::span<const Tensor> in, Tensor& out) override {
    prepare_output(out, output_shape().with_batch(in[0].dim(0)));
    if (mode_ == Pool2dDesc::Mode::kMax && context.frozen != nullptr) {
      frozen_max_forward(*context.frozen, in[0], out);
      return;
    }
    kernel_impl_->forward(in[0], out);
  }

  void backward(Context&, std::span<const Tensor> in, const Tensor& out, const Tensor& dout,
                std::span<Tensor> din) override {
    if (din[0].defined()) kernel_impl_->backward(in[0], out, dout, din[0]);
  }

 protected:
  Shape infer_shape(const SetupContext& context, std::span<const Shape> inputs) override {
    const Shape& in = inputs[0];
    require_image_shape(in, type());
    Pool2dDesc desc;
    desc.mode = mode_;
    desc.channels = in[0];
    desc.in_h = in[1];
    desc.in_w = in[2];
    desc.kernel_h = kernel_[0];
    desc.kernel_w = kernel_[1];
    desc.stride_h = stride_[0];
    desc.stride_w = stride_[1];
    desc.pad_h = padding_.begin[0];
    desc.pad_w = padding_.begin[1];
    desc.pad_h_end = padding_.end[0];
    desc.pad_w_end = padding_.end[1];
    desc.dilation_h = dilation_[0];
    desc.dilation_w = dilation_[1];
    desc.count_include_pad = count_include_pad_;
    const Pair out = output_extents(in, window(), padding_, rounding_);
    desc.out_h = out[0];
    desc.out_w = out[1];
    kernel_impl_ = context.kernel<Pool2dKernel>("pool2d", desc);
    desc_ = desc;
    return Shape{in[0], desc.out_h, desc.out_w};
  }

 private:
  // Max pooling under FrozenBranches (gradient checking): while recording, the first maximum of
  // each window, as the kernels define it; afterwards the recorded element, whatever the values.
  void frozen_max_forward(FrozenBranches& frozen, const Tensor& x, Tensor& y) const {
    const Pool2dDesc& d = desc_;
    const int64_t planes = x.dim(0) * d.channels;
    const int64_t in_plane = d.in_h * d.in_w, out_plane = d.out_h * d.out_w;
    int64_t* taken = frozen.of(this, y.numel()).data();
    for (int64_t p = 0; p < planes; ++p) {
      const float* xp = x.data() + p * in_plane;
      for (int64_t o = p * out_plane; o < (p + 1) * out_plane; ++o) {
        if (frozen.recording) {
          const int64_t oh = (o - p * out_plane) / d.out_w, ow = (o - p * out_plane) % d.out_w;
          const PoolTaps h =
              pool_taps(oh, d.stride_h, d.pad_h, d.pad_bottom(), d.kernel_h, d.dilation_h, d.in_h);
          const PoolTaps w =
              pool_taps(ow, d.stride_w, d.pad_w, d.pad_right(), d.kernel_w, d.dilation_w, d.in_w);
          int64_t best = -1;
          for (int64_t i = h.lo; i < h.hi; ++i) {
            const int64_t row = (h.start + i * d.dilation_h) * d.in_w;
            for (int64_t j = w.lo; j < w.hi; ++j) {
              const int64_t index = row + w.start + j * d.dilation_w;
              if (best < 0 || xp[index] > xp[best]) best = index;
            }
          }
          taken[o] = best;
        }
        y.data()[o] = xp[taken[o]];
      }
    }
  }

  Pool2dDesc desc_;
  Pool2dDesc::Mode mode_;
  Pair kernel_, stride_, dilation_;
  Padding padding_;
  Rounding rounding_;
  bool count_include_pad_;
  std::shared_ptr<Pool2dKernel> kernel_impl_;
};

class MaxPool final : public Pool2d {
 public:
  explicit MaxPool(const Config& config) : Pool2d(config, Pool2dDesc::Mode::kMax) {}
};

class AvgPool final : public Pool2d {
 public:
  explicit AvgPool(const Config& config) : Pool2d(config, Pool2dDesc::Mode::kAverage) {}
};

}  // namespace

void register_pooling(Registries& registries) {
  registries.layers.add<MaxPool>("max_pool");
  registries.layers.add<AvgPool>("avg_pool");
}

}  // namespace strata::layers
