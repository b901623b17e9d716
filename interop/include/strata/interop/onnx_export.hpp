// strata/interop/onnx_export.hpp: an ExportedModel (strata/export.hpp) as an ONNX file.
//
//   strata::ExportedModel described = strata::export_graph(graph, registries, {.opset = 13});
//   strata::interop::write_onnx(described, "model.onnx", {.producer_version = "0.1"});
//
// The only code of Strata that includes ONNX's headers (libonnx, protobuf) is in interop/;
// the runtime and the plugins describe models in the neutral form of strata/export.hpp.
#pragma once

#include <filesystem>
#include <string>

#include "strata/export.hpp"

namespace strata::interop {

// The opsets `strata export` writes: 13 (the first whose Softmax normalizes one axis, as the
// softmax layer does) up to the newest this libonnx knows (17 for ONNX 1.12).
int min_export_opset();
int max_export_opset();
// An Error for an opset outside [min_export_opset(), max_export_opset()], saying which are.
void check_export_opset(int opset);

struct OnnxWriteInfo {
  std::string producer_version;  // Strata's version, recorded as the model's producer_version
  std::string doc_string;        // recorded on the graph: what it was exported from
};

// onnx_model
//
// REQUIRES
//   - check_export_opset(model.opset) passes; the nodes use operators of the default domain.
// ENSURES
//   - returns the serialized onnx::ModelProto (IR version of this libonnx, one opset import of
//     the default domain at model.opset, producer "strata"): the graph's input and output are
//     float32 [batch, sample shape...] with a symbolic batch dimension "batch", the initializers
//     hold the tensors' float32 values;
//   - the model passed onnx::checker::check_model and strict shape inference (type checks on, a
//     node whose shapes do not infer is an error), and the inferred shape of every value in
//     model.value_shapes and of the output equals the expected one: a mapping that computes
//     another shape than its layer is an Error naming the value, both shapes.
//   - errors name `what` (the file being written) and say what ONNX's checker reported.
std::string onnx_model(const ExportedModel& model, const OnnxWriteInfo& info,
                       const std::string& what);

// onnx_model() written to `path` atomically (a temporary file renamed over it, removed on
// failure or on SIGINT/SIGTERM): nothing is written unless the whole model checked.
void write_onnx(const ExportedModel& model, const std::filesystem::path& path,
                const OnnxWriteInfo& info);

}  // namespace strata::interop
