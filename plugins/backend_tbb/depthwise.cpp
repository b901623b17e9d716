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
bool unit_stride(const Conv2dDesc& d) { return d.stride_h == 1 && d.stride_w == 1; }

}  // namespace

int64_t padded_floats(const Conv2dDesc& d) { return padded_h(d) * padded_w(d); }
int64_t plane_floats(const Conv2dDesc& d) { return padded_floats(d) + kSlackFloats; }
int64_t wide_floats(const Conv2dDesc& d) { return d.out_h * padded_w(d) + kSlackFloats; }

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

// out[j] (= or +=) bias + sum over taps t of w[t] * src[offset[t] + j], for j < length. The sums
// stay in registers across the taps: one store per output instead of one per tap. The last vector
// runs whole (to length rounded up to kLanes): it reads src and writes out up to kLanes - 1 floats
// past their ends, the slack every caller's buffer has (kSlackFloats), and so no scalar tail
// repeats the taps (on a 4x4 plane, 6 of its 22 wide columns were such a tail).
void tap_sums(const float* src, const int64_t* offset, const float* w, int64_t taps, float bias,
              bool accumulate, float* out, int64_t length) {
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
      const Vec wt = splat(w[t]);
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
    for (int64_t t = 0; t < taps; ++t) a += splat(w[t]) * load(src + offset[t] + j);
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
// the taps' dot products, kDotBlock taps at a time with their sums in registers. As tap_sums, the
// last vector runs whole: grad and src must be zero for kLanes - 1 floats past their ends
// (widen() and pad_plane() zero that slack), so the lanes past `length` add nothing.
void tap_dots(const float* grad, const float* src, const int64_t* offset, int64_t taps,
              int64_t length, float* partial) {
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
    for (int64_t j = 0; j < vector_end; j += kLanes) {
      const Vec g = load(grad + j);
#pragma GCC unroll 9
      for (int u = 0; u < kDotBlock; ++u) acc[u] += g * load(p[u] + j);
    }
    for (int u = 0; u < count; ++u) {
      float* sums = partial + (t0 + u) * kLanes;
      store(sums, load(sums) + acc[u]);
    }
  }
}

// Stride 1: output pixel (oh, ow) is column oh * padded_w + ow of the "wide" output, and tap
// (r, s) reads the padded plane at that column plus offset(r, s), so each tap is one long loop.
int64_t wide_length(const Conv2dDesc& d) { return (d.out_h - 1) * padded_w(d) + d.out_w; }
int64_t offset(const Conv2dDesc& d, int64_t r, int64_t s) {
  return r * d.dilation_h * padded_w(d) + s * d.dilation_w;
}

int64_t max_offset(const Conv2dDesc& d) { return offset(d, d.kernel_h - 1, d.kernel_w - 1); }

// dy in the wide layout at grad + max_offset(d), zero everywhere else in grad_floats(d) floats
// (the columns that are not output pixels, and margins for backward_data's flipped taps).
const float* widen(const Conv2dDesc& d, const float* dy, float* grad) {
  const int64_t pw = padded_w(d);
  zero_floats(grad, grad_floats(d));
  float* wide = grad + max_offset(d);
  for (int64_t oh = 0; oh < d.out_h; ++oh) copy_floats(wide + oh * pw, dy + oh * d.out_w, d.out_w);
  return wide;
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
  return d.kernel_h * d.kernel_w * (unit_stride(d) ? wide_length(d) : d.out_h * d.out_w);
}
int64_t data_multiply_adds(const Conv2dDesc& d) {
  return d.kernel_h * d.kernel_w * (unit_stride(d) ? padded_floats(d) : d.out_h * d.out_w);
}
int64_t params_multiply_adds(const Conv2dDesc& d) { return forward_multiply_adds(d); }

int64_t weight_scratch_floats(const Conv2dDesc& d) {
  return d.kernel_h * d.kernel_w * (unit_stride(d) ? kLanes : d.out_w);
}
int64_t grad_floats(const Conv2dDesc& d) { return max_offset(d) + padded_floats(d) + kSlackFloats; }

std::vector<int64_t> tap_offsets(const Conv2dDesc& d, bool flipped) {
  std::vector<int64_t> offsets;
  for (int64_t r = 0; r < d.kernel_h; ++r) {
    for (int64_t s = 0; s < d.kernel_w; ++s) {
      offsets.push_back(flipped ? max_offset(d) - offset(d, r, s) : offset(d, r, s));
    }
  }
  return offsets;
}

