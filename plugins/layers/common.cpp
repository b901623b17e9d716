#include "common.hpp"

#include <fmt/format.h>

#include <cmath>
#include <vector>

#include "strata/error.hpp"
#include "strata/ops.hpp"

namespace strata::layers {

namespace {

// 2 -> "2", 2.3333 -> "2.33": whole values print without decimals.
std::string format_quotient(int64_t numerator, int64_t stride) {
  if (numerator % stride == 0) return fmt::format("{}", numerator / stride + 1);
  return fmt::format("{:.2f}", static_cast<double>(numerator) / static_cast<double>(stride) + 1.0);
}

}  // namespace

Pair read_pair(const Config& config, std::string_view key, std::optional<Pair> fallback,
               int64_t minimum) {
  if (std::optional<Pair> pair = config.get_pair(key, minimum)) return *pair;
  if (!fallback) config.at(key);  // raises "missing required key"
  return *fallback;
}

Rounding read_rounding(const Config& config, bool allow_ceil) {
  const auto text = config.get<std::string>("round", "exact");
  if (text == "exact") return Rounding::kExact;
  if (text == "floor") return Rounding::kFloor;
  if (text == "ceil" && allow_ceil) return Rounding::kCeil;
  if (text == "ceil") {
    config.fail_key("round",
                    "'ceil' is for pooling only (PyTorch's and ONNX's convolutions have no ceil "
                    "mode); expected 'exact' or 'floor'");
  }
  config.fail_key("round", fmt::format("expected 'exact', 'floor' or 'ceil', found '{}'", text));
}

namespace {

constexpr const char* kPaddingForms =
    "an integer, a list [height, width] or [top, bottom, left, right], 'same' or 'same_lower'";

Padding same_padding(const Config& config, const Window& window, bool lower) {
  Padding padding;
  for (int axis = 0; axis < 2; ++axis) {
    const char* name = axis == 0 ? "height" : "width";
    if (window.stride[axis] != 1) {
      config.fail_key("padding",
                      fmt::format("'{}' needs stride 1, but the {} stride is {}; give "
                                  "the padding as numbers",
                                  lower ? "same_lower" : "same", name, window.stride[axis]));
    }
    const int64_t total = dilated_extent(window.kernel[axis], window.dilation[axis]) - 1;
    padding.begin[axis] = lower ? total - total / 2 : total / 2;
    padding.end[axis] = total - padding.begin[axis];
  }
  return padding;
}

}  // namespace

Padding read_padding(const Config& config, std::optional<Window> same) {
  std::optional<Config> node = config.find("padding");
  if (!node) return Padding{};
  if (node->is_scalar()) {
    const auto text = node->as<std::string>();
    if ((text == "same" || text == "same_lower") && same) {
      return same_padding(config, *same, text == "same_lower");
    }
    if (text == "same" || text == "same_lower") {
      node->fail(
          fmt::format("'{}' is not available here (no kernel); give the padding as numbers", text));
    }
    if (text.empty() || text.find_first_not_of("+-0123456789") != std::string::npos) {
      node->fail(
          fmt::format("expected {}, found '{}'",
                      same ? kPaddingForms
                           : "an integer or a list [height, width] or [top, bottom, left, right]",
                      text));
    }
  }
  if (node->is_sequence() && node->items().size() == 4) {
    const auto values = node->as<std::vector<int64_t>>();
    for (int64_t value : values) {
      if (value < 0) node->fail(fmt::format("must be at least 0, found {}", value));
      if (value > kMaxExtent) {
        node->fail(fmt::format("must be at most {} (2^31 - 1), found {}", kMaxExtent, value));
      }
    }
    Padding padding;
    padding.begin = {values[0], values[2]};
    padding.end = {values[1], values[3]};
    return padding;
  }
  if (node->is_sequence() && node->items().size() != 2) {
    node->fail(fmt::format("expected {}, found a list of {}",
                           same ? kPaddingForms
                                : "an integer or a list [height, width] or [top, bottom, left, "
                                  "right]",
                           node->items().size()));
  }
  const Pair pair = *config.get_pair("padding", 0);
  return Padding{pair, pair};
}

int64_t output_extent(std::string_view axis, int64_t in, int64_t kernel, int64_t dilation,
                      int64_t pad_begin, int64_t pad_end, int64_t stride, Rounding rounding) {
  const int64_t window = dilated_extent(kernel, dilation);
  const int64_t numerator = in - window + pad_begin + pad_end;
  const std::string pads = pad_begin == pad_end ? fmt::format("2*{}", pad_begin)
                                                : fmt::format("{} + {}", pad_begin, pad_end);
  const std::string formula =
      fmt::format("output {} ({} - {} + {})/{} + 1", axis, in, window, pads, stride);
  const std::string window_note =
      dilation == 1 ? std::string()
                    : fmt::format(" (the dilated kernel spans {} = {}*({} - 1) + 1)", window,
                                  dilation, kernel);
  if (numerator < 0) {
    fail("{} = {} is less than 1: the kernel{} does not fit in the padded input ({} + {})", formula,
         format_quotient(numerator, stride), window_note, in, pads);
  }
  if (numerator % stride != 0 && rounding == Rounding::kExact) {
    fail(
        "{} = {} is not a whole number{}; choose stride/padding that fit, or set round: "
        "floor",
        formula, format_quotient(numerator, stride), window_note);
  }
  return window_output_extent(in, window, pad_begin, pad_end, stride, rounding == Rounding::kCeil);
}

Pair output_extents(const Shape& sample, const Window& window, const Padding& padding,
                    Rounding rounding) {
  Pair out;
  for (int axis = 0; axis < 2; ++axis) {
    out[axis] = output_extent(axis == 0 ? "height" : "width", sample[1 + axis], window.kernel[axis],
                              window.dilation[axis], padding.begin[axis], padding.end[axis],
                              window.stride[axis], rounding);
  }
  return out;
}

void require_image_shape(const Shape& shape, std::string_view what) {
  if (shape.rank() != 3) {
    fail("{} expects an image sample [channels, height, width], got {}", what, shape.str());
  }
  for (int64_t d : shape.dims()) {
    if (d < 1) fail("{} expects a non-empty image sample, got {}", what, shape.str());
  }
}

void prepare_output(Tensor& out, const Shape& shape) {
  if (!out.defined()) {
    out = Tensor(shape);
  } else if (out.shape() != shape) {
    fail("output tensor has shape {} but the layer produces {}", out.shape().str(), shape.str());
  }
}

void reuse_buffer(Tensor& buffer, const Shape& shape) {
  if (!buffer.defined() || buffer.shape() != shape) buffer = Tensor(shape);
}

}  // namespace strata::layers
