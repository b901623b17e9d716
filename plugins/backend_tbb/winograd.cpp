#include "winograd.hpp"

#include <algorithm>
#include <cstring>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

#include "panel_gemm.hpp"
#include "tbb_kernels.hpp"

namespace strata::tbb_backend::winograd {

Geometry Geometry::make(int64_t channels, int64_t filters, int64_t in_h, int64_t in_w,
                        int64_t pad_h, int64_t pad_w, int64_t tile) {
  Geometry g;
  g.channels = channels;
  g.filters = filters;
  g.in_h = in_h;
  g.in_w = in_w;
  g.pad_h = pad_h;
  g.pad_w = pad_w;
  g.out_h = in_h + 2 * pad_h - 2;
  g.out_w = in_w + 2 * pad_w - 2;
  g.tile = tile;
  g.tiles_h = (g.out_h + tile - 1) / tile;
  g.tiles_w = (g.out_w + tile - 1) / tile;
  return g;
}

Conv2dPassArithmetic pass_arithmetic(const Geometry& g, int64_t phases, bool weight_gradient) {
  const TransformFlops& flops = g.tile == 4 ? f43::kFlops : kFlops;
  const int64_t tiles = phases * phases * g.tiles_per_image();
  const int64_t after = weight_gradient ? flops.dy : flops.output;
  return {g.elements() * g.channels * g.filters * tiles,
          tiles * (g.channels * flops.input + g.filters * after)};
}

void multiply_planes(const Geometry& g, const float* u, const float* v, float* m, int64_t count) {
  const int64_t u_plane = g.filters * g.channels;
  const int64_t v_plane = plane_stride(g.channels, count), m_plane = plane_stride(g.filters, count);
  for (int64_t xi = 0; xi < g.elements(); ++xi) {
    panel::multiply({u + xi * u_plane, g.channels, 1}, v + xi * v_plane, count, g.filters,
                    g.channels, count, m + xi * m_plane, count);
  }
}

void accumulate_planes(const Geometry& g, const float* w, const float* v, float* du,
                       int64_t count) {
  const int64_t u_plane = g.filters * g.channels;
  const int64_t v_plane = plane_stride(g.channels, count), w_plane = plane_stride(g.filters, count);
  // Dot products over the block's tiles pay for their final sums from blocks of about 100 tiles
  // (F(2x2)'s 240 to 480: 4-15 % faster than OpenBLAS, which packs both operands per call);
  // F(4x4)'s blocks of 24 to 48 tiles ran 37-128 % slower that way than with OpenBLAS.
  const bool dots = count >= panel::kDotMinDepth;
  for (int64_t xi = 0; xi < g.elements(); ++xi) {
    if (dots) {
      panel::multiply_nt(w + xi * w_plane, count, v + xi * v_plane, count, g.filters, g.channels,
                         count, du + xi * u_plane, g.channels);
    } else {
      sgemm(false, true, g.filters, g.channels, count, 1.0f, w + xi * w_plane, count,
            v + xi * v_plane, count, 1.0f, du + xi * u_plane, g.channels);
    }
  }
}

void transform_weights(const float* w, int64_t filters, int64_t channels, bool flip, float* u,
                       Filters range) {
  write_pair_blocks<kElements>(
      u, filters, channels, range, [&](int64_t f, int64_t c, PairColumn out) {
        float g[3][3];
        filter_taps(w, filters, channels, flip, f, c, g);
        // t = G g (4x3), then U = t G^T (4x4). G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1].
        float t[4][3];
        for (int s = 0; s < 3; ++s) {
          t[0][s] = g[0][s];
          t[1][s] = 0.5f * (g[0][s] + g[1][s] + g[2][s]);
          t[2][s] = 0.5f * (g[0][s] - g[1][s] + g[2][s]);
          t[3][s] = g[2][s];
        }
        for (int i = 0; i < 4; ++i) {
          const float row[4] = {t[i][0], 0.5f * (t[i][0] + t[i][1] + t[i][2]),
                                0.5f * (t[i][0] - t[i][1] + t[i][2]), t[i][2]};
          for (int j = 0; j < 4; ++j) out[i * 4 + j] = row[j];
        }
      });
}

namespace {

// V = B^T d B for one 4x4 patch d, written to v[xi * stride]. B^T = [1 0 -1 0; 0 1 1 0;
// 0 -1 1 0; 0 1 0 -1].
inline void transform_input(const float (&d)[4][4], float* v, int64_t stride) {
  float t[4][4];
  for (int j = 0; j < 4; ++j) {
    t[0][j] = d[0][j] - d[2][j];
    t[1][j] = d[1][j] + d[2][j];
    t[2][j] = d[2][j] - d[1][j];
    t[3][j] = d[1][j] - d[3][j];
  }
  for (int i = 0; i < 4; ++i) {
    v[(i * 4 + 0) * stride] = t[i][0] - t[i][2];
    v[(i * 4 + 1) * stride] = t[i][1] + t[i][2];
    v[(i * 4 + 2) * stride] = t[i][2] - t[i][1];
    v[(i * 4 + 3) * stride] = t[i][1] - t[i][3];
  }
}

// Y = A^T m A for one tile, A^T = [1 1 1 0; 0 1 -1 -1]; m[xi * stride].
inline void transform_output(const float* m, int64_t stride, float b, float (&y)[2][2]) {
  float s[2][4];
  for (int j = 0; j < 4; ++j) {
    const float m0 = m[j * stride], m1 = m[(4 + j) * stride], m2 = m[(8 + j) * stride],
                m3 = m[(12 + j) * stride];
    s[0][j] = m0 + m1 + m2;
    s[1][j] = m1 - m2 - m3;
  }
  y[0][0] = s[0][0] + s[0][1] + s[0][2] + b;
  y[0][1] = s[0][1] - s[0][2] - s[0][3] + b;
  y[1][0] = s[1][0] + s[1][1] + s[1][2] + b;
  y[1][1] = s[1][1] - s[1][2] - s[1][3] + b;
}

#if defined(__AVX2__) && defined(__FMA__)
constexpr int64_t kLanes = 8;  // tiles side by side in one vector
static_assert(kLanes == kRunTiles);

// Even and odd elements of p[0..15]: {p0, p2, ..., p14} and {p1, p3, ..., p15}.
inline void deinterleave(const float* p, __m256& even, __m256& odd) {
  const __m256 lo = _mm256_loadu_ps(p), hi = _mm256_loadu_ps(p + 8);
  const __m256 e = _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(2, 0, 2, 0));
  const __m256 o = _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(3, 1, 3, 1));
  even = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(e), 0xD8));
  odd = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(o), 0xD8));
}

