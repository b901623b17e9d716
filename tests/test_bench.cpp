// strata::bench_experiment (the core of `strata bench`): what it reports, not how fast anything
// is (no timing assertions): every layer in graph order, FLOPs from the weight shapes, times
// that add up, and a data section that is never read.
#define BOOST_TEST_MODULE bench
#include <boost/test/unit_test.hpp>
#include <cmath>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "strata/error.hpp"
#include "strata/tools/bench.hpp"
#include "test_support.hpp"

namespace {

using strata::test::registries;
using strata::test::yaml;

// The data section names a folder that does not exist: bench must not read it.
const char* kExperiment = R"(
backend: tbb
threads: 1
data: {type: idx, dir: /nonexistent/strata-bench-test}
model:
  input: [2, 9, 9]
  layers:
    - {name: conv1, type: conv2d, out_channels: 4, kernel: 3, padding: 1, groups: 2}
    - {name: relu1, type: relu}
    - {name: conv2, type: conv2d, out_channels: 6, kernel: 3}
    - {name: fc, type: linear, out_features: 5}
optimizer: {type: sgd, lr: 0.01, momentum: 0.9}
train: {epochs: 3, batch_size: 7}
)";

// LRN, a softmax over the channels at each position, global average pooling: the layers that
// compute through the normalization kernels (docs/performance.md section 11).
const char* kNormalizationModel = R"(
threads: 1
data: {type: idx, dir: /nonexistent/strata-bench-test}
model:
  input: [6, 5, 5]
  layers:
    - {name: conv, type: conv2d, out_channels: 8, kernel: 3, padding: 1}
    - {name: norm, type: lrn, size: 3}
    - {name: probabilities, type: softmax}
    - {name: pool, type: global_avg_pool}
    - {name: fc, type: linear, out_features: 4}
optimizer: {type: sgd, lr: 0.01}
train: {epochs: 1, batch_size: 3}
)";

}  // namespace

