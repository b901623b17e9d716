// strata/ops.hpp: descriptors and kernel interfaces of the ops backends implement.
//
// Conventions for every kernel method:
//   - tensors are float32, batch first (NCHW for images); N is taken from the tensor, everything
//     else from the descriptor the kernel was prepared with;
//   - outputs and gradients are overwritten, never accumulated;
//   - a gradient output that is an undefined Tensor (or a null pointer) is not wanted: skip it.
#pragma once

#include <cstdint>
#include <string_view>

#include "strata/backend.hpp"
#include "strata/tensor.hpp"

namespace strata {

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
  int64_t pad_bottom() const { return pad_h_end < 0 ? pad_h : pad_h_end; }
  int64_t pad_right() const { return pad_w_end < 0 ? pad_w : pad_w_end; }
  bool symmetric_padding() const { return pad_bottom() == pad_h && pad_right() == pad_w; }
};

// Throws an Error, prefixed with `kernel` ("tbb conv2d"), unless every extent, stride and
// dilation is positive, padding is non-negative (end padding -1 or more) and groups divides both
// channel counts.
// Kernels call it from on_prepare(), so every backend rejects the same descriptors.
void validate(const Conv2dDesc& desc, std::string_view kernel);

class Conv2dKernel : public OpKernel<Conv2dDesc> {
 public:
  ~Conv2dKernel() override;
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

// Row-major single-precision matrix product: C = alpha * op(A) * op(B) + beta * C, where op(A)
// is M x K and op(B) is K x N. lda/ldb/ldc are row strides of A, B, C as stored.
struct GemmDesc {};

class GemmKernel : public OpKernel<GemmDesc> {
 public:
  ~GemmKernel() override;
  virtual void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                    const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
                    int64_t ldc) = 0;
};

}  // namespace strata
