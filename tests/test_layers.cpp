// The layer conformance suite, plus unit tests of the layers, loss, initializers, SGD and
// schedules.
//
// Conformance: every case of kConformanceCases (a layer's YAML and its input sample shapes) goes
// through the checks of strata/tools/conformance.hpp (tools/src/conformance.cpp, the same code that
// `strata check-plugin` runs for plugin authors): shape inference, gradients against central
// differences, backends against the reference, batch independence and the checkpoint round trip.
// `every_registered_layer_has_a_case` fails when an in-tree plugin registers a layer type the
// table does not exercise, so a new layer cannot skip them. The suite loads the build's own plugin
// folder only, never STRATA_PLUGIN_PATH (test_support.cpp).
#define BOOST_TEST_MODULE layers
// GCC 12 at -O3 reports a false -Wrestrict inside std::string's operator+ as inlined into
// Boost.Test's data-driven test-case naming (GCC bug 105329). The pragma must precede the
// includes, because the diagnostic is attributed to the standard library header.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ == 12
#pragma GCC diagnostic ignored "-Wrestrict"
#endif
#include <fmt/format.h>

#include <algorithm>
#include <boost/test/data/monomorphic.hpp>
#include <boost/test/data/test_case.hpp>
#include <boost/test/unit_test.hpp>
#include <chrono>
#include <cmath>
#include <exception>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <numeric>
#include <optional>
#include <ostream>
#include <set>
#include <string>
#include <vector>

#include "strata/checkpoint.hpp"
#include "strata/communicator.hpp"
#include "strata/error.hpp"
#include "strata/graph.hpp"
#include "strata/layer.hpp"
#include "strata/optimizer.hpp"
#include "strata/plugin.hpp"
#include "strata/tools/conformance.hpp"
#include "test_support.hpp"
#include "thread_communicator.hpp"

