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

// 2-D convolution (cross-correlation, as in PyTorch) with stride, zero padding, dilation and groups.
//   x [N, C, H, W], weight [K, C/groups, R, S], bias [K] (optional), y [N, K, out_h, out_w]
//   out_h = (H + 2*pad_h - dilation_h*(R-1) - 1) / stride_h + 1  (the layer decides rounding)
struct Conv2dDesc {
  int64_t in_channels = 0, in_h = 0, in_w = 0;
  int64_t out_channels = 0, kernel_h = 0, kernel_w = 0;
  int64_t stride_h = 1, stride_w = 1;
  int64_t pad_h = 0, pad_w = 0;
  int64_t dilation_h = 1, dilation_w = 1;
  int64_t groups = 1;
  int64_t out_h = 0, out_w = 0;
};

// Throws an Error, prefixed with `kernel` ("tbb conv2d"), unless every extent, stride and
// dilation is positive, padding is non-negative and groups divides both channel counts.
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
struct Pool2dDesc {
  enum class Mode { kMax, kAverage };
  Mode mode = Mode::kMax;
  int64_t channels = 0, in_h = 0, in_w = 0;
  int64_t kernel_h = 0, kernel_w = 0;
  int64_t stride_h = 1, stride_w = 1;
  int64_t pad_h = 0, pad_w = 0;
  bool count_include_pad = true;
  int64_t out_h = 0, out_w = 0;
};

// Throws an Error, prefixed with `kernel`, unless extents and strides are positive and padding
// is non-negative.
void validate(const Pool2dDesc& desc, std::string_view kernel);

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
