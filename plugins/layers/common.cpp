#include "common.hpp"

#include <fmt/format.h>

#include <cmath>
#include <vector>

#include "strata/error.hpp"

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

Rounding read_rounding(const Config& config) {
  const auto text = config.get<std::string>("round", "exact");
  if (text == "exact") return Rounding::kExact;
  if (text == "floor") return Rounding::kFloor;
  config.fail_key("round", fmt::format("expected 'exact' or 'floor', found '{}'", text));
}

int64_t output_extent(std::string_view axis, int64_t in, int64_t kernel, int64_t dilation,
                      int64_t pad, int64_t stride, Rounding rounding) {
  const int64_t window = dilation * (kernel - 1) + 1;
  const int64_t numerator = in - window + 2 * pad;
  const std::string formula =
      fmt::format("output {} ({} - {} + 2*{})/{} + 1", axis, in, window, pad, stride);
  const std::string window_note =
      dilation == 1 ? std::string()
                    : fmt::format(" (the dilated kernel spans {} = {}*({} - 1) + 1)", window,
                                  dilation, kernel);
  if (numerator < 0) {
    fail("{} = {} is less than 1: the kernel{} does not fit in the padded input ({} + 2*{})",
         formula, format_quotient(numerator, stride), window_note, in, pad);
  }
  if (numerator % stride != 0 && rounding == Rounding::kExact) {
    fail(
        "{} = {} is not a whole number{}; choose stride/padding that fit, or set round: "
        "floor",
        formula, format_quotient(numerator, stride), window_note);
  }
  return numerator / stride + 1;  // numerator >= 0, so this is the floor
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

}  // namespace strata::layers
