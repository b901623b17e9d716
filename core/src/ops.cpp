#include "strata/ops.hpp"

#include <algorithm>
#include <utility>

#include "strata/error.hpp"

namespace strata {

std::string_view precision_name(Precision precision) {
  return precision == Precision::kBf16 ? "bf16" : "fp32";
}

std::optional<Precision> parse_precision(std::string_view name) {
  if (name == "fp32") return Precision::kFp32;
  if (name == "bf16") return Precision::kBf16;
  return std::nullopt;
}

// Out of line, so the interfaces' type information lives in the core, shared by every plugin.
Conv2dKernel::~Conv2dKernel() = default;
Pool2dKernel::~Pool2dKernel() = default;
GemmKernel::~GemmKernel() = default;
BatchNormKernel::~BatchNormKernel() = default;
ActivationKernel::~ActivationKernel() = default;
SoftmaxKernel::~SoftmaxKernel() = default;
LrnKernel::~LrnKernel() = default;
GlobalAvgPoolKernel::~GlobalAvgPoolKernel() = default;

void validate(const Conv2dDesc& d, std::string_view kernel) {
  if (d.in_channels <= 0 || d.in_h <= 0 || d.in_w <= 0 || d.out_channels <= 0 || d.kernel_h <= 0 ||
      d.kernel_w <= 0 || d.out_h <= 0 || d.out_w <= 0) {
    fail("{}: extents must be positive (C={}, H={}, W={}, K={}, R={}, S={}, out {}x{})", kernel,
         d.in_channels, d.in_h, d.in_w, d.out_channels, d.kernel_h, d.kernel_w, d.out_h, d.out_w);
  }
  if (d.stride_h <= 0 || d.stride_w <= 0 || d.dilation_h <= 0 || d.dilation_w <= 0 || d.pad_h < 0 ||
      d.pad_w < 0 || d.pad_h_end < -1 || d.pad_w_end < -1) {
    fail("{}: stride and dilation must be positive and padding non-negative", kernel);
  }
  if (d.groups <= 0 || d.in_channels % d.groups != 0 || d.out_channels % d.groups != 0) {
    fail("{}: groups={} must divide in_channels={} and out_channels={}", kernel, d.groups,
         d.in_channels, d.out_channels);
  }
}

int64_t conv2d_direct_multiply_adds(const Conv2dDesc& d) {
  return d.out_channels * (d.in_channels / d.groups) * d.kernel_h * d.kernel_w * d.out_h * d.out_w;
}

Conv2dArithmetic Conv2dKernel::arithmetic() const {
  const Conv2dPassArithmetic direct{conv2d_direct_multiply_adds(desc_), 0};
  return {direct, direct, direct};
}

namespace {

void check_shape(const Tensor& t, const Shape& expected, std::string_view kernel,
                 std::string_view what) {
  if (t.shape() != expected) {
    fail("{}: {} has shape {}, expected {}", kernel, what, t.shape().str(), expected.str());
  }
}

// N of a batched 4-D tensor (-1 when it is not 4-D, which its shape check then reports).
int64_t batch_of(const Tensor& t) { return t.rank() == 4 ? t.dim(0) : -1; }

Shape conv2d_weight_shape(const Conv2dDesc& d) {
  return {d.out_channels, d.in_channels / d.groups, d.kernel_h, d.kernel_w};
}

}  // namespace

int64_t conv2d_forward_batch(const Conv2dDesc& d, const Tensor& x, const Tensor& weight,
                             const Tensor* bias, const Tensor& y, std::string_view kernel) {
  const int64_t n = batch_of(x);
  check_shape(x, {n, d.in_channels, d.in_h, d.in_w}, kernel, "x");
  check_shape(weight, conv2d_weight_shape(d), kernel, "weight");
  if (bias != nullptr && bias->defined()) check_shape(*bias, {d.out_channels}, kernel, "bias");
  check_shape(y, {n, d.out_channels, d.out_h, d.out_w}, kernel, "y");
  return n;
}

int64_t conv2d_data_batch(const Conv2dDesc& d, const Tensor& dy, const Tensor& weight,
                          const Tensor& dx, std::string_view kernel) {
  const int64_t n = batch_of(dy);
  check_shape(dy, {n, d.out_channels, d.out_h, d.out_w}, kernel, "dy");
  check_shape(weight, conv2d_weight_shape(d), kernel, "weight");
  if (dx.defined()) check_shape(dx, {n, d.in_channels, d.in_h, d.in_w}, kernel, "dx");
  return n;
}

int64_t conv2d_params_batch(const Conv2dDesc& d, const Tensor& x, const Tensor& dy,
                            const Tensor& dweight, const Tensor* dbias, std::string_view kernel) {
  const int64_t n = batch_of(dy);
  check_shape(dy, {n, d.out_channels, d.out_h, d.out_w}, kernel, "dy");
  if (dweight.defined()) {
    check_shape(x, {n, d.in_channels, d.in_h, d.in_w}, kernel, "x");
    check_shape(dweight, conv2d_weight_shape(d), kernel, "dweight");
  }
  if (dbias != nullptr && dbias->defined()) check_shape(*dbias, {d.out_channels}, kernel, "dbias");
  return n;
}

void conv2d_bias_gradient(const Conv2dDesc& d, const float* dy, int64_t batch, int64_t first,
                          int64_t end, float* dbias) {
  const int64_t plane = d.out_h * d.out_w;
  for (int64_t k = first; k < end; ++k) {
    double sum = 0;
    for (int64_t n = 0; n < batch; ++n) {
      const float* values = dy + (n * d.out_channels + k) * plane;
      for (int64_t i = 0; i < plane; ++i) sum += values[i];
    }
    dbias[k] = static_cast<float>(sum);
  }
}

int64_t pool2d_forward_batch(const Pool2dDesc& d, const Tensor& x, const Tensor& y,
                             std::string_view kernel) {
  const int64_t n = batch_of(x);
  check_shape(x, {n, d.channels, d.in_h, d.in_w}, kernel, "x");
  check_shape(y, {n, d.channels, d.out_h, d.out_w}, kernel, "y");
  return n;
}

int64_t pool2d_backward_batch(const Pool2dDesc& d, const Tensor& x, const Tensor& dy,
                              const Tensor& dx, std::string_view kernel) {
  const int64_t n = batch_of(dy);
  check_shape(dy, {n, d.channels, d.out_h, d.out_w}, kernel, "dy");
  check_shape(dx, {n, d.channels, d.in_h, d.in_w}, kernel, "dx");
  if (d.mode == Pool2dDesc::Mode::kMax)
    check_shape(x, {n, d.channels, d.in_h, d.in_w}, kernel, "x");
  return n;
}

void validate(const Pool2dDesc& d, std::string_view kernel) {
  if (d.channels <= 0 || d.in_h <= 0 || d.in_w <= 0 || d.kernel_h <= 0 || d.kernel_w <= 0 ||
      d.out_h <= 0 || d.out_w <= 0 || d.stride_h <= 0 || d.stride_w <= 0 || d.pad_h < 0 ||
      d.pad_w < 0 || d.pad_h_end < -1 || d.pad_w_end < -1 || d.dilation_h <= 0 ||
      d.dilation_w <= 0) {
    fail(
        "{}: extents, strides and dilations must be positive and padding non-negative (C={}, "
        "H={}, W={}, kernel {}x{}, stride {}x{}, dilation {}x{}, pad {}x{} (end {}x{}), out {}x{})",
        kernel, d.channels, d.in_h, d.in_w, d.kernel_h, d.kernel_w, d.stride_h, d.stride_w,
        d.dilation_h, d.dilation_w, d.pad_h, d.pad_w, d.pad_h_end, d.pad_w_end, d.out_h, d.out_w);
  }
  if (d.mode == Pool2dDesc::Mode::kAverage && (d.dilation_h != 1 || d.dilation_w != 1)) {
    fail("{}: average pooling has no dilation (got {}x{})", kernel, d.dilation_h, d.dilation_w);
  }
}

std::string_view activation_name(const ActivationDesc& desc) {
  using Kind = ActivationDesc::Kind;
  switch (desc.kind) {
    case Kind::kRelu:
      return "relu";
    case Kind::kLeakyRelu:
      return "leaky_relu";
    case Kind::kTanh:
      return "tanh";
    case Kind::kSigmoid:
      return "sigmoid";
    case Kind::kRelu6:
      return "relu6";
    case Kind::kHardSigmoid:
      return "hard_sigmoid";
    case Kind::kHardswish:
      break;
  }
  return "hardswish";
}

void validate(const BatchNormDesc& d, std::string_view kernel) {
  if (d.channels <= 0 || d.spatial <= 0) {
    fail("{}: channels and spatial size must be positive (channels={}, spatial={})", kernel,
         d.channels, d.spatial);
  }
}

int64_t batch_norm_batch(const BatchNormDesc& d, const Tensor& t, std::string_view kernel,
                         std::string_view what) {
  const Shape& shape = t.shape();
  if (shape.rank() < 2 || shape[1] != d.channels ||
      t.numel() != shape[0] * d.channels * d.spatial) {
    fail("{}: {} has shape {}, expected [N, {}, ...] with {} values per channel and image", kernel,
         what, shape.str(), d.channels, d.spatial);
  }
  return shape[0];
}

void validate(const SoftmaxDesc& d, std::string_view kernel) {
  if (d.outer <= 0 || d.axis <= 0 || d.inner <= 0) {
    fail("{}: outer, axis and inner must be positive (outer={}, axis={}, inner={})", kernel,
         d.outer, d.axis, d.inner);
  }
}

void validate(const LrnDesc& d, std::string_view kernel) {
  if (d.channels <= 0 || d.area <= 0 || d.size <= 0) {
    fail("{}: channels, area and size must be positive (channels={}, area={}, size={})", kernel,
         d.channels, d.area, d.size);
  }
  if (!(d.alpha >= 0.0) || !(d.k > 0.0)) {
    fail("{}: alpha must be >= 0 and k positive (alpha={}, k={})", kernel, d.alpha, d.k);
  }
}

void validate(const GlobalAvgPoolDesc& d, std::string_view kernel) {
  if (d.channels <= 0 || d.area <= 0) {
    fail("{}: channels and area must be positive (channels={}, area={})", kernel, d.channels,
         d.area);
  }
}

int64_t sample_batch(const Tensor& t, int64_t per_sample, std::string_view kernel,
                     std::string_view what) {
  const Shape& shape = t.shape();
  if (shape.rank() < 1 || t.numel() != shape[0] * per_sample) {
    fail("{}: {} has shape {}, expected [N, ...] with {} values per sample", kernel, what,
         shape.str(), per_sample);
  }
  return shape[0];
}

int64_t global_avg_pool_batch(const GlobalAvgPoolDesc& d, const Tensor& planes, const Tensor& means,
                              std::string_view kernel, std::array<std::string_view, 2> names) {
  const int64_t batch = sample_batch(planes, d.channels * d.area, kernel, names[0]);
  if (sample_batch(means, d.channels, kernel, names[1]) != batch) {
    fail("{}: {} has shape {} and {} {}: they must hold the same batch", kernel, names[0],
         planes.shape().str(), names[1], means.shape().str());
  }
  return batch;
}

void check_same_count(const Tensor& t, const Tensor& x, std::string_view kernel,
                      std::string_view what) {
  if (t.numel() != x.numel()) {
    fail("{}: {} has shape {}, x has {}: they must hold as many elements", kernel, what,
         t.shape().str(), x.shape().str());
  }
}

int64_t window_output_extent(int64_t in, int64_t window, int64_t pad_begin, int64_t pad_end,
                             int64_t stride, bool ceil) {
  const int64_t numerator = in + pad_begin + pad_end - window;
  if (!ceil) return numerator / stride + 1;
  const int64_t out = (numerator + stride - 1) / stride + 1;
  return (out - 1) * stride >= in + pad_begin ? out - 1 : out;
}

PoolTaps pool_taps(int64_t o, int64_t stride, int64_t pad, int64_t pad_end, int64_t kernel,
                   int64_t dilation, int64_t in) {
  PoolTaps taps;
  taps.start = o * stride - pad;
  taps.lo = taps.start >= 0 ? 0 : (-taps.start + dilation - 1) / dilation;
  taps.hi = taps.start > in - 1 ? 0 : std::min(kernel, (in - 1 - taps.start) / dilation + 1);
  taps.hi = std::max(taps.hi, taps.lo);
  taps.span = std::min(taps.start + kernel, in + pad_end) - taps.start;
  return taps;
}

void check_backward_counts(const Tensor& x, const Tensor& y, const Tensor& dy, const Tensor& dx,
                           std::string_view kernel) {
  for (const auto& [t, what] : {std::pair{&y, "y"}, {&dy, "dy"}, {&dx, "dx"}}) {
    check_same_count(*t, x, kernel, what);
  }
}

}  // namespace strata
