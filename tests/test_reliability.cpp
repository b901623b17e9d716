// Reliability of training runs (issue 10): divergence never replaces a good checkpoint, NaN
// propagates and is refused when a checkpoint is loaded, and a resume is validated against the
// experiment and the checkpoint before anything is trained.
#define BOOST_TEST_MODULE reliability
#include <fcntl.h>
#include <hdf5.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <boost/test/unit_test.hpp>
#include <cmath>
#include <fstream>
#include <limits>
#include <random>
#include <sstream>

#include "strata/training/checks.hpp"
#include "strata/checkpoint.hpp"
#include "strata/graph.hpp"
#include "strata/training/trainer.hpp"
#include "test_support.hpp"

using namespace strata;
namespace fs = std::filesystem;

namespace {

// 1,200 training images after the validation split: with batch_size 1200 an epoch is one step, so
// a step schedule with a huge gamma makes the weights explode right after a finite loss (the case
// of the issue: the loss check of the training loop cannot see it, the validation loss can).
const char* kExperiment = R"(
seed: 3
backend: reference
data: {type: synthetic, classes: 4, shape: [1, 8, 8], train_size: 1500, test_size: 200, seed: 5,
       validation: 300}
model:
  input: [1, 8, 8]
  layers:
    - {name: conv1, type: conv2d, out_channels: 4, kernel: 3, padding: 1}
    - {name: relu1, type: relu}
    - {name: pool1, type: max_pool, kernel: 2}
    - {name: fc1, type: linear, out_features: 4}
optimizer: {type: sgd, lr: 0.05, momentum: 0.9}
train: {epochs: 2, batch_size: 64}
)";

using Sets = std::vector<std::pair<std::string, std::string>>;

Config experiment(const Sets& sets) {
  Config config = Config::parse_string(kExperiment, "small.yaml");
  for (const auto& [key, value] : sets) config.set(key, value);
  return config;
}

TrainSummary run(const fs::path& out, const Sets& sets = {}, bool resume = false,
                 bool force = false, bool allow_nonfinite = false) {
  TrainOptions options;
  options.out_dir = out;
  options.resume = resume;
  options.force = force;
  options.allow_nonfinite = allow_nonfinite;
  options.progress = "none";
  return train_experiment(experiment(sets), test::registries(), options);
}

std::vector<NamedTensor> load_model(const fs::path& checkpoint, bool allow_nonfinite = false) {
  Rng rng(1);
  Graph graph(experiment({}).at("model"), test::registries(), test::backend(), rng);
  std::vector<NamedTensor> state = graph.state_tensors();
  load_checkpoint_tensors(checkpoint, "model", state, false, allow_nonfinite);
  return state;
}

// Overwrites dataset `path` of an HDF5 file in place through the C API (h5py-like editing).
void write_floats(const fs::path& file, const std::string& path, const std::vector<float>& values) {
  hid_t f = H5Fopen(file.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  BOOST_REQUIRE(f >= 0);
  hid_t d = H5Dopen2(f, path.c_str(), H5P_DEFAULT);
  BOOST_REQUIRE(d >= 0);
  BOOST_REQUIRE(H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()) >= 0);
  H5Dclose(d);
  H5Fclose(f);
  reseal_hdf5_file(file);  // an edit on purpose: the checksum must not be what refuses it
}

