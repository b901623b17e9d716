// Blocks: expansion in place, naming (torchvision's state_dict keys), repeat, block outputs as
// tensor names, and the errors a user meets (repeat 0, unknown keys, channels that do not fit).
#define BOOST_TEST_MODULE blocks
#include <algorithm>
#include <boost/test/unit_test.hpp>
#include <set>

#include "strata/block.hpp"
#include "strata/graph.hpp"
#include "strata/tools/summary.hpp"
#include "test_support.hpp"

using namespace strata;

namespace {

std::set<std::string> state_names(Graph& graph) {
  std::set<std::string> names;
  for (const NamedTensor& tensor : graph.state_tensors()) names.insert(tensor.name);
  return names;
}

Graph build(const std::string& layers, const std::string& input = "[3, 32, 32]") {
  Config model = test::yaml("input: " + input + "\nlayers:\n" + layers);
  Graph graph(model, test::registries(), test::backend());
  model.check_unused();
  return graph;
}

std::string build_error(const std::string& layers, const std::string& input = "[3, 32, 32]") {
  return test::error_of([&] { build(layers, input); });
}

// The state_dict keys of torchvision's BasicBlock `prefix`, with or without a downsample.
std::vector<std::string> basic_block_keys(const std::string& prefix, bool downsample) {
  std::vector<std::string> keys;
  auto bn = [&](const std::string& name) {
    for (const char* tensor : {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}) {
      keys.push_back(prefix + "." + name + "/" + tensor);
    }
  };
  keys.push_back(prefix + ".conv1/weight");
  bn("bn1");
  keys.push_back(prefix + ".conv2/weight");
  bn("bn2");
  if (downsample) {
    keys.push_back(prefix + ".downsample.0/weight");
    bn("downsample.1");
  }
  return keys;
}

}  // namespace

BOOST_AUTO_TEST_CASE(residual_stage_expands_with_torchvision_names) {
  Graph graph = build(R"(
  - {name: conv1, type: conv2d, out_channels: 16, kernel: 3, padding: 1, bias: false}
  - {name: layer1, type: residual_basic, out_channels: 16, repeat: 2}
  - {name: layer2, type: residual_basic, out_channels: 32, stride: 2, repeat: 2}
  - {name: fc, type: linear, out_features: 10}
)");
  std::set<std::string> expected{"conv1/weight", "fc/weight", "fc/bias"};
  for (const auto& [prefix, downsample] : std::vector<std::pair<std::string, bool>>{
           {"layer1.0", false}, {"layer1.1", false}, {"layer2.0", true}, {"layer2.1", false}}) {
    for (const std::string& key : basic_block_keys(prefix, downsample)) expected.insert(key);
  }
  const std::set<std::string> names = state_names(graph);
  BOOST_CHECK_EQUAL_COLLECTIONS(names.begin(), names.end(), expected.begin(), expected.end());

  // Shapes: the stride sits on the first copy only, the projection is 1x1 with stride 2.
  BOOST_CHECK_EQUAL(graph.layer(graph.index_of("layer2.0.conv1")).output_shape(), (Shape{32, 16, 16}));
  BOOST_CHECK_EQUAL(graph.layer(graph.index_of("layer2.1.conv1")).output_shape(), (Shape{32, 16, 16}));
  BOOST_CHECK_EQUAL(graph.layer(graph.index_of("layer2.0.downsample.0")).output_shape(),
                    (Shape{32, 16, 16}));
  BOOST_CHECK_EQUAL(graph.input_names(graph.index_of("layer2.0.downsample.0"))[0], "layer1.1.relu");
  const std::vector<std::string> add_inputs = graph.input_names(graph.index_of("layer1.0.add"));
  BOOST_CHECK_EQUAL(add_inputs[0], "layer1.0.bn2");
  BOOST_CHECK_EQUAL(add_inputs[1], "conv1");  // identity shortcut: the block's input

  // The block name and each copy's name refer to the output; the next layer reads layer2.
  BOOST_CHECK_EQUAL(graph.index_of("layer2"), graph.index_of("layer2.1.relu"));
  BOOST_CHECK_EQUAL(graph.index_of("layer1.0"), graph.index_of("layer1.0.relu"));
  BOOST_CHECK_EQUAL(graph.input_names(graph.index_of("fc"))[0], "layer2.1.relu");
  BOOST_CHECK_EQUAL(graph.input_names(graph.index_of("layer2.0.conv1"))[0], "layer1.1.relu");

  // The block structure is kept for summary.
  BOOST_REQUIRE_EQUAL(graph.blocks().size(), 2u);
  BOOST_CHECK_EQUAL(graph.blocks()[1].name, "layer2");
  BOOST_CHECK_EQUAL(graph.blocks()[1].repeat, 2);
  BOOST_CHECK_EQUAL(graph.block_of(graph.index_of("layer2.0.conv1")), 1);
  BOOST_CHECK_EQUAL(graph.block_of(graph.index_of("conv1")), -1);
  BOOST_CHECK_EQUAL(graph.blocks()[1].end - graph.blocks()[1].first, 9 + 7);  // with and without downsample
}