namespace {

using strata::Config;
using strata::Context;
using strata::Layer;
using strata::Param;
using strata::Rng;
using strata::SetupContext;
using strata::Shape;
using strata::Tensor;
using strata::test::error_of;
using strata::test::random_tensor;
using strata::test::registries;
using strata::test::yaml;

// ------------------------------------------------------------------------------------------------
// The conformance table
// ------------------------------------------------------------------------------------------------

// The case type is the library's: a layer's YAML, its input sample shapes, and the output sample
// shape worked out by hand.
using LayerCase = strata::ConformanceCase;

// Output sizes follow PyTorch: (in - (d*(k-1)+1) + 2p)/s + 1, floored only with `round: floor`.
const std::vector<LayerCase> kConformanceCases = {
    // conv2d: stride 1-3, padding 0-3 and `same`, dilation 1-3, groups 1, 2 and C (depthwise).
    {"{type: conv2d, out_channels: 3, kernel: 3}", {{2, 7, 7}}, {3, 5, 5}},
    {"{type: conv2d, out_channels: 4, kernel: 3, padding: same}", {{3, 6, 6}}, {4, 6, 6}},
    {"{type: conv2d, out_channels: 4, kernel: [3, 2], stride: 2, padding: 1, round: floor}",
     {{2, 8, 7}},
     {4, 4, 4}},
    {"{type: conv2d, out_channels: 2, kernel: 3, stride: 3, padding: 2}", {{2, 8, 8}}, {2, 4, 4}},
    {"{type: conv2d, out_channels: 4, kernel: 3, dilation: 2, padding: 2}", {{2, 7, 7}}, {4, 7, 7}},
    {"{type: conv2d, out_channels: 3, kernel: 2, dilation: [2, 3], stride: 2, padding: 3}",
     {{2, 9, 10}},
     {3, 7, 7}},
    {"{type: conv2d, out_channels: 4, kernel: 2, dilation: 3, stride: 3, padding: 1, groups: 2}",
     {{2, 8, 8}},
     {4, 3, 3}},
    {"{type: conv2d, out_channels: 4, kernel: 3, groups: 2, padding: 1}", {{4, 6, 6}}, {4, 6, 6}},
    {"{type: conv2d, out_channels: 6, kernel: 3, groups: 3, stride: 2, padding: 1, bias: false}",
     {{3, 7, 7}},
     {6, 4, 4}},
    {"{type: conv2d, out_channels: 4, kernel: 3, groups: 4, padding: same}",
     {{4, 5, 5}},
     {4, 5, 5}},
    {"{type: conv2d, out_channels: 2, kernel: 7, padding: 3}", {{1, 5, 5}}, {2, 5, 5}},
    {"{type: conv2d, out_channels: 3, kernel: 1, stride: 2}", {{4, 5, 5}}, {3, 3, 3}},
    {"{type: conv2d, out_channels: 2, kernel: [1, 5], padding: [0, 2], stride: [1, 3], "
     "round: floor}",
     {{3, 4, 9}},
     {2, 4, 3}},
    // conv2d for interop: asymmetric padding [top, bottom, left, right], `same` with even kernels
    // (SAME_UPPER) and same_lower, padding modes (explicit padding, then the kernel).
    {"{type: conv2d, out_channels: 3, kernel: 2, padding: same}", {{2, 5, 5}}, {3, 5, 5}},
    {"{type: conv2d, out_channels: 3, kernel: 3, stride: 2, padding: [1, 2, 0, 1], round: floor}",
     {{2, 6, 7}},
     {3, 4, 3}},
    {"{type: conv2d, out_channels: 4, kernel: 4, padding: same_lower, dilation: [1, 2]}",
     {{2, 6, 9}},
     {4, 6, 9}},
    {"{type: conv2d, out_channels: 3, kernel: 3, padding: 1, padding_mode: reflect}",
     {{2, 5, 5}},
     {3, 5, 5}},
    {"{type: conv2d, out_channels: 2, kernel: 3, padding: [2, 1], padding_mode: replicate, "
     "stride: 2}",
     {{2, 7, 5}},
     {2, 5, 3}},
    {"{type: conv2d, out_channels: 4, kernel: 3, padding: same, padding_mode: circular, groups: 2}",
     {{4, 5, 5}},
     {4, 5, 5}},
    {"{type: conv2d, out_channels: 3, kernel: 2, padding: [1, 0, 2, 1], padding_mode: reflect}",
     {{2, 4, 5}},
     {3, 4, 7}},
    // max_pool / avg_pool
    {"{type: max_pool, kernel: 2}", {{3, 6, 6}}, {3, 3, 3}},
    {"{type: max_pool, kernel: 3, stride: 2, padding: 1}", {{2, 7, 7}}, {2, 4, 4}},
    {"{type: max_pool, kernel: 3, stride: 1, padding: 1}", {{2, 5, 5}}, {2, 5, 5}},
    {"{type: max_pool, kernel: [2, 3], stride: [2, 1], round: floor}", {{2, 7, 6}}, {2, 3, 4}},
    {"{type: max_pool, kernel: 3, stride: 3, round: floor}", {{1, 8, 8}}, {1, 2, 2}},
    {"{type: avg_pool, kernel: 2}", {{3, 6, 6}}, {3, 3, 3}},
    {"{type: avg_pool, kernel: 3, stride: 2, padding: 1}", {{2, 7, 7}}, {2, 4, 4}},
    {"{type: avg_pool, kernel: 3, stride: 2, padding: 1, count_include_pad: false}",
     {{2, 7, 7}},
     {2, 4, 4}},
    {"{type: avg_pool, kernel: [3, 2], stride: [3, 2], padding: [1, 1], round: floor}",
     {{2, 8, 7}},
     {2, 3, 4}},
    // pooling for interop: round ceil (the last window clipped), max-pool dilation, asymmetric
    // padding and `same`.
    {"{type: max_pool, kernel: 3, stride: 2, round: ceil}", {{2, 8, 8}}, {2, 4, 4}},
    {"{type: avg_pool, kernel: 3, stride: 2, padding: 1, round: ceil}", {{2, 8, 8}}, {2, 5, 5}},
    {"{type: avg_pool, kernel: 2, stride: 2, round: ceil, count_include_pad: false}",
     {{1, 5, 7}},
     {1, 3, 4}},
    {"{type: max_pool, kernel: 3, stride: 1, dilation: 2, padding: 1}", {{2, 7, 7}}, {2, 5, 5}},
    {"{type: max_pool, kernel: 2, stride: 2, dilation: [2, 3], round: ceil}",
     {{2, 8, 9}},
     {2, 4, 4}},
    {"{type: max_pool, kernel: 3, stride: 2, padding: [0, 1, 1, 0], round: floor}",
     {{2, 7, 8}},
     {2, 3, 4}},
    {"{type: avg_pool, kernel: 2, stride: 1, padding: same}", {{2, 5, 6}}, {2, 5, 6}},
    {"{type: avg_pool, kernel: [2, 3], stride: 1, padding: same_lower, count_include_pad: false}",
     {{2, 4, 5}},
     {2, 4, 5}},
    {"{type: avg_pool, kernel: 3, stride: 2, padding: [1, 0, 0, 1], round: ceil}",
     {{1, 7, 6}},
     {1, 4, 3}},
    // pad
    {"{type: pad, padding: [1, 2, 0, 3]}", {{2, 4, 5}}, {2, 7, 8}},
    {"{type: pad, padding: 2, mode: reflect}", {{3, 4, 5}}, {3, 8, 9}},
    {"{type: pad, padding: [1, 3], mode: replicate}", {{2, 3, 3}}, {2, 5, 9}},
    {"{type: pad, padding: [2, 0, 1, 3], mode: circular}", {{2, 3, 4}}, {2, 5, 8}},
    {"{type: pad, padding: 1, value: 0.5}", {{1, 3, 3}}, {1, 5, 5}},
    // linear (flattens any sample shape)
    {"{type: linear, out_features: 5}", {{7}}, {5}},
    {"{type: linear, out_features: 3, bias: false}", {{2, 3, 4}}, {3}},
    {"{type: linear, out_features: 4}", {{3, 5, 5}}, {4}},
    // element-wise
    {"{type: relu}", {{3, 4, 5}}, {3, 4, 5}},
    {"{type: relu}", {{17}}, {17}},
    {"{type: leaky_relu}", {{2, 5, 5}}, {2, 5, 5}},
    {"{type: leaky_relu, negative_slope: 0.2}", {{3, 4, 4}}, {3, 4, 4}},
    {"{type: tanh}", {{3, 4, 4}}, {3, 4, 4}},
    {"{type: sigmoid}", {{3, 4, 4}}, {3, 4, 4}},
    {"{type: swish}", {{3, 4, 4}}, {3, 4, 4}},
    {"{type: relu6}", {{3, 4, 5}}, {3, 4, 5}},
    {"{type: hard_sigmoid}", {{3, 4, 4}}, {3, 4, 4}},
    {"{type: hardswish}", {{3, 4, 4}}, {3, 4, 4}},
    {"{type: hardswish}", {{11}}, {11}},
    // shape and regularisation
    {"{type: flatten}", {{2, 3, 4}}, {24}},
    {"{type: flatten}", {{5}}, {5}},
    {"{type: dropout, keep_prob: 0.7}", {{3, 5, 5}}, {3, 5, 5}},
    {"{type: dropout}", {{20}}, {20}},
    {"{type: dropout, keep_prob: 1}", {{4}}, {4}},
    // normalization (the gradient check runs in training mode: batch statistics)
    {"{type: batch_norm}", {{3, 4, 4}}, {3, 4, 4}},
    {"{type: batch_norm, momentum: 0.3, eps: 0.001}", {{2, 3, 5}}, {2, 3, 5}},
    {"{type: batch_norm, affine: false}", {{4, 3, 3}}, {4, 3, 3}},
    {"{type: batch_norm}", {{5}}, {5}, 6},
    {"{type: batch_norm, sync: true}", {{2, 3, 3}}, {2, 3, 3}},  // no communicator: as sync false
    {"{type: batch_norm, momentum: null}", {{3, 4, 4}}, {3, 4, 4}},
    {"{type: batch_norm, momentum: null, affine: false}", {{4}}, {4}, 6},
    // joins of several inputs
    {"{type: add}", {{3, 4, 4}, {3, 4, 4}}, {3, 4, 4}},
    {"{type: add}", {{2, 3, 5}, {2, 3, 5}, {2, 3, 5}}, {2, 3, 5}},
    {"{type: add}", {{7}, {7}}, {7}},
    {"{type: multiply}", {{3, 4, 4}, {3, 4, 4}}, {3, 4, 4}},
    {"{type: multiply}", {{4, 3, 5}, {4, 1, 1}}, {4, 3, 5}},
    {"{type: multiply}", {{2, 1, 1}, {2, 3, 3}}, {2, 3, 3}},
    {"{type: multiply}", {{7}, {7}}, {7}},
    {"{type: concat}", {{2, 4, 4}, {3, 4, 4}}, {5, 4, 4}},
    {"{type: concat}", {{1, 3, 5}, {2, 3, 5}, {3, 3, 5}}, {6, 3, 5}},
    {"{type: concat}", {{4}, {3}}, {7}},
    // heads and local response normalization
    {"{type: global_avg_pool}", {{3, 4, 5}}, {3, 1, 1}},
    {"{type: global_avg_pool}", {{2, 1, 1}}, {2, 1, 1}},
    {"{type: softmax}", {{7}}, {7}},
    {"{type: softmax}", {{4, 3, 2}}, {4, 3, 2}},
    {"{type: softmax, axis: -1}", {{4, 3, 2}}, {4, 3, 2}},
    {"{type: softmax, axis: 2}", {{4, 3, 5}}, {4, 3, 5}},
    {"{type: softmax, axis: 3}", {{2, 3, 5}}, {2, 3, 5}},
    {"{type: softmax, axis: -3}", {{4, 3, 2}}, {4, 3, 2}},
    {"{type: lrn, size: 3}", {{5, 3, 3}}, {5, 3, 3}},
    {"{type: lrn, size: 4, alpha: 0.5, beta: 0.9, k: 2}", {{6, 2, 3}}, {6, 2, 3}},
    {"{type: lrn, size: 5, alpha: 1.5, beta: 0.75, k: 1}", {{3, 2, 2}}, {3, 2, 2}},
    {"{type: lrn, size: 1, alpha: 0.3}", {{2, 3, 3}}, {2, 3, 3}},
};

// Layers whose samples mix in evaluation too (batch_norm without running statistics normalizes
// every batch with its own statistics, as PyTorch's track_running_stats=False does): every check
// but batch independence and NaN isolation, which assume evaluation maps each sample alone.
const std::vector<LayerCase> kBatchCoupledCases = {
    {"{type: batch_norm, track_running_stats: false}", {{3, 4, 4}}, {3, 4, 4}},
    {"{type: batch_norm, track_running_stats: false, affine: false, momentum: null}",
     {{5}},
     {5},
     6},
};

std::string case_type(const LayerCase& layer_case) {
  return yaml(layer_case.yaml).get<std::string>("type");
}

// ------------------------------------------------------------------------------------------------
// Helpers
// ------------------------------------------------------------------------------------------------

// The conformance harness (strata/tools/conformance.hpp): the same helpers the checks use.
using Instance = strata::conformance::LayerInstance;
using strata::conformance::all_finite;
using strata::conformance::dot;
using strata::conformance::max_abs;
using strata::conformance::max_abs_diff;
using strata::conformance::randomize_params;
using strata::conformance::rms;
using strata::conformance::run_backward;
using strata::conformance::run_forward;

Instance make_layer(const std::string& layer_yaml, const std::vector<Shape>& inputs,
                    const std::string& backend_name) {
  return strata::conformance::make_layer(registries(), yaml(layer_yaml), inputs, backend_name);
}

// ------------------------------------------------------------------------------------------------
// The checks (strata/tools/conformance.hpp documents each one and its tolerance)
// ------------------------------------------------------------------------------------------------

BOOST_AUTO_TEST_SUITE(conformance)

BOOST_DATA_TEST_CASE(shapes, boost::unit_test::data::make(kConformanceCases), layer_case) {
  const strata::CheckResult result = strata::check_shapes(registries(), layer_case);
  BOOST_TEST(result.passed, result.detail);
}

BOOST_DATA_TEST_CASE(gradients, boost::unit_test::data::make(kConformanceCases), layer_case) {
  const strata::CheckResult result = strata::check_gradients(registries(), layer_case);
  BOOST_TEST(result.passed, result.detail);
}

BOOST_DATA_TEST_CASE(backends_agree, boost::unit_test::data::make(kConformanceCases), layer_case) {
  BOOST_TEST_REQUIRE(registries().backends.contains("tbb"), "the tbb backend plugin is not built");
  const strata::CheckResult result = strata::check_backends_agree(registries(), layer_case, {"tbb"});
  BOOST_TEST(result.passed, result.detail);
}

// The layers that compute through kernels compare two implementations there: the backends
// check names the one tbb ran (Layer::implementation()), never the reference's own.
BOOST_AUTO_TEST_CASE(backends_check_names_the_kernels_it_compared) {
  const std::map<std::string, std::string> kernels = {{"softmax", "tbb (vector_exp)"},
                                                      {"lrn", "tbb (channel_window)"},
                                                      {"global_avg_pool", "tbb (planes)"},
                                                      {"batch_norm", "tbb (blocked_sums)"},
                                                      {"relu", "tbb (elementwise)"}};
  std::map<std::string, int> checked;
  for (const LayerCase& layer_case : kConformanceCases) {
    const auto kernel = kernels.find(case_type(layer_case));
    if (kernel == kernels.end()) continue;
    const strata::CheckResult result =
        strata::check_backends_agree(registries(), layer_case, {"tbb"});
    BOOST_TEST(result.passed, result.detail);
    BOOST_TEST(result.detail == kernel->second);
    ++checked[kernel->first];
  }
  BOOST_TEST(checked.size() == kernels.size(), "a kernel layer has no conformance case");
}

BOOST_DATA_TEST_CASE(samples_are_independent, boost::unit_test::data::make(kConformanceCases),
                     layer_case) {
  const strata::CheckResult result = strata::check_batch_independence(registries(), layer_case);
  BOOST_TEST(!result.detail.starts_with("not applicable"), result.detail);
  BOOST_TEST(result.passed, result.detail);
}

BOOST_DATA_TEST_CASE(nan_propagates, boost::unit_test::data::make(kConformanceCases), layer_case) {
  const strata::CheckResult result = strata::check_nan_propagates(registries(), layer_case);
  BOOST_TEST(result.passed, result.detail);
}

BOOST_DATA_TEST_CASE(backward_reads, boost::unit_test::data::make(kConformanceCases), layer_case) {
  const strata::CheckResult result = strata::check_backward_reads(registries(), layer_case);
  BOOST_TEST(result.passed, result.detail);
}

// The layers training keeps fewer tensors for say so, and the check above holds them to it.
BOOST_AUTO_TEST_CASE(layers_that_read_less_in_backward_are_checked) {
  const std::map<std::string, std::string> expected = {
      {"relu", "inputs unread"},
      {"tanh", "inputs unread"},
      {"sigmoid", "inputs unread"},
      {"relu6", "inputs unread"},
      {"softmax", "inputs unread"},
      {"conv2d", "output unread"},
      {"linear", "output unread"},
      {"batch_norm", "output unread"},
      {"lrn", "output unread"},
      {"max_pool", "output unread"},
      {"add", "inputs and output unread"},
      {"concat", "inputs and output unread"},
      {"avg_pool", "inputs and output unread"},
      {"global_avg_pool", "inputs and output unread"},
      {"dropout", "inputs and output unread"},
      {"flatten", "inputs and output unread"},
      {"hardswish", "output unread"},
      {"hard_sigmoid", "output unread"}};
  std::map<std::string, int> checked;
  for (const LayerCase& layer_case : kConformanceCases) {
    const auto want = expected.find(case_type(layer_case));
    if (want == expected.end()) continue;
    const strata::CheckResult result = strata::check_backward_reads(registries(), layer_case);
    BOOST_TEST(result.passed, result.detail);
    BOOST_TEST(result.detail.starts_with(want->second), layer_case << ": " << result.detail);
    ++checked[want->first];
  }
  BOOST_TEST(checked.size() == expected.size(), "a layer type has no conformance case");
}

BOOST_DATA_TEST_CASE(checkpoint_round_trip, boost::unit_test::data::make(kConformanceCases),
                     layer_case) {
  strata::test::TempDir dir;
  const strata::CheckResult result =
      strata::check_checkpoint_round_trip(registries(), layer_case, dir.path());
  BOOST_TEST(result.passed, result.detail);
}

BOOST_DATA_TEST_CASE(batch_coupled_layers, boost::unit_test::data::make(kBatchCoupledCases),
                     layer_case) {
  BOOST_TEST_REQUIRE(registries().backends.contains("tbb"), "the tbb backend plugin is not built");
  strata::test::TempDir dir;
  for (const strata::CheckResult& result :
       {strata::check_shapes(registries(), layer_case),
        strata::check_gradients(registries(), layer_case),
        strata::check_backends_agree(registries(), layer_case, {"tbb"}),
        strata::check_checkpoint_round_trip(registries(), layer_case, dir.path())}) {
    BOOST_TEST(result.passed, result.check << ": " << result.detail);
  }
  // They say so, so that evaluation never splits their batches, and conformance exempts them.
  const strata::CheckResult batch = strata::check_batch_independence(registries(), layer_case);
  BOOST_TEST(batch.passed);
  BOOST_TEST(batch.detail.starts_with("not applicable"), batch.detail);
}

// The checks are not vacuous: a layer with a wrong backward fails the gradient check (and only
// it), with the first disagreeing elements named; its plugin's exported case is read back.
BOOST_AUTO_TEST_CASE(a_wrong_gradient_fails) {
  strata::Registries r;
  strata::PluginLoader loader(r);
  loader.load_dir(std::filesystem::path(STRATA_BIN_DIR) / ".." / "lib" / "strata");
  loader.load_file(std::filesystem::path(STRATA_TEST_PLUGIN_DIR) / "libstrata_test_bad_gradient.so");
  const auto cases = strata::exported_conformance_cases(*loader.plugins().back());
  BOOST_TEST_REQUIRE(cases.size() == 1u);
  BOOST_TEST(cases[0].yaml == "{type: test_double}");
  BOOST_TEST_REQUIRE(cases[0].inputs.size() == 1u);
  BOOST_TEST(cases[0].inputs[0] == (Shape{2, 3, 3}));
  BOOST_TEST(cases[0].output == (Shape{2, 3, 3}));
  strata::test::TempDir dir;
  const auto results = strata::run_conformance(r, cases[0], dir.path());
  BOOST_TEST_REQUIRE(results.size() == 9u);
  for (const strata::CheckResult& result : results) {
    BOOST_TEST(result.passed == (result.check != "gradients"), result.check << ": " << result.detail);
  }
  STRATA_CHECK_CONTAINS(results[1].detail, "36 of 36 gradient elements disagree");
  STRATA_CHECK_CONTAINS(results[1].detail, "input0[0]: numerical");
  // A layer that says its backward does not read its input, but does, fails the reads check
  // (and only it).
  const strata::ConformanceCase square{"{type: test_square}", {{2, 3, 3}}, {2, 3, 3}};
  BOOST_TEST(strata::check_gradients(r, square).passed);
  const auto lying = strata::check_backward_reads(r, square);
  BOOST_TEST(!lying.passed);
  STRATA_CHECK_CONTAINS(lying.detail,
                        "reference: the layer says its backward does not read its inputs, but "
                        "with them changed the input0 gradient changed by");
  // A layer that says it fuses an activation, but ignores it, fails the fusion check (and only
  // it); batch_norm, which does fuse, passes it.
  const strata::ConformanceCase false_fusion{"{type: test_false_fusion}", {{2, 3, 3}}, {2, 3, 3}};
  for (const strata::CheckResult& result : strata::run_conformance(r, false_fusion, dir.path())) {
    BOOST_TEST(result.passed == (result.check != "fusion"), result.check << ": " << result.detail);
  }
  const auto ignored = strata::check_fusion(r, false_fusion);
  STRATA_CHECK_CONTAINS(ignored.detail,
                        "reference, training: with relu fused the output differs from relu on its "
                        "output by");
  const auto bn = strata::check_fusion(r, {"{type: batch_norm}", {{3, 4, 4}}, {3, 4, 4}});
  BOOST_TEST(bn.passed, bn.detail);
  STRATA_CHECK_CONTAINS(bn.detail, "fuses relu, leaky_relu, relu6, tanh, sigmoid on");
  // A layer that says it is recomputable, but draws when recomputing, fails the recompute
  // check (and only it); batch_norm and dropout, which recompute what they computed, pass it.
  const strata::ConformanceCase false_recompute{
      "{type: test_false_recompute}", {{2, 3, 3}}, {2, 3, 3}};
  for (const strata::CheckResult& result :
       strata::run_conformance(r, false_recompute, dir.path())) {
    BOOST_TEST(result.passed == (result.check != "recompute"),
               result.check << ": " << result.detail);
  }
  const auto drawn = strata::check_recompute(r, false_recompute);
  BOOST_TEST(!drawn.passed);
  STRATA_CHECK_CONTAINS(drawn.detail, "reference: recomputing the forward changed the output by");
  for (const char* yaml : {"{type: batch_norm}", "{type: dropout, keep_prob: 0.5}"}) {
    const auto kept = strata::check_recompute(r, {yaml, {{3, 4, 4}}, {3, 4, 4}});
    BOOST_TEST(kept.passed, yaml << ": " << kept.detail);
    STRATA_CHECK_CONTAINS(kept.detail, "recomputed on");
  }
  // A wrong expected shape and a layer that fails setup are failed checks, not exceptions.
  const auto wrong_shape = strata::check_shapes(r, {"{type: test_double}", {{2, 3, 3}}, {2, 3}});
  BOOST_TEST(!wrong_shape.passed);
  STRATA_CHECK_CONTAINS(wrong_shape.detail, "setup() gives [2, 3, 3], expected [2, 3]");
  const auto bad_key = strata::check_gradients(r, {"{type: conv2d, kernel: 3}", {{2, 5, 5}}, {}});
  BOOST_TEST(!bad_key.passed);
  STRATA_CHECK_CONTAINS(bad_key.detail, "missing required key 'out_channels'");
}

BOOST_AUTO_TEST_CASE(sample_shapes_parse) {
  const auto shapes = strata::parse_sample_shapes("3,8,8;16", "--input");
  BOOST_TEST_REQUIRE(shapes.size() == 2u);
  BOOST_TEST(shapes[0] == (Shape{3, 8, 8}));
  BOOST_TEST(shapes[1] == (Shape{16}));
  for (const char* bad : {"3,x,8", "", "3,,8", "0,2", "3;"}) {
    STRATA_CHECK_CONTAINS(error_of([&] { strata::parse_sample_shapes(bad, "--input"); }),
                          "--input: '" + std::string(bad) + "': expected positive integers");
  }
}

// A new layer plugin must add itself to the table above: this fails otherwise.
// Context::backend may be null (strata/layer.hpp): every layer that splits its work over the
// backend (parallel_elementwise) then runs serially, with the output it gives on tbb. The inputs
// are larger than one task (kElementwiseGrain elements), so on tbb the work is really split.
BOOST_AUTO_TEST_CASE(layers_run_without_a_backend) {
  const std::vector<std::pair<std::string, Shape>> cases = {
      {"{type: swish}", {8, 48, 48}},           {"{type: relu}", {8, 48, 48}},
      {"{type: softmax}", {8, 48, 48}},         {"{type: lrn, size: 3}", {8, 48, 48}},
      {"{type: global_avg_pool}", {8, 48, 48}}, {"{type: batch_norm}", {8, 48, 48}},
  };
  Rng rng(11);
  for (const auto& [layer_yaml, sample] : cases) {
    Instance instance = make_layer(layer_yaml, {sample}, "tbb");
    randomize_params(*instance.layer, rng);
    const std::vector<Tensor> inputs = {random_tensor(sample.with_batch(3), rng)};
    const Tensor on_tbb = run_forward(instance, inputs, false, 5);
    Context serial{false, nullptr, nullptr};
    Tensor out(on_tbb.shape());
    instance.layer->forward(serial, inputs, out);
    BOOST_TEST(max_abs_diff(out, on_tbb) == 0.0f, layer_yaml);
  }
}

BOOST_AUTO_TEST_CASE(every_registered_layer_has_a_case) {
  std::set<std::string> covered;
  for (const LayerCase& layer_case : kConformanceCases) covered.insert(case_type(layer_case));
  const auto types = registries().layers.types();
  BOOST_TEST_REQUIRE(!types.empty(), "no layer plugin was loaded");
  for (const std::string& type : types) {
    const auto& owner = registries().layers.entries().at(type).owner;
    BOOST_TEST(covered.count(type) == 1u, "layer type '" << type << "' (plugin '" << owner->name
                                                         << "') has no case in the conformance "
                                                            "table of tests/test_layers.cpp");
  }
}

BOOST_AUTO_TEST_SUITE_END()

// ------------------------------------------------------------------------------------------------
// Layer specifics
// ------------------------------------------------------------------------------------------------

std::string setup_error(const std::string& layer_yaml, const Shape& input) {
  return error_of([&] { make_layer(layer_yaml, {input}, "reference"); });
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

BOOST_AUTO_TEST_SUITE(geometry)

BOOST_AUTO_TEST_CASE(round_exact_names_the_arithmetic) {
  const std::string message =
      setup_error("{type: conv2d, out_channels: 2, kernel: 3, stride: 3}", {1, 7, 7});
  BOOST_TEST(contains(message,
                      "output height (7 - 3 + 2*0)/3 + 1 = 2.33 is not a whole number; "
                      "choose stride/padding that fit, or set round: floor"),
             message);
  BOOST_TEST(contains(message, "layer 'l' (conv2d, input [1, 7, 7])"), message);

  // Height fits, width does not: the message names the width and its own numbers.
  const std::string width =
      setup_error("{type: conv2d, out_channels: 2, kernel: 3, stride: 3}", {1, 9, 7});
  BOOST_TEST(contains(width, "output width (7 - 3 + 2*0)/3 + 1 = 2.33 is not a whole number"),
             width);

  // Dilation and padding appear in the formula, with the dilated extent explained.
  const std::string dilated = setup_error(
      "{type: conv2d, out_channels: 2, kernel: 3, dilation: 2, padding: 1, stride: 2}", {1, 8, 8});
  BOOST_TEST(contains(dilated, "(8 - 5 + 2*1)/2 + 1 = 3.50 is not a whole number"), dilated);
  BOOST_TEST(contains(dilated, "5 = 2*(3 - 1) + 1"), dilated);

  const std::string pool = setup_error("{type: max_pool, kernel: 2}", {3, 7, 8});
  BOOST_TEST(contains(pool, "output height (7 - 2 + 2*0)/2 + 1 = 3.50 is not a whole number"),
             pool);
}

BOOST_AUTO_TEST_CASE(window_larger_than_input) {
  const std::string message = setup_error("{type: conv2d, out_channels: 2, kernel: 5}", {1, 3, 8});
  BOOST_TEST(contains(message, "output height (3 - 5 + 2*0)/1 + 1 = -1 is less than 1"), message);
  const std::string floor =
      setup_error("{type: max_pool, kernel: 4, stride: 2, round: floor}", {1, 3, 8});
  BOOST_TEST(contains(floor, "is less than 1"), floor);
}

BOOST_AUTO_TEST_CASE(round_floor_matches_pytorch) {
  // PyTorch: floor((in + 2p - d(k-1) - 1)/s) + 1.
  //   nn.Conv2d(1, 2, 3, stride=3)(7x7) -> 2x2
  //   nn.Conv2d(1, 2, 3, stride=2, padding=1, dilation=2)(10x10) -> floor(7/2) + 1 = 4
  //   nn.MaxPool2d(3, stride=2)(8x8) -> 3
  //   nn.AvgPool2d((3, 2), stride=(2, 3), padding=(1, 0))(8x9) -> 4 x 3
  struct Expect {
    std::string yaml;
    Shape input, output;
  };
  const std::vector<Expect> cases = {
      {"{type: conv2d, out_channels: 2, kernel: 3, stride: 3, round: floor}", {1, 7, 7}, {2, 2, 2}},
      {"{type: conv2d, out_channels: 2, kernel: 3, stride: 2, padding: 1, dilation: 2, "
       "round: floor}",
       {1, 10, 10},
       {2, 4, 4}},
      {"{type: max_pool, kernel: 3, stride: 2, round: floor}", {2, 8, 8}, {2, 3, 3}},
      {"{type: avg_pool, kernel: [3, 2], stride: [2, 3], padding: [1, 0], round: floor}",
       {2, 8, 9},
       {2, 4, 3}},
  };
  for (const Expect& expect : cases) {
    const Instance instance = make_layer(expect.yaml, {expect.input}, "reference");
    BOOST_TEST(instance.output == expect.output,
               expect.yaml << ": " << instance.output.str() << " != " << expect.output.str());
  }
}

BOOST_AUTO_TEST_CASE(padding_same) {
  Rng rng(7);
  // Odd kernels, with dilation: `same` pads (d(k-1))/2 on each side and keeps the size.
  const Instance square = make_layer("{type: conv2d, out_channels: 3, kernel: 3, padding: same}",
                                     {{2, 9, 11}}, "reference");
  BOOST_TEST(square.output == (Shape{3, 9, 11}));
  Instance same =
      make_layer("{type: conv2d, out_channels: 3, kernel: [5, 3], dilation: 2, padding: same}",
                 {{2, 9, 11}}, "reference");
  BOOST_TEST(same.output == (Shape{3, 9, 11}));
  // ... and computes what explicit padding [4, 2] computes.
  Instance explicit_padding =
      make_layer("{type: conv2d, out_channels: 3, kernel: [5, 3], dilation: 2, padding: [4, 2]}",
                 {{2, 9, 11}}, "reference");
  randomize_params(*same.layer, rng);
  for (std::size_t p = 0; p < same.layer->params().size(); ++p) {
    explicit_padding.layer->params()[p]->value.copy_from(same.layer->params()[p]->value);
  }
  const std::vector<Tensor> inputs = {random_tensor({2, 2, 9, 11}, rng)};
  BOOST_TEST(max_abs_diff(run_forward(same, inputs, false, 1),
                          run_forward(explicit_padding, inputs, false, 1)) == 0.0f);

  // Rejected with the reason and the key's position.
  const std::string strided = error_of([] {
    registries().layers.create(
        yaml("{type: conv2d, out_channels: 3, kernel: 3, stride: 2, padding: same}"));
  });
  BOOST_TEST(
      (contains(strided, "<test>:1:") && contains(strided, "padding: 'same' needs stride 1")),
      strided);
  const std::string typo = error_of([] {
    registries().layers.create(yaml("{type: conv2d, out_channels: 3, kernel: 3, padding: valid}"));
  });
  BOOST_TEST(contains(typo,
                      "expected an integer, a list [height, width] or [top, bottom, left, "
                      "right], 'same' or 'same_lower', found 'valid'"),
             typo);
}

// Even kernels: `same` puts the odd row and column at the end (PyTorch's padding='same', ONNX
// SAME_UPPER), `same_lower` at the beginning; both compute what the explicit [top, bottom, left,
// right] padding computes, on both backends (the layer pads the asymmetric part explicitly).
BOOST_AUTO_TEST_CASE(padding_same_with_even_kernels) {
  Rng rng(8);
  const std::vector<std::pair<std::string, std::string>> pairs = {
      {"padding: same", "padding: [1, 2, 0, 1]"},  // windows 4 and 2
      {"padding: same_lower", "padding: [2, 1, 1, 0]"},
  };
  for (const std::string backend : {"reference", "tbb"}) {
    for (const auto& [same_key, explicit_key] : pairs) {
      Instance same =
          make_layer(fmt::format("{{type: conv2d, out_channels: 3, kernel: [4, 2], {}}}", same_key),
                     {{2, 6, 7}}, backend);
      Instance explicit_padding = make_layer(
          fmt::format("{{type: conv2d, out_channels: 3, kernel: [4, 2], {}}}", explicit_key),
          {{2, 6, 7}}, backend);
      BOOST_TEST(same.output == (Shape{3, 6, 7}));
      randomize_params(*same.layer, rng);
      for (std::size_t p = 0; p < same.layer->params().size(); ++p) {
        explicit_padding.layer->params()[p]->value.copy_from(same.layer->params()[p]->value);
      }
      const std::vector<Tensor> inputs = {random_tensor({2, 2, 6, 7}, rng)};
      BOOST_TEST(max_abs_diff(run_forward(same, inputs, false, 1),
                              run_forward(explicit_padding, inputs, false, 1)) == 0.0f,
                 backend << " " << same_key);
    }
  }
}

// conv2d with a padding mode, or with asymmetric zero padding, equals the pad layer followed by
// conv2d without padding, forward and backward (input and weight gradients), on both backends.
BOOST_AUTO_TEST_CASE(conv2d_padding_modes_equal_pad_then_conv) {
  Rng rng(9);
  struct Case {
    std::string conv_keys, pad_keys;
  };
  const std::vector<Case> cases = {
      {"padding: [1, 2], padding_mode: reflect", "padding: [1, 2], mode: reflect"},
      {"padding: [2, 0, 1, 1], padding_mode: replicate", "padding: [2, 0, 1, 1], mode: replicate"},
      {"padding: 2, padding_mode: circular", "padding: 2, mode: circular"},
      {"padding: [0, 2, 1, 3]", "padding: [0, 2, 1, 3]"},
  };
  for (const std::string backend : {"reference", "tbb"}) {
    for (const Case& c : cases) {
      const std::string what = backend + ": " + c.conv_keys;
      Instance conv = make_layer(
          fmt::format("{{type: conv2d, out_channels: 3, kernel: 3, stride: [1, 2], round: floor, "
                      "{}}}",
                      c.conv_keys),
          {{2, 5, 6}}, backend);
      Instance pad = make_layer(fmt::format("{{type: pad, {}}}", c.pad_keys), {{2, 5, 6}}, backend);
      Instance plain =
          make_layer("{type: conv2d, out_channels: 3, kernel: 3, stride: [1, 2], round: floor}",
                     {pad.output}, backend);
      BOOST_TEST_REQUIRE(conv.output == plain.output, what);
      randomize_params(*conv.layer, rng);
      for (std::size_t p = 0; p < conv.layer->params().size(); ++p) {
        plain.layer->params()[p]->value.copy_from(conv.layer->params()[p]->value);
      }
      const std::vector<Tensor> x = {random_tensor({2, 2, 5, 6}, rng)};
      const Tensor y = run_forward(conv, x, true, 1);
      const std::vector<Tensor> padded = {run_forward(pad, x, true, 1)};
      const Tensor y_plain = run_forward(plain, padded, true, 1);
      BOOST_TEST(max_abs_diff(y, y_plain) <= 1e-5f, what);
      const Tensor dy = random_tensor(y.shape(), rng);
      const Tensor dx = run_backward(conv, x, y, dy, true, 1)[0];
      const Tensor dpadded = run_backward(plain, padded, y_plain, dy, true, 1)[0];
      const Tensor dx_plain = run_backward(pad, x, padded[0], dpadded, true, 1)[0];
      BOOST_TEST(max_abs_diff(dx, dx_plain) <= 1e-5f, what);
      BOOST_TEST(
          max_abs_diff(conv.layer->params()[0]->grad, plain.layer->params()[0]->grad) <= 1e-4f,
          what);
    }
  }
}

// PyTorch's output sizes with ceil_mode=True, including the dropped last window, and with
// dilation:
//   nn.MaxPool2d(3, stride=2, ceil_mode=True)(112x112) -> 56 (GoogLeNet's first pool)
//   nn.MaxPool2d(2, stride=2, padding=1, ceil_mode=True)(5x5) -> 3 (ceil(5/2) + 1 = 4 would
//     start the last window at 6 >= 5 + 1: dropped)
//   nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True)(8x8) -> 5
//   nn.MaxPool2d(3, stride=1, dilation=2)(9x9) -> 5
BOOST_AUTO_TEST_CASE(round_ceil_matches_pytorch) {
  struct Expect {
    std::string yaml;
    Shape input, output;
  };
  const std::vector<Expect> cases = {
      {"{type: max_pool, kernel: 3, stride: 2, round: ceil}", {2, 112, 112}, {2, 56, 56}},
      {"{type: max_pool, kernel: 2, stride: 2, padding: 1, round: ceil}", {1, 5, 5}, {1, 3, 3}},
      {"{type: avg_pool, kernel: 3, stride: 2, padding: 1, round: ceil}", {1, 8, 8}, {1, 5, 5}},
      {"{type: max_pool, kernel: 3, stride: 1, dilation: 2}", {1, 9, 9}, {1, 5, 5}},
      {"{type: max_pool, kernel: 3, stride: 2, round: ceil}", {1, 7, 8}, {1, 3, 4}},
  };
  for (const Expect& expect : cases) {
    const Instance instance = make_layer(expect.yaml, {expect.input}, "reference");
    BOOST_TEST(instance.output == expect.output,
               expect.yaml << ": " << instance.output.str() << " != " << expect.output.str());
  }
}

// avg_pool with ceil rounding and asymmetric padding against PyTorch's definition, written out
// here: the window clipped to the padded input [-top, H + bottom) is the divisor with
// count_include_pad (the overhang past it does not count), the real elements without.
BOOST_AUTO_TEST_CASE(avg_pool_ceil_matches_its_definition) {
  Rng rng(13);
  for (const std::string backend : {"reference", "tbb"}) {
    for (const bool include_pad : {true, false}) {
      Instance pool = make_layer(fmt::format("{{type: avg_pool, kernel: 3, stride: 2, "
                                             "padding: [1, 0, 0, 1], round: ceil, "
                                             "count_include_pad: {}}}",
                                             include_pad),
                                 {{2, 7, 6}}, backend);
      BOOST_TEST_REQUIRE(pool.output == (Shape{2, 4, 3}));
      const Tensor x = random_tensor({1, 2, 7, 6}, rng);
      const Tensor y = run_forward(pool, {x}, false, 1);
      float worst = 0.0f;
      for (int64_t c = 0; c < 2; ++c) {
        for (int64_t i = 0; i < 4; ++i) {
          for (int64_t j = 0; j < 3; ++j) {
            const int64_t h0 = i * 2 - 1, w0 = j * 2;
            const int64_t area =
                (std::min<int64_t>(h0 + 3, 7 + 0) - h0) * (std::min<int64_t>(w0 + 3, 6 + 1) - w0);
            double sum = 0.0;
            int count = 0;
            for (int64_t h = std::max<int64_t>(h0, 0); h < std::min<int64_t>(h0 + 3, 7); ++h) {
              for (int64_t w = w0; w < std::min<int64_t>(w0 + 3, 6); ++w) {
                sum += x.data()[(c * 7 + h) * 6 + w];
                ++count;
              }
            }
            const double expected = sum / static_cast<double>(include_pad ? area : count);
            worst = std::max(
                worst, static_cast<float>(std::abs(y.data()[(c * 4 + i) * 3 + j] - expected)));
          }
        }
      }
      BOOST_TEST(worst < 1e-6f, backend << " count_include_pad " << include_pad);
    }
  }
}

// Dilated max pooling against its definition: the taps dilation apart, padding never wins.
BOOST_AUTO_TEST_CASE(max_pool_dilation_matches_its_definition) {
  Rng rng(14);
  for (const std::string backend : {"reference", "tbb"}) {
    Instance pool = make_layer(
        "{type: max_pool, kernel: [2, 3], stride: [2, 1], dilation: [3, 2], padding: 1, "
        "round: ceil}",
        {{2, 9, 8}}, backend);
    // height: ceil((9 + 2 - 4)/2) + 1 = 5; width: (8 + 2 - 5)/1 + 1 = 6.
    BOOST_TEST_REQUIRE(pool.output == (Shape{2, 5, 6}));
    const Tensor x = random_tensor({1, 2, 9, 8}, rng);
    const Tensor y = run_forward(pool, {x}, false, 1);
    float worst = 0.0f;
    for (int64_t c = 0; c < 2; ++c) {
      for (int64_t i = 0; i < 5; ++i) {
        for (int64_t j = 0; j < 6; ++j) {
          float best = -std::numeric_limits<float>::infinity();
          for (int64_t r = 0; r < 2; ++r) {
            for (int64_t s = 0; s < 3; ++s) {
              const int64_t h = i * 2 - 1 + r * 3, w = j - 1 + s * 2;
              if (h < 0 || h >= 9 || w < 0 || w >= 8) continue;
              best = std::max(best, x.data()[(c * 9 + h) * 8 + w]);
            }
          }
          worst = std::max(worst, std::abs(y.data()[(c * 5 + i) * 6 + j] - best));
        }
      }
    }
    BOOST_TEST(worst == 0.0f, backend);
  }
}

// Bad interop geometry is an error at the key, with the reason.
BOOST_AUTO_TEST_CASE(interop_geometry_errors) {
  const auto create_error = [](const std::string& layer_yaml) {
    return error_of([&] { registries().layers.create(yaml(layer_yaml)); });
  };
  const std::string conv_ceil =
      create_error("{type: conv2d, out_channels: 3, kernel: 3, round: ceil}");
  BOOST_TEST((contains(conv_ceil, "<test>:1:") && contains(conv_ceil,
                                                           "round: 'ceil' is for "
                                                           "pooling only")),
             conv_ceil);
  const std::string three = create_error("{type: max_pool, kernel: 3, padding: [1, 1, 1]}");
  BOOST_TEST((contains(three, "<test>:1:") &&
              contains(three,
                       "[top, bottom, left, right], 'same' or 'same_lower', found a list "
                       "of 3")),
             three);
  const std::string bottom = create_error("{type: max_pool, kernel: 2, padding: [0, 2, 0, 0]}");
  BOOST_TEST(contains(bottom, "bottom padding 2 is more than half the kernel 2"), bottom);
  const std::string avg_dilation = create_error("{type: avg_pool, kernel: 2, dilation: 2}");
  BOOST_TEST((contains(avg_dilation, "dilation: avg_pool has no dilation")), avg_dilation);
  const std::string same_strided =
      create_error("{type: max_pool, kernel: 2, stride: 2, padding: same}");
  BOOST_TEST(contains(same_strided, "padding: 'same' needs stride 1"), same_strided);
  const std::string mode =
      create_error("{type: conv2d, out_channels: 3, kernel: 3, padding: 1, padding_mode: mirror}");
  BOOST_TEST(contains(mode,
                      "padding_mode: expected 'zeros', 'reflect', 'replicate' or "
                      "'circular', found 'mirror'"),
             mode);
  const std::string pad_value = create_error("{type: pad, padding: 1, mode: reflect, value: 1}");
  BOOST_TEST(contains(pad_value, "value: is the fill of mode constant"), pad_value);
  const std::string pad_missing = create_error("{type: pad, mode: reflect}");
  BOOST_TEST(contains(pad_missing, "missing required key 'padding'"), pad_missing);
  const std::string pad_same = create_error("{type: pad, padding: same}");
  BOOST_TEST(contains(pad_same, "'same' is not available here"), pad_same);
  // Setup: reflect needs padding below the input extent (PyTorch's rule), circular at most it.
  const std::string reflect = setup_error(
      "{type: conv2d, out_channels: 2, kernel: 3, padding: 3, padding_mode: reflect}", {1, 3, 8});
  BOOST_TEST(contains(reflect,
                      "padding mode reflect needs each height padding to be less than "
                      "the input height 3, found 3"),
             reflect);
  const std::string circular =
      setup_error("{type: pad, padding: [0, 0, 5, 0], mode: circular}", {1, 3, 4});
  BOOST_TEST(contains(circular,
                      "circular needs each width padding to be at most the input width "
                      "4, found 5"),
             circular);
  const std::string axis = setup_error("{type: softmax, axis: 0}", {4, 3, 2});
  BOOST_TEST((contains(axis,
                       "axis: must be a sample axis of the input [N, 4, 3, 2]: 1 to 3 or -3 "
                       "to -1 (0 is the batch axis), found 0") &&
              contains(axis, "<test>:1:")),
             axis);
  const std::string axis_low = setup_error("{type: softmax, axis: -4}", {4, 3, 2});
  BOOST_TEST(contains(axis_low, "found -4"), axis_low);
}

BOOST_AUTO_TEST_CASE(conv2d_config_errors) {
  const std::string groups =
      setup_error("{type: conv2d, out_channels: 4, kernel: 3, groups: 2}", {3, 5, 5});
  BOOST_TEST(contains(groups, "input channels 3 are not divisible by groups 2"), groups);
  const std::string out_groups = error_of([] {
    registries().layers.create(yaml("{type: conv2d, out_channels: 3, kernel: 1, groups: 2}"));
  });
  BOOST_TEST(contains(out_groups, "out_channels 3 is not divisible by groups 2"), out_groups);
  const std::string missing =
      error_of([] { registries().layers.create(yaml("{type: conv2d, out_channels: 3}")); });
  BOOST_TEST(contains(missing, "missing required key 'kernel'"), missing);
  const std::string rank = setup_error("{type: conv2d, out_channels: 3, kernel: 1}", {12});
  BOOST_TEST(contains(rank, "expects an image sample [channels, height, width], got [12]"), rank);
  const std::string triple = error_of([] {
    registries().layers.create(yaml("{type: conv2d, out_channels: 3, kernel: [3, 3, 3]}"));
  });
  BOOST_TEST(contains(triple, "kernel: expected an integer or a list [height, width]"), triple);
  const std::string round = error_of([] {
    registries().layers.create(yaml("{type: conv2d, out_channels: 3, kernel: 3, round: ceil}"));
  });
  BOOST_TEST(contains(round, "round: 'ceil' is for pooling only"), round);
  const std::string round_typo =
      error_of([] { registries().layers.create(yaml("{type: max_pool, kernel: 3, round: up}")); });
  BOOST_TEST(contains(round_typo, "round: expected 'exact', 'floor' or 'ceil', found 'up'"),
             round_typo);
  const std::string typo = error_of([] {
    registries().layers.create(yaml("{type: conv2d, out_channels: 3, kernel: 3, stirde: 2}"));
  });
  BOOST_TEST((contains(typo, "unknown key 'stirde'") && contains(typo, "stride")), typo);
  const std::string pool_pad =
      error_of([] { registries().layers.create(yaml("{type: avg_pool, kernel: 2, padding: 2}")); });
  BOOST_TEST(contains(pool_pad, "padding 2 is more than half the kernel 2"), pool_pad);
  const std::string max_only = error_of([] {
    registries().layers.create(yaml("{type: max_pool, kernel: 2, count_include_pad: false}"));
  });
  BOOST_TEST(contains(max_only, "unknown key 'count_include_pad'"), max_only);
}

// Direct evaluation of the conv2d and avg_pool definitions, to check that the layers hand their
// geometry (per-axis kernel, stride, padding, dilation, groups) to the kernel correctly: the
// gradient check alone would accept a consistently wrong geometry with the right output size.
BOOST_AUTO_TEST_CASE(conv2d_matches_its_definition) {
  Rng rng(11);
  Instance conv = make_layer(
      "{type: conv2d, out_channels: 4, kernel: [3, 2], stride: [2, 1], padding: [1, 0], "
      "dilation: [1, 2], groups: 2}",
      {{4, 7, 6}}, "reference");
  BOOST_TEST_REQUIRE(conv.output == (Shape{4, 4, 4}));
  randomize_params(*conv.layer, rng);
  const Tensor x = random_tensor({2, 4, 7, 6}, rng);
  const Tensor y = run_forward(conv, {x}, false, 1);
  const Tensor& w = conv.layer->params()[0]->value;  // [4, 2, 3, 2]
  const Tensor& b = conv.layer->params()[1]->value;
  float worst = 0.0f;
  for (int64_t n = 0; n < 2; ++n) {
    for (int64_t k = 0; k < 4; ++k) {
      for (int64_t i = 0; i < 4; ++i) {
        for (int64_t j = 0; j < 4; ++j) {
          double sum = b.data()[k];
          for (int64_t c = 0; c < 2; ++c) {
            const int64_t channel = (k / 2) * 2 + c;
            for (int64_t r = 0; r < 3; ++r) {
              for (int64_t s = 0; s < 2; ++s) {
                const int64_t h = i * 2 - 1 + r, col = j - 0 + s * 2;
                if (h < 0 || h >= 7 || col < 0 || col >= 6) continue;
                sum += static_cast<double>(w.data()[((k * 2 + c) * 3 + r) * 2 + s]) *
                       x.data()[((n * 4 + channel) * 7 + h) * 6 + col];
              }
            }
          }
          const float got = y.data()[((n * 4 + k) * 4 + i) * 4 + j];
          worst = std::max(worst, static_cast<float>(std::abs(got - sum)));
        }
      }
    }
  }
  BOOST_TEST(worst < 1e-5f);
}

BOOST_AUTO_TEST_CASE(avg_pool_matches_its_definition) {
  Rng rng(12);
  for (const bool include_pad : {true, false}) {
    Instance pool = make_layer(fmt::format("{{type: avg_pool, kernel: [3, 2], stride: [2, 1], "
                                           "padding: [1, 1], count_include_pad: {}}}",
                                           include_pad),
                               {{2, 5, 4}}, "reference");
    BOOST_TEST_REQUIRE(pool.output == (Shape{2, 3, 5}));
    const Tensor x = random_tensor({1, 2, 5, 4}, rng);
    const Tensor y = run_forward(pool, {x}, false, 1);
    float worst = 0.0f;
    for (int64_t c = 0; c < 2; ++c) {
      for (int64_t i = 0; i < 3; ++i) {
        for (int64_t j = 0; j < 5; ++j) {
          double sum = 0.0;
          int count = 0;
          for (int64_t r = 0; r < 3; ++r) {
            for (int64_t s = 0; s < 2; ++s) {
              const int64_t h = i * 2 - 1 + r, col = j - 1 + s;
              if (h < 0 || h >= 5 || col < 0 || col >= 4) continue;
              sum += x.data()[(c * 5 + h) * 4 + col];
              ++count;
            }
          }
          const double expected = sum / (include_pad ? 6.0 : count);
          worst = std::max(worst,
                           static_cast<float>(std::abs(y.data()[(c * 3 + i) * 5 + j] - expected)));
        }
      }
    }
    BOOST_TEST(worst < 1e-6f, "count_include_pad " << include_pad);
  }
}

BOOST_AUTO_TEST_CASE(linear_flattens_in_chw_order) {
  // weight row o is w[o, i]; the input sample [2, 2, 2] flattened row-major is x[(c*2 + h)*2 + w].
  Instance linear = make_layer("{type: linear, out_features: 2}", {{2, 2, 2}}, "reference");
  Param& weight = *linear.layer->params()[0];
  Param& bias = *linear.layer->params()[1];
  BOOST_TEST_REQUIRE(weight.value.shape() == (Shape{2, 8}));
  BOOST_TEST(weight.fan_in == 8);
  BOOST_TEST(bias.decay_mult == 0.0f);
  for (int64_t i = 0; i < 16; ++i) weight.value.data()[i] = static_cast<float>(i < 8 ? i : -1);
  bias.value.data()[0] = 0.5f;
  bias.value.data()[1] = -0.25f;
  Tensor x({1, 2, 2, 2});
  for (int64_t i = 0; i < 8; ++i) x.data()[i] = static_cast<float>(i + 1);
  const Tensor y = run_forward(linear, {x}, false, 1);
  // sum_i i*(i+1) for i < 8 = 168; sum_i -(i+1) = -36.
  BOOST_TEST(y.data()[0] == 168.5f);
  BOOST_TEST(y.data()[1] == -36.25f);
}

BOOST_AUTO_TEST_CASE(conv2d_parameters_and_fans) {
  Instance conv = make_layer("{type: conv2d, out_channels: 6, kernel: [3, 2], groups: 3}",
                             {{3, 5, 5}}, "reference");
  const auto params = conv.layer->params();
  BOOST_TEST_REQUIRE(params.size() == 2u);
  BOOST_TEST(params[0]->name == "weight");
  BOOST_TEST(params[0]->value.shape() == (Shape{6, 1, 3, 2}));
  BOOST_TEST(params[0]->default_init == "he_normal");
  BOOST_TEST(params[0]->fan_in == 1 * 3 * 2);
  BOOST_TEST(params[0]->fan_out == 2 * 3 * 2);
  BOOST_TEST(params[0]->decay_mult == 1.0f);
  BOOST_TEST(params[1]->name == "bias");
  BOOST_TEST(params[1]->value.shape() == (Shape{6}));
  BOOST_TEST(params[1]->default_init == "constant");
  BOOST_TEST(params[1]->decay_mult == 0.0f);
  Instance no_bias = make_layer("{type: conv2d, out_channels: 2, kernel: 1, bias: false}",
                                {{3, 5, 5}}, "reference");
  BOOST_TEST(no_bias.layer->params().size() == 1u);
}

BOOST_AUTO_TEST_CASE(flatten_aliases_when_it_may) {
  Instance flatten = make_layer("{type: flatten}", {{2, 3, 4}}, "reference");
  Rng rng(3);
  const Tensor x = random_tensor({2, 2, 3, 4}, rng);
  Context context{false, &rng, flatten.backend.get()};
  Tensor view;  // undefined: the layer may return a view of its input
  flatten.layer->forward(context, std::vector<Tensor>{x}, view);
  BOOST_TEST(view.same_storage(x));
  BOOST_TEST(view.shape() == (Shape{2, 24}));
  const Tensor copy = run_forward(flatten, {x}, false, 1);  // caller-owned buffer: a copy
  BOOST_TEST(!copy.same_storage(x));
  BOOST_TEST(max_abs_diff(copy, x.view({2, 24})) == 0.0f);
}

BOOST_AUTO_TEST_SUITE_END()

// ------------------------------------------------------------------------------------------------
// relu6, hard_sigmoid, hardswish: outside the conformance suite's inputs in [-2, 2]
// ------------------------------------------------------------------------------------------------

BOOST_AUTO_TEST_SUITE(piecewise_activations)

// Values and gradients (dy = 1) printed by PyTorch 1.13's F.relu6, F.hardsigmoid and F.hardswish
// at and between the kinks, in the saturated ranges and for NaN: the conventions at the kinks are
// PyTorch's (tests/scripts/modern_layers_vs_pytorch.py compares whole networks).
BOOST_AUTO_TEST_CASE(values_and_gradients_at_the_kinks_match_pytorch) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> x = {-4, -3, -1.5f, 0, 1.5f, 3, 4.5f, 6, 7, nan};
  struct Expected {
    const char* type;
    std::vector<float> y, dx;
  };
  const std::vector<Expected> table = {
      {"relu6", {0, 0, 0, 0, 1.5f, 3, 4.5f, 6, 6, nan}, {0, 0, 0, 0, 1, 1, 1, 0, 0, 1}},
      {"hard_sigmoid",
       {0, 0, 0.25f, 0.5f, 0.75f, 1, 1, 1, 1, nan},
       {0, 0, 1 / 6.0f, 1 / 6.0f, 1 / 6.0f, 0, 0, 0, 0, 0}},
      {"hardswish",
       {0, 0, -0.375f, 0, 1.125f, 3, 4.5f, 6, 7, nan},
       {0, -0.5f, 0, 0.5f, 1, 1.5f, 1, 1, 1, 1}},
  };
  const auto n = static_cast<int64_t>(x.size());
  for (const Expected& expected : table) {
    for (const std::string backend : {"reference", "tbb"}) {
      Instance layer = make_layer(fmt::format("{{type: {}}}", expected.type), {{n}}, backend);
      Tensor input({1, n});
      std::copy(x.begin(), x.end(), input.data());
      const Tensor y = run_forward(layer, {input}, true, 1);
      Tensor dy({1, n});
      dy.fill(1.0f);
      const auto dx = run_backward(layer, {input}, y, dy, true, 1);
      for (int64_t i = 0; i < n; ++i) {
        const float want_y = expected.y[static_cast<std::size_t>(i)];
        const float got_y = y.data()[i];
        BOOST_TEST((std::isnan(want_y) ? std::isnan(got_y) : std::abs(got_y - want_y) <= 1e-6f),
                   expected.type << " (" << backend << ")(" << x[static_cast<std::size_t>(i)]
                                 << ") = " << got_y << ", PyTorch " << want_y);
        BOOST_TEST(dx[0].data()[i] == expected.dx[static_cast<std::size_t>(i)],
                   expected.type << " (" << backend << ")'(" << x[static_cast<std::size_t>(i)]
                                 << ") = " << dx[0].data()[i] << ", PyTorch "
                                 << expected.dx[static_cast<std::size_t>(i)]);
      }
    }
  }
}

// Over [-8, 8], where the saturated pieces are, backward agrees with central differences at
// points at least 0.05 from every kink (eps 1e-2: each piece is at most quadratic, so the
// difference is exact up to float rounding, ~1e-5 after dividing by 2 eps).
BOOST_AUTO_TEST_CASE(gradients_over_the_whole_range) {
  Rng rng(17);
  std::uniform_real_distribution<float> uniform(-8.0f, 8.0f);
  const int64_t n = 4000;
  Tensor input({1, n});
  for (int64_t i = 0; i < n; ++i) {
    float v = 0;
    do {
      v = uniform(rng);
    } while (std::abs(v + 3) < 0.05f || std::abs(v) < 0.05f || std::abs(v - 3) < 0.05f ||
             std::abs(v - 6) < 0.05f);
    input.data()[i] = v;
  }
  const Tensor dy = random_tensor({1, n}, rng);
  for (const char* type : {"relu6", "hard_sigmoid", "hardswish"}) {
    Instance layer = make_layer(fmt::format("{{type: {}}}", type), {{n}}, "tbb");
    const Tensor y = run_forward(layer, {input}, true, 1);
    const auto dx = run_backward(layer, {input}, y, dy, true, 1);
    Tensor shifted = input.clone();
    int64_t saturated = 0, failed = 0;
    for (int64_t i = 0; i < n; ++i) {
      const float v = input.data()[i];
      saturated += v < -3 || v > 6;
      shifted.data()[i] = v + 1e-2f;
      const double up = shifted.data()[i];
      const Tensor plus = run_forward(layer, {shifted}, true, 1);
      shifted.data()[i] = v - 1e-2f;
      const double down = shifted.data()[i];
      const Tensor minus = run_forward(layer, {shifted}, true, 1);
      shifted.data()[i] = v;
      const double numerical =
          (static_cast<double>(plus.data()[i]) - minus.data()[i]) / (up - down) * dy.data()[i];
      if (std::abs(numerical - dx[0].data()[i]) > 1e-4) ++failed;
    }
    BOOST_TEST(saturated > n / 4, type << ": the draw reaches the saturated pieces");
    BOOST_TEST(failed == 0, type << ": " << failed << " of " << n << " gradients disagree");
  }
}

BOOST_AUTO_TEST_SUITE_END()

// ------------------------------------------------------------------------------------------------
// Dropout
// ------------------------------------------------------------------------------------------------

BOOST_AUTO_TEST_SUITE(dropout)

BOOST_AUTO_TEST_CASE(keep_prob_is_validated) {
  for (const char* bad : {"0", "-0.1", "1.5", "half"}) {
    const std::string message = error_of([&] {
      registries().layers.create(yaml(fmt::format("{{type: dropout, keep_prob: {}}}", bad)));
    });
    BOOST_TEST(contains(message, "keep_prob"), bad << ": " << message);
    if (std::string(bad) != "half") {
      BOOST_TEST((contains(message, "must be in (0, 1]") &&
                  contains(message, "probability of keeping a unit")),
                 message);
    }
  }
  // PyTorch's key is not silently accepted.
  const std::string torch_key =
      error_of([] { registries().layers.create(yaml("{type: dropout, p: 0.5}")); });
  BOOST_TEST(contains(torch_key, "unknown key 'p'"), torch_key);
  BOOST_CHECK_NO_THROW(registries().layers.create(yaml("{type: dropout, keep_prob: 1}")));
}

// Training mode, statistically: each element is kept with probability keep_prob and scaled by
// 1/keep_prob, so the mean is preserved; backward applies exactly the forward's mask.
BOOST_AUTO_TEST_CASE(training_statistics_and_mask) {
  constexpr double kKeep = 0.7;
  constexpr int64_t kCount = 1 << 18;
  Instance dropout = make_layer("{type: dropout, keep_prob: 0.7}", {{kCount}}, "tbb");
  Rng rng(5);
  const Tensor x = random_tensor({1, kCount}, rng, 0.5f, 1.5f);
  const Tensor y = run_forward(dropout, {x}, true, 99);
  int64_t kept = 0;
  double sum_x = 0.0, sum_y = 0.0;
  bool exact = true;
  const auto scale = static_cast<float>(1.0 / kKeep);
  for (int64_t i = 0; i < kCount; ++i) {
    sum_x += x.data()[i];
    sum_y += y.data()[i];
    if (y.data()[i] != 0.0f) {
      ++kept;
      exact = exact && y.data()[i] == x.data()[i] * scale;
    }
  }
  // Binomial: sd of the kept fraction sqrt(0.21 / 2^18) = 9e-4; of the mean ratio ~1.4e-3.
  // Bounds at ~5 sd.
  const double fraction = static_cast<double>(kept) / kCount;
  BOOST_TEST(std::abs(fraction - kKeep) < 5e-3, "kept fraction " << fraction);
  BOOST_TEST(std::abs(sum_y / sum_x - 1.0) < 7e-3, "mean ratio " << sum_y / sum_x);
  BOOST_TEST(exact, "kept units are not scaled by exactly 1/keep_prob");

  const Tensor dy = random_tensor({1, kCount}, rng);
  const auto dx = run_backward(dropout, {x}, y, dy, true, 99);
  bool mask_reused = true;
  for (int64_t i = 0; i < kCount; ++i) {
    const float expected = y.data()[i] == 0.0f ? 0.0f : dy.data()[i] * scale;
    mask_reused = mask_reused && dx[0].data()[i] == expected;
  }
  BOOST_TEST(mask_reused, "backward does not apply the forward's mask");

  // The same seed draws the same mask; another seed another one.
  BOOST_TEST(max_abs_diff(run_forward(dropout, {x}, true, 99), y) == 0.0f);
  BOOST_TEST(max_abs_diff(run_forward(dropout, {x}, true, 100), y) > 0.0f);
}

BOOST_AUTO_TEST_CASE(inference_is_identity) {
  Instance dropout = make_layer("{type: dropout, keep_prob: 0.3}", {{4, 8, 8}}, "reference");
  Rng rng(6);
  const Tensor x = random_tensor({5, 4, 8, 8}, rng);
  const Tensor y = run_forward(dropout, {x}, false, 1);
  BOOST_TEST(max_abs_diff(y, x) == 0.0f);
  const Tensor dy = random_tensor(x.shape(), rng);
  BOOST_TEST(max_abs_diff(run_backward(dropout, {x}, y, dy, false, 1)[0], dy) == 0.0f);
}

BOOST_AUTO_TEST_SUITE_END()

// ------------------------------------------------------------------------------------------------
// batch_norm
// ------------------------------------------------------------------------------------------------

BOOST_AUTO_TEST_SUITE(batch_norm)

Tensor tensor_from(const Shape& shape, const std::vector<float>& values) {
  Tensor t(shape);
  BOOST_TEST_REQUIRE(static_cast<int64_t>(values.size()) == t.numel());
  std::copy(values.begin(), values.end(), t.data());
  return t;
}

void check_close(const std::string& what, const Tensor& got, const std::vector<float>& want,
                 float tolerance) {
  BOOST_TEST_REQUIRE(got.numel() == static_cast<int64_t>(want.size()), what);
  for (int64_t i = 0; i < got.numel(); ++i) {
    const float scale = std::max(1.0f, std::abs(want[static_cast<std::size_t>(i)]));
    BOOST_TEST(std::abs(got.data()[i] - want[static_cast<std::size_t>(i)]) <= tolerance * scale,
               what << "[" << i << "]: " << got.data()[i] << ", expected "
                    << want[static_cast<std::size_t>(i)]);
  }
}

strata::NamedTensor buffer(Layer& layer, const std::string& name) {
  for (strata::NamedTensor& b : layer.buffers()) {
    if (b.name == name) return b;
  }
  BOOST_FAIL("no buffer " << name);
  return {};
}

// momentum: null (PyTorch's momentum=None): the running statistics are the plain average of every
// batch's statistics so far (the mean, and the unbiased variance), whatever the order.
BOOST_AUTO_TEST_CASE(momentum_null_is_the_cumulative_average) {
  Rng rng(21);
  Instance bn = make_layer("{type: batch_norm, momentum: null}", {{2, 3, 2}}, "reference");
  std::vector<double> mean_sum(2, 0.0), var_sum(2, 0.0);
  const int batches = 3;
  for (int b = 0; b < batches; ++b) {
    const Tensor x = random_tensor({4, 2, 3, 2}, rng, -1.0f + b, 2.0f + 2 * b);
    run_forward(bn, {x}, true, 1);
    for (int64_t c = 0; c < 2; ++c) {
      std::vector<double> values;
      for (int64_t n = 0; n < 4; ++n) {
        for (int64_t i = 0; i < 6; ++i) values.push_back(x.data()[(n * 2 + c) * 6 + i]);
      }
      const double mean = std::accumulate(values.begin(), values.end(), 0.0) / 24.0;
      double squares = 0.0;
      for (double v : values) squares += (v - mean) * (v - mean);
      mean_sum[static_cast<std::size_t>(c)] += mean;
      var_sum[static_cast<std::size_t>(c)] += squares / 23.0;
    }
  }
  BOOST_TEST(buffer(*bn.layer, "num_batches_tracked").tensor.data()[0] == 3.0f);
  check_close(
      "running_mean", buffer(*bn.layer, "running_mean").tensor,
      {static_cast<float>(mean_sum[0] / batches), static_cast<float>(mean_sum[1] / batches)},
      1e-5f);
  check_close("running_var", buffer(*bn.layer, "running_var").tensor,
              {static_cast<float>(var_sum[0] / batches), static_cast<float>(var_sum[1] / batches)},
              1e-5f);
  const std::string bad =
      error_of([] { registries().layers.create(yaml("{type: batch_norm, momentum: fast}")); });
  BOOST_TEST(contains(bad, "momentum"), bad);
}

// track_running_stats: false keeps no buffers (the checkpoint holds none) and normalizes with the
// batch's statistics in evaluation too: evaluation gives the training output, and its backward
// the training gradient.
BOOST_AUTO_TEST_CASE(without_running_statistics_evaluation_uses_the_batch) {
  Rng rng(22);
  Instance bn =
      make_layer("{type: batch_norm, track_running_stats: false}", {{3, 2, 2}}, "reference");
  BOOST_TEST(bn.layer->buffers().empty());
  randomize_params(*bn.layer, rng);
  const std::vector<Tensor> x = {random_tensor({5, 3, 2, 2}, rng, -2.0f, 3.0f)};
  const Tensor dy = random_tensor({5, 3, 2, 2}, rng);
  const Tensor train_out = run_forward(bn, x, true, 1);
  const Tensor train_dx = run_backward(bn, x, train_out, dy, true, 1)[0];
  const Tensor eval_out = run_forward(bn, x, false, 1);
  const Tensor eval_dx = run_backward(bn, x, eval_out, dy, false, 1)[0];
  BOOST_TEST(max_abs_diff(train_out, eval_out) == 0.0f);
  BOOST_TEST(max_abs_diff(train_dx, eval_dx) == 0.0f);
  // Normalized per channel: mean 0 over the batch (affine aside, with weight 1 and bias 0).
  Instance plain = make_layer("{type: batch_norm, track_running_stats: false, affine: false}",
                              {{3, 2, 2}}, "reference");
  const Tensor y = run_forward(plain, x, false, 1);
  for (int64_t c = 0; c < 3; ++c) {
    double sum = 0.0;
    for (int64_t n = 0; n < 5; ++n) {
      for (int64_t i = 0; i < 4; ++i) sum += y.data()[(n * 3 + c) * 4 + i];
    }
    BOOST_TEST(std::abs(sum / 20.0) < 1e-6);
  }
}

// Values printed by PyTorch 1.13 (python3-torch) for
//   x = [sin(0.7 i) * 2 + 0.1 i for i in range(12)] as [2, 2, 1, 3], dy = [cos(1.3 i)]
//   bn = nn.BatchNorm2d(2, momentum=0.3, eps=1e-3), weight [1.5, -0.5], bias [0.2, 0.3],
//   running_mean [0.4, -0.1], running_var [2.0, 0.5];
// one training forward and backward, then bn.eval() and one forward and backward.
BOOST_AUTO_TEST_CASE(matches_pytorch_in_both_modes) {
  Instance bn =
      make_layer("{type: batch_norm, momentum: 0.3, eps: 0.001}", {{2, 1, 3}}, "reference");
  std::vector<float> x_values, dy_values;
  for (int i = 0; i < 12; ++i) {
    x_values.push_back(static_cast<float>(std::sin(i * 0.7) * 2 + 0.1 * i));
    dy_values.push_back(static_cast<float>(std::cos(i * 1.3)));
  }
  const Tensor x = tensor_from({2, 2, 1, 3}, x_values);
  const Tensor dy = tensor_from({2, 2, 1, 3}, dy_values);
  Param& weight = *bn.layer->params().at(0);
  Param& bias = *bn.layer->params().at(1);
  BOOST_TEST(weight.name == "weight");
  BOOST_TEST(bias.name == "bias");
  weight.value.copy_from(tensor_from({2}, {1.5f, -0.5f}));
  bias.value.copy_from(tensor_from({2}, {0.2f, 0.3f}));
  buffer(*bn.layer, "running_mean").tensor.copy_from(tensor_from({2}, {0.4f, -0.1f}));
  buffer(*bn.layer, "running_var").tensor.copy_from(tensor_from({2}, {2.0f, 0.5f}));

  const Tensor y = run_forward(bn, {x}, true, 1);
  check_close("train y", y,
              {0.06449601f, 1.703465f, 2.627119f, 0.07027993f, 0.5187145f, 1.114886f, -1.284929f,
               -1.428653f, -0.4814982f, 0.5826424f, -0.06454197f, -0.4219812f},
              1e-5f);
  check_close("running_mean", buffer(*bn.layer, "running_mean").tensor, {0.3144372f, 0.3909383f},
              1e-6f);
  check_close("running_var", buffer(*bn.layer, "running_var").tensor, {1.980933f, 0.7590533f},
              1e-6f);
  check_close("num_batches_tracked", buffer(*bn.layer, "num_batches_tracked").tensor, {1.0f}, 0);
  BOOST_TEST(buffer(*bn.layer, "num_batches_tracked").tensor.rank() == 0u);

  const auto dx = run_backward(bn, {x}, y, dy, true, 1);
  check_close("train dx", dx[0],
              {1.386254f, 0.5169063f, -0.8130021f, 0.4311357f, 0.01608834f, -0.02938279f,
               0.2733487f, -0.9086643f, -0.4548427f, -0.04720658f, -0.3782731f, 0.007638469f},
              1e-5f);
  check_close("train dweight", weight.grad, {0.02173267f, -2.06864f}, 1e-5f);
  check_close("train dbias", bias.grad, {-1.04414f, 2.112101f}, 1e-5f);

  const Tensor y_eval = run_forward(bn, {x}, false, 1);
  check_close("eval y", y_eval,
              {-0.1350278f, 1.344327f, 2.17803f, -0.6379794f, -0.08944137f, 0.6398129f, -1.353037f,
               -1.482764f, -0.6278494f, -0.01124286f, -0.8028975f, -1.240127f},
              1e-5f);
  // Evaluation leaves the running statistics alone.
  check_close("running_mean after eval", buffer(*bn.layer, "running_mean").tensor,
              {0.3144372f, 0.3909383f}, 1e-6f);
  check_close("num_batches_tracked after eval", buffer(*bn.layer, "num_batches_tracked").tensor,
              {1.0f}, 0);
  const auto dx_eval = run_backward(bn, {x}, y_eval, dy, false, 1);
  check_close("eval dx", dx_eval[0],
              {1.065484f, 0.2850156f, -0.9130009f, 0.4163361f, -0.2687033f, -0.5600918f,
               0.05748862f, -1.009782f, -0.5977196f, -0.371409f, -0.5204382f, 0.09297575f},
              1e-5f);
  check_close("eval dweight", weight.grad, {0.1676891f, 0.2447935f}, 1e-5f);
}

// On random input, both backends, two training steps: the output and the running statistics
// follow the definition in torch.nn.BatchNorm2d's documentation, evaluated here in double
// (biased variance to normalize, unbiased variance m/(m-1) for running_var).
BOOST_AUTO_TEST_CASE(training_follows_the_definition) {
  constexpr int64_t kN = 5, kC = 3, kH = 4, kW = 6, kM = kN * kH * kW;
  const double momentum = 0.2, eps = 1e-4;
  for (const std::string backend : {"reference", "tbb"}) {
    Rng rng(31);
    Instance bn =
        make_layer("{type: batch_norm, momentum: 0.2, eps: 0.0001}", {{kC, kH, kW}}, backend);
    randomize_params(*bn.layer, rng);
    const Tensor gamma = bn.layer->params()[0]->value, beta = bn.layer->params()[1]->value;
    std::vector<double> running_mean(kC), running_var(kC);
    for (int64_t c = 0; c < kC; ++c) {
      running_mean[c] = buffer(*bn.layer, "running_mean").tensor.data()[c];
      running_var[c] = buffer(*bn.layer, "running_var").tensor.data()[c];
    }
    const float tracked = buffer(*bn.layer, "num_batches_tracked").tensor.data()[0];
    for (int step = 0; step < 2; ++step) {
      const Tensor x = random_tensor({kN, kC, kH, kW}, rng, -3.0f, 5.0f);
      const Tensor y = run_forward(bn, {x}, true, 1);
      float worst = 0.0f;
      for (int64_t c = 0; c < kC; ++c) {
        double sum = 0.0, squares = 0.0;
        auto at = [&](int64_t n, int64_t i) { return x.data()[(n * kC + c) * kH * kW + i]; };
        for (int64_t n = 0; n < kN; ++n)
          for (int64_t i = 0; i < kH * kW; ++i) sum += at(n, i);
        const double mean = sum / kM;
        for (int64_t n = 0; n < kN; ++n)
          for (int64_t i = 0; i < kH * kW; ++i) squares += (at(n, i) - mean) * (at(n, i) - mean);
        for (int64_t n = 0; n < kN; ++n) {
          for (int64_t i = 0; i < kH * kW; ++i) {
            const double want =
                (at(n, i) - mean) / std::sqrt(squares / kM + eps) * gamma.data()[c] +
                beta.data()[c];
            worst = std::max(
                worst, static_cast<float>(std::abs(y.data()[(n * kC + c) * kH * kW + i] - want)));
          }
        }
        running_mean[c] = (1 - momentum) * running_mean[c] + momentum * mean;
        running_var[c] = (1 - momentum) * running_var[c] + momentum * squares / (kM - 1);
        BOOST_TEST(
            std::abs(buffer(*bn.layer, "running_mean").tensor.data()[c] - running_mean[c]) < 1e-6,
            backend << " running_mean[" << c << "] after step " << step);
        BOOST_TEST(std::abs(buffer(*bn.layer, "running_var").tensor.data()[c] - running_var[c]) <
                       1e-5 * running_var[c],
                   backend << " running_var[" << c << "] after step " << step);
      }
      BOOST_TEST(worst < 1e-5f, backend << " output differs by " << worst);
    }
    BOOST_TEST(buffer(*bn.layer, "num_batches_tracked").tensor.data()[0] == tracked + 2.0f);
  }
}

// The evaluation path's backward against central differences (the conformance suite checks the
// training path). The map is affine in x, so eps 1e-2 has no truncation error.
BOOST_AUTO_TEST_CASE(evaluation_gradient_matches_central_differences) {
  Rng rng(32);
  Instance bn = make_layer("{type: batch_norm}", {{3, 2, 2}}, "reference");
  randomize_params(*bn.layer, rng);
  Tensor x = random_tensor({2, 3, 2, 2}, rng);
  const Tensor weights = random_tensor(x.shape(), rng);
  const Tensor y = run_forward(bn, {x}, false, 1);
  const auto dx = run_backward(bn, {x}, y, weights, false, 1);
  std::vector<Tensor> grads;
  for (Param* p : bn.layer->params()) grads.push_back(p->grad.clone());
  auto objective = [&] { return dot(run_forward(bn, {x}, false, 1), weights); };
  auto check = [&](const std::string& what, Tensor values, const Tensor& analytic) {
    for (int64_t i = 0; i < values.numel(); ++i) {
      const float saved = values.data()[i];
      values.data()[i] = saved + 1e-2f;
      const double up = values.data()[i], plus = objective();
      values.data()[i] = saved - 1e-2f;
      const double down = values.data()[i], minus = objective();
      values.data()[i] = saved;
      const double numerical = (plus - minus) / (up - down);
      BOOST_TEST(
          std::abs(numerical - analytic.data()[i]) < 1e-3 * (1 + std::abs(numerical)),
          what << "[" << i << "]: numerical " << numerical << ", backward " << analytic.data()[i]);
    }
  };
  check("input", x, dx[0]);
  check("weight", bn.layer->params()[0]->value, grads[0]);
  check("bias", bn.layer->params()[1]->value, grads[1]);
}

BOOST_AUTO_TEST_CASE(parameters_buffers_and_defaults) {
  // Through a Graph, so the default initializers are the ones the layer asks for.
  Rng rng(3);
  strata::Graph graph(yaml("{input: [4, 3, 3], layers: [{name: bn1, type: batch_norm}]}"),
                      registries(), strata::test::backend(), rng);
  std::vector<std::string> keys;
  for (const strata::NamedTensor& t : graph.state_tensors()) keys.push_back(t.name);
  BOOST_TEST(keys == (std::vector<std::string>{"bn1/weight", "bn1/bias", "bn1/running_mean",
                                               "bn1/running_var", "bn1/num_batches_tracked"}),
             boost::test_tools::per_element());
  for (const strata::ParamRef& ref : graph.params()) {
    const float expected = ref.param->name == "weight" ? 1.0f : 0.0f;
    for (float v : ref.param->value.span()) BOOST_TEST(v == expected, ref.key);
    BOOST_TEST(ref.param->decay_mult == 0.0f, ref.key << " must not be weight-decayed");
    BOOST_TEST(ref.param->value.shape() == Shape{4});
  }
  BOOST_TEST(graph.num_parameters() == 8);
  for (strata::NamedTensor& t : graph.layer(0).buffers()) {
    const float expected = t.name == "running_var" ? 1.0f : 0.0f;
    for (float v : t.tensor.span()) BOOST_TEST(v == expected, t.name);
  }
  // affine: false has no parameters, but still its running statistics.
  Instance plain = make_layer("{type: batch_norm, affine: false}", {{3}}, "reference");
  BOOST_TEST(plain.layer->params().empty());
  BOOST_TEST(plain.layer->buffers().size() == 3u);
}

BOOST_AUTO_TEST_CASE(bad_input_is_a_clear_error) {
  STRATA_CHECK_CONTAINS(setup_error("{type: batch_norm}", {4, 5}),
                        "batch_norm expects an image sample [channels, height, width] or "
                        "features [channels], got [4, 5] (rank 2)");
  STRATA_CHECK_CONTAINS(setup_error("{type: batch_norm}", {1, 4, 5, 5}), "got [1, 4, 5, 5]");
  STRATA_CHECK_CONTAINS(
      error_of([] { registries().layers.create(yaml("{type: batch_norm, momentum: 1.5}")); }),
      "momentum: must be in [0, 1], found 1.5");
  STRATA_CHECK_CONTAINS(
      error_of([] { registries().layers.create(yaml("{type: batch_norm, eps: 0}")); }),
      "eps: must be positive, found 0");
  STRATA_CHECK_CONTAINS(
      error_of([] { registries().layers.create(yaml("{type: batch_norm, afine: false}")); }),
      "unknown key 'afine'");
  // One value per channel cannot give batch statistics.
  Rng rng(4);
  Instance bn = make_layer("{type: batch_norm}", {{3}}, "reference");
  const Tensor x = random_tensor({1, 3}, rng);
  STRATA_CHECK_CONTAINS(error_of([&] { run_forward(bn, {x}, true, 1); }),
                        "training needs more than one value per channel");
  BOOST_CHECK_NO_THROW(run_forward(bn, {x}, false, 1));  // evaluation uses running statistics
}

// ---- sync: true, across ranks played by threads (tests/support/thread_communicator.hpp) ----

// A rank's communicator that counts the collectives made through it: a synchronized batch_norm
// makes two per training forward, one per training backward, none in evaluation.
class CountingCommunicator final : public strata::Communicator {
 public:
  explicit CountingCommunicator(strata::Communicator& inner) : inner_(inner) {}
  int collectives = 0;

