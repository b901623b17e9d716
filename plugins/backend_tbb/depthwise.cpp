#include "depthwise.hpp"

#include <algorithm>
#include <cstring>
#include <vector>

#include "floats.hpp"

namespace strata::tbb_backend::depthwise {

namespace {

// The padded plane covers every window: the input with its padding, and more zeros below and to
// the right when the output size was rounded up (a last window past the padding).
int64_t padded_h(const Conv2dDesc& d) {
  return std::max(d.in_h + 2 * d.pad_h,
                  (d.out_h - 1) * d.stride_h + (d.kernel_h - 1) * d.dilation_h + 1);
}
int64_t padded_w(const Conv2dDesc& d) {
  return std::max(d.in_w + 2 * d.pad_w,
                  (d.out_w - 1) * d.stride_w + (d.kernel_w - 1) * d.dilation_w + 1);
}
// The stride's phases: phase (a, b), a < stride_h and b < stride_w, holds the padded plane's rows
// a, a + stride_h, ... and its columns b, b + stride_w, ..., phase_rows x pitch floats (stride 1:
// one phase, the padded plane itself). Output (oh, ow) reads, for tap (r, s), padded pixel
// (oh * stride_h + r * dilation_h, ow * stride_w + s * dilation_w): in phase
// (r * dilation_h % stride_h, s * dilation_w % stride_w), row oh + r * dilation_h / stride_h,
// column ow + s * dilation_w / stride_w. So every tap is one run at a fixed offset, any stride.
int64_t pitch(const Conv2dDesc& d) { return (padded_w(d) + d.stride_w - 1) / d.stride_w; }
int64_t phase_rows(const Conv2dDesc& d) { return (padded_h(d) + d.stride_h - 1) / d.stride_h; }
int64_t phase_floats(const Conv2dDesc& d) { return phase_rows(d) * pitch(d); }
int64_t phase_count(const Conv2dDesc& d) { return d.stride_h * d.stride_w; }
int64_t tap_phase(const Conv2dDesc& d, int64_t r, int64_t s) {
  return r * d.dilation_h % d.stride_h * d.stride_w + s * d.dilation_w % d.stride_w;
}
int64_t in_phase_offset(const Conv2dDesc& d, int64_t r, int64_t s) {
  return r * d.dilation_h / d.stride_h * pitch(d) + s * d.dilation_w / d.stride_w;
}
// The largest in-phase offset (the last tap's): backward_data's margin of zeros before dy.
int64_t margin(const Conv2dDesc& d) { return in_phase_offset(d, d.kernel_h - 1, d.kernel_w - 1); }

}  // namespace

int64_t padded_floats(const Conv2dDesc& d) { return phase_count(d) * phase_floats(d); }
int64_t plane_floats(const Conv2dDesc& d) { return padded_floats(d) + kSlackFloats; }
int64_t wide_floats(const Conv2dDesc& d) { return d.out_h * pitch(d) + kSlackFloats; }

namespace {

// 16 floats (one AVX-512 register, two AVX2 ones: the compiler picks), moved to and from any float
// address with memcpy (an unaligned vector load or store; clang keeps a vector type's 64-byte
// alignment even where a typedef asks for less, and UBSan then reports every access).
// Below AVX-512 (the generic and avx2 copies of this file, strata/isa.hpp) gcc warns that passing
// such a vector by value has another ABI there: these functions are internal and inlined, so no
// call between differently compiled code ever passes one.
#pragma GCC diagnostic ignored "-Wpsabi"
using Vec = float __attribute__((vector_size(64)));
constexpr int64_t kLanes = 16;
static_assert(kSlackFloats >= kLanes, "the slack must cover a whole last vector");
inline Vec load(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store(float* p, Vec v) { std::memcpy(p, &v, sizeof v); }
inline Vec splat(float x) { return Vec{} + x; }
using Bits = uint32_t __attribute__((vector_size(64)));

// out[j] (= or +=) bias + sum over t < taps of w[tap[t]] * src[offset[t] + j], for j < length. The
// sums stay in registers across the taps: one store per output instead of one per tap. The last
// vector runs whole (to length rounded up to kLanes): it reads src and writes out up to kLanes - 1
// floats past their ends, the slack every caller's buffer has (kSlackFloats), and so no scalar tail
// repeats the taps (on a 4x4 plane, 6 of its 22 wide columns were such a tail).
void tap_sums(const float* src, const int64_t* offset, const int64_t* tap, const float* w,
              int64_t taps, float bias, bool accumulate, float* out, int64_t length) {
  int64_t j = 0;
  for (; j + 4 * kLanes <= length; j += 4 * kLanes) {
    Vec a0, a1, a2, a3;
    if (accumulate) {
      a0 = load(out + j), a1 = load(out + j + kLanes), a2 = load(out + j + 2 * kLanes),
      a3 = load(out + j + 3 * kLanes);
    } else {
      a0 = a1 = a2 = a3 = splat(bias);
    }
    for (int64_t t = 0; t < taps; ++t) {
      const Vec wt = splat(w[tap[t]]);
      const float* p = src + offset[t] + j;
      a0 += wt * load(p);
      a1 += wt * load(p + kLanes);
      a2 += wt * load(p + 2 * kLanes);
      a3 += wt * load(p + 3 * kLanes);
    }
    store(out + j, a0);
    store(out + j + kLanes, a1);
    store(out + j + 2 * kLanes, a2);
    store(out + j + 3 * kLanes, a3);
  }
  for (; j < length; j += kLanes) {
    Vec a = accumulate ? load(out + j) : splat(bias);
    for (int64_t t = 0; t < taps; ++t) a += splat(w[tap[t]]) * load(src + offset[t] + j);
    store(out + j, a);
  }
}

// Taps per pass of tap_dots, their sums in registers: a 3x3 filter's nine in one pass with
// AVX-512 (10 of its 32 registers; in blocks of eight, the ninth tap took a second pass over
// the plane, and the depthwise weight gradient twice the forward's time); eight with AVX2, whose
// 16 registers hold half as many of these 16-float vectors.
#if defined(__AVX512F__)
constexpr int kDotBlock = 9;
#else
constexpr int kDotBlock = 8;
#endif

// partial[t][lane] += sum over j = lane (mod kLanes), j < length, of grad[j] * src[offset[t] + j]:
// the taps' dot products, kDotBlock taps at a time with their sums in registers; and, unless
// grad_sums is null, grad_sums[lane] += the same sum of grad[j] alone (the bias gradient, in the
// pass that loads grad anyway). As tap_sums, the last vector runs whole: grad and src must be
// zero for kLanes - 1 floats past their ends (widen() and pad_plane() zero that slack), so the
// lanes past `length` add nothing.
void tap_dots(const float* grad, const float* src, const int64_t* offset, int64_t taps,
              int64_t length, float* partial, float* grad_sums) {
  const int64_t vector_end = (length + kLanes - 1) / kLanes * kLanes;
  for (int64_t t0 = 0; t0 < taps; t0 += kDotBlock) {
    const int64_t count = std::min<int64_t>(kDotBlock, taps - t0);
    const float* p[kDotBlock];
    Vec acc[kDotBlock];
#pragma GCC unroll 9
    for (int u = 0; u < kDotBlock; ++u) {  // a short last block repeats its last tap, unstored
      p[u] = src + offset[t0 + std::min<int64_t>(u, count - 1)];
      acc[u] = Vec{};
    }
    const bool sum_grad = grad_sums != nullptr && t0 == 0;
    Vec grad_acc{};
    for (int64_t j = 0; j < vector_end; j += kLanes) {
      const Vec g = load(grad + j);
      if (sum_grad) grad_acc += g;
#pragma GCC unroll 9
      for (int u = 0; u < kDotBlock; ++u) acc[u] += g * load(p[u] + j);
    }
    for (int u = 0; u < count; ++u) {
      float* sums = partial + (t0 + u) * kLanes;
      store(sums, load(sums) + acc[u]);
    }
    if (sum_grad) store(grad_sums, load(grad_sums) + grad_acc);
  }
}

// Output pixel (oh, ow) is column oh * pitch + ow of the "wide" output, and tap (r, s) reads the
// phases at that column plus the tap's offset, so each tap is one long loop.
int64_t wide_length(const Conv2dDesc& d) { return (d.out_h - 1) * pitch(d) + d.out_w; }

// dy in the wide layout at grad + margin(d), zero everywhere else in grad_floats(d) floats (the
// columns that are not output pixels, and margins for backward_data's flipped taps). Each float is
// written once: the zeros between the rows with them (zeroing the whole buffer first, a 4 KB
// memset per plane at 28x28, was a tenth of a depthwise training step).
const float* widen(const Conv2dDesc& d, const float* dy, float* grad) {
  const int64_t pw = pitch(d), front = margin(d);
  zero_floats(grad, front);
  float* wide = grad + front;
  for (int64_t oh = 0; oh < d.out_h; ++oh) {
    copy_floats(wide + oh * pw, dy + oh * d.out_w, d.out_w);
    zero_floats(wide + oh * pw + d.out_w, pw - d.out_w);
  }
  zero_floats(wide + d.out_h * pw, grad_floats(d) - front - d.out_h * pw);
  return wide;
}

// Stride 2's column split and its inverse, 16 floats at a time: dst[b][j] = src[2 * j + b] for
// 2 * j + b < n (b = 0, 1), and back. As scalar loops these were most of a stride-2 pass.
using Half = float __attribute__((vector_size(32)));
void split_pairs(const float* src, int64_t n, float* even, float* odd) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const Vec v = load(src + i);
    const Half e = __builtin_shufflevector(v, v, 0, 2, 4, 6, 8, 10, 12, 14);
    const Half o = __builtin_shufflevector(v, v, 1, 3, 5, 7, 9, 11, 13, 15);
    std::memcpy(even + i / 2, &e, sizeof e);
    std::memcpy(odd + i / 2, &o, sizeof o);
  }
  for (; i < n; ++i) (i % 2 == 0 ? even : odd)[i / 2] = src[i];
}
void merge_pairs(const float* even, const float* odd, int64_t n, float* dst) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    Half e, o;
    std::memcpy(&e, even + i / 2, sizeof e);
    std::memcpy(&o, odd + i / 2, sizeof o);
    store(dst + i,
          __builtin_shufflevector(e, o, 0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15));
  }
  for (; i < n; ++i) dst[i] = (i % 2 == 0 ? even : odd)[i / 2];
}

}  // namespace

