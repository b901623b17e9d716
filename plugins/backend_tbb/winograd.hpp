// Winograd F(2x2, 3x3) convolution (internal to backend_tbb): 3x3 filters, stride 1, dilation 1,
// one group. Each 2x2 block of outputs ("tile") is computed from a 4x4 input patch as
//   Y = A^T [ sum over channels c of (G g_kc G^T) .* (B^T d_c B) ] A
// so the 36 multiply-adds per output pixel and channel of direct convolution become 16 per
// 4 pixels (2.25x fewer). The sums over channels are 16 independent matrix products, one per
// element xi of the 4x4 transformed tile: M[xi] (filters x tiles) = U[xi] (filters x channels) *
// V[xi] (channels x tiles), run on a block of tiles at a time by panel::multiply (F(2x2)'s weight
// gradient's by panel::multiply_nt or single-threaded sgemm, F(4x4)'s by panel::multiply too:
// f43::accumulate_weight_gradient).
//
// backward_data is the same computation on dy, with the filters flipped and channels and
// filters swapped, and padding 2 - pad (a "full" correlation): transform_weights(flip = true).
//
// Accuracy: the transforms' coefficients are 0, +-1 and +-1/2, so F(2x2, 3x3) loses little
// (tests/test_kernels.cpp checks it against the reference at the usual tolerance); F(4x4, 3x3)
// would save more multiplications but its larger coefficients cost precision.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "strata/ops.hpp"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

namespace strata::tbb_backend::winograd {

inline constexpr int64_t kElements = 16;  // 4x4 transformed tile
// F(2x2)'s input transform reads runs of this many tiles of one tile row in place; shorter tile
// rows, and runs across a row's end, go tile by tile, copying each border tile element by element.
inline constexpr int64_t kRunTiles = 8;

// Floats between the 16 planes of a transformed block of `rows` x `count`. Not a multiple of
// 4 KiB: with power-of-two plane sizes the 16 streams of a transform's stores all map to the same
// L1 set and evict each other (measured: the input transform took as long as the products).
inline int64_t plane_stride(int64_t rows, int64_t count) { return rows * count + 48; }

// The input transforms read 4 or 6 short rows of each channel per tile row, from L3 or memory:
// too scattered for the hardware prefetcher (the loads took 60 % of F(4x4)'s input transform). A
// RowLines holds the distinct cache lines a group of tiles reads in one channel, and prefetches
// them in the channel kPrefetchChannels ahead (2 to 16 measured the same; VGG-like forward 15.1 ->
// 12.8 ms).
inline constexpr int64_t kPrefetchChannels = 4;
struct RowLines {
  static constexpr int kMax = 96;  // past this many, lines are not prefetched
  const float* lines[kMax];
  int count = 0;
  // The lines of a row whose first and last floats read are `first` and `last`.
  void add(const float* first, const float* last) {
    for (const float* p = first; p < last; p += 16) add_line(p);
    add_line(last);
  }
  // Before channel c of `channels` planes `plane` floats apart: prefetches the same lines in
  // channel c + kPrefetchChannels, if there is one.
  void prefetch_ahead(int64_t c, int64_t channels, int64_t plane) const {
    if (c + kPrefetchChannels >= channels) return;
    const int64_t offset = (c + kPrefetchChannels) * plane;
    for (int l = 0; l < count; ++l) __builtin_prefetch(lines[l] + offset);
  }

