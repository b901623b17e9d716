// Convolution with one input channel per group (internal to backend_tbb): depthwise convolution
// (groups = channels, MobileNet's 3x3 layers) and its channel-multiplier form (each group's
// filters all read the same single channel). Any kernel size, stride, padding and dilation.
//
// Why not im2col + GEMM: a group's "matrix product" is (filters per group) x R*S times R*S x
// pixels, one to a few rows, so the products run at memory speed while im2col writes R*S copies
// of the image. These loops read one zero-padded plane from L1/L2. With stride 1 each tap is one
// long loop over the "wide" output (rows as wide as the padded plane, the extra columns computed
// and dropped, as in direct_conv.hpp), which the compiler vectorizes; other strides run along
// output rows. The weight gradient keeps a vector of partial sums per tap.
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

// Floats of the zero-padded plane (its pixels); of a buffer for it, with the slack (pad_plane
// zeroes it); of the wide output; of backward's dy buffer (`grad`), both with the slack.
int64_t padded_floats(const Conv2dDesc& d);
int64_t plane_floats(const Conv2dDesc& d);
int64_t wide_floats(const Conv2dDesc& d);
int64_t grad_floats(const Conv2dDesc& d);

// The taps' offsets in the padded plane (stride 1; forward and the weight gradient), or flipped
// into backward_data's dy buffer.
std::vector<int64_t> tap_offsets(const Conv2dDesc& d, bool flipped);

// Multiply-adds of one plane and one of its filters in each pass, as the loops below run them:
// with stride 1, forward and the weight gradient run every tap over the wide output
// ((out_h - 1) * padded width + out_w columns) and backward_data over the whole padded plane;
// with other strides, every tap over the out_h x out_w outputs.
int64_t forward_multiply_adds(const Conv2dDesc& d);
int64_t data_multiply_adds(const Conv2dDesc& d);
int64_t params_multiply_adds(const Conv2dDesc& d);

// dst[i] = strata::round_to_bf16(src[i]) for i < n (dst may be src), 16 floats at a time: the
// same bits, no branch.
void round_to_bf16(const float* src, int64_t n, float* dst);

// Copies plane x (in_h x in_w) into the middle of `padded` (plane_floats() floats), zero around
// it and in the slack.
void pad_plane(const Conv2dDesc& d, const float* x, float* padded);

// y (out_h x out_w) = bias + correlation of the padded plane with the R x S filter w. `wide` is
// scratch of wide_floats() floats.
void forward_plane(const Conv2dDesc& d, const int64_t* offsets, const float* padded, const float* w,
                   float bias, float* y, float* wide);

// dx_padded (the padded plane's layout) = (or +=, with accumulate) filter w's share of dx from
// dy (out_h x out_w). `grad` is scratch of grad_floats() floats.
void backward_data_plane(const Conv2dDesc& d, const int64_t* flipped_offsets, const float* dy,
                         const float* w, bool accumulate, float* dx_padded, float* grad);

// Copies the middle of dx_padded (the real in_h x in_w pixels) to dx.
void crop_plane(const Conv2dDesc& d, const float* dx_padded, float* dx);

// The weight gradient of one filter, over any number of planes: acc (weight_scratch_floats()
// floats, zeroed by the caller) gathers partial sums per tap; reduce_weight then adds each tap's
// partial sums in order into dw[r][s] (overwritten). A fixed order: the result does not depend on
// the thread count. `grad` is scratch of grad_floats() floats.
int64_t weight_scratch_floats(const Conv2dDesc& d);
void accumulate_weight_plane(const Conv2dDesc& d, const int64_t* offsets, const float* padded,
                             const float* dy, float* acc, float* grad);
void reduce_weight(const Conv2dDesc& d, const float* acc, float* dw);

}  // namespace strata::tbb_backend::depthwise
