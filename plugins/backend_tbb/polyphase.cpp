#include "polyphase.hpp"

#include <algorithm>
#include <utility>

#include "direct_conv.hpp"
#include "floats.hpp"
#include "tbb_kernels.hpp"

namespace strata::tbb_backend::polyphase {

namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Per residue mod `stride`, its slot among the residues some tap (k * dilation, k < kernel)
// reads, or -1; `stored` counts the slots.
std::vector<int64_t> slots(int64_t kernel, int64_t dilation, int64_t stride, int64_t& stored) {
  std::vector<int64_t> slot(static_cast<std::size_t>(stride), -1);
  for (int64_t k = 0; k < kernel; ++k) slot[static_cast<std::size_t>(k * dilation % stride)] = 0;
  stored = 0;
  for (int64_t& s : slot) {
    if (s == 0) s = stored++;
  }
  return slot;
}

// dst[b][j] = row[j * stride + b] for j < width and each b < stride with dst[b] non-null. Stride
// 2, both phases, is the common case: a loop the compiler vectorizes with shuffles.
void deinterleave(const float* row, int64_t stride, int64_t width, float* const* dst) {
  if (stride == 2 && dst[0] != nullptr && dst[1] != nullptr) {
    float* const even = dst[0];
    float* const odd = dst[1];
    for (int64_t j = 0; j < width; ++j) {
      even[j] = row[2 * j];
      odd[j] = row[2 * j + 1];
    }
    return;
  }
  for (int64_t b = 0; b < stride; ++b) {
    if (dst[b] == nullptr) continue;
    for (int64_t j = 0; j < width; ++j) dst[b][j] = row[j * stride + b];
  }
}

// The inverse: row[j * stride + b] = src[b][j] for j < width and every b < stride.
void interleave(const float* const* src, int64_t stride, int64_t width, float* row) {
  if (stride == 2) {
    const float* const even = src[0];
    const float* const odd = src[1];
    for (int64_t j = 0; j < width; ++j) {
      row[2 * j] = even[j];
      row[2 * j + 1] = odd[j];
    }
    return;
  }
  for (int64_t b = 0; b < stride; ++b) {
    for (int64_t j = 0; j < width; ++j) row[j * stride + b] = src[b][j];
  }
}

// Plane indices [lo, hi) whose padded position i * stride + residue - pad lies in [0, in).
void real_span(int64_t residue, int64_t stride, int64_t pad, int64_t in, int64_t plane, int64_t& lo,
               int64_t& hi) {
  const int64_t first = residue - pad;  // input index of plane index 0
  lo = std::min(plane, first >= 0 ? 0 : ceil_div(-first, stride));
  hi = std::clamp(ceil_div(in - first, stride), lo, plane);
}

}  // namespace

Geometry make(const Conv2dDesc& d) {
  Geometry g;
  g.plane_h = ceil_div(d.in_h + 2 * d.pad_h, d.stride_h);
  g.plane_w = ceil_div(d.in_w + 2 * d.pad_w, d.stride_w);
  g.stride_w = d.stride_w;
  g.row_slot = slots(d.kernel_h, d.dilation_h, d.stride_h, g.rows_stored);
  g.column_slot = slots(d.kernel_w, d.dilation_w, d.stride_w, g.columns_stored);
  // shifted_gemm reads up to a register block (kColumns) past the last wide column; shifted_dot
  // runs every tap over out_h whole plane rows rounded up to kVector, which reaches
  // (S - 1) * dw / sw floats past the last plane for the rightmost taps.
  g.slack = 2 * direct::kColumns + (d.kernel_w - 1) * d.dilation_w / d.stride_w;
  return g;
}

bool exact_output(const Conv2dDesc& d) {
  return d.out_h == (d.in_h + 2 * d.pad_h - (d.kernel_h - 1) * d.dilation_h - 1) / d.stride_h + 1 &&
         d.out_w == (d.in_w + 2 * d.pad_w - (d.kernel_w - 1) * d.dilation_w - 1) / d.stride_w + 1;
}