void round_to_bf16(const float* src, int64_t n, float* dst) {
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    // strata::round_to_bf16's three cases as lane selects: zero and denormals to signed zero, NaN
    // kept quiet, everything else rounded to nearest even (past the largest bf16: infinity).
    Bits b;
    std::memcpy(&b, src + j, sizeof b);
    Bits r = (b + 0x7fffu + ((b >> 16) & 1u)) & 0xffff0000u;
    r = (b & 0x7fffffffu) > 0x7f800000u ? (b | 0x00400000u) & 0xffff0000u : r;
    r = (b & 0x7f800000u) == 0 ? b & 0x80000000u : r;
    std::memcpy(dst + j, &r, sizeof r);
  }
  for (; j < n; ++j) dst[j] = strata::round_to_bf16(src[j]);
}

int64_t forward_multiply_adds(const Conv2dDesc& d) {
  return d.kernel_h * d.kernel_w * wide_length(d);
}
int64_t data_multiply_adds(const Conv2dDesc& d) {
  return d.kernel_h * d.kernel_w * phase_floats(d);
}
int64_t params_multiply_adds(const Conv2dDesc& d) { return forward_multiply_adds(d); }

int64_t weight_scratch_floats(const Conv2dDesc& d) {
  return (d.kernel_h * d.kernel_w + 1) * kLanes;
}
int64_t grad_floats(const Conv2dDesc& d) { return margin(d) + phase_floats(d) + kSlackFloats; }

