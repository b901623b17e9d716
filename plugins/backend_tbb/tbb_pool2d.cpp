#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "tbb_kernels.hpp"

namespace strata::tbb_backend {

namespace {

using Mode = Pool2dDesc::Mode;

// Window reads per task: ~30-60 us of work, well above TBB's few-microsecond task overhead, so a
// tiny layer runs as one task on the calling thread instead of getting slower (tiny-dnn #714).
constexpr int64_t kPoolWorkPerTask = int64_t{1} << 16;

constexpr std::string_view kName = "tbb pool2d";

// Every window along one axis (pool_taps), as input indices: the window reads the input indices
// [lo, hi) that are `dilation` apart from lo (undilated: all of them; lo == hi: none, and then
// neither need lie inside the input), and span is the extent count_include_pad divides by.
void tabulate(int64_t out, int64_t stride, int64_t pad, int64_t pad_end, int64_t kernel,
              int64_t dilation, int64_t in, std::vector<int64_t>& lo, std::vector<int64_t>& hi,
              std::vector<int64_t>& span) {
  lo.resize(static_cast<std::size_t>(out));
  hi.resize(static_cast<std::size_t>(out));
  span.resize(static_cast<std::size_t>(out));
  for (int64_t o = 0; o < out; ++o) {
    const PoolTaps taps = pool_taps(o, stride, pad, pad_end, kernel, dilation, in);
    lo[o] = taps.start + taps.lo * dilation;
    hi[o] = taps.start + taps.hi * dilation;
    span[o] = taps.span;
  }
}

}  // namespace

void TbbPool2d::on_prepare() {
  const Pool2dDesc& d = desc_;
  validate(d, kName);
  tabulate(d.out_h, d.stride_h, d.pad_h, d.pad_bottom(), d.kernel_h, d.dilation_h, d.in_h, h_lo_,
           h_hi_, h_span_);
  tabulate(d.out_w, d.stride_w, d.pad_w, d.pad_right(), d.kernel_w, d.dilation_w, d.in_w, w_lo_,
           w_hi_, w_span_);
  dilated_ = d.dilation_h != 1 || d.dilation_w != 1;
  if (dilated_) {
    pairs_ = false;
    return;
  }
  // Output columns whose 2x2, stride-2 window lies fully inside the input.
  pairs_ = d.kernel_h == 2 && d.kernel_w == 2 && d.stride_h == 2 && d.stride_w == 2;
  pair_lo_ = std::min(d.out_w, (d.pad_w + 1) / 2);
  pair_hi_ = std::clamp<int64_t>((d.in_w + d.pad_w - 2) / 2 + 1, pair_lo_, d.out_w);
}

std::string TbbPool2d::implementation() const {
  if (h_lo_.empty()) return Pool2dKernel::implementation();  // not prepared yet
  return dilated_ ? "dilated" : pairs_ ? "pairs2x2" : "windows";
}

int64_t TbbPool2d::divisor(int64_t oh, int64_t ow) const {
  if (desc_.count_include_pad) return h_span_[oh] * w_span_[ow];
  return (h_hi_[oh] - h_lo_[oh]) * (w_hi_[ow] - w_lo_[ow]);
}

int64_t TbbPool2d::planes_per_task() const {
  const Pool2dDesc& d = desc_;
  const int64_t work =
      std::max<int64_t>(1, d.out_h * d.out_w * d.kernel_h * d.kernel_w + d.in_h * d.in_w);
  return std::max<int64_t>(1, kPoolWorkPerTask / work);
}

namespace {

// The reference's selection rule: scanning row-major, v takes over the best so far if it is larger,
// or if it is the first NaN. Branches on it mispredict about half the time on real data, so the
// scalar loop keeps a plain `v > best` select (a cmov) and rescans for the first NaN only when
// there is one; the vector loops compute the rule with masks.

// Index (in the plane) of the first maximum of the window rows [h_lo, h_hi) x [w_lo, w_hi).
inline int64_t window_argmax(const float* in, int64_t width, int64_t h_lo, int64_t h_hi,
                             int64_t w_lo, int64_t w_hi) {
  int64_t best = h_lo * width + w_lo;
  float best_value = in[best];
  bool nan = false;
  for (int64_t h = h_lo; h < h_hi; ++h) {
    for (int64_t w = w_lo; w < w_hi; ++w) {
      const int64_t i = h * width + w;
      const float v = in[i];
      const bool greater = v > best_value;
      best = greater ? i : best;
      best_value = greater ? v : best_value;
      nan |= v != v;
    }
  }
  if (!nan || std::isnan(in[h_lo * width + w_lo])) return best;
  for (int64_t h = h_lo; h < h_hi; ++h) {
    for (int64_t w = w_lo; w < w_hi; ++w) {
      if (std::isnan(in[h * width + w])) return h * width + w;
    }
  }
  return best;
}

#if defined(__AVX2__)
// Lanes where v takes over best under the selection rule.
inline __m256 takes_over(__m256 v, __m256 best) {
  const __m256 greater = _mm256_cmp_ps(v, best, _CMP_GT_OQ);
  const __m256 first_nan =
      _mm256_andnot_ps(_mm256_cmp_ps(best, best, _CMP_UNORD_Q), _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  return _mm256_or_ps(greater, first_nan);
}

// The four members of eight 2x2 windows starting at row0/row1 (16 floats each), in the lane
// order 0 1 4 5 2 3 6 7 that _mm256_shuffle_ps leaves (undone by permute 0xD8, or by unpack).
struct Quads {
  __m256 v00, v01, v10, v11;
};
// Partial loads and stores of the first n floats (other lanes zero), without touching memory past
// them. Not vmaskmovps: masked loads and stores are microcoded and slow on Zen 1.
inline __m128 load4(const float* p, int64_t n) {
  if (n >= 4) return _mm_loadu_ps(p);
  if (n <= 0) return _mm_setzero_ps();
  if (n == 1) return _mm_load_ss(p);
  double pair;  // two floats in one move; memcpy because p is only 4-byte aligned
  std::memcpy(&pair, p, sizeof(pair));
  const __m128 two = _mm_castpd_ps(_mm_set_sd(pair));
  return n == 2 ? two : _mm_movelh_ps(two, _mm_load_ss(p + 2));
}
inline __m256 load8(const float* p, int64_t n) {
  if (n >= 8) return _mm256_loadu_ps(p);
  return _mm256_set_m128(load4(p + 4, n - 4), load4(p, n));
}
inline void store4(float* p, __m128 v, int64_t n) {
  if (n >= 4) {
    _mm_storeu_ps(p, v);
    return;
  }
  if (n >= 2) {
    const double pair = _mm_cvtsd_f64(_mm_castps_pd(v));
    std::memcpy(p, &pair, sizeof(pair));
    v = _mm_movehl_ps(v, v);
    p += 2;
    n -= 2;
  }
  if (n == 1) _mm_store_ss(p, v);
}
inline void store8(float* p, __m256 v, int64_t n) {
  if (n >= 8) {
    _mm256_storeu_ps(p, v);
    return;
  }
  store4(p, _mm256_castps256_ps128(v), n);
  if (n > 4) store4(p + 4, _mm256_extractf128_ps(v, 1), n - 4);
}
struct Sixteen {
  __m256 lo, hi;
};
inline Sixteen load16(const float* p, int64_t count) {
  return {load8(p, count), load8(p + 8, count - 8)};
}
inline void store16(float* p, int64_t count, __m256 lo, __m256 hi) {
  store8(p, lo, count);
  if (count > 8) store8(p + 8, hi, count - 8);
}
// The windows [0, windows) of a row pair, at most 8.
inline Quads load_quads(const float* row0, const float* row1, int64_t windows) {
  const Sixteen a = load16(row0, 2 * windows), b = load16(row1, 2 * windows);
  return {_mm256_shuffle_ps(a.lo, a.hi, 0x88), _mm256_shuffle_ps(a.lo, a.hi, 0xDD),
          _mm256_shuffle_ps(b.lo, b.hi, 0x88), _mm256_shuffle_ps(b.lo, b.hi, 0xDD)};
}
inline __m256 permute_lanes(__m256 v) {
  return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(v), 0xD8));
}
#endif

}  // namespace

