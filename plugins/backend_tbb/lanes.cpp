#include "lanes.hpp"

#include <algorithm>
#include <array>
#include <cstring>
#include <utility>

#include "floats.hpp"
#include "strata/error.hpp"

namespace strata::tbb_backend::lanes {

namespace {

// The vector of kLanes floats: the direct kernels' AVX-512 or AVX2 register, or (the generic copy)
// an array the compiler vectorizes as far as the baseline ISA allows.
#if defined(__AVX2__) && defined(__FMA__)
using Lanes = direct::Lanes;
using V = Lanes::V;
// (Lanes::fold, not _mm512_reduce_add_ps: GCC 12's intrinsic trips -Wmaybe-uninitialized.)
inline float lane_sum(V v) {
  const __m256 eight = Lanes::fold(v);
  const __m128 half = _mm_add_ps(_mm256_castps256_ps128(eight), _mm256_extractf128_ps(eight, 1));
  const __m128 pair = _mm_add_ps(half, _mm_movehl_ps(half, half));
  return _mm_cvtss_f32(_mm_add_ss(pair, _mm_movehdup_ps(pair)));
}
#else
struct V {
  float v[kLanes];
};
struct Lanes {
  static V zero() { return V{}; }
  static V splat(const float* p) {
    V r;
    for (int64_t l = 0; l < kLanes; ++l) r.v[l] = *p;
    return r;
  }
  static V load(const float* p) {
    V r;
    std::memcpy(r.v, p, sizeof(r.v));
    return r;
  }
  static void store(float* p, V v) { std::memcpy(p, v.v, sizeof(v.v)); }
  static V fma(V a, V b, V c) {
    for (int64_t l = 0; l < kLanes; ++l) c.v[l] += a.v[l] * b.v[l];
    return c;
  }
};
inline float lane_sum(V v) {
  float total = 0.0f;
  for (int64_t l = 0; l < kLanes; ++l) total += v.v[l];
  return total;
}
#endif

// transpose(r): r[i][j] becomes r[j][i] (kLanes x kLanes floats). load_first / store_first move
// the first n floats of a vector (the rest loaded as zero); add: lane-wise sum.
#if defined(__AVX512F__)
inline void transpose(V (&r)[kLanes]) {
  // Pairs of rows interleaved (unpacklo/hi_ps), then pairs of pairs (unpacklo/hi_pd): u[4k + m]'s
  // 128-bit lane L holds column 4L + m of rows 4k .. 4k + 3. Then the 4 x 4 grid of 128-bit lanes
  // is transposed (shuffle_f32x4). Written as __builtin_shufflevector: GCC 12's unpack and
  // shuffle intrinsics trip -Wmaybe-uninitialized inside its own headers.
  V t[16], u[16];
  for (int k = 0; k < 8; ++k) {
    const V a = r[2 * k], b = r[2 * k + 1];
    t[2 * k] =
        __builtin_shufflevector(a, b, 0, 16, 1, 17, 4, 20, 5, 21, 8, 24, 9, 25, 12, 28, 13, 29);
    t[2 * k + 1] =
        __builtin_shufflevector(a, b, 2, 18, 3, 19, 6, 22, 7, 23, 10, 26, 11, 27, 14, 30, 15, 31);
  }
  const auto low_pairs = [](V a, V b) {
    return __builtin_shufflevector(a, b, 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29);
  };
  const auto high_pairs = [](V a, V b) {
    return __builtin_shufflevector(a, b, 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30,
                                   31);
  };
  for (int k = 0; k < 4; ++k) {
    u[4 * k] = low_pairs(t[4 * k], t[4 * k + 2]);
    u[4 * k + 1] = high_pairs(t[4 * k], t[4 * k + 2]);
    u[4 * k + 2] = low_pairs(t[4 * k + 1], t[4 * k + 3]);
    u[4 * k + 3] = high_pairs(t[4 * k + 1], t[4 * k + 3]);
  }
  for (int m = 0; m < 4; ++m) {
    // 128-bit lanes 0 and 1 of rows 0-7 and of rows 8-15, then lanes 2 and 3.
    const V low01 = __builtin_shufflevector(u[m], u[4 + m], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19,
                                            20, 21, 22, 23);
    const V high01 = __builtin_shufflevector(u[8 + m], u[12 + m], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17,
                                             18, 19, 20, 21, 22, 23);
    const V low23 = __builtin_shufflevector(u[m], u[4 + m], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25,
                                            26, 27, 28, 29, 30, 31);
    const V high23 = __builtin_shufflevector(u[8 + m], u[12 + m], 8, 9, 10, 11, 12, 13, 14, 15, 24,
                                             25, 26, 27, 28, 29, 30, 31);
    const auto even = [](V a, V b) {
      return __builtin_shufflevector(a, b, 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26,
                                     27);
    };
    const auto odd = [](V a, V b) {
      return __builtin_shufflevector(a, b, 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30,
                                     31);
    };
    r[m] = even(low01, high01);
    r[4 + m] = odd(low01, high01);
    r[8 + m] = even(low23, high23);
    r[12 + m] = odd(low23, high23);
  }
}
inline V load_first(const float* p, int64_t n) {
  return n >= kLanes ? Lanes::load(p) : _mm512_maskz_loadu_ps(Lanes::mask(n), p);
}
inline V add(V a, V b) { return _mm512_add_ps(a, b); }
#elif defined(__AVX2__) && defined(__FMA__)
inline void transpose(V (&r)[kLanes]) {
  V t[8], u[8];
  for (int k = 0; k < 4; ++k) {
    t[2 * k] = _mm256_unpacklo_ps(r[2 * k], r[2 * k + 1]);
    t[2 * k + 1] = _mm256_unpackhi_ps(r[2 * k], r[2 * k + 1]);
  }
  const auto pd = [](V v) { return _mm256_castps_pd(v); };
  for (int k = 0; k < 2; ++k) {
    u[4 * k] = _mm256_castpd_ps(_mm256_unpacklo_pd(pd(t[4 * k]), pd(t[4 * k + 2])));
    u[4 * k + 1] = _mm256_castpd_ps(_mm256_unpackhi_pd(pd(t[4 * k]), pd(t[4 * k + 2])));
    u[4 * k + 2] = _mm256_castpd_ps(_mm256_unpacklo_pd(pd(t[4 * k + 1]), pd(t[4 * k + 3])));
    u[4 * k + 3] = _mm256_castpd_ps(_mm256_unpackhi_pd(pd(t[4 * k + 1]), pd(t[4 * k + 3])));
  }
  for (int m = 0; m < 4; ++m) {
    r[m] = _mm256_permute2f128_ps(u[m], u[4 + m], 0x20);
    r[4 + m] = _mm256_permute2f128_ps(u[m], u[4 + m], 0x31);
  }
}
inline V load_first(const float* p, int64_t n) {
  return n >= kLanes ? Lanes::load(p) : _mm256_maskload_ps(p, Lanes::mask(n));
}
inline V add(V a, V b) { return _mm256_add_ps(a, b); }
#endif
#if defined(__AVX2__) && defined(__FMA__)
inline void store_first(float* p, V v, int64_t n) {
  if (n >= kLanes) {
    Lanes::store(p, v);
  } else {
    Lanes::store(p, Lanes::mask(n), v);
  }
}
#else
inline void transpose(V (&r)[kLanes]) {
  for (int64_t i = 0; i < kLanes; ++i) {
    for (int64_t j = i + 1; j < kLanes; ++j) std::swap(r[i].v[j], r[j].v[i]);
  }
}
inline V load_first(const float* p, int64_t n) {
  V r{};
  std::memcpy(r.v, p, static_cast<std::size_t>(std::min(n, kLanes)) * sizeof(float));
  return r;
}
inline void store_first(float* p, V v, int64_t n) {
  std::memcpy(p, v.v, static_cast<std::size_t>(std::min(n, kLanes)) * sizeof(float));
}
inline V add(V a, V b) {
  for (int64_t l = 0; l < kLanes; ++l) a.v[l] += b.v[l];
  return a;
}
#endif

// One tile of shifted_product: rows [0, R) x columns [0, C) (rows_here x columns_here stored).
// Constant trip counts, fully unrolled, keep the accumulators in registers.
template <int R, int C>
void product_tile(const float* a, int64_t lda, const float* b, const int64_t* offset, int64_t t0,
                  int64_t t1, int64_t step, float* out, int64_t out_stride, int rows_here,
                  int columns_here) {
  V acc[R][C];
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i) {
#pragma GCC unroll 16
    for (int j = 0; j < C; ++j) acc[i][j] = Lanes::zero();
  }
  for (int64_t t = t0; t < t1; ++t) {
    const float* bt = b + offset[t];
    const float* at = a + t * lda;
    V bv[C];
#pragma GCC unroll 16
    for (int j = 0; j < C; ++j) bv[j] = Lanes::load(bt + j * step);
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) {
      const V av = Lanes::splat(at + i);
#pragma GCC unroll 16
      for (int j = 0; j < C; ++j) acc[i][j] = Lanes::fma(av, bv[j], acc[i][j]);
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i) {
    if (i >= rows_here) break;
#pragma GCC unroll 16
    for (int j = 0; j < C; ++j) {
      if (j >= columns_here) break;
      Lanes::store(out + i * out_stride + j * kLanes, acc[i][j]);
    }
  }
}

template <int R, int C>
void product_tiles(const float* a, int64_t lda, int64_t rows, const float* b, const int64_t* offset,
                   int64_t t0, int64_t t1, int64_t columns, int64_t step, float* out,
                   int64_t out_stride) {
  for (int64_t i0 = 0; i0 < rows; i0 += R) {
    const int rows_here = static_cast<int>(std::min<int64_t>(R, rows - i0));
    for (int64_t j0 = 0; j0 < columns; j0 += C) {
      const int columns_here = static_cast<int>(std::min<int64_t>(C, columns - j0));
      product_tile<R, C>(a + i0, lda, b + j0 * step, offset, t0, t1, step,
                         out + i0 * out_stride + j0 * kLanes, out_stride, rows_here, columns_here);
    }
  }
}

// shifted_product of one row (one filter, or one channel for backward_data: depthwise layers) over
// the output pixels of every output row at once: out[o] = sum over taps t of a[t] * b[offset[t] +
// pixel_offset[o]], P pixels at a time with their sums in registers. Row by row, a 4-pixel row
// kept 4 sums that each waited on the last multiply-add (the FMA's latency, not its throughput: a
// 4x4 depthwise forward, 512 channels, batch 64, one thread: 0.37 ms in 1x4 row tiles against
// 0.33 here; the 1x12 tiles before them did 3x the work); the price is the taps wholly in the
// padding rows, multiplied by zeros here.
template <int P>
void pixel_tiles(const float* a, int64_t taps, const float* b, const int64_t* offset,
                 const int64_t* pixel_offset, int64_t pixels, float* out) {
  for (int64_t o0 = 0; o0 < pixels; o0 += P) {
    const int64_t here = std::min<int64_t>(P, pixels - o0);
    const float* base[P];
    V acc[P];
#pragma GCC unroll 16
    for (int j = 0; j < P; ++j) {  // a short last tile repeats its last pixel, unstored
      base[j] = b + pixel_offset[o0 + std::min<int64_t>(j, here - 1)];
      acc[j] = Lanes::zero();
    }
    for (int64_t t = 0; t < taps; ++t) {
      const V av = Lanes::splat(a + t);
#pragma GCC unroll 16
      for (int j = 0; j < P; ++j) acc[j] = Lanes::fma(av, Lanes::load(base[j] + offset[t]), acc[j]);
    }
#pragma GCC unroll 16
    for (int j = 0; j < P; ++j) {
      if (j >= here) break;
      Lanes::store(out + (o0 + j) * kLanes, acc[j]);
    }
  }
}

// One tile of weight_product: filters [k0, k0 + KB) x taps [p0, p0 + TB), of which kb x tb are
// real (the others repeat the last real one and are not stored).
template <int KB, int TB>
void weight_tile(const float* dy, int64_t dy_stride, const float* x, const int64_t* offset,
                 const int64_t* pixel_offset, int64_t pixels, int kb, int tb, float* dw,
                 int64_t ldw) {
  V acc[KB][TB];
#pragma GCC unroll 16
  for (int k = 0; k < KB; ++k) {
#pragma GCC unroll 16
    for (int t = 0; t < TB; ++t) acc[k][t] = Lanes::zero();
  }
  const float* dyk[KB];
  const float* xt[TB];
#pragma GCC unroll 16
  for (int k = 0; k < KB; ++k) dyk[k] = dy + std::min(k, kb - 1) * dy_stride;
#pragma GCC unroll 16
  for (int t = 0; t < TB; ++t) xt[t] = x + offset[std::min(t, tb - 1)];
  for (int64_t p = 0; p < pixels; ++p) {
    V xv[TB];
#pragma GCC unroll 16
    for (int t = 0; t < TB; ++t) xv[t] = Lanes::load(xt[t] + pixel_offset[p]);
#pragma GCC unroll 16
    for (int k = 0; k < KB; ++k) {
      const V dv = Lanes::load(dyk[k] + p * kLanes);
#pragma GCC unroll 16
      for (int t = 0; t < TB; ++t) acc[k][t] = Lanes::fma(dv, xv[t], acc[k][t]);
    }
  }
  for (int k = 0; k < kb; ++k) {
    for (int t = 0; t < tb; ++t) dw[k * ldw + t] += lane_sum(acc[k][t]);
  }
}

// The whole weight gradient of one block, in tiles of KB filters x TB taps.
template <int KB, int TB>
void weight_tiles(const float* dy, int64_t filters, int64_t dy_stride, const float* x,
                  const int64_t* offset, int64_t taps, const int64_t* pixel_offset, int64_t pixels,
                  float* dw, int64_t ldw) {
  for (int64_t k0 = 0; k0 < filters; k0 += KB) {
    const int kb = static_cast<int>(std::min<int64_t>(KB, filters - k0));
    for (int64_t t0 = 0; t0 < taps; t0 += TB) {
      const int tb = static_cast<int>(std::min<int64_t>(TB, taps - t0));
      weight_tile<KB, TB>(dy + k0 * dy_stride, dy_stride, x, offset + t0, pixel_offset, pixels, kb,
                          tb, dw + k0 * ldw + t0, ldw);
    }
  }
}

// The tiles compiled for this vector width, for the shifted product (rows x output columns) and
// for the weight gradient (filters x taps): at most 24 accumulators plus the vectors loaded per
// step in the 32 AVX-512 registers, 12 plus in AVX2's 16; the generic copy keeps its arrays small.
struct TileKernel {
  Tile tile;
  void (*run)(const float*, int64_t, int64_t, const float*, const int64_t*, int64_t, int64_t,
              int64_t, int64_t, float*, int64_t);
};
struct WeightKernel {
  Tile tile;
  void (*run)(const float*, int64_t, int64_t, const float*, const int64_t*, int64_t, const int64_t*,
              int64_t, float*, int64_t);
};

template <int R, int C>
constexpr TileKernel tile_kernel() {
  return {{R, C}, &product_tiles<R, C>};
}
template <int KB, int TB>
constexpr WeightKernel weight_kernel() {
  return {{KB, TB}, &weight_tiles<KB, TB>};
}

#if defined(__AVX512F__)
constexpr std::array kTiles = {tile_kernel<8, 3>(), tile_kernel<6, 4>(), tile_kernel<4, 6>(),
                               tile_kernel<4, 5>(), tile_kernel<3, 7>(), tile_kernel<2, 10>(),
                               tile_kernel<1, 12>()};
constexpr std::array kWeightTiles = {weight_kernel<4, 6>(),  weight_kernel<6, 4>(),
                                     weight_kernel<8, 3>(),  weight_kernel<2, 10>(),
                                     weight_kernel<1, 12>(), weight_kernel<1, 9>()};
#elif defined(__AVX2__) && defined(__FMA__)
constexpr std::array kTiles = {tile_kernel<4, 3>(), tile_kernel<4, 2>(), tile_kernel<3, 3>(),
                               tile_kernel<2, 5>(), tile_kernel<1, 6>()};
constexpr std::array kWeightTiles = {weight_kernel<2, 4>(), weight_kernel<4, 2>(),
                                     weight_kernel<3, 3>(), weight_kernel<1, 6>(),
                                     weight_kernel<1, 3>()};
#else
constexpr std::array kTiles = {tile_kernel<2, 2>(), tile_kernel<1, 4>(), tile_kernel<4, 1>()};
constexpr std::array kWeightTiles = {weight_kernel<2, 2>(), weight_kernel<1, 4>(),
                                     weight_kernel<4, 1>(), weight_kernel<1, 3>()};
#endif

// Sums per pixel_tiles tile: enough independent multiply-adds to cover the FMA latency on two
// pipes, and a divisor of the usual planes (16, 64, 256 pixels; with 12, a 4x4 plane computed 24).
#if defined(__AVX2__) && defined(__FMA__)
constexpr int kPixelTile = 8;
#else
constexpr int kPixelTile = 4;
#endif

int64_t round_up(int64_t a, int64_t multiple) { return (a + multiple - 1) / multiple * multiple; }

}  // namespace

