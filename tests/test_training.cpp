// The graph (named inputs, fan-out, shape errors) and the trainer end to end: a small CNN must
// learn the synthetic dataset, an interrupted run must resume to the same weights, and a
// diverging run must stop naming the iteration.
#define BOOST_TEST_MODULE training
#include <algorithm>
#include <boost/test/unit_test.hpp>
#include <chrono>
#include <cmath>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <sstream>

#include "strata/checkpoint.hpp"
#include "strata/graph.hpp"
#include "strata/plugin.hpp"
#include "strata/random.hpp"
#include "strata/training/data_loader.hpp"
#include "strata/training/diagnostics.hpp"
#include "strata/training/hooks.hpp"
#include "strata/training/trainer.hpp"
#include "test_support.hpp"
#include "thread_communicator.hpp"

using namespace strata;
namespace fs = std::filesystem;

namespace {

// The build's plugins plus the test-only ones (test_sum, test_init_spec).
Registries& registries_with_test_plugins() {
  static Registries* registries = [] {
    auto* r = new Registries();
    static PluginLoader loader(*r);
    loader.load_default();
    loader.load_file(fs::path(STRATA_TEST_PLUGIN_DIR) / "libstrata_test_sum.so");
    loader.load_file(fs::path(STRATA_TEST_PLUGIN_DIR) / "libstrata_test_init_spec.so");
    return r;
  }();
  return *registries;
}

const char* kSmallExperiment = R"(
seed: 3
backend: tbb
threads: 2
data: {type: synthetic, classes: 10, shape: [1, 12, 12], train_size: 1500, test_size: 500, seed: 5,
       validation: 300, preprocess: [{type: normalize, per: channel}]}
model:
  input: [1, 12, 12]
  layers:
    - {name: conv1, type: conv2d, out_channels: 8, kernel: 3, padding: 1}
    - {name: relu1, type: relu}
    - {name: pool1, type: max_pool, kernel: 2}
    - {name: fc1, type: linear, out_features: 32}
    - {name: relu2, type: relu}
    - {name: fc2, type: linear, out_features: 10}
optimizer: {type: sgd, lr: 0.05, momentum: 0.9, weight_decay: 0.0001}
train: {epochs: 3, batch_size: 32}
)";

TrainSummary run(const std::string& yaml, const fs::path& out, bool resume = false,
                 const std::vector<std::pair<std::string, std::string>>& sets = {}) {
  Config config = Config::parse_string(yaml, "small.yaml");
  for (const auto& [key, value] : sets) config.set(key, value);
  TrainOptions options;
  options.out_dir = out;
  options.resume = resume;
  options.progress = "none";
  return train_experiment(config, test::registries(), options);
}

std::string read_text(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

}  // namespace

BOOST_AUTO_TEST_SUITE(graph)

BOOST_AUTO_TEST_CASE(shapes_that_do_not_connect_name_both_layers) {
  Rng rng(1);
  Config config = Config::parse_string(R"(
input: [1, 8, 8]
layers:
  - {name: fc1, type: linear, out_features: 20}
  - {name: conv2, type: conv2d, out_channels: 4, kernel: 3}
)", "net.yaml");
  const std::string message =
      test::error_of([&] { Graph g(config, test::registries(), test::backend(), rng); });
  STRATA_CHECK_CONTAINS(message, "net.yaml:5:5: layers[1]");
  STRATA_CHECK_CONTAINS(message, "conv2");
  STRATA_CHECK_CONTAINS(message, "'fc1' gives [20]");
}

BOOST_AUTO_TEST_CASE(window_that_does_not_fit_is_an_error_with_the_numbers) {
  Rng rng(1);
  Config config = Config::parse_string(
      "input: [1, 7, 7]\nlayers:\n  - {name: conv1, type: conv2d, out_channels: 2, kernel: 3, stride: 3}\n",
      "net.yaml");
  const std::string message =
      test::error_of([&] { Graph g(config, test::registries(), test::backend(), rng); });
  STRATA_CHECK_CONTAINS(message, "net.yaml:3:5: layers[0]");
  STRATA_CHECK_CONTAINS(message, "(7 - 3 + 2*0)/3 + 1 = 2.33");
}

BOOST_AUTO_TEST_CASE(unknown_input_names_and_duplicates_are_errors) {
  Rng rng(1);
  auto build = [&](const std::string& text) {
    Graph g(Config::parse_string(text, "net.yaml"), test::registries(), test::backend(), rng);
  };
  STRATA_CHECK_CONTAINS(test::error_of([&] {
                   build("input: [4]\nlayers:\n  - {name: a, type: relu}\n  - {name: b, type: relu, inputs: [c]}\n");
                 }),
                 "unknown input 'c'");
  STRATA_CHECK_CONTAINS(test::error_of([&] { build("input: [4]\nlayers:\n  - {name: a, type: relu}\n  - {name: a, type: relu}\n"); }),
                 "duplicate layer name 'a'");
  STRATA_CHECK_CONTAINS(test::error_of([&] {
                   build("input: [4]\nlayers:\n  - {name: a, type: linear, out_features: 2, init: {wieght: {type: constant}}}\n");
                 }),
                 "layer 'a' has no parameter 'wieght'");
}

// Gradients share memory by lifetime (strata/memory_plan.hpp): in a chain of ten layers at most
// two output gradients are live at once, an inference-only graph holds none, and what a backward
// allocates is what memory() predicts.
BOOST_AUTO_TEST_CASE(gradients_share_memory_and_exist_only_after_a_backward) {
  Rng rng(1);
  std::string yaml = "input: [4, 8, 8]\nlayers:\n";
  for (int i = 0; i < 10; ++i) yaml += fmt::format("  - {{name: t{}, type: tanh}}\n", i);
  Graph graph(Config::parse_string(yaml, "chain.yaml"), test::registries(), test::backend(), rng);
  const int64_t batch = 3, output_bytes = batch * 4 * 8 * 8 * 4;
  const Graph::Memory planned = graph.memory(batch, OutputRetention::kAll);
  BOOST_TEST(planned.outputs == 10 * output_bytes);
  BOOST_TEST(planned.gradients == 2 * output_bytes);  // 9 gradients, 2 live at a time
  Context context;
  context.training = true;
  std::mt19937 gen(2);
  const Tensor x = test::random_tensor({batch, 4, 8, 8}, gen);
  const Tensor y = graph.forward(context, x).clone();
  BOOST_TEST(graph.held().outputs == planned.outputs);
  BOOST_TEST(graph.held().gradients == 0);
  // The input gradient through ten tanh layers, computed by hand.
  graph.set_input_gradient(true);
  const Tensor dy = test::random_tensor(y.shape(), gen);
  graph.backward(context, dy);
  BOOST_TEST(graph.held().gradients == planned.gradients);
  std::vector<float> expected(dy.span().begin(), dy.span().end());
  for (int i = 9; i >= 0; --i) {
    const Tensor& out = graph.activation(fmt::format("t{}", i));
    for (std::size_t k = 0; k < expected.size(); ++k)
      expected[k] *= 1 - out.data()[k] * out.data()[k];
  }
  const Tensor& dx = graph.input_gradient();
  for (std::size_t k = 0; k < expected.size(); ++k) {
    BOOST_TEST(dx.data()[k] == expected[k], boost::test_tools::tolerance(1e-5f));
  }
  // A smaller batch reuses the arena; a larger one grows it to memory()'s figure.
  graph.forward(context, x.batch_slice(0, 1));
  graph.backward(context, dy.batch_slice(0, 1));
  BOOST_TEST(graph.held().gradients == planned.gradients);
  graph.forward(context, test::random_tensor({5, 4, 8, 8}, gen));
  graph.backward(context, test::random_tensor({5, 4, 8, 8}, gen));
  BOOST_TEST(graph.held().gradients == graph.memory(5, OutputRetention::kAll).gradients);
}

