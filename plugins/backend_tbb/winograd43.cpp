// Winograd F(4x4, 3x3): 4x4 output tiles from 6x6 input patches, 36 products per tile instead of
// 144 (2.25 multiply-adds per output and channel against F(2x2, 3x3)'s 4 and direct's 9).
// The transforms (Lavin and Gray, 2016, interpolation points 0, +-1, +-2 and infinity):
//   B^T = [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0; 0 -2 -1 2 1 0; 0 2 -1 -2 1 0; 0 4 0 -5 0 1]
//   G   = [1/4 0 0; -1/6 -1/6 -1/6; -1/6 1/6 -1/6; 1/24 1/12 1/6; 1/24 -1/12 1/6; 0 0 1]
//   A^T = [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1]
#include <algorithm>
#include <cstring>

#include "floats.hpp"
#include "panel_gemm.hpp"
#include "tbb_kernels.hpp"
#include "winograd.hpp"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

namespace strata::tbb_backend::winograd::f43 {

// (The input and output transforms below are templates over float and __m256: GCC's vector types
// take +, - and scalar * element-wise.)

// G's coefficients, for G g and G^T z in double.
constexpr double kQuarter = 1.0 / 4.0, kSixth = 1.0 / 6.0, kTwelfth = 1.0 / 12.0,
                 kTwentyFourth = 1.0 / 24.0;

void transform_weights(const float* w, int64_t filters, int64_t channels, bool flip, float* u,
                       Filters range) {
  // t = G g (6x3), then U = t G^T (6x6), in double: G's sixths are not exact in float.
  const auto rows = [](const double(&in)[3], double(&out)[6]) {
    out[0] = in[0] * kQuarter;
    out[1] = -(in[0] + in[1] + in[2]) * kSixth;
    out[2] = -(in[0] - in[1] + in[2]) * kSixth;
    out[3] = in[0] * kTwentyFourth + in[1] * kTwelfth + in[2] * kSixth;
    out[4] = in[0] * kTwentyFourth - in[1] * kTwelfth + in[2] * kSixth;
    out[5] = in[2];
  };
  write_pair_blocks<kElements>(u, filters, channels, range,
                               [&](int64_t f, int64_t c, PairColumn u_pair) {
                                 double g[3][3];
                                 filter_taps(w, filters, channels, flip, f, c, g);
                                 double t[6][3];
                                 for (int s = 0; s < 3; ++s) {
                                   const double column[3] = {g[0][s], g[1][s], g[2][s]};
                                   double out[6];
                                   rows(column, out);
                                   for (int i = 0; i < 6; ++i) t[i][s] = out[i];
                                 }
                                 for (int i = 0; i < 6; ++i) {
                                   double out[6];
                                   rows(t[i], out);
                                   for (int j = 0; j < 6; ++j)
                                     u_pair[i * 6 + j] = static_cast<float>(out[j]);
                                 }
                               });
}

namespace {

// B^T applied to 6 values (a column or a row of a patch), written through `out`.
template <class T, class Out>
inline void input_rows(const T (&d)[6], Out out) {
  out(0, 4 * d[0] - 5 * d[2] + d[4]);
  out(1, (d[3] + d[4]) - 4 * (d[1] + d[2]));
  out(2, (d[4] - d[3]) + 4 * (d[1] - d[2]));
  out(3, (d[4] - d[2]) + 2 * (d[3] - d[1]));
  out(4, (d[4] - d[2]) - 2 * (d[3] - d[1]));
  out(5, 4 * d[1] - 5 * d[3] + d[5]);
}

// A^T applied to 6 values.
template <class T, class Out>
inline void output_rows(const T (&m)[6], Out out) {
  const T a = m[1] + m[2], b = m[1] - m[2], c = m[3] + m[4], e = m[3] - m[4];
  out(0, m[0] + a + c);
  out(1, b + 2 * e);
  out(2, a + 4 * c);
  out(3, b + 8 * e + m[5]);
}

// V = B^T d B for one 6x6 patch, to v[xi * stride].
inline void transform_input(const float (&d)[6][6], float* v, int64_t stride) {
  float t[6][6];
  for (int j = 0; j < 6; ++j) {
    const float column[6] = {d[0][j], d[1][j], d[2][j], d[3][j], d[4][j], d[5][j]};
    input_rows(column, [&](int i, float x) { t[i][j] = x; });
  }
  for (int i = 0; i < 6; ++i) {
    input_rows(t[i], [&](int j, float x) { v[(i * 6 + j) * stride] = x; });
  }
}

// Y = A^T m A (+ bias) for one tile, m[xi * stride].
inline void transform_output(const float* m, int64_t stride, float bias, float (&y)[4][4]) {
  float s[4][6];
  for (int j = 0; j < 6; ++j) {
    float column[6];
    for (int i = 0; i < 6; ++i) column[i] = m[(i * 6 + j) * stride];
    output_rows(column, [&](int i, float x) { s[i][j] = x; });
  }
  for (int i = 0; i < 4; ++i) {
    output_rows(s[i], [&](int j, float x) { y[i][j] = x + bias; });
  }
}

#if defined(__AVX2__) && defined(__FMA__)
constexpr int kLanes = 8;

// Precision bf16's rounding of the transforms' inputs (Geometry::bf16). It runs only on a CPU with
// AVX512-BF16 (TbbConv2d refuses bf16 elsewhere), which loads this AVX-512 build: there the
// functions that round are compiled with AVX512-BF16 too and use its conversion (vcvtneps2bf16,
// round to nearest even, denormals to zero: strata::round_to_bf16's bits), 3 instructions a vector
// where the integer lane selects of round_lanes_to_bf16 took 13 and made F(4x4)'s input transform
// 1.6x slower. (Those functions' fp32 instantiations get the attribute as well; no fp32 code
// compiles to a bf16 instruction.)
#if defined(__AVX512F__)
#define STRATA_ROUND_TARGET __attribute__((target("avx512bf16")))
STRATA_ROUND_TARGET inline __m256 round_vector_to_bf16(__m256 v) {
  const __m128i words = (__m128i)_mm256_cvtneps_pbh(v);
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(words), 16));
}
STRATA_ROUND_TARGET inline __m128 round_vector_to_bf16(__m128 v) {
  const __m128i words = (__m128i)_mm_cvtneps_pbh(v);
  return _mm_castsi128_ps(_mm_slli_epi32(_mm_cvtepu16_epi32(words), 16));
}
#else
#define STRATA_ROUND_TARGET
inline __m256 round_vector_to_bf16(__m256 v) { return round_lanes_to_bf16(v); }
inline __m128 round_vector_to_bf16(__m128 v) { return round_lanes_to_bf16(v); }
#endif