void interleave(const float* src, int64_t images, int64_t image_stride, int64_t rows,
                int64_t columns, const Frame& f, int64_t top, int64_t left, float* dst,
                bool zero_padding) {
  const int64_t plane = rows * columns;
  for (int64_t p = 0; p < f.planes; ++p) {
    // The padding: whole rows above and below, and the columns either side of the real ones.
    for (int64_t fr = 0; zero_padding && fr < f.h; ++fr) {
      float* out = dst + f.pixel(p, fr, 0);
      if (fr < top || fr >= top + rows) {
        std::fill_n(out, f.w * kLanes, 0.0f);
      } else {
        std::fill_n(out, left * kLanes, 0.0f);
        std::fill_n(out + (left + columns) * kLanes, (f.w - left - columns) * kLanes, 0.0f);
      }
    }
    // kLanes pixels of every image at a time, transposed into kLanes interleaved pixels.
    int64_t row = 0, column = 0;  // of pixel q0 + j
    for (int64_t q0 = 0; q0 < plane; q0 += kLanes) {
      const int64_t n = std::min(kLanes, plane - q0);
      V r[kLanes];
      for (int64_t i = 0; i < kLanes; ++i) {
        r[i] = i < images ? load_first(src + i * image_stride + p * plane + q0, n) : Lanes::zero();
      }
      transpose(r);
      float* out = dst + f.pixel(p, top + row, left + column);
      const int64_t skip = (f.w - columns) * kLanes;
#pragma GCC unroll 16
      for (int64_t j = 0; j < kLanes; ++j) {
        if (j >= n) break;
        Lanes::store(out, r[j]);
        out += kLanes;
        if (++column == columns) {
          column = 0;
          ++row;
          out += skip;
        }
      }
    }
  }
}