void split(const Conv2dDesc& d, const Geometry& g, int64_t channels, const float* x, float* out) {
  const int64_t sh = d.stride_h, sw = d.stride_w;
  // Scratch: one phase row's padded rows, row_floats() = plane_w * sw apart, so that one
  // deinterleave over all of them writes each of its phase planes whole (a long loop: the rows
  // are short, 9 to 17 floats for ResNet-20).
  float* const rows = out + channels * g.channel_floats() + g.slack;
  zero_floats(out + channels * g.channel_floats(), g.slack);
  zero_floats(rows, g.plane_h * g.row_floats());  // the padding columns stay zero
  for (int64_t c = 0; c < channels; ++c) {
    const float* plane = x + c * d.in_h * d.in_w;
    for (int64_t a = 0; a < sh; ++a) {
      const int64_t slot = g.row_slot[static_cast<std::size_t>(a)];
      if (slot < 0) continue;
      for (int64_t i = 0; i < g.plane_h; ++i) {
        const int64_t ih = i * sh + a - d.pad_h;
        float* row = rows + i * g.row_floats() + d.pad_w;
        if (ih >= 0 && ih < d.in_h) {
          copy_floats(row, plane + ih * d.in_w, d.in_w);
        } else {
          zero_floats(row, d.in_w);
        }
      }
      float* dst[kMaxStride] = {};
      for (int64_t b = 0; b < sw; ++b) {
        const int64_t column = g.column_slot[static_cast<std::size_t>(b)];
        if (column < 0) continue;
        dst[b] = out + ((c * g.rows_stored + slot) * g.columns_stored + column) * g.plane_floats();
      }
      deinterleave(rows, sw, g.plane_floats(), dst);
    }
  }
}

std::vector<int32_t> tap_offsets(const Conv2dDesc& d, const Geometry& g, int64_t channels) {
  std::vector<int32_t> offsets;
  offsets.reserve(static_cast<std::size_t>(channels * d.kernel_h * d.kernel_w));
  for (int64_t c = 0; c < channels; ++c) {
    for (int64_t r = 0; r < d.kernel_h; ++r) {
      const int64_t row = r * d.dilation_h;
      const int64_t a = g.row_slot[static_cast<std::size_t>(row % d.stride_h)];
      for (int64_t s = 0; s < d.kernel_w; ++s) {
        const int64_t column = s * d.dilation_w;
        const int64_t b = g.column_slot[static_cast<std::size_t>(column % d.stride_w)];
        const int64_t plane = (c * g.rows_stored + a) * g.columns_stored + b;
        offsets.push_back(static_cast<int32_t>(plane * g.plane_floats() +
                                               row / d.stride_h * g.plane_w + column / d.stride_w));
      }
    }
  }
  return offsets;
}

int64_t DataGeometry::multiply_adds() const {
  int64_t total = 0;
  for (const DataPhase& p : phases) total += static_cast<int64_t>(p.taps.size()) * columns(p);
  return total;
}

bool DataGeometry::every_phase_has_taps() const {
  return std::none_of(phases.begin(), phases.end(),
                      [](const DataPhase& p) { return p.taps.empty(); });
}