BOOST_AUTO_TEST_CASE(without_repeat_parts_are_named_block_dot_part) {
  Graph graph = build(R"(
  - {name: block, type: residual_bottleneck, out_channels: 32}
  - {name: head, type: linear, out_features: 4, inputs: [block]}
)");
  for (const char* name : {"block.conv1", "block.conv2", "block.conv3", "block.bn3",
                           "block.downsample.0", "block.downsample.1", "block.add", "block.relu"}) {
    BOOST_CHECK_MESSAGE(graph.index_of(name) >= 0, "no layer " << name);
  }
  BOOST_CHECK_EQUAL(graph.index_of("block.0.conv1"), -1);
  // width = 32 / 4: conv1 [8, 3, 1, 1], conv2 [8, 8, 3, 3], conv3 [32, 8, 1, 1].
  auto weight_shape = [&](const std::string& layer) {
    return graph.layer(graph.index_of(layer)).params()[0]->value.shape();
  };
  BOOST_CHECK_EQUAL(weight_shape("block.conv1"), (Shape{8, 3, 1, 1}));
  BOOST_CHECK_EQUAL(weight_shape("block.conv2"), (Shape{8, 8, 3, 3}));
  BOOST_CHECK_EQUAL(weight_shape("block.conv3"), (Shape{32, 8, 1, 1}));
  BOOST_CHECK_EQUAL(graph.input_names(graph.index_of("head"))[0], "block.relu");
}

BOOST_AUTO_TEST_CASE(bottleneck_puts_the_stride_on_the_3x3_convolution) {
  Graph graph = build("  - {name: layer, type: residual_bottleneck, out_channels: 64, stride: 2, repeat: 1}\n");
  BOOST_CHECK_EQUAL(graph.layer(graph.index_of("layer.0.conv1")).output_shape(), (Shape{16, 32, 32}));
  BOOST_CHECK_EQUAL(graph.layer(graph.index_of("layer.0.conv2")).output_shape(), (Shape{16, 16, 16}));
  BOOST_CHECK_EQUAL(graph.layer(graph.index_of("layer.0.downsample.0")).output_shape(), (Shape{64, 16, 16}));
  BOOST_CHECK_EQUAL(graph.output_shape(), (Shape{64, 16, 16}));
}

BOOST_AUTO_TEST_CASE(inception_branches_and_depth) {
  Graph graph = build(
      "  - {name: inception3a, type: inception, ch1x1: 64, ch3x3red: 96, ch3x3: 128, ch5x5red: 16, "
      "ch5x5: 32, pool_proj: 32}\n",
      "[192, 8, 8]");
  BOOST_CHECK_EQUAL(graph.output_shape(), (Shape{256, 8, 8}));
  const std::vector<std::string> concat = graph.input_names(graph.index_of("inception3a.concat"));
  const std::vector<std::string> expected{"inception3a.branch1.relu", "inception3a.branch2.1.relu",
                                          "inception3a.branch3.1.relu", "inception3a.branch4.1.relu"};
  BOOST_CHECK_EQUAL_COLLECTIONS(concat.begin(), concat.end(), expected.begin(), expected.end());
  BOOST_CHECK_EQUAL(graph.layer(graph.index_of("inception3a.branch3.1.conv")).params()[0]->value.shape(),
                    (Shape{32, 16, 5, 5}));
  BOOST_CHECK_EQUAL(graph.input_names(graph.index_of("inception3a.branch4.0"))[0], "input");
  BOOST_CHECK_EQUAL(graph.index_of("inception3a.branch1.bn"), -1);  // paper v1: no batch norm

  Graph with_bn = build(
      "  - {name: m, type: inception, ch1x1: 4, ch3x3red: 2, ch3x3: 4, ch5x5red: 2, ch5x5: 4, "
      "pool_proj: 4, batch_norm: true}\n",
      "[6, 8, 8]");
  BOOST_CHECK(with_bn.index_of("m.branch2.1.bn") >= 0);
  BOOST_CHECK_EQUAL(with_bn.layer(with_bn.index_of("m.branch2.1.conv")).params().size(), 1u);  // no bias
  BOOST_CHECK_EQUAL(with_bn.output_shape(), (Shape{16, 8, 8}));
}