 private:
  void add_line(const float* p) {
    const uintptr_t line = reinterpret_cast<uintptr_t>(p) >> 6;
    for (int l = count - 1; l >= 0; --l) {
      if (reinterpret_cast<uintptr_t>(lines[l]) >> 6 == line) return;
    }
    if (count < kMax) lines[count++] = p;
  }
};

struct Geometry {
  int64_t channels = 0, filters = 0;  // of this convolution (after any swap)
  int64_t in_h = 0, in_w = 0, pad_h = 0, pad_w = 0, out_h = 0, out_w = 0;
  int64_t tile = 2;                  // output tile: 2 for F(2x2, 3x3), 4 for F(4x4, 3x3)
  int64_t tiles_h = 0, tiles_w = 0;  // ceil(out / tile)
  // Precision bf16: F(4x4)'s transforms round the input (x or dy) and the weight gradient's dy to
  // bf16 as they read them (the weights come rounded). F(2x2)'s read inputs rounded beforehand.
  bool bf16 = false;
  int64_t tiles_per_image() const { return tiles_h * tiles_w; }
  int64_t elements() const { return (tile + 2) * (tile + 2); }  // of a transformed tile
  static Geometry make(int64_t channels, int64_t filters, int64_t in_h, int64_t in_w, int64_t pad_h,
                       int64_t pad_w, int64_t tile = 2);
  // The same convolution on an input already zero-padded by (pad_h, pad_w): the same tiles.
  Geometry padded() const {
    Geometry g = make(channels, filters, in_h + 2 * pad_h, in_w + 2 * pad_w, 0, 0, tile);
    g.bf16 = bf16;
    return g;
  }
};

// Flops of one tile's transforms for one channel (input), filter (output) or filter of dy (the
// weight gradient's A e A^T), counted from the formulas below and in winograd43.cpp: every
// addition, subtraction, negation and multiplication by a constant is 1, a subexpression the
// formula repeats verbatim (F(4x4)'s (d4 - d2) and 2 (d3 - d1)) once, the bias not at all. The
// vector paths compute the same formulas 8 tiles at a time.
struct TransformFlops {
  int64_t input, output, dy;
};
// F(2x2, 3x3): B^T d B is 16 + 16 additions; A^T m A 4 x 4 + 4 x 2; A e A^T 6 + 4 x 3.
inline constexpr TransformFlops kFlops{32, 24, 18};

// The arithmetic of one image of a pass of geometry g whose images are `phases` x `phases`
// polyphase components each (1: undilated): (tile + 2)^2 * channels * filters multiply-adds per
// tile, partial tiles at the edges counted whole, and the input transform per tile and channel
// plus the output transform per tile and filter, or with weight_gradient the dy transform.
Conv2dPassArithmetic pass_arithmetic(const Geometry& g, int64_t phases, bool weight_gradient);

#if defined(__AVX2__) && defined(__FMA__)
// Eight rows of 4 floats to 4 vectors across them: out[j]'s lane k is rows[k][j] (the transforms
// put 8 tiles, or 8 filters of one tile, side by side in a vector this way).
inline void rows_to_lanes(const __m128 (&rows)[8], __m256 (&out)[4]) {
  __m256 m[4];
  for (int k = 0; k < 4; ++k) {
    m[k] = _mm256_insertf128_ps(_mm256_castps128_ps256(rows[k]), rows[k + 4], 1);
  }
  const __m256 t0 = _mm256_unpacklo_ps(m[0], m[1]), t1 = _mm256_unpackhi_ps(m[0], m[1]);
  const __m256 t2 = _mm256_unpacklo_ps(m[2], m[3]), t3 = _mm256_unpackhi_ps(m[2], m[3]);
  out[0] = _mm256_shuffle_ps(t0, t2, 0x44);
  out[1] = _mm256_shuffle_ps(t0, t2, 0xEE);
  out[2] = _mm256_shuffle_ps(t1, t3, 0x44);
  out[3] = _mm256_shuffle_ps(t1, t3, 0xEE);
}
#endif

// The products of a block of `count` tiles, one per element xi of the transformed tile (16 or 36,
// by g.tile): M[xi] (filters x tiles) = U[xi] (filters x channels) * V[xi] (channels x tiles) by
// panel::multiply; and for F(2x2)'s weight gradient du[xi] (filters x channels) += W[xi]
// (filters x tiles) * V[xi]^T by panel::multiply_nt from panel::kDotMinDepth tiles, single-threaded
// sgemm below. Planes of V, M and W are plane_stride()
// apart, of U and du filters * channels.
void multiply_planes(const Geometry& g, const float* u, const float* v, float* m, int64_t count);
void accumulate_planes(const Geometry& g, const float* w, const float* v, float* du, int64_t count);

// Tap (r, s) of filter f over channel c: w[f][c][r][s] for w stored [filters][channels][3][3], or
// with flip, backward_data's filter w[c][f][2 - r][2 - s] for w stored [channels][filters][3][3].
inline float filter_tap(const float* w, int64_t filters, int64_t channels, bool flip, int64_t f,
                        int64_t c, int r, int s) {
  return flip ? w[(c * filters + f) * 9 + (2 - r) * 3 + (2 - s)]
              : w[(f * channels + c) * 9 + r * 3 + s];
}
// All nine taps of filter f over channel c, as filter_tap reads them.
template <class T>
void filter_taps(const float* w, int64_t filters, int64_t channels, bool flip, int64_t f, int64_t c,
                 T (&g)[3][3]) {
  for (int r = 0; r < 3; ++r) {
    for (int s = 0; s < 3; ++s) g[r][s] = filter_tap(w, filters, channels, flip, f, c, r, s);
  }
}

// U[xi][f][c] = (G g G^T)[xi] for the 3x3 filter g = w[f][c] (w is [filters][channels][3][3]).
// With flip, the filters are those of backward_data: g[r][s] = w[c][f][2 - r][2 - s] where w is
// [channels][filters][3][3] as stored for the forward convolution (so `filters` here is the
// forward convolution's channel count). u holds kElements * filters * channels floats. Only
// filters [first, end) are written, so that tasks can share the work (Filters below).
struct Filters {
  int64_t first, end;
};
// Filter pairs (channels of one filter) per block of the weight transforms. The planes of U are
// filters * channels floats apart, often a multiple of 4 KiB: one value per plane per pair put
// every store of a pair in the same L1 set (16 or 36 planes against its 12 ways), and the
// transform took 10 % of a ResNet-like pass. A block writes (or reads) whole cache lines of each
// plane at once.
inline constexpr int64_t kPairBlock = 16;

// One filter pair's values inside a block of kPairBlock pairs: element xi at column[xi].
struct PairColumn {
  float* values;
  float& operator[](int64_t xi) const { return values[xi * kPairBlock]; }
};

// The weight transforms' walk over the filter pairs (f, c) of `range`, kPairBlock channels at a
// time. write_pair_blocks: pair(f, c, column) fills the pair's Elements values, then the block
// goes to U's planes (u[xi][f][c]) a cache line per plane. read_pair_blocks: the block is read
// from dU's planes that way, then pair(f, c, column) reads the pair's values.
template <int64_t Elements, class Planes, class Pair>
void pair_blocks(Planes* planes, int64_t filters, int64_t channels, Filters range,
                 const Pair& pair) {
  constexpr bool kWrite = !std::is_const_v<Planes>;
  const int64_t plane = filters * channels;
  float block[Elements * kPairBlock];
  for (int64_t f = range.first; f < range.end; ++f) {
    for (int64_t c0 = 0; c0 < channels; c0 += kPairBlock) {
      const int64_t pairs = std::min(kPairBlock, channels - c0);
      if constexpr (!kWrite) {
        for (int64_t xi = 0; xi < Elements; ++xi) {
          std::copy_n(planes + xi * plane + f * channels + c0, pairs, block + xi * kPairBlock);
        }
      }
      for (int64_t k = 0; k < pairs; ++k) pair(f, c0 + k, PairColumn{block + k});
      if constexpr (kWrite) {
        for (int64_t xi = 0; xi < Elements; ++xi) {
          std::copy_n(block + xi * kPairBlock, pairs, planes + xi * plane + f * channels + c0);
        }
      }
    }
  }
}
template <int64_t Elements, class Pair>
void write_pair_blocks(float* u, int64_t filters, int64_t channels, Filters range,
                       const Pair& pair) {
  pair_blocks<Elements>(u, filters, channels, range, pair);
}
template <int64_t Elements, class Pair>
void read_pair_blocks(const float* du, int64_t filters, int64_t channels, Filters range,
                      const Pair& pair) {
  pair_blocks<Elements>(du, filters, channels, range, pair);
}

void transform_weights(const float* w, int64_t filters, int64_t channels, bool flip, float* u,
                       Filters range);

// y[n][f] for the output tiles [first, first + count) of the batch, numbered image by image,
// row by row. x is [N][channels][in_h][in_w], y [N][filters][out_h][out_w] (overwritten; bias
// added when non-null). v and m are workspaces of kElements * plane_stride(channels, count)
// and kElements * plane_stride(filters, count) floats.
void convolve_tiles(const Geometry& g, const float* u, const float* x, const float* bias, float* y,
                    int64_t first, int64_t count, float* v, float* m);

// The weight gradient, by the same transforms run backwards: since y = A^T (U .* V) A and
// U = G g G^T, dL/dU[f][c] = sum over tiles of (A dy_f A^T) .* V_c, and dL/dg = G^T dL/dU G.
// accumulate_weight_gradient adds the tiles [first, first + count)'s share to du[xi][f][c]
// (16 products (filters x tiles) * (tiles x channels)); v and w are workspaces of
// kElements * plane_stride(channels, count) and kElements * plane_stride(filters, count) floats. x
// is the forward input and dy the forward output's gradient, as in convolve_tiles.
void accumulate_weight_gradient(const Geometry& g, const float* x, const float* dy, int64_t first,
                                int64_t count, float* v, float* w, float* du);
// dw[f][c][3][3] = G^T du[.][f][c] G (overwritten), for filters f in `range`.
void weight_gradient(const float* du, int64_t filters, int64_t channels, float* dw, Filters range);

// F(4x4, 3x3) (winograd43.cpp): 6x6 transformed tiles, 36 products (filters x tiles) *
// (tiles x channels) per block, 2.25 multiply-adds per output and channel instead of F(2x2)'s 4.
// For all three passes. Its transforms have
// coefficients up to 8 (and sixths in G, computed in double), so it loses a little more
// precision than F(2x2): the conformance tests hold it to the same tolerance.
namespace f43 {
inline constexpr int64_t kElements = 36;
// B^T applied to 6 values is 21 flops (7 of them by 4, 5 or 2), 12 times per tile; A^T to 6
// values 13, 10 times; A to 4 values 11, 10 times.
inline constexpr TransformFlops kFlops{12 * 21, 10 * 13, 10 * 11};
// As winograd::transform_weights, for F(4x4): u holds 36 * filters * channels floats.
void transform_weights(const float* w, int64_t filters, int64_t channels, bool flip, float* u,
                       Filters range);
// As winograd::convolve_tiles, for a geometry with tile 4; v and m hold 36 planes.
void convolve_tiles(const Geometry& g, const float* u, const float* x, const float* bias, float* y,
                    int64_t first, int64_t count, float* v, float* m);
// As winograd::accumulate_weight_gradient and weight_gradient, for tile 4 (36 planes): dL/dU =
// sum over tiles of (A dy A^T) .* (B^T d B), then dw = G^T dL/dU G (in double). But
// accumulate_weight_gradient adds to du_t[xi][c][f], dL/dU transposed (channels x filters): the
// product V[xi] (channels x tiles) * W[xi], with the dy transform W written tiles x filters (each
// tile's filters contiguous), so that its products run on panel::multiply, as the forward's do,
// instead of multiply_nt's dot products, whose final sums cost a third of their multiply-adds at
// these depths (docs/performance.md, section 30). transpose_plane turns one plane of the sum
// (filters x channels floats) back to du[xi][f][c] for weight_gradient.
void accumulate_weight_gradient(const Geometry& g, const float* x, const float* dy, int64_t first,
                                int64_t count, float* v, float* w, float* du_t);
void transpose_plane(const float* du_t, int64_t filters, int64_t channels, float* du);
void weight_gradient(const float* du, int64_t filters, int64_t channels, float* dw, Filters range);
}  // namespace f43

}  // namespace strata::tbb_backend::winograd