void deinterleave(const float* src, const Frame& f, int64_t images, int64_t image_stride,
                  const float* bias, float* dst) {
  const int64_t plane = f.h * f.w;
  for (int64_t p = 0; p < f.planes; ++p) {
    const float beta = bias != nullptr ? bias[p] : 0.0f;
    const V offset = Lanes::splat(&beta);
    const float* in = src + p * plane * kLanes;
    for (int64_t q0 = 0; q0 < plane; q0 += kLanes) {
      const int64_t n = std::min(kLanes, plane - q0);
      V r[kLanes];
      for (int64_t j = 0; j < kLanes; ++j) {
        r[j] = j < n ? Lanes::load(in + (q0 + j) * kLanes) : Lanes::zero();
      }
      transpose(r);
      for (int64_t i = 0; i < images; ++i) {
        store_first(dst + i * image_stride + p * plane + q0, add(r[i], offset), n);
      }
    }
  }
}

namespace {

// The menu's tile that does the least work on rows x columns; ties go to more accumulators. A
// tile's step costs its multiply-adds, or its loads where those are more (rows + columns vectors:
// a 1 x 9 tile loads 10 for 9 multiply-adds, so on LeNet's 6 filters x 25 taps it lost to 6 x 4,
// 0.21 -> 0.32 ms a weight gradient, though it wastes fewer lanes).
template <class Menu>
Tile least_waste(const Menu& menu, int64_t rows, int64_t columns) {
  Tile best = menu[0].tile;
  int64_t best_work = -1;
  for (const auto& k : menu) {
    const int64_t r = k.tile.rows, c = k.tile.columns;
    const int64_t work =
        (round_up(rows, r) / r) * (round_up(columns, c) / c) * std::max(r * c, r + c);
    const bool better =
        best_work < 0 || work < best_work ||
        (work == best_work && k.tile.rows * k.tile.columns > best.rows * best.columns);
    if (better) {
      best = k.tile;
      best_work = work;
    }
  }
  return best;
}

// The menu's kernel of that tile (choose_tile and choose_weight_tile return only those).
template <class Menu>
const auto& kernel_of(const Menu& menu, Tile tile) {
  for (const auto& k : menu) {
    if (k.tile.rows == tile.rows && k.tile.columns == tile.columns) return k;
  }
  fail("tbb conv2d lanes: no {}x{} tile is compiled", tile.rows, tile.columns);
}

}  // namespace