// A tensor read by several layers keeps its gradient live from its last reader's backward to its
// own, and each later reader writes a scratch of its own: the plan never lets buffers that are
// live together overlap, so the sum is right (the gradient check of such graphs is in
// test_gradcheck). Here: the planned arena is smaller than one buffer per gradient would be,
// and no smaller than the most that is ever live at once.
BOOST_AUTO_TEST_CASE(fan_out_gradients_are_planned_within_bounds) {
  Rng rng(1);
  Graph graph(Config::parse_string(R"(
input: [2, 6, 6]
layers:
  - {name: a, type: tanh}
  - {name: b, type: tanh}
  - {name: c, type: tanh, inputs: [a]}
  - {name: d, type: add, inputs: [b, c, a]}
  - {name: e, type: tanh}
  - {name: f, type: tanh}
  - {name: g, type: add, inputs: [e, f, d]}
)",
                                   "fan.yaml"),
              test::registries(), test::backend(), rng);
  const int64_t bytes = 7 * 2 * 6 * 6 * 4;  // one tensor at batch 7
  const Graph::Memory planned = graph.memory(7, OutputRetention::kAll);
  // Six gradients (a..f; g's comes from the loss) and seven scratches: a is read by b, c and d,
  // d by e and g, e by f and g, and every reader but the first to run backward gets a scratch.
  BOOST_TEST(planned.gradients < 13 * bytes);
  // Live at g's backward: the gradients of d, e and f and the scratches of g's inputs e and d.
  BOOST_TEST(planned.gradients >= 5 * bytes);
}

// Training keeps only the outputs a backward reads (OutputRetention::kBackward): in a residual
// block of conv, batch norm and relu, the batch norm outputs, the sum and the pooled map are
// reused, the rest kept. The gradients are bit-identical to those of a graph that keeps every
// output, activation() refuses an output that was not kept, and memory() predicts the arena.
BOOST_AUTO_TEST_CASE(training_keeps_only_the_outputs_backward_reads) {
  const Config model = Config::parse_string(R"(
input: [3, 8, 8]
layers:
  - {name: c1, type: conv2d, out_channels: 4, kernel: 3, padding: 1}
  - {name: b1, type: batch_norm}
  - {name: r1, type: relu}
  - {name: c2, type: conv2d, out_channels: 4, kernel: 3, padding: 1}
  - {name: b2, type: batch_norm}
  - {name: s, type: add, inputs: [b2, r1]}
  - {name: r2, type: relu}
  - {name: p, type: avg_pool, kernel: 2}
  - {name: f, type: flatten}
  - {name: fc, type: linear, out_features: 5}
)",
                                            "block.yaml");
  Rng init_all(4), init_kept(4);
  Graph all(model, test::registries(), test::backend(), init_all);
  Graph kept(model, test::registries(), test::backend(), init_kept);
  kept.set_output_retention(OutputRetention::kBackward);
  const int64_t batch = 3, map = batch * 4 * 8 * 8 * 4, pooled = batch * 4 * 4 * 4 * 4;
  const int64_t logits = batch * 5 * 4;
  const int64_t alignment = 64;  // bytes: each buffer starts at a multiple
  const int64_t everything = all.memory(batch, OutputRetention::kAll).outputs;
  BOOST_TEST(everything >= 7 * map + 2 * pooled + logits);
  BOOST_TEST(everything < 7 * map + 2 * pooled + logits + alignment);
  // Kept: c1, r1, c2, r2 (maps), f and fc. At the add, b2 and s are live besides c1, r1 and c2:
  // five maps, the most live at once; the small late buffers fit where b1 and b2 were.
  const int64_t planned = kept.memory(batch, OutputRetention::kBackward).outputs;
  BOOST_TEST(planned >= 5 * map);
  BOOST_TEST(planned < 5 * map + 2 * pooled + logits + 3 * alignment);
  for (const char* name : {"c1", "r1", "c2", "r2", "f", "fc"}) {
    BOOST_TEST(kept.keeps_output(kept.index_of(name)), name);
  }
  for (const char* name : {"b1", "b2", "s", "p"}) {
    BOOST_TEST(!kept.keeps_output(kept.index_of(name)), name);
  }

  std::mt19937 gen(5);
  const Tensor x = test::random_tensor({batch, 3, 8, 8}, gen);
  const Tensor dy = test::random_tensor({batch, 5}, gen);
  Rng rng(6);
  auto backend = test::registries().backends.create("reference", Config{});
  Context context{true, &rng, backend.get()};
  const Tensor out_all = all.forward(context, x).clone();
  all.backward(context, dy);
  const Tensor out_kept = kept.forward(context, x).clone();
  BOOST_TEST(kept.held().outputs == planned);
  kept.backward(context, dy);
  BOOST_TEST(test::max_abs_diff(out_kept, out_all) == 0.0f);
  const std::vector<ParamRef> params_all = all.params(), params_kept = kept.params();
  BOOST_REQUIRE(params_all.size() == params_kept.size());
  for (std::size_t k = 0; k < params_all.size(); ++k) {
    BOOST_TEST(test::max_abs_diff(params_kept[k].param->grad, params_all[k].param->grad) == 0.0f,
               params_all[k].key);
  }
  BOOST_TEST(test::max_abs_diff(kept.activation("r1"), all.activation("r1")) == 0.0f);
  STRATA_CHECK_CONTAINS(test::error_of([&] { kept.activation("b2"); }),
                        "the output of layer 'b2' is not kept after forward");
  // Switching re-plans at the next forward.
  all.set_output_retention(OutputRetention::kBackward);
  all.forward(context, x);
  BOOST_TEST(all.held().outputs == planned);
}

