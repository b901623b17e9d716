// ONNX import (strata/interop/onnx_import.hpp): small models built here with libonnx's protobuf
// classes, written to a file and imported; the experiment text, the weights, and every error.
#define BOOST_TEST_MODULE onnx_import
#include <onnx/onnx_pb.h>

#include <boost/test/unit_test.hpp>
#include <fstream>
#include <random>
#include <sstream>

#include "strata/error.hpp"
#include "strata/interop/onnx_import.hpp"
#include "strata/training/experiment.hpp"
#include "test_support.hpp"

namespace fs = std::filesystem;
using strata::NamedTensor;
using strata::Shape;
using strata::Tensor;
using strata::interop::import_onnx;
using strata::interop::OnnxImport;
using strata::test::error_of;
using strata::test::random_tensor;
using strata::test::TempDir;

namespace {

// A model under construction: one float input [N, ...] (N symbolic), nodes, initializers, and
// one output, written to a file by save().
class OnnxBuilder {
 public:
  explicit OnnxBuilder(std::vector<int64_t> input = {3, 8, 8}, int64_t opset = 13) {
    model.set_ir_version(8);
    model.set_producer_name("test_onnx_import");
    auto* import = model.add_opset_import();
    import->set_domain("");
    import->set_version(opset);
    auto* graph = model.mutable_graph();
    graph->set_name("test");
    auto* value = graph->add_input();
    value->set_name("x");
    auto* type = value->mutable_type()->mutable_tensor_type();
    type->set_elem_type(onnx::TensorProto::FLOAT);
    type->mutable_shape()->add_dim()->set_dim_param("N");
    for (int64_t d : input) type->mutable_shape()->add_dim()->set_dim_value(d);
  }

  onnx::NodeProto& node(const std::string& op, const std::vector<std::string>& inputs,
                        const std::string& output, const std::string& name = "") {
    onnx::NodeProto* node = model.mutable_graph()->add_node();
    node->set_op_type(op);
    node->set_name(name);
    for (const std::string& input : inputs) node->add_input(input);
    node->add_output(output);
    return *node;
  }

  // A float initializer of random values, returned for comparison.
  Tensor weight(const std::string& name, const Shape& shape) {
    Tensor tensor = random_tensor(shape, rng);
    auto* proto = model.mutable_graph()->add_initializer();
    proto->set_name(name);
    proto->set_data_type(onnx::TensorProto::FLOAT);
    for (int64_t d : shape.dims()) proto->add_dims(d);
    proto->set_raw_data(
        std::string(reinterpret_cast<const char*>(tensor.data()), tensor.numel() * sizeof(float)));
    return tensor;
  }

  void floats(const std::string& name, const std::vector<int64_t>& dims,
              const std::vector<float>& values) {
    auto* proto = model.mutable_graph()->add_initializer();
    proto->set_name(name);
    proto->set_data_type(onnx::TensorProto::FLOAT);
    for (int64_t d : dims) proto->add_dims(d);
    for (float v : values) proto->add_float_data(v);
  }

  void ints(const std::string& name, const std::vector<int64_t>& values, bool scalar = false) {
    auto* proto = model.mutable_graph()->add_initializer();
    proto->set_name(name);
    proto->set_data_type(onnx::TensorProto::INT64);
    if (!scalar) proto->add_dims(static_cast<int64_t>(values.size()));
    for (int64_t v : values) proto->add_int64_data(v);
  }

  // A float output of `rank` extents, left to shape inference.
  void output(const std::string& name, int rank) {
    auto* value = model.mutable_graph()->add_output();
    value->set_name(name);
    auto* type = value->mutable_type()->mutable_tensor_type();
    type->set_elem_type(onnx::TensorProto::FLOAT);
    for (int i = 0; i < rank; ++i) type->mutable_shape()->add_dim();
  }

  fs::path save(const TempDir& dir, const std::string& name = "model.onnx") const {
    const fs::path path = dir / name;
    std::ofstream out(path, std::ios::binary);
    model.SerializeToOstream(&out);
    return path;
  }

  OnnxImport import(const TempDir& dir) const { return import_onnx(save(dir)); }