Tile choose_tile(int64_t rows, int64_t columns) { return least_waste(kTiles, rows, columns); }

Tile choose_weight_tile(int64_t filters, int64_t taps) {
  return least_waste(kWeightTiles, filters, taps);
}

int64_t padded_rows(Tile tile, int64_t rows) { return round_up(rows, tile.rows); }

void shifted_product(Tile tile, const float* a, int64_t lda, int64_t rows, const float* b,
                     const int64_t* offset, int64_t t0, int64_t t1, int64_t columns, int64_t step,
                     float* out, int64_t out_stride) {
  kernel_of(kTiles, tile).run(a, lda, rows, b, offset, t0, t1, columns, step, out, out_stride);
}

void weight_product(Tile tile, const float* dy, int64_t filters, int64_t dy_stride, const float* x,
                    const int64_t* offset, int64_t taps, const int64_t* pixel_offset,
                    int64_t pixels, float* dw, int64_t ldw) {
  kernel_of(kWeightTiles, tile)
      .run(dy, filters, dy_stride, x, offset, taps, pixel_offset, pixels, dw, ldw);
}

// ---- the passes -------------------------------------------------------------------------------

namespace {

// Taps ordered (kernel row, plane, kernel column) over frame f, and for each of `out_rows` output
// rows the range of them whose input row (out_row * stride + r * dilation - top) is one of the
// `rows` real ones: rows increase with r, so the range is contiguous.
void row_major_taps(const Frame& f, int64_t kernel_h, int64_t kernel_w, int64_t dilation_h,
                    int64_t dilation_w, int64_t stride_h, int64_t top, int64_t rows,
                    int64_t out_rows, ProductPass& p) {
  for (int64_t r = 0; r < kernel_h; ++r) {
    for (int64_t plane = 0; plane < f.planes; ++plane) {
      for (int64_t s = 0; s < kernel_w; ++s) {
        p.offsets.push_back(f.pixel(plane, r * dilation_h, s * dilation_w));
      }
    }
  }
  const int64_t per_row = f.planes * kernel_w;
  for (int64_t o = 0; o < out_rows; ++o) {
    int64_t lo = kernel_h, hi = 0;
    for (int64_t r = 0; r < kernel_h; ++r) {
      const int64_t row = o * stride_h + r * dilation_h - top;
      if (row >= 0 && row < rows) {
        lo = std::min(lo, r);
        hi = r + 1;
      }
    }
    p.first_tap.push_back(lo < hi ? lo * per_row : 0);
    p.end_tap.push_back(lo < hi ? hi * per_row : 0);
  }
}

// The tile, the packed weights' row count and the row step, once in and out are set.
void finish(ProductPass& p, int64_t stride_h, int64_t stride_w) {
  p.tile = choose_tile(p.out.planes, p.out.w);
  p.lda = padded_rows(p.tile, p.out.planes);
  p.step = stride_w * kLanes;
  p.row_step = stride_h * p.in.w * kLanes;
  if (p.out.planes == 1) {
    p.tile = {1, kPixelTile};
    p.lda = 1;
    for (int64_t o = 0; o < p.out.h; ++o) {
      for (int64_t j = 0; j < p.out.w; ++j) p.pixel_offsets.push_back(o * p.row_step + j * p.step);
    }
  }
}

}  // namespace

