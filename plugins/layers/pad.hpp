// Explicit 2-D padding of image batches, shared by the `pad` layer and conv2d's padding modes.
//
// WHAT THIS REPRESENTS
//   PadPlan: the index map of one padding geometry. For an input [N, C, H, W] and a Padding
//   (strata::layers::Padding: begin/end per axis) the output is [N, C, H + top + bottom,
//   W + left + right], and output row oh reads input row source_h[oh] (likewise for columns), or
//   the constant `value` where a source is -1. The modes are PyTorch's F.pad / nn.Conv2d
//   padding_mode and ONNX Pad's:
//     constant   (conv2d: zeros) value outside the input (ONNX constant)
//     reflect    mirror without repeating the edge: row -1 reads row 1 (ONNX reflect)
//     replicate  repeat the edge: row -1 reads row 0 (ONNX edge)
//     circular   wrap around: row -1 reads row H-1 (ONNX wrap)
//
// REQUIRES
//   - reflect: every padding less than the input extent on its axis (PyTorch's rule); circular:
//     at most the input extent. make_pad_plan() fails with the numbers otherwise.
// ENSURES
//   - pad_forward overwrites y; pad_backward overwrites dx with the sum of dy over every output
//     element that read each input element (the transpose of the forward map). Both run over the
//     N*C planes with the context's backend (parallel_elementwise), each plane on one thread.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common.hpp"

namespace strata::layers {

enum class PadMode { kConstant, kReflect, kReplicate, kCircular };

// Reads `key` as one of `constant_name` (e.g. "constant" or "zeros"), reflect, replicate,
// circular; missing: constant.
PadMode read_pad_mode(const Config& config, std::string_view key, std::string_view constant_name);

struct PadPlan {
  float value = 0.0f;
  int64_t channels = 0, in_h = 0, in_w = 0, out_h = 0, out_w = 0;
  std::vector<int64_t> source_h, source_w;  // -1: the constant
};

// Fails (naming the mode, the axis and the numbers) when the padding does not suit the mode.
PadPlan make_pad_plan(PadMode mode, float value, const Padding& padding, const Shape& sample);

// x [N, C, in_h, in_w] -> y [N, C, out_h, out_w]; y is allocated when undefined or of another
// batch size.
void pad_forward(Context& context, const PadPlan& plan, const Tensor& x, Tensor& y);
// dy [N, C, out_h, out_w] -> dx [N, C, in_h, in_w] (which must have that shape).
void pad_backward(Context& context, const PadPlan& plan, const Tensor& dy, Tensor& dx);

// For export hooks: ONNX Pad from the value `input` to `output` for an image [N, C, H, W]: int64
// pads [0, 0, top, left, 0, 0, bottom, right], mode constant (with `value`), reflect, edge
// (replicate) or wrap (circular, from opset 19: an Error at an earlier context.opset()).
void export_pad(ExportContext& context, const std::string& input, const std::string& output,
                PadMode mode, float value, const Padding& padding);

}  // namespace strata::layers
