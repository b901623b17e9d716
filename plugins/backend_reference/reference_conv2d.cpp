#include <vector>

#include "reference_kernels.hpp"

namespace strata::reference {

namespace {

constexpr std::string_view kName = "reference conv2d";

}  // namespace

const Tensor& ReferenceConv2d::operand(const Tensor& t, Tensor& rounded) const {
  if (desc_.precision != Precision::kBf16) return t;
  rounded = Tensor(t.shape());
  const float* in = t.data();
  float* out = rounded.data();
  for (int64_t i = 0; i < t.numel(); ++i) out[i] = round_to_bf16(in[i]);
  return rounded;
}

void ReferenceConv2d::on_prepare() {
  const Conv2dDesc& d = desc_;
  validate(d, kName);
}

void ReferenceConv2d::forward(const Tensor& x, const Tensor& weight, const Tensor* bias,
                              Tensor& y) {
  const Conv2dDesc& d = desc_;
  const int64_t n_batch = conv2d_forward_batch(d, x, weight, bias, y, kName);
  const int64_t cg = d.in_channels / d.groups, kg = d.out_channels / d.groups;
  const bool has_bias = bias != nullptr && bias->defined();

  Tensor x_rounded, w_rounded;  // precision bf16: the emulation's rounded inputs
  const float* xp = operand(x, x_rounded).data();
  const float* wp = operand(weight, w_rounded).data();
  float* yp = y.data();
  for (int64_t n = 0; n < n_batch; ++n) {
    for (int64_t k = 0; k < d.out_channels; ++k) {
      const int64_t g = k / kg;
      for (int64_t oh = 0; oh < d.out_h; ++oh) {
        for (int64_t ow = 0; ow < d.out_w; ++ow) {
          double sum = has_bias ? bias->data()[k] : 0.0;
          for (int64_t c = 0; c < cg; ++c) {
            const int64_t channel = g * cg + c;
            for (int64_t r = 0; r < d.kernel_h; ++r) {
              const int64_t ih = oh * d.stride_h - d.pad_h + r * d.dilation_h;
              if (ih < 0 || ih >= d.in_h) continue;  // zero padding
              for (int64_t s = 0; s < d.kernel_w; ++s) {
                const int64_t iw = ow * d.stride_w - d.pad_w + s * d.dilation_w;
                if (iw < 0 || iw >= d.in_w) continue;
                sum += static_cast<double>(
                           xp[((n * d.in_channels + channel) * d.in_h + ih) * d.in_w + iw]) *
                       wp[((k * cg + c) * d.kernel_h + r) * d.kernel_w + s];
              }
            }
          }
          yp[((n * d.out_channels + k) * d.out_h + oh) * d.out_w + ow] = static_cast<float>(sum);
        }
      }
    }
  }
}

void ReferenceConv2d::backward_data(const Tensor& dy, const Tensor& weight, Tensor& dx) {
  if (!dx.defined()) return;
  const Conv2dDesc& d = desc_;
  const int64_t n_batch = conv2d_data_batch(d, dy, weight, dx, kName);
  const int64_t cg = d.in_channels / d.groups, kg = d.out_channels / d.groups;

  // The forward loop nest with the multiply-add reversed: every (output, tap) pair that read
  // x[i] adds w * dy to dx[i]. Padding taps read nothing, so they receive nothing.
  Tensor dy_rounded, w_rounded;
  const float* dyp = operand(dy, dy_rounded).data();
  const float* wp = operand(weight, w_rounded).data();
  const int64_t image = d.in_channels * d.in_h * d.in_w;
  std::vector<double> acc(static_cast<std::size_t>(image));
  for (int64_t n = 0; n < n_batch; ++n) {
    std::fill(acc.begin(), acc.end(), 0.0);
    for (int64_t k = 0; k < d.out_channels; ++k) {
      const int64_t g = k / kg;
      for (int64_t oh = 0; oh < d.out_h; ++oh) {
        for (int64_t ow = 0; ow < d.out_w; ++ow) {
          const double grad = dyp[((n * d.out_channels + k) * d.out_h + oh) * d.out_w + ow];
          for (int64_t c = 0; c < cg; ++c) {
            const int64_t channel = g * cg + c;
            for (int64_t r = 0; r < d.kernel_h; ++r) {
              const int64_t ih = oh * d.stride_h - d.pad_h + r * d.dilation_h;
              if (ih < 0 || ih >= d.in_h) continue;
              for (int64_t s = 0; s < d.kernel_w; ++s) {
                const int64_t iw = ow * d.stride_w - d.pad_w + s * d.dilation_w;
                if (iw < 0 || iw >= d.in_w) continue;
                acc[(channel * d.in_h + ih) * d.in_w + iw] +=
                    grad * wp[((k * cg + c) * d.kernel_h + r) * d.kernel_w + s];
              }
            }
          }
        }
      }
    }
    float* dxp = dx.data() + n * image;
    for (int64_t i = 0; i < image; ++i) dxp[i] = static_cast<float>(acc[i]);
  }
}

void ReferenceConv2d::backward_params(const Tensor& x, const Tensor& dy, Tensor& dweight,
                                      Tensor* dbias) {
  const bool want_weight = dweight.defined();
  const bool want_bias = dbias != nullptr && dbias->defined();
  if (!want_weight && !want_bias) return;
  const Conv2dDesc& d = desc_;
  const int64_t n_batch = conv2d_params_batch(d, x, dy, dweight, dbias, kName);
  const int64_t cg = d.in_channels / d.groups, kg = d.out_channels / d.groups;
  if (want_bias) conv2d_bias_gradient(d, dy.data(), n_batch, 0, d.out_channels, dbias->data());
  if (!want_weight) return;

  Tensor x_rounded, dy_rounded;  // the bias gradient above sums the float dy
  const float* xp = operand(x, x_rounded).data();
  const float* dyp = operand(dy, dy_rounded).data();
  float* dwp = dweight.data();
  for (int64_t k = 0; k < d.out_channels; ++k) {
    const int64_t g = k / kg;
    for (int64_t c = 0; c < cg; ++c) {
      const int64_t channel = g * cg + c;
      for (int64_t r = 0; r < d.kernel_h; ++r) {
        for (int64_t s = 0; s < d.kernel_w; ++s) {
          double sum = 0;
          for (int64_t n = 0; n < n_batch; ++n) {
            for (int64_t oh = 0; oh < d.out_h; ++oh) {
              const int64_t ih = oh * d.stride_h - d.pad_h + r * d.dilation_h;
              if (ih < 0 || ih >= d.in_h) continue;
              for (int64_t ow = 0; ow < d.out_w; ++ow) {
                const int64_t iw = ow * d.stride_w - d.pad_w + s * d.dilation_w;
                if (iw < 0 || iw >= d.in_w) continue;
                sum += static_cast<double>(
                           xp[((n * d.in_channels + channel) * d.in_h + ih) * d.in_w + iw]) *
                       dyp[((n * d.out_channels + k) * d.out_h + oh) * d.out_w + ow];
              }
            }
          }
          dwp[((k * cg + c) * d.kernel_h + r) * d.kernel_w + s] = static_cast<float>(sum);
        }
      }
    }
  }
}

}  // namespace strata::reference
