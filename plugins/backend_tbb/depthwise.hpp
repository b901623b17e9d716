// Convolution with one input channel per group (internal to backend_tbb): depthwise convolution
// (groups = channels, MobileNet's 3x3 layers) and its channel-multiplier form (each group's
// filters all read the same single channel). Any kernel size, stride, padding and dilation.
//
// Why not im2col + GEMM: a group's "matrix product" is (filters per group) x R*S times R*S x
// pixels, one to a few rows, so the products run at memory speed while im2col writes R*S copies
// of the image. These loops read one zero-padded plane from L1/L2, split by the stride into its
// phases (stride_h x stride_w planes of every stride-th row and column; stride 1: one, the
// padded plane). Then each tap is one long loop at a fixed offset over the "wide" output (rows as
// wide as a phase, the extra columns computed and dropped, as in direct_conv.hpp), 16 floats at a
// time, whatever the stride: for stride 2, whose row loops ran at 3-12 GFLOP/s, as fast as
// stride 1. backward_data computes each phase of dx from the taps that reach it. The weight
// gradient keeps a vector of partial sums per tap.
//
// `wide` arguments are scratch of wide_floats() floats.
//
// Precision bf16 (docs/precision.md) runs these same loops on inputs rounded beforehand with
// round_to_bf16 below (the padded plane in place, dy into a copy, the weights into a copy), so
// every product multiplies bf16 values and every sum stays in float, as the reference's emulation
// computes them (in double) up to the order of the float sums.
//
// Each call handles one plane; TbbConv2d spreads planes (forward, backward_data) or groups
// (backward_params, so that each filter's sum runs in a fixed order) over threads.
#pragma once

#include <cstdint>
#include <vector>

#include "strata/ops.hpp"

namespace strata::tbb_backend::depthwise {

// The stride-1 loops run their last vector whole, reading and writing up to this many floats
// past a plane's end: every buffer below has that slack (zero where it is read).
inline constexpr int64_t kSlackFloats = 16;

// Floats of the zero-padded plane's phases (their pixels); of a buffer for them, with the slack
// (pad_plane zeroes it); of the wide output; of backward's dy buffer (`grad`), both with the
// slack.
int64_t padded_floats(const Conv2dDesc& d);
int64_t plane_floats(const Conv2dDesc& d);
int64_t wide_floats(const Conv2dDesc& d);
int64_t grad_floats(const Conv2dDesc& d);

// The taps' tables, built once per descriptor (taps in the filter's order, r-major).
struct Taps {
  std::vector<int64_t> offsets;      // where each tap reads the phases (forward, weight gradient)
  std::vector<int64_t> identity;     // 0, 1, ...: each offset's tap
  std::vector<int64_t> order;        // the taps phase by phase (backward_data)
  std::vector<int64_t> flipped;      // per `order` entry: its offset flipped into the dy buffer
  std::vector<int64_t> phase_begin;  // phase p's taps are order[phase_begin[p], phase_begin[p+1])
};
Taps make_taps(const Conv2dDesc& d);

// Multiply-adds of one plane and one of its filters in each pass, as the loops below run them:
// forward and the weight gradient run every tap over the wide output ((out_h - 1) * phase width
// + out_w columns), backward_data every tap over its phase (phase rows x phase width).
int64_t forward_multiply_adds(const Conv2dDesc& d);
int64_t data_multiply_adds(const Conv2dDesc& d);
int64_t params_multiply_adds(const Conv2dDesc& d);

// dst[i] = strata::round_to_bf16(src[i]) for i < n (dst may be src), 16 floats at a time: the
// same bits, no branch.
void round_to_bf16(const float* src, int64_t n, float* dst);

// Copies plane x (in_h x in_w) into the phases of the zero-padded plane in `padded`
// (plane_floats() floats), zero around it and in the slack.
void pad_plane(const Conv2dDesc& d, const float* x, float* padded);

// y (out_h x out_w) = bias + correlation of the padded plane with the R x S filter w. `wide` is
// scratch of wide_floats() floats.
void forward_plane(const Conv2dDesc& d, const Taps& taps, const float* padded, const float* w,
                   float bias, float* y, float* wide);

// dx_padded (the padded plane's phases) = (or +=, with accumulate) filter w's share of dx from
// dy (out_h x out_w). `grad` is scratch of grad_floats() floats.
void backward_data_plane(const Conv2dDesc& d, const Taps& taps, const float* dy, const float* w,
                         bool accumulate, float* dx_padded, float* grad);

// Copies the real in_h x in_w pixels of dx_padded's phases to dx.
void crop_plane(const Conv2dDesc& d, const float* dx_padded, float* dx);

// The weight gradient of one filter, over any number of planes: acc (weight_scratch_floats()
// floats, zeroed by the caller) gathers partial sums per tap and, with sum_dy, partial sums of dy
// itself (the bias gradient, in the same pass over dy); reduce_weight then adds each tap's partial
// sums in order into dw[r][s] and the dy sums into *db (each overwritten; db may be null). A
// fixed order: the result does not depend on the thread count. `grad` is scratch of grad_floats()
// floats.
int64_t weight_scratch_floats(const Conv2dDesc& d);
void accumulate_weight_plane(const Conv2dDesc& d, const Taps& taps, const float* padded,
                             const float* dy, bool sum_dy, float* acc, float* grad);
void reduce_weight(const Conv2dDesc& d, const float* acc, float* dw, float* db);

}  // namespace strata::tbb_backend::depthwise
