// strata/export.hpp: a neutral description of a network for export (`strata export --onnx`).
//
// The runtime knows no file format. A layer describes what it computes in inference mode as a
// few nodes of the ONNX operator vocabulary (operator type, value names, attributes) through an
// ExportContext, in its optional Layer::export_to() hook; a transform of the data pipeline may do
// the same (Transform::export_to(), for `--preprocess`). export_graph() walks a Graph and collects
// every layer's nodes and initializers into an ExportedModel, which interop/ (strata::interop)
// turns into an ONNX ModelProto. Neither this header nor a layer includes anything of ONNX or
// protobuf.
//
//   bool export_to(ExportContext& context) const override {    // conv2d
//     std::vector<std::string> inputs = {context.input(), context.parameter("weight",
//     weight_.value)}; context.node("Conv", inputs, {context.output()})
//         .set("kernel_shape", std::vector<int64_t>{kh, kw})
//         .set("strides", ...);
//     return true;
//   }
//
// Naming: the model's input value is ExportOptions::input_name ("input"); each layer's output
// value is the layer's name (the model's last layer's: ExportOptions::output_name, "logits");
// a layer's intermediate values are "<layer>/<suffix>"; its initializers "<layer>.<name>", which
// for parameters and buffers is PyTorch's state_dict key of the checkpoint's /model/<layer>/<name>
// (conv1.weight, layer1.0.bn1.running_mean), as torch.onnx.export names them.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "strata/tensor.hpp"

namespace strata {

class Graph;
class Registries;
class Transform;

// An attribute value: an int, a list of ints, a float or a string (ONNX's INT, INTS, FLOAT and
// STRING attributes).
using ExportAttributeValue = std::variant<int64_t, std::vector<int64_t>, float, std::string>;

struct ExportAttribute {
  std::string name;
  ExportAttributeValue value;
};

// One operator application. `op` is an ONNX operator type of the default domain ("Conv",
// "MaxPool", "Gemm"), whose semantics at the exported opset it must have.
struct ExportNode {
  std::string op;
  std::string name;  // unique in the model: the layer's name, then "<layer>/<k>"
  std::vector<std::string> inputs, outputs;
  std::vector<ExportAttribute> attributes;

  // Adds (or replaces) an attribute; returns *this so that calls chain.
  ExportNode& set(const std::string& attribute, ExportAttributeValue value);
  // The attribute's value, or null.
  const ExportAttributeValue* find(std::string_view attribute) const;
};

// A constant of the model: a parameter, a buffer or a constant a mapping needs: float32
// `value`, or, when `int64_values` is set, a 1-D int64 tensor of those values (Pad's pads).
struct ExportInitializer {
  std::string name;
  Tensor value;
  std::optional<std::vector<int64_t>> int64_values;
};

// ExportContext
//
// WHAT THIS REPRESENTS
//   The model being described, as seen by the one layer (or transform) that export_graph() is
//   asking to describe itself: the names and sample shapes of its input values, the name of the
//   value it must produce, the opset, and the nodes and initializers gathered so far.
// REQUIRES (of a hook)
//   - it produces output() from its inputs with nodes whose semantics equal its own inference
//     forward() for a batch of any size (the batch dimension is dynamic), or it calls
//     pass_through() when it computes the identity (dropout in inference);
//   - it fails (strata::fail, naming the setting) for a configuration it cannot express at
//     opset(), rather than exporting something that computes another function.
// ENSURES (of export_graph)
//   - a hook that returns true but produced no node writing output() (and did not pass_through)
//     is an Error naming the layer.
class ExportContext {
 public:
  explicit ExportContext(int opset) : opset_(opset) {}

  int opset() const { return opset_; }

  // ---- what a hook reads ----
  const std::string& layer() const { return layer_; }
  std::size_t num_inputs() const { return inputs_.size(); }
  const std::string& input(std::size_t i = 0) const { return inputs_.at(i); }
  const std::vector<std::string>& inputs() const { return inputs_; }  // every input(i), in order
  const Shape& input_shape(std::size_t i = 0) const { return input_shapes_.at(i); }  // no batch
  const std::string& output() const { return output_; }
  const Shape& output_shape() const { return output_shape_; }  // no batch

  // ---- what a hook writes ----
  // A name for an intermediate value of this layer: "<layer>/<suffix>".
  std::string value(std::string_view suffix) const;
  // Adds the initializer "<layer>.<name>" holding `tensor` (shared, not copied) and returns its
  // name. Parameters and buffers use their checkpoint name (Param::name: "weight", "running_var").
  std::string parameter(std::string_view name, const Tensor& tensor);
  // Adds the 1-D int64 initializer "<layer>.<name>" (operator inputs that ONNX types as int64,
  // such as Pad's pads) and returns its name.
  std::string int64_constant(std::string_view name, std::vector<int64_t> values);
  // Adds a node computing `outputs` from `inputs` (value or initializer names).
  ExportNode& node(std::string op, std::vector<std::string> inputs,
                   std::vector<std::string> outputs);
  // The layer's output is its input `i` itself (the identity): no node.
  void pass_through(std::size_t i = 0);

  // ---- for export_graph() (and tests driving one hook) ----
  // Starts describing `layer`, whose output value is to be named `output`.
  void begin(std::string layer, std::vector<std::string> inputs, std::vector<Shape> input_shapes,
             std::string output, Shape output_shape);
  // Ends it: the name of the value holding the layer's output (output(), or the input it passed
  // through). An Error when the hook produced neither.
  std::string end();
  const std::vector<ExportNode>& nodes() const { return nodes_; }
  const std::vector<ExportInitializer>& initializers() const { return initializers_; }

 private:
  int opset_;
  std::string layer_, output_;
  std::vector<std::string> inputs_;
  std::vector<Shape> input_shapes_;
  Shape output_shape_;
  std::size_t first_node_ = 0;  // the layer's first node in nodes_
  int passed_through_ = -1;
  std::vector<ExportNode> nodes_;
  std::vector<ExportInitializer> initializers_;
};

// A whole network described for export: what interop turns into an ONNX model.
struct ExportedModel {
  int opset = 13;
  std::string input_name, output_name;
  Shape input_shape, output_shape;  // sample shapes: the batch dimension is dynamic
  std::vector<ExportNode> nodes;    // in execution order
  std::vector<ExportInitializer> initializers;
  // Each layer's (and transform's) output value with the sample shape Strata computes for it, so
  // that the writer can compare them with the shapes ONNX infers.
  std::vector<std::pair<std::string, Shape>> value_shapes;
};

struct ExportOptions {
  int opset = 13;
  std::string input_name = "input";
  std::string output_name = "logits";
};

// Describes `graph` in inference mode (its current parameters and buffers), preceded by the
// deterministic transforms in `preprocess` (set up for images of the model's input shape, with
// their statistics loaded; may be empty), each as its export_to() describes it, or left out when
// its apply() leaves a random image of the model's input shape unchanged (a flip or a colour
// jitter, which are random only in training).
//   Errors: a layer whose export_to() returns false, "layer 'fc' (type 'swish' from plugin
//   'example_swish') has no export mapping: ...", naming its plugin; a transform that changes the
//   image and has no mapping; a layer or transform whose hook refuses its settings.
ExportedModel export_graph(const Graph& graph, const Registries& registries,
                           const ExportOptions& options,
                           std::span<const std::shared_ptr<const Transform>> preprocess = {});

}  // namespace strata