void set_integer_attribute(const fs::path& file, const char* group, const char* name,
                           int64_t value) {
  hid_t f = H5Fopen(file.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  hid_t g = H5Gopen2(f, group, H5P_DEFAULT);
  hid_t a = H5Aopen(g, name, H5P_DEFAULT);
  BOOST_REQUIRE(a >= 0);
  BOOST_REQUIRE(H5Awrite(a, H5T_NATIVE_INT64, &value) >= 0);
  H5Aclose(a);
  H5Gclose(g);
  H5Fclose(f);
  reseal_hdf5_file(file);
}

// Replaces a string attribute (variable-length UTF-8, as the checkpoint writes them).
void set_string_attribute(const fs::path& file, const char* group, const char* name,
                          const std::string& value) {
  hid_t f = H5Fopen(file.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  hid_t g = H5Gopen2(f, group, H5P_DEFAULT);
  BOOST_REQUIRE(H5Adelete(g, name) >= 0);
  hid_t type = H5Tcopy(H5T_C_S1);
  H5Tset_size(type, H5T_VARIABLE);
  H5Tset_cset(type, H5T_CSET_UTF8);
  hid_t space = H5Screate(H5S_SCALAR);
  hid_t a = H5Acreate2(g, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
  const char* text = value.c_str();
  BOOST_REQUIRE(H5Awrite(a, type, &text) >= 0);
  H5Aclose(a);
  H5Sclose(space);
  H5Tclose(type);
  H5Gclose(g);
  H5Fclose(f);
  reseal_hdf5_file(file);
}

void delete_link(const fs::path& file, const char* path) {
  hid_t f = H5Fopen(file.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  BOOST_REQUIRE(H5Ldelete(f, path, H5P_DEFAULT) >= 0);
  H5Fclose(f);
  reseal_hdf5_file(file);
}

bool all_finite(const std::vector<NamedTensor>& tensors) {
  return describe_nonfinite(tensors).empty();
}

}  // namespace

BOOST_AUTO_TEST_SUITE(divergence)

BOOST_AUTO_TEST_CASE(nonfinite_validation_loss_keeps_the_last_good_checkpoint) {
  test::TempDir dir;
  const Sets exploding{{"optimizer.momentum", "0"},
                       {"optimizer.schedule", "{type: step, step_size: 1, gamma: 1e30}"},
                       {"train.epochs", "3"},
                       {"train.batch_size", "1200"}};
  const std::string message = test::error_of([&] { run(dir.path(), exploding); });
  STRATA_CHECK_CONTAINS(message, "training diverged in epoch 2: the validation loss is nan");
  STRATA_CHECK_CONTAINS(message, "model.h5 was not overwritten and still holds epoch 1");
  auto state = load_checkpoint_training_state(dir / "model.h5");
  BOOST_REQUIRE(state.has_value());
  BOOST_TEST(state->epoch == 1);
  for (double v : state->history.at("val_loss")) BOOST_TEST(std::isfinite(v));
  BOOST_TEST(all_finite(load_model(dir / "model.h5")));
  BOOST_TEST(!fs::exists(dir / "summary.json"));
}

BOOST_AUTO_TEST_CASE(nonfinite_weights_are_divergence) {
  std::mt19937 rng(7);
  std::vector<NamedTensor> model{{"conv1/weight", test::random_tensor(Shape{4, 1, 3, 3}, rng)},
                                 {"fc1/weight", test::random_tensor(Shape{4, 64}, rng)}};
  std::vector<NamedTensor> optimizer{{"conv1/weight/momentum", test::random_tensor(Shape{4}, rng)}};
  // All finite: no error.
  check_not_diverged(1, 0.5, 0.7, true, model, optimizer, "m.h5", 0);
  // No validation split: its NaN loss means nothing.
  check_not_diverged(1, 0.5, std::numeric_limits<double>::quiet_NaN(), false, model, optimizer,
                     "m.h5", 0);
  model[1].tensor.data()[17] = std::numeric_limits<float>::infinity();
  BOOST_TEST(
      test::error_of([&] { check_not_diverged(4, 0.5, 0.7, true, model, optimizer, "m.h5", 3); }) ==
      "training diverged in epoch 4: a weight is not finite (/model/fc1/weight[17] = inf); m.h5 "
      "was not overwritten and still holds epoch 3. Lower optimizer.lr (or its schedule) or "
      "check the data");
  model[1].tensor.data()[17] = 1;
  optimizer[0].tensor.data()[2] = std::nanf("");
  STRATA_CHECK_CONTAINS(
      test::error_of([&] { check_not_diverged(1, 0.5, 0.7, true, model, optimizer, "m.h5", -1); }),
      "the optimizer state is not finite (/optimizer/conv1/weight/momentum[2] = nan); no "
      "checkpoint was written");
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(nonfinite_values)

// A checkpoint whose conv1 weights are NaN: loading it is an error naming the tensor, and with
// allow_nonfinite a resume from it stops as diverged (relu no longer turns NaN into 0).
BOOST_AUTO_TEST_CASE(nonfinite_checkpoint_is_refused_unless_allowed) {
  test::TempDir dir;
  run(dir.path(), {{"train.epochs", "1"}});
  std::vector<float> poisoned(4 * 1 * 3 * 3, 0.1f);
  poisoned[5] = std::nanf("");
  write_floats(dir / "model.h5", "/model/conv1/weight", poisoned);

  BOOST_TEST(test::error_of([&] { load_model(dir / "model.h5"); }) ==
             "checkpoint " + (dir / "model.h5").string() +
                 ": /model/conv1/weight[5] is nan: the run that wrote this checkpoint diverged or "
                 "the file was edited (load it anyway with --allow-nonfinite)");
  STRATA_CHECK_CONTAINS(test::error_of([&] { run(dir.path(), {}, /*resume=*/true); }),
                        "/model/conv1/weight[5] is nan");
  const std::vector<NamedTensor> loaded = load_model(dir / "model.h5", /*allow_nonfinite=*/true);
  BOOST_TEST(std::isnan(loaded[0].tensor.data()[5]));
  STRATA_CHECK_CONTAINS(test::error_of([&] {
                          run(dir.path(), {}, /*resume=*/true, false, /*allow_nonfinite=*/true);
                        }),
                        "training diverged at iteration 20 (epoch 2, step 1 of");
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(resume)

BOOST_AUTO_TEST_CASE(resume_without_a_checkpoint_is_an_error) {
  test::TempDir dir;
  BOOST_TEST(test::error_of([&] { run(dir / "fresh", {}, /*resume=*/true); }) ==
             "--resume: " + (dir / "fresh" / "model.h5").string() +
                 " does not exist, so there is nothing to resume (run without --resume to start a "
                 "new run)");
  BOOST_TEST(!fs::exists(dir / "fresh" / "model.h5"));
}

BOOST_AUTO_TEST_CASE(changed_experiment_lists_the_keys_and_stops) {
  test::TempDir dir;
  run(dir.path(), {{"train.epochs", "1"}});
  for (const auto& [key, value, expected] :
       std::vector<std::tuple<std::string, std::string, std::string>>{
           {"optimizer.lr", "0.1", "optimizer.lr: 0.05 in the checkpoint, 0.1 now"},
           {"train.batch_size", "32", "train.batch_size: 64 in the checkpoint, 32 now"},
           {"seed", "4", "seed: 3 in the checkpoint, 4 now"},
           {"data.validation", "200", "data.validation: 300 in the checkpoint, 200 now"},
           // A default filled in at the first run counts: momentum 0.9 was given, dampening not.
           {"optimizer.nesterov", "true", "optimizer.nesterov: false in the checkpoint, true now"},
           {"train.shuffle", "false", "train.shuffle: true in the checkpoint, false now"}}) {
    const std::string message =
        test::error_of([&, &key = key, &value = value] { run(dir.path(), {{key, value}}, true); });
    STRATA_CHECK_CONTAINS(message, "--resume: the experiment differs from the one that wrote");
    STRATA_CHECK_CONTAINS(message, expected);
  }
  // Allowed: more epochs, other threads or backend, and the same value written differently.
  run(dir.path(), {{"train.epochs", "2"}, {"threads", "1"}, {"optimizer.lr", "5e-2"}}, true);
  BOOST_TEST(load_checkpoint_training_state(dir / "model.h5")->epoch == 2);
  // --force resumes despite a difference.
  run(dir.path(), {{"train.epochs", "3"}, {"optimizer.lr", "0.01"}}, true, /*force=*/true);
  BOOST_TEST(load_checkpoint_training_state(dir / "model.h5")->epoch == 3);
}

BOOST_AUTO_TEST_CASE(checkpoint_experiment_holds_every_default) {
  test::TempDir dir;
  run(dir.path(), {{"train.epochs", "1"}});
  Config saved = Config::parse_string(load_checkpoint_experiment(dir / "model.h5"), "/experiment");
  BOOST_TEST(saved.at("train").get<int64_t>("eval_batch_size") == 500);
  BOOST_TEST(saved.at("train").get<bool>("shuffle") == true);
  BOOST_TEST(saved.get<int64_t>("threads") == 0);
  BOOST_TEST(saved.at("data").get<int64_t>("train_limit") == 0);
  BOOST_TEST(saved.at("optimizer").has("weight_decay"));
}

BOOST_AUTO_TEST_CASE(corrupt_training_state_is_refused_before_training) {
  const auto prepare = [](const test::TempDir& dir) {
    run(dir.path(), {{"train.epochs", "1"}});
    return dir / "model.h5";
  };
  {
    test::TempDir dir;
    const fs::path file = prepare(dir);
    set_integer_attribute(file, "/training", "epoch", -5);
    STRATA_CHECK_CONTAINS(test::error_of([&] { run(dir.path(), {}, true); }),
                          "/training epoch is -5, expected a count of completed epochs");
  }
  {
    test::TempDir dir;
    const fs::path file = prepare(dir);
    set_integer_attribute(file, "/training", "epoch", 1000);
    STRATA_CHECK_CONTAINS(test::error_of([&] { run(dir.path(), {}, true); }),
                          "/training epoch is 1000 but train.epochs is 2");
  }
  {
    test::TempDir dir;
    const fs::path file = prepare(dir);
    set_integer_attribute(file, "/training", "iteration", 7);
    STRATA_CHECK_CONTAINS(test::error_of([&] { run(dir.path(), {}, true); }),
                          "/training iteration is 7 but 1 epochs of 19 steps make 19");
  }
  for (const char* metric :
       {"/history/epoch_seconds", "/history/images_per_second", "/history/val_loss"}) {
    test::TempDir dir;
    const fs::path file = prepare(dir);
    delete_link(file, metric);
    STRATA_CHECK_CONTAINS(test::error_of([&] { run(dir.path(), {}, true); }),
                          std::string(metric) + " is missing");
  }
}

BOOST_AUTO_TEST_SUITE_END()

// TrainOptions::stop (Ctrl-C in `strata train`, issue 21): the run stops after the step during
// which the flag was raised, saves that point, and a resume ends bit-identical to a run that was
// never stopped. The flag is raised from on_iteration, so the stops land on chosen steps.
BOOST_AUTO_TEST_SUITE(interrupt)

TrainSummary run_until(const fs::path& out, int64_t stop_at, bool resume) {
  std::atomic<bool> stop{false};
  TrainOptions options;
  options.out_dir = out;
  options.resume = resume;
  options.progress = "none";
  options.stop = &stop;
  options.on_iteration = [&](const IterationReport& report) {
    if (report.iteration == stop_at) stop.store(true);
  };
  // Dropout draws from the trainer's generator on every step: it must continue exactly.
  return train_experiment(
      experiment({{"model.layers[1]", "{name: drop1, type: dropout, keep_prob: 0.75}"},
                  {"data.augment", "[{type: hflip}]"}}),
      test::registries(), options);
}

BOOST_AUTO_TEST_CASE(stopped_mid_epoch_and_resumed_is_bit_identical) {
  test::TempDir straight, stopped;
  const TrainSummary whole = run_until(straight.path(), -1, false);
  BOOST_TEST(!whole.interrupted);
  BOOST_TEST(whole.iterations == 38);  // 2 epochs of 19 steps

  // Step 7 of epoch 1, step 5 of epoch 2, the last step of epoch 2 (no stop: the run ends).
  TrainSummary first = run_until(stopped.path(), 7, false);
  BOOST_TEST(first.interrupted);
  BOOST_TEST(first.iterations == 7);
  std::optional<TrainingState> state = load_checkpoint_training_state(stopped / "model.h5");
  BOOST_TEST_REQUIRE(state->partial.has_value());
  BOOST_TEST(state->epoch == 0);
  BOOST_TEST(state->partial->step == 7);
  BOOST_TEST(state->partial->seen == 7 * 64);
  BOOST_TEST(!fs::exists(stopped / "summary.json"));

  TrainSummary second = run_until(stopped.path(), 19 + 5, true);
  BOOST_TEST(second.interrupted);
  state = load_checkpoint_training_state(stopped / "model.h5");
  BOOST_TEST(state->epoch == 1);
  BOOST_TEST(state->partial->step == 5);
  BOOST_TEST(state->history["train_loss"].size() == 1u);

  const TrainSummary last = run_until(stopped.path(), 38, true);
  BOOST_TEST(!last.interrupted);
  BOOST_TEST(last.test_accuracy == whole.test_accuracy);
  for (const char* group : {"model", "optimizer"}) {
    for (const auto& [name, shape] : checkpoint_tensor_shapes(straight / "model.h5", group)) {
      Tensor a(shape), b(shape);
      std::vector<NamedTensor> x{{name, a}}, y{{name, b}};
      load_checkpoint_tensors(straight / "model.h5", group, x, true);
      load_checkpoint_tensors(stopped / "model.h5", group, y, true);
      BOOST_TEST(test::max_abs_diff(a, b) == 0.0f, group << "/" << name);
    }
  }
  const auto a = load_checkpoint_training_state(straight / "model.h5");
  const auto b = load_checkpoint_training_state(stopped / "model.h5");
  for (const char* metric : {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"}) {
    BOOST_TEST(a->history.at(metric) == b->history.at(metric), metric);
  }
  BOOST_TEST(!b->partial.has_value());
}

// The order of an epoch comes from (seed, epoch), not from the generator; a checkpoint stopped
// mid-epoch says so. One written before (its epoch_rng_state a std::mt19937, whose std::shuffle
// drew the order) cannot finish its epoch in the same order, so its resume is refused by name.
BOOST_AUTO_TEST_CASE(a_mid_epoch_checkpoint_shuffled_by_std_shuffle_is_refused) {
  test::TempDir dir;
  BOOST_TEST(run_until(dir.path(), 7, false).interrupted);
  const auto state = load_checkpoint_training_state(dir / "model.h5");
  BOOST_TEST_REQUIRE(state->partial.has_value());
  BOOST_TEST(state->partial->rng_state == "order: strata::Stream(seed, epoch)");
  std::ostringstream old_generator;
  old_generator << std::mt19937(std::random_device{}());
  set_string_attribute(dir / "model.h5", "/training", "epoch_rng_state", old_generator.str());
  STRATA_CHECK_CONTAINS(test::error_of([&] { run_until(dir.path(), -1, true); }),
                        "was interrupted in epoch 1 by a Strata that shuffled the batches with "
                        "std::shuffle");
}

BOOST_AUTO_TEST_CASE(a_stop_in_the_last_step_ends_the_epoch_first) {
  test::TempDir dir;
  const TrainSummary summary = run_until(dir.path(), 19, false);
  BOOST_TEST(summary.interrupted);
  const std::optional<TrainingState> state = load_checkpoint_training_state(dir / "model.h5");
  BOOST_TEST(state->epoch == 1);
  BOOST_TEST(state->iteration == 19);
  BOOST_TEST(!state->partial.has_value());
  BOOST_TEST(state->history.at("val_loss").size() == 1u);
}

BOOST_AUTO_TEST_CASE(a_hand_edited_epoch_step_is_refused) {
  test::TempDir dir;
  run_until(dir.path(), 4, false);
  set_integer_attribute(dir / "model.h5", "/training", "epoch_step", 19);
  STRATA_CHECK_CONTAINS(test::error_of([&] { run_until(dir.path(), -1, true); }),
                        "/training epoch_step is 19, expected 1 to 18 (steps into epoch 1 of 2)");
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(early_checks)

BOOST_AUTO_TEST_CASE(invalid_layer_names_fail_at_graph_build) {
  Rng rng(1);
  auto build = [&](const std::string& name) {
    Config model = test::yaml("input: [4]\nlayers:\n  - {name: \"" + name + "\", type: relu}\n");
    Graph graph(model, test::registries(), test::backend(), rng);
  };
  STRATA_CHECK_CONTAINS(
      test::error_of([&] { build("."); }),
      "layers[0].name: '.' cannot name a layer: '.' and '..' are not valid HDF5 path components");
  STRATA_CHECK_CONTAINS(test::error_of([&] { build(".."); }), "'..' cannot name a layer");
  STRATA_CHECK_CONTAINS(test::error_of([&] { build("a/b"); }), "it contains '/'");
  STRATA_CHECK_CONTAINS(test::error_of([&] { build("input"); }), "'input' is reserved");
  STRATA_CHECK_CONTAINS(test::error_of([&] { build("\xff\xfe"); }),
                        "this name cannot name a layer: it is not valid UTF-8");
  STRATA_CHECK_CONTAINS(test::error_of([&] { build("a\\tb"); }), "it contains a control character");
  build("conv_ü1");  // valid UTF-8 is fine
}

BOOST_AUTO_TEST_CASE(sanitized_layer_names_build) {
  Rng rng(1);
  auto build = [&](const std::string& name) {
    Config model = test::yaml("input: [4]\nlayers:\n  - {name: \"" + name + "\", type: relu}\n");
    Graph graph(model, test::registries(), test::backend(), rng);
  };
  for (const std::string& name :
       {std::string("."), std::string(".."), std::string(""), std::string("input"),
        std::string("a/b,c@d"), std::string("\xff\xfe"), std::string("a\tb\x7f")}) {
    build(sanitized_layer_name(name));
  }
  BOOST_TEST(sanitized_layer_name("a/b,c@d") == "a_b_c_d");
  BOOST_TEST(sanitized_layer_name("input") == "input_");
  BOOST_TEST(sanitized_layer_name("conv_ü1") == "conv_ü1");
  BOOST_TEST(sanitized_layer_name("x\xff") == "x_");
}

BOOST_AUTO_TEST_CASE(init_must_be_a_map) {
  Rng rng(1);
  for (const char* init : {"normal", "[{type: normal}]"}) {
    Config model = test::yaml(
        std::string("input: [4]\nlayers:\n  - {name: fc, type: linear, out_features: 2, init: ") +
        init + "}\n");
    STRATA_CHECK_CONTAINS(
        test::error_of([&] { Graph graph(model, test::registries(), test::backend(), rng); }),
        "layers[0].init: expected a map from parameter name to initializer");
  }
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(early_checks_in_the_trainer)

BOOST_AUTO_TEST_CASE(logits_must_match_the_classes_before_data_is_loaded) {
  test::TempDir dir;
  STRATA_CHECK_CONTAINS(test::error_of([&] {
                          run(dir.path(), {{"model.layers[3].out_features", "5"}});
                        }),
                        "small.yaml:12:7: model.layers[3]: the last layer 'fc1' gives 5 scores per "
                        "image but the dataset has 4 classes");
  STRATA_CHECK_CONTAINS(
      test::error_of([&] {
        run(dir.path(),
            {{"model.layers", "[{name: conv1, type: conv2d, out_channels: 4, kernel: 3}]"}});
      }),
      "model.layers[0]: the last layer 'conv1' gives [4, 6, 6] per image, but the loss expects one "
      "score per class");
  BOOST_TEST(!fs::exists(dir / "model.h5"));
}

BOOST_AUTO_TEST_CASE(sizes_that_overflow_or_exceed_memory_name_the_key) {
  test::TempDir dir;
  STRATA_CHECK_CONTAINS(test::error_of([&] {
                          run(dir.path(), {{"model.input", "[1, 4294967296, 4294967296]"}});
                        }),
                        "model.input: extents must be at most 2147483647 (2^31 - 1)");
  STRATA_CHECK_CONTAINS(test::error_of([&] {
                          run(dir.path(), {{"model.layers[0].padding", "4611686018427387904"}});
                        }),
                        "model.layers[0].padding: must be at most 2147483647");
  STRATA_CHECK_CONTAINS(test::error_of([&] {
                          run(dir.path(), {{"model.layers[0].dilation", "4611686018427387904"}});
                        }),
                        "model.layers[0].dilation: must be at most 2147483647");
  STRATA_CHECK_CONTAINS(test::error_of([&] {
                          run(dir.path(),
                              {{"model.input", "[3000000, 3000000, 3000000]"},
                               {"model.layers", "[{name: fc1, type: linear, out_features: 4}]"}});
                        }),
                        "model.input: shape [3000000, 3000000, 3000000] has too many elements");
  const std::string batch = test::error_of([&] {
    run(dir.path(), {{"train.batch_size", "1000000000"}});
  });
  STRATA_CHECK_CONTAINS(batch, "train.batch_size: the model needs about");
  STRATA_CHECK_CONTAINS(batch, "for batches of 1000000000 images");
  STRATA_CHECK_CONTAINS(batch, "more than this machine's memory");
  STRATA_CHECK_CONTAINS(test::error_of([&] {
                          run(dir.path(), {{"model.layers[0].out_channels", "10000000000"}});
                        }),
                        "model.layers[0]: layer 'conv1' (conv2d, input [1, 8, 8]): a tensor of "
                        "shape [10000000000, 1, 3, 3] needs 360.0 GB, "
                        "more than this machine's memory");
  STRATA_CHECK_CONTAINS(test::error_of([&] {
                          run(dir.path(), {{"data.train_size", "10000000000"}});
                        }),
                        "data.train_size: 10000000000 images of shape [1, 8, 8] need 2.6 TB, more "
                        "than this machine's memory");
  STRATA_CHECK_CONTAINS(test::error_of([&] {
                          run(dir.path(), {{"data.shape", "[1000000, 1000000, 1000000]"}});
                        }),
                        "data.shape: the 4 class prototypes of shape [1000000, 1000000, 1000000] need");
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(experiment_files)

BOOST_AUTO_TEST_CASE(alias_bomb_is_bounded) {
  std::string text;
  text = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n";
  for (int i = 1; i < 9; ++i) {
    text += fmt::format(
        "a{0}: &a{0} [*a{1}, *a{1}, *a{1}, *a{1}, *a{1}, *a{1}, *a{1}, *a{1}, *a{1}, *a{1}]\n", i,
        i - 1);
  }
  STRATA_CHECK_CONTAINS(test::error_of([&] { Config::parse_string(text, "bomb.yaml"); }),
                        "the document expands to more than 1000000 values");
}

BOOST_AUTO_TEST_CASE(out_of_range_numbers_and_folders_are_errors) {
  Config config = Config::parse_string("lr: 1e39\nsmall: 1e-3\n", "n.yaml");
  BOOST_TEST(test::error_of([&] { config.get<float>("lr"); }) ==
             "n.yaml:1:5: lr: expected a number within float range (|x| < 3.4e38), found '1e39'");
  BOOST_TEST(config.get<float>("small") == 1e-3f);
  test::TempDir dir;
  BOOST_TEST(test::error_of([&] { Config::parse_file(dir.path().string()); }) ==
             dir.path().string() + ": is a folder, not an experiment file");
}

// Issue 20: an alias inside its own anchor recursed until the stack overflowed.
BOOST_AUTO_TEST_CASE(self_referencing_aliases_are_errors_not_stack_overflows) {
  for (const char* text :
       {"a: &x [*x]\n", "a: &x {b: [1, *x]}\n", "seed: 1\nm: &m {n: &n [*m]}\n"}) {
    STRATA_CHECK_CONTAINS(test::error_of([&] { Config::parse_string(text, "cycle.yaml"); }),
                          "malformed YAML: an alias refers to a list or map that contains it");
  }
  STRATA_CHECK_CONTAINS(test::error_of([&] { Config::parse_string("a: &x [*x]\n", "cycle.yaml"); }),
                        "cycle.yaml:1:4: ");
  // An alias of a sibling is fine, however often it is used.
  const Config shared = Config::parse_string("a: &x [1, 2]\nb: [*x, *x]\n", "shared.yaml");
  BOOST_TEST(shared.at("b").items().size() == 2u);
  Config config = Config::parse_string("seed: 1\n", "s.yaml");
  STRATA_CHECK_CONTAINS(test::error_of([&] { config.set("seed", "&x [*x]"); }),
                        "--set seed=&x [*x]:1:");
  // Aliases nest deeper than the text: 2 x 300 levels, each within the parser's own limit.
  const std::string deep = std::string(300, '[') + "1" + std::string(300, ']');
  const std::string deeper = std::string(300, '[') + "*d" + std::string(300, ']');
  STRATA_CHECK_CONTAINS(test::error_of([&] {
                          Config::parse_string("a: &d " + deep + "\nb: " + deeper + "\n", "d.yaml");
                        }),
                        "nested deeper than 500 levels of lists or maps (through YAML aliases?)");
}

BOOST_AUTO_TEST_CASE(a_second_document_is_an_error) {
  STRATA_CHECK_CONTAINS(
      test::error_of([&] { Config::parse_string("seed: 1\n---\nseed: 2\n", "two.yaml"); }),
      "two.yaml:3:1: the text holds 2 YAML documents");
  BOOST_TEST(Config::parse_string("---\nseed: 1\n", "one.yaml").get<int>("seed") == 1);
}

// yaml-cpp's LoadAll loops forever on a stray ',' after a top-level flow collection (found by
// fuzz_experiment): the parse stops at it with an error naming it.
BOOST_AUTO_TEST_CASE(a_stray_token_after_the_top_level_value_is_an_error) {
  STRATA_CHECK_CONTAINS(test::error_of([&] { Config::parse_string("[1],", "stray.yaml"); }),
                        "stray.yaml:1:4: malformed YAML: unexpected ',' after the document's "
                        "top-level value");
  STRATA_CHECK_CONTAINS(
      test::error_of([&] { Config::parse_string(" [2, 3, 4]\n, repeat: 9}", "stray.yaml"); }),
      "stray.yaml:2:1: malformed YAML: unexpected ','");
}

BOOST_AUTO_TEST_CASE(numbers_that_are_zero_as_floats_are_errors) {
  Rng rng(20);
  std::uniform_real_distribution<double> mantissa(1.0, 9.0);
  const double tiny = mantissa(rng) * 1e-47;
  const double small = mantissa(rng) * 1e-30;
  Config config =
      Config::parse_string(fmt::format("tiny: {}\nsmall: {}\nzero: 0\n", tiny, small), "f.yaml");
  STRATA_CHECK_CONTAINS(test::error_of([&] { config.get<double>("tiny"); }), "f.yaml:1:7: tiny: ");
  STRATA_CHECK_CONTAINS(test::error_of([&] { config.get<float>("tiny"); }),
                        "is 0 as a 32-bit float: expected 0 or a magnitude of at least 1.4013e-45");
  BOOST_TEST(config.get<double>("small") == small);
  BOOST_TEST(config.get<float>("zero") == 0.0f);
}

BOOST_AUTO_TEST_CASE(experiment_files_must_be_regular_and_bounded) {
  test::TempDir dir;
  const fs::path fifo = dir.path() / "fifo.yaml";
  BOOST_REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  // Without O_NONBLOCK this would wait for a writer forever.
  STRATA_CHECK_CONTAINS(test::error_of([&] { Config::parse_file(fifo.string()); }),
                        "is a named pipe (FIFO), not a regular file");
  STRATA_CHECK_CONTAINS(test::error_of([&] { Config::parse_file("/dev/zero"); }),
                        "experiment file /dev/zero: is a character device, not a regular file");
  const fs::path loop = dir.path() / "loop.yaml";
  fs::create_symlink(loop, loop);
  STRATA_CHECK_CONTAINS(test::error_of([&] { Config::parse_file(loop.string()); }),
                        "is a symbolic link loop");
  const fs::path big = dir.path() / "big.yaml";
  { std::ofstream(big) << "seed: 1\n"; }
  fs::resize_file(big, (std::uintmax_t{16} << 20) + 1);  // the limit is 16 MiB
  STRATA_CHECK_CONTAINS(test::error_of([&] { Config::parse_file(big.string()); }),
                        "more than the limit of 16777216 bytes (16 MiB)");
  STRATA_CHECK_CONTAINS(
      test::error_of([&] { Config::parse_file((dir.path() / "none.yaml").string()); }),
      "none.yaml: does not exist");
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(divergence_advice_names_the_cause)

BOOST_AUTO_TEST_CASE(eps_and_weight_decay_are_blamed_before_the_learning_rate) {
  const Config plain = Config::parse_string("{type: adam, lr: 0.001}", "o.yaml");
  BOOST_TEST(divergence_advice(plain) == "lower optimizer.lr (or its schedule) or check the data");
  const Config no_eps = Config::parse_string("{type: rmsprop, lr: 0.001, eps: 0}", "o.yaml");
  STRATA_CHECK_CONTAINS(divergence_advice(no_eps), "the likely cause is optimizer.eps is 0");
  const Config decay = Config::parse_string("{type: sgd, lr: 0.5, weight_decay: 8}", "o.yaml");
  STRATA_CHECK_CONTAINS(divergence_advice(decay),
                        "optimizer.weight_decay is 8 with lr 0.5: weight decay alone multiplies "
                        "the weights by 1 - lr x weight_decay = -3 each step");
  const std::vector<NamedTensor> none;
  STRATA_CHECK_CONTAINS(test::error_of([&] {
                          check_not_diverged(2, std::nan(""), 0.5, false, none, none, "m.h5", 1,
                                             divergence_advice(no_eps));
                        }),
                        "still holds epoch 1. The likely cause is optimizer.eps is 0");
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(output_folder)

BOOST_AUTO_TEST_CASE(a_second_run_on_the_same_folder_is_refused) {
  test::TempDir dir;
  // Hold the lock as a concurrent run would.
  const int fd = ::open((dir / ".lock").c_str(), O_RDWR | O_CREAT, 0644);
  BOOST_REQUIRE(fd >= 0);
  BOOST_REQUIRE(::flock(fd, LOCK_EX | LOCK_NB) == 0);
  STRATA_CHECK_CONTAINS(test::error_of([&] { run(dir.path()); }),
                        "another strata run is writing to this output folder");
  BOOST_TEST(!fs::exists(dir / "model.h5"));
  ::close(fd);
  run(dir.path(), {{"train.epochs", "1"}});  // free again
  BOOST_TEST(fs::exists(dir / "model.h5"));
}

BOOST_AUTO_TEST_CASE(an_unwritable_output_folder_fails_before_training) {
  if (::geteuid() == 0) {
    // root writes anywhere: use a path below a regular file instead, which nobody can create.
    test::TempDir dir;
    std::ofstream(dir / "file") << "x";
    STRATA_CHECK_CONTAINS(test::error_of([&] { run(dir / "file" / "out"); }),
                          "cannot create the output folder");
    return;
  }
  test::TempDir dir;
  fs::create_directories(dir / "ro");
  fs::permissions(dir / "ro", fs::perms::owner_read | fs::perms::owner_exec);
  STRATA_CHECK_CONTAINS(
      test::error_of([&] { run(dir / "ro"); }),
      "the output folder is not writable: cannot create .lock: Permission denied");
  fs::permissions(dir / "ro", fs::perms::owner_all);
}

BOOST_AUTO_TEST_SUITE_END()
