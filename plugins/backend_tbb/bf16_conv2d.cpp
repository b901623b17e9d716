#include "bf16_conv2d.hpp"

#include <algorithm>
#include <cstring>

#include "bf16_gemm.hpp"
#include "strata/error.hpp"
#include "tbb_kernels.hpp"

namespace strata::tbb_backend {

namespace {

// Floats of one block's col matrix (1 MiB): with its packed copy, within a core's L2.
constexpr int64_t kColsBudget = int64_t{1} << 18;
// Columns a block aims for: several 48-wide panels per packed row block.
constexpr int64_t kTargetColumns = 512;

void check_shape(std::string_view what, const Tensor& t, const Shape& expected) {
  if (t.shape() != expected) {
    fail("tbb conv2d (bf16): {} has shape {}, expected {}", what, t.shape().str(), expected.str());
  }
}

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
  pointwise_ = d.kernel_h == 1 && d.kernel_w == 1 && d.stride_h == 1 && d.stride_w == 1 &&
               d.pad_h == 0 && d.pad_w == 0 && d.out_h == d.in_h && d.out_w == d.in_w;
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

void TbbBf16Conv2d::im2col(const float* x, int64_t images, float* cols) const {
  const Conv2dDesc& d = desc_;
  const int64_t columns = images * out_plane_;
  for (int64_t c = 0; c < d.in_channels; ++c) {
    for (int64_t r = 0; r < d.kernel_h; ++r) {
      for (int64_t s = 0; s < d.kernel_w; ++s) {
        float* row = cols + ((c * d.kernel_h + r) * d.kernel_w + s) * columns;
        // Output columns [lo, hi) read inside the input: iw = ow * stride - pad + s * dilation.
        const int64_t offset = s * d.dilation_w - d.pad_w;
        const int64_t lo = first_at_least(offset, d.stride_w, 0, d.out_w);
        const int64_t hi = std::max(lo, first_at_least(offset, d.stride_w, d.in_w, d.out_w));
        for (int64_t img = 0; img < images; ++img) {
          const float* plane = x + (img * d.in_channels + c) * in_plane_;
          for (int64_t oh = 0; oh < d.out_h; ++oh) {
            float* out = row + img * out_plane_ + oh * d.out_w;
            const int64_t ih = oh * d.stride_h - d.pad_h + r * d.dilation_h;
            if (ih < 0 || ih >= d.in_h) {
              std::fill(out, out + d.out_w, 0.0f);
              continue;
            }
            const float* in = plane + ih * d.in_w + offset;
            std::fill(out, out + lo, 0.0f);
            if (d.stride_w == 1) {
              std::copy(in + lo, in + hi, out + lo);
            } else {
              for (int64_t ow = lo; ow < hi; ++ow) out[ow] = in[ow * d.stride_w];
            }
            std::fill(out + hi, out + d.out_w, 0.0f);
          }
        }
      }
    }
  }
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

void TbbBf16Conv2d::pack_weights(const float* w, bool transposed) {
  const int64_t count = transposed ? crs_ : kg_, k = transposed ? kg_ : crs_;
  const int64_t width = bf16::kRows;
  packed_group_ = bf16::packed_size(count, k, width);
  uint16_t* out = grown(packed_weights_, packed_group_ * desc_.groups);
  const int64_t panels = bf16::panels(count, width);
  parallel_chunks(desc_.groups * panels, std::max<int64_t>(1, 4096 / std::max<int64_t>(1, k)),
                  [&](int64_t lo, int64_t hi) {
                    for (int64_t t = lo; t < hi; ++t) {
                      const int64_t g = t / panels, panel = t % panels;
                      // W of group g: rows kg (filters), each crs long.
                      const float* wg = w + g * kg_ * crs_;
                      const bf16::Operand op = transposed ? bf16::Operand::along_i(wg, crs_)
                                                          : bf16::Operand::along_k(wg, crs_);
                      bf16::pack(op, count, k, width, panel, panel + 1, out + g * packed_group_);
                    }
                  });
}

void TbbBf16Conv2d::forward(const Tensor& x, const Tensor& weight, const Tensor* bias, Tensor& y) {
  const Conv2dDesc& d = desc_;
  const int64_t n_batch = x.rank() == 4 ? x.dim(0) : -1;
  check_shape("x", x, {n_batch, d.in_channels, d.in_h, d.in_w});
  check_shape("weight", weight, {d.out_channels, cg_, d.kernel_h, d.kernel_w});
  const bool has_bias = bias != nullptr && bias->defined();
  if (has_bias) check_shape("bias", *bias, {d.out_channels});
  check_shape("y", y, {n_batch, d.out_channels, d.out_h, d.out_w});
  if (n_batch == 0) return;
  pack_weights(weight.data(), false);
  const float* xp = x.data();
  const float* bp = has_bias ? bias->data() : nullptr;
  float* yp = y.data();
  for_each_block(n_batch, [&](Workspace& ws, int64_t n0, int64_t count) {
    const int64_t columns = count * out_plane_;
    const float* image = xp + n0 * d.in_channels * in_plane_;
    if (!pointwise_) im2col(image, count, grown(ws.cols, crs_ * d.groups * columns));
    float* product = grown(ws.product, kg_ * columns);
    uint16_t* packed = grown(ws.packed_b, bf16::packed_size(columns, crs_, bf16::kColumns));
    for (int64_t g = 0; g < d.groups; ++g) {
      // B: crs_ x columns, the columns contiguous (runs of one image each when pointwise).
      const bf16::Operand b =
          pointwise_ ? bf16::Operand::along_i(image + g * cg_ * in_plane_, in_plane_, in_plane_,
                                              d.in_channels * in_plane_)
                     : bf16::Operand::along_i(ws.cols.data() + g * crs_ * columns, columns);
      bf16::pack(b, columns, crs_, bf16::kColumns, 0, bf16::panels(columns, bf16::kColumns),
                 packed);
      bf16::multiply(packed_weights_.data() + g * packed_group_, packed, crs_, 0, kg_, 0, columns,
                     1.0f, 0.0f, product, columns);
      for (int64_t img = 0; img < count; ++img) {
        for (int64_t k = 0; k < kg_; ++k) {
          const int64_t channel = g * kg_ + k;
          const float* src = product + k * columns + img * out_plane_;
          float* dst = yp + ((n0 + img) * d.out_channels + channel) * out_plane_;
          const float add = bp != nullptr ? bp[channel] : 0.0f;
          for (int64_t i = 0; i < out_plane_; ++i) dst[i] = src[i] + add;
        }
      }
    }
  });
}

void TbbBf16Conv2d::backward_data(const Tensor& dy, const Tensor& weight, Tensor& dx) {
  if (!dx.defined()) return;
  const Conv2dDesc& d = desc_;
  const int64_t n_batch = dy.rank() == 4 ? dy.dim(0) : -1;
  check_shape("dy", dy, {n_batch, d.out_channels, d.out_h, d.out_w});
  check_shape("weight", weight, {d.out_channels, cg_, d.kernel_h, d.kernel_w});
  check_shape("dx", dx, {n_batch, d.in_channels, d.in_h, d.in_w});
  if (n_batch == 0) return;
  pack_weights(weight.data(), true);
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
  const int64_t n_batch = dy.rank() == 4 ? dy.dim(0) : -1;
  check_shape("dy", dy, {n_batch, d.out_channels, d.out_h, d.out_w});
  const float* dyp = dy.data();
  if (want_bias) {  // the float dy, summed in double per filter (a fixed order)
    check_shape("dbias", *dbias, {d.out_channels});
    float* db = dbias->data();
    parallel_chunks(d.out_channels, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t k = lo; k < hi; ++k) {
        double sum = 0;
        for (int64_t n = 0; n < n_batch; ++n) {
          const float* plane = dyp + (n * d.out_channels + k) * out_plane_;
          for (int64_t i = 0; i < out_plane_; ++i) sum += plane[i];
        }
        db[k] = static_cast<float>(sum);
      }
    });
  }
  if (!want_weight) return;
  check_shape("x", x, {n_batch, d.in_channels, d.in_h, d.in_w});
  check_shape("dweight", dweight, {d.out_channels, cg_, d.kernel_h, d.kernel_w});
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
        if (!pointwise_) im2col(image, count, grown(ws.cols, crs_ * d.groups * columns));
        uint16_t* packed_a = grown(ws.packed_a, bf16::packed_size(kg_, columns, bf16::kRows));
        uint16_t* packed_b = grown(ws.packed_b, bf16::packed_size(crs_, columns, bf16::kColumns));
        for (int64_t g = 0; g < d.groups; ++g) {
          // A: dy of the group, kg_ x columns (k), k in runs of one image.
          const bf16::Operand a =
              bf16::Operand::along_k(dyp + (n0 * d.out_channels + g * kg_) * out_plane_, out_plane_,
                                     out_plane_, d.out_channels * out_plane_);
          // B: cols^T, crs_ columns each `columns` long (k contiguous).
          const bf16::Operand b =
              pointwise_ ? bf16::Operand::along_k(image + g * cg_ * in_plane_, in_plane_, in_plane_,
                                                  d.in_channels * in_plane_)
                         : bf16::Operand::along_k(ws.cols.data() + g * crs_ * columns, columns);
          bf16::pack(a, kg_, columns, bf16::kRows, 0, bf16::panels(kg_, bf16::kRows), packed_a);
          bf16::pack(b, crs_, columns, bf16::kColumns, 0, bf16::panels(crs_, bf16::kColumns),
                     packed_b);
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