int64_t ProductPass::in_floats() const {
  if (!pixel_offsets.empty()) return in.floats();  // pixel_tiles reads only real pixels' taps
  return in.floats() + (round_up(out.w, tile.columns) - out.w) * step;
}

int64_t ProductPass::multiply_adds() const {
  if (!pixel_offsets.empty()) {
    return static_cast<int64_t>(offsets.size()) * round_up(out.h * out.w, tile.columns);
  }
  int64_t taps = 0;
  for (std::size_t o = 0; o < first_tap.size(); ++o) taps += end_tap[o] - first_tap[o];
  return taps * lda * round_up(out.w, tile.columns);
}

Frame forward_frame(const Conv2dDesc& d) {
  // Tall and wide enough for every tap of every output (an output extent rounded up reads past
  // the padding: zeros).
  return {d.in_channels / d.groups,
          std::max(d.in_h + d.pad_h + d.pad_bottom(),
                   (d.out_h - 1) * d.stride_h + (d.kernel_h - 1) * d.dilation_h + 1),
          std::max(d.in_w + d.pad_w + d.pad_right(),
                   (d.out_w - 1) * d.stride_w + (d.kernel_w - 1) * d.dilation_w + 1)};
}

ProductPass forward_pass(const Conv2dDesc& d) {
  ProductPass p;
  p.top = d.pad_h;
  p.left = d.pad_w;
  p.in = forward_frame(d);
  p.out = {d.out_channels / d.groups, d.out_h, d.out_w};
  row_major_taps(p.in, d.kernel_h, d.kernel_w, d.dilation_h, d.dilation_w, d.stride_h, p.top,
                 d.in_h, d.out_h, p);
  finish(p, d.stride_h, d.stride_w);
  return p;
}