// The B^T d B transform of 8 tiles: rows[k][i] points at row i of tile k's 6x6 patch, read
// through masks[k][i] (the patch's columns inside the image; the others, and the lanes past 6, read
// as zero without touching memory). Rows are loaded as vectors and transposed, 8 tiles to a
// vector; with Round the 36 vectors of the patches are rounded to bf16.
template <bool Round>
STRATA_ROUND_TARGET inline void transform_input8(const float* const (&rows)[kLanes][6],
                                                 const __m256i (&masks)[kLanes][6], float* v,
                                                 int64_t stride) {
  __m256 d[6][6];
  for (int i = 0; i < 6; ++i) {
    __m256 r[kLanes];
    for (int k = 0; k < kLanes; ++k) r[k] = _mm256_maskload_ps(rows[k][i], masks[k][i]);
    const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    d[i][0] = _mm256_permute2f128_ps(u0, u4, 0x20);
    d[i][1] = _mm256_permute2f128_ps(u1, u5, 0x20);
    d[i][2] = _mm256_permute2f128_ps(u2, u6, 0x20);
    d[i][3] = _mm256_permute2f128_ps(u3, u7, 0x20);
    d[i][4] = _mm256_permute2f128_ps(u0, u4, 0x31);
    d[i][5] = _mm256_permute2f128_ps(u1, u5, 0x31);
    if constexpr (Round) {
      for (int j = 0; j < 6; ++j) d[i][j] = round_vector_to_bf16(d[i][j]);
    }
  }
  __m256 t[6][6];
  for (int j = 0; j < 6; ++j) {
    const __m256 column[6] = {d[0][j], d[1][j], d[2][j], d[3][j], d[4][j], d[5][j]};
    input_rows(column, [&](int i, __m256 x) { t[i][j] = x; });
  }
  for (int i = 0; i < 6; ++i) {
    input_rows(t[i], [&](int j, __m256 x) { _mm256_storeu_ps(v + (i * 6 + j) * stride, x); });
  }
}

