// The export description (strata/export.hpp): what each built-in layer writes (operators,
// attributes, initializer names, how values connect), blocks as their expanded layers, the
// preprocessing, the errors (a layer without a mapping names its plugin), and interop's ONNX
// writer (checker, shape inference, refused opsets, the shape cross-check).
#define BOOST_TEST_MODULE export
#include <algorithm>
#include <boost/test/unit_test.hpp>
#include <filesystem>
#include <random>

#include "strata/export.hpp"
#include "strata/graph.hpp"
#include "strata/interop/onnx_export.hpp"
#include "strata/plugin.hpp"
#include "test_support.hpp"

using namespace strata;
namespace fs = std::filesystem;

namespace {

Graph build(const std::string& layers, const std::string& input = "[4, 12, 12]",
            const Registries& registries = test::registries()) {
  Config model = test::yaml("input: " + input + "\nlayers:\n" + layers);
  Rng rng(3);
  Graph graph(model, registries, test::backend(), rng);
  model.check_unused();
  return graph;
}

ExportedModel describe(const Graph& graph, int opset = 13) {
  ExportOptions options;
  options.opset = opset;
  return export_graph(graph, test::registries(), options);
}

const ExportNode& node_named(const ExportedModel& model, const std::string& name) {
  for (const ExportNode& node : model.nodes) {
    if (node.name == name) return node;
  }
  BOOST_FAIL("no node named " + name);
  throw;  // unreachable
}

template <class T>
T attribute(const ExportNode& node, const std::string& name) {
  const ExportAttributeValue* value = node.find(name);
  BOOST_TEST_REQUIRE(value != nullptr, node.name + " has no attribute " + name);
  BOOST_TEST_REQUIRE(std::holds_alternative<T>(*value),
                     node.name + "." + name + " has another type");
  return std::get<T>(*value);
}

const Tensor& initializer(const ExportedModel& model, const std::string& name) {
  for (const ExportInitializer& init : model.initializers) {
    if (init.name == name) return init.value;
  }
  BOOST_FAIL("no initializer named " + name);
  throw;
}

using Ints = std::vector<int64_t>;

// Every layer type of the layers plugin but the elementwise ones tested below.
const char* const kSmallNet = R"(
  - {name: conv1, type: conv2d, out_channels: 6, kernel: 3, stride: 2, padding: 2, dilation: 2, groups: 2, bias: false, round: floor}
  - {name: bn1, type: batch_norm, eps: 0.001}
  - {name: act1, type: relu6}
  - {name: pool1, type: max_pool, kernel: 3, stride: 2, padding: 1, round: floor}
  - {name: norm1, type: lrn, size: 3, alpha: 0.002, beta: 0.7, k: 1.5}
  - {name: branch, type: conv2d, out_channels: 6, kernel: 1}
  - {name: joined, type: concat, inputs: [norm1, branch]}
  - {name: pool2, type: avg_pool, kernel: 2, stride: 1, padding: 1, count_include_pad: false, round: floor}
  - {name: gate, type: global_avg_pool}
  - {name: gated, type: multiply, inputs: [pool2, gate]}
  - {name: sum, type: add, inputs: [gated, pool2, gated]}
  - {name: drop, type: dropout, keep_prob: 0.5}
  - {name: fc1, type: linear, out_features: 5}
  - {name: act2, type: leaky_relu, negative_slope: 0.2}
  - {name: flat, type: flatten}
  - {name: probabilities, type: softmax}
)";

}  // namespace

