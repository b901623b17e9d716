// ONNX import (strata/interop/onnx_import.hpp): the graph walked node by node, in the file's
// order (the ONNX checker has made sure it is topological), each node mapped onto a Strata layer,
// folded into the layer before or after it, or evaluated as a small integer computation (the
// Shape -> Gather -> Unsqueeze -> Concat -> Reshape chain with which PyTorch writes
// `x.view(x.size(0), -1)`).
#include "strata/interop/onnx_import.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <onnx/checker.h>
#include <onnx/onnx_pb.h>
#include <onnx/shape_inference/implementation.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cmath>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <optional>
#include <set>

#include "strata/error.hpp"
#include "strata/file_check.hpp"
#include "strata/graph.hpp"
#include "strata/ops.hpp"

namespace strata::interop {

namespace {

// protobuf refuses messages of 2 GiB and more; PyTorch writes larger models with external data.
constexpr std::uint64_t kMaxModelBytes = (std::uint64_t{1} << 31) - 1;

// An element of an integer vector computed in the graph: a number, or the batch extent, which a
// graph exported with a dynamic batch leaves unknown.
struct Dim {
  int64_t value = 0;
  bool batch = false;
};

// An integer vector computed in the graph (a shape, an index): the results of Shape, Gather,
// Unsqueeze, Squeeze, Concat, Slice and Cast on shapes, and integer constants.
struct IntValue {
  std::vector<Dim> dims;  // the values, row by row
  bool scalar = false;
  int64_t columns = 0;  // > 0: a matrix [dims.size() / columns, columns] (PyTorch's pads
                        // computation reshapes, flips and transposes one)
};

// A layer of the experiment being written.
struct LayerEntry {
  std::string name;
  std::string type;
  std::vector<std::string> inputs;                        // layer names, or "input"
  std::vector<std::pair<std::string, std::string>> keys;  // key, YAML text of the value
  std::vector<NamedTensor> params;                        // "weight", "bias", ...
  std::string output_value;                               // the ONNX value it computes
  bool bias_pending = false;  // a MatMul's linear, or a Conv without bias: an Add may give one

  void set(const std::string& key, std::string value) {
    for (auto& [name, text] : keys) {
      if (name == key) {
        text = std::move(value);
        return;
      }
    }
    keys.emplace_back(key, std::move(value));
  }
  void erase(const std::string& key) {
    std::erase_if(keys, [&](const auto& entry) { return entry.first == key; });
  }
};

// A Pad node's output, mapped when a consumer is seen: folded into a Conv or AveragePool's
// padding where that is exact, else a `pad` layer of its own.
struct PendingPad {
  std::string source;             // the padded ONNX value
  std::array<int64_t, 4> pads{};  // top, bottom, left, right
  std::string mode;               // Strata's: constant, reflect, replicate (ONNX's edge)
  float value = 0;                // for constant
  const onnx::NodeProto* node = nullptr;
};

// Four paddings: begin and end of height, then of width (Strata's [top, bottom, left, right]).
using Pads = std::array<int64_t, 4>;

bool all_zero(const Pads& pads) {
  return std::all_of(pads.begin(), pads.end(), [](int64_t p) { return p == 0; });
}

// `n`, or `[h, w]` when they differ.
std::string pair_text(int64_t h, int64_t w) {
  return h == w ? fmt::format("{}", h) : fmt::format("[{}, {}]", h, w);
}

// Strata's padding forms: p, [ph, pw] (symmetric) or [top, bottom, left, right].
std::string padding_text(const Pads& p) {
  if (p[0] == p[1] && p[2] == p[3]) return pair_text(p[0], p[2]);
  return fmt::format("[{}, {}, {}, {}]", p[0], p[1], p[2], p[3]);
}

// A float as YAML: the shortest text that reads back as the same float.
std::string float_text(float value) { return fmt::format("{}", value); }

// Text for a YAML comment line: control characters (a line break) become spaces.
std::string comment_text(std::string text) {
  for (char& c : text) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = ' ';
  }
  return text;
}

// A name as a YAML scalar: plain when it cannot be read as anything but this string, else quoted.
std::string yaml_string(const std::string& text) {
  static const std::set<std::string> kSpecial = {"true", "false", "yes", "no", "on",
                                                 "off",  "null",  "y",   "n",  "~"};
  std::string lower = text;
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return std::tolower(c); });
  bool plain = !text.empty() &&
               (std::isalpha(static_cast<unsigned char>(text[0])) || text[0] == '_') &&
               !kSpecial.contains(lower);
  for (char c : text) {
    plain =
        plain && (std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.' || c == '-');
  }
  if (plain) return text;
  std::string quoted = "\"";
  for (char c : text) {
    if (c == '"' || c == '\\') quoted += '\\';
    quoted += c;
  }
  return quoted + "\"";
}

// Where torch.onnx.export (1.13 and later) writes a module's scope into the node name,
// "/layer1/layer1.0/downsample/downsample.0/Conv": the module's name in the state dict,
// "layer1.0.downsample.0". A segment is a child's attribute name ("conv1") or, for a child of a
// Sequential, the Sequential's segment with the index ("layer1.0"), which replaces it.
std::string module_name_of(const std::string& node_name) {
  if (node_name.empty() || node_name[0] != '/') return "";
  std::vector<std::string> segments;
  std::size_t begin = 1;
  while (begin <= node_name.size()) {
    const std::size_t end = std::min(node_name.find('/', begin), node_name.size());
    if (end > begin) segments.push_back(node_name.substr(begin, end - begin));
    begin = end + 1;
  }
  if (segments.size() < 2) return "";
  std::vector<std::string> path;
  for (std::size_t i = 0; i + 1 < segments.size(); ++i) {
    if (!path.empty() && segments[i].starts_with(segments[i - 1] + ".")) {
      path.back() = segments[i];
    } else {
      path.push_back(segments[i]);
    }
  }
  return fmt::format("{}", fmt::join(path, "."));
}

std::vector<int64_t> dims_of(const onnx::TensorProto& tensor) {
  return {tensor.dims().begin(), tensor.dims().end()};
}

int64_t element_count(const std::vector<int64_t>& dims) {
  int64_t n = 1;
  for (int64_t d : dims) {
    if (d < 0 || (d > 0 && n > (int64_t{1} << 40) / d)) fail("a tensor extent {} is not usable", d);
    n *= d;
  }
  return n;
}

template <class T>
std::vector<T> raw_values(const onnx::TensorProto& tensor, int64_t n, std::string_view what) {
  if (tensor.raw_data().size() != static_cast<std::size_t>(n) * sizeof(T)) {
    fail("{}: raw_data holds {} bytes, but {} values of {} bytes were expected", what,
         tensor.raw_data().size(), n, sizeof(T));
  }
  std::vector<T> values(static_cast<std::size_t>(n));
  if (n > 0) std::memcpy(values.data(), tensor.raw_data().data(), tensor.raw_data().size());
  return values;
}

template <class T, class Field>
std::vector<T> field_values(const Field& field, int64_t n, std::string_view what) {
  if (field.size() != n) fail("{}: holds {} values, but its shape has {}", what, field.size(), n);
  return std::vector<T>(field.begin(), field.end());
}

void require_internal(const onnx::TensorProto& tensor, std::string_view what) {
  if (tensor.data_location() == onnx::TensorProto::EXTERNAL || tensor.external_data_size() > 0) {
    fail(
        "{}: its data is stored outside the .onnx file (external data), which import does not "
        "read; save the model with the weights inside (onnx.save(model, path, "
        "save_as_external_data=False), possible below 2 GB)",
        what);
  }
}

// A float constant as a Strata tensor of the same shape (float32; double is converted).
Tensor float_tensor(const onnx::TensorProto& tensor, std::string_view what) {
  require_internal(tensor, what);
  const std::vector<int64_t> dims = dims_of(tensor);
  const int64_t n = element_count(dims);
  Tensor result{Shape(dims)};
  if (tensor.data_type() == onnx::TensorProto::FLOAT && tensor.has_raw_data()) {
    // The usual form, and the large one (VGG's 400 MB): copied once.
    if (tensor.raw_data().size() != static_cast<std::size_t>(n) * sizeof(float)) {
      fail("{}: raw_data holds {} bytes, but {} float values were expected", what,
           tensor.raw_data().size(), n);
    }
    if (n > 0) std::memcpy(result.data(), tensor.raw_data().data(), tensor.raw_data().size());
  } else if (tensor.data_type() == onnx::TensorProto::FLOAT) {
    const std::vector<float> values = field_values<float>(tensor.float_data(), n, what);
    std::copy(values.begin(), values.end(), result.data());
  } else if (tensor.data_type() == onnx::TensorProto::DOUBLE) {
    const std::vector<double> values = tensor.has_raw_data()
                                           ? raw_values<double>(tensor, n, what)
                                           : field_values<double>(tensor.double_data(), n, what);
    std::transform(values.begin(), values.end(), result.data(),
                   [](double v) { return static_cast<float>(v); });
  } else {
    fail("{}: expected float values, found ONNX data type {} ({})", what, tensor.data_type(),
         onnx::TensorProto::DataType_Name(
             static_cast<onnx::TensorProto::DataType>(tensor.data_type())));
  }
  return result;
}

// An integer constant (int64 or int32) as an IntValue; nullopt for another data type.
std::optional<IntValue> int_constant(const onnx::TensorProto& tensor, std::string_view what) {
  require_internal(tensor, what);
  const std::vector<int64_t> dims = dims_of(tensor);
  const int64_t n = element_count(dims);
  std::vector<int64_t> values;
  if (tensor.data_type() == onnx::TensorProto::INT64) {
    values = tensor.has_raw_data() ? raw_values<int64_t>(tensor, n, what)
                                   : field_values<int64_t>(tensor.int64_data(), n, what);
  } else if (tensor.data_type() == onnx::TensorProto::BOOL) {
    const std::vector<uint8_t> narrow = tensor.has_raw_data()
                                            ? raw_values<uint8_t>(tensor, n, what)
                                            : field_values<uint8_t>(tensor.int32_data(), n, what);
    values.assign(narrow.begin(), narrow.end());
  } else if (tensor.data_type() == onnx::TensorProto::INT32) {
    const std::vector<int32_t> narrow = tensor.has_raw_data()
                                            ? raw_values<int32_t>(tensor, n, what)
                                            : field_values<int32_t>(tensor.int32_data(), n, what);
    values.assign(narrow.begin(), narrow.end());
  } else {
    return std::nullopt;
  }
  if (dims.size() > 1) return std::nullopt;
  IntValue result;
  result.scalar = dims.empty();
  for (int64_t v : values) result.dims.push_back({v, false});
  return result;
}

