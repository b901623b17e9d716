#include <algorithm>

#include "reference_kernels.hpp"

namespace strata::reference {

namespace {

constexpr std::string_view kName = "reference batch_norm";

// A sum in double over several runs of values, kept as 8 partial sums (element s of a run goes to
// partial s mod 8) added in a fixed order.
class Partials {
 public:
  template <class Value>
  void add(int64_t n, Value value) {
    int64_t s = 0;
    for (; s + kLanes <= n; s += kLanes) {
      for (int j = 0; j < kLanes; ++j) lanes_[j] += value(s + j);
    }
    for (int j = 0; s < n; ++s, ++j) lanes_[j] += value(s);
  }
  double total() const {
    return ((lanes_[0] + lanes_[1]) + (lanes_[2] + lanes_[3])) +
           ((lanes_[4] + lanes_[5]) + (lanes_[6] + lanes_[7]));
  }

 private:
  static constexpr int kLanes = 8;
  double lanes_[kLanes] = {};
};

// out[c] = the sum over channel c's values v of term(c)(v), a double, one Partials per channel.
template <class Term>
void sum_channels(const BatchNormDesc& d, const Tensor& x, double* out, const Term& term) {
  const int64_t batch = batch_norm_batch(d, x, kName, "x");
  for (int64_t c = 0; c < d.channels; ++c) {
    Partials partials;
    const auto value = term(c);
    for (int64_t n = 0; n < batch; ++n) {
      const float* xs = x.data() + (n * d.channels + c) * d.spatial;
      partials.add(d.spatial, [&](int64_t s) { return value(xs[s]); });
    }
    out[c] = partials.total();
  }
}

}  // namespace

void ReferenceBatchNorm::on_prepare() { validate(desc_, kName); }

void ReferenceBatchNorm::channel_sums(const Tensor& x, double* sum) {
  sum_channels(desc_, x, sum,
               [](int64_t) { return [](float v) { return static_cast<double>(v); }; });
}

void ReferenceBatchNorm::channel_squares(const Tensor& x, const double* mean, double* squares) {
  sum_channels(desc_, x, squares, [mean](int64_t c) {
    return [m = mean[c]](float v) {
      const double d = v - m;
      return d * d;
    };
  });
}

void ReferenceBatchNorm::normalize(const Tensor& x, const float* center, const float* scale,
                                   const float* shift, Tensor& y, const ActivationDesc* fused) {
  const int64_t batch = batch_norm_batch(desc_, x, kName, "x");
  batch_norm_batch(desc_, y, kName, "y");
  const int64_t spatial = desc_.spatial;
  visit_fused(fused, [&](const auto f) {
    for (int64_t plane = 0; plane < batch * desc_.channels; ++plane) {
      const int64_t c = plane % desc_.channels;
      const float* xs = x.data() + plane * spatial;
      float* ys = y.data() + plane * spatial;
      for (int64_t s = 0; s < spatial; ++s) {
        ys[s] = f.value((xs[s] - center[c]) * scale[c] + shift[c]);
      }
    }
  });
}

void ReferenceBatchNorm::gradient_sums(const Tensor& x, const Tensor& dy, const double* mean,
                                       const double* inv_std, double* sum_dy, double* sum_dy_xhat) {
  const int64_t batch = batch_norm_batch(desc_, x, kName, "x");
  batch_norm_batch(desc_, dy, kName, "dy");
  const int64_t channels = desc_.channels, spatial = desc_.spatial;
  for (int64_t c = 0; c < channels; ++c) {
    Partials dy_sum, dy_xhat_sum;
    for (int64_t n = 0; n < batch; ++n) {
      const float* xs = x.data() + (n * channels + c) * spatial;
      const float* dys = dy.data() + (n * channels + c) * spatial;
      dy_sum.add(spatial, [&](int64_t s) { return static_cast<double>(dys[s]); });
      dy_xhat_sum.add(spatial,
                      [&](int64_t s) { return dys[s] * ((xs[s] - mean[c]) * inv_std[c]); });
    }
    sum_dy[c] = dy_sum.total();
    sum_dy_xhat[c] = dy_xhat_sum.total();
  }
}

void ReferenceBatchNorm::input_gradient(const Tensor& x, const Tensor& dy, const double* mean,
                                        const double* inv_std, const double* scale,
                                        const double* mean_dy, const double* mean_dy_xhat,
                                        Tensor& dx) {
  if (!dx.defined()) return;
  const int64_t batch = batch_norm_batch(desc_, x, kName, "x");
  batch_norm_batch(desc_, dy, kName, "dy");
  batch_norm_batch(desc_, dx, kName, "dx");
  const int64_t spatial = desc_.spatial;
  for (int64_t plane = 0; plane < batch * desc_.channels; ++plane) {
    const int64_t c = plane % desc_.channels;
    const float* xs = x.data() + plane * spatial;
    const float* dys = dy.data() + plane * spatial;
    float* dxs = dx.data() + plane * spatial;
    for (int64_t s = 0; s < spatial; ++s) {
      const double x_hat = (xs[s] - mean[c]) * inv_std[c];
      dxs[s] = static_cast<float>(scale[c] * (dys[s] - mean_dy[c] - x_hat * mean_dy_xhat[c]));
    }
  }
}

}  // namespace strata::reference