// A^T m A (+ bias) for 8 tiles of one filter; y[i][j] holds output (i, j) of the 8 tiles.
inline void transform_output8(const float* m, int64_t stride, float bias, __m256 (&y)[4][4]) {
  __m256 s[4][6];
  for (int j = 0; j < 6; ++j) {
    __m256 column[6];
    for (int i = 0; i < 6; ++i) column[i] = _mm256_loadu_ps(m + (i * 6 + j) * stride);
    output_rows(column, [&](int i, __m256 x) { s[i][j] = x; });
  }
  const __m256 b = _mm256_set1_ps(bias);
  for (int i = 0; i < 4; ++i) {
    output_rows(s[i], [&](int j, __m256 x) { y[i][j] = x + b; });
  }
}

// The 4 outputs of row i of each of the 8 tiles, as 4-float vectors: row[k] for tile k.
inline void tile_rows(const __m256 (&y)[4], __m128 (&row)[kLanes]) {
  const __m256 u0 = _mm256_unpacklo_ps(y[0], y[1]), u1 = _mm256_unpackhi_ps(y[0], y[1]);
  const __m256 u2 = _mm256_unpacklo_ps(y[2], y[3]), u3 = _mm256_unpackhi_ps(y[2], y[3]);
  const __m256 w[4] = {_mm256_shuffle_ps(u0, u2, 0x44), _mm256_shuffle_ps(u0, u2, 0xEE),
                       _mm256_shuffle_ps(u1, u3, 0x44), _mm256_shuffle_ps(u1, u3, 0xEE)};
  for (int k = 0; k < 4; ++k) {
    row[k] = _mm256_castps256_ps128(w[k]);
    row[k + 4] = _mm256_extractf128_ps(w[k], 1);
  }
}
// The functions whose bf16 instantiations round (their fp32 ones too: see STRATA_ROUND_TARGET).
#define STRATA_AVX_ROUND_TARGET STRATA_ROUND_TARGET
#else
#define STRATA_AVX_ROUND_TARGET
#endif

// Input patch origin of a tile (its first row and column in the unpadded input).
struct Tile {
  int64_t n, h0, w0;
};
inline Tile tile_at(const Geometry& g, int64_t tile) {
  const int64_t per_image = g.tiles_per_image(), within = tile % per_image;
  return {tile / per_image, 4 * (within / g.tiles_w) - g.pad_h, 4 * (within % g.tiles_w) - g.pad_w};
}

// Where a tile's 4x4 outputs start in the batch's output (or dy), and how many of its rows and
// columns lie inside the output.
inline int64_t output_window(const Geometry& g, int64_t tile, int64_t& rows, int64_t& columns) {
  const Tile p = tile_at(g, tile);
  const int64_t oh = p.h0 + g.pad_h, ow = p.w0 + g.pad_w;
  rows = std::min<int64_t>(4, g.out_h - oh);
  columns = std::min<int64_t>(4, g.out_w - ow);
  return p.n * g.filters * g.out_h * g.out_w + oh * g.out_w + ow;
}