// V = B^T d B for 8 tiles at once, d[i][j] holding element (i, j) of the 8 patches:
// v[xi * stride + lane].
inline void transform_input_lanes(const __m256 (&d)[4][4], float* v, int64_t stride) {
  __m256 t[4][4];
  for (int j = 0; j < 4; ++j) {
    t[0][j] = _mm256_sub_ps(d[0][j], d[2][j]);
    t[1][j] = _mm256_add_ps(d[1][j], d[2][j]);
    t[2][j] = _mm256_sub_ps(d[2][j], d[1][j]);
    t[3][j] = _mm256_sub_ps(d[1][j], d[3][j]);
  }
  for (int i = 0; i < 4; ++i) {
    _mm256_storeu_ps(v + (i * 4 + 0) * stride, _mm256_sub_ps(t[i][0], t[i][2]));
    _mm256_storeu_ps(v + (i * 4 + 1) * stride, _mm256_add_ps(t[i][1], t[i][2]));
    _mm256_storeu_ps(v + (i * 4 + 2) * stride, _mm256_sub_ps(t[i][2], t[i][1]));
    _mm256_storeu_ps(v + (i * 4 + 3) * stride, _mm256_sub_ps(t[i][1], t[i][3]));
  }
}

// Input transform of 8 horizontally adjacent tiles whose patches start at column 0 of the 4 rows
// rows[i] (each readable for 18 floats): v[xi * stride + lane].
inline void transform_input8(const float* const (&rows)[4], float* v, int64_t stride) {
  __m256 d[4][4];
  for (int i = 0; i < 4; ++i) {
    deinterleave(rows[i], d[i][0], d[i][1]);
    deinterleave(rows[i] + 2, d[i][2], d[i][3]);
  }
  transform_input_lanes(d, v, stride);
}