// Fusion (strata/graph.hpp): under kBackward an activation that alone reads a batch_norm's or an
// add's output runs inside it, at the last node too; not hardswish (its derivative reads x), not
// after a batch norm read twice, and nothing under kAll or with set_fusion(false). On both
// backends, the outputs and every parameter gradient are those of the unfused graph bit for bit
// (relu and leaky_relu are piecewise linear: the same float operations), in a fused pass, an
// unfused pass of the same graph (the activations then run in place) and a fused one again.
BOOST_AUTO_TEST_CASE(activations_fuse_into_batch_norm_and_add) {
  const Config model = Config::parse_string(R"(
input: [3, 8, 8]
layers:
  - {name: c1, type: conv2d, out_channels: 4, kernel: 3, padding: 1}
  - {name: b1, type: batch_norm}
  - {name: r1, type: relu}
  - {name: c2, type: conv2d, out_channels: 4, kernel: 3, padding: 1}
  - {name: b2, type: batch_norm}
  - {name: s, type: add, inputs: [b2, r1]}
  - {name: r2, type: relu}
  - {name: c3, type: conv2d, out_channels: 4, kernel: 1}
  - {name: b3, type: batch_norm}
  - {name: l3, type: leaky_relu, negative_slope: 0.1}
  - {name: b4, type: batch_norm}
  - {name: h4, type: hardswish}
  - {name: b5, type: batch_norm}
  - {name: g5, type: sigmoid}
  - {name: t5, type: add, inputs: [g5, b5]}
  - {name: f, type: flatten}
  - {name: fc, type: linear, out_features: 5}
  - {name: b6, type: batch_norm}
  - {name: r6, type: relu}
)",
                                            "fused.yaml");
  std::mt19937 gen(7);
  const int64_t batch = 6;
  const Tensor x = test::random_tensor({batch, 3, 8, 8}, gen);
  const Tensor dy = test::random_tensor({batch, 5}, gen);
  for (const std::string backend_name : {"reference", "tbb"}) {
    BOOST_TEST_CONTEXT(backend_name) {
      auto backend_owner = test::registries().backends.create(backend_name, Config{});
      Backend& backend = *backend_owner;
      Rng init_all(4), init_fused(4);
      Graph all(model, test::registries(), backend, init_all);
      Graph fused(model, test::registries(), backend, init_fused);
      fused.set_output_retention(OutputRetention::kBackward);
      Rng rng(6);
      Context context{true, &rng, &backend};
      const Tensor want = all.forward(context, x).clone();
      all.backward(context, dy);
      const std::vector<ParamRef> params_all = all.params(), params_fused = fused.params();
      BOOST_REQUIRE(params_all.size() == params_fused.size());
      const std::map<std::string, std::string> pairs = {
          {"r1", "b1"}, {"r2", "s"}, {"l3", "b3"}, {"r6", "b6"}};
      for (const bool fusion : {true, false, true}) {
        BOOST_TEST_CONTEXT("fusion " << fusion) {
          fused.set_fusion(fusion);
          const Tensor got = fused.forward(context, x).clone();
          fused.backward(context, dy);
          BOOST_TEST(test::max_abs_diff(got, want) == 0.0f);
          for (std::size_t k = 0; k < params_all.size(); ++k) {
            BOOST_TEST(
                test::max_abs_diff(params_fused[k].param->grad, params_all[k].param->grad) == 0.0f,
                params_all[k].key);
          }
          for (std::size_t i = 0; i < fused.size(); ++i) {
            const auto pair = pairs.find(fused.name(i));
            const int want_into = fusion && pair != pairs.end() ? fused.index_of(pair->second) : -1;
            BOOST_TEST(fused.fused_into(i) == want_into, fused.name(i));
            BOOST_TEST(all.fused_into(i) == -1, fused.name(i));
          }
          const std::string b1 = fused.layer(fused.index_of("b1")).implementation();
          BOOST_TEST((b1.find("+relu") != std::string::npos) == fusion, b1);
        }
      }
    }
  }
}

// Recomputation (strata/graph.hpp): under kBackward with set_recomputation(true) the graph keeps
// only the outputs read past a segment's end and computes the others again in backward. On both
// backends, over three steps with batches of 6, 4 and 6 images, a residual net with an inception
// branch, dropout, max pooling and batch norm gives the outputs, every parameter gradient and
// the running statistics of a graph that keeps everything, bit for bit (dropout's mask and batch
// norm's statistics are not drawn or updated again); its one arena is smaller than the plain
// training plan's two, some outputs are recomputed and activation() refuses them.
BOOST_AUTO_TEST_CASE(recomputation_gives_the_same_gradients_in_less_memory) {
  const Config model = Config::parse_string(R"(
input: [3, 12, 12]
layers:
  - {name: c0, type: conv2d, out_channels: 8, kernel: 3, padding: 1}
  - {name: b0, type: batch_norm}
  - {name: r0, type: relu}
  - {name: c1, type: conv2d, out_channels: 8, kernel: 3, padding: 1}
  - {name: b1, type: batch_norm}
  - {name: r1, type: relu}
  - {name: c2, type: conv2d, out_channels: 8, kernel: 3, padding: 1}
  - {name: b2, type: batch_norm}
  - {name: s2, type: add, inputs: [b2, r0]}
  - {name: r2, type: relu}
  - {name: c3, type: conv2d, out_channels: 8, kernel: 3, padding: 1}
  - {name: t3, type: tanh}
  - {name: d3, type: dropout, keep_prob: 0.7}
  - {name: c4, type: conv2d, out_channels: 8, kernel: 1}
  - {name: s3, type: add, inputs: [c4, r2]}
  - {name: p4, type: max_pool, kernel: 2, stride: 2}
  - {name: i1, type: conv2d, out_channels: 4, kernel: 1, inputs: [p4]}
  - {name: i3, type: conv2d, out_channels: 4, kernel: 3, padding: 1, inputs: [p4]}
  - {name: ip, type: avg_pool, kernel: 3, stride: 1, padding: 1, inputs: [p4]}
  - {name: cat, type: concat, inputs: [i1, i3, ip]}
  - {name: b5, type: batch_norm}
  - {name: r5, type: relu}
  - {name: c5, type: conv2d, out_channels: 8, kernel: 3, padding: 1}
  - {name: g, type: global_avg_pool}
  - {name: f, type: flatten}
  - {name: fc, type: linear, out_features: 5}
)",
                                            "recompute.yaml");
  std::mt19937 gen(11);
  std::vector<Tensor> xs, dys;
  for (const int64_t batch : {6, 4, 6}) {
    xs.push_back(test::random_tensor({batch, 3, 12, 12}, gen));
    dys.push_back(test::random_tensor({batch, 5}, gen));
  }
  for (const std::string backend_name : {"reference", "tbb"}) {
    BOOST_TEST_CONTEXT(backend_name) {
      auto backend_owner = test::registries().backends.create(backend_name, Config{});
      Backend& backend = *backend_owner;
      Rng init_all(4), init_again(4);
      Graph all(model, test::registries(), backend, init_all);
      Graph again(model, test::registries(), backend, init_again);
      again.set_output_retention(OutputRetention::kBackward);
      const Graph::Memory plain = again.memory(6, OutputRetention::kBackward);
      again.set_recomputation(true);
      BOOST_TEST(again.recomputation());
      Rng rng_all(6), rng_again(6);  // the same dropout masks
      Context context_all{true, &rng_all, &backend}, context_again{true, &rng_again, &backend};
      for (std::size_t step = 0; step < xs.size(); ++step) {
        BOOST_TEST_CONTEXT("step " << step) {
          const Tensor want = all.forward(context_all, xs[step]).clone();
          all.backward(context_all, dys[step]);
          const Tensor got = again.forward(context_again, xs[step]).clone();
          again.backward(context_again, dys[step]);
          BOOST_TEST(test::max_abs_diff(got, want) == 0.0f);
          const std::vector<ParamRef> params_all = all.params(), params_again = again.params();
          BOOST_REQUIRE(params_all.size() == params_again.size());
          for (std::size_t k = 0; k < params_all.size(); ++k) {
            BOOST_TEST(
                test::max_abs_diff(params_again[k].param->grad, params_all[k].param->grad) == 0.0f,
                params_all[k].key);
          }
          const std::vector<NamedTensor> state_all = all.state_tensors(),
                                         state_again = again.state_tensors();
          for (std::size_t k = 0; k < state_all.size(); ++k) {
            BOOST_TEST(test::max_abs_diff(state_again[k].tensor, state_all[k].tensor) == 0.0f,
                       state_all[k].name);
          }
        }
      }
      // One arena, smaller than the two of plain training, as planned.
      const Graph::Memory held = again.held();
      BOOST_TEST(held.gradients == 0);
      BOOST_TEST(held.outputs == again.memory(6, OutputRetention::kBackward).outputs);
      BOOST_TEST(held.outputs < plain.outputs + plain.gradients);
      int recomputed = 0;
      for (std::size_t i = 0; i < again.size(); ++i) recomputed += again.recomputes(i) ? 1 : 0;
      BOOST_TEST(recomputed > 0);
      BOOST_TEST(!again.recomputes(again.size() - 1));
      BOOST_TEST(!all.recomputes(0));
      for (std::size_t i = 0; i < again.size(); ++i) {
        if (again.recomputes(i)) {
          BOOST_TEST(!again.keeps_output(i), again.name(i));
          STRATA_CHECK_CONTAINS(test::error_of([&] { again.activation(again.name(i)); }),
                                "is not kept after forward");
        }
      }
      // Off again: the plain plan at the next forward, the same results.
      again.set_recomputation(false);
      again.forward(context_again, xs[0]);
      again.backward(context_again, dys[0]);
      BOOST_TEST(again.held().gradients == plain.gradients);
      BOOST_TEST(again.held().outputs == plain.outputs);
    }
  }
}

