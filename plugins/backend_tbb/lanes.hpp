// Convolution with images across vector lanes (internal to backend_tbb): the "lanes" method.
//
// LeNet-sized layers (6 channels of 14x14, 16 filters of 5x5) are too small for a GEMM to pay
// for its packing, and a vector along an image row is mostly padding or tail: a 10-pixel row
// fills 10 of 16 AVX-512 lanes, and backward_data's "full" correlation of a 10x10 dy with a 5x5
// kernel multiplies 224 zeros of the padded 18x18 dy for every 100 real pixels. Here the kLanes
// images of a block are interleaved instead: a buffer ("frame") holds [plane][row][column][lane],
// lane i being image n0 + i, so one vector is the same pixel of kLanes images and every lane of
// every multiply-add is useful (a block with fewer images leaves the rest of the lanes zero).
//
// Forward and backward_data are then one "shifted product" per output row: output vector (i, j)
// = sum over taps t of a[t][i] * b[offset[t] + j * step], a register tile of rows (filters, or
// channels for backward_data) by output columns. Taps are ordered kernel row first, so the taps
// whose input row lies wholly in the zero padding are skipped for each output row (backward_data
// never multiplies dy's zero border rows); padding columns are multiplied, as a tile spans
// several output columns. The weight gradient is a dot product per (filter, tap) over the output
// pixels, kept per lane in a register tile and summed across lanes once per block.
//
// The interleaving costs a copy of the block's input and output; it pays where the products are
// small and many (measured: docs/performance.md, "14. Images across vector lanes"). That includes
// depthwise layers of small planes: one filter per group, so a row tile of one filter and a few
// output columns would keep too few sums to cover the FMA latency; there run() multiplies tiles of
// output pixels across the rows instead (ProductPass::pixel_offsets; section 31).
#pragma once

#include <cstdint>
#include <vector>

#include "direct_conv.hpp"
#include "strata/ops.hpp"