  std::string_view type() const override { return inner_.type(); }
  int rank() const override { return inner_.rank(); }
  int size() const override { return inner_.size(); }
  int local_rank() const override { return inner_.local_rank(); }
  int local_size() const override { return inner_.local_size(); }
  std::string host() const override { return inner_.host(); }
  Ticket start_allreduce(std::span<float> data, std::string what) override {
    ++collectives;
    return inner_.start_allreduce(data, std::move(what));
  }
  void wait(Ticket ticket) override { inner_.wait(ticket); }
  void allreduce(std::span<float> data, strata::ReduceOp op, std::string_view what) override {
    ++collectives;
    inner_.allreduce(data, op, what);
  }
  void allreduce(std::span<double> data, strata::ReduceOp op, std::string_view what) override {
    ++collectives;
    inner_.allreduce(data, op, what);
  }
  void allreduce(std::span<int64_t> data, strata::ReduceOp op, std::string_view what) override {
    ++collectives;
    inner_.allreduce(data, op, what);
  }
  void broadcast(std::span<std::byte> data, int root, std::string_view what) override {
    ++collectives;
    inner_.broadcast(data, root, what);
  }
  void barrier(std::string_view what) override {
    ++collectives;
    inner_.barrier(what);
  }
  void send(int to, int tag, std::string body) override { inner_.send(to, tag, std::move(body)); }
  std::optional<strata::Message> receive(int from, int tag,
                                         std::chrono::milliseconds timeout) override {
    return inner_.receive(from, tag, timeout);
  }
  void set_watchdog(double seconds) override { inner_.set_watchdog(seconds); }
  [[noreturn]] void abort(const std::string& message, int code) override {
    inner_.abort(message, code);
    std::terminate();  // not reached: the call through the base does not carry [[noreturn]]
  }