// v[xi][c][t] = (B^T d B)[xi] for the input patches of tiles [first, first + count), with Round
// (g.bf16) of x rounded to bf16.
template <bool Round>
STRATA_AVX_ROUND_TARGET void transform_input_tiles(const Geometry& g, const float* x, int64_t first,
                                                   int64_t count, float* v) {
  const int64_t in_plane = g.in_h * g.in_w;
  const int64_t v_plane = plane_stride(g.channels, count);
  int64_t t = 0;
#if defined(__AVX2__) && defined(__FMA__)
  alignas(32) static constexpr float kZeroRow[8] = {};
  // Per tile and patch row, decided once for all channels: the row's offset in a plane and the
  // mask of its columns inside the image (none for a row in the top or bottom padding, which reads
  // kZeroRow). A row cut by the left padding starts before its image row: the masked-off lanes are
  // never read.
  struct Group {
    const float* image[kLanes];
    int64_t offset[kLanes][6];
    bool padding[kLanes][6];
    __m256i masks[kLanes][6];
    RowLines lines;  // those the rows read in channel 0
  };
  const auto prepare = [&](int64_t tile0, Group& group) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    group.lines = RowLines{};
    for (int k = 0; k < kLanes; ++k) {
      const Tile p = tile_at(g, tile0 + k);
      group.image[k] = x + p.n * g.channels * in_plane;
      const int64_t left = std::clamp<int64_t>(-p.w0, 0, 6);
      const int64_t right = std::clamp<int64_t>(g.in_w - p.w0, left, 6);
      const __m256i inside =
          _mm256_and_si256(_mm256_cmpgt_epi32(lane, _mm256_set1_epi32(static_cast<int>(left) - 1)),
                           _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(right)), lane));
      for (int i = 0; i < 6; ++i) {
        const int64_t h = p.h0 + i;
        group.padding[k][i] = h < 0 || h >= g.in_h || left == right;
        group.masks[k][i] = group.padding[k][i] ? _mm256_setzero_si256() : inside;
        group.offset[k][i] = group.padding[k][i] ? 0 : h * g.in_w + p.w0;
        if (!group.padding[k][i]) {
          const float* row = group.image[k] + group.offset[k][i];
          group.lines.add(row + left, row + right - 1);
        }
      }
    }
  };
  // Two groups of 8 tiles per pass over the channels where the block has them: each plane's two
  // 32-byte stores for a channel then fill one 64-byte line back to back (written a group at a
  // time, the line's halves were 36 planes x all channels of stores apart, and each was fetched
  // twice).
  constexpr int kGroups = 2;
  Group groups[kGroups];
  while (t + kLanes <= count) {
    const int n = t + kGroups * kLanes <= count ? kGroups : 1;
    for (int k = 0; k < n; ++k) prepare(first + t + k * kLanes, groups[k]);
    for (int64_t c = 0; c < g.channels; ++c) {
      for (int q = 0; q < n; ++q) groups[q].lines.prefetch_ahead(c, g.channels, in_plane);
      for (int q = 0; q < n; ++q) {
        const Group& group = groups[q];
        const float* rows[kLanes][6];
        for (int k = 0; k < kLanes; ++k) {
          const float* plane = group.image[k] + c * in_plane;
          for (int i = 0; i < 6; ++i) {
            rows[k][i] = group.padding[k][i] ? kZeroRow : plane + group.offset[k][i];
          }
        }
        transform_input8<Round>(rows, group.masks, v + c * count + t + q * kLanes, v_plane);
      }
    }
    t += n * kLanes;
  }
