// backend_tbb: conv2d in bf16 (precision bf16, docs/precision.md), internal to backend_tbb.
//
// Registered as the tbb backend's conv2d implementation "bf16_gemm", before the fp32 one
// (TbbConv2d, which refuses bf16 descriptors), and supports() every descriptor whose precision is
// bf16: any stride, padding (end padding too), dilation and groups. So a bf16 convolution on the
// tbb backend always runs here; on a CPU without AVX512-BF16, on_prepare() is an Error naming the
// feature (never a silent fp32 run, never a fallback).
//
// THE PASSES (per group; bf16_gemm.hpp packs and multiplies, rounding every input to bf16)
//   forward:         y = W x cols             (im2col of a block of images)
//   backward_data:   dcols = W^T x dy,  then col2im into dx
//   backward_params: dW = dy x cols^T,  dbias = sum of the float dy (in double)
// 1x1, stride 1, no padding ("pointwise"): the images themselves are the col matrix, no im2col.
// Work is split into blocks of whole images (enough columns for the 8 x 48 tile, a col matrix of
// at most kColsBudget floats), run in TBB tasks with per-thread workspace. backward_params
// accumulates blocks into a few contiguous slices of the batch, each into its own partial dW,
// added in slice order: deterministic for a given thread count.
#pragma once

#include <tbb/enumerable_thread_specific.h>

#include <cstdint>
#include <vector>

#include "strata/ops.hpp"

namespace strata::tbb_backend {

class TbbBf16Conv2d : public Conv2dKernel {
 public:
  bool supports(const Conv2dDesc& desc) const override {
    return desc.precision == Precision::kBf16;
  }
  void forward(const Tensor& x, const Tensor& weight, const Tensor* bias, Tensor& y) override;
  void backward_data(const Tensor& dy, const Tensor& weight, Tensor& dx) override;
  void backward_params(const Tensor& x, const Tensor& dy, Tensor& dweight, Tensor* dbias) override;

 protected:
  void on_prepare() override;

 private:
  struct Workspace {
    std::vector<float> cols;         // im2col of a block, C*R*S x columns
    std::vector<float> product;      // a GEMM's float result, before it is scattered
    std::vector<uint16_t> packed_a;  // packed bf16 operands
    std::vector<uint16_t> packed_b;
  };
  Workspace& local_workspace() { return workspace_.local(); }
  int64_t images_per_block(int64_t n_batch) const;
  // body(workspace, first image, images) for every block of the batch, in TBB tasks.
  template <class Body>
  void for_each_block(int64_t n_batch, const Body& body);
  // im2col of images [0, images) of `x` (the block's first image) into cols (rows C*R*S, row
  // stride `columns` = images * out_h * out_w), and its transpose: col2im adds into dx.
  void im2col(const float* x, int64_t images, float* cols) const;
  void col2im(const float* cols, int64_t images, int64_t columns, int64_t group, float* dx) const;
  // Packs `count` panels of the weights of each group, as A (rows kg, k = crs) or transposed
  // (rows crs, k = kg), into packed_weights_.
  void pack_weights(const float* w, bool transposed);

  bool pointwise_ = false;
  int64_t cg_ = 0, kg_ = 0, crs_ = 0, in_plane_ = 0, out_plane_ = 0;
  std::vector<uint16_t> packed_weights_;  // per group, packed_group_ elements
  int64_t packed_group_ = 0;
  std::vector<float> partials_;  // backward_params: one dW per slice
  tbb::enumerable_thread_specific<Workspace> workspace_;
};

}  // namespace strata::tbb_backend
