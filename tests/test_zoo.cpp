// The case-study zoo in experiments/: `strata summary`'s accounting (tools/src/summary.cpp) on the
// checked-in YAML files must give the published parameter counts and multiply-adds, and the
// lecture's per-layer figures (AlexNet CONV1/POOL1, every row of the VGG-16 table, GoogLeNet's
// inception depths, the receptive fields of a dilated stack).
#define BOOST_TEST_MODULE zoo
#include <boost/test/unit_test.hpp>
#include <cmath>
#include <nlohmann/json.hpp>

#include "strata/graph.hpp"
#include "strata/tools/summary.hpp"
#include "test_support.hpp"

using namespace strata;

namespace {

Config experiment(const std::string& name) {
  return Config::parse_file(std::string(STRATA_SOURCE_DIR) + "/experiments/" + name + ".yaml");
}

ModelSummary summary_of(const std::string& name, bool expand = true) {
  return summarize_experiment(experiment(name), test::registries(), expand);
}

const SummaryRow& row(const ModelSummary& summary, const std::string& name) {
  for (const SummaryRow& row : summary.rows) {
    if (row.name == name) return row;
  }
  BOOST_FAIL("no row " << name);
  return summary.rows.front();
}

struct Published {
  const char* experiment;
  int64_t parameters;
  double giga_multiply_adds;  // as published, rounded
  double tolerance;           // half a unit of the last published digit
};

}  // namespace

BOOST_AUTO_TEST_CASE(published_parameter_counts_and_multiply_adds) {
  const std::vector<Published> table{
      {"alexnet", 62378344, 1.135, 0.0005},   {"alexnet_grouped", 60965224, 0.724, 0.0005},
      {"vgg16", 138357544, 15.47, 0.005},     {"vgg19", 143667240, 19.63, 0.005},
      {"resnet18", 11689512, 1.814, 0.0005},  {"resnet34", 21797672, 3.664, 0.0005},
      {"resnet50", 25557032, 4.089, 0.0005},  {"resnet101", 44549160, 7.801, 0.0005},
      {"resnet152", 60192808, 11.514, 0.0005},
  };
  for (const Published& model : table) {
    BOOST_TEST_CONTEXT(model.experiment) {
      const ModelSummary summary = summary_of(model.experiment, false);
      BOOST_CHECK_EQUAL(summary.parameters, model.parameters);
      BOOST_CHECK_LE(std::abs(static_cast<double>(summary.multiply_adds) / 1e9 - model.giga_multiply_adds),
                     model.tolerance);
      BOOST_CHECK_EQUAL(summary.rows.back().output, (Shape{1000}));
    }
  }
}

BOOST_AUTO_TEST_CASE(alexnet_conv1_and_pool1_as_in_the_lecture) {
  Config config = experiment("alexnet");
  Graph graph(config.at("model"), test::registries(), test::backend("tbb"));
  config.mark_used();
  const Layer& conv1 = graph.layer(graph.index_of("conv1"));
  BOOST_CHECK_EQUAL(conv1.output_shape(), (Shape{96, 55, 55}));
  Layer& conv1_mutable = graph.layer(graph.index_of("conv1"));
  BOOST_REQUIRE_EQUAL(conv1_mutable.params().size(), 2u);
  BOOST_CHECK_EQUAL(conv1_mutable.params()[0]->value.numel(), 34848);  // (11*11*3)*96 weights
  BOOST_CHECK_EQUAL(conv1_mutable.params()[1]->value.numel(), 96);     // biases
  const ModelSummary summary = summarize(graph, true, 1);
  BOOST_CHECK_EQUAL(row(summary, "pool1").output, (Shape{96, 27, 27}));
  BOOST_CHECK_EQUAL(row(summary, "pool1").parameters, 0);
  BOOST_CHECK_EQUAL(row(summary, "conv1").receptive_field[0], 11);
  BOOST_CHECK_EQUAL(row(summary, "conv1").jump[0], 4);
  BOOST_CHECK_EQUAL(row(summary, "pool1").receptive_field[0], 11 + 2 * 4);
  BOOST_CHECK_EQUAL(row(summary, "pool1").jump[0], 8);
}