// Dilated max pooling (the reference's rule: the first maximum in row-major order, the first NaN
// wins over numbers). A plain loop: dilated pooling is rare (interop), the common cases keep the
// vectorized paths below.
int64_t TbbPool2d::dilated_argmax(const float* in, int64_t oh, int64_t ow) const {
  const Pool2dDesc& d = desc_;
  int64_t best = -1;
  for (int64_t h = h_lo_[oh]; h < h_hi_[oh]; h += d.dilation_h) {
    for (int64_t w = w_lo_[ow]; w < w_hi_[ow]; w += d.dilation_w) {
      const int64_t index = h * d.in_w + w;
      const float v = in[index];
      if (best < 0 || v > in[best] || (std::isnan(v) && !std::isnan(in[best]))) best = index;
    }
  }
  return best;
}

void TbbPool2d::dilated_forward_plane(const float* in, float* out) const {
  const Pool2dDesc& d = desc_;
  for (int64_t oh = 0; oh < d.out_h; ++oh) {
    for (int64_t ow = 0; ow < d.out_w; ++ow) {
      const int64_t best = dilated_argmax(in, oh, ow);
      out[oh * d.out_w + ow] = best < 0 ? -std::numeric_limits<float>::infinity() : in[best];
    }
  }
}

void TbbPool2d::dilated_backward_plane(const float* in, const float* grad_out,
                                       float* grad_in) const {
  const Pool2dDesc& d = desc_;
  std::fill_n(grad_in, d.in_h * d.in_w, 0.0f);
  for (int64_t oh = 0; oh < d.out_h; ++oh) {
    for (int64_t ow = 0; ow < d.out_w; ++ow) {
      const int64_t best = dilated_argmax(in, oh, ow);
      if (best >= 0) grad_in[best] += grad_out[oh * d.out_w + ow];
    }
  }
}