const std::vector<std::string> kIntegerOps = {"Shape",   "Gather",    "Unsqueeze",
                                              "Squeeze", "Slice",     "Cast",
                                              "Reshape", "Transpose", "ConstantOfShape"};

class Importer {
 public:
  Importer(std::string file, onnx::ModelProto& model, int64_t opset)
      : file_(std::move(file)), model_(model), opset_(opset) {}

  OnnxImport run();

  using Handler = void (Importer::*)(const onnx::NodeProto&);
  static const std::map<std::string, Handler>& handlers();

 private:
  // ---- the graph's values ----
  void read_shapes();
  void read_constants();
  void read_input();
  void check_before_inference() const;
  std::string where(const onnx::NodeProto& node) const;
  const onnx::TensorProto* constant_of(const std::string& value) const;
  const onnx::TensorProto& constant(const onnx::NodeProto& node, int index) const;
  bool has_input(const onnx::NodeProto& node, int index) const {
    return node.input_size() > index && !node.input(index).empty();
  }
  std::optional<IntValue> int_value(const std::string& value) const;
  IntValue int_input(const onnx::NodeProto& node, int index) const;
  std::vector<int64_t> known_ints(const onnx::NodeProto& node, int index) const;
  std::vector<int64_t> shape_of(const onnx::NodeProto& node, const std::string& value) const;
  std::string activation(const onnx::NodeProto& node, int index);
  std::string resolve(const onnx::NodeProto& node, const std::string& value);
  int64_t consumers(const std::string& value) const;
  void alias(const onnx::NodeProto& node, const std::string& layer) {
    producer_[node.output(0)] = layer;
  }
  void require_unused_outputs(const onnx::NodeProto& node, int first) const;
  void infer(const onnx::NodeProto& node, std::vector<int64_t> shape);
  void infer_after(const onnx::NodeProto& node);
  std::vector<int64_t> window_shape(const onnx::NodeProto& node, int64_t channels,
                                    const std::array<int64_t, 2>& kernel,
                                    const std::array<int64_t, 2>& stride,
                                    const std::array<int64_t, 2>& dilation, const Pads& pads,
                                    bool ceil);

  // ---- attributes ----
  const onnx::AttributeProto* attribute(const onnx::NodeProto& node, const std::string& name) const;
  const onnx::AttributeProto* typed_attribute(const onnx::NodeProto& node, const std::string& name,
                                              onnx::AttributeProto::AttributeType type,
                                              const char* noun) const;
  int64_t attr_int(const onnx::NodeProto& node, const std::string& name, int64_t fallback) const;
  float attr_float(const onnx::NodeProto& node, const std::string& name, float fallback) const;
  std::string attr_string(const onnx::NodeProto& node, const std::string& name,
                          std::string fallback) const;
  std::vector<int64_t> attr_ints(const onnx::NodeProto& node, const std::string& name,
                                 std::vector<int64_t> fallback) const;
  std::array<int64_t, 2> attr_pair(const onnx::NodeProto& node, const std::string& name,
                                   int64_t fallback) const;
  Pads attr_pads(const onnx::NodeProto& node, const std::array<int64_t, 2>& kernel,
                 const std::array<int64_t, 2>& stride, const std::array<int64_t, 2>& dilation);

  // ---- layers ----
  LayerEntry& add_layer(const onnx::NodeProto& node, const std::string& type,
                        std::vector<std::string> inputs, const std::string& weight_name = "");
  std::string unique_name(const onnx::NodeProto& node, const std::string& type,
                          const std::string& weight_name);
  LayerEntry* layer_named(const std::string& name);
  std::string materialize(const PendingPad& pad);

  // ---- operators ----
  void conv(const onnx::NodeProto& node);
  void pool(const onnx::NodeProto& node, bool max);
  void max_pool(const onnx::NodeProto& node) { pool(node, true); }
  void average_pool(const onnx::NodeProto& node) { pool(node, false); }
  void global_average_pool(const onnx::NodeProto& node);
  void reduce_mean(const onnx::NodeProto& node);
  void gemm(const onnx::NodeProto& node);
  void matmul(const onnx::NodeProto& node);
  void add(const onnx::NodeProto& node);
  void sum(const onnx::NodeProto& node);
  void mul(const onnx::NodeProto& node);
  void batch_norm(const onnx::NodeProto& node);
  void concat(const onnx::NodeProto& node);
  void softmax(const onnx::NodeProto& node);
  void lrn(const onnx::NodeProto& node);
  void unary(const onnx::NodeProto& node);
  void leaky_relu(const onnx::NodeProto& node);
  void clip(const onnx::NodeProto& node);
  void hard_sigmoid(const onnx::NodeProto& node);
  void dropout(const onnx::NodeProto& node);
  void identity(const onnx::NodeProto& node);
  void constant_node(const onnx::NodeProto& node);
  void flatten(const onnx::NodeProto& node);
  void reshape(const onnx::NodeProto& node);
  void pad(const onnx::NodeProto& node);
  void shape(const onnx::NodeProto& node);
  void gather(const onnx::NodeProto& node);
  void unsqueeze(const onnx::NodeProto& node);
  void squeeze(const onnx::NodeProto& node);
  void slice(const onnx::NodeProto& node);
  void cast(const onnx::NodeProto& node);
  void transpose(const onnx::NodeProto& node);
  void constant_of_shape(const onnx::NodeProto& node);
  void reshape_integers(const onnx::NodeProto& node);

  // ---- the result ----
  void place_output_last();
  std::string experiment_yaml() const;

  std::string file_;
  onnx::ModelProto& model_;
  int64_t opset_;
  std::string input_name_;                              // the graph input's ONNX name
  Shape input_shape_;                                   // without the batch extent
  std::map<std::string, std::vector<int64_t>> shapes_;  // inferred; -1 for an unknown extent
  std::map<std::string, const onnx::TensorProto*> constants_;
  std::deque<onnx::TensorProto> owned_constants_;  // Constant nodes given as value_float etc.
  std::map<std::string, IntValue> ints_;           // computed integer vectors
  std::map<std::string, std::string> producer_;    // activation value -> layer name or "input"
  std::map<std::string, PendingPad> pads_;         // Pad outputs not yet mapped
  std::map<std::string, int64_t> consumers_;
  std::vector<LayerEntry> layers_;
  std::set<std::string> names_;
};

const std::map<std::string, Importer::Handler>& Importer::handlers() {
  static const std::map<std::string, Handler> kHandlers = {
      {"Conv", &Importer::conv},
      {"MaxPool", &Importer::max_pool},
      {"AveragePool", &Importer::average_pool},
      {"GlobalAveragePool", &Importer::global_average_pool},
      {"Gemm", &Importer::gemm},
      {"MatMul", &Importer::matmul},
      {"Add", &Importer::add},
      {"Sum", &Importer::sum},
      {"Mul", &Importer::mul},
      {"BatchNormalization", &Importer::batch_norm},
      {"Concat", &Importer::concat},
      {"Softmax", &Importer::softmax},
      {"LRN", &Importer::lrn},
      {"Relu", &Importer::unary},
      {"Tanh", &Importer::unary},
      {"Sigmoid", &Importer::unary},
      {"HardSwish", &Importer::unary},
      {"LeakyRelu", &Importer::leaky_relu},
      {"Clip", &Importer::clip},
      {"HardSigmoid", &Importer::hard_sigmoid},
      {"Dropout", &Importer::dropout},
      {"Identity", &Importer::identity},
      {"Constant", &Importer::constant_node},
      {"Flatten", &Importer::flatten},
      {"Reshape", &Importer::reshape},
      {"ReduceMean", &Importer::reduce_mean},
      {"Pad", &Importer::pad},
      {"Shape", &Importer::shape},
      {"Gather", &Importer::gather},
      {"Unsqueeze", &Importer::unsqueeze},
      {"Squeeze", &Importer::squeeze},
      {"Slice", &Importer::slice},
      {"Cast", &Importer::cast},
      {"Transpose", &Importer::transpose},
      {"ConstantOfShape", &Importer::constant_of_shape},
  };
  return kHandlers;
}

// ---------------------------------------------------------------------------------------------
// The graph's values

std::string Importer::where(const onnx::NodeProto& node) const {
  const std::string name = !node.name().empty()     ? node.name()
                           : node.output_size() > 0 ? "(output " + node.output(0) + ")"
                                                    : "(unnamed)";
  return fmt::format("{}: node '{}' ({})", file_, name, node.op_type());
}

void Importer::read_shapes() {
  const auto add = [&](const onnx::ValueInfoProto& info) {
    if (!info.type().has_tensor_type() || !info.type().tensor_type().has_shape()) return;
    std::vector<int64_t> dims;
    for (const auto& dim : info.type().tensor_type().shape().dim())
      dims.push_back(dim.has_dim_value() ? dim.dim_value() : -1);
    shapes_[info.name()] = std::move(dims);
  };
  for (const auto& info : model_.graph().input()) add(info);
  for (const auto& info : model_.graph().value_info()) add(info);
  for (const auto& info : model_.graph().output()) add(info);
}

void Importer::read_constants() {
  for (const auto& tensor : model_.graph().initializer()) constants_[tensor.name()] = &tensor;
  for (const auto& node : model_.graph().node()) {
    for (const std::string& input : node.input()) consumers_[input] += 1;
  }
  for (const auto& output : model_.graph().output()) consumers_[output.name()] += 1;
}