BOOST_AUTO_TEST_CASE(every_row_of_the_lectures_vgg16_table) {
  // The lecture's table: INPUT, then each CONV3/POOL2/FC row: output shape and weights (biases
  // are not in the lecture's "params" column).
  struct Row {
    const char* name;
    Shape output;
    int64_t weights;
  };
  const std::vector<Row> table{
      {"conv1_1", {64, 224, 224}, 1728},       {"conv1_2", {64, 224, 224}, 36864},
      {"pool1", {64, 112, 112}, 0},            {"conv2_1", {128, 112, 112}, 73728},
      {"conv2_2", {128, 112, 112}, 147456},    {"pool2", {128, 56, 56}, 0},
      {"conv3_1", {256, 56, 56}, 294912},      {"conv3_2", {256, 56, 56}, 589824},
      {"conv3_3", {256, 56, 56}, 589824},      {"pool3", {256, 28, 28}, 0},
      {"conv4_1", {512, 28, 28}, 1179648},     {"conv4_2", {512, 28, 28}, 2359296},
      {"conv4_3", {512, 28, 28}, 2359296},     {"pool4", {512, 14, 14}, 0},
      {"conv5_1", {512, 14, 14}, 2359296},     {"conv5_2", {512, 14, 14}, 2359296},
      {"conv5_3", {512, 14, 14}, 2359296},     {"pool5", {512, 7, 7}, 0},
      {"fc6", {4096}, 102760448},              {"fc7", {4096}, 16777216},
      {"fc8", {1000}, 4096000},
  };
  const ModelSummary summary = summary_of("vgg16");
  int64_t lecture_activations = summary.input.numel();  // INPUT: [224x224x3] = 150K
  BOOST_CHECK_EQUAL(lecture_activations, 150528);
  int64_t weights = 0;
  for (const Row& expected : table) {
    BOOST_TEST_CONTEXT(expected.name) {
      const SummaryRow& actual = row(summary, expected.name);
      BOOST_CHECK_EQUAL(actual.output, expected.output);
      BOOST_CHECK_EQUAL(actual.activations, expected.output.numel());
      BOOST_CHECK_EQUAL(actual.activation_bytes, 4 * expected.output.numel());
      const int64_t biases = expected.weights == 0 ? 0 : expected.output[0];
      BOOST_CHECK_EQUAL(actual.parameters, expected.weights + biases);
      lecture_activations += actual.activations;
      weights += expected.weights;
    }
  }
  BOOST_CHECK_EQUAL(row(summary, "conv1_2").activations, 3211264);  // the lecture's "3.2M"
  // The rows add up to 15,237,608 activations per image (about 15M, not the lecture's "24M").
  BOOST_CHECK_EQUAL(lecture_activations, 15237608);
  BOOST_CHECK_EQUAL(weights, 138344128);  // the lecture's 138M (biases add 13,416)
  // Strata's own total also counts the ReLU outputs, which are separate tensors here.
  int64_t relu_outputs = 0;
  for (const SummaryRow& r : summary.rows) {
    if (r.type == "relu" || r.type == "dropout") relu_outputs += r.activations;
  }
  BOOST_CHECK_EQUAL(summary.activations, lecture_activations + relu_outputs);
  BOOST_CHECK_EQUAL(summary.activation_bytes, 4 * summary.activations);
  BOOST_CHECK_EQUAL(summary.batch_size, 256);
  // Training memory: the outputs a backward reads (each relu's own, the pools' and dropouts'
  // for the next conv or linear, and the logits), and one buffer at a time for the conv and
  // linear outputs, which only the next relu's forward reads (docs/memory.md): no more than one
  // conv1_1 output beyond the kept ones. The gradients are placed by lifetime: in a chain two are
  // live at a time, so the arena holds the two largest neighbours, conv1_1's and relu1_1's 3.2M
  // floats per image (not 15M of gradients).
  int64_t kept = 0;
  for (const SummaryRow& r : summary.rows) {
    if (r.type == "relu" || r.type == "dropout" || r.type == "max_pool" || r.name == "fc8")
      kept += r.activations;
  }
  BOOST_CHECK_GE(summary.output_bytes, 256 * 4 * kept);
  BOOST_CHECK_LE(summary.output_bytes, 256 * 4 * (kept + 3211264));
  BOOST_CHECK_LT(summary.output_bytes, 256 * 4 * (summary.activations - 150528));
  BOOST_CHECK_EQUAL(summary.gradient_bytes, 2 * 256 * 4 * int64_t{3211264});
  BOOST_CHECK_EQUAL(summary.training_bytes,
                    summary.output_bytes + summary.gradient_bytes + 3 * 4 * summary.parameters);
  // Receptive fields of the stacked 3x3 convolutions: 3, 5, then the pool doubles the jump.
  BOOST_CHECK_EQUAL(row(summary, "conv1_1").receptive_field[0], 3);
  BOOST_CHECK_EQUAL(row(summary, "conv1_2").receptive_field[0], 5);
  BOOST_CHECK_EQUAL(row(summary, "pool1").receptive_field[0], 6);
  BOOST_CHECK_EQUAL(row(summary, "conv2_1").receptive_field[0], 10);
  BOOST_CHECK_EQUAL(row(summary, "pool5").receptive_field[0], 212);
  BOOST_CHECK_EQUAL(row(summary, "pool5").jump[0], 32);
}