#endif
  for (; t < count; ++t) {
    const Tile p = tile_at(g, first + t);
    const float* image = x + p.n * g.channels * in_plane;
    for (int64_t c = 0; c < g.channels; ++c) {
      const float* plane = image + c * in_plane;
      float d[6][6];
      for (int i = 0; i < 6; ++i) {
        for (int j = 0; j < 6; ++j) {
          const int64_t h = p.h0 + i, w = p.w0 + j;
          d[i][j] = h >= 0 && h < g.in_h && w >= 0 && w < g.in_w ? plane[h * g.in_w + w] : 0.0f;
          if constexpr (Round) d[i][j] = round_to_bf16(d[i][j]);
        }
      }
      transform_input(d, v + c * count + t, v_plane);
    }
  }
}

void transform_input_tiles(const Geometry& g, const float* x, int64_t first, int64_t count,
                           float* v) {
  if (g.bf16) {
    transform_input_tiles<true>(g, x, first, count, v);
  } else {
    transform_input_tiles<false>(g, x, first, count, v);
  }
}

}  // namespace

void convolve_tiles(const Geometry& g, const float* u, const float* x, const float* bias, float* y,
                    int64_t first, int64_t count, float* v, float* m) {
  const int64_t out_plane = g.out_h * g.out_w;
  const int64_t m_plane = plane_stride(g.filters, count);

  transform_input_tiles(g, x, first, count, v);

  multiply_planes(g, u, v, m, count);

  // Output transform, clipped at the output's edge.
  const auto origin = [&](int64_t tile, int64_t& rows, int64_t& columns) {
    return y + output_window(g, tile, rows, columns);
  };
  int64_t t = 0;
#if defined(__AVX2__) && defined(__FMA__)
  for (; t + kLanes <= count; t += kLanes) {
    float* out[kLanes];
    int64_t rows[kLanes], columns[kLanes];
    for (int k = 0; k < kLanes; ++k) out[k] = origin(first + t + k, rows[k], columns[k]);
    for (int64_t f = 0; f < g.filters; ++f) {
      __m256 yt[4][4];
      transform_output8(m + f * count + t, m_plane, bias != nullptr ? bias[f] : 0.0f, yt);
      for (int i = 0; i < 4; ++i) {
        __m128 row[kLanes];
        tile_rows(yt[i], row);
        for (int k = 0; k < kLanes; ++k) {
          if (i >= rows[k]) continue;
          float* o = out[k] + f * out_plane + i * g.out_w;
          if (columns[k] == 4) {
            _mm_storeu_ps(o, row[k]);
          } else {
            alignas(16) float lanes[4];
            _mm_store_ps(lanes, row[k]);
            std::copy_n(lanes, columns[k], o);
          }
        }
      }
    }
  }
#endif
  for (; t < count; ++t) {
    int64_t rows, columns;
    float* out = origin(first + t, rows, columns);
    for (int64_t f = 0; f < g.filters; ++f) {
      float yt[4][4];
      transform_output(m + f * count + t, m_plane, bias != nullptr ? bias[f] : 0.0f, yt);
      for (int64_t i = 0; i < rows; ++i) {
        std::copy_n(yt[i], columns, out + f * out_plane + i * g.out_w);
      }
    }
  }
}

