// Convolution with one input channel per group (internal to backend_tbb): depthwise convolution
// (groups = channels, MobileNet's 3x3 layers) and its channel-multiplier form (each group's
// filters all read the same single channel). Any kernel size, stride, padding and dilation.
// TbbConv2d tries the lanes method first (lanes.hpp: images across the vector lanes, every lane
// useful and no per-plane set-up), which takes small planes (MobileNet's from 32x32 down) except
// for a strided layer's backward_data: this method runs those and the planes past lanes' frames
// (docs/performance.md, section 31).
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
// Small planes come in stacks: the phases of up to Plan::stack images of one channel lie one
// below the other (image i's rows at i * phase_rows), so that one tap loop runs over the whole
// block, its garbage rows between the images computed and dropped. MobileNet's 4x4 and 8x8 planes
// spent more in the per-plane calls (padding, copies, loop set-up) than in their arithmetic.
//
// Precision bf16 (docs/precision.md) runs these same loops on inputs rounded beforehand with
// round_floats_to_bf16 (floats.hpp: the padded plane in place, dy into a copy, the weights into a
// copy), so every product multiplies bf16 values and every sum stays in float, as the reference's
// emulation computes them (in double) up to the order of the float sums.
//
// Each call handles one block of planes of one channel; TbbConv2d spreads (channel, block) pairs
// (forward, backward_data) or groups (backward_params, so that each filter's sum runs in a fixed
// order) over threads.
#pragma once

#include <cstdint>
#include <vector>

#include "strata/ops.hpp"

namespace strata::tbb_backend::depthwise {

// The loops run their last vector whole, reading up to this many floats past a plane's end (and
// writing up to 16): every buffer below has that slack (zero where it is read).
inline constexpr int64_t kSlackFloats = 32;

// A descriptor's geometry and tap tables, built once (make_plan), so that the calls below, run
// thousands of times a pass, compute no division.
struct Plan {
  int64_t pitch = 0;         // floats per phase row: the wide output's row too
  int64_t phase_rows = 0;    // rows of one image in one phase
  int64_t phase_floats = 0;  // pitch * phase_rows
  int64_t phases = 1;        // stride_h * stride_w
  int64_t stack = 1;         // images per block
  int64_t margin = 0;        // backward_data's zeros before dy: the largest in-phase offset
  int64_t out_h = 0, out_w = 0;
  std::vector<int64_t> offsets;      // per tap (r-major): where it reads the phases
  std::vector<int64_t> identity;     // 0, 1, ...: each offset's tap
  std::vector<int64_t> order;        // the taps phase by phase (backward_data)
  std::vector<int64_t> flipped;      // per `order` entry: its offset flipped into the dy buffer
  std::vector<int64_t> phase_begin;  // phase p's taps are order[phase_begin[p], phase_begin[p+1])
  // 3-wide filters at stride 1, undilated along the rows: each filter row's three taps read one
  // float apart, and the loops load them once (row3_sums in depthwise.cpp). Where each row starts
  // (forward, weight gradient) and flipped (backward_data, with the taps of flipped_taps).
  bool rows3 = false;
  std::vector<int64_t> row_offsets, row_flipped, flipped_taps;

  int64_t phase_stride() const { return stack * phase_floats; }  // phase p at p * phase_stride()
  // Columns of the wide output of `count` images: image i's pixel (oh, ow) is column
  // (i * phase_rows + oh) * pitch + ow.
  int64_t wide_length(int64_t count) const {
    return ((count - 1) * phase_rows + out_h - 1) * pitch + out_w;
  }
};
Plan make_plan(const Conv2dDesc& d);

// Floats of a buffer for a block's padded phases, of its wide output and of backward's dy buffer
// (`grad`), each with the slack; of the weight gradient's partial sums of one filter (acc below).
int64_t padded_floats(const Plan& p);
int64_t wide_floats(const Plan& p);
int64_t grad_floats(const Plan& p);
int64_t weight_scratch_floats(const Plan& p);

// Multiply-adds of one image and one of its filters in each pass of a full block, as the loops
// below run them: every tap over the image's phase rows x pitch (forward and the weight gradient
// over the wide output, the last image's rows past out_h excepted; backward_data over each tap's
// phase).
int64_t multiply_adds(const Plan& p);

// In every call: `count` (1 to plan.stack) images, image i of x, y, dy or dx at i * *_stride
// floats from the pointer given.

// Copies the planes x (in_h x in_w each) into the phases of their zero-padded planes in `padded`
// (padded_floats() floats), zero around them and past them.
void pad_planes(const Conv2dDesc& d, const Plan& p, const float* x, int64_t x_stride, int64_t count,
                float* padded);

// y (out_h x out_w each) = bias + correlation of each padded plane with the R x S filter w.
// `wide` is scratch of wide_floats() floats.
void forward_planes(const Conv2dDesc& d, const Plan& p, const float* padded, int64_t count,
                    const float* w, float bias, float* y, int64_t y_stride, float* wide);

// dx_padded (the padded planes' phases) = (or +=, with accumulate) filter w's share of dx from dy
// (out_h x out_w each). `grad` is scratch of grad_floats() floats.
void backward_data_planes(const Conv2dDesc& d, const Plan& p, const float* dy, int64_t dy_stride,
                          int64_t count, const float* w, bool accumulate, float* dx_padded,
                          float* grad);

// Copies the real in_h x in_w pixels of each plane of dx_padded's phases to dx.
void crop_planes(const Conv2dDesc& d, const Plan& p, const float* dx_padded, int64_t count,
                 float* dx, int64_t dx_stride);

// The weight gradient of one filter, over any number of blocks: acc (weight_scratch_floats()
// floats, zeroed by the caller) gathers partial sums per tap and, with sum_dy, partial sums of dy
// itself (the bias gradient, in the same pass over dy); reduce_weight then adds each tap's partial
// sums in order into dw[r][s] and the dy sums into *db (each overwritten; db may be null). A
// fixed order: the result does not depend on the thread count. `grad` is scratch of grad_floats()
// floats.
void accumulate_weight_planes(const Conv2dDesc& d, const Plan& p, const float* padded,
                              const float* dy, int64_t dy_stride, int64_t count, bool sum_dy,
                              float* acc, float* grad);
void reduce_weight(const Plan& p, const float* acc, float* dw, float* db);

}  // namespace strata::tbb_backend::depthwise
