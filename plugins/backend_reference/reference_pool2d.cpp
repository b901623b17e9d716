#include <cmath>
#include <limits>

#include "reference_kernels.hpp"

namespace strata::reference {

namespace {

using Mode = Pool2dDesc::Mode;

constexpr std::string_view kName = "reference pool2d";

// One pooling window: its taps along each axis (pool_taps) and the divisor an average uses.
struct Window {
  PoolTaps h, w;
  int64_t dilation_h, dilation_w, in_w;
  int64_t divisor;
  bool empty() const { return h.count() <= 0 || w.count() <= 0; }
  // Index (within the plane) of tap (i, j).
  int64_t at(int64_t i, int64_t j) const {
    return (h.start + i * dilation_h) * in_w + w.start + j * dilation_w;
  }
};

Window window_at(const Pool2dDesc& d, int64_t oh, int64_t ow) {
  Window win;
  win.h = pool_taps(oh, d.stride_h, d.pad_h, d.pad_bottom(), d.kernel_h, d.dilation_h, d.in_h);
  win.w = pool_taps(ow, d.stride_w, d.pad_w, d.pad_right(), d.kernel_w, d.dilation_w, d.in_w);
  win.dilation_h = d.dilation_h;
  win.dilation_w = d.dilation_w;
  win.in_w = d.in_w;
  // count_include_pad: PyTorch's window clipped to the padded input, padding included.
  win.divisor = d.count_include_pad ? win.h.span * win.w.span
                : win.empty()       ? 0
                                    : win.h.count() * win.w.count();
  return win;
}

// Index (within the plane) of the first maximum of a non-empty window, scanning row-major.
int64_t first_max(const float* plane, const Window& win) {
  int64_t best = win.at(win.h.lo, win.w.lo);
  for (int64_t i = win.h.lo; i < win.h.hi; ++i) {
    for (int64_t j = win.w.lo; j < win.w.hi; ++j) {
      const int64_t index = win.at(i, j);
      const float v = plane[index];
      if (v > plane[best] || (std::isnan(v) && !std::isnan(plane[best]))) best = index;
    }
  }
  return best;
}

}  // namespace

void ReferencePool2d::on_prepare() {
  const Pool2dDesc& d = desc_;
  validate(d, kName);
}

void ReferencePool2d::forward(const Tensor& x, Tensor& y) {
  const Pool2dDesc& d = desc_;
  const int64_t n_batch = pool2d_forward_batch(d, x, y, kName);
  for (int64_t p = 0; p < n_batch * d.channels; ++p) {
    const float* plane = x.data() + p * d.in_h * d.in_w;
    float* out = y.data() + p * d.out_h * d.out_w;
    for (int64_t oh = 0; oh < d.out_h; ++oh) {
      for (int64_t ow = 0; ow < d.out_w; ++ow) {
        const Window win = window_at(d, oh, ow);
        float& result = out[oh * d.out_w + ow];
        if (d.mode == Mode::kMax) {
          result =
              win.empty() ? -std::numeric_limits<float>::infinity() : plane[first_max(plane, win)];
          continue;
        }
        double sum = 0;
        for (int64_t i = win.h.lo; i < win.h.hi; ++i) {
          for (int64_t j = win.w.lo; j < win.w.hi; ++j) sum += plane[win.at(i, j)];
        }
        result = win.empty() ? 0.0f : static_cast<float>(sum / static_cast<double>(win.divisor));
      }
    }
  }
}

void ReferencePool2d::backward(const Tensor& x, const Tensor& y, const Tensor& dy, Tensor& dx) {
  if (!dx.defined()) return;
  const Pool2dDesc& d = desc_;
  const int64_t n_batch = pool2d_backward_batch(d, x, dy, dx, kName);
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
          grad_in[first_max(x.data() + p * d.in_h * d.in_w, win)] += grad;
          continue;
        }
        const float share = static_cast<float>(static_cast<double>(grad) / win.divisor);
        for (int64_t i = win.h.lo; i < win.h.hi; ++i) {
          for (int64_t j = win.w.lo; j < win.w.hi; ++j) grad_in[win.at(i, j)] += share;
        }
      }
    }
  }
}

}  // namespace strata::reference