  onnx::ModelProto model;
  std::mt19937 rng{7};
};

void attr(onnx::NodeProto& node, const std::string& name, const std::vector<int64_t>& values) {
  auto* a = node.add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::INTS);
  for (int64_t v : values) a->add_ints(v);
}
void attr(onnx::NodeProto& node, const std::string& name, int64_t value) {
  auto* a = node.add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::INT);
  a->set_i(value);
}
void attr_f(onnx::NodeProto& node, const std::string& name, float value) {
  auto* a = node.add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::FLOAT);
  a->set_f(value);
}
void attr_s(onnx::NodeProto& node, const std::string& name, const std::string& value) {
  auto* a = node.add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::STRING);
  a->set_s(value);
}

const Tensor& weight_of(const OnnxImport& imported, const std::string& name) {
  for (const NamedTensor& weight : imported.weights) {
    if (weight.name == name) return weight.tensor;
  }
  BOOST_FAIL("no imported weight " << name);
  throw;
}

bool same_values(const Tensor& a, const Tensor& b) {
  return a.numel() == b.numel() && std::equal(a.span().begin(), a.span().end(), b.span().begin());
}

// The experiment's layer lines (model.layers entries), trimmed.
std::vector<std::string> layer_lines(const OnnxImport& imported) {
  std::vector<std::string> lines;
  std::istringstream text(imported.experiment_yaml);
  for (std::string line; std::getline(text, line);) {
    if (line.starts_with("    - {")) lines.push_back(line.substr(6));
  }
  return lines;
}

#define CHECK_LAYERS(imported, ...)                                   \
  do {                                                                \
    const std::vector<std::string> actual = layer_lines(imported);    \
    const std::vector<std::string> expected = {__VA_ARGS__};          \
    BOOST_TEST(actual == expected, boost::test_tools::per_element()); \
  } while (false)

// A Conv with weight and bias, named as torch.onnx.export names a module's node.
Tensor add_conv(OnnxBuilder& b, const std::string& in, const std::string& out,
                const std::string& name, int64_t channels_in, int64_t channels_out,
                int64_t kernel) {
  Tensor weight = b.weight(out + ".w", Shape{channels_out, channels_in, kernel, kernel});
  b.node("Conv", {in, out + ".w"}, out, name);
  return weight;
}

}  // namespace

BOOST_AUTO_TEST_CASE(a_small_cnn_maps_layer_by_layer_with_torch_names) {
  TempDir dir;
  OnnxBuilder b;
  const Tensor conv_weight = b.weight("onnx::Conv_12", Shape{4, 3, 3, 3});
  const Tensor conv_bias = b.weight("onnx::Conv_13", Shape{4});
  attr(b.node("Conv", {"x", "onnx::Conv_12", "onnx::Conv_13"}, "c", "/features/features.0/Conv"),
       "pads", {1, 1, 1, 1});
  b.node("Relu", {"c"}, "r", "/features/features.1/Relu");
  auto& pool = b.node("MaxPool", {"r"}, "p", "/features/features.2/MaxPool");
  attr(pool, "kernel_shape", {2, 2});
  attr(pool, "strides", {2, 2});
  b.node("Flatten", {"p"}, "f", "/Flatten");
  const Tensor fc_weight = b.weight("classifier.weight", Shape{5, 64});
  const Tensor fc_bias = b.weight("classifier.bias", Shape{5});
  attr(b.node("Gemm", {"f", "classifier.weight", "classifier.bias"}, "logits", "/classifier/Gemm"),
       "transB", 1);
  b.output("logits", 2);
  const OnnxImport imported = b.import(dir);
  CHECK_LAYERS(imported, "{name: features.0, type: conv2d, out_channels: 4, kernel: 3, padding: 1}",
               "{name: features.1, type: relu}",
               "{name: features.2, type: max_pool, kernel: 2, round: floor}",
               "{name: Flatten, type: flatten}",
               "{name: classifier, type: linear, out_features: 5}");
  BOOST_TEST(imported.input_shape == (Shape{3, 8, 8}));
  BOOST_TEST(imported.output_layer == "classifier");
  BOOST_TEST(imported.opset == 13);
  BOOST_TEST(imported.weights.size() == 4u);
  BOOST_TEST(same_values(weight_of(imported, "features.0/weight"), conv_weight));
  BOOST_TEST(same_values(weight_of(imported, "features.0/bias"), conv_bias));
  BOOST_TEST(same_values(weight_of(imported, "classifier/weight"), fc_weight));
  BOOST_TEST(weight_of(imported, "classifier/bias").shape() == (Shape{5}));
  STRATA_CHECK_CONTAINS(imported.experiment_yaml, "  input: [3, 8, 8]\n");
  STRATA_CHECK_CONTAINS(imported.experiment_yaml,
                        "data: {type: synthetic, shape: [3, 8, 8], classes: 5");
  const std::vector<std::pair<std::string, int64_t>> counts = {
      {"Conv", 1}, {"Relu", 1}, {"MaxPool", 1}, {"Flatten", 1}, {"Gemm", 1}};
  BOOST_TEST((imported.operator_counts == counts));
}