void TbbPool2d::forward_plane(const float* in, float* out) const {
  if (dilated_) {
    dilated_forward_plane(in, out);
    return;
  }
  const Pool2dDesc& d = desc_;
  const bool max = d.mode == Mode::kMax;
  for (int64_t oh = 0; oh < d.out_h; ++oh) {
    const int64_t h_lo = h_lo_[oh], h_hi = h_hi_[oh];
    float* out_row = out + oh * d.out_w;
    int64_t ow = 0;
    const auto generic = [&](int64_t ow_end) {
      for (; ow < ow_end; ++ow) {
        const int64_t w_lo = w_lo_[ow], w_hi = w_hi_[ow];
        if (h_lo >= h_hi || w_lo >= w_hi) {  // the window holds padding only
          out_row[ow] = max ? -std::numeric_limits<float>::infinity() : 0.0f;
          continue;
        }
        if (max) {
          out_row[ow] = in[window_argmax(in, d.in_w, h_lo, h_hi, w_lo, w_hi)];
        } else {
          float sum = 0.0f;
          for (int64_t h = h_lo; h < h_hi; ++h) {
            for (int64_t w = w_lo; w < w_hi; ++w) sum += in[h * d.in_w + w];
          }
          out_row[ow] = sum / static_cast<float>(divisor(oh, ow));
        }
      }
    };
    if (pairs_ && h_hi - h_lo == 2 && pair_hi_ > pair_lo_) {
      // 2x2 windows, stride 2, fully inside: a straight loop over pairs that vectorizes.
      generic(pair_lo_);
      const float* row0 = in + h_lo * d.in_w + (pair_lo_ * 2 - d.pad_w);
      const float* row1 = row0 + d.in_w;
      const int64_t count = pair_hi_ - pair_lo_;
      float* dst = out_row + pair_lo_;
      if (max) {
        int64_t i = 0;
#if defined(__AVX2__)
        // Eight windows at a time; the last group may be partial, so short rows vectorize too.
        for (; i < count; i += 8) {
          const int64_t n = std::min<int64_t>(8, count - i);
          const Quads q = load_quads(row0 + 2 * i, row1 + 2 * i, n);
          __m256 best = q.v00;
          best = _mm256_blendv_ps(best, q.v01, takes_over(q.v01, best));
          best = _mm256_blendv_ps(best, q.v10, takes_over(q.v10, best));
          best = _mm256_blendv_ps(best, q.v11, takes_over(q.v11, best));
          store8(dst + i, permute_lanes(best), n);
        }
#endif
        ow = pair_lo_ + std::min(i, count);  // without AVX2: window by window
      } else {
        const float scale = 1.0f / static_cast<float>(divisor(oh, pair_lo_));
        for (int64_t i = 0; i < count; ++i) {
          dst[i] = ((row0[2 * i] + row0[2 * i + 1]) + (row1[2 * i] + row1[2 * i + 1])) * scale;
        }
        ow = pair_hi_;
      }
    }
    generic(d.out_w);
  }
}

