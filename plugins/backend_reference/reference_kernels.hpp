// backend_reference: the "reference" backend and its kernels, the ground truth of every other
// backend.
//
// WHAT THIS IS
//   Plain direct loops written to be checked by eye against the definitions in strata/ops.hpp, not
//   to be fast. No im2col, no BLAS, no threads. Sums are accumulated in double, so the reference is
//   at least as accurate as anything it is compared with, and a float backend's disagreement with
//   it measures that backend's own rounding.
//
// CONTRACTS (shared by every kernel here)
//   - requires: tensors have the shapes the prepared descriptor implies (N free); checked, and a
//     mismatch is a strata::Error naming both shapes.
//   - ensures: outputs and gradients are overwritten; an undefined gradient Tensor or a null
//     pointer is skipped at no cost.
#pragma once

#include <cstdint>
#include <functional>
#include <string_view>
#include <vector>

#include "strata/backend.hpp"
#include "strata/config.hpp"
#include "strata/ops.hpp"

namespace strata::reference {

// Runs everything on the calling thread: parallel_for calls body(begin, end) once.
class ReferenceBackend : public Backend {
 public:
  explicit ReferenceBackend(const Config&) {}
  std::string_view name() const override { return "reference"; }
  void set_threads(int) override {}
  int threads() const override { return 1; }
  void parallel_for(int64_t begin, int64_t end, int64_t grain,
                    const std::function<void(int64_t, int64_t)>& body) override;
};

// y[n,k,oh,ow] = bias[k] + sum_{c,r,s} w[k,c,r,s] * xpad[n, g*C/G + c, oh*sh + r*dh, ow*sw + s*dw]
// with g = k / (K/G) and xpad the input with pad_h/pad_w zeros before and pad_bottom()/pad_right()
// after (the end padding only makes out_h/out_w larger: taps past the input read zeros).
// backward_data is the exact transpose of that map (a scatter of dy through the same index
// arithmetic); backward_params correlates dy with the same padded input.
//
// Precision bf16 (the oracle of the fast bf16 kernels): x, weight and dy are rounded with
// round_to_bf16 into copies before the same loops (sums in double); the bias and the bias gradient
// (a sum of the float dy) are not rounded.
//
// requires: C and K divisible by groups; all extents, strides and dilations positive.
class ReferenceConv2d : public Conv2dKernel {
 public:
  void forward(const Tensor& x, const Tensor& weight, const Tensor* bias, Tensor& y) override;
  void backward_data(const Tensor& dy, const Tensor& weight, Tensor& dx) override;
  void backward_params(const Tensor& x, const Tensor& dy, Tensor& dweight, Tensor* dbias) override;

 protected:
  void on_prepare() override;

 private:
  // t itself in fp32; in bf16, `rounded` filled with t's values rounded, and returned.
  const Tensor& operand(const Tensor& t, Tensor& rounded) const;
};

// Window of output (oh, ow): taps at rows oh*sh - ph + i*dh (i < kh), columns likewise; positions
// outside the input are padding (pad_h before, pad_bottom() after).
//   max: the largest input in the window; padding counts as -inf, so it never wins over a real
//        element. backward sends dy to the FIRST maximum in row-major scan order, recomputed
//        from x (a NaN counts as the maximum, so NaNs propagate as in PyTorch).
//   average: the sum of the real elements divided by
//        count_include_pad: the window's area clipped to the padded input [-ph, H + pad_bottom())
//                           (PyTorch's rule; equal to kh*kw unless the layer rounds output sizes
//                           up, when the last window may run past the padded input);
//        otherwise:         the number of real elements.
//   A window with no real element (possible only with padding wider than the kernel) yields -inf
//   for max and 0 for average, and passes no gradient.
class ReferencePool2d : public Pool2dKernel {
 public:
  void forward(const Tensor& x, Tensor& y) override;
  void backward(const Tensor& x, const Tensor& y, const Tensor& dy, Tensor& dx) override;