void Importer::read_input() {
  std::vector<const onnx::ValueInfoProto*> inputs;
  for (const auto& info : model_.graph().input()) {
    if (!constants_.contains(info.name())) inputs.push_back(&info);
  }
  if (inputs.size() != 1) {
    std::vector<std::string> names;
    for (const auto* info : inputs) names.push_back("'" + info->name() + "'");
    fail("{}: the graph has {} inputs ({}) besides its initializers; a Strata model has one", file_,
         inputs.size(), fmt::join(names, ", "));
  }
  const onnx::ValueInfoProto& input = *inputs[0];
  input_name_ = input.name();
  const auto& type = input.type().tensor_type();
  if (!input.type().has_tensor_type() || type.elem_type() != onnx::TensorProto::FLOAT) {
    fail("{}: the graph input '{}' is not a float tensor; Strata models take float32", file_,
         input_name_);
  }
  std::vector<int64_t> sample;
  const auto& dims = type.shape().dim();
  if (!type.has_shape() || dims.size() < 2) {
    fail(
        "{}: the graph input '{}' has no [N, ...] shape (rank {}); Strata needs the batch "
        "first and the sample's extents",
        file_, input_name_, type.has_shape() ? dims.size() : 0);
  }
  for (int i = 1; i < dims.size(); ++i) {
    if (!dims[i].has_dim_value() || dims[i].dim_value() <= 0) {
      fail(
          "{}: the graph input '{}' has an unknown extent {} ('{}'); Strata models have a fixed "
          "input size: export with a fixed size (torch.onnx.export's dynamic_axes on the batch "
          "only)",
          file_, input_name_, i, dims[i].dim_param());
    }
    sample.push_back(dims[i].dim_value());
  }
  input_shape_ = Shape(sample);
  producer_[input_name_] = "input";
}

const onnx::TensorProto* Importer::constant_of(const std::string& value) const {
  const auto found = constants_.find(value);
  return found == constants_.end() ? nullptr : found->second;
}

const onnx::TensorProto& Importer::constant(const onnx::NodeProto& node, int index) const {
  const onnx::TensorProto* tensor =
      has_input(node, index) ? constant_of(node.input(index)) : nullptr;
  if (!tensor) {
    fail(
        "{}: input {} ('{}') must be a constant (an initializer or a Constant node): Strata takes "
        "weights from the file, not from a computation",
        where(node), index, has_input(node, index) ? node.input(index) : "");
  }
  return *tensor;
}

std::optional<IntValue> Importer::int_value(const std::string& value) const {
  if (const auto found = ints_.find(value); found != ints_.end()) return found->second;
  if (const onnx::TensorProto* tensor = constant_of(value)) return int_constant(*tensor, value);
  return std::nullopt;
}

IntValue Importer::int_input(const onnx::NodeProto& node, int index) const {
  std::optional<IntValue> value =
      has_input(node, index) ? int_value(node.input(index)) : std::nullopt;
  if (!value) {
    fail(
        "{}: input {} ('{}') must be an integer vector known at import (a constant, or computed "
        "from shapes by {}); it is a tensor computed from the input",
        where(node), index, has_input(node, index) ? node.input(index) : "",
        fmt::join(kIntegerOps, ", "));
  }
  return *value;
}

std::vector<int64_t> Importer::known_ints(const onnx::NodeProto& node, int index) const {
  std::vector<int64_t> values;
  for (const Dim& dim : int_input(node, index).dims) {
    if (dim.batch)
      fail("{}: input {} ('{}') depends on the batch size", where(node), index, node.input(index));
    values.push_back(dim.value);
  }
  return values;
}

std::vector<int64_t> Importer::shape_of(const onnx::NodeProto& node,
                                        const std::string& value) const {
  const auto found = shapes_.find(value);
  if (found == shapes_.end()) {
    fail("{}: ONNX shape inference gave no shape for '{}', which import needs here", where(node),
         value);
  }
  for (std::size_t i = 1; i < found->second.size(); ++i) {
    if (found->second[i] < 0) {
      fail("{}: '{}' has shape [{}] with an unknown extent {} (only the batch may be unknown)",
           where(node), value, fmt::join(found->second, ", "), i);
    }
  }
  return found->second;
}

std::string Importer::activation(const onnx::NodeProto& node, int index) {
  if (!has_input(node, index)) fail("{}: input {} is missing", where(node), index);
  return resolve(node, node.input(index));
}

// The layer whose output is ONNX value `value` ("input" for the model input); a pending Pad
// becomes a pad layer here.
std::string Importer::resolve(const onnx::NodeProto& node, const std::string& value) {
  if (const auto found = producer_.find(value); found != producer_.end()) return found->second;
  if (const auto found = pads_.find(value); found != pads_.end()) return materialize(found->second);
  if (constant_of(value) || ints_.contains(value)) {
    fail(
        "{}: input '{}' is a constant, where Strata expects a tensor computed from the model "
        "input (a constant operand is supported only as a weight or bias)",
        where(node), value);
  }
  fail("{}: input '{}' is not computed by any node this import mapped", where(node), value);
}

int64_t Importer::consumers(const std::string& value) const {
  const auto found = consumers_.find(value);
  return found == consumers_.end() ? 0 : found->second;
}

void Importer::require_unused_outputs(const onnx::NodeProto& node, int first) const {
  for (int i = first; i < node.output_size(); ++i) {
    if (!node.output(i).empty() && consumers(node.output(i)) > 0) {
      fail("{}: output {} ('{}') is used; Strata's layer has only the first output", where(node), i,
           node.output(i));
    }
  }
}

// The output shape of a node, where ONNX shape inference did not find it (a Pad whose pads
// PyTorch computes leaves every later extent unknown to it).
void Importer::infer(const onnx::NodeProto& node, std::vector<int64_t> shape) {
  std::vector<int64_t>& known = shapes_[node.output(0)];
  const bool complete = !known.empty() && std::all_of(known.begin() + 1, known.end(),
                                                      [](int64_t d) { return d >= 0; });
  if (!complete) known = std::move(shape);
}

// The shapes of the other operators' outputs, from their inputs' (see infer()).
void Importer::infer_after(const onnx::NodeProto& node) {
  static const std::set<std::string> kSameShape = {
      "Relu",    "Tanh",        "Sigmoid", "HardSwish", "LeakyRelu",
      "Clip",    "HardSigmoid", "LRN",     "Softmax",   "BatchNormalization",
      "Dropout", "Identity",    "Add",     "Sum"};
  const std::string& value = node.output_size() > 0 ? node.output(0) : "";
  if (!producer_.contains(value) && !pads_.contains(value)) return;  // an integer or a constant
  const auto input = [&](int i) {
    const auto found = i < node.input_size() ? shapes_.find(node.input(i)) : shapes_.end();
    return found == shapes_.end() ? std::vector<int64_t>{} : found->second;
  };
  std::vector<int64_t> shape = input(0);
  if (shape.empty()) return;
  const std::string& op = node.op_type();
  if (op == "Mul" && input(1).size() == shape.size() && shape.size() == 4 &&
      shape[2] * shape[3] < input(1)[2] * input(1)[3]) {
    shape = input(1);  // a [C, 1, 1] gate times a feature map
  } else if (op == "Gemm" || op == "MatMul") {
    shape = {shape[0], layer_named(producer_.at(value))->params[0].tensor.dim(0)};
  } else if (op == "Concat" && shape.size() > 1) {
    for (int i = 1; i < node.input_size(); ++i) shape[1] += input(i).size() > 1 ? input(i)[1] : 0;
  } else if (op == "Flatten") {
    int64_t features = 1;
    for (std::size_t i = 1; i < shape.size(); ++i) features *= shape[i];
    shape = {shape[0], features};
  } else if (op == "Pad" && shape.size() == 4) {
    const Pads& pads = pads_.at(value).pads;
    shape[2] += pads[0] + pads[1];
    shape[3] += pads[2] + pads[3];
  } else if (!kSameShape.contains(op) && op != "Mul") {
    return;
  }
  infer(node, std::move(shape));
}