// Inference that needs only the model's output (OutputRetention::kOutput: strata eval, the
// analysis API's run()) keeps that output alone: the same output bit for bit as kAll, in less
// memory than kAll and than training's plan, with activations fused; other outputs are refused,
// and so is backward.
BOOST_AUTO_TEST_CASE(inference_keeps_only_the_output) {
  const Config model = Config::parse_string(R"(
input: [3, 8, 8]
layers:
  - {name: c1, type: conv2d, out_channels: 6, kernel: 3, padding: 1}
  - {name: b1, type: batch_norm}
  - {name: r1, type: relu}
  - {name: c2, type: conv2d, out_channels: 6, kernel: 3, padding: 1}
  - {name: b2, type: batch_norm}
  - {name: s, type: add, inputs: [b2, r1]}
  - {name: r2, type: relu}
  - {name: c3, type: conv2d, out_channels: 6, kernel: 3, padding: 1}
  - {name: g, type: global_avg_pool}
  - {name: f, type: flatten}
  - {name: fc, type: linear, out_features: 4}
)",
                                            "inference.yaml");
  Rng init_all(3), init_out(3);
  Graph all(model, test::registries(), test::backend(), init_all);
  Graph out(model, test::registries(), test::backend(), init_out);
  out.set_output_retention(OutputRetention::kOutput);
  const int64_t batch = 5;
  BOOST_TEST(out.memory(batch, OutputRetention::kOutput).outputs <
             out.memory(batch, OutputRetention::kBackward).outputs);
  BOOST_TEST(out.memory(batch, OutputRetention::kBackward).outputs <
             out.memory(batch, OutputRetention::kAll).outputs);
  std::mt19937 gen(4);
  const Tensor x = test::random_tensor({batch, 3, 8, 8}, gen);
  Rng rng(5);
  auto backend = test::registries().backends.create("tbb", Config{});
  Context context{false, &rng, backend.get()};
  const Tensor want = all.forward(context, x).clone();
  BOOST_TEST(test::max_abs_diff(out.forward(context, x), want) == 0.0f);
  BOOST_TEST(test::max_abs_diff(out.activation("fc"), want) == 0.0f);
  BOOST_TEST(out.fused_into(out.index_of("r1")) == out.index_of("b1"));
  BOOST_TEST(out.held().outputs == out.memory(batch, OutputRetention::kOutput).outputs);
  BOOST_TEST(out.held().gradients == 0);
  STRATA_CHECK_CONTAINS(test::error_of([&] { out.activation("c2"); }),
                        "the output of layer 'c2' is not kept after forward");
  const Tensor dy = test::random_tensor({batch, 4}, gen);
  STRATA_CHECK_CONTAINS(test::error_of([&] { out.backward(context, dy); }),
                        "keeps only the model's output (OutputRetention::kOutput");
}

// Training diagnostics read every layer's output in the passes they watch: those run unfused,
// and the graph's own setting comes back between them and when the diagnostics go.
BOOST_AUTO_TEST_CASE(watched_passes_run_unfused) {
  const Config model = Config::parse_string(R"(
input: [2, 4, 4]
layers:
  - {name: b, type: batch_norm}
  - {name: r, type: relu}
  - {name: f, type: flatten}
  - {name: fc, type: linear, out_features: 3}
)",
                                            "watched.yaml");
  Rng init(1);
  Graph graph(model, test::registries(), test::backend(), init);
  graph.set_output_retention(OutputRetention::kBackward);
  std::mt19937 gen(2);
  const Tensor x = test::random_tensor({4, 2, 4, 4}, gen);
  Rng rng(3);
  auto backend = test::registries().backends.create("reference", Config{});
  Context context{true, &rng, backend.get()};
  {
    StepDiagnostics diagnostics(graph);
    diagnostics.watch_forward(true);
    BOOST_TEST(!graph.fusion());
    graph.forward(context, x);
    BOOST_TEST(graph.fused_into(1) == -1);
    diagnostics.watch_forward(false);
    BOOST_TEST(graph.fusion());
    graph.forward(context, x);
    BOOST_TEST(graph.fused_into(1) == 0);
    diagnostics.watch_forward(true);
  }
  BOOST_TEST(graph.fusion());
  graph.set_fusion(false);
  {
    StepDiagnostics diagnostics(graph);
    diagnostics.watch_forward(false);
    BOOST_TEST(!graph.fusion());  // off before: stays off
  }
  BOOST_TEST(!graph.fusion());
}