void pad_plane(const Conv2dDesc& d, const float* x, float* padded) {
  const int64_t ph = padded_h(d), pw = padded_w(d);
  zero_floats(padded, d.pad_h * pw);
  for (int64_t h = 0; h < d.in_h; ++h) {
    float* row = padded + (h + d.pad_h) * pw;
    zero_floats(row, d.pad_w);
    copy_floats(row + d.pad_w, x + h * d.in_w, d.in_w);
    zero_floats(row + d.pad_w + d.in_w, pw - d.pad_w - d.in_w);
  }
  zero_floats(padded + (d.pad_h + d.in_h) * pw, (ph - d.pad_h - d.in_h) * pw + kSlackFloats);
}

void forward_plane(const Conv2dDesc& d, const int64_t* offsets, const float* padded, const float* w,
                   float bias, float* y, float* wide) {
  const int64_t pw = padded_w(d), out_w = d.out_w, sw = d.stride_w;
  if (unit_stride(d)) {
    tap_sums(padded, offsets, w, d.kernel_h * d.kernel_w, bias, false, wide, wide_length(d));
    for (int64_t oh = 0; oh < d.out_h; ++oh) copy_floats(y + oh * out_w, wide + oh * pw, out_w);
    return;
  }
  for (int64_t oh = 0; oh < d.out_h; ++oh) {
    float* __restrict out = y + oh * out_w;
    std::fill_n(out, out_w, bias);
    for (int64_t r = 0; r < d.kernel_h; ++r) {
      const float* row = padded + (oh * d.stride_h + r * d.dilation_h) * pw;
      for (int64_t s = 0; s < d.kernel_w; ++s) {
        const float weight = w[r * d.kernel_w + s];
        const float* __restrict src = row + s * d.dilation_w;
        for (int64_t ow = 0; ow < out_w; ++ow) out[ow] += weight * src[ow * sw];
      }
    }
  }
}

void backward_data_plane(const Conv2dDesc& d, const int64_t* flipped_offsets, const float* dy,
                         const float* w, bool accumulate, float* dx_padded, float* grad) {
  const int64_t pw = padded_w(d), out_w = d.out_w, sw = d.stride_w;
  if (unit_stride(d)) {
    // dx_padded[i] = sum over taps t of w[t] * wide_dy[i - offset(t)]: the same tap sums, over
    // dy with a margin of max_offset zeros in front and the offsets flipped.
    widen(d, dy, grad);
    tap_sums(grad, flipped_offsets, w, d.kernel_h * d.kernel_w, 0.0f, accumulate, dx_padded,
             padded_floats(d));
    return;
  }
  if (!accumulate) zero_floats(dx_padded, padded_floats(d));
  for (int64_t oh = 0; oh < d.out_h; ++oh) {
    const float* __restrict grad = dy + oh * out_w;
    for (int64_t r = 0; r < d.kernel_h; ++r) {
      float* row = dx_padded + (oh * d.stride_h + r * d.dilation_h) * pw;
      for (int64_t s = 0; s < d.kernel_w; ++s) {
        const float weight = w[r * d.kernel_w + s];
        float* __restrict dst = row + s * d.dilation_w;
        for (int64_t ow = 0; ow < out_w; ++ow) dst[ow * sw] += weight * grad[ow];
      }
    }
  }
}

void crop_plane(const Conv2dDesc& d, const float* dx_padded, float* dx) {
  const int64_t pw = padded_w(d);
  for (int64_t h = 0; h < d.in_h; ++h) {
    copy_floats(dx + h * d.in_w, dx_padded + (h + d.pad_h) * pw + d.pad_w, d.in_w);
  }
}

void accumulate_weight_plane(const Conv2dDesc& d, const int64_t* offsets, const float* padded,
                             const float* dy, float* acc, float* grad) {
  const int64_t pw = padded_w(d), out_w = d.out_w, sw = d.stride_w;
  if (unit_stride(d)) {
    tap_dots(widen(d, dy, grad), padded, offsets, d.kernel_h * d.kernel_w, wide_length(d), acc);
    return;
  }
  for (int64_t oh = 0; oh < d.out_h; ++oh) {
    const float* __restrict grad = dy + oh * out_w;
    for (int64_t r = 0; r < d.kernel_h; ++r) {
      const float* row = padded + (oh * d.stride_h + r * d.dilation_h) * pw;
      for (int64_t s = 0; s < d.kernel_w; ++s) {
        float* __restrict sums = acc + (r * d.kernel_w + s) * out_w;
        const float* __restrict src = row + s * d.dilation_w;
        for (int64_t ow = 0; ow < out_w; ++ow) sums[ow] += grad[ow] * src[ow * sw];
      }
    }
  }
}

void reduce_weight(const Conv2dDesc& d, const float* acc, float* dw) {
  const int64_t taps = d.kernel_h * d.kernel_w, length = weight_scratch_floats(d) / taps;
  for (int64_t t = 0; t < taps; ++t) {
    float total = 0.0f;
    for (int64_t j = 0; j < length; ++j) total += acc[t * length + j];
    dw[t] = total;
  }
}

}  // namespace strata::tbb_backend::depthwise