// [N, channels, H', W'] of a convolution or pooling window on the node's input, with PyTorch's
// ceil rule (the last window starts inside the input or its begin padding).
std::vector<int64_t> Importer::window_shape(const onnx::NodeProto& node, int64_t channels,
                                            const std::array<int64_t, 2>& kernel,
                                            const std::array<int64_t, 2>& stride,
                                            const std::array<int64_t, 2>& dilation,
                                            const Pads& pads, bool ceil) {
  const std::vector<int64_t> in = shape_of(node, node.input(0));
  if (in.size() != 4)
    fail("{}: expected a 4-D input [N, C, H, W], found rank {}", where(node), in.size());
  std::vector<int64_t> out = {in[0], channels < 0 ? in[1] : channels, 0, 0};
  for (int axis = 0; axis < 2; ++axis) {
    const int64_t window = dilated_extent(kernel[axis], dilation[axis]);
    const int64_t span = in[2 + axis] + pads[2 * axis] + pads[2 * axis + 1] - window;
    if (span < 0) fail("{}: the window is larger than the padded input", where(node));
    out[2 + axis] = window_output_extent(in[2 + axis], window, pads[2 * axis], pads[2 * axis + 1],
                                         stride[axis], ceil);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Attributes

const onnx::AttributeProto* Importer::attribute(const onnx::NodeProto& node,
                                                const std::string& name) const {
  for (const auto& attribute : node.attribute()) {
    if (attribute.name() == name) return &attribute;
  }
  return nullptr;
}

// The attribute `name` of `node`, or null when it has none; an Error naming it and `noun` ("an
// integer") when it is not of `type`.
const onnx::AttributeProto* Importer::typed_attribute(const onnx::NodeProto& node,
                                                      const std::string& name,
                                                      onnx::AttributeProto::AttributeType type,
                                                      const char* noun) const {
  const auto* a = attribute(node, name);
  if (a && a->type() != type) fail("{}: attribute '{}' must be {}", where(node), name, noun);
  return a;
}

int64_t Importer::attr_int(const onnx::NodeProto& node, const std::string& name,
                           int64_t fallback) const {
  const auto* a = typed_attribute(node, name, onnx::AttributeProto::INT, "an integer");
  return a ? a->i() : fallback;
}

float Importer::attr_float(const onnx::NodeProto& node, const std::string& name,
                           float fallback) const {
  const auto* a = typed_attribute(node, name, onnx::AttributeProto::FLOAT, "a float");
  return a ? a->f() : fallback;
}

std::string Importer::attr_string(const onnx::NodeProto& node, const std::string& name,
                                  std::string fallback) const {
  const auto* a = typed_attribute(node, name, onnx::AttributeProto::STRING, "a string");
  return a ? a->s() : fallback;
}

std::vector<int64_t> Importer::attr_ints(const onnx::NodeProto& node, const std::string& name,
                                         std::vector<int64_t> fallback) const {
  const auto* a = typed_attribute(node, name, onnx::AttributeProto::INTS, "a list of integers");
  return a ? std::vector<int64_t>(a->ints().begin(), a->ints().end()) : fallback;
}

// A 2-D attribute such as strides = [sh, sw]; `fallback` for both when absent.
std::array<int64_t, 2> Importer::attr_pair(const onnx::NodeProto& node, const std::string& name,
                                           int64_t fallback) const {
  const std::vector<int64_t> values = attr_ints(node, name, {fallback, fallback});
  if (values.size() != 2) {
    fail("{}: attribute '{}' = [{}]: Strata's layers are 2-D, so 2 values were expected",
         where(node), name, fmt::join(values, ", "));
  }
  if (values[0] < 1 || values[1] < 1) {
    fail("{}: attribute '{}' = [{}] must be positive", where(node), name, fmt::join(values, ", "));
  }
  return {values[0], values[1]};
}

// The paddings of a Conv or pooling node as [top, bottom, left, right]: its `pads` ([top, left,
// bottom, right] in ONNX), or what auto_pad SAME_UPPER / SAME_LOWER / VALID computes for the input
// extents that shape inference found.
Pads Importer::attr_pads(const onnx::NodeProto& node, const std::array<int64_t, 2>& kernel,
                         const std::array<int64_t, 2>& stride,
                         const std::array<int64_t, 2>& dilation) {
  const std::string auto_pad = attr_string(node, "auto_pad", "NOTSET");
  if (auto_pad == "NOTSET") {
    const std::vector<int64_t> pads = attr_ints(node, "pads", {0, 0, 0, 0});
    if (pads.size() != 4)
      fail("{}: attribute 'pads' = [{}]: 4 values were expected", where(node),
           fmt::join(pads, ", "));
    for (int64_t p : pads) {
      if (p < 0)
        fail("{}: attribute 'pads' = [{}]: negative padding is not supported", where(node),
             fmt::join(pads, ", "));
    }
    return {pads[0], pads[2], pads[1], pads[3]};
  }
  if (auto_pad == "VALID") return {0, 0, 0, 0};
  if (auto_pad != "SAME_UPPER" && auto_pad != "SAME_LOWER") {
    fail("{}: attribute 'auto_pad' = '{}': expected NOTSET, SAME_UPPER, SAME_LOWER or VALID",
         where(node), auto_pad);
  }
  const std::vector<int64_t> in = shape_of(node, node.input(0));
  if (in.size() != 4) fail("{}: auto_pad needs a 4-D input, found rank {}", where(node), in.size());
  Pads pads{};
  for (int axis = 0; axis < 2; ++axis) {
    const int64_t extent = in[2 + axis];
    const int64_t out = (extent + stride[axis] - 1) / stride[axis];
    const int64_t total = std::max<int64_t>(
        0, (out - 1) * stride[axis] + (kernel[axis] - 1) * dilation[axis] + 1 - extent);
    const int64_t small = total / 2, large = total - small;
    pads[2 * axis] = auto_pad == "SAME_UPPER" ? small : large;
    pads[2 * axis + 1] = auto_pad == "SAME_UPPER" ? large : small;
  }
  return pads;
}

// ---------------------------------------------------------------------------------------------
// Layers

// The layer's name: the module name of its weight ("fc.weight" -> "fc") or of the node's scope
// ("/layer1/layer1.0/conv1/Conv" -> "layer1.0.conv1"), else the node's name, else its type and
// index; sanitized, and made unique with a suffix ("layer1.0.relu_2").
std::string Importer::unique_name(const onnx::NodeProto& node, const std::string& type,
                                  const std::string& weight_name) {
  std::string name;
  if (weight_name.ends_with(".weight") && !weight_name.starts_with("onnx::")) {
    name = weight_name.substr(0, weight_name.size() - std::string(".weight").size());
  }
  if (name.empty()) name = module_name_of(node.name());
  if (name.empty() && !node.name().empty()) {
    name = node.name();
    while (name.starts_with("/")) name.erase(0, 1);
  }
  if (name.empty()) name = fmt::format("{}{}", type, layers_.size());
  name = sanitized_layer_name(name);
  std::string candidate = name;
  for (int suffix = 2; names_.contains(candidate); ++suffix)
    candidate = fmt::format("{}_{}", name, suffix);
  names_.insert(candidate);
  return candidate;
}

LayerEntry& Importer::add_layer(const onnx::NodeProto& node, const std::string& type,
                                std::vector<std::string> inputs, const std::string& weight_name) {
  LayerEntry entry;
  entry.name = unique_name(node, type, weight_name);
  entry.type = type;
  entry.inputs = std::move(inputs);
  entry.output_value = node.output(0);
  producer_[node.output(0)] = entry.name;
  layers_.push_back(std::move(entry));
  return layers_.back();
}

LayerEntry* Importer::layer_named(const std::string& name) {
  for (LayerEntry& entry : layers_) {
    if (entry.name == name) return &entry;
  }
  return nullptr;
}

std::string Importer::materialize(const PendingPad& pad) {
  const onnx::NodeProto& node = *pad.node;
  const std::string source = resolve(node, pad.source);
  LayerEntry& entry = add_layer(node, "pad", {source});
  entry.set("padding", padding_text(pad.pads));
  if (pad.mode != "constant") entry.set("mode", pad.mode);
  if (pad.mode == "constant" && pad.value != 0) entry.set("value", float_text(pad.value));
  return entry.name;
}

// ---------------------------------------------------------------------------------------------
// Operators

void Importer::conv(const onnx::NodeProto& node) {
  const onnx::TensorProto& weight_proto = constant(node, 1);
  Tensor weight = float_tensor(weight_proto, where(node) + ": weight");
  if (weight.rank() != 4) {
    fail("{}: only 2-D convolutions (a 4-D weight) are supported, found weight {}", where(node),
         weight.shape().str());
  }
  const std::array<int64_t, 2> kernel = {weight.dim(2), weight.dim(3)};
  const std::vector<int64_t> kernel_shape = attr_ints(node, "kernel_shape", {kernel[0], kernel[1]});
  if (kernel_shape != std::vector<int64_t>{kernel[0], kernel[1]}) {
    fail("{}: kernel_shape [{}] differs from the weight's {}", where(node),
         fmt::join(kernel_shape, ", "), weight.shape().str());
  }
  const auto stride = attr_pair(node, "strides", 1);
  const auto dilation = attr_pair(node, "dilations", 1);
  const int64_t groups = attr_int(node, "group", 1);
  Pads pads = attr_pads(node, kernel, stride, dilation);
  infer(node, window_shape(node, weight.dim(0), kernel, stride, dilation, pads, false));
  std::string padding_mode = "zeros";
  std::string source = node.input(0);
  if (const auto found = pads_.find(source); found != pads_.end()) {
    const PendingPad& pad = found->second;
    const bool zeros = pad.mode == "constant" && pad.value == 0;
    if (zeros || (all_zero(pads) && pad.mode != "constant")) {
      for (int i = 0; i < 4; ++i) pads[i] += pad.pads[i];
      padding_mode = zeros ? "zeros" : pad.mode;
      source = pad.source;
    }
  }
  LayerEntry& entry = add_layer(node, "conv2d", {resolve(node, source)}, weight_proto.name());
  entry.set("out_channels", fmt::format("{}", weight.dim(0)));
  entry.set("kernel", pair_text(kernel[0], kernel[1]));
  if (stride != std::array<int64_t, 2>{1, 1}) entry.set("stride", pair_text(stride[0], stride[1]));
  if (!all_zero(pads)) entry.set("padding", padding_text(pads));
  if (padding_mode != "zeros") entry.set("padding_mode", padding_mode);
  if (dilation != std::array<int64_t, 2>{1, 1})
    entry.set("dilation", pair_text(dilation[0], dilation[1]));
  if (groups != 1) entry.set("groups", fmt::format("{}", groups));
  if (stride != std::array<int64_t, 2>{1, 1}) entry.set("round", "floor");  // ONNX floors
  entry.params.push_back({"weight", std::move(weight)});
  if (has_input(node, 2)) {
    Tensor bias = float_tensor(constant(node, 2), where(node) + ": bias");
    entry.params.push_back({"bias", bias.view(Shape{bias.numel()})});
  } else {
    entry.set("bias", "false");
    entry.bias_pending = true;
  }
}

void Importer::pool(const onnx::NodeProto& node, bool max) {
  const auto kernel = attr_pair(node, "kernel_shape", 0);
  const auto stride = attr_pair(node, "strides", 1);
  const auto dilation = max ? attr_pair(node, "dilations", 1) : std::array<int64_t, 2>{1, 1};
  if (!max && attribute(node, "dilations"))
    fail("{}: dilated average pooling is not supported", where(node));
  if (max && attr_int(node, "storage_order", 0) != 0) {
    fail("{}: storage_order = 1 (column-major indices) is not supported", where(node));
  }
  if (max) require_unused_outputs(node, 1);
  const bool ceil = attr_int(node, "ceil_mode", 0) != 0;
  bool count_include_pad = attr_int(node, "count_include_pad", 0) != 0;
  Pads pads = attr_pads(node, kernel, stride, dilation);
  infer(node, window_shape(node, -1, kernel, stride, dilation, pads, ceil));
  std::string source = node.input(0);
  // PyTorch writes avg_pool2d(count_include_pad=True) as a zero Pad, then AveragePool without
  // padding: one avg_pool with the padding counted.
  if (const auto found = pads_.find(source); !max && found != pads_.end() && all_zero(pads)) {
    const PendingPad& pad = found->second;
    if (pad.mode == "constant" && pad.value == 0) {
      pads = pad.pads;
      count_include_pad = true;
      source = pad.source;
    }
  }
  LayerEntry& entry = add_layer(node, max ? "max_pool" : "avg_pool", {resolve(node, source)});
  entry.set("kernel", pair_text(kernel[0], kernel[1]));
  if (stride != kernel) entry.set("stride", pair_text(stride[0], stride[1]));
  if (!all_zero(pads)) entry.set("padding", padding_text(pads));
  if (dilation != std::array<int64_t, 2>{1, 1})
    entry.set("dilation", pair_text(dilation[0], dilation[1]));
  if (ceil) {
    entry.set("round", "ceil");
  } else if (stride != std::array<int64_t, 2>{1, 1}) {
    entry.set("round", "floor");
  }
  if (!max && !count_include_pad && !all_zero(pads)) entry.set("count_include_pad", "false");
}

void Importer::global_average_pool(const onnx::NodeProto& node) {
  const std::vector<int64_t> in = shape_of(node, node.input(0));
  if (in.size() != 4)
    fail("{}: expected a 4-D input [N, C, H, W], found rank {}", where(node), in.size());
  add_layer(node, "global_avg_pool", {activation(node, 0)});
  infer(node, {in[0], in[1], 1, 1});
}

// PyTorch's x.mean([2, 3]) (mnasnet): the mean over the height and width of [N, C, H, W], a
// global_avg_pool, then a flatten to [N, C] when keepdims is 0 (the two layers' names unique; the
// node's output is the last one's).
void Importer::reduce_mean(const onnx::NodeProto& node) {
  const std::vector<int64_t> in = shape_of(node, node.input(0));
  const auto rank = static_cast<int64_t>(in.size());
  const std::vector<int64_t> given = attr_ints(node, "axes", {});
  std::vector<int64_t> axes = given;
  for (int64_t& axis : axes) axis += axis < 0 ? rank : 0;
  std::sort(axes.begin(), axes.end());
  if (rank != 4 || axes != std::vector<int64_t>{2, 3}) {
    fail(
        "{}: ReduceMean over {} of a rank-{} input: only the mean over the height and width "
        "(axes [2, 3]) of [N, C, H, W] is supported (a global_avg_pool)",
        where(node),
        given.empty() ? std::string("every axis")
                      : fmt::format("axes [{}]", fmt::join(given, ", ")),
        rank);
  }
  const bool keep_dims = attr_int(node, "keepdims", 1) != 0;
  const std::string pool = add_layer(node, "global_avg_pool", {activation(node, 0)}).name;
  if (keep_dims) {
    infer(node, {in[0], in[1], 1, 1});
    return;
  }
  layer_named(pool)->output_value.clear();  // an intermediate value no ONNX node names
  add_layer(node, "flatten", {pool});
  infer(node, {in[0], in[1]});
}

void Importer::gemm(const onnx::NodeProto& node) {
  if (attr_int(node, "transA", 0) != 0)
    fail("{}: transA = 1 is not supported (the input must be [N, F])", where(node));
  const std::vector<int64_t> in = shape_of(node, node.input(0));
  const onnx::TensorProto& b_proto = constant(node, 1);
  const Tensor b = float_tensor(b_proto, where(node) + ": B");
  if (b.rank() != 2) fail("{}: B must be a matrix, found {}", where(node), b.shape().str());
  const bool trans_b = attr_int(node, "transB", 0) != 0;
  const float alpha = attr_float(node, "alpha", 1.0f), beta = attr_float(node, "beta", 1.0f);
  const int64_t out = trans_b ? b.dim(0) : b.dim(1), features = trans_b ? b.dim(1) : b.dim(0);
  if (in.size() != 2 || in[1] != features) {
    fail("{}: input '{}' has shape [{}], but B takes [N, {}]", where(node), node.input(0),
         fmt::join(in, ", "), features);
  }
  Tensor weight = trans_b && alpha == 1.0f ? b : Tensor(Shape{out, features});
  for (int64_t o = 0; o < out && weight.data() != b.data(); ++o) {
    for (int64_t i = 0; i < features; ++i) {
      weight.data()[o * features + i] =
          alpha * (trans_b ? b.data()[o * features + i] : b.data()[i * out + o]);
    }
  }
  LayerEntry& entry = add_layer(node, "linear", {activation(node, 0)}, b_proto.name());
  entry.set("out_features", fmt::format("{}", out));
  entry.params.push_back({"weight", std::move(weight)});
  if (!has_input(node, 2)) {
    entry.set("bias", "false");
    return;
  }
  const Tensor c = float_tensor(constant(node, 2), where(node) + ": C");
  if (c.numel() != out && c.numel() != 1) {
    fail("{}: C has shape {}; expected [{}] (one bias per output) or a scalar", where(node),
         c.shape().str(), out);
  }
  Tensor bias{Shape{out}};
  for (int64_t o = 0; o < out; ++o) bias.data()[o] = beta * c.data()[c.numel() == 1 ? 0 : o];
  entry.params.push_back({"bias", std::move(bias)});
}

void Importer::matmul(const onnx::NodeProto& node) {
  const std::vector<int64_t> in = shape_of(node, node.input(0));
  const onnx::TensorProto& b_proto = constant(node, 1);
  const Tensor b = float_tensor(b_proto, where(node) + ": B");
  if (b.rank() != 2 || in.size() != 2 || in[1] != b.dim(0)) {
    fail("{}: only [N, F] x a constant [F, out] is supported, found [{}] x {}", where(node),
         fmt::join(in, ", "), b.shape().str());
  }
  Tensor weight{Shape{b.dim(1), b.dim(0)}};
  for (int64_t o = 0; o < b.dim(1); ++o) {
    for (int64_t i = 0; i < b.dim(0); ++i)
      weight.data()[o * b.dim(0) + i] = b.data()[i * b.dim(1) + o];
  }
  LayerEntry& entry = add_layer(node, "linear", {activation(node, 0)}, b_proto.name());
  entry.set("out_features", fmt::format("{}", b.dim(1)));
  entry.set("bias", "false");
  entry.bias_pending = true;
  entry.params.push_back({"weight", std::move(weight)});
}

// Two computed tensors: an add layer. A computed tensor and a constant: the bias of the MatMul
// (or bias-free Conv) whose only consumer this Add is.
void Importer::add(const onnx::NodeProto& node) {
  const bool first_constant = constant_of(node.input(0)) != nullptr;
  const bool second_constant = constant_of(node.input(1)) != nullptr;
  if (!first_constant && !second_constant) {
    sum(node);
    return;
  }
  const int tensor_index = first_constant ? 1 : 0;
  const std::string& value = node.input(tensor_index);
  LayerEntry* layer = layer_named(producer_.contains(value) ? producer_.at(value) : "");
  const Tensor bias = float_tensor(constant(node, 1 - tensor_index), where(node) + ": constant");
  // bias_pending is set only on a linear or a conv2d, whose weight's first extent is the outputs.
  const bool pending =
      layer && layer->bias_pending && layer->output_value == value && consumers(value) == 1;
  const int64_t channels = pending ? layer->params[0].tensor.dim(0) : -1;
  // A linear's bias is [out]; a Conv's broadcasts over [C, 1, 1].
  const std::vector<int64_t> bias_dims = bias.shape().dims();
  const bool per_channel =
      bias.numel() == channels &&
      (layer->type == "linear" ||
       (bias.rank() >= 3 && bias_dims[bias.rank() - 1] == 1 && bias_dims[bias.rank() - 2] == 1));
  if (!per_channel) {
    fail(
        "{}: adding the constant '{}' (shape {}) is supported only as the bias of the MatMul or "
        "bias-free Conv right before it (one value per output channel)",
        where(node), node.input(1 - tensor_index), bias.shape().str());
  }
  layer->params.push_back({"bias", bias.view(Shape{channels})});
  layer->erase("bias");
  layer->bias_pending = false;
  layer->output_value = node.output(0);
  alias(node, layer->name);
}

void Importer::sum(const onnx::NodeProto& node) {
  std::vector<std::string> inputs;
  std::vector<int64_t> first;
  for (int i = 0; i < node.input_size(); ++i) {
    const std::vector<int64_t> shape = shape_of(node, node.input(i));
    if (i == 0) first = shape;
    if (shape.size() != first.size() ||
        !std::equal(shape.begin() + 1, shape.end(), first.begin() + 1)) {
      fail("{}: inputs of shapes [{}] and [{}]: Strata's add takes equal shapes (no broadcasting)",
           where(node), fmt::join(first, ", "), fmt::join(shape, ", "));
    }
    inputs.push_back(activation(node, i));
  }
  if (inputs.size() == 1) {
    alias(node, inputs[0]);
    return;
  }
  add_layer(node, "add", std::move(inputs));
}

void Importer::mul(const onnx::NodeProto& node) {
  if (constant_of(node.input(0)) || constant_of(node.input(1))) {
    fail(
        "{}: multiplying by a constant is not supported (Strata's multiply takes two computed "
        "tensors)",
        where(node));
  }
  add_layer(node, "multiply", {activation(node, 0), activation(node, 1)});
}

void Importer::batch_norm(const onnx::NodeProto& node) {
  require_unused_outputs(node, 1);
  const std::vector<int64_t> in = shape_of(node, node.input(0));
  if (in.size() != 4 && in.size() != 2) {
    fail("{}: expected an input [N, C, H, W] or [N, C], found rank {}", where(node), in.size());
  }
  const onnx::TensorProto& scale_proto = constant(node, 1);
  const bool batch_statistics = opset_ >= 14 && attr_int(node, "training_mode", 0) != 0;
  LayerEntry& entry = add_layer(node, "batch_norm", {activation(node, 0)}, scale_proto.name());
  const float eps = attr_float(node, "epsilon", 1e-5f);
  if (eps != 1e-5f) entry.set("eps", float_text(eps));
  // ONNX's momentum weighs the running value (PyTorch's 1 - momentum). PyTorch writes its
  // momentum=None (a cumulative average) as 1.
  const double momentum = 1.0 - static_cast<double>(attr_float(node, "momentum", 0.9f));
  if (momentum == 0.0) {
    entry.set("momentum", "null");
  } else if (std::abs(momentum - 0.1) > 1e-6) {
    entry.set("momentum", fmt::format("{:.5g}", momentum));
  }
  const std::array<const char*, 4> names = {"weight", "bias", "running_mean", "running_var"};
  const int64_t channels = in[1];
  for (int i = 1; i <= 4; ++i) {
    if (batch_statistics && i >= 3) break;
    Tensor tensor = float_tensor(constant(node, i), where(node) + ": " + names[i - 1]);
    if (tensor.numel() != channels) {
      fail("{}: {} has {} values for {} channels", where(node), names[i - 1], tensor.numel(),
           channels);
    }
    entry.params.push_back({names[i - 1], tensor.view(Shape{channels})});
  }
  if (batch_statistics) {
    // training_mode = 1: the output uses the batch's statistics, in inference too.
    entry.set("track_running_stats", "false");
  } else {
    entry.params.push_back({"num_batches_tracked", Tensor(Shape{})});
  }
}

void Importer::concat(const onnx::NodeProto& node) {
  bool integers = true;
  for (const std::string& input : node.input()) integers = integers && int_value(input).has_value();
  if (integers) {
    IntValue result;
    for (int i = 0; i < node.input_size(); ++i) {
      const IntValue part = int_input(node, i);
      if (part.columns > 0)
        fail("{}: only integer vectors are concatenated at import", where(node));
      result.dims.insert(result.dims.end(), part.dims.begin(), part.dims.end());
    }
    ints_[node.output(0)] = result;
    return;
  }
  const std::vector<int64_t> first = shape_of(node, node.input(0));
  int64_t axis = attr_int(node, "axis", 1);
  if (axis < 0) axis += static_cast<int64_t>(first.size());
  if (axis != 1)
    fail("{}: axis {}: Strata's concat joins channels (axis 1) only", where(node),
         attr_int(node, "axis", 1));
  std::vector<std::string> inputs;
  for (int i = 0; i < node.input_size(); ++i) inputs.push_back(activation(node, i));
  if (inputs.size() == 1) {
    alias(node, inputs[0]);
    return;
  }
  add_layer(node, "concat", std::move(inputs));
}

void Importer::softmax(const onnx::NodeProto& node) {
  const std::vector<int64_t> in = shape_of(node, node.input(0));
  const auto rank = static_cast<int64_t>(in.size());
  int64_t axis = attr_int(node, "axis", opset_ >= 13 ? -1 : 1);
  if (axis < 0) axis += rank;
  if (axis < 1 || axis >= rank)
    fail("{}: axis {} of a rank-{} input (the batch axis is 0)", where(node),
         attr_int(node, "axis", 0), rank);
  if (opset_ < 13) {
    // Before opset 13, Softmax flattens the axes from `axis` on into one: a softmax over a single
    // axis only when the later axes are 1 wide.
    for (int64_t k = axis + 1; k < rank; ++k) {
      if (in[k] != 1) {
        fail(
            "{}: at opset {}, Softmax over axes {}..{} of [{}] together (one softmax over several "
            "axes) is not supported; export at opset 13 or later for a softmax over one axis",
            where(node), opset_, axis, rank - 1, fmt::join(in, ", "));
      }
    }
  }
  LayerEntry& entry = add_layer(node, "softmax", {activation(node, 0)});
  // Strata's default is the first axis of the sample (ONNX axis 1); another axis is given counted
  // from the end, which reads the same whether or not the batch axis is counted.
  if (axis != 1) entry.set("axis", fmt::format("{}", axis - rank));
}

void Importer::lrn(const onnx::NodeProto& node) {
  const int64_t size = attr_int(node, "size", 0);
  if (size < 1 || size % 2 == 0) {
    fail(
        "{}: size {}: only odd sizes are supported (for an even size ONNX and PyTorch centre the "
        "window differently)",
        where(node), size);
  }
  LayerEntry& entry = add_layer(node, "lrn", {activation(node, 0)});
  entry.set("size", fmt::format("{}", size));
  entry.set("alpha", float_text(attr_float(node, "alpha", 1e-4f)));
  entry.set("beta", float_text(attr_float(node, "beta", 0.75f)));
  entry.set("k", float_text(attr_float(node, "bias", 1.0f)));
}

void Importer::unary(const onnx::NodeProto& node) {
  static const std::map<std::string, std::string> kTypes = {
      {"Relu", "relu"}, {"Tanh", "tanh"}, {"Sigmoid", "sigmoid"}, {"HardSwish", "hardswish"}};
  add_layer(node, kTypes.at(node.op_type()), {activation(node, 0)});
}

void Importer::leaky_relu(const onnx::NodeProto& node) {
  LayerEntry& entry = add_layer(node, "leaky_relu", {activation(node, 0)});
  const float slope = attr_float(node, "alpha", 0.01f);
  if (slope != 0.01f) entry.set("negative_slope", float_text(slope));
}

// Clip to [0, 6] is relu6 (torch.nn.ReLU6), to [0, inf) relu.
void Importer::clip(const onnx::NodeProto& node) {
  const auto bound = [&](int index, const char* name) -> std::optional<float> {
    if (!has_input(node, index)) return std::nullopt;
    const Tensor t = float_tensor(constant(node, index), where(node) + ": " + name);
    if (t.numel() != 1) fail("{}: {} must be a scalar", where(node), name);
    return t.data()[0];
  };
  const std::optional<float> low = bound(1, "min"), high = bound(2, "max");
  std::string type;
  if (low == 0.0f && high == 6.0f) type = "relu6";
  if (low == 0.0f && !high) type = "relu";
  if (type.empty()) {
    fail("{}: Clip to [{}, {}]: only [0, 6] (relu6) and [0, inf) (relu) are supported", where(node),
         low ? float_text(*low) : "-inf", high ? float_text(*high) : "inf");
  }
  add_layer(node, type, {activation(node, 0)});
}

void Importer::hard_sigmoid(const onnx::NodeProto& node) {
  const float alpha = attr_float(node, "alpha", 0.2f), beta = attr_float(node, "beta", 0.5f);
  if (std::abs(alpha - 1.0f / 6.0f) > 1e-6f || beta != 0.5f) {
    fail("{}: alpha {} and beta {}: only PyTorch's Hardsigmoid (alpha 1/6, beta 0.5) is supported",
         where(node), alpha, beta);
  }
  add_layer(node, "hard_sigmoid", {activation(node, 0)});
}

void Importer::dropout(const onnx::NodeProto& node) {
  require_unused_outputs(node, 1);
  if (has_input(node, 2)) {
    const std::vector<int64_t> mode = known_ints(node, 2);
    if (!mode.empty() && mode[0] != 0)
      fail("{}: training_mode is true: a dropout active at inference", where(node));
  }
  float ratio = attr_float(node, "ratio", 0.5f);
  if (has_input(node, 1))
    ratio = float_tensor(constant(node, 1), where(node) + ": ratio").data()[0];
  const std::string source = activation(node, 0);
  if (ratio == 0.0f) {
    alias(node, source);
    return;
  }
  // Identity at inference, as in ONNX; active when the imported model is fine-tuned.
  LayerEntry& entry = add_layer(node, "dropout", {source});
  entry.set("keep_prob", fmt::format("{:.5g}", 1.0 - static_cast<double>(ratio)));
}

void Importer::identity(const onnx::NodeProto& node) {
  const std::string& value = node.input(0);
  if (const onnx::TensorProto* tensor = constant_of(value)) {
    constants_[node.output(0)] = tensor;
  } else if (ints_.contains(value)) {
    ints_[node.output(0)] = ints_.at(value);
  } else {
    alias(node, activation(node, 0));
  }
}

void Importer::constant_node(const onnx::NodeProto& node) {
  const onnx::AttributeProto* value = attribute(node, "value");
  if (value && value->type() == onnx::AttributeProto::TENSOR) {
    constants_[node.output(0)] = &value->t();
    return;
  }
  onnx::TensorProto& tensor = owned_constants_.emplace_back();
  if (const auto* a = attribute(node, "value_float")) {
    tensor.set_data_type(onnx::TensorProto::FLOAT);
    tensor.add_float_data(a->f());
  } else if (const auto* b = attribute(node, "value_int")) {
    tensor.set_data_type(onnx::TensorProto::INT64);
    tensor.add_int64_data(b->i());
  } else if (const auto* c = attribute(node, "value_floats")) {
    tensor.set_data_type(onnx::TensorProto::FLOAT);
    tensor.add_dims(c->floats_size());
    for (float f : c->floats()) tensor.add_float_data(f);
  } else if (const auto* d = attribute(node, "value_ints")) {
    tensor.set_data_type(onnx::TensorProto::INT64);
    tensor.add_dims(d->ints_size());
    for (int64_t i : d->ints()) tensor.add_int64_data(i);
  } else {
    fail("{}: only value, value_float(s) and value_int(s) constants are supported", where(node));
  }
  constants_[node.output(0)] = &tensor;
}

void Importer::flatten(const onnx::NodeProto& node) {
  const std::vector<int64_t> in = shape_of(node, node.input(0));
  int64_t axis = attr_int(node, "axis", 1);
  if (axis < 0) axis += static_cast<int64_t>(in.size());
  if (axis != 1)
    fail("{}: axis {}: only a flatten after the batch axis (axis 1) is supported", where(node),
         attr_int(node, "axis", 1));
  const std::string source = activation(node, 0);
  if (in.size() == 2) {
    alias(node, source);
    return;
  }
  add_layer(node, "flatten", {source});
}

// A Reshape that keeps the batch and flattens the rest ([N, C, H, W] -> [N, C*H*W]) is a flatten;
// one that changes nothing is dropped. Its target may be a constant or computed from Shape.
void Importer::reshape(const onnx::NodeProto& node) {
  if (int_value(node.input(0))) {
    reshape_integers(node);
    return;
  }
  const std::vector<int64_t> in = shape_of(node, node.input(0));
  const IntValue target = int_input(node, 1);
  const bool allow_zero = attr_int(node, "allowzero", 0) != 0;
  int64_t sample = 1;
  for (std::size_t i = 1; i < in.size(); ++i) sample *= in[i];
  std::vector<int64_t> rest;  // the target after the batch; -1 to infer
  bool batch_first = false;
  for (std::size_t i = 0; i < target.dims.size(); ++i) {
    const Dim& d = target.dims[i];
    const bool batch = d.batch || (i == 0 && !allow_zero && d.value == 0) ||
                       (i == 0 && in[0] > 0 && d.value == in[0]);
    if (i == 0) {
      batch_first = batch || d.value == -1;
      continue;
    }
    if (d.batch) fail("{}: the target shape moves the batch extent to axis {}", where(node), i);
    rest.push_back(d.value == 0 && !allow_zero && i < in.size() ? in[i] : d.value);
  }
  int64_t known = 1, unknown = 0;
  for (int64_t r : rest) {
    if (r == -1) {
      ++unknown;
    } else {
      known *= r;
    }
  }
  if (unknown == 1 && known > 0 && sample % known == 0) {
    std::replace(rest.begin(), rest.end(), int64_t{-1}, sample / known);
  }
  const std::vector<int64_t> sample_dims(in.begin() + 1, in.end());
  const std::string source = activation(node, 0);
  if (batch_first && rest == sample_dims) {
    alias(node, source);
    shapes_.try_emplace(node.output(0), in);
  } else if (batch_first && rest == std::vector<int64_t>{sample}) {
    add_layer(node, "flatten", {source});
    shapes_.try_emplace(node.output(0), std::vector<int64_t>{in[0], sample});
  } else {
    std::vector<std::string> text;
    for (const Dim& d : target.dims) text.push_back(d.batch ? "N" : fmt::format("{}", d.value));
    fail("{}: Reshape of [{}] to [{}]: only a flatten to [N, {}] is supported", where(node),
         fmt::join(in, ", "), fmt::join(text, ", "), sample);
  }
}

void Importer::pad(const onnx::NodeProto& node) {
  const std::vector<int64_t> in = shape_of(node, node.input(0));
  const std::vector<int64_t> pads = known_ints(node, 1);
  if (in.size() != 4 || pads.size() != 8 || pads[0] || pads[1] || pads[4] || pads[5]) {
    fail(
        "{}: pads [{}] on a rank-{} input: only the height and width of [N, C, H, W] can be padded",
        where(node), fmt::join(pads, ", "), in.size());
  }
  for (int64_t p : pads) {
    if (p < 0)
      fail("{}: negative pads [{}] (a crop) are not supported", where(node), fmt::join(pads, ", "));
  }
  PendingPad pending;
  pending.source = node.input(0);
  pending.pads = {pads[2], pads[6], pads[3], pads[7]};
  pending.mode = attr_string(node, "mode", "constant");
  if (pending.mode != "constant" && pending.mode != "reflect" && pending.mode != "edge") {
    fail("{}: mode '{}': expected constant, reflect or edge", where(node), pending.mode);
  }
  if (pending.mode == "edge") pending.mode = "replicate";
  if (has_input(node, 2)) {
    const Tensor value = float_tensor(constant(node, 2), where(node) + ": constant_value");
    pending.value = value.numel() > 0 ? value.data()[0] : 0.0f;
  }
  pending.node = &node;
  resolve(node, pending.source);  // the source must be a computed tensor
  pads_[node.output(0)] = pending;
}

void Importer::shape(const onnx::NodeProto& node) {
  const std::vector<int64_t> shape = shape_of(node, node.input(0));
  IntValue value;
  for (std::size_t i = 0; i < shape.size(); ++i) value.dims.push_back({shape[i], i == 0});
  const auto rank = static_cast<int64_t>(value.dims.size());
  int64_t start = attr_int(node, "start", 0), end = attr_int(node, "end", rank);
  if (start < 0) start += rank;
  if (end < 0) end += rank;
  start = std::clamp<int64_t>(start, 0, rank);
  end = std::clamp<int64_t>(end, start, rank);
  value.dims = std::vector<Dim>(value.dims.begin() + start, value.dims.begin() + end);
  ints_[node.output(0)] = value;
}

void Importer::gather(const onnx::NodeProto& node) {
  const IntValue data = int_input(node, 0);
  const IntValue indices = int_input(node, 1);
  if (attr_int(node, "axis", 0) != 0 || data.scalar)
    fail("{}: only Gather along axis 0 of a vector is supported", where(node));
  IntValue result;
  result.scalar = indices.scalar;
  for (const Dim& index : indices.dims) {
    int64_t i = index.value;
    const auto n = static_cast<int64_t>(data.dims.size());
    if (index.batch || i < -n || i >= n)
      fail("{}: index {} outside a vector of {}", where(node), i, n);
    result.dims.push_back(data.dims[static_cast<std::size_t>(i < 0 ? i + n : i)]);
  }
  ints_[node.output(0)] = result;
}

void Importer::unsqueeze(const onnx::NodeProto& node) {
  IntValue value = int_input(node, 0);
  const std::vector<int64_t> axes =
      opset_ >= 13 ? known_ints(node, 1) : attr_ints(node, "axes", {});
  if (!value.scalar || axes != std::vector<int64_t>{0})
    fail("{}: only a scalar unsqueezed to a vector is supported", where(node));
  value.scalar = false;
  ints_[node.output(0)] = value;
}

void Importer::squeeze(const onnx::NodeProto& node) {
  IntValue value = int_input(node, 0);
  if (value.scalar || value.dims.size() != 1)
    fail("{}: only a one-element vector squeezed to a scalar is supported", where(node));
  value.scalar = true;
  ints_[node.output(0)] = value;
}

// Along axis 0 of a vector or a matrix (its rows), with ONNX's clamping, step 1 or -1 (the flip
// in PyTorch's pads computation).
void Importer::slice(const onnx::NodeProto& node) {
  const IntValue data = int_input(node, 0);
  const std::vector<int64_t> starts = known_ints(node, 1), ends = known_ints(node, 2);
  const std::vector<int64_t> axes =
      has_input(node, 3) ? known_ints(node, 3) : std::vector<int64_t>{0};
  const std::vector<int64_t> steps =
      has_input(node, 4) ? known_ints(node, 4) : std::vector<int64_t>{1};
  const int64_t rank = data.columns > 0 ? 2 : 1;
  if (data.scalar || starts.size() != 1 || ends.size() != 1 || axes.size() != 1 ||
      steps.size() != 1 || (axes[0] != 0 && axes[0] != -rank) ||
      (steps[0] != 1 && steps[0] != -1)) {
    fail("{}: only a slice of step 1 or -1 along the first axis of a vector or matrix is supported",
         where(node));
  }
  const int64_t width = std::max<int64_t>(data.columns, 1);
  const auto n = static_cast<int64_t>(data.dims.size()) / width;
  const auto wrap = [n](int64_t i) { return i < 0 ? i + n : i; };
  IntValue result;
  result.columns = data.columns;
  const auto take = [&](int64_t row) {
    for (int64_t c = 0; c < width; ++c)
      result.dims.push_back(data.dims[static_cast<std::size_t>(row * width + c)]);
  };
  if (steps[0] == 1) {
    for (int64_t i = std::clamp<int64_t>(wrap(starts[0]), 0, n);
         i < std::clamp<int64_t>(wrap(ends[0]), 0, n); ++i)
      take(i);
  } else {
    const int64_t end = std::clamp<int64_t>(wrap(ends[0]), -1, n - 1);
    for (int64_t i = std::clamp<int64_t>(wrap(starts[0]), 0, n - 1); i > end; --i) take(i);
  }
  ints_[node.output(0)] = result;
}

// A matrix's rows and columns swapped (perm [1, 0]).
void Importer::transpose(const onnx::NodeProto& node) {
  const IntValue data = int_input(node, 0);
  if (data.columns <= 0 || attr_ints(node, "perm", {1, 0}) != std::vector<int64_t>{1, 0}) {
    fail(
        "{}: only the transposition of a matrix known at import (PyTorch's pads computation) is "
        "supported",
        where(node));
  }
  const int64_t columns = data.columns, rows = static_cast<int64_t>(data.dims.size()) / columns;
  IntValue result;
  result.columns = rows;
  for (int64_t c = 0; c < columns; ++c) {
    for (int64_t r = 0; r < rows; ++r)
      result.dims.push_back(data.dims[static_cast<std::size_t>(r * columns + c)]);
  }
  ints_[node.output(0)] = result;
}

// A vector of `value` (an integer), as long as its input says.
void Importer::constant_of_shape(const onnx::NodeProto& node) {
  const std::vector<int64_t> length = known_ints(node, 0);
  const onnx::AttributeProto* value = attribute(node, "value");
  std::optional<IntValue> fill = value ? int_constant(value->t(), where(node)) : std::nullopt;
  if (length.size() != 1 || length[0] < 0 || length[0] > 4096 || !fill || fill->dims.size() != 1) {
    fail("{}: only an integer vector of a known length (PyTorch's pads computation) is supported",
         where(node));
  }
  IntValue result;
  result.dims.assign(static_cast<std::size_t>(length[0]), fill->dims[0]);
  ints_[node.output(0)] = result;
}

// An integer vector or matrix reshaped to [-1] or [-1, k] (PyTorch's pads computation).
void Importer::reshape_integers(const onnx::NodeProto& node) {
  IntValue value = int_input(node, 0);
  const std::vector<int64_t> target = known_ints(node, 1);
  const auto n = static_cast<int64_t>(value.dims.size());
  if (target.size() == 1 && (target[0] == -1 || target[0] == n)) {
    value.columns = 0;
  } else if (target.size() == 2 && target[1] > 0 && n % target[1] == 0 &&
             (target[0] == -1 || target[0] * target[1] == n)) {
    value.columns = target[1];
  } else {
    fail("{}: an integer tensor of {} values reshaped to [{}]: only [-1] and [-1, k] are supported",
         where(node), n, fmt::join(target, ", "));
  }
  value.scalar = false;
  ints_[node.output(0)] = value;
}

void Importer::cast(const onnx::NodeProto& node) { ints_[node.output(0)] = int_input(node, 0); }

// ---------------------------------------------------------------------------------------------
// The result

// The graph output's layer goes last, where Strata reads the model's output.
void Importer::place_output_last() {
  if (model_.graph().output_size() != 1) {
    std::vector<std::string> names;
    for (const auto& output : model_.graph().output()) names.push_back("'" + output.name() + "'");
    fail("{}: the graph has {} outputs ({}); a Strata model has one", file_,
         model_.graph().output_size(), fmt::join(names, ", "));
  }
  const std::string& value = model_.graph().output(0).name();
  onnx::NodeProto output_node;
  output_node.set_name("(graph output)");
  output_node.set_op_type("output");
  const std::string layer = resolve(output_node, value);
  if (layer == "input" || layers_.empty())
    fail("{}: the graph output '{}' is the graph input: there is no layer", file_, value);
  const auto position = std::find_if(layers_.begin(), layers_.end(),
                                     [&](const LayerEntry& e) { return e.name == layer; });
  if (position + 1 == layers_.end()) return;
  for (const LayerEntry& entry : layers_) {
    if (std::find(entry.inputs.begin(), entry.inputs.end(), layer) != entry.inputs.end()) {
      fail(
          "{}: the graph output '{}' (layer '{}') also feeds layer '{}': Strata's output is its "
          "last layer, which nothing else reads",
          file_, value, layer, entry.name);
    }
  }
  LayerEntry moved = std::move(*position);
  layers_.erase(position);
  layers_.push_back(std::move(moved));
}

std::string Importer::experiment_yaml() const {
  std::string text = fmt::format(
      "# Imported by `strata import` from {} (ONNX opset {}{}).\n"
      "#   strata forward experiment.yaml --weights weights.h5 --input IN.h5 --output OUT.h5\n"
      "#   strata train experiment.yaml --weights weights.h5   (with your dataset below)\n"
      "model:\n  input: [{}]\n  layers:\n",
      comment_text(std::filesystem::path(file_).filename().string()), opset_,
      model_.producer_name().empty() ? ""
                                     : comment_text(", written by " + model_.producer_name() + " " +
                                                    model_.producer_version()),
      fmt::join(input_shape_.dims(), ", "));
  std::string previous = "input";
  for (const LayerEntry& entry : layers_) {
    text += fmt::format("    - {{name: {}, type: {}", yaml_string(entry.name), entry.type);
    if (entry.inputs != std::vector<std::string>{previous}) {
      std::vector<std::string> names;
      for (const std::string& input : entry.inputs) names.push_back(yaml_string(input));
      text += names.size() == 1 ? fmt::format(", inputs: {}", names[0])
                                : fmt::format(", inputs: [{}]", fmt::join(names, ", "));
    }
    for (const auto& [key, value] : entry.keys) text += fmt::format(", {}: {}", key, value);
    text += "}\n";
    previous = entry.name;
  }
  const std::vector<int64_t>& out = shapes_.at(model_.graph().output(0).name());
  int64_t classes = 1;
  for (std::size_t i = 1; i < out.size(); ++i) classes *= out[i];
  text += fmt::format(
      "# A placeholder of the model's input shape and output size, so that the file runs as it "
      "is;\n"
      "# put your dataset here to evaluate or fine-tune (docs/data.md).\n"
      "data: {{type: synthetic, shape: [{}], classes: {}, train_size: 64, test_size: 32}}\n"
      "optimizer: {{type: sgd, lr: 0.001, momentum: 0.9}}\n"
      "train: {{epochs: 1, batch_size: 16, eval_batch_size: 16}}\n",
      fmt::join(input_shape_.dims(), ", "), classes);
  return text;
}

// What libonnx 1.12's shape inference would crash on rather than report (a Conv whose weight has
// another rank than its input), checked first: Strata's convolutions and pools are 2-D.
void Importer::check_before_inference() const {
  for (const onnx::NodeProto& node : model_.graph().node()) {
    const bool conv = node.op_type() == "Conv";
    if (!conv && node.op_type() != "MaxPool" && node.op_type() != "AveragePool") continue;
    const onnx::TensorProto* weight =
        conv && has_input(node, 1) ? constant_of(node.input(1)) : nullptr;
    if (weight && weight->dims_size() != 4) {
      fail("{}: only 2-D convolutions (a 4-D weight) are supported, found a weight of rank {}",
           where(node), weight->dims_size());
    }
    const std::vector<int64_t> kernel = attr_ints(node, "kernel_shape", {0, 0});
    if (kernel.size() != 2) {
      fail("{}: kernel_shape [{}]: Strata's layers are 2-D", where(node), fmt::join(kernel, ", "));
    }
  }
}

OnnxImport Importer::run() {
  read_constants();  // pointers into the initializers, which shape inference leaves in place
  check_before_inference();
  try {
    // With data propagation, a Reshape whose target PyTorch computes from Shape gets its shape.
    onnx::shape_inference::InferShapes(model_, onnx::OpSchemaRegistry::Instance(),
                                       onnx::ShapeInferenceOptions(false, 0, true));
  } catch (const std::exception& error) {
    fail("{}: ONNX shape inference failed: {}", file_, error.what());
  }
  read_shapes();
  read_input();
  OnnxImport result;
  for (const onnx::NodeProto& node : model_.graph().node()) {
    auto counted = std::find_if(result.operator_counts.begin(), result.operator_counts.end(),
                                [&](const auto& entry) { return entry.first == node.op_type(); });
    if (counted == result.operator_counts.end()) {
      result.operator_counts.emplace_back(node.op_type(), 1);
    } else {
      counted->second += 1;
    }
    const auto handler = handlers().find(node.op_type());
    if ((node.domain() != "" && node.domain() != "ai.onnx") || handler == handlers().end()) {
      fail("{}: operator '{}'{} is not supported\n  supported operators: {}", where(node),
           node.op_type(), node.domain().empty() ? "" : " of domain '" + node.domain() + "'",
           fmt::join(supported_onnx_operators(), ", "));
    }
    (this->*handler->second)(node);
    infer_after(node);
  }
  place_output_last();
  if (!shapes_.contains(model_.graph().output(0).name())) {
    fail("{}: ONNX shape inference gave no shape for the graph output '{}'", file_,
         model_.graph().output(0).name());
  }
  result.experiment_yaml = experiment_yaml();
  for (LayerEntry& entry : layers_) {
    for (NamedTensor& param : entry.params)
      result.weights.push_back({entry.name + "/" + param.name, param.tensor});
  }
  result.input_shape = input_shape_;
  result.output_layer = layers_.back().name;
  result.opset = opset_;
  result.producer = (model_.producer_name() + " " + model_.producer_version());
  return result;
}

// The default domain's opset, checked against what import understands.
int64_t default_opset(const onnx::ModelProto& model, const std::string& file) {
  for (const auto& opset : model.opset_import()) {
    if (!opset.domain().empty() && opset.domain() != "ai.onnx") continue;
    if (opset.version() > kOnnxMaxOpset) {
      fail(
          "{}: opset {} is newer than import reads (opsets {} to {}, libonnx 1.12): export with "
          "torch.onnx.export(..., opset_version={})",
          file, opset.version(), kOnnxMinOpset, kOnnxMaxOpset, kOnnxMaxOpset);
    }
    if (opset.version() < kOnnxMinOpset) {
      fail(
          "{}: opset {} is older than import reads (opsets {} to {}): export with "
          "torch.onnx.export(..., opset_version={})",
          file, opset.version(), kOnnxMinOpset, kOnnxMaxOpset, kOnnxMinOpset);
    }
    return opset.version();
  }
  fail("{}: the model imports no opset of the default ONNX domain", file);
}

}  // namespace

std::vector<std::string> supported_onnx_operators() {
  std::vector<std::string> names;
  for (const auto& [name, handler] : Importer::handlers()) names.push_back(name);
  return names;
}

namespace {

// The file parsed, its bytes freed before the mapping starts (a large model is then held once).
void parse_model(const std::filesystem::path& path, onnx::ModelProto& model) {
  const std::string file = path.string();
  const std::string bytes = read_regular_file(path, kMaxModelBytes, "ONNX model");
  if (!model.ParseFromString(bytes)) {
    fail(
        "{}: not an ONNX model, or a truncated one: its {} bytes do not parse as an ONNX "
        "ModelProto (protobuf)",
        file, bytes.size());
  }
  if (model.ir_version() <= 0 || !model.has_graph() || model.opset_import_size() == 0) {
    fail("{}: not an ONNX model, or a truncated one: it parses, but has no {} ({} bytes)", file,
         model.ir_version() <= 0 ? "ir_version"
         : !model.has_graph()    ? "graph"
                                 : "opset_import",
         bytes.size());
  }
}

}  // namespace

OnnxImport import_onnx(const std::filesystem::path& path) {
  const std::string file = path.string();
  onnx::ModelProto model;
  parse_model(path, model);
  const int64_t opset = default_opset(model, file);
  try {
    onnx::checker::check_model(model);
  } catch (const std::exception& error) {
    fail("{}: the ONNX checker refuses the model: {}", file, error.what());
  }
  Importer importer(file, model, opset);
  return importer.run();
}

}  // namespace strata::interop