// Y = A^T m A (+ bias) for 8 tiles of one filter: y[i][j] holds output (i, j) of the 8 tiles.
inline void transform_output_vectors(const float* m, int64_t stride, float b, __m256 (&y)[2][2]) {
  __m256 s[2][4];
  for (int j = 0; j < 4; ++j) {
    const __m256 m0 = _mm256_loadu_ps(m + j * stride), m1 = _mm256_loadu_ps(m + (4 + j) * stride);
    const __m256 m2 = _mm256_loadu_ps(m + (8 + j) * stride),
                 m3 = _mm256_loadu_ps(m + (12 + j) * stride);
    s[0][j] = _mm256_add_ps(_mm256_add_ps(m0, m1), m2);
    s[1][j] = _mm256_sub_ps(_mm256_sub_ps(m1, m2), m3);
  }
  const __m256 bias = _mm256_set1_ps(b);
  for (int i = 0; i < 2; ++i) {
    y[i][0] = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(s[i][0], s[i][1]), s[i][2]), bias);
    y[i][1] = _mm256_add_ps(_mm256_sub_ps(_mm256_sub_ps(s[i][1], s[i][2]), s[i][3]), bias);
  }
}

// Output transform of 8 adjacent tiles: the two output rows, 16 floats each, interleaved.
inline void transform_output8(const float* m, int64_t stride, float b, float* row0, float* row1) {
  __m256 y[2][2];
  transform_output_vectors(m, stride, b, y);
  for (int i = 0; i < 2; ++i) {
    const __m256 lo = _mm256_unpacklo_ps(y[i][0], y[i][1]),
                 hi = _mm256_unpackhi_ps(y[i][0], y[i][1]);
    float* out = i == 0 ? row0 : row1;
    _mm256_storeu_ps(out, _mm256_permute2f128_ps(lo, hi, 0x20));
    _mm256_storeu_ps(out + 8, _mm256_permute2f128_ps(lo, hi, 0x31));
  }
}

// The B^T d B transform of 8 tiles anywhere (across tile rows or images): patch[k] points at row 0,
// column 0 of tile k's 4x4 patch, rows `ld` floats apart. The four rows of each patch are loaded
// as 4-float vectors and transposed, 8 tiles to a vector.
inline void transform_input_gathered(const float* const (&patch)[kLanes],
                                     const int64_t (&ld)[kLanes], float* v, int64_t stride) {
  __m256 d[4][4];
  for (int i = 0; i < 4; ++i) {
    __m128 rows[kLanes];
    for (int k = 0; k < kLanes; ++k) rows[k] = _mm_loadu_ps(patch[k] + i * ld[k]);
    rows_to_lanes(rows, d[i]);
  }
  // (The lanes run 0, 1, 2, 3 in the low half and 4, 5, 6, 7 in the high one: tile order.)
  transform_input_lanes(d, v, stride);
}

