#include <algorithm>
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

// The taps of one pooling window along one axis: tap i (i_lo <= i < i_hi) reads input index
// start + i*dilation, and only those lie inside the input.
struct Taps {
  int64_t start, dilation, i_lo, i_hi;
  int64_t at(int64_t i) const { return start + i * dilation; }
  int64_t count() const { return i_hi - i_lo; }
};

Taps taps_at(int64_t o, int64_t stride, int64_t pad, int64_t kernel, int64_t dilation, int64_t in) {
  Taps taps{o * stride - pad, dilation, 0, 0};
  taps.i_lo = taps.start >= 0 ? 0 : (-taps.start + dilation - 1) / dilation;
  taps.i_hi = taps.start > in - 1 ? 0 : std::min(kernel, (in - 1 - taps.start) / dilation + 1);
  taps.i_hi = std::max(taps.i_hi, taps.i_lo);
  return taps;
}

// One pooling window: its taps along each axis and the divisor an average uses.
struct Window {
  Taps h, w;
  int64_t divisor;
  bool empty() const { return h.count() <= 0 || w.count() <= 0; }
};

Window window_at(const Pool2dDesc& d, int64_t oh, int64_t ow) {
  Window win;
  win.h = taps_at(oh, d.stride_h, d.pad_h, d.kernel_h, d.dilation_h, d.in_h);
  win.w = taps_at(ow, d.stride_w, d.pad_w, d.kernel_w, d.dilation_w, d.in_w);
  if (d.count_include_pad) {
    // PyTorch: the window clipped to the padded input, padding included (average: dilation 1).
    const int64_t h_end = std::min(win.h.start + d.kernel_h, d.in_h + d.pad_bottom());
    const int64_t w_end = std::min(win.w.start + d.kernel_w, d.in_w + d.pad_right());
    win.divisor = (h_end - win.h.start) * (w_end - win.w.start);
  } else {
    win.divisor = win.empty() ? 0 : win.h.count() * win.w.count();
  }
  return win;
}

// Index (within the plane) of the first maximum of a non-empty window, scanning row-major.
int64_t first_max(const Pool2dDesc& d, const float* plane, const Window& win) {
  int64_t best = win.h.at(win.h.i_lo) * d.in_w + win.w.at(win.w.i_lo);
  for (int64_t i = win.h.i_lo; i < win.h.i_hi; ++i) {
    for (int64_t j = win.w.i_lo; j < win.w.i_hi; ++j) {
      const int64_t index = win.h.at(i) * d.in_w + win.w.at(j);
      const float v = plane[index];
      if (v > plane[best] || (std::isnan(v) && !std::isnan(plane[best]))) best = index;
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
        for (int64_t i = win.h.i_lo; i < win.h.i_hi; ++i) {
          for (int64_t j = win.w.i_lo; j < win.w.i_hi; ++j)
            sum += plane[win.h.at(i) * d.in_w + win.w.at(j)];
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
        for (int64_t i = win.h.i_lo; i < win.h.i_hi; ++i) {
          for (int64_t j = win.w.i_lo; j < win.w.i_hi; ++j) {
            grad_in[win.h.at(i) * d.in_w + win.w.at(j)] += share;
          }
        }
      }
    }
  }
}

}  // namespace strata::reference