bool data_fits(const Conv2dDesc& d) {
  return d.stride_h == 1 && d.stride_w == 1 && d.pad_h <= (d.kernel_h - 1) * d.dilation_h &&
         d.pad_w <= (d.kernel_w - 1) * d.dilation_w;
}

// dy row oh lands at frame row top + oh; dx row ih reads frame rows ih + r' * dilation for the
// flipped kernel's rows r' = R - 1 - r.
int64_t data_top(const Conv2dDesc& d) { return (d.kernel_h - 1) * d.dilation_h - d.pad_h; }
int64_t data_left(const Conv2dDesc& d) { return (d.kernel_w - 1) * d.dilation_w - d.pad_w; }

Frame data_frame(const Conv2dDesc& d) {
  return {d.out_channels / d.groups,
          std::max(d.in_h + (d.kernel_h - 1) * d.dilation_h, data_top(d) + d.out_h),
          std::max(d.in_w + (d.kernel_w - 1) * d.dilation_w, data_left(d) + d.out_w)};
}

ProductPass data_pass(const Conv2dDesc& d) {
  ProductPass p;
  p.top = data_top(d);
  p.left = data_left(d);
  p.in = data_frame(d);
  p.out = {d.in_channels / d.groups, d.in_h, d.in_w};
  row_major_taps(p.in, d.kernel_h, d.kernel_w, d.dilation_h, d.dilation_w, 1, p.top, d.out_h,
                 d.in_h, p);
  finish(p, 1, 1);
  return p;
}