// A e A^T for 8 dy tiles e = [a b; c d] (a vector of 8 tiles each), to out[xi * stride].
inline void transform_dy8(__m256 a, __m256 b, __m256 c, __m256 d, float* out, int64_t stride) {
  const __m256 r[4][2] = {
      {a, b},
      {_mm256_add_ps(a, c), _mm256_add_ps(b, d)},
      {_mm256_sub_ps(a, c), _mm256_sub_ps(b, d)},
      {_mm256_sub_ps(_mm256_setzero_ps(), c), _mm256_sub_ps(_mm256_setzero_ps(), d)}};
  for (int i = 0; i < 4; ++i) {
    _mm256_storeu_ps(out + (i * 4 + 0) * stride, r[i][0]);
    _mm256_storeu_ps(out + (i * 4 + 1) * stride, _mm256_add_ps(r[i][0], r[i][1]));
    _mm256_storeu_ps(out + (i * 4 + 2) * stride, _mm256_sub_ps(r[i][0], r[i][1]));
    _mm256_storeu_ps(out + (i * 4 + 3) * stride, _mm256_sub_ps(_mm256_setzero_ps(), r[i][1]));
  }
}

// A^T m A for 8 tiles of one filter: y[i][j][k] is output (i, j) of tile k.
inline void transform_output_lanes(const float* m, int64_t stride, float b,
                                   float (&y)[2][2][kLanes]) {
  __m256 v[2][2];
  transform_output_vectors(m, stride, b, v);
  for (int i = 0; i < 2; ++i) {
    for (int j = 0; j < 2; ++j) _mm256_storeu_ps(y[i][j], v[i][j]);
  }
}
#endif

// v[xi][c][t] = (B^T d B)[xi] for the input patches of tiles [first, first + count).
void transform_input_tiles(const Geometry& g, const float* x, int64_t first, int64_t count,
                           float* v) {
  const int64_t tiles = g.tiles_per_image();
  const int64_t in_plane = g.in_h * g.in_w;
  const int64_t v_plane = plane_stride(g.channels, count);
  // Runs of 8 tiles along a tile row go through the vector path:
  // straight from the image when their 4 x 18 patch lies inside it, otherwise from a zero-padded
  // copy of the patch.
  for (int64_t t = 0; t < count;) {
    const int64_t tile = first + t, n = tile / tiles, th = tile % tiles / g.tiles_w,
                  tw = tile % g.tiles_w;
    const int64_t h0 = 2 * th - g.pad_h, w0 = 2 * tw - g.pad_w;
    const float* image = x + n * g.channels * in_plane;
#if defined(__AVX2__) && defined(__FMA__)
    const int64_t run = std::min({kLanes, g.tiles_w - tw, count - t});
    if (run == kLanes) {
      // Columns [lo, hi) of the 18 the run reads lie inside the image; the others are padding,
      // zero in `patch` from the start (only the middle is copied per channel and row).
      const int64_t lo = std::clamp<int64_t>(-w0, 0, 18);
      const int64_t hi = std::clamp<int64_t>(g.in_w - w0, lo, 18);
      alignas(32) static constexpr float kZeroRow[24] = {};
      alignas(32) float patch[4][24] = {};
      RowLines lines;
      for (int i = 0; i < 4; ++i) {
        const int64_t h = h0 + i;
        if (h >= 0 && h < g.in_h && lo < hi) {
          lines.add(image + h * g.in_w + w0 + lo, image + h * g.in_w + w0 + hi - 1);
        }
      }
      for (int64_t c = 0; c < g.channels; ++c) {
        lines.prefetch_ahead(c, g.channels, in_plane);
        const float* plane = image + c * in_plane;
        const float* rows[4];
        for (int i = 0; i < 4; ++i) {
          const int64_t h = h0 + i;
          if (h < 0 || h >= g.in_h) {
            rows[i] = kZeroRow;
          } else if (lo == 0 && hi == 18) {
            rows[i] = plane + h * g.in_w + w0;
          } else {
            std::memcpy(&patch[i][lo], plane + h * g.in_w + w0 + lo,
                        static_cast<std::size_t>(hi - lo) * sizeof(float));
            rows[i] = patch[i];
          }
        }
        transform_input8(rows, v + c * count + t, v_plane);
      }
      t += kLanes;
      continue;
    }
    if (count - t >= kLanes) {
      // 8 tiles across a tile row's end (or an image's): each from its own patch, those on the
      // border from a zero-padded copy per channel.
      const float* base[kLanes];
      int64_t ld[kLanes], offset[kLanes];
      bool border[kLanes];
      alignas(32) float copies[kLanes][4][4];
      for (int k = 0; k < kLanes; ++k) {
        const int64_t tk = first + t + k, nk = tk / tiles,
                      hk = 2 * (tk % tiles / g.tiles_w) - g.pad_h,
                      wk = 2 * (tk % g.tiles_w) - g.pad_w;
        border[k] = !(hk >= 0 && wk >= 0 && hk + 4 <= g.in_h && wk + 4 <= g.in_w);
        offset[k] = hk * g.in_w + wk;
        base[k] = x + nk * g.channels * in_plane;
        ld[k] = border[k] ? 4 : g.in_w;
      }
      RowLines lines;  // of the tiles inside the image (the border ones are a few)
      for (int k = 0; k < kLanes; ++k) {
        for (int i = 0; !border[k] && i < 4; ++i) {
          const float* row = base[k] + offset[k] + i * g.in_w;
          lines.add(row, row + 3);
        }
      }
      for (int64_t c = 0; c < g.channels; ++c) {
        lines.prefetch_ahead(c, g.channels, in_plane);
        const float* patch[kLanes];
        for (int k = 0; k < kLanes; ++k) {
          const float* plane = base[k] + c * in_plane;
          if (!border[k]) {
            patch[k] = plane + offset[k];
            continue;
          }
          const int64_t tk = first + t + k, hk = 2 * (tk % tiles / g.tiles_w) - g.pad_h,
                        wk = 2 * (tk % g.tiles_w) - g.pad_w;
          for (int i = 0; i < 4; ++i) {
            for (int j = 0; j < 4; ++j) {
              const int64_t h = hk + i, w = wk + j;
              copies[k][i][j] =
                  h >= 0 && h < g.in_h && w >= 0 && w < g.in_w ? plane[h * g.in_w + w] : 0.0f;
            }
          }
          patch[k] = &copies[k][0][0];
        }
        transform_input_gathered(patch, ld, v + c * count + t, v_plane);
      }
      t += kLanes;
      continue;
    }
#endif
    const bool inside = h0 >= 0 && w0 >= 0 && h0 + 4 <= g.in_h && w0 + 4 <= g.in_w;
    for (int64_t c = 0; c < g.channels; ++c) {
      const float* plane = image + c * in_plane;
      float d[4][4];
      for (int i = 0; i < 4; ++i) {
        for (int j = 0; j < 4; ++j) {
          const int64_t h = h0 + i, w = w0 + j;
          d[i][j] = inside || (h >= 0 && h < g.in_h && w >= 0 && w < g.in_w) ? plane[h * g.in_w + w]
                                                                             : 0.0f;
        }
      }
      transform_input(d, v + c * count + t, v_plane);
    }
    ++t;
  }
}

}  // namespace