BOOST_AUTO_TEST_CASE(every_layer_type_maps_to_its_onnx_operator_with_its_settings) {
  Graph graph = build(kSmallNet);
  const ExportedModel model = describe(graph);
  BOOST_TEST(model.opset == 13);
  BOOST_TEST(model.input_name == "input");
  BOOST_TEST(model.output_name == "logits");
  BOOST_TEST(model.input_shape == (Shape{4, 12, 12}));
  BOOST_TEST(model.output_shape == (Shape{5}));

  const ExportNode& conv = node_named(model, "conv1");
  BOOST_TEST(conv.op == "Conv");
  BOOST_TEST(conv.inputs == (std::vector<std::string>{"input", "conv1.weight"}));  // no bias
  BOOST_TEST(conv.outputs == (std::vector<std::string>{"conv1"}));
  BOOST_TEST(attribute<Ints>(conv, "kernel_shape") == (Ints{3, 3}));
  BOOST_TEST(attribute<Ints>(conv, "strides") == (Ints{2, 2}));
  BOOST_TEST(attribute<Ints>(conv, "dilations") == (Ints{2, 2}));
  BOOST_TEST(attribute<Ints>(conv, "pads") == (Ints{2, 2, 2, 2}));
  BOOST_TEST(attribute<int64_t>(conv, "group") == 2);
  // The initializer is the parameter itself, under its state_dict name.
  BOOST_TEST(initializer(model, "conv1.weight").same_storage(graph.state_tensors()[0].tensor));

  const ExportNode& bn = node_named(model, "bn1");
  BOOST_TEST(bn.op == "BatchNormalization");
  BOOST_TEST(bn.inputs == (std::vector<std::string>{"conv1", "bn1.weight", "bn1.bias",
                                                    "bn1.running_mean", "bn1.running_var"}));
  BOOST_TEST(attribute<float>(bn, "epsilon") == 0.001f);

  const ExportNode& clip = node_named(model, "act1");
  BOOST_TEST(clip.op == "Clip");
  BOOST_TEST(clip.inputs.size() == 3u);
  BOOST_TEST(initializer(model, "act1.min").data()[0] == 0.0f);
  BOOST_TEST(initializer(model, "act1.max").data()[0] == 6.0f);
  BOOST_TEST(initializer(model, "act1.max").shape().rank() == 0u);

  const ExportNode& max_pool = node_named(model, "pool1");
  BOOST_TEST(max_pool.op == "MaxPool");
  BOOST_TEST(attribute<Ints>(max_pool, "kernel_shape") == (Ints{3, 3}));
  BOOST_TEST(attribute<Ints>(max_pool, "pads") == (Ints{1, 1, 1, 1}));
  BOOST_TEST(attribute<int64_t>(max_pool, "ceil_mode") == 0);

  const ExportNode& lrn = node_named(model, "norm1");
  BOOST_TEST(lrn.op == "LRN");
  BOOST_TEST(attribute<int64_t>(lrn, "size") == 3);
  BOOST_TEST(attribute<float>(lrn, "alpha") == 0.002f);
  BOOST_TEST(attribute<float>(lrn, "beta") == 0.7f);
  BOOST_TEST(attribute<float>(lrn, "bias") == 1.5f);

  const ExportNode& concat = node_named(model, "joined");
  BOOST_TEST(concat.op == "Concat");
  BOOST_TEST(concat.inputs == (std::vector<std::string>{"norm1", "branch"}));
  BOOST_TEST(attribute<int64_t>(concat, "axis") == 1);

  const ExportNode& avg_pool = node_named(model, "pool2");
  BOOST_TEST(avg_pool.op == "AveragePool");
  BOOST_TEST(attribute<int64_t>(avg_pool, "count_include_pad") == 0);
  BOOST_TEST(node_named(model, "gate").op == "GlobalAveragePool");
  BOOST_TEST(node_named(model, "gated").op == "Mul");
  const ExportNode& sum = node_named(model, "sum");
  BOOST_TEST(sum.op == "Sum");  // three inputs
  BOOST_TEST(sum.inputs == (std::vector<std::string>{"gated", "pool2", "gated"}));

  // Dropout is the identity: no node, and fc1 reads its input; fc1 flattens first.
  for (const ExportNode& node : model.nodes) BOOST_TEST(node.name != "drop");
  const ExportNode& flatten = node_named(model, "fc1");
  BOOST_TEST(flatten.op == "Flatten");
  BOOST_TEST(flatten.inputs == (std::vector<std::string>{"sum"}));
  const ExportNode& gemm = node_named(model, "fc1/1");
  BOOST_TEST(gemm.op == "Gemm");
  BOOST_TEST(gemm.inputs == (std::vector<std::string>{"fc1/flat", "fc1.weight", "fc1.bias"}));
  BOOST_TEST(attribute<int64_t>(gemm, "transB") == 1);
  BOOST_TEST(attribute<float>(node_named(model, "act2"), "alpha") == 0.2f);
  BOOST_TEST(node_named(model, "flat").op == "Flatten");
  // The last layer writes the model's output.
  const ExportNode& softmax = node_named(model, "probabilities");
  BOOST_TEST(softmax.op == "Softmax");
  BOOST_TEST(attribute<int64_t>(softmax, "axis") == 1);
  BOOST_TEST(softmax.outputs == (std::vector<std::string>{"logits"}));
  // A shape for every layer output but dropout's (which has no value of its own).
  BOOST_TEST(model.value_shapes.size() == graph.size() - 1);
}

