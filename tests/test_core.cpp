// Core unit tests: tensor, "did you mean", config errors and overrides, registries, plugin loading.
#define BOOST_TEST_MODULE core
#include <dlfcn.h>
#include <unistd.h>

#include <boost/test/unit_test.hpp>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <optional>
#include <random>

#include "strata/backend.hpp"
#include "strata/config.hpp"
#include "strata/dataset.hpp"
#include "strata/error.hpp"
#include "strata/isa.hpp"
#include "strata/layer.hpp"
#include "strata/memory_plan.hpp"
#include "strata/optimizer.hpp"
#include "strata/plugin.hpp"
#include "strata/recompute_plan.hpp"
#include "strata/registry.hpp"
#include "strata/tensor.hpp"
#include "test_support.hpp"

using namespace strata;
namespace fs = std::filesystem;

namespace {

const fs::path kBadPlugins = STRATA_TEST_PLUGIN_DIR;

}  // namespace

BOOST_AUTO_TEST_SUITE(tensor)

BOOST_AUTO_TEST_CASE(allocation_is_aligned_and_zeroed) {
  Tensor t(Shape{3, 5, 7});
  BOOST_TEST(t.numel() == 105);
  BOOST_TEST(reinterpret_cast<std::uintptr_t>(t.data()) % Tensor::kAlignment == 0u);
  for (float v : t.span()) BOOST_TEST(v == 0.0f);
  BOOST_TEST(t.shape().str() == "[3, 5, 7]");
}

BOOST_AUTO_TEST_CASE(views_and_slices_alias_clone_copies) {
  std::mt19937 rng(7);
  Tensor t = test::random_tensor(Shape{4, 2, 3}, rng);
  Tensor flat = t.view(Shape{4, 6});
  BOOST_TEST(flat.data() == t.data());
  Tensor rows = t.batch_slice(1, 3);
  BOOST_TEST(rows.shape() == (Shape{2, 2, 3}));
  BOOST_TEST(rows.data() == t.data() + 6);
  rows.data()[0] = 42.0f;
  BOOST_TEST(t.data()[6] == 42.0f);
  Tensor copy = t.clone();
  BOOST_TEST(copy.data() != t.data());
  BOOST_TEST(test::max_abs_diff(copy, t) == 0.0f);
  STRATA_CHECK_CONTAINS(test::error_of([&] { t.view(Shape{5, 5}); }), "element counts differ");
  STRATA_CHECK_CONTAINS(test::error_of([&] { t.batch_slice(3, 5); }), "out of range");
  BOOST_TEST(!Tensor().defined());
}

BOOST_AUTO_TEST_CASE(region_views_a_range) {
  Tensor t(Shape{10});
  for (int i = 0; i < 10; ++i) t.data()[i] = static_cast<float>(i);
  const Tensor r = t.region(4, Shape{2, 3});
  BOOST_TEST(r.shape() == (Shape{2, 3}));
  BOOST_TEST(r.data()[0] == 4.0f);
  BOOST_TEST(r.same_storage(t));
  BOOST_TEST(t.region(10, Shape{0}).numel() == 0);
  STRATA_CHECK_CONTAINS(test::error_of([&] { t.region(5, Shape{6}); }), "out of range");
  STRATA_CHECK_CONTAINS(test::error_of([&] { t.region(-1, Shape{1}); }), "out of range");
}

BOOST_AUTO_TEST_SUITE_END()

// plan_arena (strata/memory_plan.hpp): buffers live at a common step never overlap, the others
// may share, offsets are aligned, and the arena is never below the peak of live sizes.
BOOST_AUTO_TEST_SUITE(memory_plan)

namespace {
bool overlaps(const BufferRequest& a, int64_t offset_a, const BufferRequest& b, int64_t offset_b) {
  const bool in_time = a.first <= b.last && b.first <= a.last;
  const bool in_memory = offset_a < offset_b + b.floats && offset_b < offset_a + a.floats;
  return in_time && in_memory && a.floats > 0 && b.floats > 0;
}
}  // namespace

BOOST_AUTO_TEST_CASE(a_chain_needs_two_buffers) {
  // Gradients of a chain: buffer i live over steps [i, i + 1].
  std::vector<BufferRequest> requests;
  for (int i = 0; i < 8; ++i) requests.push_back({100, i, i + 1});
  const ArenaPlan plan = plan_arena(requests);
  BOOST_TEST(plan.floats == 2 * 112);  // 100 floats rounded up to 64 bytes, twice
  BOOST_TEST(peak_live_floats(requests) == 200);
  for (std::size_t i = 0; i < requests.size(); ++i) BOOST_TEST(plan.offsets[i] % 16 == 0);
}

BOOST_AUTO_TEST_CASE(disjoint_lifetimes_share_and_overlapping_ones_do_not) {
  const std::vector<BufferRequest> requests = {{64, 0, 0}, {32, 1, 1}, {16, 0, 1}, {0, 0, 5}};
  const ArenaPlan plan = plan_arena(requests);
  BOOST_TEST(plan.offsets[0] == plan.offsets[1]);  // steps 0 and 1: the same memory
  BOOST_TEST(plan.floats == 80);
  STRATA_CHECK_CONTAINS(test::error_of([] {
                          plan_arena(std::vector<BufferRequest>{{4, 2, 1}});
                        }),
                        "live over steps [2, 1]");
}

BOOST_AUTO_TEST_CASE(random_requests_never_overlap_while_live) {
  std::mt19937 rng(7);
  for (int round = 0; round < 200; ++round) {
    std::vector<BufferRequest> requests(1 + rng() % 40);
    for (BufferRequest& r : requests) {
      r.floats = static_cast<int64_t>(rng() % 5 == 0 ? 0 : 1 + rng() % 1000);
      r.first = static_cast<int>(rng() % 30);
      r.last = r.first + static_cast<int>(rng() % 8);
    }
    const ArenaPlan plan = plan_arena(requests);
    BOOST_TEST_REQUIRE(plan.offsets.size() == requests.size());
    int64_t total = 0;
    for (std::size_t i = 0; i < requests.size(); ++i) {
      total += (requests[i].floats + 15) / 16 * 16;
      BOOST_TEST_REQUIRE(plan.offsets[i] % 16 == 0);
      BOOST_TEST_REQUIRE(plan.offsets[i] + requests[i].floats <= plan.floats);
      for (std::size_t j = 0; j < i; ++j) {
        BOOST_TEST_REQUIRE(!overlaps(requests[i], plan.offsets[i], requests[j], plan.offsets[j]),
                           "round " << round << ": buffers " << j << " and " << i << " overlap");
      }
    }
    BOOST_TEST_REQUIRE(plan.floats >= peak_live_floats(requests));
    BOOST_TEST_REQUIRE(plan.floats <= total);
  }
}