 private:
  strata::Communicator& inner_;
};

// Runs body(rank, communicator) once per rank of a job of `ranks` threads (a 30 s watchdog turns
// a broken collective order into a failure, not a hang); returns each rank's collectives. A rank
// that does not return fails the test.
std::vector<int> run_ranks(int ranks, const std::function<void(int, strata::Communicator&)>& body) {
  strata::test::ThreadJob job(ranks);
  std::vector<int> collectives(static_cast<std::size_t>(ranks));
  const auto outcomes = job.run([&](strata::test::ThreadCommunicator& communicator) {
    communicator.set_watchdog(30);
    CountingCommunicator counting(communicator);
    body(communicator.rank(), counting);
    collectives[static_cast<std::size_t>(communicator.rank())] = counting.collectives;
  });
  for (const auto& outcome : outcomes) {
    if (outcome.error) std::rethrow_exception(outcome.error);
    if (outcome.aborted) BOOST_FAIL("the job aborted: " << outcome.aborted->message);
  }
  return collectives;
}

// One input tensor, as Layer::forward and backward take their inputs.
std::span<const Tensor> single(const Tensor& x) { return {&x, 1}; }

// Largest |got - want| relative to the largest |want| of the tensor (1 when that is smaller).
double relative_error(const Tensor& got, const Tensor& want) {
  BOOST_TEST_REQUIRE(got.numel() == want.numel());
  return max_abs_diff(got, want) / std::max(1.0f, max_abs(want));
}

Tensor concat_batches(const std::vector<Tensor>& parts, const Shape& whole) {
  Tensor result(whole);
  int64_t offset = 0;
  for (const Tensor& part : parts) {
    std::copy(part.data(), part.data() + part.numel(), result.data() + offset);
    offset += part.numel();
  }
  BOOST_TEST_REQUIRE(offset == result.numel());
  return result;
}

// The parameters and buffers of `from` into `to` (two batch_norm layers of the same shape).
void copy_state(Layer& from, Layer& to) {
  for (std::size_t i = 0; i < from.params().size(); ++i) {
    to.params().at(i)->value.copy_from(from.params()[i]->value);
  }
  for (std::size_t i = 0; i < from.buffers().size(); ++i) {
    to.buffers().at(i).tensor.copy_from(from.buffers()[i].tensor);
  }
}

// What one training forward and backward leaves (copies): output, input gradient, parameter
// gradients and running statistics.
struct StepResult {
  Tensor y, dx, dweight, dbias, running_mean, running_var, tracked;
};

StepResult step_result(Instance& bn, const Tensor& y, const Tensor& dx) {
  return {y.clone(),
          dx.clone(),
          bn.layer->params().at(0)->grad.clone(),
          bn.layer->params().at(1)->grad.clone(),
          buffer(*bn.layer, "running_mean").tensor.clone(),
          buffer(*bn.layer, "running_var").tensor.clone(),
          buffer(*bn.layer, "num_batches_tracked").tensor.clone()};
}

// One forward and backward of `bn` on x with output gradient dy, in training or evaluation, with
// `communicator` (null: a single process).
StepResult run_step(Instance& bn, const Tensor& x, const Tensor& dy, bool training,
                    strata::Communicator* communicator = nullptr) {
  Rng unused(1);
  Context context{training, &unused, bn.backend.get()};
  context.communicator = communicator;
  Tensor y(x.shape());
  bn.layer->forward(context, single(x), y);
  std::vector<Tensor> dx{Tensor(x.shape())};
  bn.layer->backward(context, single(x), y, dy, dx);
  return step_result(bn, y, dx[0]);
}

// N ranks, each with batch_norm (sync: true) on its slice of a random batch (uneven slices, some
// empty), equal one layer on the whole batch: outputs and input gradients concatenated, parameter
// gradients summed over the ranks, running statistics on every rank, after each of two training
// steps. Tolerance: 1e-5 of the largest magnitude of each tensor (only the order of the double
// sums differs, so the float results differ by an ulp or so). dy is the same on each rank as in
// the one process: the trainer scales each rank's loss gradient by n_rank / n_global.
BOOST_AUTO_TEST_CASE(sync_over_ranks_equals_one_process) {
  struct Split {
    Shape sample;
    std::vector<int64_t> images;  // per rank
  };
  const std::vector<Split> splits = {{{3, 4, 5}, {3, 4}},    {{3, 4, 5}, {7, 0}},
                                     {{3, 4, 5}, {2, 0, 5}}, {{3, 4, 5}, {1, 4, 2}},
                                     {{6}, {0, 5, 3}},       {{2, 1, 1}, {2, 0}}};
  const std::string layer_yaml = "{type: batch_norm, momentum: 0.3, eps: 0.001, sync: true}";
  Rng rng(33);
  double worst = 0;
  for (const Split& split : splits) {
    const int ranks = static_cast<int>(split.images.size());
    const int64_t total = std::accumulate(split.images.begin(), split.images.end(), int64_t{0});
    const std::string label =
        fmt::format("sample {} split {}", split.sample.str(), fmt::join(split.images, "+"));
    // One process: sync: true without a communicator, which must be batch_norm as it always was.
    Instance one = make_layer(layer_yaml, {split.sample}, "reference");
    Instance plain =
        make_layer("{type: batch_norm, momentum: 0.3, eps: 0.001}", {split.sample}, "reference");
    randomize_params(*one.layer, rng);
    std::vector<Instance> per_rank;
    for (int r = 0; r < ranks; ++r) {
      per_rank.push_back(make_layer(layer_yaml, {split.sample}, r % 2 ? "tbb" : "reference"));
    }
    copy_state(*one.layer, *plain.layer);
    for (Instance& copy : per_rank) copy_state(*one.layer, *copy.layer);
    for (int step = 0; step < 2; ++step) {
      const Tensor x = random_tensor(split.sample.with_batch(total), rng, -2.0f, 3.0f);
      const Tensor dy = random_tensor(x.shape(), rng);
      const StepResult want = run_step(one, x, dy, true);
      const StepResult unsynced = run_step(plain, x, dy, true);
      const std::string same = label + ": sync without a communicator differs from sync: false";
      BOOST_TEST(max_abs_diff(unsynced.y, want.y) == 0.0f, same);
      BOOST_TEST(max_abs_diff(unsynced.dx, want.dx) == 0.0f, same);
      BOOST_TEST(max_abs_diff(unsynced.dweight, want.dweight) == 0.0f, same);
      BOOST_TEST(max_abs_diff(unsynced.dbias, want.dbias) == 0.0f, same);
      BOOST_TEST(max_abs_diff(unsynced.running_mean, want.running_mean) == 0.0f, same);
      BOOST_TEST(max_abs_diff(unsynced.running_var, want.running_var) == 0.0f, same);

      std::vector<StepResult> got(static_cast<std::size_t>(ranks));
      const std::vector<int> calls =
          run_ranks(ranks, [&](int r, strata::Communicator& communicator) {
            int64_t begin = 0;
            for (int k = 0; k < r; ++k) begin += split.images[static_cast<std::size_t>(k)];
            const int64_t end = begin + split.images[static_cast<std::size_t>(r)];
            got[static_cast<std::size_t>(r)] =
                run_step(per_rank[static_cast<std::size_t>(r)], x.batch_slice(begin, end).clone(),
                         dy.batch_slice(begin, end).clone(), true, &communicator);
          });

      std::vector<Tensor> ys, dxs;
      Tensor dweight(want.dweight.shape()), dbias(want.dbias.shape());
      for (int r = 0; r < ranks; ++r) {
        const StepResult& rank = got[static_cast<std::size_t>(r)];
        ys.push_back(rank.y);
        dxs.push_back(rank.dx);
        for (int64_t c = 0; c < dweight.numel(); ++c) {
          dweight.data()[c] += rank.dweight.data()[c];
          dbias.data()[c] += rank.dbias.data()[c];
        }
        // Every rank holds the same running statistics, bit for bit.
        BOOST_TEST(max_abs_diff(rank.running_mean, got[0].running_mean) == 0.0f, label);
        BOOST_TEST(max_abs_diff(rank.running_var, got[0].running_var) == 0.0f, label);
        BOOST_TEST(max_abs_diff(rank.tracked, want.tracked) == 0.0f, label);
        // Two allreduces per training forward, one per training backward, on every rank.
        BOOST_TEST(calls[static_cast<std::size_t>(r)] == 3, label);
      }
      const double tolerance = 1e-5;
      const std::vector<std::pair<const char*, double>> errors = {
          {"y", relative_error(concat_batches(ys, x.shape()), want.y)},
          {"dx", relative_error(concat_batches(dxs, x.shape()), want.dx)},
          {"dweight", relative_error(dweight, want.dweight)},
          {"dbias", relative_error(dbias, want.dbias)},
          {"running_mean", relative_error(got[0].running_mean, want.running_mean)},
          {"running_var", relative_error(got[0].running_var, want.running_var)}};
      for (const auto& [what, error] : errors) {
        BOOST_TEST(error <= tolerance, label << " step " << step << ": " << what);
        worst = std::max(worst, error);
      }
    }
  }
  BOOST_TEST_MESSAGE("sync batch_norm: largest relative difference from one process " << worst);
}

// One rank: the synchronized path is the unsynchronized one, bit for bit (the MPI path with one
// rank equals a run without MPI); in evaluation nothing is reduced.
BOOST_AUTO_TEST_CASE(sync_with_one_rank_is_bitwise_the_single_process) {
  Rng rng(34);
  Instance synced = make_layer("{type: batch_norm, sync: true}", {{4, 3, 3}}, "tbb");
  Instance plain = make_layer("{type: batch_norm}", {{4, 3, 3}}, "tbb");
  randomize_params(*synced.layer, rng);
  copy_state(*synced.layer, *plain.layer);
  const Tensor x = random_tensor({6, 4, 3, 3}, rng, -1.0f, 4.0f);
  const Tensor dy = random_tensor(x.shape(), rng);
  const StepResult want = run_step(plain, x, dy, true);
  StepResult got, evaluated;
  const std::vector<int> calls = run_ranks(1, [&](int, strata::Communicator& communicator) {
    got = run_step(synced, x, dy, true, &communicator);
    evaluated = run_step(synced, x, dy, false, &communicator);
  });
  BOOST_TEST(calls[0] == 3, "evaluation must not reduce");
  BOOST_TEST(max_abs_diff(got.y, want.y) == 0.0f);
  BOOST_TEST(max_abs_diff(got.dx, want.dx) == 0.0f);
  BOOST_TEST(max_abs_diff(got.dweight, want.dweight) == 0.0f);
  BOOST_TEST(max_abs_diff(got.dbias, want.dbias) == 0.0f);
  BOOST_TEST(max_abs_diff(got.running_mean, want.running_mean) == 0.0f);
  BOOST_TEST(max_abs_diff(got.running_var, want.running_var) == 0.0f);
  BOOST_TEST(max_abs_diff(evaluated.y, run_forward(plain, {x}, false, 1)) == 0.0f);
}

// Too few values over all the ranks is the same error on every rank (after the first collective,
// so none waits for the others); a backward that does not match its forward's synchronization is
// an error.
BOOST_AUTO_TEST_CASE(sync_errors) {
  Rng rng(35);
  const Tensor one_image = random_tensor({1, 3}, rng);
  const Tensor no_image({0, 3});
  std::vector<Instance> per_rank;
  for (int r = 0; r < 2; ++r)
    per_rank.push_back(make_layer("{type: batch_norm, sync: true}", {{3}}, "reference"));
  std::vector<std::string> messages(2);
  run_ranks(2, [&](int r, strata::Communicator& communicator) {
    Rng unused(1);
    Context context{true, &unused, nullptr};
    context.communicator = &communicator;
    Tensor y(r == 0 ? one_image.shape() : no_image.shape());
    try {
      per_rank[static_cast<std::size_t>(r)].layer->forward(
          context, single(r == 0 ? one_image : no_image), y);
    } catch (const strata::Error& error) {
      messages[static_cast<std::size_t>(r)] = error.what();
    }
  });
  for (const std::string& message : messages) {
    STRATA_CHECK_CONTAINS(message,
                          "training needs more than one value per channel to compute "
                          "batch statistics, got 1 per channel over the 2 ranks");
  }
  // A synchronized forward followed by a backward without the communicator.
  const Tensor x = random_tensor({4, 3}, rng);
  Instance bn = make_layer("{type: batch_norm, sync: true}", {{3}}, "reference");
  Tensor y(x.shape());
  run_ranks(1, [&](int, strata::Communicator& communicator) {
    Rng unused(1);
    Context context{true, &unused, nullptr};
    context.communicator = &communicator;
    bn.layer->forward(context, single(x), y);
  });
  STRATA_CHECK_CONTAINS(error_of([&] { run_backward(bn, {x}, y, x, true, 1); }),
                        "sync: backward does not reduce across ranks, but the training forward it "
                        "follows did");
  STRATA_CHECK_CONTAINS(
      error_of([] { registries().layers.create(yaml("{type: batch_norm, sync: yes please}")); }),
      "sync");
  // The trait that makes the trainer run every pass on every rank.
  BOOST_TEST(registries().layers.create(yaml("{type: batch_norm, sync: true}"))->communicates());
  BOOST_TEST(!registries().layers.create(yaml("{type: batch_norm}"))->communicates());
}

BOOST_AUTO_TEST_SUITE_END()

// ------------------------------------------------------------------------------------------------
// add and concat, alone and inside a Graph
// ------------------------------------------------------------------------------------------------

BOOST_AUTO_TEST_SUITE(joins)

BOOST_AUTO_TEST_CASE(add_sums_its_inputs) {
  Rng rng(41);
  for (const std::string backend : {"reference", "tbb"}) {
    Instance add = make_layer("{type: add}", {{3, 5, 5}, {3, 5, 5}, {3, 5, 5}}, backend);
    // Large enough that tbb splits the loop.
    std::vector<Tensor> x;
    for (int k = 0; k < 3; ++k) x.push_back(random_tensor({300, 3, 5, 5}, rng));
    const Tensor y = run_forward(add, x, true, 1);
    bool exact = true;
    for (int64_t i = 0; i < y.numel(); ++i) {
      exact = exact && y.data()[i] == (x[0].data()[i] + x[1].data()[i]) + x[2].data()[i];
    }
    BOOST_TEST(exact, backend << ": y != x0 + x1 + x2");
    const Tensor dy = random_tensor(y.shape(), rng);
    const auto dx = run_backward(add, x, y, dy, true, 1);
    for (const Tensor& d : dx) BOOST_TEST(max_abs_diff(d, dy) == 0.0f);
  }
}

BOOST_AUTO_TEST_CASE(concat_stacks_channels_in_input_order) {
  Rng rng(42);
  for (const std::string backend : {"reference", "tbb"}) {
    Instance concat = make_layer("{type: concat}", {{2, 3, 4}, {1, 3, 4}, {3, 3, 4}}, backend);
    BOOST_TEST_REQUIRE(concat.output == (Shape{6, 3, 4}));
    const std::vector<int64_t> channels = {2, 1, 3};
    std::vector<Tensor> x;
    for (int64_t c : channels) x.push_back(random_tensor({400, c, 3, 4}, rng));
    const Tensor y = run_forward(concat, x, true, 1);
    const Tensor dy = random_tensor(y.shape(), rng);
    const auto dx = run_backward(concat, x, y, dy, true, 1);
    bool forward_ok = true, backward_ok = true;
    for (int64_t n = 0; n < 400; ++n) {
      int64_t base = 0;
      for (std::size_t k = 0; k < 3; ++k) {
        for (int64_t c = 0; c < channels[k]; ++c) {
          for (int64_t i = 0; i < 12; ++i) {
            const int64_t from = (n * channels[k] + c) * 12 + i;
            const int64_t to = (n * 6 + base + c) * 12 + i;
            forward_ok = forward_ok && y.data()[to] == x[k].data()[from];
            backward_ok = backward_ok && dx[k].data()[from] == dy.data()[to];
          }
        }
        base += channels[k];
      }
    }
    BOOST_TEST(forward_ok, backend << ": forward does not place channels in input order");
    BOOST_TEST(backward_ok, backend << ": backward does not hand each input its slice");
  }
}

// multiply: the same-shape product and the squeeze-and-excitation gate [C, 1, 1] over [C, H, W],
// with the gate as either input, on both backends, at a batch large enough that tbb splits it.
BOOST_AUTO_TEST_CASE(multiply_products_and_channel_gates) {
  Rng rng(43);
  for (const std::string backend : {"reference", "tbb"}) {
    Instance same = make_layer("{type: multiply}", {{3, 5, 7}, {3, 5, 7}}, backend);
    const std::vector<Tensor> ab = {random_tensor({200, 3, 5, 7}, rng),
                                    random_tensor({200, 3, 5, 7}, rng)};
    const Tensor y = run_forward(same, ab, true, 1);
    const Tensor dy = random_tensor(y.shape(), rng);
    const auto d = run_backward(same, ab, y, dy, true, 1);
    bool exact = true;
    for (int64_t i = 0; i < y.numel(); ++i) {
      exact = exact && y.data()[i] == ab[0].data()[i] * ab[1].data()[i] &&
              d[0].data()[i] == dy.data()[i] * ab[1].data()[i] &&
              d[1].data()[i] == dy.data()[i] * ab[0].data()[i];
    }
    BOOST_TEST(exact, backend << ": y != a * b, or its gradients are not dy * b and dy * a");

    for (const bool gate_first : {false, true}) {
      const Shape map{4, 6, 5}, gate{4, 1, 1};
      Instance gated = make_layer(
          "{type: multiply}",
          gate_first ? std::vector<Shape>{gate, map} : std::vector<Shape>{map, gate}, backend);
      BOOST_TEST_REQUIRE(gated.output == map);
      const Tensor x = random_tensor(map.with_batch(150), rng);
      const Tensor g = random_tensor(gate.with_batch(150), rng);
      const std::vector<Tensor> inputs =
          gate_first ? std::vector<Tensor>{g, x} : std::vector<Tensor>{x, g};
      const Tensor out = run_forward(gated, inputs, true, 1);
      const Tensor dout = random_tensor(out.shape(), rng);
      const auto din = run_backward(gated, inputs, out, dout, true, 1);
      const Tensor& dx = din[gate_first ? 1 : 0];
      const Tensor& dg = din[gate_first ? 0 : 1];
      bool forward_ok = true, dx_ok = true;
      double worst_dg = 0;
      for (int64_t p = 0; p < 150 * 4; ++p) {
        double sum = 0;
        for (int64_t i = 0; i < 30; ++i) {
          const int64_t at = p * 30 + i;
          forward_ok = forward_ok && out.data()[at] == x.data()[at] * g.data()[p];
          dx_ok = dx_ok && dx.data()[at] == dout.data()[at] * g.data()[p];
          sum += static_cast<double>(dout.data()[at]) * x.data()[at];
        }
        worst_dg = std::max(worst_dg, std::abs(sum - dg.data()[p]));
      }
      BOOST_TEST(forward_ok, backend << " gate_first " << gate_first << ": y != x * g[c]");
      BOOST_TEST(dx_ok, backend << " gate_first " << gate_first << ": dx != dy * g[c]");
      BOOST_TEST(worst_dg < 1e-5, backend << " gate_first " << gate_first
                                          << ": dg is not the plane sum of dy * x, off by "
                                          << worst_dg);
    }
  }
}

BOOST_AUTO_TEST_CASE(mismatched_inputs_are_clear_errors) {
  auto error = [](const std::string& layer_yaml, const std::vector<Shape>& inputs) {
    return error_of([&] { make_layer(layer_yaml, inputs, "reference"); });
  };
  STRATA_CHECK_CONTAINS(error("{type: add}", {{3, 4, 4}, {3, 4, 4}, {3, 5, 4}}),
                        "add needs inputs of identical shape, but input 0 is [3, 4, 4] and input "
                        "2 is [3, 5, 4]");
  STRATA_CHECK_CONTAINS(error("{type: add}", {{3, 4, 4}}), "takes at least 2 inputs, got 1");
  STRATA_CHECK_CONTAINS(error("{type: concat}", {{3, 8, 8}, {2, 7, 7}}),
                        "the spatial sizes must agree, but input 0 is [3, 8, 8] (8x8) and input 1 "
                        "is [2, 7, 7] (7x7)");
  STRATA_CHECK_CONTAINS(error("{type: concat}", {{3, 8, 8}, {24}}),
                        "concat needs inputs of the same rank, but input 0 is [3, 8, 8] and "
                        "input 1 is [24]");
  STRATA_CHECK_CONTAINS(error("{type: concat}", {{3, 8}, {3, 8}}), "input 0 is [3, 8]");
  STRATA_CHECK_CONTAINS(error("{type: concat}", {{3, 8, 8}}), "takes at least 2 inputs, got 1");
  // multiply broadcasts only a [C, 1, 1] gate over [C, H, W] of the same C.
  for (const auto& [a, b] : std::vector<std::pair<Shape, Shape>>{{{3, 4, 4}, {4, 1, 1}},
                                                                 {{3}, {3, 4, 4}},
                                                                 {{1, 4, 4}, {3, 4, 4}},
                                                                 {{3, 4, 4}, {3, 4, 1}},
                                                                 {{3, 4, 4}, {3, 5, 4}}}) {
    STRATA_CHECK_CONTAINS(error("{type: multiply}", {a, b}),
                          "multiply needs two inputs of the same shape, or a per-channel gate "
                          "[C, 1, 1] and a feature map [C, H, W] with the same C, but input 0 is " +
                              a.str() + " and input 1 is " + b.str());
  }
  STRATA_CHECK_CONTAINS(error("{type: multiply}", {{3, 4, 4}, {3, 4, 4}, {3, 4, 4}}),
                        "takes 2 input(s), got 3");

  // Inside a model: the file position, the layer and both producers are named.
  Rng rng(1);
  const std::string graph_error = error_of([&] {
    strata::Graph graph(Config::parse_string(R"(
input: [3, 8, 8]
layers:
  - {name: a, type: conv2d, out_channels: 4, kernel: 3, padding: 1}
  - {name: b, type: max_pool, kernel: 2, inputs: input}
  - {name: mixed, type: concat, inputs: [a, b]}
)",
                                             "net.yaml"),
                        registries(), strata::test::backend(), rng);
  });
  STRATA_CHECK_CONTAINS(graph_error, "net.yaml:6:5: layers[2]");
  STRATA_CHECK_CONTAINS(graph_error, "(8x8) and input 1 is [3, 4, 4] (4x4)");
  STRATA_CHECK_CONTAINS(graph_error, "'a' gives [4, 8, 8], 'b' gives [3, 4, 4]");
}