DataGeometry make_data(const Conv2dDesc& d, const Geometry& g, int64_t filters, int64_t channels) {
  DataGeometry data;
  data.top = (d.kernel_h - 1) * d.dilation_h / d.stride_h;
  data.left = (d.kernel_w - 1) * d.dilation_w / d.stride_w;
  data.dy_h = g.plane_h + data.top;
  data.dy_w = g.plane_w + data.left;
  data.plane_w = g.plane_w;
  for (int64_t a = 0; a < d.stride_h; ++a) {
    int64_t row_lo, row_hi;
    real_span(a, d.stride_h, d.pad_h, d.in_h, g.plane_h, row_lo, row_hi);
    for (int64_t b = 0; b < d.stride_w; ++b) {
      DataPhase p;
      p.a = a;
      p.b = b;
      p.row_lo = row_lo;
      p.row_hi = row_hi;
      for (int64_t r = 0; r < d.kernel_h; ++r) {
        for (int64_t s = 0; s < d.kernel_w; ++s) {
          if (r * d.dilation_h % d.stride_h == a && s * d.dilation_w % d.stride_w == b) {
            p.taps.push_back(r * d.kernel_w + s);
          }
        }
      }
      // Relative to the phase's first computed pixel, (row_lo, 0).
      for (int64_t k = 0; k < filters; ++k) {
        for (const int64_t t : p.taps) {
          const int64_t r = t / d.kernel_w, s = t % d.kernel_w;
          const int64_t row = p.row_lo + data.top - r * d.dilation_h / d.stride_h;
          const int64_t column = data.left - s * d.dilation_w / d.stride_w;
          p.offsets.push_back(static_cast<int32_t>((k * data.dy_h + row) * data.dy_w + column));
        }
      }
      p.packed_at = data.packed_floats;
      data.packed_floats +=
          direct::packed_size(channels, filters * static_cast<int64_t>(p.taps.size()));
      p.wide_at = data.wide_floats;
      data.wide_floats += channels * data.wide_stride(p);
      data.phases.push_back(std::move(p));
    }
  }
  return data;
}

void merge(const Conv2dDesc& d, const Geometry& g, const DataGeometry& data, int64_t channels,
           const float* wide, float* row, float* dx) {
  const int64_t sh = d.stride_h, sw = d.stride_w;
  for (int64_t c = 0; c < channels; ++c) {
    for (int64_t ih = 0; ih < d.in_h; ++ih) {
      const int64_t pr = ih + d.pad_h, a = pr % sh;
      const float* src[kMaxStride] = {};
      for (int64_t b = 0; b < sw; ++b) {
        const DataPhase& p = data.phases[static_cast<std::size_t>(a * sw + b)];
        src[b] = wide + p.wide_at + c * data.wide_stride(p) + (pr / sh - p.row_lo) * data.dy_w;
      }
      interleave(src, sw, g.plane_w, row);
      copy_floats(dx + (c * d.in_h + ih) * d.in_w, row + d.pad_w, d.in_w);
    }
  }
}

}  // namespace strata::tbb_backend::polyphase

// ---- TbbConv2d's polyphase method: one image group's work ---------------------------------------

