// Strided convolution as one stride-1 convolution over the input's phase planes (internal to
// backend_tbb; the "polyphase" method of TbbConv2d, tbb_kernels.hpp).
//
// With stride (sh, sw), output (oh, ow) reads padded input row oh * sh + r * dh for kernel row r.
// Split each channel's zero-padded input into its polyphase components: phase plane (a, b) holds
// the padded pixels (i * sh + a, j * sw + b), ceil(padded_h / sh) x ceil(padded_w / sw) of them.
// Kernel tap (r, s) then reads phase plane ((r * dh) % sh, (s * dw) % sw) at (oh + r * dh / sh,
// ow + s * dw / sw): a stride-1 shifted row. So every (channel, tap) is one row of the direct
// kernels' shifted-row matrix (direct_conv.hpp) at a fixed offset in the phase planes, and the
// output's wide rows are as wide as a phase plane: forward is one direct::shifted_gemm over all
// C * R * S taps, the weight gradient one direct::shifted_dot, exactly as the direct method runs
// stride 1 on the padded image. For 3x3 stride 2 the four planes carry the 2x2, 2x1, 1x2 and 1x1
// sub-kernels; only the phases some tap reads are stored (1x1 stride 2: one, the subsampled image).
#pragma once

#include <cstdint>
#include <vector>

#include "strata/ops.hpp"

namespace strata::tbb_backend::polyphase {

struct Geometry {
  int64_t plane_h = 0, plane_w = 0;  // one phase plane: ceil(padded extent / stride)
  // Per residue of a padded row (column) mod the stride, its slot among the stored phase rows
  // (columns), or -1 when no tap reads it; and how many are stored.
  std::vector<int64_t> row_slot, column_slot;
  int64_t rows_stored = 0, columns_stored = 0;
  // Floats past one image group's planes that the kernels may read: a register block of columns
  // past the last wide column, and the last wide row's reach past its plane row.
  int64_t slack = 0;

  int64_t stride_w = 1;

  int64_t plane_floats() const { return plane_h * plane_w; }
  int64_t channel_floats() const { return rows_stored * columns_stored * plane_floats(); }
  // One padded row, rounded up to whole phase columns: merge's scratch row.
  int64_t row_floats() const { return plane_w * stride_w; }
  // `channels` channels' planes, the slack, and split's scratch (plane_h such rows).
  int64_t floats(int64_t channels) const {
    return channels * channel_floats() + slack + plane_h * row_floats();
  }
};

// The geometry of descriptor d (any stride, dilation and symmetric padding).
Geometry make(const Conv2dDesc& d);

// The output extent d implies without ceil rounding: polyphase (and direct) compute exactly that.
bool exact_output(const Conv2dDesc& d);

// The strides polyphase supports: the phase rows are gathered (and scattered) through an array
// of this many pointers.
inline constexpr int64_t kMaxStride = 4;

// Writes `channels` channels of one image (x: in_h x in_w planes) as g's phase planes, padding
// and slack zero, in g.floats(channels) floats (the last plane_h * row_floats() of them scratch).
void split(const Conv2dDesc& d, const Geometry& g, int64_t channels, const float* x, float* out);

// The offset of each tap p = (c * R + r) * S + s (the weights' order) in the phase planes.
std::vector<int32_t> tap_offsets(const Conv2dDesc& d, const Geometry& g, int64_t channels);

// backward_data: dx's padded image split the same way. Tap (r, s) adds w * dy[oh][ow] to phase
// plane ((r * dh) % sh, (s * dw) % sw) at (oh + r * dh / sh, ow + s * dw / sw), so each phase
// plane of dx is a stride-1 "full" correlation of dy with that phase's sub-kernel: dy padded by
// top = (R - 1) * dh / sh rows and left = (S - 1) * dw / sw columns (the largest shifts), read at
// (i + top - r * dh / sh, j + left - s * dw / sw) for plane pixel (i, j). One shifted_gemm per
// phase, over the plane rows that hold real dx rows (all plane_w columns: merge() interleaves
// whole rows), with wide rows as wide as the padded dy; merge() then writes dx row by row.
struct DataPhase {
  int64_t a = 0, b = 0;            // residues of dx's padded rows and columns
  std::vector<int64_t> taps;       // r * S + s of the taps that land here, ascending
  std::vector<int32_t> offsets;    // (k, tap) k-major: the tap's shift in the padded dy
  int64_t row_lo = 0, row_hi = 0;  // plane rows holding real dx rows
  int64_t packed_at = 0;           // floats into one group's packed weights, all phases
  int64_t wide_at = 0;             // floats into the phases' wide outputs
};
struct DataGeometry {
  int64_t top = 0, left = 0;      // dy's padding
  int64_t dy_h = 0, dy_w = 0;     // the padded dy; its rows are the wide rows' width
  int64_t plane_w = 0;            // the phase planes' width
  std::vector<DataPhase> phases;  // every (a, b), a-major
  int64_t packed_floats = 0;      // one group's packed weights, all phases
  int64_t wide_floats = 0;        // the wide outputs of `channels` channels, all phases

  int64_t dy_floats(int64_t filters) const { return filters * dy_h * dy_w; }
  int64_t wide_stride(const DataPhase& p) const { return (p.row_hi - p.row_lo) * dy_w; }
  // The wide columns shifted_gemm computes for phase p (none when no dx row is in it).
  int64_t columns(const DataPhase& p) const {
    return p.row_hi <= p.row_lo ? 0 : (p.row_hi - p.row_lo - 1) * dy_w + plane_w;
  }
  // Multiply-adds per channel and filter, over every phase.
  int64_t multiply_adds() const;
  // Whether a tap lands on every phase (else some dx pixels are zero: 1x1 stride 2, say).
  bool every_phase_has_taps() const;
};

DataGeometry make_data(const Conv2dDesc& d, const Geometry& g, int64_t filters, int64_t channels);

// Writes dx (`channels` in_h x in_w planes) from the phases' wide outputs (at `wide`), a padded
// row at a time through `row` (g.row_floats() floats of scratch).
void merge(const Conv2dDesc& d, const Geometry& g, const DataGeometry& data, int64_t channels,
           const float* wide, float* row, float* dx);

}  // namespace strata::tbb_backend::polyphase