// A small Graph from YAML in which tensors fan out: act1 is read by conv2, conv3, sum and mixed;
// conv2 by sum and mixed. Every parameter's gradient from Graph::backward must match central
// differences of the whole network. The graph sums the gradients of a tensor's consumers; an
// error in that sum, or in add's or concat's backward, shows up in conv1's gradients.
// Objective L = sum(out * R); eps 1e-2 on float parameters of order 1 with tanh (smooth), so the
// truncation error is ~1e-5 relative; tolerance 2e-3 relative to max(|numerical|, rms, 1e-2).
BOOST_AUTO_TEST_CASE(fan_out_gradients_through_add_and_concat) {
  for (const std::string backend : {"reference", "tbb"}) {
    Rng rng(43);
    strata::Graph graph(Config::parse_string(R"(
input: [2, 5, 5]
layers:
  - {name: conv1, type: conv2d, out_channels: 3, kernel: 3, padding: 1}
  - {name: act1, type: tanh}
  - {name: conv2, type: conv2d, out_channels: 3, kernel: 3, padding: 1}
  - {name: conv3, type: conv2d, out_channels: 3, kernel: 1, inputs: act1}
  - {name: sum, type: add, inputs: [act1, conv2, conv3]}
  - {name: act2, type: tanh}
  - {name: mixed, type: concat, inputs: [act2, act1, conv2]}
  - {name: fc, type: linear, out_features: 4}
)",
                                             "net.yaml"),
                        registries(), strata::test::backend(backend), rng);
    BOOST_TEST(graph.input_names(4) == (std::vector<std::string>{"act1", "conv2", "conv3"}),
               boost::test_tools::per_element());
    BOOST_TEST(graph.output_shape() == Shape{4});
    auto executor = registries().backends.create(backend, Config{});
    Context context{true, &rng, executor.get()};
    const Tensor x = random_tensor({3, 2, 5, 5}, rng);
    const Tensor weights = random_tensor({3, 4}, rng);
    auto objective = [&] { return dot(graph.forward(context, x), weights); };
    objective();
    // The add's output really is the sum of its three inputs.
    const Tensor& act1 = graph.activation("act1");
    const Tensor& conv2 = graph.activation("conv2");
    const Tensor& conv3 = graph.activation("conv3");
    const Tensor& sum = graph.activation("sum");
    float worst = 0.0f;
    for (int64_t i = 0; i < sum.numel(); ++i) {
      worst = std::max(
          worst, std::abs(sum.data()[i] - (act1.data()[i] + conv2.data()[i] + conv3.data()[i])));
    }
    BOOST_TEST(worst < 1e-6f);

    graph.backward(context, weights);
    int64_t checked = 0;
    for (const strata::ParamRef& ref : graph.params()) {
      const Tensor analytic = ref.param->grad.clone();
      const double scale = std::max(rms(analytic), 1e-2);
      for (int64_t i = 0; i < ref.param->value.numel(); ++i) {
        float& v = ref.param->value.data()[i];
        const float saved = v;
        v = saved + 1e-2f;
        const double up = v, plus = objective();
        v = saved - 1e-2f;
        const double down = v, minus = objective();
        v = saved;
        const double numerical = (plus - minus) / (up - down);
        const double error = std::abs(numerical - analytic.data()[i]);
        BOOST_TEST(error <= 2e-3 * std::max(std::abs(numerical), scale),
                   backend << " " << ref.key << "[" << i << "]: numerical " << numerical
                           << ", backward " << analytic.data()[i]);
        ++checked;
      }
    }
    BOOST_TEST(checked == graph.num_parameters());
  }
}