void TbbPool2d::backward_plane(const float* in, const float* grad_out, float* grad_in) const {
  if (dilated_) {
    dilated_backward_plane(in, grad_out, grad_in);
    return;
  }
  const Pool2dDesc& d = desc_;
  const bool max = d.mode == Mode::kMax;
  std::fill_n(grad_in, d.in_h * d.in_w, 0.0f);
  for (int64_t oh = 0; oh < d.out_h; ++oh) {
    const int64_t h_lo = h_lo_[oh], h_hi = h_hi_[oh];
    const float* dy_row = grad_out + oh * d.out_w;
    int64_t ow = 0;
    const auto generic = [&](int64_t ow_end) {
      for (; ow < ow_end; ++ow) {
        const int64_t w_lo = w_lo_[ow], w_hi = w_hi_[ow];
        if (h_lo >= h_hi || w_lo >= w_hi) continue;
        const float grad = dy_row[ow];
        if (max) {
          grad_in[window_argmax(in, d.in_w, h_lo, h_hi, w_lo, w_hi)] += grad;
        } else {
          const float share = grad / static_cast<float>(divisor(oh, ow));
          for (int64_t h = h_lo; h < h_hi; ++h) {
            for (int64_t w = w_lo; w < w_hi; ++w) grad_in[h * d.in_w + w] += share;
          }
        }
      }
    };
    if (pairs_ && h_hi - h_lo == 2 && pair_hi_ > pair_lo_) {
      // Disjoint 2x2 windows: each input pixel gets one window's gradient or none.
      generic(pair_lo_);
      const int64_t offset = h_lo * d.in_w + (pair_lo_ * 2 - d.pad_w);
      float* dx0 = grad_in + offset;
      float* dx1 = dx0 + d.in_w;
      const float* dy = dy_row + pair_lo_;
      const int64_t count = pair_hi_ - pair_lo_;
      if (max) {
        int64_t i = 0;
#if defined(__AVX2__)
        const float* row0 = in + offset;
        const float* row1 = row0 + d.in_w;
        for (; i < count; i += 8) {
          const int64_t n = std::min<int64_t>(8, count - i);
          const int64_t at = i;
          const Quads q = load_quads(row0 + 2 * at, row1 + 2 * at, n);
          __m256 best = q.v00;
          const __m256 t1 = takes_over(q.v01, best);
          best = _mm256_blendv_ps(best, q.v01, t1);
          const __m256 t2 = takes_over(q.v10, best);
          best = _mm256_blendv_ps(best, q.v10, t2);
          const __m256 t3 = takes_over(q.v11, best);
          // The last member that took over wins.
          const __m256 grad = permute_lanes(load8(dy + at, n));
          const __m256 g11 = _mm256_and_ps(t3, grad);
          const __m256 g10 = _mm256_andnot_ps(t3, _mm256_and_ps(t2, grad));
          const __m256 later = _mm256_or_ps(t2, t3);
          const __m256 g01 = _mm256_andnot_ps(later, _mm256_and_ps(t1, grad));
          const __m256 g00 = _mm256_andnot_ps(_mm256_or_ps(later, t1), grad);
          store16(dx0 + 2 * at, 2 * n, _mm256_unpacklo_ps(g00, g01), _mm256_unpackhi_ps(g00, g01));
          store16(dx1 + 2 * at, 2 * n, _mm256_unpacklo_ps(g10, g11), _mm256_unpackhi_ps(g10, g11));
        }
#endif
        ow = pair_lo_ + std::min(i, count);  // without AVX2: window by window
      } else {
        const float inverse = static_cast<float>(divisor(oh, pair_lo_));
        for (int64_t i = 0; i < count; ++i) {
          const float share = dy[i] / inverse;
          dx0[2 * i] = dx0[2 * i + 1] = dx1[2 * i] = dx1[2 * i + 1] = share;
        }
        ow = pair_hi_;
      }
    }
    generic(d.out_w);
  }
}

void TbbPool2d::forward(const Tensor& x, Tensor& y) {
  const Pool2dDesc& d = desc_;
  const int64_t n_batch = pool2d_forward_batch(d, x, y, kName);
  const int64_t in_plane = d.in_h * d.in_w, out_plane = d.out_h * d.out_w;
  tbb::parallel_for(tbb::blocked_range<int64_t>(0, n_batch * d.channels, planes_per_task()),
                    [&](const tbb::blocked_range<int64_t>& range) {
                      for (int64_t p = range.begin(); p != range.end(); ++p) {
                        forward_plane(x.data() + p * in_plane, y.data() + p * out_plane);
                      }
                    });
}

void TbbPool2d::backward(const Tensor& x, const Tensor& y, const Tensor& dy, Tensor& dx) {
  if (!dx.defined()) return;
  const Pool2dDesc& d = desc_;
  const int64_t n_batch = pool2d_backward_batch(d, x, dy, dx, kName);
  const bool max = d.mode == Mode::kMax;
  const int64_t in_plane = d.in_h * d.in_w, out_plane = d.out_h * d.out_w;
  tbb::parallel_for(tbb::blocked_range<int64_t>(0, n_batch * d.channels, planes_per_task()),
                    [&](const tbb::blocked_range<int64_t>& range) {
                      for (int64_t p = range.begin(); p != range.end(); ++p) {
                        backward_plane(max ? x.data() + p * in_plane : nullptr,
                                       dy.data() + p * out_plane, dx.data() + p * in_plane);
                      }
                    });
}

}  // namespace strata::tbb_backend