namespace {

// a[tap * lda + row] for taps (kernel row r, plane, kernel column s), zero past `rows`:
// value(row, plane, r, s) is the weight there.
template <class Value>
void pack_taps(const Conv2dDesc& d, int64_t planes, int64_t rows, int64_t lda, Value value,
               float* a) {
  for (int64_t r = 0; r < d.kernel_h; ++r) {
    for (int64_t plane = 0; plane < planes; ++plane) {
      for (int64_t s = 0; s < d.kernel_w; ++s, a += lda) {
        for (int64_t row = 0; row < lda; ++row)
          a[row] = row < rows ? value(row, plane, r, s) : 0.0f;
      }
    }
  }
}

}  // namespace

void pack_forward(const Conv2dDesc& d, const ProductPass& p, const float* wg, float* packed) {
  const int64_t cg = d.in_channels / d.groups, R = d.kernel_h, S = d.kernel_w;
  pack_taps(
      d, cg, p.out.planes, p.lda,
      [&](int64_t k, int64_t c, int64_t r, int64_t s) {
        return wg[((k * cg + c) * R + r) * S + s];
      },
      packed);
}

void pack_data(const Conv2dDesc& d, const ProductPass& p, const float* wg, float* packed) {
  // The flipped kernel, filters and channels swapped.
  const int64_t cg = d.in_channels / d.groups, R = d.kernel_h, S = d.kernel_w;
  pack_taps(
      d, d.out_channels / d.groups, cg, p.lda,
      [&](int64_t c, int64_t k, int64_t r, int64_t s) {
        return wg[((k * cg + c) * R + (R - 1 - r)) * S + (S - 1 - s)];
      },
      packed);
}

