// backend_tbb: conv2d in bf16 (precision bf16, docs/precision.md), internal to backend_tbb.
//
// Registered as the tbb backend's conv2d implementation "bf16_gemm", after TbbConv2d (which takes
// fp32, and bf16 descriptors with symmetric padding but those whose fp32 method is a large GEMM:
// its methods on inputs rounded to bf16, tbb_kernels.hpp), and supports() every descriptor whose
// precision is bf16: any stride, padding (end padding too), dilation and groups. So the large
// 1x1 and im2col layers in bf16, and those with end padding, run here; on a CPU without
// AVX512-BF16, on_prepare() is an Error naming the feature (never a silent fp32 run, never a
// fallback), as TbbConv2d's is for bf16.
//
// THE PASSES (per group; bf16_gemm.hpp packs and multiplies, rounding every input to bf16)
//   forward:         y = W x cols             (im2col of a block of images)
//   backward_data:   stride 1: dx = W' x cols(dy), the correlation of dy with the flipped
//                    weights W' (padding dilation*(kernel-1) - pad); else dcols = W^T x dy, then
//                    col2im into dx
//   backward_params: dW = dy x cols^T,  dbias = sum of the float dy (in double)
// The col matrices are never stored: the packing gathers them from the images (bf16::Im2col,
// masked at the padding). 1x1, stride 1, no padding ("pointwise"): the images are the col matrix.
// Work is split into blocks of whole images (enough columns for the 8 x 48 tile, a col matrix of
// at most kColsBudget floats), run in TBB tasks with per-thread workspace. backward_params
// accumulates blocks into a few contiguous slices of the batch, each into its own partial dW,
// added in slice order: deterministic for a given thread count.
#pragma once

#include <tbb/enumerable_thread_specific.h>

#include <cstdint>
#include <vector>

#include "bf16_gemm.hpp"
#include "strata/ops.hpp"
#include "tbb_kernels.hpp"

namespace strata::tbb_backend {

class TbbBf16Conv2d : public Conv2dKernel {
 public:
  bool supports(const Conv2dDesc& desc) const override {
    return desc.precision == Precision::kBf16;
  }
  void forward(const Tensor& x, const Tensor& weight, const Tensor* bias, Tensor& y) override;
  void backward_data(const Tensor& dy, const Tensor& weight, Tensor& dx) override;
  void backward_params(const Tensor& x, const Tensor& dy, Tensor& dweight, Tensor* dbias) override;
  // Direct convolution's multiply-adds, but for backward_data: with stride 1 the correlation
  // computes every dx position from all kg * R * S taps of the padded dy (C/groups * kg * R * S *
  // H * W per group), otherwise W^T dy's direct count plus col2im's additions.
  Conv2dArithmetic arithmetic() const override;

 protected:
  void on_prepare() override;

 private:
  struct Workspace {
    std::vector<int32_t> base, ih0, iw0;  // per column of a block (bf16::Im2col)
    std::vector<float> product;           // a GEMM's float result, before it is scattered
    std::vector<uint16_t> packed_a;       // packed bf16 operands
    std::vector<uint16_t> packed_b;
  };
  Workspace& local_workspace() { return workspace_.local(); }
  int64_t images_per_block(int64_t n_batch) const;
  // body(workspace, first image, images) for every block of the batch, in TBB tasks.
  template <class Body>
  void for_each_block(int64_t n_batch, const Body& body);
  // Per column (image, oh, ow) of a block of `images` outputs of size `out` read from inputs of
  // size `in`, `image_stride` floats apart: ih0 = oh * stride - pad_h (stride 0: the
  // descriptor's), iw0 likewise, base = image * image_stride + ih0 * in.w + iw0, into ws.
  void column_taps(int64_t images, Extent out, Extent in, int64_t stride, int64_t pad_h,
                   int64_t pad_w, int64_t image_stride, Workspace& ws) const;
  // The col matrix of `channels` planes of size `in` from `data`, with ws's column taps
  // (unit_stride: bf16::Im2col's, for stride 1).
  bf16::Im2col gathered(const float* data, int64_t channels, Extent in, bool unit_stride,
                        const Workspace& ws) const;
  // dcols (rows C/groups*R*S of group `group`, row stride `columns`) added into dx.
  void col2im(const float* cols, int64_t images, int64_t columns, int64_t group, float* dx) const;
  // Packs the weights of each group into packed_weights_ as the A of a product: forward
  // (rows kg, k = crs), transposed (rows crs, k = kg: strided backward_data) or flipped (rows
  // C/groups, k = (filter, R-1-r, S-1-s): stride-1 backward_data, a correlation of dy).
  enum class WeightForm { kForward, kTransposed, kFlipped };
  void pack_weights(const float* w, WeightForm form);
  // Stride-1 backward_data as the correlation of dy with the flipped weights, padded by
  // dilation*(kernel-1) - pad: no col2im.
  void data_by_correlation(const float* dy, float* dx, int64_t n_batch);

  bool pointwise_ = false;
  int64_t cg_ = 0, kg_ = 0, crs_ = 0, in_plane_ = 0, out_plane_ = 0;
  std::vector<uint16_t> packed_weights_;  // per group, packed_group_ elements
  int64_t packed_group_ = 0;
  std::vector<float> partials_;  // backward_params: one dW per slice
  std::vector<float> flipped_;   // the flipped weights of stride-1 backward_data
  // bf16::Im2col's per-row taps (offsets, then dr, then ds) of the col matrices of x and of dy.
  std::vector<int32_t> input_taps_, dy_taps_;
  tbb::enumerable_thread_specific<Workspace> workspace_;
};

}  // namespace strata::tbb_backend