Taps make_taps(const Conv2dDesc& d) {
  Taps taps;
  const int64_t count = d.kernel_h * d.kernel_w;
  for (int64_t t = 0; t < count; ++t) {
    const int64_t r = t / d.kernel_w, s = t % d.kernel_w;
    taps.offsets.push_back(tap_phase(d, r, s) * phase_floats(d) + in_phase_offset(d, r, s));
    taps.identity.push_back(t);
  }
  for (int64_t phase = 0; phase < phase_count(d); ++phase) {
    taps.phase_begin.push_back(static_cast<int64_t>(taps.order.size()));
    for (int64_t t = 0; t < count; ++t) {
      const int64_t r = t / d.kernel_w, s = t % d.kernel_w;
      if (tap_phase(d, r, s) != phase) continue;
      taps.order.push_back(t);
      taps.flipped.push_back(margin(d) - in_phase_offset(d, r, s));
    }
  }
  taps.phase_begin.push_back(count);
  return taps;
}

void pad_plane(const Conv2dDesc& d, const float* x, float* padded) {
  const int64_t pw = pitch(d), rows = phase_rows(d), plane = rows * pw;
  const int64_t sh = d.stride_h, sw = d.stride_w;
  const auto valid = [&](int64_t a, int64_t i) {
    const int64_t h = i * sh + a - d.pad_h;
    return h >= 0 && h < d.in_h;
  };
  // The zeros, and the copies of strides past 2: phase b's columns [lo, hi) hold input columns
  // j * sw + b - pad_w, the others are padding.
  for (int64_t b = 0; b < sw; ++b) {
    const int64_t lo = std::min(pw, std::max<int64_t>(0, (d.pad_w - b + sw - 1) / sw));
    const int64_t hi = std::max(lo, std::min(pw, (d.in_w + d.pad_w - b + sw - 1) / sw));
    for (int64_t a = 0; a < sh; ++a) {
      for (int64_t i = 0; i < rows; ++i) {
        float* row = padded + (a * sw + b) * plane + i * pw;
        if (!valid(a, i)) {
          zero_floats(row, pw);
          continue;
        }
        zero_floats(row, lo);
        zero_floats(row + hi, pw - hi);
        if (sw <= 2) continue;
        const float* src = x + (i * sh + a - d.pad_h) * d.in_w + b - d.pad_w;
        for (int64_t j = lo; j < hi; ++j) row[j] = src[j * sw];
      }
    }
  }
  // Strides 1 and 2: whole rows. Input column w lands in phase (w + pad_w) % sw at (w + pad_w) /
  // sw.
  if (sw <= 2) {
    for (int64_t a = 0; a < sh; ++a) {
      for (int64_t i = 0; i < rows; ++i) {
        if (!valid(a, i)) continue;
        const float* src = x + (i * sh + a - d.pad_h) * d.in_w;
        float* row = padded + a * sw * plane + i * pw;
        if (sw == 1) {
          copy_floats(row + d.pad_w, src, d.in_w);
        } else {
          const int64_t p = d.pad_w % 2;
          split_pairs(src, d.in_w, row + p * plane + d.pad_w / 2,
                      row + (1 - p) * plane + (d.pad_w + 1) / 2);
        }
      }
    }
  }
  zero_floats(padded + padded_floats(d), kSlackFloats);
}