void run(const ProductPass& p, const float* packed, const float* in, float* out) {
  if (!p.pixel_offsets.empty()) {
    pixel_tiles<kPixelTile>(packed, static_cast<int64_t>(p.offsets.size()), in, p.offsets.data(),
                            p.pixel_offsets.data(), static_cast<int64_t>(p.pixel_offsets.size()),
                            out);
    return;
  }
  const TileKernel& kernel = kernel_of(kTiles, p.tile);  // once, not per row
  const int64_t out_stride = p.out.h * p.out.w * kLanes;
  for (int64_t o = 0; o < p.out.h; ++o) {
    kernel.run(packed, p.lda, p.out.planes, in + o * p.row_step, p.offsets.data(),
               p.first_tap[static_cast<std::size_t>(o)], p.end_tap[static_cast<std::size_t>(o)],
               p.out.w, p.step, out + o * p.out.w * kLanes, out_stride);
  }
}

int64_t WeightPass::multiply_adds() const {
  const int64_t taps = static_cast<int64_t>(offsets.size());
  return round_up(dy.planes, tile.rows) * round_up(taps, tile.columns) *
         static_cast<int64_t>(pixel_offsets.size());
}

WeightPass weight_pass(const Conv2dDesc& d) {
  WeightPass p;
  p.x = forward_frame(d);
  p.top = d.pad_h;
  p.left = d.pad_w;
  p.dy = {d.out_channels / d.groups, d.out_h, d.out_w};
  for (int64_t c = 0; c < p.x.planes; ++c) {
    for (int64_t r = 0; r < d.kernel_h; ++r) {
      for (int64_t s = 0; s < d.kernel_w; ++s) {
        p.offsets.push_back(p.x.pixel(c, r * d.dilation_h, s * d.dilation_w));
      }
    }
  }
  for (int64_t oh = 0; oh < d.out_h; ++oh) {
    for (int64_t ow = 0; ow < d.out_w; ++ow) {
      p.pixel_offsets.push_back(p.x.pixel(0, oh * d.stride_h, ow * d.stride_w));
    }
  }
  p.tile = choose_weight_tile(p.dy.planes, static_cast<int64_t>(p.offsets.size()));
  return p;
}

void run(const WeightPass& p, const float* dy, const float* x, float* dw, int64_t ldw) {
  weight_product(p.tile, dy, p.dy.planes, p.dy.h * p.dy.w * kLanes, x, p.offsets.data(),
                 static_cast<int64_t>(p.offsets.size()), p.pixel_offsets.data(),
                 static_cast<int64_t>(p.pixel_offsets.size()), dw, ldw);
}

}  // namespace strata::tbb_backend::lanes