namespace strata::tbb_backend::lanes {

// Images per block: one per lane of the widest vector this copy of the kernels uses.
inline constexpr int64_t kLanes = direct::kVector;

// An interleaved buffer: `planes` planes of h x w pixels, each pixel kLanes floats (one per image).
struct Frame {
  int64_t planes = 0, h = 0, w = 0;
  int64_t pixels() const { return planes * h * w; }
  int64_t floats() const { return pixels() * kLanes; }
  // Offset of pixel (row, column) of `plane`, in floats.
  int64_t pixel(int64_t plane, int64_t row, int64_t column) const {
    return ((plane * h + row) * w + column) * kLanes;
  }
};

// Interleaves `images` (at most kLanes) images into `dst` of frame f: image i's plane p (rows x
// columns floats at src + i * image_stride + p * rows * columns) goes to lane i of f's plane p at
// (top + row, left + column). Every other float of the frame (padding, lanes past `images`) is
// zeroed; the padding only with zero_padding (a caller that interleaves group after group into
// one buffer zeroes it with the first: a 4x4 depthwise forward, 0.55 -> 0.37 ms on one thread).
void interleave(const float* src, int64_t images, int64_t image_stride, int64_t rows,
                int64_t columns, const Frame& f, int64_t top, int64_t left, float* dst,
                bool zero_padding = true);

// The reverse, for a frame without padding: lane i of src's plane p goes to image i's plane p
// (f.h x f.w floats at dst + i * image_stride + p * f.h * f.w), plus bias[p] when bias is not
// null. Only the first `images` lanes are read.
void deinterleave(const float* src, const Frame& f, int64_t images, int64_t image_stride,
                  const float* bias, float* dst);

// A register tile of the shifted product: rows x columns output vectors.
struct Tile {
  int rows = 1, columns = 1;
};

// The tile, among those compiled for this vector width, that wastes the least work on `rows` x
// `columns` outputs (a partial tile computes rows and columns that are dropped); ties go to the
// tile with more accumulators.
Tile choose_tile(int64_t rows, int64_t columns);

// The same for the weight gradient's tile of filters (rows) x taps (columns).
Tile choose_weight_tile(int64_t filters, int64_t taps);

// Rows of `a` per tap that shifted_product reads: rows rounded up to the tile's (zero past rows).
int64_t padded_rows(Tile tile, int64_t rows);

// out[i][j] = sum over taps t in [t0, t1) of a[t * lda + i] * b[offset[t] + j * step], each term a
// vector of kLanes floats, for i < rows and j < columns; output (i, j) is stored at
// out + i * out_stride + j * kLanes. lda >= padded_rows(tile, rows), with zeros past `rows`. b is
// read up to column round_up(columns, tile.columns) - 1 of every tap: callers leave that much
// slack after the frame. With t0 == t1 the outputs are zero.
void shifted_product(Tile tile, const float* a, int64_t lda, int64_t rows, const float* b,
                     const int64_t* offset, int64_t t0, int64_t t1, int64_t columns, int64_t step,
                     float* out, int64_t out_stride);

// The weight gradient of one block: dw[k * ldw + t] += the sum over lanes and over pixels p <
// pixels of dy[k * dy_stride + p * kLanes] * x[offset[t] + pixel_offset[p]], for k < filters and
// t < taps, in tiles of choose_weight_tile(). Lanes of images past the block's end must be zero in
// dy (interleave zeroes them).
void weight_product(Tile tile, const float* dy, int64_t filters, int64_t dy_stride, const float* x,
                    const int64_t* offset, int64_t taps, const int64_t* pixel_offset,
                    int64_t pixels, float* dw, int64_t ldw);

// ---- the passes of one group, for a descriptor
// ---------------------------------------------------

// Forward or backward_data of one group as a shifted product over interleaved frames: the input
// frame (x padded; or dy padded for backward_data's full correlation) times the packed weights
// gives the output frame (y before the bias; or dx), one output row at a time.
struct ProductPass {
  Frame in;                             // the input frame, padding included
  int64_t top = 0, left = 0;            // where the real input starts in it
  Frame out;                            // the product's rows (planes) x output pixels
  int64_t step = 0, row_step = 0;       // floats between output columns, and rows, in `in`
  Tile tile;
  int64_t lda = 0;                          // packed weights per tap
  std::vector<int64_t> offsets;             // per tap, kernel row first: its pixel in `in`
  std::vector<int64_t> first_tap, end_tap;  // per output row: the taps that read a real row
  // With one output plane (depthwise): per output pixel, where its first tap reads `in`; run()
  // then multiplies every tap over all pixels at once (pixel_tiles in lanes.cpp), not row by row.
  std::vector<int64_t> pixel_offsets;
  // Floats of the input frame plus what the last tile of a row reads past it.
  int64_t in_floats() const;
  // Multiply-adds per image as run: the tiles' padded rows and columns, the skipped taps not.
  int64_t multiply_adds() const;
};

// The input frames of forward (x padded; backward_params reads the same) and of backward_data (dy
// padded for the full correlation): what a budget check needs, without building a pass.
Frame forward_frame(const Conv2dDesc& d);
Frame data_frame(const Conv2dDesc& d);

// Forward: rows are the group's filters, taps (kernel row, channel, kernel column).
ProductPass forward_pass(const Conv2dDesc& d);
// backward_data (stride 1, padding at most the kernel's reach, data_fits()): rows are the
// group's channels, taps (kernel row, filter, kernel column) of the flipped kernel over dy.
ProductPass data_pass(const Conv2dDesc& d);
bool data_fits(const Conv2dDesc& d);

// The group's weights wg (filters x channels x R x S) as pass p's a[tap * lda + row].
void pack_forward(const Conv2dDesc& d, const ProductPass& p, const float* wg, float* packed);
void pack_data(const Conv2dDesc& d, const ProductPass& p, const float* wg, float* packed);

// out (p.out) = the product of `packed` with the input frame `in` (p.in_floats() floats).
void run(const ProductPass& p, const float* packed, const float* in, float* out);

// backward_params of one group: dw (filters x channels*R*S, row stride ldw) += the products of
// the interleaved dy (frame dy, unpadded) with the input frame x (forward_pass's `in`).
struct WeightPass {
  Frame x, dy;
  int64_t top = 0, left = 0;           // where the real input starts in x
  Tile tile;                           // of the weight gradient: filters x taps
  std::vector<int64_t> offsets;        // per tap (channel, kernel row, kernel column)
  std::vector<int64_t> pixel_offsets;  // per output pixel: its first tap's pixel in x
  int64_t multiply_adds() const;  // per image
};
WeightPass weight_pass(const Conv2dDesc& d);
void run(const WeightPass& p, const float* dy, const float* x, float* dw, int64_t ldw);

}  // namespace strata::tbb_backend::lanes