BOOST_AUTO_TEST_CASE(context_module_keeps_shape_and_grows_the_receptive_field) {
  Graph graph = build("  - {name: ctx, type: context_module}\n", "[5, 40, 40]");
  BOOST_CHECK_EQUAL(graph.output_shape(), (Shape{5, 40, 40}));
  BOOST_CHECK_EQUAL(graph.layer(graph.index_of("ctx.conv8")).params()[0]->value.shape(), (Shape{5, 5, 1, 1}));
  BOOST_CHECK_EQUAL(graph.index_of("ctx.relu8"), -1);  // the paper's last layer has no ReLU
  const ModelSummary summary = summarize(graph, true, 1);
  std::vector<int64_t> fields;
  for (const SummaryRow& row : summary.rows) {
    if (row.type == "conv2d") fields.push_back(row.receptive_field[0]);
  }
  const std::vector<int64_t> expected{3, 5, 9, 17, 33, 65, 67, 67};
  BOOST_CHECK_EQUAL_COLLECTIONS(fields.begin(), fields.end(), expected.begin(), expected.end());
}

BOOST_AUTO_TEST_CASE(blocks_run_forward_and_backward) {
  Config model = test::yaml(R"(
input: [3, 12, 12]
layers:
  - {name: layer1, type: residual_basic, out_channels: 6, stride: 2, repeat: 2}
  - {name: inc, type: inception, ch1x1: 2, ch3x3red: 2, ch3x3: 3, ch5x5red: 2, ch5x5: 3, pool_proj: 2, batch_norm: true}
  - {name: ctx, type: context_module, dilations: [1, 2], batch_norm: true}
  - {name: fc, type: linear, out_features: 3}
)");
  Rng rng(7);
  Graph graph(model, test::registries(), test::backend(), rng);
  std::mt19937 data_rng(11);
  Tensor input = test::random_tensor(Shape{4, 3, 12, 12}, data_rng);
  Context context{true, &rng, nullptr};
  const Tensor& out = graph.forward(context, input);
  BOOST_CHECK_EQUAL(out.shape(), (Shape{4, 3}));
  graph.backward(context, test::random_tensor(Shape{4, 3}, data_rng));
  for (const ParamRef& param : graph.params()) {
    float sum = 0;
    for (float g : param.param->grad.span()) sum += std::abs(g);
    BOOST_CHECK_MESSAGE(sum > 0, param.key << " received no gradient");
  }
}

// sync_batch_norm: true makes every batch_norm part of the block a synchronized one (it
// communicates), downsample.1 included; without it none is.
BOOST_AUTO_TEST_CASE(sync_batch_norm_reaches_every_batch_norm_part) {
  for (const bool sync : {false, true}) {
    const std::string flag = sync ? ", sync_batch_norm: true" : "";
    Graph graph = build(
        "  - {name: basic, type: residual_basic, out_channels: 8, stride: 2, repeat: 2" + flag + "}\n"
        "  - {name: bottle, type: residual_bottleneck, out_channels: 16, stride: 2" + flag + "}\n"
        "  - {name: incep, type: inception, ch1x1: 2, ch3x3red: 2, ch3x3: 2, ch5x5red: 2, ch5x5: 2, "
        "pool_proj: 2, batch_norm: true" + flag + "}\n"
        "  - {name: context, type: context_module, dilations: [1, 2], batch_norm: true" + flag + "}\n");
    int batch_norms = 0;
    for (std::size_t i = 0; i < graph.size(); ++i) {
      const Layer& layer = graph.layer(i);
      if (layer.type() != "batch_norm") continue;
      ++batch_norms;
      BOOST_TEST(layer.communicates() == sync, graph.name(i));
    }
    // basic: 2 x 2 + downsample.1; bottle: 3 + downsample.1; incep: 6; context: 3.
    BOOST_TEST(batch_norms == 5 + 4 + 6 + 3);
  }
  STRATA_CHECK_CONTAINS(
      build_error("  - {name: context, type: context_module, sync_batch_norm: true}\n"),
      "sync_batch_norm");
  STRATA_CHECK_CONTAINS(
      build_error("  - {name: context, type: context_module, sync_batch_norm: true}\n"),
      "the block has no batch norm: set batch_norm: true");
}

