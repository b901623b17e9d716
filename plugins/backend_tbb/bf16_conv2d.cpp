#include "bf16_conv2d.hpp"

#include <algorithm>
#include <cstring>

#include "bf16_gemm.hpp"
#include "tbb_kernels.hpp"

namespace strata::tbb_backend {

namespace {

// Floats of one block's col matrix (1 MiB): with its packed copy, within a core's L2.
constexpr int64_t kColsBudget = int64_t{1} << 18;
// Columns a block aims for: several 48-wide panels per packed row block.
constexpr int64_t kTargetColumns = 512;

constexpr std::string_view kName = "tbb conv2d (bf16)";

template <class T>
T* grown(std::vector<T>& buffer, int64_t size) {
  if (static_cast<int64_t>(buffer.size()) < size) buffer.resize(static_cast<std::size_t>(size));
  return buffer.data();
}

// The first output index o in [0, out) with o * stride + offset >= bound (out when none).
int64_t first_at_least(int64_t offset, int64_t stride, int64_t bound, int64_t out) {
  if (offset >= bound) return 0;
  return std::min(out, (bound - offset + stride - 1) / stride);
}

}  // namespace

void TbbBf16Conv2d::on_prepare() {
  const Conv2dDesc& d = desc_;
  validate(d, "tbb conv2d");
  bf16::require_cpu("tbb conv2d");
  cg_ = d.in_channels / d.groups;
  kg_ = d.out_channels / d.groups;
  crs_ = cg_ * d.kernel_h * d.kernel_w;
  in_plane_ = d.in_h * d.in_w;
  out_plane_ = d.out_h * d.out_w;
  // The per-row taps of the two col matrices: of x (forward, backward_params) and of dy (the
  // stride-1 backward_data's correlation).
  for (const bool of_dy : {false, true}) {
    bf16::Im2col g;
    g.channels = of_dy ? kg_ : cg_;
    g.kh = d.kernel_h;
    g.kw = d.kernel_w;
    g.dh = d.dilation_h;
    g.dw = d.dilation_w;
    g.in_h = of_dy ? d.out_h : d.in_h;
    g.in_w = of_dy ? d.out_w : d.in_w;
    g.in_plane = g.in_h * g.in_w;
    std::vector<int32_t>& taps = of_dy ? dy_taps_ : input_taps_;
    taps.resize(static_cast<std::size_t>(3 * g.rows()));
    bf16::tabulate_taps(g, taps.data(), taps.data() + g.rows(), taps.data() + 2 * g.rows());
  }
  pointwise_ = d.kernel_h == 1 && d.kernel_w == 1 && d.stride_h == 1 && d.stride_w == 1 &&
               d.pad_h == 0 && d.pad_w == 0 && d.out_h == d.in_h && d.out_w == d.in_w;
}

Conv2dArithmetic TbbBf16Conv2d::arithmetic() const {
  const Conv2dDesc& d = desc_;
  const Conv2dPassArithmetic direct{conv2d_direct_multiply_adds(d), 0};
  Conv2dPassArithmetic data = direct;  // pointwise: dx is the product itself
  if (!pointwise_ && d.stride_h == 1 && d.stride_w == 1) {
    data = {d.groups * cg_ * kg_ * d.kernel_h * d.kernel_w * in_plane_, 0};
  } else if (!pointwise_) {
    data.other_flops = col2im_additions(d);
  }
  return {direct, data, direct};
}

template <class Body>
void TbbBf16Conv2d::for_each_block(int64_t n_batch, const Body& body) {
  const int64_t images = images_per_block(n_batch);
  const int64_t blocks = (n_batch + images - 1) / images;
  parallel_chunks(blocks, 1, [&](int64_t lo, int64_t hi) {
    Workspace& ws = local_workspace();
    for (int64_t block = lo; block < hi; ++block) {
      const int64_t n0 = block * images;
      body(ws, n0, std::min(images, n_batch - n0));
    }
  });
}

int64_t TbbBf16Conv2d::images_per_block(int64_t n_batch) const {
  const int64_t rows = desc_.in_channels * desc_.kernel_h * desc_.kernel_w;
  int64_t images = std::max<int64_t>(1, (kTargetColumns + out_plane_ - 1) / out_plane_);
  images =
      std::min(images, std::max<int64_t>(1, kColsBudget / std::max<int64_t>(1, rows * out_plane_)));
  // At least two blocks per thread when the batch allows, for balance.
  const int64_t per_thread = (n_batch + 2 * allowed_threads() - 1) / (2 * allowed_threads());
  return std::clamp<int64_t>(std::min(images, per_thread), 1, std::max<int64_t>(1, n_batch));
}

void TbbBf16Conv2d::column_taps(int64_t images, Extent out, Extent in, int64_t stride,
                                int64_t pad_h, int64_t pad_w, int64_t image_stride,
                                Workspace& ws) const {
  const int64_t plane = out.h * out.w, columns = images * plane;
  const int64_t stride_h = stride > 0 ? stride : desc_.stride_h;
  const int64_t stride_w = stride > 0 ? stride : desc_.stride_w;
  int32_t* base = grown(ws.base, columns);
  int32_t* ih0 = grown(ws.ih0, columns);
  int32_t* iw0 = grown(ws.iw0, columns);
  for (int64_t j = 0; j < columns; ++j) {
    const int64_t img = j / plane, oh = (j % plane) / out.w, ow = j % out.w;
    const int64_t ih = oh * stride_h - pad_h, iw = ow * stride_w - pad_w;
    ih0[j] = static_cast<int32_t>(ih);
    iw0[j] = static_cast<int32_t>(iw);
    base[j] = static_cast<int32_t>(img * image_stride + ih * in.w + iw);
  }
}

bf16::Im2col TbbBf16Conv2d::gathered(const float* data, int64_t channels, Extent in,
                                     bool unit_stride, const Workspace& ws) const {
  bf16::Im2col g;
  g.data = data;
  g.channels = channels;
  g.kh = desc_.kernel_h;
  g.kw = desc_.kernel_w;
  g.dh = desc_.dilation_h;
  g.dw = desc_.dilation_w;
  g.in_h = in.h;
  g.in_w = in.w;
  g.in_plane = in.h * in.w;
  g.base = ws.base.data();
  g.ih0 = ws.ih0.data();
  g.iw0 = ws.iw0.data();
  g.unit_stride = unit_stride;
  const std::vector<int32_t>& taps =
      channels == cg_ && in.h == desc_.in_h && in.w == desc_.in_w ? input_taps_ : dy_taps_;
  const int64_t rows = g.rows();
  g.tap_offset = taps.data();
  g.tap_dr = taps.data() + rows;
  g.tap_ds = taps.data() + 2 * rows;
  return g;
}

void TbbBf16Conv2d::col2im(const float* cols, int64_t images, int64_t columns, int64_t group,
                           float* dx) const {
  const Conv2dDesc& d = desc_;
  for (int64_t c = 0; c < cg_; ++c) {
    for (int64_t r = 0; r < d.kernel_h; ++r) {
      for (int64_t s = 0; s < d.kernel_w; ++s) {
        const float* row = cols + ((c * d.kernel_h + r) * d.kernel_w + s) * columns;
        const int64_t offset = s * d.dilation_w - d.pad_w;
        const int64_t lo = first_at_least(offset, d.stride_w, 0, d.out_w);
        const int64_t hi = std::max(lo, first_at_least(offset, d.stride_w, d.in_w, d.out_w));
        for (int64_t img = 0; img < images; ++img) {
          float* plane = dx + (img * d.in_channels + group * cg_ + c) * in_plane_;
          for (int64_t oh = 0; oh < d.out_h; ++oh) {
            const int64_t ih = oh * d.stride_h - d.pad_h + r * d.dilation_h;
            if (ih < 0 || ih >= d.in_h) continue;
            const float* in = row + img * out_plane_ + oh * d.out_w;
            float* out = plane + ih * d.in_w + offset;
            for (int64_t ow = lo; ow < hi; ++ow) out[ow * d.stride_w] += in[ow];
          }
        }
      }
    }
  }
}

void TbbBf16Conv2d::pack_weights(const float* w, WeightForm form) {
  const Conv2dDesc& d = desc_;
  const int64_t taps = d.kernel_h * d.kernel_w;
  // Rows and k of each group's A; the flipped weights are built first, [group][c][k][R-1-r][S-1-s].
  int64_t count = kg_, k = crs_;
  const float* source = w;
  int64_t group_stride = kg_ * crs_;
  if (form == WeightForm::kTransposed) {
    count = crs_;
    k = kg_;
  } else if (form == WeightForm::kFlipped) {
    count = cg_;
    k = kg_ * taps;
    float* flipped = grown(flipped_, d.out_channels * crs_);
    for (int64_t g = 0; g < d.groups; ++g) {
      for (int64_t f = 0; f < kg_; ++f) {
        for (int64_t c = 0; c < cg_; ++c) {
          const float* from = w + ((g * kg_ + f) * cg_ + c) * taps;
          float* to = flipped + ((g * cg_ + c) * kg_ + f) * taps;
          for (int64_t t = 0; t < taps; ++t) to[t] = from[taps - 1 - t];
        }
      }
    }
    source = flipped;
    group_stride = cg_ * kg_ * taps;
  }
  const int64_t width = bf16::kRows;
  packed_group_ = bf16::packed_size(count, k, width);
  uint16_t* out = grown(packed_weights_, packed_group_ * d.groups);
  const int64_t panels = bf16::panels(count, width);
  parallel_chunks(d.groups * panels, std::max<int64_t>(1, 4096 / std::max<int64_t>(1, k)),
                  [&](int64_t lo, int64_t hi) {
                    for (int64_t t = lo; t < hi; ++t) {
                      const int64_t g = t / panels, panel = t % panels;
                      const float* wg = source + g * group_stride;
                      // Rows of A are contiguous runs of k, except transposed (W^T).
                      const bf16::Operand op = form == WeightForm::kTransposed
                                                   ? bf16::Operand::along_i(wg, crs_)
                                                   : bf16::Operand::along_k(wg, k);
                      bf16::pack(op, count, k, width, panel, panel + 1, out + g * packed_group_);
                    }
                  });
}

void TbbBf16Conv2d::data_by_correlation(const float* dyp, float* dxp, int64_t n_batch) {
  const Conv2dDesc& d = desc_;
  const int64_t pad_h = d.dilation_h * (d.kernel_h - 1) - d.pad_h;
  const int64_t pad_w = d.dilation_w * (d.kernel_w - 1) - d.pad_w;
  const int64_t k = kg_ * d.kernel_h * d.kernel_w;
  for_each_block(n_batch, [&](Workspace& ws, int64_t n0, int64_t count) {
    const int64_t columns = count * in_plane_;  // dx positions
    column_taps(count, {d.in_h, d.in_w}, {d.out_h, d.out_w}, 1, pad_h, pad_w,
                d.out_channels * out_plane_, ws);
    float* product = grown(ws.product, cg_ * columns);
    uint16_t* packed = grown(ws.packed_b, bf16::packed_size(columns, k, bf16::kColumns));
    const float* dy_block = dyp + n0 * d.out_channels * out_plane_;
    for (int64_t g = 0; g < d.groups; ++g) {
      bf16::pack_im2col_columns(
          gathered(dy_block + g * kg_ * out_plane_, kg_, {d.out_h, d.out_w}, true, ws), columns, 0,
          bf16::panels(columns, bf16::kColumns), packed);
      bf16::multiply(packed_weights_.data() + g * packed_group_, packed, k, 0, cg_, 0, columns,
                     1.0f, 0.0f, product, columns);
      for (int64_t img = 0; img < count; ++img) {
        for (int64_t c = 0; c < cg_; ++c) {
          const float* src = product + c * columns + img * in_plane_;
          std::copy(src, src + in_plane_,
                    dxp + ((n0 + img) * d.in_channels + g * cg_ + c) * in_plane_);
        }
      }
    }
  });
}

void TbbBf16Conv2d::forward(const Tensor& x, const Tensor& weight, const Tensor* bias, Tensor& y) {
  const Conv2dDesc& d = desc_;
  const int64_t n_batch = conv2d_forward_batch(d, x, weight, bias, y, kName);
  const bool has_bias = bias != nullptr && bias->defined();
  if (n_batch == 0) return;
  pack_weights(weight.data(), WeightForm::kForward);
  const bool unit_stride = d.stride_h == 1 && d.stride_w == 1;
  const float* xp = x.data();
  const float* bp = has_bias ? bias->data() : nullptr;
  float* yp = y.data();
  for_each_block(n_batch, [&](Workspace& ws, int64_t n0, int64_t count) {
    const int64_t columns = count * out_plane_;
    const float* image = xp + n0 * d.in_channels * in_plane_;
    if (!pointwise_) {
      column_taps(count, {d.out_h, d.out_w}, {d.in_h, d.in_w}, 0, d.pad_h, d.pad_w,
                  d.in_channels * in_plane_, ws);
    }
    float* product = grown(ws.product, kg_ * columns);
    uint16_t* packed = grown(ws.packed_b, bf16::packed_size(columns, crs_, bf16::kColumns));
    for (int64_t g = 0; g < d.groups; ++g) {
      // B: crs_ x columns, gathered from the images (their planes themselves when pointwise).
      const float* group_image = image + g * cg_ * in_plane_;
      const int64_t b_panels = bf16::panels(columns, bf16::kColumns);
      if (pointwise_) {
        bf16::pack(
            bf16::Operand::along_i(group_image, in_plane_, in_plane_, d.in_channels * in_plane_),
            columns, crs_, bf16::kColumns, 0, b_panels, packed);
      } else {
        bf16::pack_im2col_columns(gathered(group_image, cg_, {d.in_h, d.in_w}, unit_stride, ws),
                                  columns, 0, b_panels, packed);
      }
      bf16::multiply(packed_weights_.data() + g * packed_group_, packed, crs_, 0, kg_, 0, columns,
                     1.0f, 0.0f, product, columns);
      scatter_planes(product, columns, count, out_plane_, g * kg_, kg_, d.out_channels, bp,
                     yp + n0 * d.out_channels * out_plane_);
    }
  });
}

void TbbBf16Conv2d::backward_data(const Tensor& dy, const Tensor& weight, Tensor& dx) {
  if (!dx.defined()) return;
  const Conv2dDesc& d = desc_;
  const int64_t n_batch = conv2d_data_batch(d, dy, weight, dx, kName);
  if (n_batch == 0) return;
  if (!pointwise_ && d.stride_h == 1 && d.stride_w == 1) {
    pack_weights(weight.data(), WeightForm::kFlipped);
    data_by_correlation(dy.data(), dx.data(), n_batch);
    return;
  }
  pack_weights(weight.data(), WeightForm::kTransposed);
  const float* dyp = dy.data();
  float* dxp = dx.data();
  for_each_block(n_batch, [&](Workspace& ws, int64_t n0, int64_t count) {
    const int64_t columns = count * out_plane_;
    float* dx_block = dxp + n0 * d.in_channels * in_plane_;
    if (!pointwise_) std::fill(dx_block, dx_block + count * d.in_channels * in_plane_, 0.0f);
    float* product = grown(ws.product, crs_ * columns);
    uint16_t* packed = grown(ws.packed_b, bf16::packed_size(columns, kg_, bf16::kColumns));
    for (int64_t g = 0; g < d.groups; ++g) {
      // B: dy of the group, kg_ x columns, in runs of one image.
      const bf16::Operand b =
          bf16::Operand::along_i(dyp + (n0 * d.out_channels + g * kg_) * out_plane_, out_plane_,
                                 out_plane_, d.out_channels * out_plane_);
      bf16::pack(b, columns, kg_, bf16::kColumns, 0, bf16::panels(columns, bf16::kColumns), packed);
      bf16::multiply(packed_weights_.data() + g * packed_group_, packed, kg_, 0, crs_, 0, columns,
                     1.0f, 0.0f, product, columns);
      if (!pointwise_) {
        col2im(product, count, columns, g, dx_block);
        continue;
      }
      for (int64_t img = 0; img < count; ++img) {  // pointwise: the columns are dx itself
        for (int64_t c = 0; c < cg_; ++c) {
          const float* src = product + c * columns + img * out_plane_;
          std::copy(src, src + in_plane_,
                    dx_block + (img * d.in_channels + g * cg_ + c) * in_plane_);
        }
      }
    }
  });
}

void TbbBf16Conv2d::backward_params(const Tensor& x, const Tensor& dy, Tensor& dweight,
                                    Tensor* dbias) {
  const bool want_weight = dweight.defined();
  const bool want_bias = dbias != nullptr && dbias->defined();
  if (!want_weight && !want_bias) return;
  const Conv2dDesc& d = desc_;
  const int64_t n_batch = conv2d_params_batch(d, x, dy, dweight, dbias, kName);
  const float* dyp = dy.data();
  if (want_bias) {  // the float dy, summed in double per filter (a fixed order)
    parallel_chunks(d.out_channels, 1, [&](int64_t lo, int64_t hi) {
      conv2d_bias_gradient(d, dyp, n_batch, lo, hi, dbias->data());
    });
  }
  if (!want_weight) return;
  const int64_t size = dweight.numel();
  float* dw = dweight.data();
  if (n_batch == 0) {
    std::fill(dw, dw + size, 0.0f);
    return;
  }
  const float* xp = x.data();
  const int64_t images = images_per_block(n_batch);
  const int64_t blocks = (n_batch + images - 1) / images;
  const int64_t slices = std::min<int64_t>(blocks, 2 * allowed_threads());
  float* partials = grown(partials_, slices * size);
  parallel_chunks(slices, 1, [&](int64_t lo, int64_t hi) {
    Workspace& ws = local_workspace();
    for (int64_t slice = lo; slice < hi; ++slice) {
      float* partial = partials + slice * size;
      const int64_t first = slice * blocks / slices, end = (slice + 1) * blocks / slices;
      for (int64_t block = first; block < end; ++block) {
        const int64_t n0 = block * images, count = std::min(images, n_batch - n0);
        const int64_t columns = count * out_plane_;
        const float* image = xp + n0 * d.in_channels * in_plane_;
        if (!pointwise_) {
          column_taps(count, {d.out_h, d.out_w}, {d.in_h, d.in_w}, 0, d.pad_h, d.pad_w,
                      d.in_channels * in_plane_, ws);
        }
        uint16_t* packed_a = grown(ws.packed_a, bf16::packed_size(kg_, columns, bf16::kRows));
        uint16_t* packed_b = grown(ws.packed_b, bf16::packed_size(crs_, columns, bf16::kColumns));
        for (int64_t g = 0; g < d.groups; ++g) {
          // A: dy of the group, kg_ x columns (k), k in runs of one image.
          const bf16::Operand a =
              bf16::Operand::along_k(dyp + (n0 * d.out_channels + g * kg_) * out_plane_, out_plane_,
                                     out_plane_, d.out_channels * out_plane_);
          // B: cols^T, crs_ columns each `columns` long, gathered from the images.
          const float* group_image = image + g * cg_ * in_plane_;
          const int64_t b_panels = bf16::panels(crs_, bf16::kColumns);
          bf16::pack(a, kg_, columns, bf16::kRows, 0, bf16::panels(kg_, bf16::kRows), packed_a);
          if (pointwise_) {
            bf16::pack(bf16::Operand::along_k(group_image, in_plane_, in_plane_,
                                              d.in_channels * in_plane_),
                       crs_, columns, bf16::kColumns, 0, b_panels, packed_b);
          } else {
            bf16::pack_im2col_rows(gathered(group_image, cg_, {d.in_h, d.in_w}, false, ws), columns,
                                   0, b_panels, packed_b);
          }
          bf16::multiply(packed_a, packed_b, columns, 0, kg_, 0, crs_, 1.0f,
                         block == first ? 0.0f : 1.0f, partial + g * kg_ * crs_, crs_);
        }
      }
    }
  });
  // dW = the slices' partials added in slice order.
  parallel_chunks(size, 16384, [&](int64_t lo, int64_t hi) {
    std::copy(partials + lo, partials + hi, dw + lo);
    for (int64_t slice = 1; slice < slices; ++slice) {
      const float* partial = partials + slice * size;
      for (int64_t i = lo; i < hi; ++i) dw[i] += partial[i];
    }
  });
}

}  // namespace strata::tbb_backend