// The imported experiment builds in Strata, takes the weights as they are, and computes what the
// ONNX graph means: a MatMul then an Add is x B + c.
BOOST_AUTO_TEST_CASE(matmul_and_add_are_one_linear_that_computes_x_b_plus_c) {
  TempDir dir;
  OnnxBuilder b({6});
  const Tensor matrix = b.weight("onnx::MatMul_3", Shape{6, 4});
  const Tensor bias = b.weight("fc.bias", Shape{4});
  b.node("MatMul", {"x", "onnx::MatMul_3"}, "m", "/fc/MatMul");
  b.node("Add", {"m", "fc.bias"}, "y", "/fc/Add");
  b.output("y", 2);
  const OnnxImport imported = b.import(dir);
  CHECK_LAYERS(imported, "{name: fc, type: linear, out_features: 4}");

  strata::Config experiment = strata::Config::parse_string(imported.experiment_yaml, "<import>");
  strata::Experiment run = strata::Experiment::read(experiment, strata::test::registries(),
                                                    strata::Experiment::Scope::model);
  std::vector<NamedTensor> state = run.graph->state_tensors();
  BOOST_REQUIRE(state.size() == 2u);
  for (NamedTensor& tensor : state) tensor.tensor.copy_from(weight_of(imported, tensor.name));
  std::mt19937 rng(3);
  const Tensor x = random_tensor(Shape{2, 6}, rng);
  strata::Context context{false, &run.rng, run.backend.get()};
  run.graph->forward(context, x);
  const Tensor& y = run.graph->activation("fc");
  for (int64_t n = 0; n < 2; ++n) {
    for (int64_t o = 0; o < 4; ++o) {
      double expected = bias.data()[o];
      for (int64_t i = 0; i < 6; ++i) expected += x.data()[n * 6 + i] * matrix.data()[i * 4 + o];
      BOOST_TEST(static_cast<double>(y.data()[n * 4 + o]) == expected,
                 boost::test_tools::tolerance(1e-5));
    }
  }
}

BOOST_AUTO_TEST_CASE(gemm_folds_transposition_alpha_and_beta_into_the_weights) {
  TempDir dir;
  OnnxBuilder b({6});
  const Tensor matrix = b.weight("B", Shape{6, 3});
  const Tensor c = b.weight("C", Shape{3});
  auto& gemm = b.node("Gemm", {"x", "B", "C"}, "y", "head");
  attr_f(gemm, "alpha", 2.0f);
  attr_f(gemm, "beta", 0.5f);
  b.output("y", 2);
  const OnnxImport imported = b.import(dir);
  CHECK_LAYERS(imported, "{name: head, type: linear, out_features: 3}");
  const Tensor& weight = weight_of(imported, "head/weight");
  BOOST_REQUIRE(weight.shape() == (Shape{3, 6}));
  for (int64_t o = 0; o < 3; ++o) {
    for (int64_t i = 0; i < 6; ++i)
      BOOST_TEST(weight.data()[o * 6 + i] == 2.0f * matrix.data()[i * 3 + o]);
    BOOST_TEST(weight_of(imported, "head/bias").data()[o] == 0.5f * c.data()[o]);
  }
}