namespace {

// A applied to 4 values (A = (A^T)^T, 6x4): the dy side of the weight gradient.
template <class T, class Out>
inline void dy_rows(const T (&e)[4], Out out) {
  const T even = e[0] + e[2], odd = e[1] + e[3];
  const T even4 = e[0] + 4 * e[2], odd2 = 2 * e[1] + 8 * e[3];
  out(0, e[0]);
  out(1, even + odd);
  out(2, even - odd);
  out(3, even4 + odd2);
  out(4, even4 - odd2);
  out(5, e[3]);
}

// A e A^T for one 4x4 dy tile e of T (floats, or vectors of 8 filters of one tile): its 36 values
// to out(xi, value).
template <class T, class Out>
inline void transform_dy(const T (&e)[4][4], Out out) {
  T h[6][4];
  for (int j = 0; j < 4; ++j) {
    const T column[4] = {e[0][j], e[1][j], e[2][j], e[3][j]};
    dy_rows(column, [&](int i, T x) { h[i][j] = x; });
  }
  for (int i = 0; i < 6; ++i) dy_rows(h[i], [&](int j, T x) { out(i * 6 + j, x); });
}

// The weight gradient's products run on panel::multiply from blocks of this many tiles (its
// depth): 32 -> 48 tiles (192 + 192 and 128 + 128 channels, and fewer) ran 6-25 % faster than the
// dot products they replaced; OpenBLAS keeps blocks of 24 (256 + 256 channels: 8.1 against 9.4 ms
// on our kernel), whose sums the panel kernel reloads too often for its depth.
constexpr int64_t kPanelMinTiles = 32;

// w[xi][t][f] = (A e A^T)[xi] for the 4x4 dy tiles e of tiles [first, first + count), zero past
// the output's edge: tile by tile, each tile's filters contiguous (w_plane floats per plane), so
// that the products are panel::multiply's, V (channels x tiles) times this (tiles x filters).
// Eight filters of one tile per vector: their rows of 4 transposed into lanes, as the input
// transform does with tiles (one tile's edge clips all eight alike). With Round (g.bf16) dy is
// rounded to bf16 as it is read.
template <bool Round>
STRATA_AVX_ROUND_TARGET void transform_dy_tiles(const Geometry& g, const float* dy, int64_t first,
                                                int64_t count, float* w) {
  const int64_t out_plane = g.out_h * g.out_w;
  const int64_t w_plane = plane_stride(g.filters, count);
  // Four tiles side by side share each row's cache line: their filters are walked together, so a
  // line is used four times while it is in L1 (one tile at a time over 256 filters, 64 KB of
  // lines, ran 8 % slower than the transform it replaced).
  constexpr int64_t kGroup = 4;
#if defined(__AVX2__) && defined(__FMA__)
  alignas(16) float copies[kLanes][4][4];  // an edge tile's rows, zero past the output's edge
#endif
  for (int64_t t0 = 0; t0 < count; t0 += kGroup) {
    const int64_t group = std::min(kGroup, count - t0);
    const float* base[kGroup];
    int64_t rows[kGroup], columns[kGroup];
    for (int64_t q = 0; q < group; ++q) {
      base[q] = dy + output_window(g, first + t0 + q, rows[q], columns[q]);
    }
    int64_t f = 0;
#if defined(__AVX2__) && defined(__FMA__)
    for (; f + kLanes <= g.filters; f += kLanes) {
      for (int64_t q = 0; q < group; ++q) {
        const bool whole = rows[q] == 4 && columns[q] == 4;
        __m256 e[4][4];
        for (int i = 0; i < 4; ++i) {
          __m128 r[kLanes];
          for (int k = 0; k < kLanes; ++k) {
            const float* row = base[q] + (f + k) * out_plane + i * g.out_w;
            if (whole) {
              r[k] = _mm_loadu_ps(row);
            } else {
              for (int j = 0; j < 4; ++j) {
                copies[k][i][j] = i < rows[q] && j < columns[q] ? row[j] : 0.0f;
              }
              r[k] = _mm_load_ps(copies[k][i]);
            }
            if constexpr (Round) r[k] = round_vector_to_bf16(r[k]);
          }
          rows_to_lanes(r, e[i]);
        }
        float* out = w + (t0 + q) * g.filters + f;
        transform_dy(e, [&](int xi, __m256 x) { _mm256_storeu_ps(out + xi * w_plane, x); });
      }
    }
#endif
    for (; f < g.filters; ++f) {
      for (int64_t q = 0; q < group; ++q) {
        float e[4][4];
        for (int i = 0; i < 4; ++i) {
          for (int j = 0; j < 4; ++j) {
            e[i][j] =
                i < rows[q] && j < columns[q] ? base[q][f * out_plane + i * g.out_w + j] : 0.0f;
            if constexpr (Round) e[i][j] = round_to_bf16(e[i][j]);
          }
        }
        float* out = w + (t0 + q) * g.filters + f;
        transform_dy(e, [&](int xi, float x) { out[xi * w_plane] = x; });
      }
    }
  }
}

}  // namespace