void forward_plane(const Conv2dDesc& d, const Taps& taps, const float* padded, const float* w,
                   float bias, float* y, float* wide) {
  const int64_t pw = pitch(d), out_w = d.out_w;
  tap_sums(padded, taps.offsets.data(), taps.identity.data(), w, d.kernel_h * d.kernel_w, bias,
           false, wide, wide_length(d));
  for (int64_t oh = 0; oh < d.out_h; ++oh) copy_floats(y + oh * out_w, wide + oh * pw, out_w);
}

void backward_data_plane(const Conv2dDesc& d, const Taps& taps, const float* dy, const float* w,
                         bool accumulate, float* dx_padded, float* grad) {
  // Phase p of dx_padded, at its column i: the sum over p's taps t of w[t] * wide_dy[i -
  // in_phase_offset(t)], the same tap sums over dy with a margin of zeros in front and the
  // offsets flipped. A phase no tap reaches (a stride past the dilated kernel) is zero.
  widen(d, dy, grad);
  const int64_t plane = phase_floats(d);
  for (int64_t phase = 0; phase < phase_count(d); ++phase) {
    const int64_t first = taps.phase_begin[phase];
    tap_sums(grad, taps.flipped.data() + first, taps.order.data() + first, w,
             taps.phase_begin[phase + 1] - first, 0.0f, accumulate, dx_padded + phase * plane,
             plane);
  }
}

void crop_plane(const Conv2dDesc& d, const float* dx_padded, float* dx) {
  const int64_t pw = pitch(d), plane = phase_floats(d), sh = d.stride_h, sw = d.stride_w;
  for (int64_t h = 0; h < d.in_h; ++h) {
    const int64_t a = (h + d.pad_h) % sh, i = (h + d.pad_h) / sh;
    float* out = dx + h * d.in_w;
    if (sw == 1) {
      copy_floats(out, dx_padded + a * plane + i * pw + d.pad_w, d.in_w);
      continue;
    }
    if (sw == 2) {  // input column w is in phase (w + pad_w) % 2 at (w + pad_w) / 2
      const float* row = dx_padded + a * sw * plane + i * pw;
      const int64_t p = d.pad_w % 2;
      merge_pairs(row + p * plane + d.pad_w / 2, row + (1 - p) * plane + (d.pad_w + 1) / 2, d.in_w,
                  out);
      continue;
    }
    for (int64_t b = 0; b < sw; ++b) {
      // Input columns w = first, first + sw, ... are phase b's columns (w + pad_w) / sw.
      const int64_t first = ((b - d.pad_w) % sw + sw) % sw;
      const float* src = dx_padded + (a * sw + b) * plane + i * pw + (first + d.pad_w) / sw;
      for (int64_t w = first, j = 0; w < d.in_w; w += sw, ++j) out[w] = src[j];
    }
  }
}

void accumulate_weight_plane(const Conv2dDesc& d, const Taps& taps, const float* padded,
                             const float* dy, bool sum_dy, float* acc, float* grad) {
  const int64_t count = d.kernel_h * d.kernel_w;
  tap_dots(widen(d, dy, grad), padded, taps.offsets.data(), count, wide_length(d), acc,
           sum_dy ? acc + count * kLanes : nullptr);
}

void reduce_weight(const Conv2dDesc& d, const float* acc, float* dw, float* db) {
  const int64_t taps = d.kernel_h * d.kernel_w;
  const auto total = [&](int64_t slot) {
    float sum = 0.0f;
    for (int64_t j = 0; j < kLanes; ++j) sum += acc[slot * kLanes + j];
    return sum;
  };
  for (int64_t t = 0; t < taps; ++t) dw[t] = total(t);
  if (db != nullptr) *db = total(taps);
}

}  // namespace strata::tbb_backend::depthwise