BOOST_AUTO_TEST_CASE(activations_and_batch_norm_without_affine) {
  Graph graph = build(R"(
  - {name: a, type: relu}
  - {name: b, type: tanh}
  - {name: c, type: sigmoid}
  - {name: d, type: hard_sigmoid}
  - {name: e, type: hardswish}
  - {name: f, type: swish}
  - {name: g, type: batch_norm, affine: false}
  - {name: h, type: dropout}
)",
                      "[3, 4, 4]");
  const ExportedModel model = describe(graph);
  BOOST_TEST(node_named(model, "a").op == "Relu");
  BOOST_TEST(node_named(model, "b").op == "Tanh");
  BOOST_TEST(node_named(model, "c").op == "Sigmoid");
  BOOST_TEST(node_named(model, "d").op == "HardSigmoid");
  BOOST_TEST(attribute<float>(node_named(model, "d"), "alpha") == 1.0f / 6.0f);
  BOOST_TEST(attribute<float>(node_named(model, "d"), "beta") == 0.5f);
  // hardswish: x * HardSigmoid(x); swish (the example plugin): x * Sigmoid(x).
  BOOST_TEST(node_named(model, "e").op == "HardSigmoid");
  BOOST_TEST(node_named(model, "e/1").op == "Mul");
  BOOST_TEST(node_named(model, "e/1").inputs == (std::vector<std::string>{"d", "e/hard_sigmoid"}));
  BOOST_TEST(node_named(model, "f").op == "Sigmoid");
  BOOST_TEST(node_named(model, "f/1").op == "Mul");
  const ExportNode& bn = node_named(model, "g");
  BOOST_TEST(bn.inputs[1] == "g.unit_scale");
  BOOST_TEST(initializer(model, "g.unit_scale").data()[2] == 1.0f);
  BOOST_TEST(initializer(model, "g.zero_shift").data()[2] == 0.0f);
  // The last layer passes its input through: an Identity names the output.
  const ExportNode& last = model.nodes.back();
  BOOST_TEST(last.op == "Identity");
  BOOST_TEST(last.inputs == (std::vector<std::string>{"g"}));
  BOOST_TEST(last.outputs == (std::vector<std::string>{"logits"}));
}

BOOST_AUTO_TEST_CASE(padding_rounding_dilation_and_axis_settings_map_to_onnx_attributes) {
  Graph graph = build(R"(
  - {name: conv, type: conv2d, out_channels: 4, kernel: 2, padding: same}
  - {name: reflected, type: conv2d, out_channels: 4, kernel: 3, padding: 1, padding_mode: reflect}
  - {name: pool, type: max_pool, kernel: 3, stride: 2, dilation: 2, round: ceil}
  - {name: padded, type: pad, padding: [1, 0, 2, 1], value: 0.5}
  - {name: probabilities, type: softmax, axis: -1}
)");
  const ExportedModel model = describe(graph);
  // `same` with an even kernel: the odd padding row and column at the end.
  BOOST_TEST(attribute<Ints>(node_named(model, "conv"), "pads") == (Ints{0, 0, 1, 1}));
  // A padding mode: Pad (reflect) with int64 pads [0, 0, top, left, 0, 0, bottom, right], then an
  // unpadded Conv.
  const ExportNode& pad = node_named(model, "reflected");
  BOOST_TEST(pad.op == "Pad");
  BOOST_TEST(std::get<std::string>(*pad.find("mode")) == "reflect");
  const auto pads = std::find_if(model.initializers.begin(), model.initializers.end(),
                                 [](const auto& init) { return init.name == "reflected.pads"; });
  BOOST_TEST_REQUIRE((pads != model.initializers.end() && pads->int64_values.has_value()));
  BOOST_TEST(*pads->int64_values == (Ints{0, 0, 1, 1, 0, 0, 1, 1}));
  BOOST_TEST(pad.inputs == (std::vector<std::string>{"conv", "reflected.pads"}));  // no value
  BOOST_TEST(node_named(model, "reflected/1").op == "Conv");
  BOOST_TEST(node_named(model, "reflected/1").inputs[0] == "reflected/padded");
  BOOST_TEST(attribute<Ints>(node_named(model, "reflected/1"), "pads") == (Ints{0, 0, 0, 0}));
  const ExportNode& pool = node_named(model, "pool");
  BOOST_TEST(attribute<int64_t>(pool, "ceil_mode") == 1);
  BOOST_TEST(attribute<Ints>(pool, "dilations") == (Ints{2, 2}));
  const ExportNode& padded = node_named(model, "padded");
  BOOST_TEST(padded.op == "Pad");
  BOOST_TEST(std::get<std::string>(*padded.find("mode")) == "constant");
  BOOST_TEST(initializer(model, "padded.value").data()[0] == 0.5f);
  BOOST_TEST(attribute<int64_t>(node_named(model, "probabilities"), "axis") == -1);
  // ONNX's shape inference agrees with every layer's shape (ceil, same, the pads).
  BOOST_TEST(interop::onnx_model(model, {}, "settings.onnx").size() > 100u);
  // What ONNX cannot express at these opsets is refused, naming the setting.
  STRATA_CHECK_CONTAINS(
      test::error_of([&] { describe(build("  - {name: p, type: pad, padding: 1, mode: circular}\n")); }),
      "circular padding is ONNX Pad's mode 'wrap'");
  STRATA_CHECK_CONTAINS(
      test::error_of([&] {
        describe(build("  - {name: bn, type: batch_norm, track_running_stats: false}\n"));
      }),
      "layer 'bn' (batch_norm): track_running_stats: false");
}