void convolve_tiles(const Geometry& g, const float* u, const float* x, const float* bias, float* y,
                    int64_t first, int64_t count, float* v, float* m) {
  const int64_t tiles = g.tiles_per_image();
  const int64_t out_plane = g.out_h * g.out_w;
  const int64_t m_plane = plane_stride(g.filters, count);

  transform_input_tiles(g, x, first, count, v);

  multiply_planes(g, u, v, m, count);

  // Output transform, clipped at the output's edge.
  for (int64_t t = 0; t < count;) {
    const int64_t tile = first + t, n = tile / tiles, th = tile % tiles / g.tiles_w,
                  tw = tile % g.tiles_w;
    const int64_t oh = 2 * th, ow = 2 * tw;
    float* image = y + n * g.filters * out_plane + oh * g.out_w + ow;
#if defined(__AVX2__) && defined(__FMA__)
    const int64_t run = std::min({kLanes, g.tiles_w - tw, count - t});
    if (run == kLanes && ow + 2 * kLanes <= g.out_w && oh + 2 <= g.out_h) {
      for (int64_t f = 0; f < g.filters; ++f) {
        float* out = image + f * out_plane;
        transform_output8(m + f * count + t, m_plane, bias != nullptr ? bias[f] : 0.0f, out,
                          out + g.out_w);
      }
      t += kLanes;
      continue;
    }
    if (count - t >= kLanes) {  // 8 tiles across a row's or an image's end, or on the edge
      float* out[kLanes];
      bool full_h[kLanes], full_w[kLanes];
      for (int k = 0; k < kLanes; ++k) {
        const int64_t tk = first + t + k, nk = tk / tiles, ohk = 2 * (tk % tiles / g.tiles_w),
                      owk = 2 * (tk % g.tiles_w);
        out[k] = y + nk * g.filters * out_plane + ohk * g.out_w + owk;
        full_h[k] = ohk + 1 < g.out_h;
        full_w[k] = owk + 1 < g.out_w;
      }
      alignas(32) float yt[2][2][kLanes];
      for (int64_t f = 0; f < g.filters; ++f) {
        transform_output_lanes(m + f * count + t, m_plane, bias != nullptr ? bias[f] : 0.0f, yt);
        for (int k = 0; k < kLanes; ++k) {
          float* o = out[k] + f * out_plane;
          o[0] = yt[0][0][k];
          if (full_w[k]) o[1] = yt[0][1][k];
          if (full_h[k]) {
            o[g.out_w] = yt[1][0][k];
            if (full_w[k]) o[g.out_w + 1] = yt[1][1][k];
          }
        }
      }
      t += kLanes;
      continue;
    }
#endif
    const bool full_h = oh + 1 < g.out_h, full_w = ow + 1 < g.out_w;
    for (int64_t f = 0; f < g.filters; ++f) {
      float yt[2][2];
      transform_output(m + f * count + t, m_plane, bias != nullptr ? bias[f] : 0.0f, yt);
      float* out = image + f * out_plane;
      out[0] = yt[0][0];
      if (full_w) out[1] = yt[0][1];
      if (full_h) {
        out[g.out_w] = yt[1][0];
        if (full_w) out[g.out_w + 1] = yt[1][1];
      }
    }
    ++t;
  }
}