// Layers whose output nobody reads (side branches, e.g. a softmax kept for `strata forward
// --layers`) take no part in backward: the gradients equal those of the model without them, and
// their own parameters get zero gradients.
BOOST_AUTO_TEST_CASE(side_branches_get_no_gradient) {
  const std::string trunk = R"(
input: [2, 4, 4]
layers:
  - {name: conv1, type: conv2d, out_channels: 3, kernel: 3, padding: 1}
  - {name: act1, type: tanh}
  - {name: side_conv, type: conv2d, out_channels: 2, kernel: 1, inputs: act1}
  - {name: side_prob, type: softmax, inputs: side_conv}
  - {name: side_pool, type: global_avg_pool, inputs: conv1}
  - {name: fc, type: linear, out_features: 3, inputs: act1}
)";
  const std::string plain = R"(
input: [2, 4, 4]
layers:
  - {name: conv1, type: conv2d, out_channels: 3, kernel: 3, padding: 1}
  - {name: act1, type: tanh}
  - {name: fc, type: linear, out_features: 3}
)";
  Rng rng(44);
  strata::Graph with_side(Config::parse_string(trunk, "side.yaml"), registries(), strata::test::backend(), rng);
  strata::Graph without(Config::parse_string(plain, "plain.yaml"), registries(), strata::test::backend(), rng);
  for (const strata::ParamRef& ref : without.params()) {
    for (const strata::ParamRef& other : with_side.params()) {
      if (other.key == ref.key) ref.param->value.copy_from(other.param->value);
    }
  }
  auto executor = registries().backends.create("reference", Config{});
  Context context{true, &rng, executor.get()};
  const Tensor x = random_tensor({2, 2, 4, 4}, rng);
  const Tensor dy = random_tensor({2, 3}, rng);
  for (strata::Graph* graph : {&with_side, &without}) {
    graph->forward(context, x);
    for (const strata::ParamRef& ref : graph->params()) ref.param->grad.fill(7.0f);
    graph->backward(context, dy);
  }
  for (const strata::ParamRef& ref : with_side.params()) {
    bool found = false;
    for (const strata::ParamRef& other : without.params()) {
      if (other.key != ref.key) continue;
      found = true;
      BOOST_TEST(max_abs_diff(ref.param->grad, other.param->grad) == 0.0f, ref.key);
    }
    if (!found) BOOST_TEST(max_abs(ref.param->grad) == 0.0f, ref.key << " is on a side branch");
  }
}

