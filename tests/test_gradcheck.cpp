// The whole-model gradient checker (tools/src/gradcheck.cpp): a correct model with kinks (relu,
// max pool) and dropout passes, and a layer whose backward() is wrong (the test-only plugin
// test_broken_scale) is caught, in the tensor it corrupts and in every tensor upstream of it,
// down to one wrong element. Frozen branches (FrozenBranches) make a deep relu/max-pool network
// comparable at a step where plain differences straddle kinks.
#define BOOST_TEST_MODULE gradcheck
#include <boost/test/unit_test.hpp>
#include <map>

#include "strata/backend.hpp"
#include "strata/tools/gradcheck.hpp"
#include "strata/graph.hpp"
#include "strata/plugin.hpp"
#include "test_support.hpp"

using namespace strata;
namespace fs = std::filesystem;

namespace {

Registries& registries_with_broken_layer() {
  static Registries* registries = [] {
    auto* r = new Registries();
    static PluginLoader loader(*r);
    loader.load_default();
    loader.load_file(fs::path(STRATA_TEST_PLUGIN_DIR) / "libstrata_test_broken_backward.so");
    return r;
  }();
  return *registries;
}

std::map<std::string, TensorGradcheck> by_name(const GradcheckReport& report) {
  std::map<std::string, TensorGradcheck> result;
  for (const TensorGradcheck& t : report.tensors) result[t.name] = t;
  return result;
}

// The check's data come from a fixed seed unless `keep_seed` (then options.seed). With a seed drawn
// at random, as before, these cases failed now and then on correct code: in 100 runs each, 1 had
// an unfrozen kink in the correct model (conv2/weight) and 3 had the one wrong weight element's
// gradient too small for its 10% error to clear the check's floor. Properties of the drawn data,
// not regressions; a fixed draw keeps CI deterministic.
GradcheckReport check(const std::string& layers_yaml, GradcheckOptions options = {},
                      bool keep_seed = false) {
  const Config experiment = Config::parse_string(
      "seed: 3\nbackend: reference\nmodel:\n  input: [2, 8, 8]\n  layers:\n" + layers_yaml +
          "optimizer: {type: sgd, lr: 0.1}\ntrain: {epochs: 1, batch_size: 4}\n",
      "net.yaml");
  if (!keep_seed) options.seed = 20261205;
  BOOST_TEST_MESSAGE("seed " << options.seed);
  const GradcheckReport report =
      gradient_check_experiment(experiment, registries_with_broken_layer(), options);
  BOOST_TEST_MESSAGE(report.text());
  return report;
}

const char* kCnn = R"(    - {name: conv1, type: conv2d, out_channels: 4, kernel: 3, padding: 1}
    - {name: relu1, type: relu}
    - {name: pool1, type: max_pool, kernel: 2}
    - {name: conv2, type: conv2d, out_channels: 6, kernel: 3, freeze: true}
    - {name: act2, type: tanh}
    - {name: drop, type: dropout, keep_prob: 0.7}
    - {name: fc1, type: linear, out_features: 12}
    - {name: relu2, type: leaky_relu}
    - {name: fc2, type: linear, out_features: 5}
)";

}  // namespace

// The graph's gradient plan (strata/memory_plan.hpp) with every kind of fan-out: a tensor read by
// four layers (twice by one of them, once by a side branch nobody reads), a concat of three
// tensors, one of them read earlier too. The gradient of every tensor is checked.
BOOST_AUTO_TEST_CASE(a_model_with_fan_out_and_a_side_branch_passes) {
  const GradcheckReport report =
      check(R"(    - {name: conv1, type: conv2d, out_channels: 3, kernel: 3, padding: 1}
    - {name: t1, type: tanh}
    - {name: twice, type: add, inputs: [t1, t1]}
    - {name: side, type: tanh, inputs: [t1]}
    - {name: conv2, type: conv2d, out_channels: 2, kernel: 3, padding: 1, inputs: [t1]}
    - {name: cat, type: concat, inputs: [twice, conv2, conv1]}
    - {name: fc, type: linear, out_features: 5}
)");
  BOOST_TEST(report.passed, report.text());
  BOOST_TEST(by_name(report).size() == 7u);  // the input and 3 layers x (weight, bias)
}

