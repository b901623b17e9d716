#include "depthwise.hpp"

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "floats.hpp"

namespace strata::tbb_backend::depthwise {

namespace {

// Floats of a block's phases, at most (unless one image has more): 2 KB. Bigger blocks ran
// slower: their images' planes lie a whole image apart, often at one offset in their pages, and
// compete for the same L1 sets (16x16 planes: 2.7 ms a training pass unstacked, 3.7 ms in blocks
// of 12; 4x4: 3.2 ms unstacked, 2.1 ms in blocks of 14).
constexpr int64_t kStackFloats = 512;

// The padded plane covers every window: the input with its padding, and more zeros below and to
// the right when the output size was rounded up (a last window past the padding). Its phases
// (depthwise.hpp) are ceil(padded_h / stride_h) x ceil(padded_w / stride_w).
int64_t padded_h(const Conv2dDesc& d) {
  return std::max(d.in_h + 2 * d.pad_h,
                  (d.out_h - 1) * d.stride_h + (d.kernel_h - 1) * d.dilation_h + 1);
}
int64_t padded_w(const Conv2dDesc& d) {
  return std::max(d.in_w + 2 * d.pad_w,
                  (d.out_w - 1) * d.stride_w + (d.kernel_w - 1) * d.dilation_w + 1);
}
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
// zero for kLanes - 1 floats past their ends (widen() and pad_planes() zero that slack), so the
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

// Rows of three taps one float apart (3 wide, stride and dilation 1 along the rows: MobileNet's
// 3x3): a row's three runs come from the same two loads, the second and third shifted one and two
// lanes along (valignd), in place of three unaligned loads, most of them across two cache lines.
// The loads were the tap loops' limit: nine per output vector against nine multiply-adds.
// Row r's runs start at src + base[r] + k for k = 0, 1, 2, with weights w[tap[3 r + k]]. They
// read up to 2 * kLanes - 1 floats past the vector's end: every buffer's slack covers that.
inline Vec shifted(Vec a, Vec b, std::integral_constant<int, 1>) {
  return __builtin_shufflevector(a, b, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16);
}
inline Vec shifted(Vec a, Vec b, std::integral_constant<int, 2>) {
  return __builtin_shufflevector(a, b, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17);
}
using One = std::integral_constant<int, 1>;
using Two = std::integral_constant<int, 2>;

// tap_sums over rows of three (above): out[j] (= or +=) bias + the rows' sums.
void row3_sums(const float* src, const int64_t* base, const int64_t* tap, const float* w,
               int64_t rows, float bias, bool accumulate, float* out, int64_t length) {
  int64_t j = 0;
  for (; j + 4 * kLanes <= length; j += 4 * kLanes) {
    Vec a[4];
    for (int k = 0; k < 4; ++k) a[k] = accumulate ? load(out + j + k * kLanes) : splat(bias);
    for (int64_t r = 0; r < rows; ++r) {
      const Vec w0 = splat(w[tap[3 * r]]), w1 = splat(w[tap[3 * r + 1]]);
      const Vec w2 = splat(w[tap[3 * r + 2]]);
      const float* p = src + base[r] + j;
      Vec v[5];
      for (int k = 0; k < 5; ++k) v[k] = load(p + k * kLanes);
      for (int k = 0; k < 4; ++k) {
        a[k] +=
            w0 * v[k] + w1 * shifted(v[k], v[k + 1], One{}) + w2 * shifted(v[k], v[k + 1], Two{});
      }
    }
    for (int k = 0; k < 4; ++k) store(out + j + k * kLanes, a[k]);
  }
  for (; j < length; j += kLanes) {
    Vec a = accumulate ? load(out + j) : splat(bias);
    for (int64_t r = 0; r < rows; ++r) {
      const float* p = src + base[r] + j;
      const Vec v0 = load(p), v1 = load(p + kLanes);
      a += splat(w[tap[3 * r]]) * v0 + splat(w[tap[3 * r + 1]]) * shifted(v0, v1, One{}) +
           splat(w[tap[3 * r + 2]]) * shifted(v0, v1, Two{});
    }
    store(out + j, a);
  }
}

// tap_dots over rows of three (above), three rows (nine taps) a pass: partial[3 r + k][lane] and
// grad_sums as tap_dots's.
void row3_dots(const float* grad, const float* src, const int64_t* base, int64_t rows,
               int64_t length, float* partial, float* grad_sums) {
  const int64_t vector_end = (length + kLanes - 1) / kLanes * kLanes;
  for (int64_t r0 = 0; r0 < rows; r0 += 3) {
    const int64_t count = std::min<int64_t>(3, rows - r0);
    const float* p[3];
    Vec acc[9];
    for (int u = 0; u < 3; ++u) p[u] = src + base[r0 + std::min<int64_t>(u, count - 1)];
    for (Vec& a : acc) a = Vec{};
    const bool sum_grad = grad_sums != nullptr && r0 == 0;
    Vec grad_acc{};
    for (int64_t j = 0; j < vector_end; j += kLanes) {
      const Vec g = load(grad + j);
      if (sum_grad) grad_acc += g;
      for (int u = 0; u < 3; ++u) {
        const Vec v0 = load(p[u] + j), v1 = load(p[u] + j + kLanes);
        acc[3 * u] += g * v0;
        acc[3 * u + 1] += g * shifted(v0, v1, One{});
        acc[3 * u + 2] += g * shifted(v0, v1, Two{});
      }
    }
    for (int u = 0; u < 3 * count; ++u) {
      float* sums = partial + (3 * r0 + u) * kLanes;
      store(sums, load(sums) + acc[u]);
    }
    if (sum_grad) store(grad_sums, load(grad_sums) + grad_acc);
  }
}

}  // namespace

// The stride's phases: phase (a, b), a < stride_h and b < stride_w, holds the padded plane's rows
// a, a + stride_h, ... and its columns b, b + stride_w, ... (stride 1: one phase, the padded plane
// itself). Output (oh, ow) reads, for tap (r, s), padded pixel (oh * stride_h + r * dilation_h,
// ow * stride_w + s * dilation_w): in phase (r * dilation_h % stride_h, s * dilation_w %
// stride_w), row oh + r * dilation_h / stride_h, column ow + s * dilation_w / stride_w. So every
// tap is one run at a fixed offset, any stride.
Plan make_plan(const Conv2dDesc& d) {
  Plan p;
  p.pitch = (padded_w(d) + d.stride_w - 1) / d.stride_w;
  p.phase_rows = (padded_h(d) + d.stride_h - 1) / d.stride_h;
  p.phase_floats = p.phase_rows * p.pitch;
  p.phases = d.stride_h * d.stride_w;
  p.stack = std::max<int64_t>(1, kStackFloats / (p.phases * p.phase_floats));
  p.out_h = d.out_h;
  p.out_w = d.out_w;
  const auto phase = [&](int64_t r, int64_t s) {
    return r * d.dilation_h % d.stride_h * d.stride_w + s * d.dilation_w % d.stride_w;
  };
  const auto in_phase = [&](int64_t r, int64_t s) {
    return r * d.dilation_h / d.stride_h * p.pitch + s * d.dilation_w / d.stride_w;
  };
  p.margin = in_phase(d.kernel_h - 1, d.kernel_w - 1);
  const int64_t taps = d.kernel_h * d.kernel_w;
  for (int64_t t = 0; t < taps; ++t) {
    const int64_t r = t / d.kernel_w, s = t % d.kernel_w;
    p.offsets.push_back(phase(r, s) * p.phase_stride() + in_phase(r, s));
    p.identity.push_back(t);
  }
  for (int64_t ph = 0; ph < p.phases; ++ph) {
    p.phase_begin.push_back(static_cast<int64_t>(p.order.size()));
    for (int64_t t = 0; t < taps; ++t) {
      const int64_t r = t / d.kernel_w, s = t % d.kernel_w;
      if (phase(r, s) != ph) continue;
      p.order.push_back(t);
      p.flipped.push_back(p.margin - in_phase(r, s));
    }
  }
  p.phase_begin.push_back(taps);
  // Rows of three taps one float apart (row3_sums): forward and the weight gradient read row r
  // from offsets[3 r] on; backward_data's flipped row from its last tap's offset, the taps
  // reversed.
  p.rows3 = d.kernel_w == 3 && d.stride_h == 1 && d.stride_w == 1 && d.dilation_w == 1;
  for (int64_t r = 0; p.rows3 && r < d.kernel_h; ++r) {
    p.row_offsets.push_back(p.offsets[3 * r]);
    p.row_flipped.push_back(p.flipped[3 * r + 2]);
    for (int64_t k = 0; k < 3; ++k) p.flipped_taps.push_back(3 * r + 2 - k);
  }
  return p;
}

int64_t padded_floats(const Plan& p) { return p.phases * p.phase_stride() + kSlackFloats; }
int64_t wide_floats(const Plan& p) { return p.phase_stride() + kSlackFloats; }
int64_t grad_floats(const Plan& p) { return p.margin + p.phase_stride() + kSlackFloats; }
int64_t weight_scratch_floats(const Plan& p) {
  return (static_cast<int64_t>(p.offsets.size()) + 1) * kLanes;
}
int64_t multiply_adds(const Plan& p) {
  return static_cast<int64_t>(p.offsets.size()) * p.phase_floats;
}

namespace {

// Copies plane x into the phases of its padded plane at `padded` (phase q at q * stride floats).
void pad_image(const Conv2dDesc& d, const Plan& p, const float* x, int64_t stride, float* padded) {
  const int64_t pw = p.pitch, rows = p.phase_rows, sh = d.stride_h, sw = d.stride_w;
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
        float* row = padded + (a * sw + b) * stride + i * pw;
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
  // Strides 1 and 2: whole rows. Input column w lands in phase (w + pad_w) % sw at
  // (w + pad_w) / sw.
  if (sw > 2) return;
  for (int64_t a = 0; a < sh; ++a) {
    for (int64_t i = 0; i < rows; ++i) {
      if (!valid(a, i)) continue;
      const float* src = x + (i * sh + a - d.pad_h) * d.in_w;
      float* row = padded + a * sw * stride + i * pw;
      if (sw == 1) {
        copy_floats(row + d.pad_w, src, d.in_w);
      } else {
        const int64_t q = d.pad_w % 2;
        split_pairs(src, d.in_w, row + q * stride + d.pad_w / 2,
                    row + (1 - q) * stride + (d.pad_w + 1) / 2);
      }
    }
  }
}

// dy in the wide layout at grad + margin (image i's row oh at (i * phase_rows + oh) * pitch),
// zero everywhere else up to kSlackFloats past the last image: the columns and rows that are not
// output pixels, and backward_data's margin for its flipped taps. Each float is written once
// (zeroing the whole buffer first, a 4 KB memset per plane at 28x28, was a tenth of a depthwise
// training step).
const float* widen(const Plan& p, const float* dy, int64_t dy_stride, int64_t count, float* grad) {
  const int64_t pw = p.pitch;
  zero_floats(grad, p.margin);
  float* wide = grad + p.margin;
  for (int64_t i = 0; i < count; ++i) {
    float* image = wide + i * p.phase_floats;
    for (int64_t oh = 0; oh < p.out_h; ++oh) {
      copy_floats(image + oh * pw, dy + i * dy_stride + oh * p.out_w, p.out_w);
      zero_floats(image + oh * pw + p.out_w, pw - p.out_w);
    }
    zero_floats(image + p.out_h * pw, p.phase_floats - p.out_h * pw);
  }
  zero_floats(wide + count * p.phase_floats, kSlackFloats);
  return wide;
}

}  // namespace

void pad_planes(const Conv2dDesc& d, const Plan& p, const float* x, int64_t x_stride, int64_t count,
                float* padded) {
  // First the zeros past the last image of each phase, which the tap loops' last vectors read
  // (a stale value there could be a NaN, and 0 * NaN is not 0); a short phase's run into the
  // next phase is then overwritten.
  for (int64_t q = 0; q < p.phases; ++q) {
    zero_floats(padded + q * p.phase_stride() + count * p.phase_floats, kSlackFloats);
  }
  for (int64_t i = 0; i < count; ++i) {
    pad_image(d, p, x + i * x_stride, p.phase_stride(), padded + i * p.phase_floats);
  }
}

void forward_planes(const Conv2dDesc& d, const Plan& p, const float* padded, int64_t count,
                    const float* w, float bias, float* y, int64_t y_stride, float* wide) {
  if (p.rows3) {
    row3_sums(padded, p.row_offsets.data(), p.identity.data(), w, d.kernel_h, bias, false, wide,
              p.wide_length(count));
  } else {
    tap_sums(padded, p.offsets.data(), p.identity.data(), w, static_cast<int64_t>(p.offsets.size()),
             bias, false, wide, p.wide_length(count));
  }
  for (int64_t i = 0; i < count; ++i) {
    for (int64_t oh = 0; oh < p.out_h; ++oh) {
      copy_floats(y + i * y_stride + oh * p.out_w, wide + i * p.phase_floats + oh * p.pitch,
                  p.out_w);
    }
  }
}

void backward_data_planes(const Conv2dDesc& d, const Plan& p, const float* dy, int64_t dy_stride,
                          int64_t count, const float* w, bool accumulate, float* dx_padded,
                          float* grad) {
  // Phase q of dx_padded, at its column i: the sum over q's taps t of w[t] * wide_dy[i -
  // in-phase offset of t], the same tap sums over dy with a margin of zeros in front and the
  // offsets flipped. A phase no tap reaches (a stride past the dilated kernel) is zero.
  widen(p, dy, dy_stride, count, grad);
  if (p.rows3) {  // one phase
    row3_sums(grad, p.row_flipped.data(), p.flipped_taps.data(), w, d.kernel_h, 0.0f, accumulate,
              dx_padded, count * p.phase_floats);
    return;
  }
  for (int64_t q = 0; q < p.phases; ++q) {
    const int64_t first = p.phase_begin[q];
    tap_sums(grad, p.flipped.data() + first, p.order.data() + first, w,
             p.phase_begin[q + 1] - first, 0.0f, accumulate, dx_padded + q * p.phase_stride(),
             count * p.phase_floats);
  }
}

void crop_planes(const Conv2dDesc& d, const Plan& p, const float* dx_padded, int64_t count,
                 float* dx, int64_t dx_stride) {
  const int64_t pw = p.pitch, stride = p.phase_stride(), sh = d.stride_h, sw = d.stride_w;
  for (int64_t n = 0; n < count; ++n) {
    const float* image = dx_padded + n * p.phase_floats;
    for (int64_t h = 0; h < d.in_h; ++h) {
      const int64_t a = (h + d.pad_h) % sh, i = (h + d.pad_h) / sh;
      float* out = dx + n * dx_stride + h * d.in_w;
      const float* row = image + a * sw * stride + i * pw;
      if (sw == 1) {
        copy_floats(out, row + d.pad_w, d.in_w);
      } else if (sw == 2) {  // input column w is in phase (w + pad_w) % 2 at (w + pad_w) / 2
        const int64_t q = d.pad_w % 2;
        merge_pairs(row + q * stride + d.pad_w / 2, row + (1 - q) * stride + (d.pad_w + 1) / 2,
                    d.in_w, out);
      } else {
        for (int64_t b = 0; b < sw; ++b) {
          // Input columns w = first, first + sw, ... are phase b's columns (w + pad_w) / sw.
          const int64_t first = ((b - d.pad_w) % sw + sw) % sw;
          const float* src = row + b * stride + (first + d.pad_w) / sw;
          for (int64_t w = first, j = 0; w < d.in_w; w += sw, ++j) out[w] = src[j];
        }
      }
    }
  }
}

void accumulate_weight_planes(const Conv2dDesc& d, const Plan& p, const float* padded,
                              const float* dy, int64_t dy_stride, int64_t count, bool sum_dy,
                              float* acc, float* grad) {
  const auto taps = static_cast<int64_t>(p.offsets.size());
  const float* wide = widen(p, dy, dy_stride, count, grad);
  float* dy_sums = sum_dy ? acc + taps * kLanes : nullptr;
  if (p.rows3) {
    row3_dots(wide, padded, p.row_offsets.data(), d.kernel_h, p.wide_length(count), acc, dy_sums);
  } else {
    tap_dots(wide, padded, p.offsets.data(), taps, p.wide_length(count), acc, dy_sums);
  }
}

void reduce_weight(const Plan& p, const float* acc, float* dw, float* db) {
  const auto taps = static_cast<int64_t>(p.offsets.size());
  const auto total = [&](int64_t slot) {
    float sum = 0.0f;
    for (int64_t j = 0; j < kLanes; ++j) sum += acc[slot * kLanes + j];
    return sum;
  };
  for (int64_t t = 0; t < taps; ++t) dw[t] = total(t);
  if (db != nullptr) *db = total(taps);
}

}  // namespace strata::tbb_backend::depthwise