BOOST_AUTO_TEST_CASE(repeat_zero_is_an_error_at_the_key) {
  const std::string message = build_error(
      "  - {name: conv, type: conv2d, out_channels: 4, kernel: 3}\n"
      "  - {name: layer1, type: residual_basic, out_channels: 4, repeat: 0}\n");
  STRATA_CHECK_CONTAINS(message, "<test>:4:");
  STRATA_CHECK_CONTAINS(message, "layers[1].repeat");
  STRATA_CHECK_CONTAINS(message, "must be at least 1");
}

BOOST_AUTO_TEST_CASE(typos_in_block_keys_are_errors) {
  const std::string message =
      build_error("  - {name: layer1, type: residual_basic, out_channels: 4, stirde: 2}\n");
  STRATA_CHECK_CONTAINS(message, "<test>:3:");
  STRATA_CHECK_CONTAINS(message, "layers[0].stirde: unknown key 'stirde'");
  STRATA_CHECK_CONTAINS(message, "did you mean 'stride'");
}

BOOST_AUTO_TEST_CASE(unknown_type_lists_layers_and_blocks) {
  const std::string message = build_error("  - {name: b, type: residual_basc, out_channels: 4}\n");
  STRATA_CHECK_CONTAINS(message, "unknown layer or block type 'residual_basc'");
  STRATA_CHECK_CONTAINS(message, "did you mean 'residual_basic'");
}

BOOST_AUTO_TEST_CASE(channels_that_do_not_fit_are_errors) {
  std::string message = build_error(
      "  - {name: b, type: residual_bottleneck, out_channels: 250}\n");
  STRATA_CHECK_CONTAINS(message, "<test>:3:");
  STRATA_CHECK_CONTAINS(message, "layers[0].out_channels");
  STRATA_CHECK_CONTAINS(message, "not divisible by expansion 4");

  message = build_error("  - {name: b, type: residual_basic, out_channels: 8, shortcut: identity}\n");
  STRATA_CHECK_CONTAINS(message, "<test>:3:");
  STRATA_CHECK_CONTAINS(message, "block 'b' (residual_basic, input [3, 32, 32])");
  STRATA_CHECK_CONTAINS(message, "channels do not fit");

  message = build_error("  - {name: ctx, type: context_module, channels: 8}\n", "[16, 9, 9]");
  STRATA_CHECK_CONTAINS(message, "<test>:3:");
  STRATA_CHECK_CONTAINS(message, "input has 16 channels and `channels` is 8");

  message = build_error("  - {name: flat, type: flatten}\n  - {name: b, type: residual_basic, out_channels: 8}\n");
  STRATA_CHECK_CONTAINS(message, "<test>:4:");
  STRATA_CHECK_CONTAINS(message, "expects an image input [C, H, W], got [3072]");
}

BOOST_AUTO_TEST_CASE(errors_inside_a_part_point_at_the_block) {
  // A part whose name is taken by an earlier layer is reported at the block's line.
  const std::string message = build_error(
      "  - {name: b.conv1, type: conv2d, out_channels: 3, kernel: 1}\n"
      "  - {name: b, type: residual_basic, out_channels: 3}\n");
  STRATA_CHECK_CONTAINS(message, "<test>:4:");
  STRATA_CHECK_CONTAINS(message, "layer name 'b.conv1' is already taken");
}

BOOST_AUTO_TEST_CASE(synthesized_configs_report_the_origin) {
  Config model = test::yaml("layers:\n  - {name: x, type: residual_basic}\n");
  const Config origin = model.at("layers").items()[0];
  const Config part = Config::synthesize("{type: conv2d, stride: two}", origin, "x.conv1");
  BOOST_CHECK_EQUAL(part.path(), "layers[0]/x.conv1");
  const std::string message = test::error_of([&] { part.get<int64_t>("stride"); });
  STRATA_CHECK_CONTAINS(message, "<test>:2:5: layers[0]/x.conv1.stride: expected an integer, found 'two'");
  STRATA_CHECK_CONTAINS(test::error_of([&] { Config::synthesize("[1, 2]", origin, "x.y"); }),
                        "must be a map");
  origin.mark_used();
}
