// strata/tools/analysis.hpp: a trained model reopened from its checkpoint alone gives what the trainer
// saw (its validation metrics), any layer's activations, its parameters and its preprocessing; the
// plugins it needs are recorded and a missing one is an error naming it and its version.
#define BOOST_TEST_MODULE analysis
#include <boost/test/unit_test.hpp>
#include <nlohmann/json.hpp>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "strata/tools/analysis.hpp"
#include "strata/checkpoint.hpp"
#include "strata/training/trainer.hpp"
#include "test_support.hpp"

namespace fs = std::filesystem;
using namespace strata;

namespace {

const char* kExperiment = R"(
seed: 4
backend: tbb
threads: 2
data: {type: synthetic, classes: 4, shape: [2, 6, 6], train_size: 400, test_size: 100, seed: 9,
       validation: 80, preprocess: [{type: normalize, per: channel}]}
model:
  input: [2, 6, 6]
  layers:
    - {name: conv1, type: conv2d, out_channels: 3, kernel: 3, padding: 1}
    - {name: relu1, type: relu}
    - {name: fc1, type: linear, out_features: 4}
optimizer: {type: sgd, lr: 0.05, momentum: 0.9}
train: {epochs: 2, batch_size: 16}
)";

double json_last(const fs::path& summary, const std::string& metric) {
  std::ifstream in(summary);
  const nlohmann::json json = nlohmann::json::parse(in);
  BOOST_TEST_REQUIRE(json.at("history").contains(metric));
  return json.at("history").at(metric).back().get<double>();
}

}  // namespace

BOOST_AUTO_TEST_CASE(reopened_model_matches_the_trainer) {
  test::TempDir dir;
  TrainOptions options;
  options.out_dir = dir.path();
  options.progress = "none";
  const TrainSummary summary =
      train_experiment(Config::parse_string(kExperiment, "a.yaml"), test::registries(), options);

  const auto records = load_checkpoint_plugins(summary.checkpoint);
  std::vector<std::string> names;
  for (const auto& r : records) names.push_back(r.name);
  for (const char* needed :
       {"layers", "synthetic", "normalize", "backend_tbb", "backend_reference"}) {
    BOOST_TEST((std::find(names.begin(), names.end(), needed) != names.end()), needed);
  }

  Registries registries;
  PluginLoader loader(registries);  // nothing loaded: every plugin comes from its recorded path
  TrainedModel model(summary.checkpoint, registries, loader);
  BOOST_TEST(loader.plugins().size() == records.size());
  BOOST_TEST(model.training()->epoch == 2);

  // The val split is the trainer's: the same accuracy and loss.
  const Split val = model.load_split("val");
  BOOST_TEST_REQUIRE(val.labels.size() == 80u);
  const Tensor logits = model.run(val.images);
  BOOST_TEST_REQUIRE(logits.shape() == (Shape{80, 4}));
  int correct = 0;
  for (int i = 0; i < 80; ++i) {
    const float* row = logits.data() + i * 4;
    correct += (std::max_element(row, row + 4) - row) == val.labels[i];
  }
  BOOST_TEST(std::abs(correct / 80.0 - json_last(summary.summary, "val_accuracy")) < 1e-9);
  BOOST_TEST(std::abs(model.loss().forward_backward(logits, val.labels, nullptr) -
                      json_last(summary.summary, "val_loss")) < 1e-4);
  BOOST_TEST(model.load_split("train").labels.size() == 320u);
  BOOST_TEST(model.load_split("test").labels.size() == 100u);

  // Activations: relu1 is max(conv1, 0), and the last layer equals run()'s output.
  const auto acts = model.run(val.images, {"conv1", "relu1", "fc1"});
  BOOST_TEST_REQUIRE(acts[0].tensor.shape() == (Shape{80, 3, 6, 6}));
  for (int64_t i = 0; i < acts[0].tensor.numel(); ++i) {
    BOOST_REQUIRE_EQUAL(acts[1].tensor.data()[i], std::max(acts[0].tensor.data()[i], 0.0f));
  }
  BOOST_TEST(test::max_abs_diff(acts[2].tensor, logits) == 0.0f);

  // Parameters are the file's.
  Tensor from_file(Shape{3, 2, 3, 3});
  std::vector<NamedTensor> one{{"conv1/weight", from_file}};
  load_checkpoint_tensors(summary.checkpoint, "model", one, /*allow_extra=*/true);
  BOOST_TEST(test::max_abs_diff(model.parameter("conv1/weight"), from_file) == 0.0f);
  STRATA_CHECK_CONTAINS(test::error_of([&] { model.parameter("conv1/wieght"); }),
                        "did you mean 'conv1/weight'");

  // preprocess() is (x - mean) / std with the stored statistics.
  Tensor mean(Shape{2}), std_dev(Shape{2});
  std::vector<NamedTensor> stats{{"0.normalize/mean", mean}, {"0.normalize/std", std_dev}};
  load_checkpoint_tensors(summary.checkpoint, "preprocess", stats);
  std::mt19937 rng(77);
  Tensor raw = test::random_tensor({3, 2, 6, 6}, rng, 0.0f, 1.0f);
  Tensor processed = raw.clone();
  model.preprocess(processed);
  for (int64_t i = 0; i < raw.numel(); ++i) {
    const int64_t c = (i / 36) % 2;
    BOOST_REQUIRE_SMALL(processed.data()[i] - (raw.data()[i] - mean.data()[c]) / std_dev.data()[c],
                        1e-5f);
  }
  STRATA_CHECK_CONTAINS(test::error_of([&] { model.load_split("valid"); }),
                        "expected train, val or test");
}