BOOST_AUTO_TEST_CASE(blocks_export_as_their_layers_under_checkpoint_names) {
  Graph graph = build(R"(
  - {name: conv1, type: conv2d, out_channels: 8, kernel: 3, padding: 1, bias: false}
  - {name: layer1, type: residual_basic, out_channels: 16, stride: 2, repeat: 2}
  - {name: fc, type: linear, out_features: 3, inputs: [layer1]}
)",
                      "[3, 8, 8]");
  const ExportedModel model = describe(graph);
  BOOST_TEST(node_named(model, "layer1.0.conv1").op == "Conv");
  BOOST_TEST(node_named(model, "layer1.0.downsample.0").op == "Conv");
  BOOST_TEST(node_named(model, "layer1.1.bn2").op == "BatchNormalization");
  // Every checkpoint tensor but num_batches_tracked is an initializer, "<layer>.<name>".
  for (const NamedTensor& tensor : graph.state_tensors()) {
    const std::string key = tensor.name.substr(0, tensor.name.rfind('/')) + "." +
                            tensor.name.substr(tensor.name.rfind('/') + 1);
    if (key.ends_with("num_batches_tracked")) continue;
    BOOST_TEST(initializer(model, key).same_storage(tensor.tensor), key);
  }
  // The fc layer reads the block's output, the last layer of copy 1.
  BOOST_TEST(node_named(model, "fc").op == "Flatten");
  const std::string block_output = graph.input_names(graph.size() - 1)[0];
  BOOST_TEST(node_named(model, "fc").inputs[0] == block_output);
}

BOOST_AUTO_TEST_CASE(a_layer_without_a_mapping_is_an_error_naming_its_plugin) {
  Registries registries;
  PluginLoader loader(registries);
  loader.load_dir(fs::path(STRATA_BIN_DIR) / ".." / "lib" / "strata");
  loader.load_file(fs::path(STRATA_TEST_PLUGIN_DIR) / "libstrata_test_sum.so");
  Config model = test::yaml(R"(input: [2, 3, 3]
layers:
  - {name: conv1, type: conv2d, out_channels: 2, kernel: 1}
  - {name: both, type: test_sum, inputs: [conv1, input]}
)");
  Rng rng(1);
  Graph graph(model, registries, test::backend(), rng);  // the backend is used by name
  const std::string message =
      test::error_of([&] { export_graph(graph, registries, ExportOptions{}); });
  STRATA_CHECK_CONTAINS(message, "layer 'both'");
  STRATA_CHECK_CONTAINS(message, "type 'test_sum'");
  STRATA_CHECK_CONTAINS(message, "plugin 'test_sum'");
  STRATA_CHECK_CONTAINS(message, "has no export mapping");
}

BOOST_AUTO_TEST_CASE(settings_without_an_exact_mapping_are_refused) {
  Graph graph = build("  - {name: norm, type: lrn, size: 4}\n");
  const std::string message = test::error_of([&] { describe(graph); });
  STRATA_CHECK_CONTAINS(message, "layer 'norm' (lrn)");
  STRATA_CHECK_CONTAINS(message, "size 4 is even");
  // A layer named like the model's input cannot be told apart from it.
  Graph named = build("  - {name: logits, type: relu}\n  - {name: out, type: relu}\n");
  STRATA_CHECK_CONTAINS(test::error_of([&] { describe(named); }), "a layer is named 'logits'");
}