// A rank of an MPI job may get no images in a step (an uneven last batch) and still run forward
// and backward with the others, with zero contributions: a batch of 0 images through conv2d
// (plain, strided, 1x1, depthwise), relu, add, max_pool, avg_pool, global_avg_pool, flatten and
// linear, on both backends, as the first batch (the graph then allocates for 0) and after a
// non-empty one. The output is [0, classes], every parameter gradient is exactly 0, and a
// following non-empty batch is unaffected (finite gradients). (batch_norm needs `sync: true` for
// this: test_layers.cpp.)
BOOST_AUTO_TEST_CASE(an_empty_batch_runs_forward_and_backward) {
  const Config model = Config::parse_string(R"(
input: [3, 8, 8]
layers:
  - {name: c1, type: conv2d, out_channels: 4, kernel: 3, padding: 1}
  - {name: r1, type: relu}
  - {name: c2, type: conv2d, out_channels: 4, kernel: 3, padding: 1, groups: 4}
  - {name: sum, type: add, inputs: [c2, c1]}
  - {name: c3, type: conv2d, out_channels: 6, kernel: 1, stride: 2, round: floor}
  - {name: p1, type: max_pool, kernel: 2}
  - {name: p2, type: avg_pool, kernel: 2}
  - {name: gap, type: global_avg_pool}
  - {name: flat, type: flatten}
  - {name: fc, type: linear, out_features: 3}
)",
                                            "net.yaml");
  std::mt19937 gen(17);
  for (const std::string backend : {"reference", "tbb"}) {
    for (const std::vector<int64_t>& batches : {std::vector<int64_t>{0, 5, 0}, {4, 0, 3}}) {
      Rng rng(2);
      auto engine = test::registries().backends.create(backend, Config{});
      Graph graph(model, test::registries(), *engine, rng);
      graph.set_input_gradient(true);
      for (const int64_t batch : batches) {
        Context context{true, &rng, engine.get()};
        const Tensor& y = graph.forward(context, test::random_tensor({batch, 3, 8, 8}, gen));
        BOOST_TEST(y.shape() == (Shape{batch, 3}));
        graph.backward(context, test::random_tensor(y.shape(), gen));
        BOOST_TEST(graph.input_gradient().shape() == (Shape{batch, 3, 8, 8}));
        for (const ParamRef& ref : graph.params()) {
          for (float g : ref.param->grad.span()) {
            BOOST_TEST_REQUIRE(
                (batch == 0 ? g == 0.0f : std::isfinite(g)),
                backend << " batch " << batch << ": " << ref.key << " gradient " << g);
          }
        }
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(custom_initializer_is_applied) {
  Rng rng(1);
  Config config = Config::parse_string(
      "input: [4]\nlayers:\n  - {name: fc, type: linear, out_features: 3, "
      "init: {weight: {type: constant, value: 0.25}, bias: {type: constant, value: -1}}}\n",
      "net.yaml");
  Graph graph(config, test::registries(), test::backend(), rng);
  for (const ParamRef& ref : graph.params()) {
    const float expected = ref.param->name == "weight" ? 0.25f : -1.0f;
    for (float v : ref.param->value.span()) BOOST_TEST(v == expected);
  }
}

// Param::default_init is an initializer spec: a type name, or a flow map with settings. The
// graph builds it; a bad spec names the layer and the parameter.
BOOST_AUTO_TEST_CASE(default_initializer_carries_its_settings) {
  Registries& registries = registries_with_test_plugins();
  auto build = [&](const std::string& spec) {
    Rng rng(1);
    const std::string text = "input: [3]\nlayers:\n  - {name: probe, type: test_init_spec, "
                             "default_init: \"" + spec + "\"}\n";
    return std::make_unique<Graph>(Config::parse_string(text, "net.yaml"), registries, test::backend(),
                                   rng);
  };
  auto values = [](Graph& graph) {
    const Tensor& w = graph.params().at(0).param->value;
    return std::vector<float>(w.span().begin(), w.span().end());
  };
  BOOST_TEST(values(*build("{type: constant, value: 1.5}")) == (std::vector<float>{1.5f, 1.5f, 1.5f}),
             boost::test_tools::per_element());
  BOOST_TEST(values(*build("constant")) == (std::vector<float>{0.0f, 0.0f, 0.0f}),
             boost::test_tools::per_element());
  // Settings reach the initializer: N(5, 0) is the constant 5.
  BOOST_TEST(values(*build("{type: gaussian, mean: 5, std: 0}")) ==
                 (std::vector<float>{5.0f, 5.0f, 5.0f}),
             boost::test_tools::per_element());
  const std::vector<float> he = values(*build("he_normal"));
  BOOST_TEST((he[0] != he[1] && he[1] != he[2]), "he_normal draws random values");

  const std::string unknown = test::error_of([&] { build("he_nromal"); });
  STRATA_CHECK_CONTAINS(unknown, "layer 'probe', default initializer of parameter 'weight'");
  STRATA_CHECK_CONTAINS(unknown, "unknown initializer type 'he_nromal'");
  STRATA_CHECK_CONTAINS(unknown, "did you mean 'he_normal'?");
  const std::string bad_key = test::error_of([&] { build("{type: constant, valeu: 1}"); });
  STRATA_CHECK_CONTAINS(bad_key, "layer 'probe', default initializer of parameter 'weight'");
  STRATA_CHECK_CONTAINS(bad_key, "unknown key 'valeu'");
  const std::string missing = test::error_of([&] { build("{value: 1}"); });
  STRATA_CHECK_CONTAINS(missing, "missing required key 'type'");
  // The experiment's `init:` still overrides the default.
  Rng rng(1);
  Graph overridden(Config::parse_string("input: [3]\nlayers:\n  - {name: probe, type: test_init_spec, "
                                        "default_init: constant, init: {weight: {type: constant, "
                                        "value: -2}}}\n",
                                        "net.yaml"),
                   registries, test::backend(), rng);
  BOOST_TEST(values(overridden) == (std::vector<float>{-2.0f, -2.0f, -2.0f}),
             boost::test_tools::per_element());
}

// A tensor read by two layers (relu1 feeds conv2 and sum) must receive the sum of both gradients.
// Checked against central differences of the whole graph, in double-checked float32:
// eps 1e-2 on inputs of order 1, relative tolerance 2e-2.
BOOST_AUTO_TEST_CASE(fan_out_gradients_are_summed) {
  Registries& registries = registries_with_test_plugins();
  auto backend = registries.backends.create("reference", Config{});
  Rng rng(11);
  Config config = Config::parse_string(R"(
input: [2, 5, 5]
layers:
  - {name: conv1, type: conv2d, out_channels: 3, kernel: 3, padding: 1}
  - {name: act1, type: tanh}
  - {name: conv2, type: conv2d, out_channels: 3, kernel: 3, padding: 1}
  - {name: sum, type: test_sum, inputs: [act1, conv2]}
  - {name: fc, type: linear, out_features: 4}
)", "net.yaml");
  Graph graph(config, registries, test::backend(), rng);
  BOOST_TEST(graph.input_names(3) == (std::vector<std::string>{"act1", "conv2"}), boost::test_tools::per_element());
  std::mt19937 data_rng(5);
  Tensor x = test::random_tensor(Shape{2, 2, 5, 5}, data_rng);
  Tensor weights = test::random_tensor(Shape{2, 4}, data_rng);
  Context context{false, &rng, backend.get()};
  auto objective = [&] {
    const Tensor& out = graph.forward(context, x);
    double total = 0;
    for (int64_t i = 0; i < out.numel(); ++i) total += double(out.data()[i]) * weights.data()[i];
    return total;
  };
  objective();
  graph.backward(context, weights);
  Param* w = graph.params()[0].param;  // conv1/weight: its gradient flows through both branches
  BOOST_TEST(graph.params()[0].key == "conv1/weight");
  Tensor analytic = w->grad.clone();
  const float eps = 1e-2f;
  for (int64_t i = 0; i < w->value.numel(); ++i) {
    const float saved = w->value.data()[i];
    w->value.data()[i] = saved + eps;
    const double plus = objective();
    w->value.data()[i] = saved - eps;
    const double minus = objective();
    w->value.data()[i] = saved;
    const double numeric = (plus - minus) / (2 * eps);
    const double scale = std::max({std::abs(numeric), double(std::abs(analytic.data()[i])), 1e-2});
    BOOST_TEST(std::abs(numeric - analytic.data()[i]) / scale < 2e-2, "element " << i);
  }
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(trainer)

BOOST_AUTO_TEST_CASE(small_cnn_learns_far_above_chance) {
  test::TempDir dir;
  const auto start = std::chrono::steady_clock::now();
  const TrainSummary summary = run(kSmallExperiment, dir.path());
  const double wall =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  BOOST_TEST_MESSAGE("synthetic test accuracy " << summary.test_accuracy);
  BOOST_TEST(summary.test_accuracy > 0.8);  // chance is 0.1
  BOOST_TEST(summary.epochs == 3);
  BOOST_TEST(fs::exists(dir / "model.h5"));
  const std::string json = read_text(dir / "summary.json");
  for (const char* key : {"\"test_accuracy\"", "\"test_loss\"", "\"epochs\": 3", "\"train_seconds\"",
                          "\"train_images_per_second\"", "\"val_accuracy\""}) {
    BOOST_TEST(json.find(key) != std::string::npos, key);
  }
  // Where the time went: every phase measured, none negative, together within the run's wall
  // time, and the same figures in summary.json.
  const LoopTime& time = summary.time;
  BOOST_TEST(time.steps > 0);
  BOOST_TEST(time.validation > 0);  // three validations of 300 images
  BOOST_TEST(time.test > 0);
  BOOST_TEST(time.epoch_ends > 0);  // three checkpoints
  BOOST_TEST(time.data >= 0);
  BOOST_TEST(time.step_hooks > 0);  // progress and the guards run at every step
  BOOST_TEST(time.steps + time.overhead() <= wall);
  BOOST_TEST(time.overhead_fraction() == time.overhead() / time.steps);
  const nlohmann::json written = nlohmann::json::parse(json);
  for (const auto& [key, value] : {std::pair{"steps", time.steps},
                                   {"data", time.data},
                                   {"step_hooks", time.step_hooks},
                                   {"validation", time.validation},
                                   {"test", time.test},
                                   {"epoch_ends", time.epoch_ends},
                                   {"overhead_fraction", time.overhead_fraction()}}) {
    BOOST_TEST(written.at("time").at(key).get<double>() == value, key);
  }
  auto state = load_checkpoint_training_state(dir / "model.h5");
  BOOST_REQUIRE(state.has_value());
  BOOST_TEST(state->epoch == 3);
  BOOST_TEST(state->iteration == 3 * ((1200 + 31) / 32));
  BOOST_TEST(state->history.at("train_loss").size() == 3u);
  BOOST_TEST(state->history.at("train_loss")[2] < state->history.at("train_loss")[0]);
  // Nothing half-written is left behind.
  for (const auto& entry : fs::directory_iterator(dir.path())) {
    BOOST_TEST(entry.path().filename().string().find(".tmp-") == std::string::npos);
  }
}

// The default experiment itself, on a real subset: LeNet-5 on 5,500 Fashion-MNIST images for three
// epochs. `make test` installs dataset-fashion-mnist, so a missing dataset is a failure here.
BOOST_AUTO_TEST_CASE(lenet5_learns_a_fashion_mnist_subset) {
  test::TempDir dir;
  Config config = Config::parse_file(std::string(STRATA_SOURCE_DIR) + "/experiments/lenet5_fashion.yaml");
  for (const auto& [key, value] : std::vector<std::pair<std::string, std::string>>{
           {"train.epochs", "3"}, {"data.train_limit", "6000"}, {"data.validation", "500"},
           {"data.test_limit", "2000"}}) {
    config.set(key, value);
  }
  TrainOptions options;
  options.out_dir = dir.path();
  options.progress = "none";
  const TrainSummary summary = train_experiment(config, test::registries(), options);
  BOOST_TEST_MESSAGE("LeNet-5 subset test accuracy " << summary.test_accuracy);
  BOOST_TEST(summary.test_accuracy > 0.7);  // chance is 0.1; the full run reaches 0.90
}

// Interrupting after epoch 1 and resuming gives bit-identical weights to an uninterrupted run
// (reference backend: its reductions have a fixed order).
BOOST_AUTO_TEST_CASE(resume_continues_exactly) {
  test::TempDir straight, interrupted;
  const std::vector<std::pair<std::string, std::string>> reference{{"backend", "reference"},
                                                                   {"train.epochs", "2"}};
  run(kSmallExperiment, straight.path(), false, reference);
  run(kSmallExperiment, interrupted.path(), false, {{"backend", "reference"}, {"train.epochs", "1"}});
  run(kSmallExperiment, interrupted.path(), true, reference);

  Rng rng(1);
  Config model = Config::parse_string(kSmallExperiment, "small.yaml").at("model");
  Graph a(model, test::registries(), test::backend(), rng);
  Graph b(model, test::registries(), test::backend(), rng);
  std::vector<NamedTensor> sa = a.state_tensors(), sb = b.state_tensors();
  load_checkpoint_tensors(straight / "model.h5", "model", sa);
  load_checkpoint_tensors(interrupted / "model.h5", "model", sb);
  for (std::size_t i = 0; i < sa.size(); ++i) {
    BOOST_TEST(test::max_abs_diff(sa[i].tensor, sb[i].tensor) == 0.0f, sa[i].name);
  }
  auto state = load_checkpoint_training_state(interrupted / "model.h5");
  BOOST_TEST(state->epoch == 2);
  BOOST_TEST(state->history.at("train_loss").size() == 2u);
}

// With gradient clipping (by value and by norm) and label smoothing, an interrupted run still
// resumes to bit-identical weights and the same per-iteration history, grad_norm included.
BOOST_AUTO_TEST_CASE(resume_with_clipping_and_label_smoothing_continues_exactly) {
  test::TempDir straight, interrupted;
  const std::vector<std::pair<std::string, std::string>> base{
      {"backend", "reference"},
      {"loss", "{type: softmax_cross_entropy, label_smoothing: 0.1}"},
      {"train.clip_grad_norm", "0.5"},
      {"train.clip_grad_value", "0.05"},
      {"train.log_every", "5"},
      {"data.train_size", "600"}};
  auto with_epochs = [&](const char* epochs) {
    auto sets = base;
    sets.emplace_back("train.epochs", epochs);
    return sets;
  };
  run(kSmallExperiment, straight.path(), false, with_epochs("2"));
  run(kSmallExperiment, interrupted.path(), false, with_epochs("1"));
  run(kSmallExperiment, interrupted.path(), true, with_epochs("2"));

  Rng rng(1);
  Config model = Config::parse_string(kSmallExperiment, "small.yaml").at("model");
  Graph a(model, test::registries(), test::backend(), rng);
  Graph b(model, test::registries(), test::backend(), rng);
  std::vector<NamedTensor> sa = a.state_tensors(), sb = b.state_tensors();
  load_checkpoint_tensors(straight / "model.h5", "model", sa);
  load_checkpoint_tensors(interrupted / "model.h5", "model", sb);
  for (std::size_t i = 0; i < sa.size(); ++i) {
    BOOST_TEST(test::max_abs_diff(sa[i].tensor, sb[i].tensor) == 0.0f, sa[i].name);
  }
  const auto full = load_checkpoint_training_state(straight / "model.h5");
  const auto resumed = load_checkpoint_training_state(interrupted / "model.h5");
  const std::vector<double>& norms = full->history.at("iterations/grad_norm");
  BOOST_TEST(norms.size() == full->history.at("iterations/loss").size());
  BOOST_TEST(!norms.empty());
  // Pre-clip norms above the bound: the clipping really changed steps.
  BOOST_TEST(*std::max_element(norms.begin(), norms.end()) > 0.5);
  BOOST_TEST(resumed->history.at("iterations/grad_norm") == norms);
  BOOST_TEST(resumed->history.at("iterations/loss") == full->history.at("iterations/loss"));
}

BOOST_AUTO_TEST_CASE(diverging_loss_stops_and_names_the_iteration) {
  test::TempDir dir;
  const std::string message = test::error_of(
      [&] { run(kSmallExperiment, dir.path(), false, {{"optimizer.lr", "1e12"}, {"optimizer.momentum", "0"}}); });
  STRATA_CHECK_CONTAINS(message, "training diverged");
  STRATA_CHECK_CONTAINS(message, "iteration");
  BOOST_TEST(!fs::exists(dir / "summary.json"));
}

BOOST_AUTO_TEST_CASE(typo_anywhere_fails_before_training) {
  test::TempDir dir;
  STRATA_CHECK_CONTAINS(test::error_of([&] { run(kSmallExperiment, dir.path(), false, {{"train.epohcs", "3"}}); }),
                 "unknown key 'epohcs'");
  STRATA_CHECK_CONTAINS(test::error_of([&] { run(kSmallExperiment, dir.path(), false, {{"optimiser", "{type: sgd}"}}); }),
                 "unknown key 'optimiser'");
  BOOST_TEST(!fs::exists(dir / "model.h5"));
}

// summary.json is real JSON whatever the output folder is called (it was formatted by hand,
// without escaping, so a quote or a backslash in the path broke it).
BOOST_AUTO_TEST_CASE(summary_json_escapes_the_paths_it_names) {
  test::TempDir dir;
  const fs::path out = dir / "a \"quoted\" \\ folder";
  run(kSmallExperiment, out, false,
      {{"data.train_size", "400"}, {"data.validation", "100"}, {"train.epochs", "1"}});
  const nlohmann::json summary = nlohmann::json::parse(read_text(out / "summary.json"));
  BOOST_TEST(summary.at("checkpoint").get<std::string>() == (out / "model.h5").string());
  BOOST_TEST(summary.at("epochs").get<int>() == 1);
  BOOST_TEST(summary.at("history").at("train_loss").size() == 1u);
}

BOOST_AUTO_TEST_SUITE_END()

// The loop's seam (strata/training/hooks.hpp): a hook added through TrainOptions::hooks sees every
// event in order, after the built-in hooks and the search's callbacks.
BOOST_AUTO_TEST_SUITE(hooks)

// Writes one line per event: "loss 1.3" is on_loss at epoch 1, step 3.
class RecordingHook : public TrainingHook {
 public:
  explicit RecordingHook(std::vector<std::string>& log, fs::path checkpoint)
      : log_(log), checkpoint_(std::move(checkpoint)) {}
  void on_run_start(const RunStartEvent& e) override {
    log_.push_back(fmt::format("start {} {}", e.epochs, e.steps_per_epoch));
    BOOST_TEST(std::isfinite(e.initial_loss));
  }
  void on_loss(const StepEvent& e) override { step("loss", e); }
  void on_backward(const StepEvent& e) override { step("backward", e); }
  void on_gradients(const StepEvent& e) override { step("gradients", e); }
  void on_step(const StepEvent& e) override {
    step("step", e);
    BOOST_TEST(e.seen == std::min<int64_t>(e.step * 64, 300));  // 300 training images
    BOOST_TEST(e.loss_sum > 0);
  }
  void on_epoch_end(const EpochReport& r) override {
    log_.push_back(fmt::format("epoch {}", r.epoch));
    // The checkpoint hook saved this epoch before any later hook saw it.
    BOOST_TEST(load_checkpoint_training_state(checkpoint_)->epoch == r.epoch);
  }
  void on_run_end(const RunEndEvent& e) override {
    log_.push_back(fmt::format("end {}", e.interrupted));
    BOOST_TEST(e.summary.epochs == 2);
  }

 private:
  void step(const char* what, const StepEvent& e) {
    log_.push_back(fmt::format("{} {}.{}", what, e.epoch, e.step));
    BOOST_TEST(e.iteration == (e.epoch - 1) * 5 + e.step);
    BOOST_TEST(std::isfinite(e.loss));
  }
  std::vector<std::string>& log_;
  fs::path checkpoint_;
};

BOOST_AUTO_TEST_CASE(a_hook_sees_every_event_in_order) {
  test::TempDir dir;
  Config config = Config::parse_string(kSmallExperiment, "small.yaml");
  for (const auto& [key, value] :
       std::vector<std::pair<std::string, std::string>>{{"data.train_size", "400"},
                                                        {"data.validation", "100"},
                                                        {"data.test_size", "50"},
                                                        {"train.epochs", "2"},
                                                        {"train.batch_size", "64"}}) {
    config.set(key, value);
  }
  std::vector<std::string> log;
  TrainOptions options;
  options.out_dir = dir.path();
  options.progress = "none";
  options.on_iteration = [&](const IterationReport& r) {
    log.push_back(fmt::format("on_iteration {}", r.iteration));
  };
  options.hooks.push_back(std::make_shared<RecordingHook>(log, dir / "model.h5"));
  const TrainSummary summary = train_experiment(
      config, test::registries(), options,
      [&](const EpochReport& r) { log.push_back(fmt::format("on_epoch {}", r.epoch)); });
  std::vector<std::string> expected = {"start 2 5"};
  for (int epoch = 1; epoch <= 2; ++epoch) {
    for (int step = 1; step <= 5; ++step) {  // 300 images in batches of 64
      expected.push_back(fmt::format("on_iteration {}", (epoch - 1) * 5 + step));
      for (const char* what : {"loss", "backward", "gradients", "step"}) {
        expected.push_back(fmt::format("{} {}.{}", what, epoch, step));
      }
    }
    expected.push_back(fmt::format("on_epoch {}", epoch));
    expected.push_back(fmt::format("epoch {}", epoch));
  }
  expected.push_back("end false");
  BOOST_TEST(log == expected, boost::test_tools::per_element());
  BOOST_TEST(summary.iterations == 10);
}

// A hook that throws in on_loss ends the run before that step changes anything: the exception
// leaves train_experiment unchanged and no checkpoint or summary is written.
BOOST_AUTO_TEST_CASE(a_hook_that_throws_stops_the_run_before_the_step) {
  struct Abort : std::runtime_error {
    using std::runtime_error::runtime_error;
  };
  class AbortAtThree : public TrainingHook {
   public:
    void on_loss(const StepEvent& e) override {
      if (e.iteration == 3) throw Abort("stop at 3");
    }
    void on_step(const StepEvent& e) override { steps_taken = e.iteration; }
    int64_t steps_taken = 0;
  };
  test::TempDir dir;
  Config config = Config::parse_string(kSmallExperiment, "small.yaml");
  config.set("data.train_size", "400");
  config.set("data.validation", "100");
  TrainOptions options;
  options.out_dir = dir.path();
  options.progress = "none";
  auto hook = std::make_shared<AbortAtThree>();
  options.hooks.push_back(hook);
  BOOST_CHECK_THROW(train_experiment(config, test::registries(), options), Abort);
  BOOST_TEST(hook->steps_taken == 2);
  BOOST_TEST(!fs::exists(dir / "model.h5"));
  BOOST_TEST(!fs::exists(dir / "summary.json"));
}

BOOST_AUTO_TEST_SUITE_END()

// The epoch's batch order (epoch_order) comes from strata::Stream, so it is the same with every
// standard library: only std::mt19937_64's output, which the standard fixes, goes into it.
BOOST_AUTO_TEST_SUITE(epoch_order_is_deterministic)

BOOST_AUTO_TEST_CASE(the_engine_is_the_standard_one) {
  std::mt19937_64 engine;  // [rand.predef]: the 10000th output of a default-constructed engine
  engine.discard(9999);
  BOOST_TEST(engine() == 9981545732273789042ull);
}

BOOST_AUTO_TEST_CASE(same_seed_and_epoch_same_order) {
  std::mt19937 draw(20261204);
  for (int trial = 0; trial < 20; ++trial) {
    const uint32_t seed = draw();
    const int64_t epoch = draw() % 100, rows = 1 + draw() % 500;
    const std::vector<int64_t> order = epoch_order(seed, epoch, rows);
    BOOST_TEST((order == epoch_order(seed, epoch, rows)));
    std::vector<int64_t> sorted = order;
    std::sort(sorted.begin(), sorted.end());
    std::vector<int64_t> rows_in_order(static_cast<std::size_t>(rows));
    std::iota(rows_in_order.begin(), rows_in_order.end(), 0);
    BOOST_TEST((sorted == rows_in_order));  // a permutation
    BOOST_TEST((epoch_order(seed, epoch, rows, false) == rows_in_order));
    if (rows >= 20) {
      BOOST_TEST((order != epoch_order(seed, epoch + 1, rows)));
      BOOST_TEST((order != epoch_order(seed + 1, epoch, rows)));
    }
  }
}

// The expected orders come from an independent Python implementation of std::mt19937_64 (which
// reproduces the standard's 10000th value), splitmix64 and the Fisher-Yates loop of Stream.
BOOST_AUTO_TEST_CASE(orders_match_an_independent_implementation) {
  BOOST_TEST(epoch_order(3, 0, 10) == (std::vector<int64_t>{8, 1, 4, 9, 6, 5, 2, 3, 0, 7}),
             boost::test_tools::per_element());
  BOOST_TEST(epoch_order(3, 1, 10) == (std::vector<int64_t>{4, 0, 7, 8, 6, 3, 5, 9, 2, 1}),
             boost::test_tools::per_element());
  BOOST_TEST(epoch_order(7, 0, 10) == (std::vector<int64_t>{0, 5, 3, 6, 4, 1, 9, 7, 8, 2}),
             boost::test_tools::per_element());
}

BOOST_AUTO_TEST_SUITE_END()

// Data-parallel training with the ranks as threads of this process (tests/support/
// thread_communicator.hpp): the same DataParallel code the MPI tests run under mpirun
// (tests/scripts/test_mpi_train.sh), here also under AddressSanitizer and ThreadSanitizer.
BOOST_AUTO_TEST_SUITE(data_parallel_on_thread_ranks)

// 898 training images in batches of 64: the last step holds 2 images, so of 3 ranks one has none
// (it still takes part in batch norm's reductions). Batch norm is synchronized, so the ranks
// compute what one process computes.
const char* kParallelExperiment = R"(
seed: 5
backend: tbb
threads: 1
data: {type: synthetic, classes: 3, shape: [2, 8, 8], train_size: 998, test_size: 60, seed: 2,
       validation: 100}
model:
  input: [2, 8, 8]
  layers:
    - {name: conv1, type: conv2d, out_channels: 4, kernel: 3, padding: 1, bias: false}
    - {name: bn1, type: batch_norm, sync: true}
    - {name: relu1, type: relu}
    - {name: pool1, type: max_pool, kernel: 2}
    - {name: fc1, type: linear, out_features: 3}
optimizer: {type: sgd, lr: 0.05, momentum: 0.9, weight_decay: 0.0005}
train: {epochs: 2, batch_size: 66, explode_factor: 0}
distributed: {check_replicas: step, bucket_mb: 0.0001}
)";
// (bucket_mb 0.0001: buckets of 26 floats, so the layers' gradients travel in many buckets,
// started one after another as backward finishes each layer.)

std::vector<NamedTensor> model_tensors(const fs::path& checkpoint) {
  std::vector<NamedTensor> tensors;
  for (const auto& [name, shape] : checkpoint_tensor_shapes(checkpoint, "model")) {
    tensors.push_back({name, Tensor(shape)});
  }
  load_checkpoint_tensors(checkpoint, "model", tensors, false, false);
  return tensors;
}

BOOST_AUTO_TEST_CASE(three_ranks_match_one_process) {
  test::TempDir single, parallel;
  TrainOptions options;
  options.progress = "none";
  options.out_dir = single.path();
  const Config experiment = Config::parse_string(kParallelExperiment, "parallel.yaml");
  const TrainSummary alone = train_experiment(experiment, test::registries(), options);

  test::ThreadJob job(3);
  std::vector<TrainSummary> summaries(3);
  const auto outcomes = job.run([&](test::ThreadCommunicator& communicator) {
    TrainOptions rank_options = options;
    rank_options.out_dir = parallel.path();
    rank_options.communicator = &communicator;
    summaries[communicator.rank()] =
        train_experiment(Config::parse_string(kParallelExperiment, "parallel.yaml"),
                         test::registries(), rank_options);
  });
  for (const auto& outcome : outcomes) BOOST_TEST_REQUIRE(outcome.returned);
  for (const TrainSummary& summary : summaries) {
    BOOST_TEST(summary.ranks == 3);
    BOOST_TEST(summary.iterations == alone.iterations);
    // The test evaluation is split over the ranks and reduced: the same figures everywhere.
    BOOST_TEST(summary.test_accuracy == summaries[0].test_accuracy);
    BOOST_TEST(summary.test_loss == summaries[0].test_loss);
    BOOST_TEST(summary.gradient_bytes_per_step > 0);
  }
  BOOST_TEST(summaries[0].test_accuracy == alone.test_accuracy);
  BOOST_TEST(std::abs(summaries[0].test_loss - alone.test_loss) < 1e-5);
  // Only rank 0 wrote, and its weights are one process's, to rounding.
  BOOST_TEST(fs::exists(parallel / "summary.json"));
  const auto expected = model_tensors(single / "model.h5");
  const auto got = model_tensors(parallel / "model.h5");
  BOOST_TEST_REQUIRE(expected.size() == got.size());
  for (std::size_t t = 0; t < expected.size(); ++t) {
    const Tensor& a = expected[t].tensor;
    const Tensor& b = got[t].tensor;
    float scale = 1e-3f, worst = 0;
    for (int64_t i = 0; i < a.numel(); ++i) {
      scale = std::max(scale, std::abs(a.data()[i]));
      worst = std::max(worst, std::abs(a.data()[i] - b.data()[i]));
    }
    BOOST_TEST(worst / scale < 1e-5, expected[t].name << ": relative difference " << worst / scale);
  }
}

// A global batch the ranks cannot share is refused alike on every rank (each throws the same
// message), and none is left waiting in a collective.
BOOST_AUTO_TEST_CASE(an_indivisible_batch_stops_every_rank_alike) {
  test::TempDir out;
  test::ThreadJob job(4);
  std::vector<std::string> messages(4);
  const auto outcomes = job.run([&](test::ThreadCommunicator& communicator) {
    TrainOptions options;
    options.progress = "none";
    options.out_dir = out.path();
    options.communicator = &communicator;
    messages[communicator.rank()] = test::thrown_message([&] {
      train_experiment(Config::parse_string(kParallelExperiment, "parallel.yaml"),
                       test::registries(), options);
    });
  });
  for (int r = 0; r < 4; ++r) {
    BOOST_TEST(outcomes[r].returned);
    STRATA_CHECK_CONTAINS(messages[r], "train.batch_size: 66 is the global batch, split evenly among the 4 ranks");
  }
  BOOST_TEST(!fs::exists(out / "model.h5"));
}

BOOST_AUTO_TEST_SUITE_END()
