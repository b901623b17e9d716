// strata/ops.hpp: descriptors and kernel interfaces of the ops backends implement.
//
// Conventions for every kernel method:
//   - tensors are float32, batch first (NCHW for images); N is taken from the tensor, everything
//     else from the descriptor the kernel was prepared with;
//   - outputs and gradients are overwritten, never accumulated;
//   - a gradient output that is an undefined Tensor (or a null pointer) is not wanted: skip it.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string_view>

#include "strata/backend.hpp"
#include "strata/tensor.hpp"

namespace strata {

// v rounded to the nearest bfloat16 (8 significand bits), ties to even, returned as the float of
// equal value: what AVX512-BF16's vcvtne2ps2bf16 computes, denormal inputs included (they become
// zero of the same sign). NaN stays a (quiet) NaN; values that round past the largest bfloat16
// become infinite. The reference backend's bf16 emulation rounds every product input with it.
inline float round_to_bf16(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  if ((bits & 0x7f800000u) == 0) {
    bits &= 0x80000000u;  // zero and denormals: signed zero
  } else if ((bits & 0x7fffffffu) > 0x7f800000u) {
    bits |= 0x00400000u;  // NaN: quiet, payload's top bits kept
  } else {
    bits += 0x7fffu + ((bits >> 16) & 1u);
  }
  bits &= 0xffff0000u;
  float out;
  std::memcpy(&out, &bits, sizeof out);
  return out;
}

// 2-D convolution (cross-correlation, as in PyTorch) with stride, zero padding, dilation and
// groups.
//   x [N, C, H, W], weight [K, C/groups, R, S], bias [K] (optional), y [N, K, out_h, out_w]
//   out_h = (H + pad_h + pad_bottom() - dilation_h*(R-1) - 1) / stride_h + 1  (the layer decides
//   rounding). pad_h/pad_w are the zeros before the input (top, left); pad_h_end/pad_w_end those
//   after it (bottom, right), -1 meaning "as many as before" (symmetric, the default). The end
//   padding enters only out_h/out_w: output (oh, ow) reads rows oh*stride_h - pad_h + r*dilation_h.
struct Conv2dDesc {
  int64_t in_channels = 0, in_h = 0, in_w = 0;
  int64_t out_channels = 0, kernel_h = 0, kernel_w = 0;
  int64_t stride_h = 1, stride_w = 1;
  int64_t pad_h = 0, pad_w = 0;
  int64_t pad_h_end = -1, pad_w_end = -1;  // -1: equal to pad_h / pad_w
  int64_t dilation_h = 1, dilation_w = 1;
  int64_t groups = 1;
  int64_t out_h = 0, out_w = 0;
  Precision precision = Precision::kFp32;  // kBf16: x, weight and dy rounded to bfloat16
  int64_t pad_bottom() const { return pad_h_end < 0 ? pad_h : pad_h_end; }
  int64_t pad_right() const { return pad_w_end < 0 ? pad_w : pad_w_end; }
  bool symmetric_padding() const { return pad_bottom() == pad_h && pad_right() == pad_w; }
};

// Throws an Error, prefixed with `kernel` ("tbb conv2d"), unless every extent, stride and
// dilation is positive, padding is non-negative (end padding -1 or more) and groups divides both
// channel counts.
// Kernels call it from on_prepare(), so every backend rejects the same descriptors.
void validate(const Conv2dDesc& desc, std::string_view kernel);

// The batch N of a conv2d pass, after checking its tensors against the descriptor: x and dx
// [N, C, H, W], weight and dweight [K, C/groups, R, S], bias and dbias [K], y and dy
// [N, K, out_h, out_w]. A null bias or dbias, or an undefined dweight, dbias or dx, is not checked
// (nor x, when dweight is undefined). A mismatch throws "<kernel>: <name> has shape .., expected
// ..". Every backend's conv2d calls these, so all report the same errors.
int64_t conv2d_forward_batch(const Conv2dDesc& desc, const Tensor& x, const Tensor& weight,
                             const Tensor* bias, const Tensor& y, std::string_view kernel);
int64_t conv2d_data_batch(const Conv2dDesc& desc, const Tensor& dy, const Tensor& weight,
                          const Tensor& dx, std::string_view kernel);
int64_t conv2d_params_batch(const Conv2dDesc& desc, const Tensor& x, const Tensor& dy,
                            const Tensor& dweight, const Tensor* dbias, std::string_view kernel);
// The bias gradient of filters [first, end): dbias[k] = the sum of dy[n, k, :, :] over the batch,
// in double, images in order and each plane in order (a fixed order: every backend's bits agree).
void conv2d_bias_gradient(const Conv2dDesc& desc, const float* dy, int64_t batch, int64_t first,
                          int64_t end, float* dbias);

// The arithmetic of one conv2d pass over ONE image, as a kernel performs it
// (Conv2dKernel::arithmetic()); bench/conv_bench.cpp's roofline divides it by the pass's time
// (docs/performance.md, "The roofline").
//   multiply_adds: the products summed into the result, 2 flops each, as a GEMM's 2 M N K counts
//     them: for direct convolution K * C/groups * R * S * out_h * out_w; for Winograd the
//     element-wise products of the transformed tiles; with any padding or discarded columns the
//     kernel multiplies too (zeros included, a micro-kernel's rounding up to its register block
//     not).
//   other_flops: arithmetic outside those products, 1 flop each: Winograd's input, output and dy
//     transforms (additions, subtractions, negations and multiplications by constants), col2im's
//     additions.
// Neither counts the bias (its addition in forward, its gradient's sums), nor work done once per
// call whatever the batch (transforming or packing the weights, reducing partial weight
// gradients).
struct Conv2dPassArithmetic {
  int64_t multiply_adds = 0;
  int64_t other_flops = 0;
  int64_t flops() const { return 2 * multiply_adds + other_flops; }
  bool operator==(const Conv2dPassArithmetic&) const = default;
};
struct Conv2dArithmetic {
  Conv2dPassArithmetic forward, backward_data, backward_params;
  bool operator==(const Conv2dArithmetic&) const = default;
};

// Direct convolution's multiply-adds of one pass over one image: K * C/groups * R * S * out_h *
// out_w (each pass does as many: forward, the data gradient and the weight gradient).
int64_t conv2d_direct_multiply_adds(const Conv2dDesc& desc);

class Conv2dKernel : public OpKernel<Conv2dDesc> {
 public:
  ~Conv2dKernel() override;
  // The arithmetic each pass performs for one image of the prepared descriptor (see
  // Conv2dPassArithmetic). The default, for kernels that do not say, is direct convolution's
  // count for every pass; a kernel whose methods do more or less (Winograd, padded "wide"
  // outputs) overrides it. Meaningful once prepared.
  virtual Conv2dArithmetic arithmetic() const;
  // y = x (*) weight + bias. bias may be null, or point at an undefined Tensor: no bias.
  virtual void forward(const Tensor& x, const Tensor& weight, const Tensor* bias, Tensor& y) = 0;
  // dx = conv_transpose(dy, weight)
  virtual void backward_data(const Tensor& dy, const Tensor& weight, Tensor& dx) = 0;
  // dweight = dy (*) x, dbias = sum of dy over N, out_h, out_w (dbias may be null)
  virtual void backward_params(const Tensor& x, const Tensor& dy, Tensor& dweight,
                               Tensor* dbias) = 0;
};

// 2-D max or average pooling. Padding is implicit: -inf for max, and for average it counts
// toward the divisor when count_include_pad (PyTorch's default), otherwise it does not.
// Window (oh, ow) has taps at rows oh*stride_h - pad_h + i*dilation_h (i < kernel_h), columns
// likewise; taps outside the input are padding. pad_h_end/pad_w_end: the padding after the input
// (bottom, right), -1 meaning "as many as before"; with count_include_pad, an average divides by
// the window's area clipped to [-pad_h, in_h + pad_bottom()) (PyTorch's rule, which also clips
// the last window of ceil rounding). Dilation is for max pooling only (validate() refuses it for
// average, as PyTorch's AvgPool2d has none).
struct Pool2dDesc {
  enum class Mode { kMax, kAverage };
  Mode mode = Mode::kMax;
  int64_t channels = 0, in_h = 0, in_w = 0;
  int64_t kernel_h = 0, kernel_w = 0;
  int64_t stride_h = 1, stride_w = 1;
  int64_t pad_h = 0, pad_w = 0;
  int64_t pad_h_end = -1, pad_w_end = -1;  // -1: equal to pad_h / pad_w
  int64_t dilation_h = 1, dilation_w = 1;
  bool count_include_pad = true;
  int64_t out_h = 0, out_w = 0;
  int64_t pad_bottom() const { return pad_h_end < 0 ? pad_h : pad_h_end; }
  int64_t pad_right() const { return pad_w_end < 0 ? pad_w : pad_w_end; }
};

// Throws an Error, prefixed with `kernel`, unless extents, strides and dilations are positive,
// padding is non-negative (end padding -1 or more) and an average has dilation 1.
void validate(const Pool2dDesc& desc, std::string_view kernel);

// The batch N of a pool2d pass, after checking x and dx [N, C, in_h, in_w] and y and dy
// [N, C, out_h, out_w] (the backward's x only for max pooling), as conv2d's checks do.
int64_t pool2d_forward_batch(const Pool2dDesc& desc, const Tensor& x, const Tensor& y,
                             std::string_view kernel);
int64_t pool2d_backward_batch(const Pool2dDesc& desc, const Tensor& x, const Tensor& dy,
                              const Tensor& dx, std::string_view kernel);

// The input positions a window of `kernel` taps `dilation` apart spans along one axis:
// dilation*(kernel-1)+1 (the effective kernel size).
inline int64_t dilated_extent(int64_t kernel, int64_t dilation) {
  return dilation * (kernel - 1) + 1;
}

// The number of windows along one axis, PyTorch's rule (pooling_output_shape, and the
// convolutions' floor): a window spanning `window` inputs (dilated_extent) slides by
// `stride` over the input of extent `in` padded by pad_begin before and pad_end after it:
//   out = (in + pad_begin + pad_end - window)/stride + 1,
// the quotient floored, or with `ceil` rounded up and then the last window dropped if it would
// start at or past in + pad_begin (in the end padding).
//   requires: in + pad_begin + pad_end - window >= 0 (the window fits) and stride positive.
int64_t window_output_extent(int64_t in, int64_t window, int64_t pad_begin, int64_t pad_end,
                             int64_t stride, bool ceil);

// Window o of a pooling along one axis (stride, padding `pad` before the input and `pad_end`
// after it, `kernel` taps `dilation` apart, input extent `in`): tap i reads input index
// start + i*dilation, and the taps [lo, hi) are those inside [0, in) (lo == hi: none).
// span: the window [start, start + kernel) clipped to [-pad, in + pad_end), what an average with
// count_include_pad divides by along this axis (averages have dilation 1).
//   requires: stride, kernel and dilation positive.
struct PoolTaps {
  int64_t start, lo, hi, span;
  int64_t count() const { return hi - lo; }
};
PoolTaps pool_taps(int64_t o, int64_t stride, int64_t pad, int64_t pad_end, int64_t kernel,
                   int64_t dilation, int64_t in);

class Pool2dKernel : public OpKernel<Pool2dDesc> {
 public:
  ~Pool2dKernel() override;
  virtual void forward(const Tensor& x, Tensor& y) = 0;
  // For max pooling the gradient goes to the first maximum of each window (recomputed from x).
  virtual void backward(const Tensor& x, const Tensor& y, const Tensor& dy, Tensor& dx) = 0;
};

// Element-wise activations y = f(x), with PyTorch's values and derivatives (at the kinks and for
// NaN too; plugins/layers/activations.cpp is their spec). negative_slope: leaky_relu only.
struct ActivationDesc {
  enum class Kind { kRelu, kLeakyRelu, kTanh, kSigmoid, kRelu6, kHardSigmoid, kHardswish };
  Kind kind = Kind::kRelu;
  float negative_slope = 0.01f;
};

// The layer type computing desc's kind: "relu", "leaky_relu", "tanh", "sigmoid", "relu6",
// "hard_sigmoid" or "hardswish".
std::string_view activation_name(const ActivationDesc& desc);

// The per-element functions every activation kernel computes, one struct per kind with
// value(x) and derivative(x, y) (y = value(x)); visit_activation(desc, body) calls body with the
// one for desc, so that a kernel's loop is compiled (and vectorized) once per kind.
namespace activation {

// min(max(v, 0), 6) with NaN passing through (every comparison with NaN is false).
inline float relu6(float v) { return v <= 0.0f ? 0.0f : (v >= 6.0f ? 6.0f : v); }

// Where a derivative can be read off y as exactly as off x, it is (relu, relu6, tanh, sigmoid,
// leaky_relu with a slope >= 0): the layer's input then need not be kept for backward
// (derivative_reads_input below, Layer::backward_reads_inputs()).
struct Relu {  // "x <= 0 ? 0 : x": NaN passes through, as in PyTorch's threshold
  float value(float x) const { return x <= 0.0f ? 0.0f : x; }
  // y > 0 exactly when x > 0, and y is NaN when x is
  float derivative(float, float y) const { return y <= 0.0f ? 0.0f : 1.0f; }
};
struct LeakyRelu {
  float slope;
  float value(float x) const { return x > 0.0f ? x : slope * x; }
  // With slope >= 0, y > 0 exactly when x > 0 (NaN: both false); a negative slope needs x.
  float derivative(float x, float y) const { return (slope >= 0.0f ? y : x) > 0.0f ? 1.0f : slope; }
};
struct Tanh {
  float value(float x) const { return std::tanh(x); }
  float derivative(float, float y) const { return 1.0f - y * y; }
};
struct Sigmoid {  // exp() never overflows: for x < 0, exp(x) / (1 + exp(x))
  float value(float x) const {
    if (x >= 0.0f) return 1.0f / (1.0f + std::exp(-x));
    const float e = std::exp(x);
    return e / (1.0f + e);
  }
  float derivative(float, float y) const { return y * (1.0f - y); }
};
struct Relu6 {  // hardtanh(x, 0, 6): the gradient passes on (0, 6) and for NaN
  float value(float x) const { return relu6(x); }
  // y is x on (0, 6), 0 at and below 0, 6 at and above 6, NaN for NaN
  float derivative(float, float y) const { return y <= 0.0f || y >= 6.0f ? 0.0f : 1.0f; }
};
struct HardSigmoid {  // clamp(x + 3, 0, 6) times the float 1/6, as PyTorch's vectorized kernel
  float value(float x) const { return relu6(x + 3.0f) * (1.0f / 6.0f); }
  float derivative(float x, float) const { return x > -3.0f && x < 3.0f ? 1.0f / 6.0f : 0.0f; }
};
struct Hardswish {
  float value(float x) const { return x * relu6(x + 3.0f) / 6.0f; }
  float derivative(float x, float) const {
    if (x < -3.0f) return 0.0f;
    if (x <= 3.0f) return x / 3.0f + 0.5f;
    return 1.0f;  // x > 3, and NaN (hardswish_backward passes the gradient through)
  }
};

template <class Body>
decltype(auto) visit_activation(const ActivationDesc& desc, Body&& body) {
  using Kind = ActivationDesc::Kind;
  switch (desc.kind) {
    case Kind::kRelu:
      return body(Relu{});
    case Kind::kLeakyRelu:
      return body(LeakyRelu{desc.negative_slope});
    case Kind::kTanh:
      return body(Tanh{});
    case Kind::kSigmoid:
      return body(Sigmoid{});
    case Kind::kRelu6:
      return body(Relu6{});
    case Kind::kHardSigmoid:
      return body(HardSigmoid{});
    case Kind::kHardswish:
      break;
  }
  return body(Hardswish{});
}

// Whether desc's derivative reads x (hard_sigmoid, hardswish, leaky_relu with a negative slope)
// and whether it reads y (the others).
inline bool derivative_reads_input(const ActivationDesc& desc) {
  using Kind = ActivationDesc::Kind;
  return desc.kind == Kind::kHardSigmoid || desc.kind == Kind::kHardswish ||
         (desc.kind == Kind::kLeakyRelu && !(desc.negative_slope >= 0.0f));
}
inline bool derivative_reads_output(const ActivationDesc& desc) {
  return !derivative_reads_input(desc);
}

// No activation: what a kernel with an optional fused activation (visit_fused below) runs when
// none is fused, so that one loop serves both.
struct None {
  float value(float x) const { return x; }
};

// y[i] = f(x[i]) and dx[i] = dy[i] * f'(x[i], y[i]) for i in [lo, hi): the loops every activation
// kernel runs (the reference over all elements, tbb per task), compiled once per kind.
inline void forward_range(const ActivationDesc& desc, const float* x, float* y, int64_t lo,
                          int64_t hi) {
  visit_activation(desc, [&](auto f) {
    for (int64_t i = lo; i < hi; ++i) y[i] = f.value(x[i]);
  });
}
inline void backward_range(const ActivationDesc& desc, const float* x, const float* y,
                           const float* dy, float* dx, int64_t lo, int64_t hi) {
  visit_activation(desc, [&](auto f) {
    for (int64_t i = lo; i < hi; ++i) dx[i] = dy[i] * f.derivative(x[i], y[i]);
  });
}

}  // namespace activation

// Throws an Error naming `kernel`, `what` and both shapes unless `t` holds as many elements as x.
void check_same_count(const Tensor& t, const Tensor& x, std::string_view kernel,
                      std::string_view what);
// check_same_count for y, dy and dx against x: an activation backward's tensors.
void check_backward_counts(const Tensor& x, const Tensor& y, const Tensor& dy, const Tensor& dx,
                           std::string_view kernel);

// The activation of desc over whole tensors (any shape; x, y, dy, dx of equal element counts).
class ActivationKernel : public OpKernel<ActivationDesc> {
 public:
  ~ActivationKernel() override;
  virtual void forward(const Tensor& x, Tensor& y) = 0;
  // dx = dy * f'(x, y): y is the forward's output for x
  virtual void backward(const Tensor& x, const Tensor& y, const Tensor& dy, Tensor& dx) = 0;
};

// Batch normalization's per-channel passes (torch.nn.BatchNorm2d, and BatchNorm1d on [C]).
//   x, dy, y, dx [N, C, spatial...] with `spatial` values per channel and image (H*W; 1 for
//   features [N, C]). Channel c's values are the N runs x[n, c, 0..spatial).
// The kernel does the passes over the data; the layer keeps everything between them: the
// allreduce of a synchronized batch norm, the mean, variance and 1/sqrt(var + eps), the running
// statistics, momentum, weight and bias. So eps and affine are not in the descriptor: they only
// enter the per-channel constants the layer hands in. Per-channel arrays hold `channels` values.
struct BatchNormDesc {
  int64_t channels = 0;
  int64_t spatial = 1;
};

// Calls body with the functor of the activation fused into an op's forward (Graph's fusion:
// Layer::set_fused_activation), or with activation::None when `fused` is null, so that a
// kernel's loop is compiled once per kind.
template <class Body>
decltype(auto) visit_fused(const ActivationDesc* fused, Body&& body) {
  if (fused == nullptr) return body(activation::None{});
  return activation::visit_activation(*fused, body);
}

// Throws an Error, prefixed with `kernel` ("tbb batch_norm"), unless channels and spatial are
// positive.
void validate(const BatchNormDesc& desc, std::string_view kernel);

// N of a batch-norm tensor: throws an Error naming `kernel`, `what` and the shape unless `t` has
// rank 2 or more, t.dim(1) == channels and N * channels * spatial elements.
int64_t batch_norm_batch(const BatchNormDesc& desc, const Tensor& t, std::string_view kernel,
                         std::string_view what);

// Every sum runs in double. The order of its terms is the kernel's own, but fixed: the same
// kernel gives the same bits for the same input, whatever the thread count and scheduling (a
// synchronized batch norm with one rank relies on it to equal the unsynchronized one).
class BatchNormKernel : public OpKernel<BatchNormDesc> {
 public:
  ~BatchNormKernel() override;
  // sum[c] = sum over n, s of x[n, c, s]
  virtual void channel_sums(const Tensor& x, double* sum) = 0;
  // squares[c] = sum over n, s of (x[n, c, s] - mean[c])^2, the difference taken in double (two
  // passes, not a sum of squares minus a squared sum: no cancellation when |mean| >> std)
  virtual void channel_squares(const Tensor& x, const double* mean, double* squares) = 0;
  // y[n, c, s] = (x[n, c, s] - center[c]) * scale[c] + shift[c] in float: the normalization with
  // its affine map folded into a center (the mean), a scale (weight * inv_std) and a shift (the
  // bias) per channel, training and evaluation alike. Centering first keeps the product small:
  // folded into x * scale + (bias - mean * scale), a channel with |mean| * inv_std large loses
  // y's low bits to cancellation, differently with and without fused multiply-adds.
  // With an activation fused into it (`fused` not null): y = f(that value), f's value as its
  // own kernel computes it (strata::activation).
  virtual void normalize(const Tensor& x, const float* center, const float* scale,
                         const float* shift, Tensor& y, const ActivationDesc* fused) = 0;
  // sum_dy[c] = sum of dy, sum_dy_xhat[c] = sum of dy * x_hat with x_hat = (x - mean[c]) *
  // inv_std[c] (double), over n, s of channel c
  virtual void gradient_sums(const Tensor& x, const Tensor& dy, const double* mean,
                             const double* inv_std, double* sum_dy, double* sum_dy_xhat) = 0;
  // dx = float(scale[c] * (dy - mean_dy[c] - x_hat * mean_dy_xhat[c])), in double with x_hat as
  // above: batch statistics' input gradient (scale = weight * inv_std, mean_dy = sum_dy / m,
  // mean_dy_xhat = sum_dy_xhat / m); with mean_dy = mean_dy_xhat = 0 the running statistics'.
  virtual void input_gradient(const Tensor& x, const Tensor& dy, const double* mean,
                              const double* inv_std, const double* scale, const double* mean_dy,
                              const double* mean_dy_xhat, Tensor& dx) = 0;
};

// N of a tensor holding `per_sample` values per sample: throws an Error naming `kernel`, `what`
// and the shape unless `t` has rank 1 or more and t.dim(0) * per_sample elements.
int64_t sample_batch(const Tensor& t, int64_t per_sample, std::string_view kernel,
                     std::string_view what);

// Softmax over one axis (torch.softmax(x, dim)). A sample's values form `outer` blocks of
// `axis` x `inner` values ([outer..., axis, inner...] flattened); a group is the `axis` values of
// one block at one inner position, `inner` apart. So x, y, dy, dx hold N * outer * axis * inner
// values (a [N, C, H, W] tensor over the channels: outer 1, axis C, inner H*W).
struct SoftmaxDesc {
  int64_t outer = 1;  // the product of the sample axes before the softmax axis
  int64_t axis = 1;   // the extent of the softmax axis: values per group
  int64_t inner = 1;  // the product of the sample axes after it: the distance between them
};

// Throws an Error, prefixed with `kernel`, unless outer, axis and inner are positive.
void validate(const SoftmaxDesc& desc, std::string_view kernel);

class SoftmaxKernel : public OpKernel<SoftmaxDesc> {
 public:
  ~SoftmaxKernel() override;
  // y = exp(x - max) / sum exp(x - max) over each group (a NaN in a group, or an infinity, makes
  // the group NaN, as in PyTorch)
  virtual void forward(const Tensor& x, Tensor& y) = 0;
  // dx = y * (dy - sum over the group of dy * y): y is the forward's output
  virtual void backward(const Tensor& y, const Tensor& dy, Tensor& dx) = 0;
};

// Local response normalization across channels (torch.nn.LocalResponseNorm), on x [N, channels,
// H, W] with area = H*W:
//   y[c] = x[c] * s[c]^-beta,  s[c] = k + alpha/size * sum over j in W(c) of x[j]^2
// at every position, W(c) = [c - size/2, c + (size-1)/2] clipped to the channels that exist.
// The backward pass (plugins/layers/lrn.cpp states its formula) needs a per-element temporary;
// each kernel keeps whatever workspace it needs itself (the reference one the size of x, grown
// with the batch; tbb's a tile per thread).
struct LrnDesc {
  int64_t channels = 0, area = 1;
  int64_t size = 1;
  double alpha = 1e-4, beta = 0.75, k = 1.0;
};

// Throws an Error, prefixed with `kernel`, unless channels, area and size are positive, alpha is
// at least 0 and k positive.
void validate(const LrnDesc& desc, std::string_view kernel);

// A range of channels, both ends included.
struct ChannelRange {
  int64_t first, last;
};
// W(c), the channels whose squares enter s[c]: [c - size/2, c + (size-1)/2] clipped.
inline ChannelRange lrn_window(const LrnDesc& d, int64_t c) {
  return {c - d.size / 2 < 0 ? 0 : c - d.size / 2,
          c + (d.size - 1) / 2 > d.channels - 1 ? d.channels - 1 : c + (d.size - 1) / 2};
}
// The channels c whose window W(c) holds channel i (backward's second sum): [i - (size-1)/2,
// i + size/2] clipped.
inline ChannelRange lrn_windows_holding(const LrnDesc& d, int64_t i) {
  return {i - (d.size - 1) / 2 < 0 ? 0 : i - (d.size - 1) / 2,
          i + d.size / 2 > d.channels - 1 ? d.channels - 1 : i + d.size / 2};
}

class LrnKernel : public OpKernel<LrnDesc> {
 public:
  ~LrnKernel() override;
  virtual void forward(const Tensor& x, Tensor& y) = 0;
  // dx[i] = dy[i] s[i]^-beta - 2 alpha beta / size * x[i] * sum over c with i in W(c) of
  //         dy[c] x[c] s[c]^(-beta-1)
  virtual void backward(const Tensor& x, const Tensor& dy, Tensor& dx) = 0;
};

// The mean of each channel over its positions (torch.nn.AdaptiveAvgPool2d((1, 1))):
//   x, dx [N, channels, H, W] with area = H*W; y, dy [N, channels, 1, 1] (any shape of N *
//   channels values).
struct GlobalAvgPoolDesc {
  int64_t channels = 0, area = 1;
};

// Throws an Error, prefixed with `kernel`, unless channels and area are positive.
void validate(const GlobalAvgPoolDesc& desc, std::string_view kernel);

// N of a global average pooling pass: throws an Error naming `kernel` and both shapes unless
// `planes` (x, or dx) holds N * channels * area values and `means` (y, or dy) N * channels, with
// the same N; `names` are the two tensors' names ("x", "y").
int64_t global_avg_pool_batch(const GlobalAvgPoolDesc& desc, const Tensor& planes,
                              const Tensor& means, std::string_view kernel,
                              std::array<std::string_view, 2> names);

class GlobalAvgPoolKernel : public OpKernel<GlobalAvgPoolDesc> {
 public:
  ~GlobalAvgPoolKernel() override;
  // y[n, c] = sum over p of x[n, c, p] / area, the sum in double
  virtual void forward(const Tensor& x, Tensor& y) = 0;
  // dx[n, c, p] = dy[n, c] / area
  virtual void backward(const Tensor& dy, Tensor& dx) = 0;
};

// Row-major single-precision matrix product: C = alpha * op(A) * op(B) + beta * C, where op(A)
// is M x K and op(B) is K x N. lda/ldb/ldc are row strides of A, B, C as stored.
// precision kBf16: every element of A and B rounded to bfloat16 (round_to_bf16) before the
// products, which are summed in float (or wider); C, alpha and beta stay float.
struct GemmDesc {
  Precision precision = Precision::kFp32;
};

class GemmKernel : public OpKernel<GemmDesc> {
 public:
  ~GemmKernel() override;
  virtual void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                    const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
                    int64_t ldc) = 0;
};

}  // namespace strata
