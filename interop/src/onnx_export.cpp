// ExportedModel -> onnx::ModelProto with libonnx's generated protobuf classes, checked by
// onnx::checker and strict shape inference before anything is written.
#include "strata/interop/onnx_export.hpp"

#include <fmt/format.h>
#include <onnx/checker.h>
#include <onnx/common/version.h>
#include <onnx/defs/schema.h>
#include <onnx/onnx_pb.h>
#include <onnx/shape_inference/implementation.h>

#include <bit>
#include <cstring>
#include <exception>
#include <limits>
#include <map>
#include <type_traits>
#include <variant>
#include <vector>

#include "strata/error.hpp"
#include "strata/files.hpp"

namespace strata::interop {

namespace {

constexpr int kMinOpset = 13;
constexpr const char* kBatchDimension = "batch";

// float32 [batch, sample...] with a symbolic batch dimension.
void set_tensor_type(onnx::ValueInfoProto& value, const std::string& name, const Shape& sample) {
  value.set_name(name);
  onnx::TypeProto_Tensor* tensor = value.mutable_type()->mutable_tensor_type();
  tensor->set_elem_type(onnx::TensorProto_DataType_FLOAT);
  onnx::TensorShapeProto* shape = tensor->mutable_shape();
  shape->add_dim()->set_dim_param(kBatchDimension);
  for (const int64_t extent : sample.dims()) shape->add_dim()->set_dim_value(extent);
}

void add_initializer(onnx::GraphProto& graph, const ExportInitializer& initializer) {
  onnx::TensorProto* tensor = graph.add_initializer();
  tensor->set_name(initializer.name);
  if (initializer.int64_values) {
    tensor->set_data_type(onnx::TensorProto_DataType_INT64);
    tensor->add_dims(static_cast<int64_t>(initializer.int64_values->size()));
    for (const int64_t value : *initializer.int64_values) tensor->add_int64_data(value);
    return;
  }
  tensor->set_data_type(onnx::TensorProto_DataType_FLOAT);
  for (const int64_t extent : initializer.value.shape().dims()) tensor->add_dims(extent);
  // raw_data is little-endian float32, as this machine stores floats.
  static_assert(std::endian::native == std::endian::little);
  const std::size_t bytes = static_cast<std::size_t>(initializer.value.numel()) * sizeof(float);
  tensor->set_raw_data(reinterpret_cast<const char*>(initializer.value.data()), bytes);
}

void add_attribute(onnx::NodeProto& node, const ExportAttribute& attribute) {
  onnx::AttributeProto* proto = node.add_attribute();
  proto->set_name(attribute.name);
  std::visit(
      [&](const auto& value) {
        using T = std::decay_t<decltype(value)>;
        if constexpr (std::is_same_v<T, int64_t>) {
          proto->set_type(onnx::AttributeProto_AttributeType_INT);
          proto->set_i(value);
        } else if constexpr (std::is_same_v<T, std::vector<int64_t>>) {
          proto->set_type(onnx::AttributeProto_AttributeType_INTS);
          for (const int64_t v : value) proto->add_ints(v);
        } else if constexpr (std::is_same_v<T, float>) {
          proto->set_type(onnx::AttributeProto_AttributeType_FLOAT);
          proto->set_f(value);
        } else {
          proto->set_type(onnx::AttributeProto_AttributeType_STRING);
          proto->set_s(value);
        }
      },
      attribute.value);
}

onnx::ModelProto build(const ExportedModel& model, const OnnxWriteInfo& info) {
  onnx::ModelProto proto;
  proto.set_ir_version(onnx::IR_VERSION);
  proto.set_producer_name("strata");
  proto.set_producer_version(info.producer_version);
  onnx::OperatorSetIdProto* opset = proto.add_opset_import();
  opset->set_domain("");
  opset->set_version(model.opset);
  onnx::GraphProto* graph = proto.mutable_graph();
  graph->set_name("strata");
  graph->set_doc_string(info.doc_string);
  set_tensor_type(*graph->add_input(), model.input_name, model.input_shape);
  set_tensor_type(*graph->add_output(), model.output_name, model.output_shape);
  for (const ExportInitializer& initializer : model.initializers)
    add_initializer(*graph, initializer);
  for (const ExportNode& node : model.nodes) {
    onnx::NodeProto* proto_node = graph->add_node();
    proto_node->set_op_type(node.op);
    proto_node->set_name(node.name);
    for (const std::string& input : node.inputs) proto_node->add_input(input);
    for (const std::string& output : node.outputs) proto_node->add_output(output);
    for (const ExportAttribute& attribute : node.attributes) add_attribute(*proto_node, attribute);
  }
  return proto;
}

// "[batch, 64, 56, 56]", "?" for an unknown extent.
std::string shape_text(const onnx::TensorShapeProto& shape) {
  std::vector<std::string> dims;
  for (const auto& dim : shape.dim()) {
    dims.push_back(dim.has_dim_value() ? std::to_string(dim.dim_value())
                                       : (dim.has_dim_param() ? dim.dim_param() : "?"));
  }
  return fmt::format("[{}]", fmt::join(dims, ", "));
}

// Every value whose Strata shape is known against the shape ONNX inferred for it.
void compare_shapes(const ExportedModel& model, const onnx::ModelProto& inferred,
                    const std::string& what) {
  std::map<std::string, const onnx::ValueInfoProto*> infos;
  for (const auto& info : inferred.graph().value_info()) infos[info.name()] = &info;
  for (const auto& info : inferred.graph().output()) infos[info.name()] = &info;
  for (const auto& [name, sample] : model.value_shapes) {
    const auto found = infos.find(name);
    if (found == infos.end() || !found->second->type().tensor_type().has_shape()) {
      fail("{}: ONNX shape inference gave no shape for the value '{}'", what, name);
    }
    const onnx::TensorShapeProto& shape = found->second->type().tensor_type().shape();
    bool same = shape.dim_size() == static_cast<int>(sample.rank()) + 1;
    for (std::size_t d = 0; same && d < sample.rank(); ++d) {
      const auto& dim = shape.dim(static_cast<int>(d) + 1);
      same = dim.has_dim_value() && dim.dim_value() == sample[d];
    }
    if (!same) {
      fail(
          "{}: ONNX infers the shape {} for '{}', but Strata computes [batch, {}]: the layer's "
          "export mapping does not compute what the layer does",
          what, shape_text(shape), name, fmt::join(sample.dims(), ", "));
    }
  }
}

}  // namespace

int min_export_opset() { return kMinOpset; }

int max_export_opset() {
  return onnx::OpSchemaRegistry::DomainToVersionRange::Instance()
      .Map()
      .at(onnx::ONNX_DOMAIN)
      .second;
}

void check_export_opset(int opset) {
  if (opset < min_export_opset() || opset > max_export_opset()) {
    fail(
        "--opset {}: Strata exports opsets {} to {} (below 13, ONNX's Softmax flattens every "
        "axis after the first instead of normalizing one; above {}, this libonnx ({}) knows no "
        "operator schemas to check against)",
        opset, min_export_opset(), max_export_opset(), max_export_opset(),
        onnx::LAST_RELEASE_VERSION);
  }
}

std::string onnx_model(const ExportedModel& model, const OnnxWriteInfo& info,
                       const std::string& what) {
  check_export_opset(model.opset);
  onnx::ModelProto proto = build(model, info);
  // The file format's limit: one protobuf message of at most 2 GiB (no external data here).
  const std::size_t size = proto.ByteSizeLong();
  if (size > static_cast<std::size_t>(std::numeric_limits<int>::max())) {
    fail(
        "{}: the model takes {} bytes, more than the 2 GiB an ONNX file without external data "
        "can hold",
        what, size);
  }
  try {
    onnx::checker::check_model(proto);
  } catch (const std::exception& error) {
    fail("{}: onnx::checker rejects the exported model: {}", what, error.what());
  }
  try {
    // Strict: types checked, a node whose shapes do not infer is an error (as Python's
    // onnx.checker.check_model(full_check=True)). In place: a copy would double the memory of
    // the weights.
    onnx::shape_inference::InferShapes(proto, onnx::OpSchemaRegistry::Instance(),
                                       onnx::ShapeInferenceOptions(true, 1, false));
  } catch (const std::exception& error) {
    fail("{}: ONNX shape inference fails on the exported model: {}", what, error.what());
  }
  compare_shapes(model, proto, what);
  // The file holds the graph as built; readers infer the intermediate shapes themselves.
  proto.mutable_graph()->clear_value_info();
  std::string bytes;
  if (!proto.SerializeToString(&bytes)) fail("{}: protobuf could not serialize the model", what);
  return bytes;
}

void write_onnx(const ExportedModel& model, const std::filesystem::path& path,
                const OnnxWriteInfo& info) {
  const std::string bytes = onnx_model(model, info, path.string());
  write_file_atomically(path, bytes);
}

}  // namespace strata::interop