BOOST_AUTO_TEST_CASE(googlenet_inception_depths) {
  const ModelSummary summary = summary_of("googlenet", false);
  const std::vector<std::pair<std::string, int64_t>> depths{
      {"inception3a", 256}, {"inception3b", 480}, {"inception4a", 512},
      {"inception4b", 512}, {"inception4c", 512}, {"inception4d", 528},
      {"inception4e", 832}, {"inception5a", 832}, {"inception5b", 1024}};
  for (const auto& [name, depth] : depths) {
    const SummaryRow& r = row(summary, name);
    BOOST_CHECK_EQUAL(r.type, "inception");
    BOOST_CHECK_EQUAL(r.output[0], depth);
  }
  BOOST_CHECK_EQUAL(row(summary, "inception3a").output, (Shape{256, 28, 28}));
  BOOST_CHECK_EQUAL(row(summary, "inception5b").output, (Shape{1024, 7, 7}));
}

BOOST_AUTO_TEST_CASE(dilated_stack_receptive_fields_3_7_15) {
  Config model = test::yaml(R"(
input: [1, 32, 32]
layers:
  - {name: d1, type: conv2d, out_channels: 2, kernel: 3, dilation: 1, padding: 1}
  - {name: d2, type: conv2d, out_channels: 2, kernel: 3, dilation: 2, padding: 2}
  - {name: d4, type: conv2d, out_channels: 2, kernel: 3, dilation: 4, padding: 4}
  - {name: ctx, type: context_module, dilations: [1, 2, 4]}
)");
  Graph graph(model, test::registries(), test::backend());
  const ModelSummary summary = summarize(graph, true, 1);
  BOOST_CHECK_EQUAL(row(summary, "d1").receptive_field[0], 3);
  BOOST_CHECK_EQUAL(row(summary, "d2").receptive_field[0], 7);
  BOOST_CHECK_EQUAL(row(summary, "d4").receptive_field[0], 15);
  BOOST_CHECK_EQUAL(row(summary, "d4").jump[0], 1);
  // The same stack as a context module, on top: 15 + 2, + 4, + 8, then the 1x1 adds nothing.
  BOOST_CHECK_EQUAL(row(summary, "ctx.conv1").receptive_field[0], 17);
  BOOST_CHECK_EQUAL(row(summary, "ctx.conv2").receptive_field[0], 21);
  BOOST_CHECK_EQUAL(row(summary, "ctx.conv3").receptive_field[0], 29);
  BOOST_CHECK_EQUAL(row(summary, "ctx.conv4").receptive_field[0], 29);
}

BOOST_AUTO_TEST_CASE(blocks_collapse_unless_expanded) {
  const ModelSummary collapsed = summary_of("resnet18", false);
  const ModelSummary expanded = summary_of("resnet18", true);
  std::vector<std::string> names;
  for (const SummaryRow& r : collapsed.rows) names.push_back(r.name);
  const std::vector<std::string> expected{"conv1", "bn1",    "relu",   "maxpool", "layer1",
                                          "layer2", "layer3", "layer4", "avgpool", "fc"};
  BOOST_CHECK_EQUAL_COLLECTIONS(names.begin(), names.end(), expected.begin(), expected.end());
  BOOST_CHECK_EQUAL(row(collapsed, "layer2").repeat, 2);
  BOOST_CHECK_EQUAL(row(collapsed, "layer2").output, (Shape{128, 28, 28}));
  BOOST_CHECK_EQUAL(row(expanded, "layer2.0.downsample.0").parameters, 64 * 128);
  BOOST_CHECK_EQUAL(row(expanded, "layer2.0.downsample.0").block, "layer2");
  // Collapsing sums the block's layers; totals do not change.
  int64_t layer2_parameters = 0, layer2_activations = 0;
  for (const SummaryRow& r : expanded.rows) {
    if (r.block == "layer2") {
      layer2_parameters += r.parameters;
      layer2_activations += r.activations;
    }
  }
  BOOST_CHECK_EQUAL(row(collapsed, "layer2").parameters, layer2_parameters);
  BOOST_CHECK_EQUAL(row(collapsed, "layer2").activations, layer2_activations);
  BOOST_CHECK_EQUAL(collapsed.parameters, expanded.parameters);
  BOOST_CHECK_EQUAL(collapsed.multiply_adds, expanded.multiply_adds);
  BOOST_CHECK_EQUAL(collapsed.activations, expanded.activations);
  // ResNet-18's receptive field at layer4 is 435 pixels with a jump of 32.
  BOOST_CHECK_EQUAL(row(collapsed, "layer4").receptive_field[0], 435);
  BOOST_CHECK_EQUAL(row(collapsed, "layer4").jump[0], 32);
}