// LRN, a softmax over the channels at each position and global average pooling compute through
// kernels (docs/performance.md section 11), and strata bench names the one each ran.
BOOST_AUTO_TEST_CASE(normalization_layers_name_their_kernels) {
  strata::BenchOptions options;
  options.iterations = 1;
  options.warmup = 0;
  const std::vector<std::pair<std::string, std::vector<std::string>>> expected = {
      {"tbb", {"channel_window", "vector_exp", "planes"}},
      {"reference", {"reference", "reference", "reference"}}};
  for (const auto& [backend, names] : expected) {
    BOOST_TEST_CONTEXT(backend) {
      const strata::BenchReport r = bench_experiment(
          yaml("backend: " + backend + std::string(kNormalizationModel)), registries(), options);
      BOOST_TEST_REQUIRE(r.layers.size() == 5u);
      for (std::size_t i = 0; i < names.size(); ++i) {
        BOOST_TEST(r.layers[i + 1].implementation == names[i], r.layers[i + 1].name);
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(reports_every_layer_with_flops_from_weight_shapes) {
  strata::BenchOptions options;
  options.iterations = 2;
  options.warmup = 1;
  const strata::BenchReport r = bench_experiment(yaml(kExperiment), registries(), options);
  BOOST_TEST(r.batch == 7);
  BOOST_TEST(r.threads == 1);
  BOOST_TEST(r.iterations == 2);
  BOOST_TEST(r.backend == "tbb");
  BOOST_TEST_REQUIRE(r.layers.size() == 4u);
  BOOST_TEST(r.layers[0].name == "conv1");
  BOOST_TEST(r.layers[1].type == "relu");
  BOOST_TEST(r.layers[2].output_shape == std::vector<int64_t>({6, 7, 7}));
  // conv1: 4 x 9 x 9 outputs per image, each (2 / 2 groups) x 3 x 3 = 9 multiply-adds. It reads
  // the model input, so backward computes the weight gradient only.
  const double conv1 = 2.0 * 7 * (4 * 9 * 9) * 9;
  BOOST_TEST(r.layers[0].forward_flops == conv1);
  BOOST_TEST(r.layers[0].backward_flops == conv1);
  const double conv2 = 2.0 * 7 * (6 * 7 * 7) * (4 * 3 * 3);
  BOOST_TEST(r.layers[2].forward_flops == conv2);
  BOOST_TEST(r.layers[2].backward_flops == 2 * conv2);
  const double fc = 2.0 * 7 * 5 * (6 * 7 * 7);
  BOOST_TEST(r.layers[3].forward_flops == fc);
  BOOST_TEST(r.layers[1].forward_flops == 0.0);
  BOOST_TEST(r.total_flops == 2 * conv1 + 3 * conv2 + 3 * fc);
  BOOST_TEST(r.parameters == 4 * 1 * 9 + 4 + 6 * 4 * 9 + 6 + 5 * 294 + 5);
  // Each layer names the kernel path it ran (Layer::implementation(), one name per conv pass);
  // relu runs the activation kernel. conv1 (one channel per group) and conv2 (7x7 images of 4
  // channels) run with the images across the vector lanes (backend_tbb/lanes.hpp).
  BOOST_TEST(r.layers[0].implementation == "fwd=lanes bwd_data=lanes bwd_weights=lanes");
  BOOST_TEST(r.layers[1].implementation == "elementwise");
  BOOST_TEST(r.layers[2].implementation == "fwd=lanes bwd_data=lanes bwd_weights=lanes");
  BOOST_TEST(r.layers[3].implementation == "openblas");

  // The step is timed as one span; its parts are consecutive spans of it.
  const double parts =
      r.forward_seconds + r.loss_seconds + r.backward_seconds + r.optimizer_seconds;
  BOOST_TEST(std::abs(parts - r.step_seconds) <= 1e-9 + 1e-6 * r.step_seconds);
  BOOST_TEST(r.images_per_second == 7.0 / r.step_seconds);
  double layer_forward = 0, layer_backward = 0;
  for (const auto& l : r.layers) {
    BOOST_TEST(l.forward_seconds >= 0.0);
    BOOST_TEST(l.backward_seconds >= 0.0);
    layer_forward += l.forward_seconds;
    layer_backward += l.backward_seconds;
  }
  BOOST_TEST(layer_forward > 0.0);
  BOOST_TEST(layer_forward <= r.forward_seconds * (1 + 1e-9));
  BOOST_TEST(layer_backward <= r.backward_seconds * (1 + 1e-9));
  BOOST_TEST(r.peak_rss_bytes > 0);

  const std::string table = format_bench_report(r);
  for (const char* word :
       {"conv1", "relu1", "conv2", "fc", "loss", "optimizer step", "images/s", "peak memory",
        "implementation", "fwd=lanes bwd_data=lanes bwd_weights=lanes", "openblas"}) {
    BOOST_TEST(table.find(word) != std::string::npos, "table lacks '" << word << "':\n" << table);
  }
}

BOOST_AUTO_TEST_CASE(threads_option_overrides_the_experiment) {
  strata::BenchOptions options;
  options.iterations = 1;
  options.warmup = 0;
  options.threads = 2;
  BOOST_TEST(bench_experiment(yaml(kExperiment), registries(), options).threads == 2);
}

BOOST_AUTO_TEST_CASE(bad_options_and_experiments_are_errors) {
  strata::BenchOptions options;
  options.iterations = 0;
  STRATA_CHECK_CONTAINS(
      strata::test::error_of([&] { bench_experiment(yaml(kExperiment), registries(), options); }),
      "--iterations must be at least 1");
  options.iterations = 1;
  options.warmup = -1;
  STRATA_CHECK_CONTAINS(
      strata::test::error_of([&] { bench_experiment(yaml(kExperiment), registries(), options); }),
      "--warmup");
  options.warmup = 0;
  std::string no_batch = kExperiment;
  no_batch.replace(no_batch.find("batch_size: 7"), 13, "batch_size: 0");
  STRATA_CHECK_CONTAINS(
      strata::test::error_of([&] { bench_experiment(yaml(no_batch), registries(), options); }),
      "train.batch_size: must be at least 1");
  std::string typo = kExperiment;
  typo.replace(typo.find("padding: 1,"), 11, "paddin: 1, ");
  STRATA_CHECK_CONTAINS(
      strata::test::error_of([&] { bench_experiment(yaml(typo), registries(), options); }),
      "unknown key 'paddin'");
}