// plan_recomputation (strata/recompute_plan.hpp): segments close at the first allowed cut past
// the budget; an output backward reads is recomputed when it is read only inside its segment and
// its layer allows it, and kept otherwise; the timeline runs each segment's replay before its
// backwards.
namespace {
std::vector<RecomputeNode> chain(int length) {
  std::vector<RecomputeNode> nodes(static_cast<std::size_t>(length));
  for (int i = 0; i < length; ++i) {
    nodes[static_cast<std::size_t>(i)] = {{i - 1}, 10, true, true, false, true};
  }
  return nodes;
}
}  // namespace

BOOST_AUTO_TEST_CASE(recomputation_of_a_chain) {
  const std::vector<RecomputeNode> nodes = chain(5);
  // Budget 0: every node is a segment, whose output the next one reads: all kept.
  const RecomputePlan single = plan_recomputation(nodes, 0);
  BOOST_TEST(single.segment_end == (std::vector<int>{0, 1, 2, 3, 4}),
             boost::test_tools::per_element());
  BOOST_TEST(single.kept == (std::vector<char>{1, 1, 1, 1, 1}), boost::test_tools::per_element());
  BOOST_TEST(single.replayed_floats == 0);
  // Budget 25: [0, 2] and [3, 4]; 0, 1 and 3 are read inside their segments.
  const RecomputePlan plan = plan_recomputation(nodes, 25);
  BOOST_TEST(plan.segment_end == (std::vector<int>{2, 4}), boost::test_tools::per_element());
  BOOST_TEST(plan.replayed == (std::vector<char>{1, 1, 0, 1, 0}), boost::test_tools::per_element());
  BOOST_TEST(plan.kept == (std::vector<char>{0, 0, 1, 0, 1}), boost::test_tools::per_element());
  BOOST_TEST(plan.replayed_floats == 30);
  // Forwards 0-4; segment 1 replays at 5, backwards 4 and 3; segment 0 at 8, then 2, 1, 0.
  BOOST_TEST(plan.replay_step == (std::vector<int>{8, 5}), boost::test_tools::per_element());
  BOOST_TEST(plan.backward_step == (std::vector<int>{11, 10, 9, 7, 6}),
             boost::test_tools::per_element());
  BOOST_TEST(plan.steps == 12);
  // A layer that cannot run again keeps its output; what it reads is still recomputed.
  std::vector<RecomputeNode> one_not_recomputable = nodes;
  one_not_recomputable[1].recomputable = false;
  const RecomputePlan keeps_1 = plan_recomputation(one_not_recomputable, 25);
  BOOST_TEST(keeps_1.replayed == (std::vector<char>{1, 0, 0, 1, 0}),
             boost::test_tools::per_element());
  BOOST_TEST(keeps_1.kept == (std::vector<char>{0, 1, 1, 0, 1}), boost::test_tools::per_element());
  // No cut between a layer and the activation fused into it.
  std::vector<RecomputeNode> fused = nodes;
  fused[2].cut_after = false;
  BOOST_TEST(plan_recomputation(fused, 25).segment_end == (std::vector<int>{3, 4}),
             boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(recomputation_cuts_only_where_one_tensor_crosses) {
  // 0 -> 1 -> 2 -> add(2, 0) = 3 -> 4: inside the residual two tensors cross, so the only cuts
  // are after 0, after 3 and at the end.
  std::vector<RecomputeNode> nodes = chain(5);
  nodes[3].inputs = {2, 0};
  const RecomputePlan plan = plan_recomputation(nodes, 0);
  BOOST_TEST(plan.segment_end == (std::vector<int>{0, 3, 4}), boost::test_tools::per_element());
  // 1 and 2 are recomputed; 0 is read past its segment (by 1 and 3), so it is kept.
  BOOST_TEST(plan.replayed == (std::vector<char>{0, 1, 1, 0, 0}), boost::test_tools::per_element());
  BOOST_TEST(plan.kept == (std::vector<char>{1, 0, 0, 1, 1}), boost::test_tools::per_element());
  // Budgets: 0 first, then multiples of the largest output, and sqrt(total * largest).
  const std::vector<int64_t> budgets = recompute_budgets(nodes);
  BOOST_TEST(budgets == (std::vector<int64_t>{0, 10, 20, 22, 40}),
             boost::test_tools::per_element());
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(suggestions)

BOOST_AUTO_TEST_CASE(closest_match_finds_typos_only) {
  const std::vector<std::string> types{"avg_pool", "conv2d", "dropout", "linear", "max_pool"};
  BOOST_TEST(closest_match("conv2D", types) == "conv2d");
  BOOST_TEST(closest_match("lineer", types) == "linear");
  BOOST_TEST(closest_match("transformer", types) == "");
  BOOST_TEST(edit_distance("stirde", "stride") == 2u);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(config)

BOOST_AUTO_TEST_CASE(malformed_yaml_names_file_line_and_column) {
  const std::string message =
      test::error_of([] { Config::parse_string("train:\n  epochs: [1, 2\nmodel: 3\n", "exp.yaml"); });
  STRATA_CHECK_CONTAINS(message, "exp.yaml:");
  STRATA_CHECK_CONTAINS(message, "malformed YAML");
  BOOST_TEST(message.rfind("exp.yaml:", 0) == 0u);
}

BOOST_AUTO_TEST_CASE(wrong_type_gives_position_path_expected_and_found) {
  Config config = Config::parse_string("seed: 1\ntrain:\n  epochs: two\n", "exp.yaml");
  const std::string message = test::error_of([&] { config.at("train").get<int64_t>("epochs"); });
  BOOST_TEST(message == "exp.yaml:3:11: train.epochs: expected an integer, found 'two'");
  STRATA_CHECK_CONTAINS(test::error_of([&] { config.get<std::vector<int64_t>>("seed"); }), "expected a list");
  STRATA_CHECK_CONTAINS(test::error_of([&] { config.get<bool>("seed"); }), "expected true or false, found '1'");
}

BOOST_AUTO_TEST_CASE(missing_required_key_names_the_map) {
  Config config = Config::parse_string("train:\n  batch_size: 4\n", "exp.yaml");
  const std::string message = test::error_of([&] { config.at("train").get<int64_t>("epochs"); });
  BOOST_TEST(message == "exp.yaml:2:3: train: missing required key 'epochs'");
}

BOOST_AUTO_TEST_CASE(unknown_key_is_an_error_with_a_suggestion) {
  Config config = Config::parse_string(
      "model:\n  layers:\n    - {type: conv2d, stirde: 2, kernel: 3}\n", "exp.yaml");
  Config layer = config.at("model").at("layers").items()[0];
  layer.get<std::string>("type");
  layer.get<int64_t>("kernel");
  layer.get<int64_t>("stride", 1);
  const std::string message = test::error_of([&] { config.check_unused(); });
  STRATA_CHECK_CONTAINS(message, "exp.yaml:3:22: model.layers[0].stirde: unknown key 'stirde'");
  STRATA_CHECK_CONTAINS(message, "did you mean 'stride'?");
}

BOOST_AUTO_TEST_CASE(duplicate_keys_are_rejected) {
  STRATA_CHECK_CONTAINS(test::error_of([] { Config::parse_string("seed: 1\nseed: 2\n", "exp.yaml"); }),
                 "exp.yaml:2:1: duplicate key 'seed'");
}

BOOST_AUTO_TEST_CASE(set_overrides_values_lists_and_creates_keys) {
  Config config = Config::parse_string(
      "backend: tbb\ntrain: {epochs: 10}\nmodel:\n  layers:\n    - {type: conv2d, kernel: 3}\n", "e.yaml");
  config.set("backend", "reference");
  config.set("train.epochs", "2");
  config.set("train.batch_size", "16");
  config.set("model.layers[0].kernel", "[3, 5]");
  config.set("model.input", "[1, 28, 28]");
  BOOST_TEST(config.get<std::string>("backend") == "reference");
  BOOST_TEST(config.at("train").get<int64_t>("epochs") == 2);
  BOOST_TEST(config.at("train").get<int64_t>("batch_size") == 16);
  auto kernel = config.at("model").at("layers").items()[0].get<std::vector<int64_t>>("kernel");
  BOOST_TEST(kernel == (std::vector<int64_t>{3, 5}), boost::test_tools::per_element());
  BOOST_TEST(config.at("model").get<std::vector<int64_t>>("input").size() == 3u);
  // An overridden value that is wrong points at the --set, not at the file.
  config.set("train.epochs", "many");
  BOOST_TEST(test::error_of([&] { config.at("train").get<int64_t>("epochs"); }) ==
             "--set train.epochs=many:1:1: train.epochs: expected an integer, found 'many'");
  STRATA_CHECK_CONTAINS(test::error_of([&] { config.set("model.layers[4].kernel", "3"); }), "model.layers[4] does not exist");
  STRATA_CHECK_CONTAINS(test::error_of([&] { config.set("backend.name", "x"); }), "'backend' is not a map");
}

BOOST_AUTO_TEST_CASE(dump_round_trips) {
  Config config = Config::parse_string("a: 1\nb: {c: [1, 2], d: hello}\n", "e.yaml");
  config.set("b.e", "true");
  Config again = Config::parse_string(config.dump(), "dump");
  BOOST_TEST(again.get<int64_t>("a") == 1);
  BOOST_TEST(again.at("b").get<std::string>("d") == "hello");
  BOOST_TEST(again.at("b").get<bool>("e"));
  BOOST_TEST(again.at("b").get<std::vector<int64_t>>("c").size() == 2u);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(registry)

BOOST_AUTO_TEST_CASE(unknown_type_lists_known_types_and_the_closest) {
  Config config = Config::parse_string("model:\n  layers:\n    - {type: conv2D, kernel: 3}\n", "e.yaml");
  Config layer = config.at("model").at("layers").items()[0];
  const std::string message = test::error_of([&] { test::registries().layers.create(layer); });
  STRATA_CHECK_CONTAINS(message, "e.yaml:3:14: model.layers[0].type: unknown layer type 'conv2D'");
  STRATA_CHECK_CONTAINS(message, "did you mean 'conv2d'?");
  STRATA_CHECK_CONTAINS(message, "known layer types: ");
  STRATA_CHECK_CONTAINS(message, "linear");
  STRATA_CHECK_CONTAINS(test::error_of([] { test::registries().optimizers.create(test::yaml("{type: adamm, lr: 1}")); }),
                 "unknown optimizer type 'adamm'");
  STRATA_CHECK_CONTAINS(test::error_of([] { test::registries().datasets.create(test::yaml("{type: mnist}")); }),
                 "unknown dataset type 'mnist'");
}

BOOST_AUTO_TEST_CASE(keys_the_factory_did_not_read_are_rejected) {
  const std::string message = test::error_of(
      [] { test::registries().layers.create(test::yaml("{type: relu, inplace: true}")); });
  STRATA_CHECK_CONTAINS(message, "unknown key 'inplace'");
}

// Kernels: an ordered list of named implementations per (op, backend).
struct ToyDesc {
  int size = 0;
};
class ToyKernel : public OpKernel<ToyDesc> {};
class UpToFour : public ToyKernel {  // refuses sizes above 4
 public:
  bool supports(const ToyDesc& desc) const override { return desc.size <= 4; }
};
class AnySize : public ToyKernel {};

std::shared_ptr<ToyKernel> pick_toy(const Registries& r, const std::string& op,
                                    const std::string& backend, int size) {
  return r.kernels.pick<ToyKernel>(op, backend, ToyDesc{size}, "layer 'toy1'");
}

BOOST_AUTO_TEST_CASE(kernel_implementations_are_tried_in_registration_order) {
  Registries r;
  r.kernels.add<AnySize>("toy", "reference");
  r.kernels.add<UpToFour>("toy", "fast", "up_to_four");
  r.kernels.add<AnySize>("toy", "fast", "any_size");
  BOOST_TEST(r.kernels.implementations("toy", "fast") ==
                 (std::vector<std::string>{"up_to_four", "any_size"}),
             boost::test_tools::per_element());
  BOOST_TEST(r.kernels.implementations("toy", "none").empty());
  // The first that supports the descriptor; one that refuses falls through to the next.
  BOOST_TEST(pick_toy(r, "toy", "fast", 3)->implementation() == "up_to_four");
  BOOST_TEST(pick_toy(r, "toy", "fast", 9)->implementation() == "any_size");
  // Order, not specificity, decides: the general one first shadows the other.
  r.kernels.add<AnySize>("toy", "general_first", "any_size");
  r.kernels.add<UpToFour>("toy", "general_first", "up_to_four");
  BOOST_TEST(pick_toy(r, "toy", "general_first", 3)->implementation() == "any_size");
  // A named implementation can be created directly (tests, benchmarks), and prepared.
  auto made = r.kernels.create<ToyKernel>("toy", "general_first", "up_to_four", ToyDesc{2});
  BOOST_TEST(made->implementation() == "up_to_four");
  BOOST_TEST(made->desc().size == 2);
  STRATA_CHECK_CONTAINS(
      test::error_of([&] { r.kernels.create<ToyKernel>("toy", "fast", "up_to_four", ToyDesc{9}); }),
      "implementation 'up_to_four' of op 'toy' on backend 'fast' does not "
      "support this configuration");
  STRATA_CHECK_CONTAINS(
      test::error_of([&] { r.kernels.create<ToyKernel>("toy", "fast", "up_to_5", ToyDesc{1}); }),
      "backend 'fast' has no implementation 'up_to_5' of op 'toy'; it has: up_to_four, any_size");
  // Removing a plugin's kernels leaves no empty list behind.
  r.kernels.remove_owned_by(r.current);
  BOOST_TEST(!r.kernels.contains("toy", "fast"));
  BOOST_TEST(r.kernels.entries().empty());
}

BOOST_AUTO_TEST_CASE(a_duplicate_implementation_name_is_refused) {
  Registries r;
  r.kernels.add<UpToFour>("toy", "fast", "up_to_four");
  STRATA_CHECK_CONTAINS(
      test::error_of([&] { r.kernels.add<AnySize>("toy", "fast", "up_to_four"); }),
      "kernel 'toy' for backend 'fast' is registered twice under the implementation name "
      "'up_to_four': by plugin 'host' and by plugin 'host'");
  // The same name on another backend or op is another implementation.
  r.kernels.add<AnySize>("toy", "other", "up_to_four");
  r.kernels.add<AnySize>("toy2", "fast", "up_to_four");
  // The old form names its one implementation after the backend, so it is refused a second time.
  r.kernels.add<AnySize>("toy", "plain");
  STRATA_CHECK_CONTAINS(test::error_of([&] { r.kernels.add<AnySize>("toy", "plain"); }),
                        "is registered twice under the implementation name 'plain'");
}

BOOST_AUTO_TEST_CASE(old_style_registration_and_the_fallback_note_are_unchanged) {
  Registries r;
  // add<K>(op, backend) and add(op, backend, factory): one implementation named after the backend.
  r.kernels.add<AnySize>("toy_fallback", "reference");
  r.kernels.add("toy_fallback", "picky",
                []() -> std::unique_ptr<Kernel> { return std::make_unique<UpToFour>(); });
  BOOST_TEST(
      r.kernels.implementations("toy_fallback", "picky") == std::vector<std::string>{"picky"},
      boost::test_tools::per_element());
  BOOST_TEST(pick_toy(r, "toy_fallback", "picky", 4)->implementation() == "picky");
  // A descriptor the backend refuses runs on the reference, with one note per (op, backend).
  test::StderrCapture capture;
  auto fallback = pick_toy(r, "toy_fallback", "picky", 5);
  pick_toy(r, "toy_fallback", "picky", 6);
  const std::string note = capture.finish();
  BOOST_TEST(fallback->implementation() == "reference");
  BOOST_TEST(note ==
             "note: layer 'toy1': the 'toy_fallback' kernel of backend 'picky' does not support "
             "this configuration; using the reference kernel\n");
  // With several implementations the note names every one it tried.
  r.kernels.add<UpToFour>("toy_fallback", "fast", "up_to_four");
  r.kernels.add<UpToFour>("toy_fallback", "fast", "also_up_to_four");
  test::StderrCapture second;
  pick_toy(r, "toy_fallback", "fast", 5);
  STRATA_CHECK_CONTAINS(second.finish(),
                        "no 'toy_fallback' implementation of backend 'fast' supports this "
                        "configuration (tried up_to_four, also_up_to_four); using the reference "
                        "kernel");
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(plugins)

BOOST_AUTO_TEST_CASE(default_folder_holds_the_built_plugins) {
  auto& r = test::registries();
  for (const char* type : {"conv2d", "linear", "max_pool", "relu", "dropout", "swish"}) {
    BOOST_TEST(r.layers.contains(type), type);
  }
  BOOST_TEST(r.backends.contains("reference"));
  BOOST_TEST(r.backends.contains("tbb"));
  BOOST_TEST(r.kernels.contains("conv2d", "tbb"));
  BOOST_TEST(r.optimizers.contains("sgd"));
  BOOST_TEST(r.datasets.contains("idx"));
  BOOST_TEST(r.datasets.entries().at("idx").owner->name == "idx");
}

BOOST_AUTO_TEST_CASE(wrong_api_version_is_refused_before_registration) {
  Registries r;
  PluginLoader loader(r);
  const fs::path file = kBadPlugins / "libstrata_test_wrong_api.so";
  const std::string message = test::error_of([&] { loader.load_file(file); });
  STRATA_CHECK_CONTAINS(message, "libstrata_test_wrong_api.so");
  STRATA_CHECK_CONTAINS(message, fmt::format("built for plugin API version {}", kPluginApi + 41));
  STRATA_CHECK_CONTAINS(message, fmt::format("supports version {}", kPluginApi));
  BOOST_TEST(loader.plugins().empty());
  // A plugin of API 2 (whole-split datasets) is told what to port.
  const std::string old = test::error_of([&] { loader.load_file(kBadPlugins / "libstrata_test_api_2.so"); });
  STRATA_CHECK_CONTAINS(old, "built for plugin API version 2, but this Strata supports version 10");
  STRATA_CHECK_CONTAINS(old, "a dataset reads samples on demand through Dataset::open");
  STRATA_CHECK_CONTAINS(old, "InMemoryDataset");
  STRATA_CHECK_CONTAINS(old, "Context carries the run's Communicator");
  STRATA_CHECK_CONTAINS(old, "optional export_to() hook");
  // A plugin of API 3 is told only what changed since 3.
  const std::string api3 = test::error_of([&] { loader.load_file(kBadPlugins / "libstrata_test_api_3.so"); });
  STRATA_CHECK_CONTAINS(api3,
                        "built for plugin API version 3, but this Strata supports version 10");
  STRATA_CHECK_CONTAINS(api3, "Context carries the run's Communicator");
  STRATA_CHECK_CONTAINS(api3, "optional export_to() hook");
  BOOST_TEST(api3.find("InMemoryDataset") == std::string::npos);
  // A plugin of API 4 is told about the export hook and what came after.
  const std::string api4 =
      test::error_of([&] { loader.load_file(kBadPlugins / "libstrata_test_api_4.so"); });
  STRATA_CHECK_CONTAINS(api4,
                        "built for plugin API version 4, but this Strata supports version 10");
  STRATA_CHECK_CONTAINS(api4, "optional export_to() hook");
  BOOST_TEST(api4.find("Communicator") == std::string::npos);
  STRATA_CHECK_CONTAINS(api4, "Kernel and Layer gain implementation()");
  // A plugin of API 5 is told about the implementation names and what came after.
  const std::string api5 =
      test::error_of([&] { loader.load_file(kBadPlugins / "libstrata_test_api_5.so"); });
  STRATA_CHECK_CONTAINS(api5,
                        "built for plugin API version 5, but this Strata supports version 10");
  STRATA_CHECK_CONTAINS(api5, "Kernel and Layer gain implementation()");
  STRATA_CHECK_CONTAINS(api5, "API 7: BatchNormKernel::affine");
  BOOST_TEST(api5.find("export_to") == std::string::npos);
  // A plugin of API 6 is told about the batch norm kernel's new pass and what came after.
  const std::string api6 =
      test::error_of([&] { loader.load_file(kBadPlugins / "libstrata_test_api_6.so"); });
  STRATA_CHECK_CONTAINS(api6,
                        "built for plugin API version 6, but this Strata supports version 10");
  STRATA_CHECK_CONTAINS(api6, "became normalize(x, center, scale, shift, y)");
  BOOST_TEST(api6.find("implementation()") == std::string::npos);
  STRATA_CHECK_CONTAINS(api6, "API 8: Layer gains backward_reads_inputs()");
  // A plugin of API 7 is told only about the layer traits and the conv2d kernel's arithmetic().
  const std::string api7 =
      test::error_of([&] { loader.load_file(kBadPlugins / "libstrata_test_api_7.so"); });
  STRATA_CHECK_CONTAINS(api7,
                        "built for plugin API version 7, but this Strata supports version 10");
  STRATA_CHECK_CONTAINS(api7, "API 8: Layer gains backward_reads_inputs()");
  STRATA_CHECK_CONTAINS(api7, "Conv2dKernel gains arithmetic()");
  STRATA_CHECK_CONTAINS(api7, "API 9: Layer gains fusable_activation()");
  BOOST_TEST(api7.find("API 7:") == std::string::npos);
  // A plugin of API 8 is told only about fusion.
  const std::string api8 =
      test::error_of([&] { loader.load_file(kBadPlugins / "libstrata_test_api_8.so"); });
  STRATA_CHECK_CONTAINS(api8,
                        "built for plugin API version 8, but this Strata supports version 10");
  STRATA_CHECK_CONTAINS(api8, "BatchNormKernel::normalize takes");
  BOOST_TEST(api8.find("API 8:") == std::string::npos);
  STRATA_CHECK_CONTAINS(api8, "API 10: Layer gains recomputable()");
  // A plugin of API 9 is told only about recomputation.
  const std::string api9 =
      test::error_of([&] { loader.load_file(kBadPlugins / "libstrata_test_api_9.so"); });
  STRATA_CHECK_CONTAINS(api9,
                        "built for plugin API version 9, but this Strata supports version 10");
  STRATA_CHECK_CONTAINS(api9, "API 10: Layer gains recomputable()");
  BOOST_TEST(api9.find("API 9:") == std::string::npos);
  BOOST_TEST(loader.plugins().empty());
}

BOOST_AUTO_TEST_CASE(missing_file_and_non_plugin_library_are_clear_errors) {
  Registries r;
  PluginLoader loader(r);
  STRATA_CHECK_CONTAINS(test::error_of([&] { loader.load_file("/nonexistent/libstrata_x.so"); }),
                 "plugin /nonexistent/libstrata_x.so: no such file");
  STRATA_CHECK_CONTAINS(test::error_of([&] { loader.load_file(kBadPlugins / "libstrata_test_no_entry.so"); }),
                 "not a Strata plugin (it exports no 'strata_plugin' entry point)");
}

BOOST_AUTO_TEST_CASE(duplicate_registration_names_both_plugins) {
  Registries r;
  PluginLoader loader(r);
  loader.load_default();
  const std::string message =
      test::error_of([&] { loader.load_file(kBadPlugins / "libstrata_test_duplicate_layer.so"); });
  STRATA_CHECK_CONTAINS(message, "layer type 'relu' is registered twice");
  STRATA_CHECK_CONTAINS(message, "by plugin 'layers'");
  STRATA_CHECK_CONTAINS(message, "by plugin 'test_duplicate_layer'");
}

namespace {

// STRATA_ISA set for one scope, restored (or removed) after it.
class IsaVariable {
 public:
  explicit IsaVariable(const char* value) {
    if (const char* old = std::getenv("STRATA_ISA")) saved_ = old;
    if (value == nullptr) {
      ::unsetenv("STRATA_ISA");
    } else {
      ::setenv("STRATA_ISA", value, 1);
    }
  }
  ~IsaVariable() {
    if (saved_) {
      ::setenv("STRATA_ISA", saved_->c_str(), 1);
    } else {
      ::unsetenv("STRATA_ISA");
    }
  }

 private:
  std::optional<std::string> saved_;
};

}  // namespace

// Plugins built once per instruction-set level (strata/isa.hpp): the names, the choice and its
// errors. Which copy of backend_tbb a process runs is tested in tests/scripts/test_bench_cli.sh
// (one choice per process) and by ctest's test_kernels_<level>.
BOOST_AUTO_TEST_CASE(isa_levels_are_chosen_by_cpu_and_environment) {
  for (const isa::Isa level : {isa::Isa::kGeneric, isa::Isa::kAvx2, isa::Isa::kAvx512}) {
    BOOST_TEST((isa::parse(isa::name(level)) == level));
  }
  BOOST_TEST(!isa::parse("sse4").has_value());
  BOOST_TEST(!isa::parse("AVX2").has_value());
  BOOST_TEST(isa::cpu_runs(isa::Isa::kGeneric));
  if (isa::cpu_runs(isa::Isa::kAvx512)) BOOST_TEST(isa::cpu_runs(isa::Isa::kAvx2));

  {
    IsaVariable unset(nullptr);
    const isa::Isa widest = isa::cpu_runs(isa::Isa::kAvx512) ? isa::Isa::kAvx512
                            : isa::cpu_runs(isa::Isa::kAvx2) ? isa::Isa::kAvx2
                                                             : isa::Isa::kGeneric;
    const isa::Choice best = isa::choose("avx512,generic,avx2");  // any order
    BOOST_TEST((best.isa == widest));
    BOOST_TEST(best.reason == "the best this CPU runs");
    BOOST_TEST((isa::choose("generic").isa == isa::Isa::kGeneric));
    STRATA_CHECK_CONTAINS(isa::describe(best), "kernels, the best this CPU runs");
    STRATA_CHECK_CONTAINS(test::error_of([] { isa::choose("generic,sse9"); }),
                          "unknown instruction-set level 'sse9'");
    STRATA_CHECK_CONTAINS(test::error_of([] { isa::choose(""); }), "built for no instruction-set");
  }
  {
    IsaVariable generic("generic");
    const isa::Choice forced = isa::choose("generic,avx2,avx512");
    BOOST_TEST((forced.isa == isa::Isa::kGeneric));
    BOOST_TEST(isa::describe(forced) ==
               "generic (x86-64 baseline) kernels, STRATA_ISA=generic from the environment");
  }
  {
    IsaVariable bogus("avx1024");
    STRATA_CHECK_CONTAINS(test::error_of([] { isa::choose("generic,avx2,avx512"); }),
                          "STRATA_ISA=avx1024: not an instruction-set level (expected one of "
                          "generic, avx2, avx512)");
  }
  {
    IsaVariable not_built("avx2");
    STRATA_CHECK_CONTAINS(test::error_of([] { isa::choose("generic"); }),
                          "STRATA_ISA=avx2: this plugin was built for generic only");
  }
  if (!isa::cpu_runs(isa::Isa::kAvx512)) {
    IsaVariable too_wide("avx512");
    STRATA_CHECK_CONTAINS(test::error_of([] { isa::choose("generic,avx512"); }),
                          "STRATA_ISA=avx512: this CPU cannot run avx512 code (x86-64-v4");
  }
}

// A dispatcher whose copies are missing or mislabelled fails to load, naming the file; nothing
// it would have registered stays behind. (Copies of the files: a library already loaded under its
// own path keeps the choice it made first.)
BOOST_AUTO_TEST_CASE(isa_dispatcher_refuses_missing_and_mislabelled_copies) {
  const fs::path plugins = fs::path(STRATA_BIN_DIR) / ".." / "lib" / "strata";
  IsaVariable generic("generic");
  test::TempDir dir;
  fs::copy_file(plugins / "libstrata_backend_tbb.so", dir / "libstrata_backend_tbb.so");
  {
    Registries r;
    PluginLoader loader(r);
    const std::string missing =
        test::error_of([&] { loader.load_file(dir / "libstrata_backend_tbb.so"); });
    STRATA_CHECK_CONTAINS(missing,
                          "libstrata_backend_tbb.so: registration failed: its generic "
                          "variant");
    STRATA_CHECK_CONTAINS(missing,
                          "backend_tbb/generic.so (STRATA_ISA=generic from the "
                          "environment) is missing: the plugin is installed incompletely");
    BOOST_TEST(!r.backends.contains("tbb"));
    BOOST_TEST(loader.plugins().empty());
  }
  if (!isa::cpu_runs(isa::Isa::kAvx2)) return;  // opening the avx2 copy runs its initializers
  test::TempDir other;
  fs::copy_file(plugins / "libstrata_backend_tbb.so", other / "libstrata_backend_tbb.so");
  fs::create_directory(other / "backend_tbb");
  fs::copy_file(plugins / "backend_tbb" / "avx2.so", other / "backend_tbb/generic.so");
  Registries r;
  PluginLoader loader(r);
  STRATA_CHECK_CONTAINS(
      test::error_of([&] { loader.load_file(other / "libstrata_backend_tbb.so"); }),
      "backend_tbb/generic.so was compiled for 'avx2', not for 'generic'");
  BOOST_TEST(!r.backends.contains("tbb"));
}

// The core names no plugin: the default backend, loss and schedule are whatever the loaded plugins
// declare (issue 15). With only the reference backend loaded it is the default backend; loading
// the tbb plugin, which declares itself the default, changes that.
BOOST_AUTO_TEST_CASE(plugins_declare_the_defaults_the_core_uses) {
  const fs::path plugins = fs::path(STRATA_BIN_DIR) / ".." / "lib" / "strata";
  Registries r;
  PluginLoader loader(r);
  BOOST_TEST(r.default_backend() == "reference");
  loader.load_file(plugins / "libstrata_backend_reference.so");
  BOOST_TEST(r.default_backend() == "reference");
  BOOST_TEST(r.backends.default_type().empty());
  loader.load_file(plugins / "libstrata_backend_tbb.so");
  BOOST_TEST(r.default_backend() == "tbb");
  BOOST_TEST(r.losses.default_type().empty());
  loader.load_file(plugins / "libstrata_layers.so");
  loader.load_file(plugins / "libstrata_schedules.so");
  BOOST_TEST(r.losses.default_type() == "softmax_cross_entropy");
  BOOST_TEST(r.schedules.default_type() == "constant");

  // A default must be a registered type, and a kind has one default.
  STRATA_CHECK_CONTAINS(test::error_of([&] { r.losses.declare_default("hinge"); }),
                        "declares loss type 'hinge' the default, but registers no such type");
  r.losses.add("other_loss", [](const Config&) -> std::unique_ptr<Loss> { return nullptr; });
  const std::string twice = test::error_of([&] { r.losses.declare_default("other_loss"); });
  STRATA_CHECK_CONTAINS(twice, "two default loss types: 'softmax_cross_entropy' by plugin 'layers'");
  STRATA_CHECK_CONTAINS(twice, "'other_loss' by plugin 'host'");
  r.losses.declare_default("softmax_cross_entropy");  // the same one again is no conflict
  BOOST_TEST(r.losses.default_type() == "softmax_cross_entropy");
}

// Diagnostics ask a layer whether its units can die instead of naming relu.
BOOST_AUTO_TEST_CASE(layers_declare_dead_units) {
  const auto layer = [](const std::string& type) {
    return test::registries().layers.create(type, Config{});
  };
  BOOST_TEST(layer("relu")->has_dead_units());
  for (const std::string type : {"leaky_relu", "tanh", "sigmoid", "flatten"}) {
    BOOST_TEST_CONTEXT(type) { BOOST_TEST(!layer(type)->has_dead_units()); }
  }
}

// Plugin and type names become HDF5 paths and file names: a bad one is refused when the plugin
// loads, before the first checkpoint (issue 20, group 3).
BOOST_AUTO_TEST_CASE(bad_plugin_and_type_names_are_refused_when_the_plugin_loads) {
  Registries r;
  PluginLoader loader(r);
  const std::string escaping =
      test::error_of([&] { loader.load_file(kBadPlugins / "libstrata_test_bad_name.so"); });
  STRATA_CHECK_CONTAINS(escaping,
                        "libstrata_test_bad_name.so: its name '../evil' is not a valid "
                        "plugin name: it contains '/'");
  const std::string empty_type =
      test::error_of([&] { loader.load_file(kBadPlugins / "libstrata_test_bad_type_name.so"); });
  STRATA_CHECK_CONTAINS(empty_type,
                        "libstrata_test_bad_type_name.so: registration failed: it "
                        "registers a layer type '', which is not a valid type name: "
                        "it is empty");
  BOOST_TEST(loader.plugins().empty());
  BOOST_TEST(!r.layers.contains(""));  // the refused type is not left behind
  // Every plugin that ships passes the same rule.
  Registries shipped;
  PluginLoader shipped_loader(shipped);
  shipped_loader.load_default();
  BOOST_TEST(shipped_loader.plugins().size() > 5u);
}

// Registration is transactional: a plugin that throws after registering two types leaves neither
// behind, and a plugin registering the same names afterwards loads.
BOOST_AUTO_TEST_CASE(a_failed_registration_leaves_none_of_its_types_behind) {
  Registries r;
  PluginLoader loader(r);
  const std::string message =
      test::error_of([&] { loader.load_file(kBadPlugins / "libstrata_test_half_registered.so"); });
  STRATA_CHECK_CONTAINS(message, "registration failed: register_all() threw an exception: "
                                 "failed after registering two types");
  BOOST_TEST(!r.layers.contains("half_layer"));
  BOOST_TEST(!r.optimizers.contains("half_optimizer"));
  BOOST_TEST(loader.plugins().empty());
  loader.load_file(kBadPlugins / "libstrata_test_half_registered_ok.so");
  BOOST_TEST(r.layers.contains("half_layer"));
  BOOST_TEST(r.optimizers.contains("half_optimizer"));
  BOOST_TEST(r.layers.entries().at("half_layer").owner->name == "test_half_registered_ok");
  BOOST_TEST(loader.plugins().size() == 1u);
}

BOOST_AUTO_TEST_CASE(a_plugin_stays_loaded_while_its_objects_live) {
  const fs::path file = fs::canonical(kBadPlugins / "libstrata_test_lifetime.so");
  auto is_loaded = [&] {
    void* handle = ::dlopen(file.c_str(), RTLD_NOW | RTLD_NOLOAD);
    if (handle != nullptr) ::dlclose(handle);
    return handle != nullptr;
  };
  int destroyed = 0;
  std::shared_ptr<Layer> layer;
  {
    Registries r;
    PluginLoader loader(r);
    loader.load_file(file);
    BOOST_TEST(is_loaded());
    layer = r.layers.create(test::yaml(fmt::format(
        "{{type: lifetime_probe, counter_address: {}}}", reinterpret_cast<std::intptr_t>(&destroyed))));
  }  // loader and registries are gone; the layer is not
  BOOST_TEST(is_loaded());
  BOOST_TEST(layer->type() == "lifetime_probe");  // virtual call into the plugin's code
  layer.reset();
  BOOST_TEST(destroyed == 1);  // the destructor ran from the still-loaded library
  BOOST_TEST(!is_loaded());
}

BOOST_AUTO_TEST_SUITE_END()

// `include:` (Config::parse_file): a file starts from others, deep-merged under its own keys.
BOOST_AUTO_TEST_SUITE(config_include)

namespace {

// A fresh folder per test, removed at the end.
struct IncludeFolder {
  fs::path dir = fs::temp_directory_path() /
                 fmt::format("strata_include_{}_{}", ::getpid(), std::random_device{}());
  IncludeFolder() { fs::create_directories(dir / "sub"); }
  ~IncludeFolder() { fs::remove_all(dir); }
  std::string write(const std::string& name, const std::string& text) const {
    std::ofstream(dir / name) << text;
    return (dir / name).string();
  }
};

}  // namespace

BOOST_AUTO_TEST_CASE(maps_merge_lists_and_scalars_are_replaced_nested_includes_resolve) {
  IncludeFolder folder;
  std::mt19937 rng(std::random_device{}());
  const int epochs = 2 + static_cast<int>(rng() % 50), lr_milli = 1 + static_cast<int>(rng() % 99);
  folder.write("sub/root.yaml",
               "seed: 3\ndata: {type: idx, dir: /a, validation: 100}\n"
               "train: {epochs: 9, batch_size: 32}\n");
  // Relative to the including file's folder (sub/), not to the current folder.
  folder.write("sub/base.yaml",
               "include: root.yaml\nmodel:\n  input: [1, 28, 28]\n  layers:\n"
               "    - {name: a, type: relu}\n    - {name: b, type: relu}\n"
               "optimizer: {type: sgd, lr: 0.5, momentum: 0.9}\n");
  const std::string top =
      folder.write("top.yaml", fmt::format("include: sub/base.yaml\noptimizer: {{lr: 0.{:03d}}}\n"
                                           "model:\n  layers:\n    - {{name: c, type: relu}}\n"
                                           "train: {{epochs: {}}}\n",
                                           lr_milli, epochs));
  const Config config = Config::parse_file(top);
  BOOST_TEST(!config.has("include"));
  // A map naming another type replaces the included one whole (sgd's momentum is not adam's).
  const std::string adam =
      folder.write("adam.yaml", "include: sub/base.yaml\noptimizer: {type: adam, lr: 0.01}\n");
  BOOST_TEST(
      Config::parse_file(adam).at("optimizer").keys() == (std::vector<std::string>{"type", "lr"}),
      boost::test_tools::per_element());
  BOOST_TEST(config.get<int64_t>("seed") == 3);
  BOOST_TEST(config.at("train").get<int64_t>("epochs") == epochs);
  BOOST_TEST(config.at("train").get<int64_t>("batch_size") == 32);  // merged, not replaced
  BOOST_TEST(config.at("optimizer").get<double>("lr") == lr_milli / 1000.0);
  BOOST_TEST(config.at("optimizer").get<double>("momentum") == 0.9);
  BOOST_TEST(config.at("optimizer").get<std::string>("type") == "sgd");
  BOOST_TEST(config.at("data").get<int64_t>("validation") == 100);
  BOOST_TEST(config.at("model").get<std::vector<int64_t>>("input").size() == 3u);
  const std::vector<Config> layers = config.at("model").at("layers").items();  // replaced
  BOOST_TEST_REQUIRE(layers.size() == 1u);
  BOOST_TEST(layers[0].get<std::string>("name") == "c");
  // The merged tree is the experiment: its dump (what a checkpoint stores) needs no other file.
  const Config again = Config::parse_string(config.dump(), "dump");
  BOOST_TEST(again.at("train").get<int64_t>("batch_size") == 32);
  BOOST_TEST(!again.has("include"));
  // Positions: a value from an included file is reported in THAT file, at its line.
  const std::string type_error = test::error_of([&] { config.at("data").get<int64_t>("type"); });
  STRATA_CHECK_CONTAINS(type_error, "sub/root.yaml:2:14: data.type: expected an integer");
  const std::string own_error = test::error_of([&] { config.at("train").get<bool>("epochs"); });
  STRATA_CHECK_CONTAINS(own_error, "top.yaml:6:17: train.epochs");
}

BOOST_AUTO_TEST_CASE(unknown_keys_of_an_included_file_name_that_file) {
  IncludeFolder folder;
  folder.write("base.yaml", "seed: 1\ntrain:\n  epochs: 1\n  epohcs: 2\n");
  const std::string top = folder.write("top.yaml", "include: base.yaml\ntrain: {batch_size: 4}\n");
  const Config config = Config::parse_file(top);
  config.get<int64_t>("seed");
  config.at("train").get<int64_t>("epochs");
  config.at("train").get<int64_t>("batch_size");
  const std::string message = test::error_of([&] { config.check_unused(); });
  STRATA_CHECK_CONTAINS(message, "base.yaml:4:3: train.epohcs: unknown key 'epohcs'");
}

BOOST_AUTO_TEST_CASE(errors_cycles_missing_files_and_malformed_included_files) {
  IncludeFolder folder;
  folder.write("a.yaml", "include: b.yaml\nseed: 1\n");
  folder.write("b.yaml", "seed: 2\ninclude: [c.yaml]\n");
  folder.write("c.yaml", "include: a.yaml\n");
  STRATA_CHECK_CONTAINS(
      test::error_of([&] { Config::parse_file((folder.dir / "a.yaml").string()); }),
      "c.yaml:1:10: include: 'a.yaml' is already being included: a cycle "
      "(a.yaml -> b.yaml -> c.yaml -> a.yaml)");
  const std::string self = folder.write("self.yaml", "seed: 1\ninclude: self.yaml\n");
  STRATA_CHECK_CONTAINS(test::error_of([&] { Config::parse_file(self); }),
                        "self.yaml:2:10: include: 'self.yaml' is already being included");
  const std::string missing = folder.write("missing.yaml", "include: nowhere.yaml\n");
  STRATA_CHECK_CONTAINS(test::error_of([&] { Config::parse_file(missing); }),
                        "missing.yaml:1:10: include: cannot include 'nowhere.yaml'");
  folder.write("broken.yaml", "seed: 1\ntrain: {epochs: [1, 2}\n");
  const std::string top = folder.write("top.yaml", "include: broken.yaml\n");
  const std::string broken = test::error_of([&] { Config::parse_file(top); });
  STRATA_CHECK_CONTAINS(broken, "broken.yaml:2:");
  STRATA_CHECK_CONTAINS(broken, "malformed YAML");
  const std::string none = folder.write("none.yaml", "include: []\nseed: 5\n");
  BOOST_TEST(Config::parse_file(none).get<int64_t>("seed") == 5);
  const std::string map = folder.write("map.yaml", "include: {file: a.yaml}\n");
  STRATA_CHECK_CONTAINS(test::error_of([&] { Config::parse_file(map); }),
                        "map.yaml:1:10: include: expected a file name or a list of file names");
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(split_rows)

// split_validation_rows names the dataset row of every row split_validation returns (what
// strata eval --output stores as /index).
BOOST_AUTO_TEST_CASE(validation_rows_partition_the_training_rows) {
  std::mt19937 rng(std::random_device{}());
  const int64_t n = 50 + static_cast<int64_t>(rng() % 200);
  const int64_t validation = 1 + static_cast<int64_t>(rng() % (n - 1));
  const uint32_t seed = rng();
  const TrainValRows rows = split_validation_rows(n, validation, seed);
  BOOST_TEST(static_cast<int64_t>(rows.val.size()) == validation);
  BOOST_TEST(std::is_sorted(rows.val.begin(), rows.val.end()));
  BOOST_TEST(std::is_sorted(rows.train.begin(), rows.train.end()));
  const TrainValRows again = split_validation_rows(n, validation, seed);
  BOOST_TEST(again.val == rows.val);  // a function of its arguments
  std::vector<int64_t> every(rows.train);
  every.insert(every.end(), rows.val.begin(), rows.val.end());
  std::sort(every.begin(), every.end());
  for (int64_t i = 0; i < n; ++i) BOOST_TEST(every[i] == i);
  BOOST_TEST(split_validation_rows(n, 0, seed).train.size() == static_cast<std::size_t>(n));
}

// Sharding: over n ranks every position of an epoch's order is read exactly once, by one rank,
// and shard sizes differ by at most one.
BOOST_AUTO_TEST_CASE(shards_cover_every_position_exactly_once) {
  std::mt19937 rng(std::random_device{}());
  for (int trial = 0; trial < 20; ++trial) {
    const int64_t n = static_cast<int64_t>(rng() % 1000);
    const int ranks = 1 + static_cast<int>(rng() % 9);
    std::vector<int64_t> order(static_cast<std::size_t>(n));
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng);
    std::vector<int> seen(static_cast<std::size_t>(n), 0);
    std::size_t smallest = SIZE_MAX, largest = 0;
    for (int rank = 0; rank < ranks; ++rank) {
      const std::vector<int64_t> part = shard(order, rank, ranks);
      smallest = std::min(smallest, part.size());
      largest = std::max(largest, part.size());
      for (int64_t row : part) ++seen[static_cast<std::size_t>(row)];
    }
    BOOST_TEST(largest - smallest <= 1u);
    BOOST_TEST(std::all_of(seen.begin(), seen.end(), [](int count) { return count == 1; }));
  }
  STRATA_CHECK_CONTAINS(test::error_of([] { shard({}, 2, 2); }), "rank 2 of 2");
}

BOOST_AUTO_TEST_SUITE_END()