BOOST_AUTO_TEST_SUITE_END()

// ------------------------------------------------------------------------------------------------
// lrn, softmax, global_avg_pool
// ------------------------------------------------------------------------------------------------

BOOST_AUTO_TEST_SUITE(normalization_and_heads)

// Values printed by PyTorch 1.13 for x = [sin(0.9 i) * 2 + 0.05 i for i in range(10)] as
// [1, 5, 1, 2], dy = [cos(1.3 i)], nn.LocalResponseNorm(size, alpha=0.6, beta=0.75, k=1.5).
// size 2 (even) checks the asymmetric window, size 3 the symmetric one.
BOOST_AUTO_TEST_CASE(lrn_matches_pytorch) {
  std::vector<float> x_values, dy_values;
  for (int i = 0; i < 10; ++i) {
    x_values.push_back(static_cast<float>(std::sin(i * 0.9) * 2 + 0.05 * i));
    dy_values.push_back(static_cast<float>(std::cos(i * 1.3)));
  }
  const Tensor x = batch_norm::tensor_from({1, 5, 1, 2}, x_values);
  const Tensor dy = batch_norm::tensor_from({1, 5, 1, 2}, dy_values);
  struct Expect {
    int size;
    std::vector<float> y, dx;
  };
  const std::vector<Expect> cases = {
      {2,
       {0.0f, 0.8701314f, 0.9568182f, 0.4925761f, -0.3083642f, -0.8151603f, -0.7124118f, 0.1979448f,
        0.8404503f, 0.985594f},
       {0.737788f, 0.1703976f, -0.08053157f, -0.1588309f, 0.1899077f, 0.178983f, -0.06325275f,
        -0.5094296f, -0.1033973f, 0.05636812f}},
      {3,
       {0.0f, 0.8875132f, 1.051308f, 0.4634347f, -0.3214242f, -0.9091547f, -0.5923147f, 0.1583755f,
        0.9705548f, 1.1436f},
       {0.5287879f, 0.1532404f, -0.1786999f, -0.2151412f, 0.1299977f, 0.2394289f, -0.07753284f,
        -0.3736649f, -0.1420529f, 0.1442411f}},
  };
  for (const Expect& expect : cases) {
    for (const std::string backend : {"reference", "tbb"}) {
      Instance lrn = make_layer(
          fmt::format("{{type: lrn, size: {}, alpha: 0.6, beta: 0.75, k: 1.5}}", expect.size),
          {{5, 1, 2}}, backend);
      const Tensor y = run_forward(lrn, {x}, true, 1);
      batch_norm::check_close(fmt::format("{} size {} y", backend, expect.size), y, expect.y,
                              1e-5f);
      batch_norm::check_close(fmt::format("{} size {} dx", backend, expect.size),
                              run_backward(lrn, {x}, y, dy, true, 1)[0], expect.dx, 1e-5f);
    }
  }
}

BOOST_AUTO_TEST_CASE(lrn_errors) {
  auto create = [](const std::string& text) {
    return error_of([&] { registries().layers.create(yaml(text)); });
  };
  STRATA_CHECK_CONTAINS(create("{type: lrn, size: 0}"), "size: must be at least 1, found 0");
  STRATA_CHECK_CONTAINS(create("{type: lrn}"), "missing required key 'size'");
  STRATA_CHECK_CONTAINS(create("{type: lrn, size: 5, k: 0}"), "k: must be positive, found 0");
  STRATA_CHECK_CONTAINS(create("{type: lrn, size: 5, alpha: -1}"), "alpha: must be >= 0");
  STRATA_CHECK_CONTAINS(create("{type: lrn, size: 5, bias: 2}"), "unknown key 'bias'");
  STRATA_CHECK_CONTAINS(setup_error("{type: lrn, size: 5}", {96}),
                        "lrn expects an image sample [channels, height, width], got [96]");
}

BOOST_AUTO_TEST_CASE(softmax_is_a_distribution_per_sample_and_position) {
  Rng rng(51);
  for (const std::string backend : {"reference", "tbb"}) {
    // Logits [N, F]: each row sums to 1, and shifting a row changes nothing (stability).
    Instance features = make_layer("{type: softmax}", {{10}}, backend);
    Tensor logits = random_tensor({3000, 10}, rng, -5.0f, 5.0f);
    const Tensor y = run_forward(features, {logits}, false, 1);
    float worst_sum = 0.0f, worst_value = 0.0f;
    for (int64_t n = 0; n < 3000; ++n) {
      double sum = 0.0, denominator = 0.0;
      for (int64_t f = 0; f < 10; ++f) denominator += std::exp(double(logits.data()[n * 10 + f]));
      for (int64_t f = 0; f < 10; ++f) {
        sum += y.data()[n * 10 + f];
        const double want = std::exp(double(logits.data()[n * 10 + f])) / denominator;
        worst_value = std::max(worst_value, float(std::abs(y.data()[n * 10 + f] - want)));
      }
      worst_sum = std::max(worst_sum, float(std::abs(sum - 1.0)));
    }
    BOOST_TEST(worst_sum < 1e-5f, backend);
    BOOST_TEST(worst_value < 1e-6f, backend);
    Tensor shifted = logits.clone();
    for (float& v : shifted.span()) v += 1000.0f;  // exp(1000) overflows without the max shift
    const Tensor y_shifted = run_forward(features, {shifted}, false, 1);
    BOOST_TEST(all_finite(y_shifted));
    BOOST_TEST(max_abs_diff(y_shifted, y) < 1e-4f, backend);

    // Images [N, C, H, W]: over the channels at each position, like torch.softmax(x, dim=1).
    Instance image = make_layer("{type: softmax}", {{3, 2, 2}}, backend);
    const Tensor x = random_tensor({2, 3, 2, 2}, rng, -3.0f, 3.0f);
    const Tensor z = run_forward(image, {x}, false, 1);
    float worst = 0.0f;
    for (int64_t n = 0; n < 2; ++n) {
      for (int64_t p = 0; p < 4; ++p) {
        double denominator = 0.0;
        for (int64_t c = 0; c < 3; ++c)
          denominator += std::exp(double(x.data()[(n * 3 + c) * 4 + p]));
        for (int64_t c = 0; c < 3; ++c) {
          const int64_t i = (n * 3 + c) * 4 + p;
          worst = std::max(
              worst, float(std::abs(z.data()[i] - std::exp(double(x.data()[i])) / denominator)));
        }
      }
    }
    BOOST_TEST(worst < 1e-6f, backend);
  }
}

BOOST_AUTO_TEST_CASE(global_avg_pool_is_the_channel_mean) {
  Rng rng(52);
  for (const std::string backend : {"reference", "tbb"}) {
    Instance pool = make_layer("{type: global_avg_pool}", {{5, 7, 6}}, backend);
    BOOST_TEST_REQUIRE(pool.output == (Shape{5, 1, 1}));
    const Tensor x = random_tensor({300, 5, 7, 6}, rng);
    const Tensor y = run_forward(pool, {x}, true, 1);
    const Tensor dy = random_tensor(y.shape(), rng);
    const Tensor dx = run_backward(pool, {x}, y, dy, true, 1)[0];
    float worst = 0.0f, worst_grad = 0.0f;
    for (int64_t plane = 0; plane < 300 * 5; ++plane) {
      double sum = 0.0;
      for (int64_t i = 0; i < 42; ++i) sum += x.data()[plane * 42 + i];
      worst = std::max(worst, float(std::abs(y.data()[plane] - sum / 42)));
      for (int64_t i = 0; i < 42; ++i) {
        worst_grad =
            std::max(worst_grad, std::abs(dx.data()[plane * 42 + i] - dy.data()[plane] / 42));
      }
    }
    BOOST_TEST(worst < 1e-6f, backend);
    BOOST_TEST(worst_grad < 1e-7f, backend);
  }
  STRATA_CHECK_CONTAINS(
      setup_error("{type: global_avg_pool}", {64}),
      "global_avg_pool expects an image sample [channels, height, width], got [64]");
  STRATA_CHECK_CONTAINS(
      error_of([] { registries().layers.create(yaml("{type: global_avg_pool, kernel: 7}")); }),
      "unknown key 'kernel'");
}

BOOST_AUTO_TEST_SUITE_END()

// ------------------------------------------------------------------------------------------------
// softmax_cross_entropy
// ------------------------------------------------------------------------------------------------

BOOST_AUTO_TEST_SUITE(loss)

Tensor tensor_of(const Shape& shape, std::initializer_list<float> values) {
  Tensor t(shape);
  std::copy(values.begin(), values.end(), t.data());
  return t;
}

