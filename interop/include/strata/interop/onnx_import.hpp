// strata/interop/onnx_import.hpp: an ONNX model as a Strata experiment and checkpoint
// (`strata import`, docs/interop.md "Import").
//
// WHAT THIS REPRESENTS
//   import_onnx() reads an .onnx file (libonnx's generated protobuf classes), runs the ONNX
//   checker and shape inference, and maps its graph, node by node, onto Strata layers as
//   torch.onnx.export writes torchvision's CNNs at opsets 11 to 17: the model section of an
//   experiment file (layer names taken from the ONNX node and initializer names where they are
//   valid Strata names, sanitized otherwise) and the /model tensors of a checkpoint (PyTorch's
//   parameter names and shapes). Nothing is written: apps/strata/cmd_import.cpp checks the result
//   against the layers the plugins build and writes the folder atomically.
//   This header names no ONNX or protobuf type; only interop/src includes them.
//
// REQUIRES
//   - one graph input that is not an initializer, float, [N, ...] with every extent but the batch
//     fixed; one graph output.
//   - every node in the default domain, with an operator of supported_onnx_operators(); weights
//     (conv, gemm, batch norm) stored inside the file (initializers or Constant nodes).
// ENSURES
//   - an Error naming the file and, for a node, its name, its operator and what was expected
//     versus found: for an unsupported operator, the list of supported ones; for a file that is
//     not ONNX, truncated, or of an opset outside kOnnxMinOpset..kOnnxMaxOpset, a sentence saying
//     so; for a model the ONNX checker refuses, the checker's message.
//   - a batch normalization the exporter folded into a convolution stays folded (a conv2d with a
//     bias); a Pad in front of a Conv or AveragePool is folded into the layer's padding.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "strata/tensor.hpp"

namespace strata::interop {

// The default-domain opsets import understands (libonnx 1.12 knows up to 17).
inline constexpr int64_t kOnnxMinOpset = 11;
inline constexpr int64_t kOnnxMaxOpset = 17;

struct OnnxImport {
  std::string experiment_yaml;       // a whole experiment file (model, placeholder data/train)
  std::vector<NamedTensor> weights;  // "<layer>/<param>": the checkpoint's /model group
  Shape input_shape;                 // the model input without the batch extent
  std::string output_layer;          // the last layer, whose output is the graph output
  int64_t opset = 0;
  std::string producer;  // "pytorch 1.13.1"
  // How many nodes of each operator the graph had, in order of first appearance.
  std::vector<std::pair<std::string, int64_t>> operator_counts;
};

// Reads, checks and maps the model at `path` (above).
OnnxImport import_onnx(const std::filesystem::path& path);

// The ONNX operators import maps, sorted.
std::vector<std::string> supported_onnx_operators();

}  // namespace strata::interop