void accumulate_weight_gradient(const Geometry& g, const float* x, const float* dy, int64_t first,
                                int64_t count, float* v, float* w, float* du) {
  transform_input_tiles(g, x, first, count, v);
  // w[xi][f][t] = (A e A^T)[xi] for the 2x2 dy tile e (zero past the output's edge), with
  // A = [1 0; 1 1; 1 -1; 0 -1].
  const int64_t tiles = g.tiles_per_image();
  const int64_t out_plane = g.out_h * g.out_w;
  const int64_t w_plane = plane_stride(g.filters, count);
  for (int64_t t = 0; t < count;) {
    const int64_t tile = first + t, n = tile / tiles, th = tile % tiles / g.tiles_w,
                  tw = tile % g.tiles_w;
    const int64_t oh = 2 * th, ow = 2 * tw;
    const float* image = dy + n * g.filters * out_plane;
#if defined(__AVX2__) && defined(__FMA__)
    // 8 tiles of a tile row at once: contiguous stores, one cache line per transformed element.
    if (std::min({kLanes, g.tiles_w - tw, count - t}) == kLanes) {
      const bool inside = ow + 2 * kLanes <= g.out_w && oh + 2 <= g.out_h;
      alignas(32) float patch[2][16];
      for (int64_t f = 0; f < g.filters; ++f) {
        const float* plane = image + f * out_plane;
        const float* rows[2];
        for (int i = 0; i < 2; ++i) {
          if (inside) {
            rows[i] = plane + (oh + i) * g.out_w + ow;
            continue;
          }
          for (int j = 0; j < 16; ++j) {
            const int64_t h = oh + i, w = ow + j;
            patch[i][j] = h < g.out_h && w < g.out_w ? plane[h * g.out_w + w] : 0.0f;
          }
          rows[i] = patch[i];
        }
        __m256 a, b, c, d;
        deinterleave(rows[0], a, b);
        deinterleave(rows[1], c, d);
        transform_dy8(a, b, c, d, w + f * count + t, w_plane);
      }
      t += kLanes;
      continue;
    }
    if (count - t >= kLanes) {  // 8 tiles across a row's or an image's end, or on the edge
      const float* base[kLanes];
      bool full_h[kLanes], full_w[kLanes];
      for (int k = 0; k < kLanes; ++k) {
        const int64_t tk = first + t + k, nk = tk / tiles, ohk = 2 * (tk % tiles / g.tiles_w),
                      owk = 2 * (tk % g.tiles_w);
        base[k] = dy + nk * g.filters * out_plane + ohk * g.out_w + owk;
        full_h[k] = ohk + 1 < g.out_h;
        full_w[k] = owk + 1 < g.out_w;
      }
      alignas(32) float e[4][kLanes];
      for (int64_t f = 0; f < g.filters; ++f) {
        for (int k = 0; k < kLanes; ++k) {
          const float* p = base[k] + f * out_plane;
          e[0][k] = p[0];
          e[1][k] = full_w[k] ? p[1] : 0.0f;
          e[2][k] = full_h[k] ? p[g.out_w] : 0.0f;
          e[3][k] = full_h[k] && full_w[k] ? p[g.out_w + 1] : 0.0f;
        }
        transform_dy8(_mm256_load_ps(e[0]), _mm256_load_ps(e[1]), _mm256_load_ps(e[2]),
                      _mm256_load_ps(e[3]), w + f * count + t, w_plane);
      }
      t += kLanes;
      continue;
    }
#endif
    const bool full_h = oh + 1 < g.out_h, full_w = ow + 1 < g.out_w;
    for (int64_t f = 0; f < g.filters; ++f) {
      const float* e = image + f * out_plane + oh * g.out_w + ow;
      const float a = e[0], b = full_w ? e[1] : 0.0f;
      const float c = full_h ? e[g.out_w] : 0.0f, d = full_h && full_w ? e[g.out_w + 1] : 0.0f;
      const float rows[4][2] = {{a, b}, {a + c, b + d}, {a - c, b - d}, {-c, -d}};
      float* out = w + f * count + t;
      for (int i = 0; i < 4; ++i) {
        const float p = rows[i][0], q = rows[i][1];
        out[(i * 4 + 0) * w_plane] = p;
        out[(i * 4 + 1) * w_plane] = p + q;
        out[(i * 4 + 2) * w_plane] = p - q;
        out[(i * 4 + 3) * w_plane] = -q;
      }
    }
    ++t;
  }
  accumulate_planes(g, w, v, du, count);
}