BOOST_AUTO_TEST_CASE(json_and_table_carry_the_same_numbers) {
  const ModelSummary summary = summary_of("alexnet_grouped", false);
  const nlohmann::json json = nlohmann::json::parse(summary_json(summary));
  BOOST_CHECK_EQUAL(json["totals"]["parameters"].get<int64_t>(), 60965224);
  BOOST_CHECK_EQUAL(json["totals"]["multiply_adds_per_image"].get<int64_t>(), summary.multiply_adds);
  BOOST_CHECK_EQUAL(json["rows"].size(), summary.rows.size());
  BOOST_CHECK_EQUAL(json["rows"][0]["name"].get<std::string>(), "conv1");
  BOOST_CHECK_EQUAL(json["rows"][0]["output"], nlohmann::json({96, 55, 55}));
  const std::string table = format_summary(summary);
  STRATA_CHECK_CONTAINS(table, "60,965,224");
  STRATA_CHECK_CONTAINS(table, "conv2");
}

// A MobileNetV3-style block with squeeze-and-excitation: the activations and the gating multiply
// count no parameters and no multiply-adds, keep their input's shape (the gate broadcasts back to
// the feature map's [C, H, W]), and their outputs count in the activation memory.
BOOST_AUTO_TEST_CASE(squeeze_and_excitation_block_is_accounted) {
  const Config config = Config::parse_string(R"(
input: [3, 16, 16]
layers:
  - {name: conv1, type: conv2d, out_channels: 16, kernel: 3, padding: 1}
  - {name: hs1, type: hardswish}
  - {name: dw, type: conv2d, out_channels: 16, kernel: 3, padding: 1, groups: 16}
  - {name: r6, type: relu6}
  - {name: se_pool, type: global_avg_pool}
  - {name: se_fc1, type: conv2d, out_channels: 4, kernel: 1}
  - {name: se_relu, type: relu}
  - {name: se_fc2, type: conv2d, out_channels: 16, kernel: 1}
  - {name: se_gate, type: hard_sigmoid}
  - {name: se, type: multiply, inputs: [r6, se_gate]}
  - {name: pool, type: global_avg_pool}
  - {name: fc, type: linear, out_features: 4}
)",
                                             "se.yaml");
  Graph graph(config, test::registries(), test::backend("tbb"));
  const ModelSummary summary = summarize(graph, true, 1);
  for (const char* name : {"hs1", "r6", "se_gate", "se"}) {
    BOOST_CHECK_EQUAL(row(summary, name).parameters, 0);
    BOOST_CHECK_EQUAL(row(summary, name).multiply_adds, 0);
  }
  BOOST_CHECK_EQUAL(row(summary, "se_gate").output, (Shape{16, 1, 1}));
  BOOST_CHECK_EQUAL(row(summary, "se").output, (Shape{16, 16, 16}));
  BOOST_CHECK_EQUAL(row(summary, "se").activations, 16 * 16 * 16);
  BOOST_CHECK_EQUAL(row(summary, "se").activation_bytes, 16 * 16 * 16 * 4);
  // conv1 448, dw 160, se_fc1 68, se_fc2 80, fc 68.
  BOOST_CHECK_EQUAL(summary.parameters, 824);
  // input 768; conv1, hs1, dw, r6, se 4096 each; se_pool 16, se_fc1 4, se_relu 4, se_fc2 16,
  // se_gate 16; pool 16, fc 4.
  BOOST_CHECK_EQUAL(summary.activations, 768 + 5 * 4096 + 16 + 4 + 4 + 16 + 16 + 16 + 4);
  // The gate sees the whole image, so the product's receptive field does too (dw's 5 plus 15
  // global-pool steps); its jump is the feature map's (1), not the broadcast gate's (16).
  using Pair = std::array<int64_t, 2>;
  BOOST_CHECK((row(summary, "se_gate").jump == Pair{16, 16}));
  BOOST_CHECK((row(summary, "se").receptive_field == Pair{20, 20}));
  BOOST_CHECK((row(summary, "se").jump == Pair{1, 1}));
}
