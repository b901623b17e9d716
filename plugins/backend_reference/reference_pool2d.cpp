#include <cmath>
#include <limits>

#include "reference_kernels.hpp"
#include "strata/error.hpp"

namespace strata::reference {

namespace {

using Mode = Pool2dDesc::Mode;

void check_shape(std::string_view what, const Tensor& t, const Shape& expected) {
  if (t.shape() != expected) {
    fail("reference pool2d: {} has shape {}, expected {}", what, t.shape().str(), expected.str());
  }
}

// One pooling window: rows [h_lo, h_hi) and columns [w_lo, w_hi) of the input that it covers,
// and the divisor an average uses.
struct Window {
  int64_t h_lo, h_hi, w_lo, w_hi;
  int64_t divisor;
  bool empty() const { return h_lo >= h_hi || w_lo >= w_hi; }
};

Window window_at(const Pool2dDesc& d, int64_t oh, int64_t ow) {
  const int64_t h_start = oh * d.stride_h - d.pad_h;
  const int64_t w_start = ow * d.stride_w - d.pad_w;
  Window win;
  win.h_lo = std::max<int64_t>(h_start, 0);
  win.h_hi = std::min(h_start + d.kernel_h, d.in_h);
  win.w_lo = std::max<int64_t>(w_start, 0);
  win.w_hi = std::min(w_start + d.kernel_w, d.in_w);
  if (d.count_include_pad) {
    // PyTorch: the window clipped to the padded input, padding included.
    const int64_t h_end = std::min(h_start + d.kernel_h, d.in_h + d.pad_h);
    const int64_t w_end = std::min(w_start + d.kernel_w, d.in_w + d.pad_w);
    win.divisor = (h_end - h_start) * (w_end - w_start);
  } else {
    win.divisor = win.empty() ? 0 : (win.h_hi - win.h_lo) * (win.w_hi - win.w_lo);
  }
  return win;
}

// Index (within the plane) of the first maximum of a non-empty window, scanning row-major.
int64_t first_max(const Pool2dDesc& d, const float* plane, const Window& win) {
  int64_t best = win.h_lo * d.in_w + win.w_lo;
  for (int64_t h = win.h_lo; h < win.h_hi; ++h) {
    for (int64_t w = win.w_lo; w < win.w_hi; ++w) {
      const float v = plane[h * d.in_w + w];
      if (v > plane[best] || (std::isnan(v) && !std::isnan(plane[best]))) best = h * d.in_w + w;
    }
  }
  return best;
}

}  // namespace

void ReferencePool2d::on_prepare() {
  const Pool2dDesc& d = desc_;
  validate(d, "reference pool2d");
}

void ReferencePool2d::forward(const Tensor& x, Tensor& y) {
  const Pool2dDesc& d = desc_;
  const int64_t n_batch = x.rank() == 4 ? x.dim(0) : -1;
  check_shape("x", x, {n_batch, d.channels, d.in_h, d.in_w});
  check_shape("y", y, {n_batch, d.channels, d.out_h, d.out_w});
  for (int64_t p = 0; p < n_batch * d.channels; ++p) {
    const float* plane = x.data() + p * d.in_h * d.in_w;
    float* out = y.data() + p * d.out_h * d.out_w;
    for (int64_t oh = 0; oh < d.out_h; ++oh) {
      for (int64_t ow = 0; ow < d.out_w; ++ow) {
        const Window win = window_at(d, oh, ow);
        float& result = out[oh * d.out_w + ow];
        if (d.mode == Mode::kMax) {
          result = win.empty() ? -std::numeric_limits<float>::infinity()
                               : plane[first_max(d, plane, win)];
          continue;
        }
        double sum = 0;
        for (int64_t h = win.h_lo; h < win.h_hi; ++h) {
          for (int64_t w = win.w_lo; w < win.w_hi; ++w) sum += plane[h * d.in_w + w];
        }
        result = win.empty() ? 0.0f : static_cast<float>(sum / static_cast<double>(win.divisor));
      }
    }
  }
}

void ReferencePool2d::backward(const Tensor& x, const Tensor& y, const Tensor& dy, Tensor& dx) {
  if (!dx.defined()) return;
  const Pool2dDesc& d = desc_;
  const int64_t n_batch = dy.rank() == 4 ? dy.dim(0) : -1;
  check_shape("dy", dy, {n_batch, d.channels, d.out_h, d.out_w});
  check_shape("dx", dx, {n_batch, d.channels, d.in_h, d.in_w});
  if (d.mode == Mode::kMax) check_shape("x", x, {n_batch, d.channels, d.in_h, d.in_w});
  dx.fill(0.0f);
  for (int64_t p = 0; p < n_batch * d.channels; ++p) {
    const float* grad_out = dy.data() + p * d.out_h * d.out_w;
    float* grad_in = dx.data() + p * d.in_h * d.in_w;
    for (int64_t oh = 0; oh < d.out_h; ++oh) {
      for (int64_t ow = 0; ow < d.out_w; ++ow) {
        const Window win = window_at(d, oh, ow);
        if (win.empty()) continue;
        const float grad = grad_out[oh * d.out_w + ow];
        if (d.mode == Mode::kMax) {
          grad_in[first_max(d, x.data() + p * d.in_h * d.in_w, win)] += grad;
          continue;
        }
        const float share = static_cast<float>(static_cast<double>(grad) / win.divisor);
        for (int64_t h = win.h_lo; h < win.h_hi; ++h) {
          for (int64_t w = win.w_lo; w < win.w_hi; ++w) grad_in[h * d.in_w + w] += share;
        }
      }
    }
  }
}

}  // namespace strata::reference