namespace strata::tbb_backend {

void TbbConv2d::polyphase_forward(int64_t n, const float* x, const float* bias, float* y,
                                  Workspace& ws) const {
  const Conv2dDesc& d = desc_;
  // Output pixel (oh, ow) is column oh * plane_w + ow of the wide output.
  const int64_t row = polyphase_.plane_w;
  const int64_t wide_stride = d.out_h * row;
  const int64_t columns = direct::wide_columns(d.out_h, d.out_w, row);
  const int64_t packed_stride = direct::packed_size(kg_, rows_);
  for (int64_t g = 0; g < d.groups; ++g) {
    polyphase::split(d, polyphase_, cg_, x + (n * d.in_channels + g * cg_) * in_plane_,
                     ws.col.data());
    round_in_place(ws.col.data(), polyphase_.floats(cg_));
    direct::shifted_gemm(packed() + g * packed_stride, kg_, ws.col.data(),
                         polyphase_offsets_.data(), rows_, columns, ws.gathered.data(),
                         wide_stride);
    crop_wide(n, g, ws.gathered.data(), wide_stride, row, bias, y);
  }
}

void TbbConv2d::polyphase_backward_params(const Block& b, const float* x, const float* dy,
                                          float* dw, Workspace& ws) const {
  const Conv2dDesc& d = desc_;
  const int64_t dy_image_stride = kg_ * polyphase_dy_stride_;
  for (int64_t g = 0; g < d.groups; ++g) {
    for (int64_t i = 0; i < b.images; ++i) {
      const int64_t n = b.n0 + i;
      polyphase::split(d, polyphase_, cg_, x + (n * d.in_channels + g * cg_) * in_plane_,
                       ws.col.data() + i * polyphase_stride_);
      round_in_place(ws.col.data() + i * polyphase_stride_, polyphase_.floats(cg_));
      widen_dy(n, g, dy, polyphase_.plane_w, polyphase_dy_stride_,
               ws.gathered.data() + i * dy_image_stride);
    }
    // One pass over all the block's images: the accumulators are reduced once per block.
    const direct::DotRuns runs{.length = polyphase_dy_stride_,
                               .images = b.images,
                               .a_image_stride = dy_image_stride,
                               .b_image_stride = polyphase_stride_};
    direct::shifted_dot(ws.gathered.data(), kg_, polyphase_dy_stride_, ws.col.data(),
                        polyphase_offsets_.data(), rows_, runs, dw + g * kg_ * rows_, rows_);
  }
}

void TbbConv2d::pack_polyphase_data_weights(const float* w) {
  // Phase p's A[c][(k, q)] = w[k][c][tap q of p]: no flip, the offsets walk dy backwards.
  const int64_t taps = desc_.kernel_h * desc_.kernel_w;
  for (int64_t g = 0; g < desc_.groups; ++g) {
    const float* wg = w + g * kg_ * rows_;
    for (const polyphase::DataPhase& p : polyphase_data_.phases) {
      const auto count = static_cast<int64_t>(p.taps.size());
      if (count == 0) continue;
      direct::pack_rows(
          cg_, kg_ * count,
          [&](int64_t c, int64_t q) {
            return wg[(q / count) * rows_ + c * taps + p.taps[static_cast<std::size_t>(q % count)]];
          },
          packed() + g * polyphase_data_.packed_floats + p.packed_at);
    }
  }
}

void TbbConv2d::polyphase_backward_data(int64_t n, const float* dy, float* dx,
                                        Workspace& ws) const {
  const Conv2dDesc& d = desc_;
  const polyphase::DataGeometry& data = polyphase_data_;
  // ws.col: the padded dy, its slack, then merge's scratch row; ws.gathered: the wide outputs.
  float* padded = ws.col.data();
  float* row = padded + data.dy_floats(kg_) + polyphase_.slack;
  for (int64_t g = 0; g < d.groups; ++g) {
    pad_dy(n, g, dy, {data.dy_h, data.dy_w}, data.top, data.left,
           data.dy_floats(kg_) + polyphase_.slack, padded);
    for (const polyphase::DataPhase& p : data.phases) {
      if (p.row_hi <= p.row_lo) continue;  // no real dx row (merge reads none)
      direct::shifted_gemm(packed() + g * data.packed_floats + p.packed_at, cg_, padded,
                           p.offsets.data(), kg_ * static_cast<int64_t>(p.taps.size()),
                           data.columns(p), ws.gathered.data() + p.wide_at, data.wide_stride(p));
    }
    polyphase::merge(d, polyphase_, data, cg_, ws.gathered.data(), row,
                     dx + (n * d.in_channels + g * cg_) * in_plane_);
  }
}

Conv2dPassArithmetic TbbConv2d::polyphase_data_arithmetic() const {
  return {desc_.groups * cg_ * kg_ * polyphase_data_.multiply_adds(), 0};
}

// Like the direct method's: every wide column of the output (forward: out_h - 1 rows as wide as a
// phase plane, then out_w), every wide row for the weight gradient's zero-filled dy.
Conv2dPassArithmetic TbbConv2d::polyphase_forward_arithmetic() const {
  const Conv2dDesc& d = desc_;
  return {d.groups * kg_ * rows_ * direct::wide_columns(d.out_h, d.out_w, polyphase_.plane_w), 0};
}

Conv2dPassArithmetic TbbConv2d::polyphase_params_arithmetic() const {
  return {desc_.groups * kg_ * rows_ * desc_.out_h * polyphase_.plane_w, 0};
}

}  // namespace strata::tbb_backend