BOOST_AUTO_TEST_CASE(batch_norm_keeps_its_statistics_and_momentum) {
  TempDir dir;
  OnnxBuilder b({3, 8, 8}, 14);
  add_conv(b, "x", "c", "/conv1/Conv", 3, 4, 1);
  const Tensor scale = b.weight("bn1.weight", Shape{4});
  b.weight("bn1.bias", Shape{4});
  const Tensor mean = b.weight("bn1.running_mean", Shape{4});
  b.weight("bn1.running_var", Shape{4});
  auto& bn = b.node("BatchNormalization",
                    {"c", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var"}, "n",
                    "/bn1/BatchNormalization");
  attr_f(bn, "epsilon", 1e-3f);
  attr_f(bn, "momentum", 0.99f);
  auto& cumulative = b.node("BatchNormalization",
                            {"n", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var"},
                            "m", "/bn2/BatchNormalization");
  attr_f(cumulative, "momentum", 1.0f);  // PyTorch's momentum=None
  auto& batch = b.node("BatchNormalization",
                       {"m", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var"}, "y",
                       "/bn3/BatchNormalization");
  attr(batch, "training_mode", 1);
  b.output("y", 4);
  const OnnxImport imported = b.import(dir);
  CHECK_LAYERS(imported, "{name: conv1, type: conv2d, out_channels: 4, kernel: 1, bias: false}",
               "{name: bn1, type: batch_norm, eps: 0.001, momentum: 0.01}",
               "{name: bn1_2, type: batch_norm, momentum: null}",
               "{name: bn1_3, type: batch_norm, track_running_stats: false}");
  BOOST_TEST(same_values(weight_of(imported, "bn1/weight"), scale));
  BOOST_TEST(same_values(weight_of(imported, "bn1/running_mean"), mean));
  BOOST_TEST(weight_of(imported, "bn1/num_batches_tracked").shape() == Shape{});
  BOOST_TEST(weight_of(imported, "bn1_2/running_var").shape() == (Shape{4}));
  for (const NamedTensor& weight : imported.weights)
    BOOST_TEST(!weight.name.starts_with("bn1_3/running"));
}

BOOST_AUTO_TEST_CASE(pytorch_view_as_shape_gather_unsqueeze_concat_reshape_is_a_flatten) {
  TempDir dir;
  OnnxBuilder b({2, 3, 3});
  b.node("Relu", {"x"}, "r", "/relu/Relu");
  b.node("Shape", {"r"}, "s", "/Shape");
  b.ints("zero", {0}, true);
  attr(b.node("Gather", {"s", "zero"}, "g", "/Gather"), "axis", 0);
  b.ints("axes", {0});
  b.node("Unsqueeze", {"g", "axes"}, "u", "/Unsqueeze");
  b.ints("minus_one", {-1});
  attr(b.node("Concat", {"u", "minus_one"}, "target", "/Concat"), "axis", 0);
  b.node("Reshape", {"r", "target"}, "flat", "/Reshape");
  b.ints("same", {0, 2, 3, 3});
  b.node("Reshape", {"r", "same"}, "kept", "/Kept");  // no change: dropped
  b.node("Add", {"flat", "flat"}, "y", "/Add");
  b.output("y", 2);
  const OnnxImport imported = b.import(dir);
  CHECK_LAYERS(imported, "{name: relu, type: relu}", "{name: Reshape, type: flatten}",
               "{name: Add, type: add, inputs: [Reshape, Reshape]}");
}

BOOST_AUTO_TEST_CASE(a_pad_folds_into_the_conv_or_average_pool_after_it) {
  TempDir dir;
  OnnxBuilder b({2, 6, 6});
  // avg_pool2d(3, 1, 1, count_include_pad=True) as PyTorch writes it: a zero Pad, AveragePool.
  b.ints("pads", {0, 0, 1, 1, 0, 0, 1, 1});
  b.node("Pad", {"x", "pads"}, "padded", "/pool/Pad");
  auto& pool = b.node("AveragePool", {"padded"}, "p", "/pool/AveragePool");
  attr(pool, "kernel_shape", {3, 3});
  // Conv2d(padding_mode='reflect'): a reflect Pad, then Conv without padding.
  attr_s(b.node("Pad", {"p", "pads"}, "reflected", "/conv/Pad"), "mode", "reflect");
  add_conv(b, "reflected", "c", "/conv/Conv", 2, 2, 3);
  // A zero Pad before a max pool stays a pad layer (max pooling pads with -inf).
  b.ints("bottom_right", {0, 0, 0, 0, 0, 0, 1, 1});
  b.node("Pad", {"c", "bottom_right"}, "zeros", "/pool2/Pad");
  auto& max = b.node("MaxPool", {"zeros"}, "y", "/pool2/MaxPool");
  attr(max, "kernel_shape", {2, 2});
  attr(max, "strides", {2, 2});
  b.output("y", 4);
  const OnnxImport imported = b.import(dir);
  CHECK_LAYERS(imported, "{name: pool, type: avg_pool, kernel: 3, stride: 1, padding: 1}",
               "{name: conv, type: conv2d, out_channels: 2, kernel: 3, padding: 1, padding_mode: "
               "reflect, bias: false}",
               "{name: pool2, type: pad, padding: [0, 1, 0, 1]}",
               "{name: pool2_2, type: max_pool, kernel: 2, round: floor}");
}

// nn.Conv2d(padding_mode='reflect') as torch.onnx.export 1.13 writes it: the pads [1, 1, 1, 1]
// (PyTorch's order: left, right, top, bottom) extended with zeros to 8, reshaped to [4, 2],
// flipped, transposed and flattened into ONNX's order, then a reflect Pad and the Conv.
BOOST_AUTO_TEST_CASE(the_pads_pytorch_computes_are_evaluated) {
  TempDir dir;
  OnnxBuilder b({2, 6, 6});
  b.ints("four", {4});
  b.ints("torch_pads", {0, 1, 2, 3});  // left 0, right 1, top 2, bottom 3
  auto& zeros = b.node("ConstantOfShape", {"four"}, "zeros", "/conv/ConstantOfShape");
  auto* value = zeros.add_attribute();
  value->set_name("value");
  value->set_type(onnx::AttributeProto::TENSOR);
  value->mutable_t()->set_data_type(onnx::TensorProto::INT64);
  value->mutable_t()->add_dims(1);
  value->mutable_t()->add_int64_data(0);
  attr(b.node("Concat", {"torch_pads", "zeros"}, "eight", "/conv/Concat"), "axis", 0);
  b.ints("pairs", {-1, 2});
  b.node("Reshape", {"eight", "pairs"}, "matrix", "/conv/Reshape");
  b.ints("start", {-1});
  b.ints("end", {-9223372036854775807});
  b.ints("axis0", {0});
  b.node("Slice", {"matrix", "start", "end", "axis0", "start"}, "flipped", "/conv/Slice");
  attr(b.node("Transpose", {"flipped"}, "columns", "/conv/Transpose"), "perm", {1, 0});
  b.node("Reshape", {"columns", "start"}, "onnx_pads", "/conv/Reshape_1");
  attr(b.node("Cast", {"onnx_pads"}, "pads", "/conv/Cast"), "to", 7);
  attr_s(b.node("Pad", {"x", "pads"}, "padded", "/conv/Pad"), "mode", "reflect");
  add_conv(b, "padded", "c", "/conv/Conv", 2, 3, 3);
  b.node("Relu", {"c"}, "y", "/relu/Relu");  // its shape, which ONNX leaves unknown, is needed
  b.output("y", 4);
  const OnnxImport imported = b.import(dir);
  CHECK_LAYERS(imported,
               "{name: conv, type: conv2d, out_channels: 3, kernel: 3, padding: [2, 3, 0, 1], "
               "padding_mode: reflect, bias: false}",
               "{name: relu, type: relu}");
}

BOOST_AUTO_TEST_CASE(pooling_and_convolution_attributes) {
  TempDir dir;
  OnnxBuilder b({2, 9, 9});
  auto& ceil = b.node("MaxPool", {"x"}, "a", "ceil");
  attr(ceil, "kernel_shape", {3, 3});
  attr(ceil, "strides", {2, 2});
  attr(ceil, "ceil_mode", 1);
  auto& dilated = b.node("MaxPool", {"a"}, "b2", "dilated");
  attr(dilated, "kernel_shape", {2, 2});
  attr(dilated, "dilations", {2, 2});
  attr(dilated, "pads", {0, 0, 1, 1});
  auto& average = b.node("AveragePool", {"b2"}, "c", "average");
  attr(average, "kernel_shape", {3, 3});
  attr(average, "strides", {1, 1});
  attr(average, "pads", {1, 1, 1, 1});
  b.weight("w", Shape{4, 1, 2, 2});
  auto& same = b.node("Conv", {"c", "w"}, "d", "same");
  attr_s(same, "auto_pad", "SAME_UPPER");
  attr(same, "group", 2);
  auto& strided = b.node("Conv", {"d", "w2"}, "y", "strided");
  b.weight("w2", Shape{4, 4, 3, 1});
  attr(strided, "strides", {2, 1});
  attr(strided, "dilations", {1, 2});
  b.output("y", 4);
  const OnnxImport imported = b.import(dir);
  CHECK_LAYERS(
      imported, "{name: ceil, type: max_pool, kernel: 3, stride: 2, round: ceil}",
      "{name: dilated, type: max_pool, kernel: 2, stride: 1, padding: [0, 1, 0, 1], dilation: 2}",
      "{name: average, type: avg_pool, kernel: 3, stride: 1, padding: 1, count_include_pad: false}",
      "{name: same, type: conv2d, out_channels: 4, kernel: 2, padding: [0, 1, 0, 1], groups: 2, "
      "bias: false}",
      "{name: strided, type: conv2d, out_channels: 4, kernel: [3, 1], stride: [2, 1], dilation: "
      "[1, 2], round: floor, bias: false}");
}

// PyTorch writes x.mean([2, 3]) (mnasnet) as ReduceMean over axes [2, 3] with keepdims 0.
BOOST_AUTO_TEST_CASE(reduce_mean_over_height_and_width_is_a_global_average_pool) {
  TempDir dir;
  {
    OnnxBuilder b({4, 3, 5});
    auto& mean = b.node("ReduceMean", {"x"}, "m", "/ReduceMean");
    attr(mean, "axes", {2, 3});
    attr(mean, "keepdims", 0);
    const Tensor weight = b.weight("classifier.weight", Shape{2, 4});
    attr(b.node("Gemm", {"m", "classifier.weight"}, "y", "/classifier/Gemm"), "transB", 1);
    b.output("y", 2);
    const OnnxImport imported = b.import(dir);
    CHECK_LAYERS(imported, "{name: ReduceMean, type: global_avg_pool}",
                 "{name: ReduceMean_2, type: flatten}",
                 "{name: classifier, type: linear, out_features: 2, bias: false}");

    strata::Config experiment = strata::Config::parse_string(imported.experiment_yaml, "<import>");
    strata::Experiment run = strata::Experiment::read(experiment, strata::test::registries(),
                                                      strata::Experiment::Scope::model);
    for (NamedTensor& tensor : run.graph->state_tensors())
      tensor.tensor.copy_from(weight_of(imported, tensor.name));
    std::mt19937 rng(5);
    const Tensor x = random_tensor(Shape{2, 4, 3, 5}, rng);
    strata::Context context{false, &run.rng, run.backend.get()};
    const Tensor& y = run.graph->forward(context, x);
    BOOST_TEST(y.shape() == (Shape{2, 2}));
    for (int64_t n = 0; n < 2; ++n) {
      for (int64_t o = 0; o < 2; ++o) {
        double expected = 0;
        for (int64_t c = 0; c < 4; ++c) {
          double mean_value = 0;
          for (int64_t i = 0; i < 15; ++i) mean_value += x.data()[(n * 4 + c) * 15 + i];
          expected += mean_value / 15 * weight.data()[o * 4 + c];
        }
        BOOST_TEST(static_cast<double>(y.data()[n * 2 + o]) == expected,
                   boost::test_tools::tolerance(1e-5));
      }
    }
  }
  {
    OnnxBuilder b({4, 3, 5});
    attr(b.node("ReduceMean", {"x"}, "m", "/pool/ReduceMean"), "axes", {-1, -2});  // keepdims 1
    b.node("Relu", {"m"}, "y", "/relu/Relu");
    b.output("y", 4);
    CHECK_LAYERS(b.import(dir), "{name: pool, type: global_avg_pool}", "{name: relu, type: relu}");
  }
  for (const std::vector<int64_t>& axes : {std::vector<int64_t>{1}, std::vector<int64_t>{}}) {
    OnnxBuilder b({4, 3, 5});
    auto& mean = b.node("ReduceMean", {"x"}, "y", "/ReduceMean");
    if (!axes.empty()) attr(mean, "axes", axes);
    b.output("y", 4);
    STRATA_CHECK_CONTAINS(error_of([&] { b.import(dir); }),
                          axes.empty() ? "node '/ReduceMean' (ReduceMean): ReduceMean over every "
                                         "axis of a rank-4 input: only the mean over the height"
                                       : "node '/ReduceMean' (ReduceMean): ReduceMean over axes "
                                         "[1] of a rank-4 input: only the mean over the height");
  }
}

BOOST_AUTO_TEST_CASE(activations_softmax_lrn_dropout_concat_and_identity) {
  TempDir dir;
  OnnxBuilder b({4, 5, 5}, 14);
  attr_f(b.node("LeakyRelu", {"x"}, "a", "/leaky/LeakyRelu"), "alpha", 0.2f);
  b.floats("zero", {}, {0.0f});
  b.floats("six", {}, {6.0f});
  b.node("Clip", {"a", "zero", "six"}, "c6", "/relu6/Clip");
  auto& hs = b.node("HardSigmoid", {"c6"}, "h", "/gate/HardSigmoid");
  attr_f(hs, "alpha", 1.0f / 6.0f);
  b.node("HardSwish", {"h"}, "s", "/swish/HardSwish");
  auto& lrn = b.node("LRN", {"s"}, "l", "/lrn/LRN");
  attr(lrn, "size", 5);
  attr_f(lrn, "alpha", 2e-4f);
  b.node("Identity", {"l"}, "i", "/identity/Identity");
  b.floats("ratio", {}, {0.25f});
  b.node("Dropout", {"i", "ratio"}, "d", "/drop/Dropout");
  b.node("Sigmoid", {"d"}, "g", "/sig/Sigmoid");
  attr(b.node("Concat", {"d", "g"}, "cat", "/cat/Concat"), "axis", 1);
  attr(b.node("Softmax", {"cat"}, "channels", "/softmax/Softmax"), "axis", 1);
  b.node("Softmax", {"channels"}, "y", "/softmax_last/Softmax");  // opset 13+: axis -1
  b.output("y", 4);
  const OnnxImport imported = b.import(dir);
  CHECK_LAYERS(imported, "{name: leaky, type: leaky_relu, negative_slope: 0.2}",
               "{name: relu6, type: relu6}", "{name: gate, type: hard_sigmoid}",
               "{name: swish, type: hardswish}",
               "{name: lrn, type: lrn, size: 5, alpha: 0.0002, beta: 0.75, k: 1}",
               "{name: drop, type: dropout, keep_prob: 0.75}", "{name: sig, type: sigmoid}",
               "{name: cat, type: concat, inputs: [drop, sig]}", "{name: softmax, type: softmax}",
               "{name: softmax_last, type: softmax, axis: -1}");
}

BOOST_AUTO_TEST_CASE(names_are_kept_where_valid_sanitized_otherwise_and_unique) {
  TempDir dir;
  OnnxBuilder b({2});
  b.node("Relu", {"x"}, "a", "/layer1/layer1.0/relu/Relu");
  b.node("Relu", {"a"}, "b1", "/layer1/layer1.0/relu/Relu_1");  // a module called twice
  b.node("Relu", {"b1"}, "c", "a,b@c");
  b.node("Relu", {"c"}, "d", "input");
  b.node("Relu", {"d"}, "e", "1st");
  b.node("Relu", {"e"}, "f", "");
  b.node("Relu", {"f"}, "g", "true");
  b.node("Relu", {"g"}, "y", "/layer2/layer2.0/downsample/downsample.1/Relu");
  b.output("y", 2);
  const OnnxImport imported = b.import(dir);
  CHECK_LAYERS(imported, "{name: layer1.0.relu, type: relu}", "{name: layer1.0.relu_2, type: relu}",
               "{name: a_b_c, type: relu}", "{name: input_, type: relu}",
               "{name: \"1st\", type: relu}", "{name: relu5, type: relu}",
               "{name: \"true\", type: relu}", "{name: layer2.0.downsample.1, type: relu}");
}

BOOST_AUTO_TEST_CASE(the_output_layer_goes_last) {
  TempDir dir;
  OnnxBuilder b({2});
  b.node("Relu", {"x"}, "y", "head");
  b.node("Sigmoid", {"x"}, "unused", "side");
  b.output("y", 2);
  const OnnxImport imported = b.import(dir);
  CHECK_LAYERS(imported, "{name: side, type: sigmoid}", "{name: head, type: relu, inputs: input}");
  BOOST_TEST(imported.output_layer == "head");
}

// ---- Errors ----

BOOST_AUTO_TEST_CASE(an_unsupported_operator_names_the_node_and_lists_the_supported_ones) {
  TempDir dir;
  OnnxBuilder b;
  b.node("Relu", {"x"}, "r", "/relu/Relu");
  b.node("Elu", {"r"}, "y", "/act/Elu");
  b.output("y", 4);
  const std::string message = error_of([&] { b.import(dir); });
  STRATA_CHECK_CONTAINS(message,
                        "model.onnx: node '/act/Elu' (Elu): operator 'Elu' is not supported");
  STRATA_CHECK_CONTAINS(
      message, "supported operators: Add, AveragePool, BatchNormalization, Cast, Clip, Concat");
}

BOOST_AUTO_TEST_CASE(a_file_that_is_not_onnx_truncated_or_of_another_opset_is_refused) {
  TempDir dir;
  { std::ofstream(dir / "text.onnx") << "model:\n  input: [1, 28, 28]\n"; }
  STRATA_CHECK_CONTAINS(error_of([&] { import_onnx(dir / "text.onnx"); }),
                        "text.onnx: not an ONNX model");
  OnnxBuilder b;
  b.weight("w", Shape{64, 3, 3, 3});
  b.node("Conv", {"x", "w"}, "y", "conv");
  b.output("y", 4);
  const fs::path whole = b.save(dir);
  std::string bytes;
  {
    std::ifstream in(whole, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  std::ofstream(dir / "half.onnx", std::ios::binary) << bytes.substr(0, bytes.size() / 2);
  STRATA_CHECK_CONTAINS(error_of([&] { import_onnx(dir / "half.onnx"); }),
                        "half.onnx: not an ONNX model, or a truncated one");
  STRATA_CHECK_CONTAINS(error_of([&] { import_onnx(dir / "missing.onnx"); }), "missing.onnx");
  b.model.mutable_opset_import(0)->set_version(18);
  STRATA_CHECK_CONTAINS(error_of([&] { b.import(dir); }),
                        "opset 18 is newer than import reads (opsets 11 to 17");
  b.model.mutable_opset_import(0)->set_version(9);
  STRATA_CHECK_CONTAINS(error_of([&] { b.import(dir); }), "opset 9 is older than import reads");
}

BOOST_AUTO_TEST_CASE(a_model_the_onnx_checker_refuses_is_refused_with_its_message) {
  TempDir dir;
  OnnxBuilder b;
  b.node("Relu", {"nowhere"}, "y", "dangling");
  b.output("y", 4);
  const std::string message = error_of([&] { b.import(dir); });
  STRATA_CHECK_CONTAINS(message, "model.onnx: the ONNX checker refuses the model");
  STRATA_CHECK_CONTAINS(message, "nowhere");
}

BOOST_AUTO_TEST_CASE(mappings_that_strata_cannot_express_are_errors_naming_the_node) {
  TempDir dir;
  {
    OnnxBuilder b({4, 4, 4});
    b.ints("shape", {0, 4, 16});
    b.node("Reshape", {"x", "shape"}, "y", "/view/Reshape");
    b.output("y", 3);
    STRATA_CHECK_CONTAINS(error_of([&] { b.import(dir); }),
                          "node '/view/Reshape' (Reshape): Reshape of [-1, 4, 4, 4] to [0, 4, 16]: "
                          "only a flatten to [N, 64]");
  }
  {
    OnnxBuilder b({4, 4, 4});
    attr(b.node("LRN", {"x"}, "y", "/lrn/LRN"), "size", 4);
    b.output("y", 4);
    STRATA_CHECK_CONTAINS(error_of([&] { b.import(dir); }), "size 4: only odd sizes are supported");
  }
  {
    OnnxBuilder b({3});
    b.node("Relu", {"x"}, "b_in", "relu");
    b.node("Gemm", {"x", "b_in"}, "y", "/fc/Gemm");
    b.output("y", 2);
    STRATA_CHECK_CONTAINS(error_of([&] { b.import(dir); }),
                          "node '/fc/Gemm' (Gemm): input 1 ('b_in') must be a constant");
  }
  {
    OnnxBuilder b({3});
    b.weight("offset", Shape{3});
    b.node("Relu", {"x"}, "r", "relu");
    b.node("Add", {"r", "offset"}, "y", "/shift/Add");
    b.output("y", 2);
    STRATA_CHECK_CONTAINS(error_of([&] { b.import(dir); }),
                          "adding the constant 'offset' (shape [3]) is supported only as the bias");
  }
  {
    OnnxBuilder b({3});
    b.node("Relu", {"x"}, "y", "relu");
    b.node("Sigmoid", {"x"}, "z", "sigmoid");
    b.output("y", 2);
    b.output("z", 2);
    STRATA_CHECK_CONTAINS(error_of([&] { b.import(dir); }),
                          "the graph has 2 outputs ('y', 'z'); a Strata model has one");
  }
  {
    OnnxBuilder b({3, 8, 8});
    b.model.mutable_graph()
        ->mutable_input(0)
        ->mutable_type()
        ->mutable_tensor_type()
        ->mutable_shape()
        ->mutable_dim(2)
        ->set_dim_param("H");
    b.node("Relu", {"x"}, "y", "relu");
    b.output("y", 4);
    STRATA_CHECK_CONTAINS(error_of([&] { b.import(dir); }), "has an unknown extent 2 ('H')");
  }
  {
    OnnxBuilder b({3, 8, 8});
    b.weight("w", Shape{2, 3, 3, 3, 1});
    b.node("Conv", {"x", "w"}, "y", "conv3d");
    b.output("y", 4);
    STRATA_CHECK_CONTAINS(error_of([&] { b.import(dir); }), "only 2-D convolutions");
  }
}