BOOST_AUTO_TEST_CASE(preprocessing_exports_normalize_and_leaves_out_evaluation_identities) {
  Graph graph = build("  - {name: fc, type: linear, out_features: 2}\n", "[3, 5, 5]");
  auto normalize = test::registries().transforms.create(
      test::yaml("{type: normalize, mean: [0.5, 0.25, 0.125], std: [2, 4, 8]}"));
  auto flip = test::registries().transforms.create(test::yaml("{type: hflip}"));
  for (auto& transform : {normalize, flip}) transform->setup(Shape{3, 5, 5});
  const std::vector<std::shared_ptr<const Transform>> preprocess = {flip, normalize};
  const ExportedModel model = export_graph(graph, test::registries(), ExportOptions{}, preprocess);
  const ExportNode& sub = model.nodes.at(0);
  BOOST_TEST(sub.op == "Sub");
  BOOST_TEST(sub.inputs == (std::vector<std::string>{"input", "preprocess.1.normalize.mean"}));
  const ExportNode& div = model.nodes.at(1);
  BOOST_TEST(div.op == "Div");
  BOOST_TEST(div.outputs == (std::vector<std::string>{"preprocess.1.normalize"}));
  const Tensor& mean = initializer(model, "preprocess.1.normalize.mean");
  BOOST_TEST(mean.shape() == (Shape{3, 1, 1}));  // broadcasts over [N, C, H, W]
  BOOST_TEST(mean.data()[1] == 0.25f);
  BOOST_TEST(initializer(model, "preprocess.1.normalize.std").data()[2] == 8.0f);
  BOOST_TEST(node_named(model, "fc").inputs[0] == "preprocess.1.normalize");
  // A transform that changes evaluation images and has no mapping is an error.
  auto crop =
      test::registries().transforms.create(test::yaml("{type: random_resized_crop, size: 5}"));
  crop->setup(Shape{3, 5, 5});
  const std::vector<std::shared_ptr<const Transform>> cropping = {crop};
  STRATA_CHECK_CONTAINS(
      test::error_of([&] { export_graph(graph, test::registries(), ExportOptions{}, cropping); }),
      "transform 0 (random_resized_crop) of the data pipeline changes images");
}

BOOST_AUTO_TEST_CASE(onnx_writer_checks_the_model_and_refuses_what_it_cannot_honour) {
  Graph graph = build(kSmallNet);
  for (const int opset : {13, interop::max_export_opset()}) {
    const std::string bytes = interop::onnx_model(describe(graph, opset), {}, "small.onnx");
    BOOST_TEST(bytes.size() > 1000u);
  }
  STRATA_CHECK_CONTAINS(test::error_of([&] { interop::check_export_opset(12); }),
                        "--opset 12: Strata exports opsets 13 to");
  STRATA_CHECK_CONTAINS(
      test::error_of([&] { interop::check_export_opset(interop::max_export_opset() + 1); }),
      "knows no operator schemas");
  // A mapping that computes another shape than its layer is caught by the shape cross-check
  // (ceil_mode 1 in place of 0; the global pool keeps the rest of the graph consistent).
  Graph pooled = build(R"(
  - {name: conv1, type: conv2d, out_channels: 6, kernel: 3, stride: 2, padding: 2, dilation: 2, round: floor}
  - {name: pool1, type: max_pool, kernel: 3, stride: 2, padding: 1, round: floor}
  - {name: gap, type: global_avg_pool}
  - {name: fc, type: linear, out_features: 2}
)");
  ExportedModel wrong = describe(pooled);
  for (ExportNode& node : wrong.nodes) {
    if (node.name == "pool1") node.set("ceil_mode", int64_t{1});
  }
  STRATA_CHECK_CONTAINS(test::error_of([&] { interop::onnx_model(wrong, {}, "wrong.onnx"); }),
                        "wrong.onnx: ONNX infers the shape [batch, 6, 4, 4] for 'pool1', but "
                        "Strata computes [batch, 6, 3, 3]");
  // An operator ONNX does not have is the checker's error; the file is not written.
  ExportedModel unknown = describe(graph);
  unknown.nodes.front().op = "Convolution";
  test::TempDir dir;
  STRATA_CHECK_CONTAINS(test::error_of([&] { interop::write_onnx(unknown, dir / "bad.onnx", {}); }),
                        "bad.onnx");
  BOOST_TEST(fs::is_empty(dir.path()));
  interop::write_onnx(describe(graph), dir / "good.onnx", {});
  BOOST_TEST(fs::file_size(dir / "good.onnx") > 1000u);
}