BOOST_AUTO_TEST_CASE(a_missing_plugin_names_itself_and_its_version) {
  Registries registries;
  PluginLoader loader(registries);
  const std::string message = test::error_of([&] {
    ensure_plugins_loaded({{"prelu_gone", "2.5", "/nowhere/libstrata_prelu_gone.so"}}, loader,
                          "m.h5");
  });
  STRATA_CHECK_CONTAINS(message,
                        "checkpoint m.h5: needs plugin 'prelu_gone' version 2.5, which is not "
                        "loaded and is in none of the trusted plugin folders (");
  STRATA_CHECK_CONTAINS(message, PluginLoader::default_dirs().front().string());
  STRATA_CHECK_CONTAINS(message,
                        "the checkpoint says it was loaded from "
                        "/nowhere/libstrata_prelu_gone.so, but a path recorded in a file "
                        "is never loaded: put the folder of libstrata_prelu_gone.so in "
                        "STRATA_PLUGIN_PATH");
}

// Issue 20, group 1: a checkpoint is data and never chooses code. test_marker stands for a
// malicious plugin: loading it creates the STRATA_TEST_MARKER file (its library constructor runs
// at dlopen, before anything could refuse it).
BOOST_AUTO_TEST_CASE(a_checkpoint_never_makes_strata_load_the_path_it_records) {
  test::TempDir dir;
  const fs::path marker = dir / "marker";
  const fs::path evil =
      fs::canonical(fs::path(STRATA_TEST_PLUGIN_DIR) / "libstrata_test_marker.so");
  ::setenv("STRATA_TEST_MARKER", marker.c_str(), 1);
  ::unsetenv("STRATA_PLUGIN_PATH");

  // A real checkpoint that records test_marker (loaded, legitimately, for training).
  fs::path checkpoint;
  {
    Registries registries;
    PluginLoader loader(registries);
    loader.load_default();
    loader.load_file(evil);
    BOOST_TEST_REQUIRE(fs::exists(marker));  // the marker does detect a load
    TrainOptions options;
    options.out_dir = dir / "run";
    options.progress = "none";
    options.quiet = true;
    Config experiment = Config::parse_string(kExperiment, "a.yaml");
    experiment.set("train.epochs", "1");
    checkpoint = train_experiment(experiment, registries, options).checkpoint;
  }
  const auto records = load_checkpoint_plugins(checkpoint);
  const auto recorded = std::find_if(records.begin(), records.end(),
                                     [](const PluginRecord& r) { return r.name == "test_marker"; });
  BOOST_TEST_REQUIRE((recorded != records.end()));
  BOOST_TEST(fs::path(recorded->path) == evil);
  fs::remove(marker);

  // Reopened with nothing loaded: every other plugin comes from the trusted folder, test_marker
  // is named as missing, and its recorded path is not touched.
  {
    Registries registries;
    PluginLoader loader(registries);
    const std::string message =
        test::error_of([&] { TrainedModel model(checkpoint, registries, loader); });
    STRATA_CHECK_CONTAINS(message,
                          "needs plugin 'test_marker' version 0.0, which is not loaded and "
                          "is in none of the trusted plugin folders");
    STRATA_CHECK_CONTAINS(message, evil.string());
    BOOST_TEST(!fs::exists(marker));
    for (const PluginRef& plugin : loader.plugins()) {
      BOOST_TEST(plugin->path.parent_path() == fs::canonical(PluginLoader::default_dirs().front()));
    }
  }
  // A record whose name is a trusted plugin but whose path is the malicious file: the trusted
  // plugin is loaded by name, the recorded file never.
  {
    Registries registries;
    PluginLoader loader(registries);
    ensure_plugins_loaded({{"layers", "1.0", evil.string()}}, loader, checkpoint);
    BOOST_TEST_REQUIRE(loader.plugins().size() == 1u);
    BOOST_TEST(loader.plugins()[0]->name == "layers");
    BOOST_TEST(loader.plugins()[0]->path.filename() == "libstrata_layers.so");
    BOOST_TEST(!fs::exists(marker));
  }
  // A plugin the user loaded (an experiment file's `plugins:`, or the API's caller) is trusted.
  {
    Registries registries;
    PluginLoader loader(registries);
    loader.load_default();
    loader.load_file(evil);
    TrainedModel model(checkpoint, registries, loader);
    BOOST_TEST(model.training()->epoch == 1);
  }
  ::unsetenv("STRATA_TEST_MARKER");
}