void accumulate_weight_gradient(const Geometry& g, const float* x, const float* dy, int64_t first,
                                int64_t count, float* v, float* w, float* du_t) {
  transform_input_tiles(g, x, first, count, v);
  if (g.bf16) {
    transform_dy_tiles<true>(g, dy, first, count, w);
  } else {
    transform_dy_tiles<false>(g, dy, first, count, w);
  }
  // du_t[xi] (channels x filters) += V[xi] (channels x tiles) * w[xi] (tiles x filters): our panel
  // kernel from kPanelMinTiles tiles, OpenBLAS below (docs/performance.md, section 30).
  const int64_t du_plane = g.channels * g.filters;
  const int64_t v_plane = plane_stride(g.channels, count), w_plane = plane_stride(g.filters, count);
  for (int64_t xi = 0; xi < kElements; ++xi) {
    if (count >= kPanelMinTiles) {
      panel::multiply({v + xi * v_plane, count, 1}, w + xi * w_plane, g.filters, g.channels, count,
                      g.filters, du_t + xi * du_plane, g.filters, /*accumulate=*/true);
    } else {
      sgemm(false, false, g.channels, g.filters, count, 1.0f, v + xi * v_plane, count,
            w + xi * w_plane, g.filters, 1.0f, du_t + xi * du_plane, g.filters);
    }
  }
}

void transpose_plane(const float* du_t, int64_t filters, int64_t channels, float* du) {
  constexpr int64_t kBlock = 16;  // 16 x 16 floats: a cache line per row of each side
  for (int64_t c0 = 0; c0 < channels; c0 += kBlock) {
    for (int64_t f0 = 0; f0 < filters; f0 += kBlock) {
      const int64_t c1 = std::min(c0 + kBlock, channels), f1 = std::min(f0 + kBlock, filters);
      for (int64_t f = f0; f < f1; ++f) {
        for (int64_t c = c0; c < c1; ++c) du[f * channels + c] = du_t[c * filters + f];
      }
    }
  }
}

void weight_gradient(const float* du, int64_t filters, int64_t channels, float* dw, Filters range) {
  // G^T (3x6) applied to 6 values, in double.
  const auto gt = [](const double(&z)[6], double(&out)[3]) {
    out[0] = z[0] * kQuarter - (z[1] + z[2]) * kSixth + (z[3] + z[4]) * kTwentyFourth;
    out[1] = (z[2] - z[1]) * kSixth + (z[3] - z[4]) * kTwelfth;
    out[2] = -(z[1] + z[2]) * kSixth + (z[3] + z[4]) * kSixth + z[5];
  };
  read_pair_blocks<kElements>(du, filters, channels, range,
                              [&](int64_t f, int64_t c, PairColumn in) {
                                double t[3][6];
                                for (int j = 0; j < 6; ++j) {
                                  double column[6];
                                  for (int i = 0; i < 6; ++i) column[i] = in[i * 6 + j];
                                  double out[3];
                                  gt(column, out);
                                  for (int r = 0; r < 3; ++r) t[r][j] = out[r];
                                }
                                float* out = dw + (f * channels + c) * 9;
                                for (int r = 0; r < 3; ++r) {
                                  double row[3];
                                  gt(t[r], row);
                                  for (int s = 0; s < 3; ++s)
                                    out[r * 3 + s] = static_cast<float>(row[s]);
                                }
                              });
}

}  // namespace strata::tbb_backend::winograd::f43
