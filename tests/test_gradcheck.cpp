// The whole-model gradient checker (core/src/gradcheck.cpp): a correct model with kinks (relu,
// max pool) and dropout passes, and a layer whose backward() is wrong (the test-only plugin
// test_broken_scale) is caught, in the tensor it corrupts and in every tensor upstream of it.
#define BOOST_TEST_MODULE gradcheck
#include <boost/test/unit_test.hpp>
#include <map>

#include "strata/backend.hpp"
#include "strata/gradcheck.hpp"
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

GradcheckReport check(const std::string& layers_yaml, GradcheckOptions options = {}) {
  const Config experiment = Config::parse_string(
      "seed: 3\nmodel:\n  input: [2, 8, 8]\n  layers:\n" + layers_yaml +
          "optimizer: {type: sgd, lr: 0.1}\ntrain: {epochs: 1, batch_size: 4}\n",
      "net.yaml");
  options.seed = std::random_device{}();
  BOOST_TEST_MESSAGE("seed " << options.seed);
  const GradcheckReport report =
      gradient_check_experiment(experiment, registries_with_broken_layer(), "reference", options);
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

BOOST_AUTO_TEST_CASE(a_correct_model_with_kinks_and_dropout_passes) {
  const GradcheckReport report = check(kCnn);
  BOOST_TEST(report.passed, report.text());
  const auto tensors = by_name(report);
  BOOST_TEST(tensors.size() == 9u);  // the input and 4 layers x (weight, bias); frozen conv2 too
  BOOST_TEST(tensors.count("input") == 1u);
  BOOST_TEST(tensors.count("conv2/weight") == 1u);
  for (const auto& [name, t] : tensors) {
    BOOST_TEST(t.checked == std::min<int64_t>(t.entries, 200), name);
    BOOST_TEST(t.within >= (t.checked - t.kinks) * 95 / 100, name);
  }
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