BOOST_AUTO_TEST_CASE(a_correct_model_with_kinks_and_dropout_passes) {
  const GradcheckReport report = check(kCnn);
  BOOST_TEST(report.passed, report.text());
  const auto tensors = by_name(report);
  BOOST_TEST(tensors.size() == 9u);  // the input and 4 layers x (weight, bias); frozen conv2 too
  BOOST_TEST(tensors.count("input") == 1u);
  BOOST_TEST(tensors.count("conv2/weight") == 1u);
  for (const auto& [name, t] : tensors) {
    BOOST_TEST(t.checked == std::min<int64_t>(t.entries, 200), name);
    BOOST_TEST(t.skipped == 0, name);  // every kink is frozen; the rest is smooth
    BOOST_TEST(t.within == t.checked, name);
    BOOST_TEST(t.max_error < 5e-3, name << " max error " << t.max_error);  // the rule is 1e-2
  }
}

namespace {

// Three convolutions with relu and max pooling: a weight of conv1 moves hundreds of relu and
// max-pool decisions, as in the networks of issue 20.
const char* kDeepRelu = R"(    - {name: conv1, type: conv2d, out_channels: 8, kernel: 3, padding: 1}
    - {name: relu1, type: relu}
    - {name: conv2, type: conv2d, out_channels: 8, kernel: 3, padding: 1}
    - {name: relu2, type: relu}
    - {name: pool, type: max_pool, kernel: 2}
    - {name: conv3, type: conv2d, out_channels: 8, kernel: 3, padding: 1}
    - {name: relu3, type: leaky_relu}
    - {name: fc, type: linear, out_features: 4}
)";

int64_t total(const GradcheckReport& report, int64_t TensorGradcheck::*field) {
  int64_t sum = 0;
  for (const TensorGradcheck& t : report.tensors) sum += t.*field;
  return sum;
}

}  // namespace

BOOST_AUTO_TEST_CASE(frozen_branches_make_a_deep_relu_network_comparable) {
  GradcheckOptions options;
  options.layers = {"input", "conv1", "conv2"};
  options.max_entries = 60;
  const GradcheckReport frozen = check(kDeepRelu, options);
  BOOST_TEST(frozen.passed, frozen.text());
  BOOST_TEST(total(frozen, &TensorGradcheck::skipped) == 0);
  for (const TensorGradcheck& t : frozen.tensors) BOOST_TEST(t.max_error < 2e-3, t.name);
  // The same network and step without freezing: differences straddle kinks, which the check
  // must notice (skipped entries) or fail on, never pass off as agreement.
  options.freeze_branches = false;
  const GradcheckReport plain = check(kDeepRelu, options);
  BOOST_TEST((!plain.passed || total(plain, &TensorGradcheck::skipped) > 0), plain.text());
}

BOOST_AUTO_TEST_CASE(frozen_branches_reproduce_the_plain_forward_pass) {
  const Config model =
      Config::parse_string(std::string("input: [2, 8, 8]\nlayers:\n") + kDeepRelu, "model.yaml");
  Rng init(std::random_device{}());
  Graph graph(model, registries_with_broken_layer(), strata::test::backend(), init);
  auto backend = registries_with_broken_layer().backends.create("reference", Config{});
  Tensor x(graph.input_shape().with_batch(3));
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  for (float& v : x.span()) v = dist(init);
  Rng rng(1);
  Context context{true, &rng, backend.get()};
  const Tensor plain = graph.forward(context, x).clone();
  FrozenBranches frozen;
  context.frozen = &frozen;
  const Tensor recorded = graph.forward(context, x).clone();
  frozen.recording = false;
  const Tensor replayed = graph.forward(context, x).clone();
  for (int64_t i = 0; i < plain.numel(); ++i) {
    BOOST_TEST(recorded.data()[i] == plain.data()[i]);
    BOOST_TEST(replayed.data()[i] == plain.data()[i]);
  }
  // Replaying at another input keeps the recorded pieces: the output differs from a plain pass.
  for (float& v : x.span()) v = -v;
  const Tensor frozen_at_minus_x = graph.forward(context, x).clone();
  context.frozen = nullptr;
  const Tensor plain_at_minus_x = graph.forward(context, x).clone();
  double difference = 0;
  for (int64_t i = 0; i < plain.numel(); ++i)
    difference += std::abs(frozen_at_minus_x.data()[i] - plain_at_minus_x.data()[i]);
  BOOST_TEST(difference > 0);
}

BOOST_AUTO_TEST_CASE(a_wrong_input_gradient_fails_there_and_upstream) {
  const GradcheckReport report =
      check(R"(    - {name: conv1, type: conv2d, out_channels: 2, kernel: 3, padding: 1}
    - {name: scale, type: test_broken_scale, broken: input}
    - {name: act, type: tanh}
    - {name: fc, type: linear, out_features: 3}
)");
  BOOST_TEST(!report.passed);
  const auto tensors = by_name(report);
  // scale's din is 5% too large: everything before it receives the wrong gradient.
  for (const char* name : {"input", "conv1/weight", "conv1/bias"}) {
    BOOST_TEST(!tensors.at(name).passed, name);
    BOOST_TEST(tensors.at(name).max_error > 0.04, name);
  }
  for (const char* name : {"scale/weight", "fc/weight", "fc/bias"})
    BOOST_TEST(tensors.at(name).passed, name);
  STRATA_CHECK_CONTAINS(report.text(), "FAIL");
  STRATA_CHECK_CONTAINS(report.text(), "3 of 6 tensors FAIL");
}