 protected:
  void on_prepare() override;
};

// C = alpha * op(A) * op(B) + beta * C, row-major, as in strata/ops.hpp. With beta == 0, C is
// not read (as in BLAS), so it may hold garbage.
// Precision bf16 (the oracle of the fast bf16 kernels): every element of A and B is rounded with
// round_to_bf16 before its product; the sum stays in double.
class ReferenceGemm : public GemmKernel {
 public:
  void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
            const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
            int64_t ldc) override;
};

// Batch normalization's passes (strata/ops.hpp), one channel after another. Each channel's sum is
// accumulated as 8 partial sums in double (element s of an image's run goes to partial s mod 8;
// the runs follow in image order), added in a fixed tree: the loop vectorizes without
// -ffast-math, and the bits are those batch_norm computed inside the layer before it had kernels.
class ReferenceBatchNorm : public BatchNormKernel {
 public:
  void channel_sums(const Tensor& x, double* sum) override;
  void channel_squares(const Tensor& x, const double* mean, double* squares) override;
  void normalize(const Tensor& x, const float* center, const float* scale, const float* shift,
                 Tensor& y, const ActivationDesc* fused) override;
  void gradient_sums(const Tensor& x, const Tensor& dy, const double* mean, const double* inv_std,
                     double* sum_dy, double* sum_dy_xhat) override;
  void input_gradient(const Tensor& x, const Tensor& dy, const double* mean, const double* inv_std,
                      const double* scale, const double* mean_dy, const double* mean_dy_xhat,
                      Tensor& dx) override;

 protected:
  void on_prepare() override;
};

// One plain loop over the elements with strata::activation's functions.
class ReferenceActivation : public ActivationKernel {
 public:
  void forward(const Tensor& x, Tensor& y) override;
  void backward(const Tensor& x, const Tensor& y, const Tensor& dy, Tensor& dx) override;
};

// Softmax group by group: the maximum, then exp(x - max) in float summed in double, then the
// products with the float reciprocal of the sum; backward's dot product in double. The loops
// softmax computed inside the layer before it had kernels (the same bits).
class ReferenceSoftmax : public SoftmaxKernel {
 public:
  void forward(const Tensor& x, Tensor& y) override;
  void backward(const Tensor& y, const Tensor& dy, Tensor& dx) override;

 protected:
  void on_prepare() override;

 private:
  // N * outer * inner: the groups of `t`, whose shape is checked.
  int64_t groups(const Tensor& t, std::string_view what) const;
};

// Local response normalization plane by plane (image, channel): the window's squares summed in
// float in channel order, std::pow for both powers. backward keeps one workspace the size of x
// (t = dy x s^(-beta-1) of every element, which pass 2 sums over the windows), grown only when
// the batch grows. The loops lrn computed inside the layer before it had kernels (the same bits).
class ReferenceLrn : public LrnKernel {
 public:
  void forward(const Tensor& x, Tensor& y) override;
  void backward(const Tensor& x, const Tensor& dy, Tensor& dx) override;

 protected:
  void on_prepare() override;

 private:
  // scale[p] = k + alpha/size * sum over j in W(c) of x[n, j, p]^2, for the area positions p.
  void window_scale(const float* x, int64_t n, int64_t c, float* scale) const;

  std::vector<float> scale_;      // one plane
  std::vector<float> workspace_;  // backward's t, the size of x
};

// One plane after another: its sum in double (one accumulator, in order), divided by the area;
// backward fills each plane with dy / area in float. The layer's former loops (the same bits).
class ReferenceGlobalAvgPool : public GlobalAvgPoolKernel {
 public:
  void forward(const Tensor& x, Tensor& y) override;
  void backward(const Tensor& dy, Tensor& dx) override;

 protected:
  void on_prepare() override;
};

}  // namespace strata::reference