BOOST_AUTO_TEST_CASE(hand_computed) {
  auto loss = registries().losses.create("softmax_cross_entropy", Config{});
  const Tensor logits = tensor_of({2, 3}, {1, 2, 3, 1, 0, -1});
  const std::vector<int32_t> labels = {2, 1};
  Tensor grad({2, 3});
  // Row 0: log(e^1 + e^2 + e^3) - 3 = log(1 + e^-1 + e^-2) = 0.4076059644.
  // Row 1: log(e^1 + e^0 + e^-1) - 0 = 1.4076059644. Mean 0.9076059644.
  const float value = loss->forward_backward(logits, labels, &grad);
  BOOST_TEST(value == 0.9076059644f, boost::test_tools::tolerance(1e-6f));
  // softmax([1, 2, 3]) = [0.0900306, 0.2447285, 0.6652410]; gradient (softmax - onehot) / 2.
  const float expected[] = {0.0900306f / 2, 0.2447285f / 2,       (0.6652410f - 1) / 2,
                            0.6652410f / 2, (0.2447285f - 1) / 2, 0.0900306f / 2};
  for (int i = 0; i < 6; ++i) {
    BOOST_TEST(grad.data()[i] == expected[i], boost::test_tools::tolerance(1e-5f));
  }
  // Without a gradient tensor: the same value.
  BOOST_TEST(loss->forward_backward(logits, labels, nullptr) == value);
}

BOOST_AUTO_TEST_CASE(large_logits_are_stable) {
  auto loss = registries().losses.create("softmax_cross_entropy", Config{});
  const Tensor logits = tensor_of({1, 2}, {1000.0f, 0.0f});
  const std::vector<int32_t> labels = {1};
  Tensor grad({1, 2});
  BOOST_TEST(loss->forward_backward(logits, labels, &grad) == 1000.0f);
  BOOST_TEST(grad.data()[0] == 1.0f);
  BOOST_TEST(grad.data()[1] == -1.0f);
  const std::vector<int32_t> right = {0};
  BOOST_TEST(loss->forward_backward(logits, right, &grad) == 0.0f);
}

BOOST_AUTO_TEST_CASE(gradient_matches_central_differences) {
  auto loss = registries().losses.create("softmax_cross_entropy", Config{});
  Rng rng(8);
  Tensor logits = random_tensor({4, 5}, rng, -3.0f, 3.0f);
  const std::vector<int32_t> labels = {0, 4, 2, 2};
  Tensor grad({4, 5});
  loss->forward_backward(logits, labels, &grad);
  for (int64_t i = 0; i < logits.numel(); ++i) {
    // The loss is smooth: eps 1e-2 (truncation ~1e-5); the float loss carries ~1e-7 relative
    // rounding, ~1e-5 after dividing by 2 eps. Tolerance 2e-4.
    float& v = logits.data()[i];
    const float saved = v;
    v = saved + 1e-2f;
    const double up = v, plus = loss->forward_backward(logits, labels, nullptr);
    v = saved - 1e-2f;
    const double down = v, minus = loss->forward_backward(logits, labels, nullptr);
    v = saved;
    BOOST_TEST(std::abs((plus - minus) / (up - down) - grad.data()[i]) < 2e-4, "logit " << i);
  }
}

// CrossEntropyLoss(label_smoothing=0.1) in PyTorch 1.13 on the logits of `hand_computed`:
// loss 0.9576058983802795, gradient [[0.02834862, 0.10569758, -0.13404617],
// [0.31595382, -0.34430242, 0.02834862]].
BOOST_AUTO_TEST_CASE(label_smoothing_matches_pytorch) {
  auto loss =
      registries().losses.create(yaml("{type: softmax_cross_entropy, label_smoothing: 0.1}"));
  const Tensor logits = tensor_of({2, 3}, {1, 2, 3, 1, 0, -1});
  const std::vector<int32_t> labels = {2, 1};
  Tensor grad({2, 3});
  BOOST_TEST(loss->forward_backward(logits, labels, &grad) == 0.9576058983802795f,
             boost::test_tools::tolerance(1e-6f));
  const float expected[] = {0.02834862f, 0.10569758f,  -0.13404617f,
                            0.31595382f, -0.34430242f, 0.02834862f};
  for (int i = 0; i < 6; ++i) {
    BOOST_TEST(grad.data()[i] == expected[i], boost::test_tools::tolerance(1e-5f));
  }
  // Smoothing 0 is the plain loss, bit for bit; the chance value stays ln(classes).
  auto plain = registries().losses.create("softmax_cross_entropy", Config{});
  auto zero = registries().losses.create(yaml("{type: softmax_cross_entropy, label_smoothing: 0}"));
  Rng rng(9);
  const Tensor random_logits = random_tensor({6, 7}, rng, -4.0f, 4.0f);
  const std::vector<int32_t> random_labels = {0, 6, 3, 3, 1, 5};
  Tensor g0({6, 7}), g1({6, 7});
  BOOST_TEST(plain->forward_backward(random_logits, random_labels, &g0) ==
             zero->forward_backward(random_logits, random_labels, &g1));
  BOOST_TEST(max_abs_diff(g0, g1) == 0.0f);
  BOOST_TEST(*loss->chance_loss(7) == std::log(7.0), boost::test_tools::tolerance(1e-12));
  // The gradient of a smoothed loss against central differences (as above).
  auto smoothed =
      registries().losses.create(yaml("{type: softmax_cross_entropy, label_smoothing: 0.3}"));
  Tensor x = random_logits.clone();
  Tensor gs({6, 7});
  smoothed->forward_backward(x, random_labels, &gs);
  for (int64_t i = 0; i < x.numel(); ++i) {
    float& v = x.data()[i];
    const float saved = v;
    v = saved + 1e-2f;
    const double up = v, plus = smoothed->forward_backward(x, random_labels, nullptr);
    v = saved - 1e-2f;
    const double down = v, minus = smoothed->forward_backward(x, random_labels, nullptr);
    v = saved;
    BOOST_TEST(std::abs((plus - minus) / (up - down) - gs.data()[i]) < 2e-4, "logit " << i);
  }
  for (const char* bad : {"-0.1", "1.5", "nan"}) {
    STRATA_CHECK_CONTAINS(error_of([&] {
                            registries().losses.create(yaml(fmt::format(
                                "{{type: softmax_cross_entropy, label_smoothing: {}}}", bad)));
                          }),
                          "label_smoothing");
  }
}

BOOST_AUTO_TEST_CASE(label_out_of_range) {
  auto loss = registries().losses.create("softmax_cross_entropy", Config{});
  const Tensor logits = tensor_of({2, 3}, {1, 2, 3, 4, 5, 6});
  const std::vector<int32_t> labels = {0, 3};
  const std::string message = error_of([&] { loss->forward_backward(logits, labels, nullptr); });
  BOOST_TEST((contains(message, "label 3") && contains(message, "3 classes")), message);
  const std::vector<int32_t> negative = {-1, 0};
  BOOST_TEST(
      contains(error_of([&] { loss->forward_backward(logits, negative, nullptr); }), "label -1"));
  const std::vector<int32_t> short_labels = {0};
  BOOST_TEST(contains(error_of([&] { loss->forward_backward(logits, short_labels, nullptr); }),
                      "1 labels for a batch of 2"));
}

BOOST_AUTO_TEST_SUITE_END()

// ------------------------------------------------------------------------------------------------
// SGD and schedules
// ------------------------------------------------------------------------------------------------

BOOST_AUTO_TEST_SUITE(optimizer)

// Two parameters: w (decay_mult 1, lr_mult 1) and b (decay_mult 0, lr_mult 2), constant gradients
// g_w = [0.5, 0.25], g_b = [1]. Two steps at lr 0.1 are compared with values worked out by hand
// from PyTorch's update (dampening 0).
struct SgdFixture {
  Param w = Param::make("weight", {2}, "constant", 1, 1);
  Param b = Param::make("bias", {1}, "constant", 1, 1, 0.0f);
  std::shared_ptr<strata::Optimizer> sgd;

  explicit SgdFixture(const std::string& config) {
    sgd = registries().optimizers.create(yaml(config));
    w.value.data()[0] = 1.0f;
    w.value.data()[1] = -2.0f;
    b.value.data()[0] = 0.5f;
    b.lr_mult = 2.0f;
    const std::vector<strata::ParamRef> refs = {{"fc/weight", &w}, {"fc/bias", &b}};
    sgd->setup(refs);
  }
  void step(float lr) {
    w.grad.data()[0] = 0.5f;
    w.grad.data()[1] = 0.25f;
    b.grad.data()[0] = 1.0f;
    sgd->step(lr);
  }
};

BOOST_AUTO_TEST_CASE(momentum_and_weight_decay) {
  SgdFixture f("{type: sgd, lr: 0.1, momentum: 0.9, weight_decay: 0.01}");
  BOOST_TEST(f.sgd->base_lr() == 0.1f);
  // Step 1: g = [0.5 + 0.01*1, 0.25 + 0.01*(-2)] = [0.51, 0.23]; v = g; w -= 0.1 v.
  //         b: g = 1 (no decay), v = 1, b -= 0.1*2*1.
  f.step(0.1f);
  BOOST_TEST(f.w.value.data()[0] == 0.949f, boost::test_tools::tolerance(1e-6f));
  BOOST_TEST(f.w.value.data()[1] == -2.023f, boost::test_tools::tolerance(1e-6f));
  BOOST_TEST(f.b.value.data()[0] == 0.3f, boost::test_tools::tolerance(1e-6f));
  // Step 2: g = [0.5 + 0.00949, 0.25 - 0.02023] = [0.50949, 0.22977];
  //         v = 0.9*[0.51, 0.23] + g = [0.96849, 0.43677]; w -= 0.1 v -> [0.852151, -2.066677].
  //         b: v = 0.9 + 1 = 1.9, b = 0.3 - 0.2*1.9 = -0.08.
  f.step(0.1f);
  BOOST_TEST(f.w.value.data()[0] == 0.852151f, boost::test_tools::tolerance(1e-6f));
  BOOST_TEST(f.w.value.data()[1] == -2.066677f, boost::test_tools::tolerance(1e-6f));
  BOOST_TEST(f.b.value.data()[0] == -0.08f, boost::test_tools::tolerance(1e-5f));

  const auto state = f.sgd->state();
  BOOST_TEST_REQUIRE(state.size() == 2u);
  BOOST_TEST(state[0].name == "fc/weight/momentum");
  BOOST_TEST(state[1].name == "fc/bias/momentum");
  BOOST_TEST(state[0].tensor.data()[0] == 0.96849f, boost::test_tools::tolerance(1e-6f));
  BOOST_TEST(state[1].tensor.data()[0] == 1.9f, boost::test_tools::tolerance(1e-6f));
}

BOOST_AUTO_TEST_CASE(nesterov) {
  SgdFixture f("{type: sgd, lr: 0.1, momentum: 0.9, nesterov: true, weight_decay: 0.01}");
  // Step 1: g = [0.51, 0.23], v = g, d = g + 0.9 v = 1.9 g = [0.969, 0.437] -> w = [0.9031,
  // -2.0437]
  f.step(0.1f);
  BOOST_TEST(f.w.value.data()[0] == 0.9031f, boost::test_tools::tolerance(1e-6f));
  BOOST_TEST(f.w.value.data()[1] == -2.0437f, boost::test_tools::tolerance(1e-6f));
  // Step 2: g = [0.509031, 0.229563], v = 0.9*[0.51, 0.23] + g = [0.968031, 0.436563],
  //         d = g + 0.9 v = [1.3802589, 0.6224697] -> w = [0.76507411, -2.10594697].
  //         b: step 1 d = 1.9 -> 0.5 - 0.2*1.9 = 0.12; step 2 v = 1.9, d = 1 + 1.71 = 2.71
  //            -> 0.12 - 0.2*2.71 = -0.422.
  f.step(0.1f);
  BOOST_TEST(f.w.value.data()[0] == 0.76507411f, boost::test_tools::tolerance(1e-6f));
  BOOST_TEST(f.w.value.data()[1] == -2.10594697f, boost::test_tools::tolerance(1e-6f));
  BOOST_TEST(f.b.value.data()[0] == -0.422f, boost::test_tools::tolerance(1e-5f));
}

BOOST_AUTO_TEST_CASE(plain_sgd_uses_the_given_lr) {
  SgdFixture f("{type: sgd, lr: 0.1}");
  BOOST_TEST(f.sgd->state().empty());
  f.step(0.05f);  // a schedule's rate, not base_lr: w -= 0.05 * g, b -= 0.05*2*1
  BOOST_TEST(f.w.value.data()[0] == 0.975f, boost::test_tools::tolerance(1e-6f));
  BOOST_TEST(f.w.value.data()[1] == -2.0125f, boost::test_tools::tolerance(1e-6f));
  BOOST_TEST(f.b.value.data()[0] == 0.4f, boost::test_tools::tolerance(1e-6f));
}

BOOST_AUTO_TEST_CASE(config_errors) {
  auto error = [](const std::string& config) {
    return error_of([&] { registries().optimizers.create(yaml(config)); });
  };
  BOOST_TEST(contains(error("{type: sgd}"), "missing required key 'lr'"));
  BOOST_TEST(contains(error("{type: sgd, lr: 0}"), "lr: must be positive"));
  BOOST_TEST(contains(error("{type: sgd, lr: 0.1, momentum: 1}"), "momentum: must be in [0, 1)"));
  BOOST_TEST(contains(error("{type: sgd, lr: 0.1, nesterov: true}"), "needs momentum > 0"));
  BOOST_TEST(
      contains(error("{type: sgd, lr: 0.1, weight_decay: -1}"), "weight_decay: must be >= 0"));
}

BOOST_AUTO_TEST_SUITE_END()

// ------------------------------------------------------------------------------------------------
// Initializers
// ------------------------------------------------------------------------------------------------
//
// Sample statistics of 2^18 draws: the mean is within 5 sd (sd/sqrt(n) = sd * 2e-3) of the true
// mean, and the sample standard deviation within 1% (its relative sd is 1/sqrt(2n) = 1.4e-3).

BOOST_AUTO_TEST_SUITE(initializers)

struct Stats {
  double mean, stddev, min, max;
};

Stats fill_and_measure(const std::string& config, int64_t fan_in, int64_t fan_out) {
  auto initializer = registries().initializers.create(yaml(config));
  Tensor t({512, 512});
  Rng rng(21);
  initializer->fill(t, fan_in, fan_out, rng);
  double sum = 0.0, sum_sq = 0.0;
  double lo = t.data()[0], hi = t.data()[0];
  for (float v : t.span()) {
    sum += v;
    sum_sq += static_cast<double>(v) * v;
    lo = std::min<double>(lo, v);
    hi = std::max<double>(hi, v);
  }
  const double n = static_cast<double>(t.numel());
  const double mean = sum / n;
  return {mean, std::sqrt(sum_sq / n - mean * mean), lo, hi};
}

void check_stats(const std::string& config, int64_t fan_in, int64_t fan_out, double mean,
                 double stddev, double bound = 0.0) {
  const Stats s = fill_and_measure(config, fan_in, fan_out);
  BOOST_TEST(std::abs(s.mean - mean) < 5 * stddev / 512 + 1e-12,
             config << ": mean " << s.mean << ", expected " << mean);
  BOOST_TEST(std::abs(s.stddev / stddev - 1.0) < 0.01,
             config << ": std " << s.stddev << ", expected " << stddev);
  if (bound > 0) {
    BOOST_TEST((s.min >= -bound && s.max <= bound), config << ": outside +-" << bound);
    BOOST_TEST(s.max > 0.99 * bound,
               config << ": max " << s.max << " far from the bound " << bound);
  }
}

BOOST_AUTO_TEST_CASE(he) {
  check_stats("{type: he_normal}", 300, 50, 0.0, std::sqrt(2.0 / 300));
  check_stats("{type: he_normal, mode: fan_out}", 300, 50, 0.0, std::sqrt(2.0 / 50));
  check_stats("{type: he_normal, negative_slope: 0.2}", 300, 50, 0.0, std::sqrt(2.0 / 1.04 / 300));
  const double bound = std::sqrt(6.0 / 75);
  check_stats("{type: he_uniform}", 75, 10, 0.0, bound / std::sqrt(3.0), bound);
  const std::string mode =
      error_of([] { registries().initializers.create(yaml("{type: he_normal, mode: fan_avg}")); });
  BOOST_TEST(contains(mode, "expected 'fan_in' or 'fan_out', found 'fan_avg'"), mode);
}

BOOST_AUTO_TEST_CASE(xavier) {
  const double bound = 2.0 * std::sqrt(6.0 / (100 + 20));
  check_stats("{type: xavier_uniform, gain: 2}", 100, 20, 0.0, bound / std::sqrt(3.0), bound);
  check_stats("{type: xavier_normal}", 100, 20, 0.0, std::sqrt(2.0 / 120));
}

BOOST_AUTO_TEST_CASE(gaussian_and_constant) {
  check_stats("{type: gaussian, std: 0.1, mean: 0.5}", 1, 1, 0.5, 0.1);
  const std::string missing =
      error_of([] { registries().initializers.create(yaml("{type: gaussian}")); });
  BOOST_TEST(contains(missing, "missing required key 'std'"), missing);
  const Stats constant = fill_and_measure("{type: constant, value: 0.25}", 1, 1);
  BOOST_TEST((constant.min == 0.25 && constant.max == 0.25));
  const Stats zero = fill_and_measure("{type: constant}", 1, 1);
  BOOST_TEST((zero.min == 0.0 && zero.max == 0.0));
}

BOOST_AUTO_TEST_CASE(zero_fan_is_an_error) {
  auto he = registries().initializers.create(yaml("{type: he_normal}"));
  Tensor t({3});
  Rng rng(1);
  const std::string message = error_of([&] { he->fill(t, 0, 3, rng); });
  BOOST_TEST(contains(message, "needs positive fans"), message);
}

BOOST_AUTO_TEST_SUITE_END()

}  // namespace