BOOST_AUTO_TEST_CASE(a_wrong_parameter_gradient_fails_alone) {
  const GradcheckReport report =
      check(R"(    - {name: scale, type: test_broken_scale, broken: weight}
    - {name: relu, type: relu}
    - {name: fc, type: linear, out_features: 3}
)");
  BOOST_TEST(!report.passed);
  const auto tensors = by_name(report);
  BOOST_TEST(!tensors.at("scale/weight").passed);
  for (const char* name : {"input", "fc/weight", "fc/bias"})
    BOOST_TEST(tensors.at(name).passed, name);
  // The same layer with a correct backward passes.
  BOOST_TEST(check("    - {name: scale, type: test_broken_scale}\n    - {name: relu, type: relu}\n"
                   "    - {name: fc, type: linear, out_features: 3}\n")
                 .passed);
}

BOOST_AUTO_TEST_CASE(one_wrong_element_is_caught) {
  // din of one element has the wrong sign, dweight of one element is 10% too large. Max pooling
  // lies between the broken layer and the input, so the check goes through a frozen kink; tanh
  // (not relu) on both sides so that the wrong element always receives a gradient.
  GradcheckOptions options;
  options.max_entries = 0;  // every entry, so the wrong one is among them
  // A fixed draw: with a random one, the wrong weight element's own gradient is now and then so
  // small that 10% of it stays under the check's floor (3 seeds in 100), and conv1 hides the
  // flipped element among its other terms (1 in 20). Both are properties of the data, not of
  // gradcheck; the intact run below shows the same data passes without the fault.
  options.seed = 20261205;
  const GradcheckReport report =
      check(R"(    - {name: conv1, type: conv2d, out_channels: 2, kernel: 3, padding: 1}
    - {name: act1, type: tanh}
    - {name: pool, type: max_pool, kernel: 2}
    - {name: scale, type: test_broken_scale, broken: one}
    - {name: act2, type: tanh}
    - {name: fc, type: linear, out_features: 3}
)",
            options, true);
  BOOST_TEST(!report.passed);
  const auto tensors = by_name(report);
  BOOST_TEST(!tensors.at("scale/weight").passed);
  BOOST_TEST(tensors.at("scale/weight").checked - tensors.at("scale/weight").within == 1);
  for (const char* name : {"fc/weight", "fc/bias"}) BOOST_TEST(tensors.at(name).passed, name);
  // The flipped din element reaches the input and conv1 through the convolution. The input's
  // entries near it each get most of their gradient from it, so they fail; conv1's weight
  // gradients sum it with 2 x 64 right terms, so its relative error there can stay under the
  // threshold (about 1 seed in 20): it must still be far above the same check's error with the
  // layer intact, on the same data.
  BOOST_TEST(!tensors.at("input").passed);
  const auto correct = by_name(check(R"(    - {name: conv1, type: conv2d, out_channels: 2, kernel: 3, padding: 1}
    - {name: act1, type: tanh}
    - {name: pool, type: max_pool, kernel: 2}
    - {name: scale, type: test_broken_scale, broken: none}
    - {name: act2, type: tanh}
    - {name: fc, type: linear, out_features: 3}
)",
                                     options, true));
  BOOST_TEST(correct.at("conv1/weight").passed);
  BOOST_TEST(correct.at("scale/weight").passed);
  BOOST_TEST(tensors.at("scale/weight").max_error > 10 * correct.at("scale/weight").max_error);
  BOOST_TEST(tensors.at("conv1/weight").max_error > 10 * correct.at("conv1/weight").max_error);
  BOOST_TEST(tensors.at("conv1/weight").max_error > 1e-3);
}

BOOST_AUTO_TEST_CASE(layer_selection) {
  GradcheckOptions options;
  options.layers = {"fc2", "conv1"};
  options.max_entries = 0;
  const auto tensors = by_name(check(kCnn, options));
  BOOST_TEST(tensors.size() == 4u);
  BOOST_TEST(tensors.at("fc2/weight").checked == 12 * 5);  // max_entries 0: every entry
  BOOST_TEST(tensors.count("input") == 0u);
  options.layers = {"fc3"};
  STRATA_CHECK_CONTAINS(test::error_of([&] { check(kCnn, options); }),
                        "the model has no layer 'fc3'");
}