BOOST_AUTO_TEST_CASE(a_checkpoint_naming_an_invalid_plugin_is_refused) {
  Registries registries;
  PluginLoader loader(registries);
  const std::pair<std::string, std::string> cases[] = {
      {"", "it is empty"},
      {"..", "it starts with '.'"},
      {"../../tmp/evil", "it contains '/'"},
      {"-rf", "it starts with '-'"},
      {"a b", "it contains ' '"},
      {std::string(65, 'x'), "it is 65 characters long"},
      {"tab\there", "it contains a control character"}};
  for (const auto& [name, problem] : cases) {
    // clang 14 (the sanitizer builds) cannot capture a structured binding in a lambda.
    const std::string& recorded = name;
    const std::string message = test::error_of([&] {
      ensure_plugins_loaded({{recorded, "1.0", "/tmp/libstrata_x.so"}}, loader, "m.h5");
    });
    STRATA_CHECK_CONTAINS(message, fmt::format("checkpoint m.h5: /plugins names a plugin '{}', "
                                               "which is not a valid plugin name: {}",
                                               name, problem));
  }
  BOOST_TEST(loader.plugins().empty());
}

// Whatever trains also reloads: a run with data.augment (issue 21: eval refused every such
// checkpoint with "data.augment: unknown key 'augment'"), reopened from its checkpoint. The
// augment plugin is recorded with the others, and the reloaded val split is the trainer's: the
// crop to 5x5 has its deterministic counterpart (a centre crop) applied as in training.
BOOST_AUTO_TEST_CASE(a_run_with_augmentation_reopens) {
  test::TempDir dir;
  TrainOptions options;
  options.out_dir = dir.path();
  options.progress = "none";
  Config experiment = Config::parse_string(kExperiment, "augmented.yaml");
  experiment.set("data.augment",
                 "[{type: random_crop, padding: 1, size: 5}, {type: hflip, p: 0.5}]");
  experiment.set("model.input", "[2, 5, 5]");
  const TrainSummary summary = train_experiment(experiment, test::registries(), options);

  const auto records = load_checkpoint_plugins(summary.checkpoint);
  BOOST_TEST((std::find_if(records.begin(), records.end(), [](const PluginRecord& r) {
                return r.name == "augment";
              }) != records.end()));

  Registries registries;
  PluginLoader loader(registries);
  loader.load_default();
  TrainedModel model(summary.checkpoint, registries, loader);
  const Split val = model.load_split("val");
  BOOST_TEST_REQUIRE(val.labels.size() == 80u);
  const Tensor logits = model.run(val.images);
  int correct = 0;
  for (int i = 0; i < 80; ++i) {
    const float* row = logits.data() + i * 4;
    correct += (std::max_element(row, row + 4) - row) == val.labels[i];
  }
  BOOST_TEST(std::abs(correct / 80.0 - json_last(summary.summary, "val_accuracy")) < 1e-9);
  BOOST_TEST(std::abs(model.loss().forward_backward(logits, val.labels, nullptr) -
                      json_last(summary.summary, "val_loss")) < 1e-4);

  // Raw images get the preprocessing, then the centre crop, as the trainer's evaluation images.
  std::mt19937 rng(21);
  Tensor raw = test::random_tensor({3, 2, 6, 6}, rng, 0.0f, 1.0f);
  Tensor processed = raw.clone();
  model.preprocess(processed);
  BOOST_TEST_REQUIRE(processed.shape() == (Shape{3, 2, 5, 5}));
  Tensor mean(Shape{2}), std_dev(Shape{2});
  std::vector<NamedTensor> stats{{"0.normalize/mean", mean}, {"0.normalize/std", std_dev}};
  load_checkpoint_tensors(summary.checkpoint, "preprocess", stats);
  for (int64_t plane = 0; plane < 6; ++plane) {  // the centre 5x5 of 6x6 starts at (0, 0)
    const int64_t c = plane % 2;
    for (int64_t y = 0; y < 5; ++y) {
      for (int64_t x = 0; x < 5; ++x) {
        const float expected =
            (raw.data()[plane * 36 + y * 6 + x] - mean.data()[c]) / std_dev.data()[c];
        BOOST_REQUIRE_SMALL(processed.data()[plane * 25 + y * 5 + x] - expected, 1e-5f);
      }
    }
  }
}
