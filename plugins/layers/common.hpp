// Helpers shared by the layers of the "layers" plugin: reading window geometry from a Config,
// output-size arithmetic with the `round` rule, and element-wise loops over a backend.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "strata/config.hpp"
#include "strata/elementwise.hpp"
#include "strata/layer.hpp"

namespace strata::layers {

// A (height, width) pair of extents.
using Pair = std::array<int64_t, 2>;

// How a window that does not tile its input exactly is handled.
enum class Rounding {
  kExact,  // the output size must be a whole number, else setup fails with the arithmetic
  kFloor,  // drop the incomplete last window, as PyTorch does
  kCeil,   // keep it (PyTorch's ceil_mode=True, ONNX ceil_mode=1), unless it would start past the
           // input and the begin padding: then it is dropped, as PyTorch drops it
};

// Padding before (top, left) and after (bottom, right) the input, per axis [height, width].
struct Padding {
  Pair begin{0, 0}, end{0, 0};
  bool symmetric() const { return begin == end; }
  bool zero() const { return begin == Pair{0, 0} && end == Pair{0, 0}; }
};

// Reads `key` as an integer (used for both extents) or a list [height, width]: Config::get_pair.
//   requires: each value is in [minimum, kMaxExtent], else a config error at the key.
//   ensures:  a missing key returns `fallback`, or is a "missing required key" error when
//             fallback is empty.
Pair read_pair(const Config& config, std::string_view key, std::optional<Pair> fallback,
               int64_t minimum);

// Reads `round: exact|floor|ceil` (default exact); `allow_ceil` false (conv2d) refuses ceil at the
// key, with the reason.
Rounding read_rounding(const Config& config, bool allow_ceil = true);

// Reads the `padding` key (default 0):
//   p                          p on every side
//   [ph, pw]                   ph above and below, pw left and right
//   [top, bottom, left, right] (ONNX's `pads` order is [top, left, bottom, right]: not this one)
//   same                       out = in at stride 1: total padding F_eff - 1 per axis, with
//                              F_eff = dilation*(kernel-1)+1 from the window `same`, the odd one
//                              at the end (ONNX auto_pad SAME_UPPER, PyTorch padding='same')
//   same_lower                 the same with the odd one at the beginning (SAME_LOWER)
//   requires: numbers in [0, kMaxExtent]; `same`/`same_lower` only when `same` is given, and then
//             stride 1 on both axes. Anything else is a config error at the key naming the forms.
Padding read_padding(const Config& config, std::optional<Window> same);

// The output extent of a sliding window along one axis (strata::window_output_extent):
//   out = (in - window + pad_begin + pad_end)/stride + 1, window = dilation*(kernel-1)+1, the
//   quotient rounded as `rounding` says (kCeil: rounded up, then the last window dropped if it
//   would start at or past in + pad_begin, PyTorch's rule).
//   Fails (naming `axis`, "height" or "width", and the numbers) when the window does not fit in
//   the padded input, or when the quotient is not whole and rounding is kExact:
//   output width (7 - 3 + 2*0)/3 + 1 = 2.33 is not a whole number; choose stride/padding that
//   fit, or set round: floor
int64_t output_extent(std::string_view axis, int64_t in, int64_t kernel, int64_t dilation,
                      int64_t pad_begin, int64_t pad_end, int64_t stride, Rounding rounding);

// The output [height, width] of `window` (its kernel, stride and dilation) sliding over the
// [C, H, W] `sample` with `padding`: output_extent per axis, failing as it does.
Pair output_extents(const Shape& sample, const Window& window, const Padding& padding,
                    Rounding rounding);

// Requires a [C, H, W] sample shape; `what` names the layer kind in the message.
void require_image_shape(const Shape& shape, std::string_view what);

// Makes `out` a tensor of `shape`: allocates it when undefined (callers such as tests may pass an
// empty tensor), otherwise checks that the caller allocated the right shape.
void prepare_output(Tensor& out, const Shape& shape);

// Makes `buffer` (scratch a layer keeps between steps) a tensor of `shape`: allocates it when
// undefined or of another shape, otherwise keeps it, contents and all.
void reuse_buffer(Tensor& buffer, const Shape& shape);

using strata::kMaxExtent;

// For export hooks (strata/export.hpp): a (height, width) pair as an ONNX list of ints, and the
// padding before and after each axis as ONNX `pads` [top, left, bottom, right].
inline std::vector<int64_t> onnx_ints(const Pair& pair) { return {pair[0], pair[1]}; }
inline std::vector<int64_t> onnx_pads(const Pair& begin, const Pair& end) {
  return {begin[0], begin[1], end[0], end[1]};
}

// Element-wise loops over the context's backend: the SDK's own helper (strata/elementwise.hpp),
// the same one out-of-tree plugins use.
using strata::kElementwiseGrain;
using strata::parallel_elementwise;

}  // namespace strata::layers