void weight_gradient(const float* du, int64_t filters, int64_t channels, float* dw, Filters range) {
  read_pair_blocks<kElements>(du, filters, channels, range,
                              [&](int64_t f, int64_t c, PairColumn in) {
                                float z[4][4];
                                for (int xi = 0; xi < 16; ++xi) z[xi / 4][xi % 4] = in[xi];
                                // t = G^T z (3x4), G^T = [1 .5 .5 0; 0 .5 -.5 0; 0 .5 .5 1]; then
                                // dw = t G.
                                float t[3][4];
                                for (int j = 0; j < 4; ++j) {
                                  t[0][j] = z[0][j] + 0.5f * (z[1][j] + z[2][j]);
                                  t[1][j] = 0.5f * (z[1][j] - z[2][j]);
                                  t[2][j] = 0.5f * (z[1][j] + z[2][j]) + z[3][j];
                                }
                                float* out = dw + (f * channels + c) * 9;
                                for (int i = 0; i < 3; ++i) {
                                  out[i * 3 + 0] = t[i][0] + 0.5f * (t[i][1] + t[i][2]);
                                  out[i * 3 + 1] = 0.5f * (t[i][1] - t[i][2]);
                                  out[i * 3 + 2] = 0.5f * (t[i][1] + t[i][2]) + t[i][3];
                                }
                              });
}

}  // namespace strata::tbb_backend::winograd
