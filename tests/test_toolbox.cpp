// The training toolbox: data augmentation (random_crop, hflip, the prefetching loader and its
// determinism), and babysitting (per-iteration history, diagnostics, the initial-loss check,
// train.overfit, the explosion guard, early stopping and best.h5).
#define BOOST_TEST_MODULE toolbox
#include <fmt/format.h>
#include <tbb/task_arena.h>

#include <malloc.h>

#include <atomic>
#include <boost/test/unit_test.hpp>
#include <cmath>
#include <fstream>
#include <limits>
#include <numeric>
#include <random>
#include <set>
#include <sstream>

#include "strata/checkpoint.hpp"
#include "strata/training/data_loader.hpp"
#include "strata/dataset.hpp"
#include "strata/training/diagnostics.hpp"
#include "strata/graph.hpp"
#include "strata/training/trainer.hpp"
#include "test_support.hpp"

using namespace strata;
namespace fs = std::filesystem;

namespace {

std::shared_ptr<Transform> make_transform(const std::string& yaml, const Shape& sample) {
  std::shared_ptr<Transform> t = test::registries().transforms.create(test::yaml(yaml));
  t->setup(sample);
  return t;
}

const char* kExperiment = R"(
seed: 3
backend: tbb
threads: 2
data: {type: synthetic, classes: 10, shape: [1, 12, 12], train_size: 1000, test_size: 300, seed: 5,
       validation: 200, preprocess: [{type: normalize}]}
model:
  input: [1, 12, 12]
  layers:
    - {name: conv1, type: conv2d, out_channels: 8, kernel: 3, padding: 1}
    - {name: relu1, type: relu}
    - {name: pool1, type: max_pool, kernel: 2}
    - {name: fc1, type: linear, out_features: 32}
    - {name: relu2, type: relu}
    - {name: fc2, type: linear, out_features: 10}
optimizer: {type: sgd, lr: 0.05, momentum: 0.9, weight_decay: 0.001}
train: {epochs: 3, batch_size: 32}
)";

using Sets = std::vector<std::pair<std::string, std::string>>;

TrainSummary run(const fs::path& out, const Sets& sets = {},
                 const std::function<void(const EpochReport&)>& on_epoch = {},
                 const std::string& yaml = kExperiment) {
  Config config = Config::parse_string(yaml, "small.yaml");
  for (const auto& [key, value] : sets) config.set(key, value);
  TrainOptions options;
  options.out_dir = out;
  options.progress = "none";
  return train_experiment(config, test::registries(), options, on_epoch);
}

std::string read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// A training split of `n` random images [c, h, w] with labels 0..n-1 (so rows are traceable).
Split random_split(int64_t n, const Shape& sample, uint32_t seed) {
  std::mt19937 rng(seed);
  Split split;
  split.images = test::random_tensor(sample.with_batch(n), rng);
  for (int64_t i = 0; i < n; ++i) split.labels.push_back(static_cast<int32_t>(i));
  return split;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(augmentation)

BOOST_AUTO_TEST_CASE(hflip_mirrors_every_row_or_copies) {
  std::mt19937 data_rng(11);
  const Shape sample{3, 4, 5};
  const Tensor image = test::random_tensor(sample.with_batch(1), data_rng);
  Tensor out(sample.with_batch(1));
  Rng rng(1);
  test::augment_one(*make_transform("{type: hflip, p: 1}", sample), image, out, rng);
  for (int64_t c = 0; c < 3; ++c) {
    for (int64_t y = 0; y < 4; ++y) {
      for (int64_t x = 0; x < 5; ++x) {
        BOOST_TEST(out.data()[(c * 4 + y) * 5 + x] == image.data()[(c * 4 + y) * 5 + (4 - x)]);
      }
    }
  }
  test::augment_one(*make_transform("{type: hflip, p: 0}", sample), image, out, rng);
  BOOST_TEST(test::max_abs_diff(out, image) == 0.0f);
  // p = 0.5: about half of many draws flip.
  auto half = make_transform("{type: hflip}", sample);
  int flips = 0;
  for (int i = 0; i < 1000; ++i) {
    test::augment_one(*half, image, out, rng);
    flips += out.data()[0] != image.data()[0];
  }
  BOOST_TEST(flips > 420);
  BOOST_TEST(flips < 580);
}

// The crop is the window of the zero-padded (fill-padded) image at the documented offsets, and
// every offset in range is reached.
BOOST_AUTO_TEST_CASE(random_crop_cuts_the_padded_image_at_the_drawn_offset) {
  std::mt19937 data_rng(12);
  const Shape sample{2, 6, 7};
  const Tensor image = test::random_tensor(sample.with_batch(1), data_rng, 1.0f, 2.0f);
  auto crop = make_transform("{type: random_crop, padding: 2, size: [5, 6], fill: -3}", sample);
  BOOST_TEST(crop->random());
  BOOST_TEST(crop->output_shape(sample) == (Shape{2, 5, 6}));
  Tensor out(Shape{1, 2, 5, 6});
  Rng rng(7);
  std::set<std::pair<int64_t, int64_t>> offsets;
  for (int draw = 0; draw < 400; ++draw) {
    Rng replay = rng;
    const int64_t top = static_cast<int64_t>(replay() % (6 + 4 - 5 + 1)) - 2;
    const int64_t left = static_cast<int64_t>(replay() % (7 + 4 - 6 + 1)) - 2;
    offsets.insert({top, left});
    test::augment_one(*crop, image, out, rng);
    for (int64_t c = 0; c < 2; ++c) {
      for (int64_t y = 0; y < 5; ++y) {
        for (int64_t x = 0; x < 6; ++x) {
          const int64_t sy = top + y, sx = left + x;
          const float expected =
              sy >= 0 && sy < 6 && sx >= 0 && sx < 7 ? image.data()[(c * 6 + sy) * 7 + sx] : -3.0f;
          BOOST_REQUIRE(out.data()[(c * 5 + y) * 6 + x] == expected);
        }
      }
    }
  }
  BOOST_TEST(offsets.size() == 6u * 6u);  // tops -2..3, lefts -2..3
}

BOOST_AUTO_TEST_CASE(random_crop_centre_crops_evaluation_images) {
  std::mt19937 data_rng(13);
  const Shape sample{1, 6, 6};
  Tensor images = test::random_tensor(sample.with_batch(3), data_rng);
  const Tensor original = images.clone();
  test::apply_batch(*make_transform("{type: random_crop, size: 3}", sample), images);
  BOOST_REQUIRE(images.shape() == (Shape{3, 1, 3, 3}));
  for (int64_t n = 0; n < 3; ++n) {
    for (int64_t y = 0; y < 3; ++y) {
      for (int64_t x = 0; x < 3; ++x) {
        BOOST_TEST(images.data()[(n * 3 + y) * 3 + x] ==
                   original.data()[(n * 6 + y + 1) * 6 + x + 1]);
      }
    }
  }
  // The same size as the image with padding: evaluation images are untouched.
  Tensor same = original.clone();
  test::apply_batch(*make_transform("{type: random_crop, padding: 4}", sample), same);
  BOOST_TEST(test::max_abs_diff(same, original) == 0.0f);
  const std::string too_big =
      test::error_of([&] { make_transform("{type: random_crop, padding: 1, size: 9}", sample); });
  STRATA_CHECK_CONTAINS(too_big, "size");
  STRATA_CHECK_CONTAINS(too_big, "does not fit");
  // The same pair reader as the layers' geometry (Config::get_pair): a padding of 2^62 is refused
  // at the key rather than overflowing H + 2 * padding.
  STRATA_CHECK_CONTAINS(
      test::error_of(
          [&] { make_transform("{type: random_crop, padding: 4611686018427387904}", sample); }),
      "padding: must be at most 2147483647 (2^31 - 1), found 4611686018427387904");
  STRATA_CHECK_CONTAINS(
      test::error_of([&] { make_transform("{type: random_crop, size: [2, 3, 4]}", sample); }),
      "size: expected an integer or a list [height, width], found a list of 3");
}

// Same seed: the same batches, whatever the thread count; another seed or epoch: other images.
BOOST_AUTO_TEST_CASE(loader_is_deterministic_and_prefetch_matches) {
  const Shape sample{2, 8, 8};
  const Split train = random_split(70, sample, 21);
  std::vector<std::shared_ptr<const Transform>> augment{
      make_transform("{type: random_crop, padding: 2}", sample),
      make_transform("{type: hflip}", sample)};
  std::vector<int64_t> order(70);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), std::mt19937(5));

  auto batches = [&](uint32_t seed, int64_t epoch, int threads) {
    std::vector<Tensor> result;
    tbb::task_arena arena(threads);
    arena.execute([&] {
      LoaderOptions options;
      options.batch_size = 16;
      options.seed = seed;
      options.augment = true;
      BatchLoader loader(test::samples_of(train), augment, sample, options);
      BOOST_TEST(loader.batches_per_epoch() == 5);
      loader.start_epoch(epoch, order);
      for (int64_t b = 0; b < loader.batches_per_epoch(); ++b) {
        const Batch batch = loader.next();
        BOOST_TEST(batch.size() == (b < 4 ? 16 : 6));
        for (int64_t i = 0; i < batch.size(); ++i) {
          BOOST_REQUIRE(batch.labels[i] == order[b * 16 + i]);  // rows follow the order
        }
        // What next() prefetched equals assembling the batch again on this thread.
        Tensor again(sample.with_batch(16));
        std::vector<int32_t> labels(16);
        loader.assemble(b, again, labels);
        BOOST_REQUIRE(test::max_abs_diff(batch.images, again.batch_slice(0, batch.size())) == 0.0f);
        result.push_back(batch.images.clone());
      }
      BOOST_TEST(!test::error_of([&] { loader.next(); }).empty());
    });
    return result;
  };
  const auto one = batches(9, 0, 1), two = batches(9, 0, 2), other_seed = batches(10, 0, 2),
             other_epoch = batches(9, 1, 2);
  for (std::size_t b = 0; b < one.size(); ++b) {
    BOOST_TEST(test::max_abs_diff(one[b], two[b]) == 0.0f);
    BOOST_TEST(test::max_abs_diff(one[b], other_seed[b]) > 0.0f);
    BOOST_TEST(test::max_abs_diff(one[b], other_epoch[b]) > 0.0f);
  }
  // Augmentation changed the images (a flip or a shift of random data is never the identity for
  // all 16 samples).
  LoaderOptions options;
  options.batch_size = 16;
  options.seed = 9;
  BatchLoader plain(test::samples_of(train), {}, sample, options);
  plain.start_epoch(0, order);
  BOOST_TEST(test::max_abs_diff(plain.next().images, one[0]) > 0.0f);
}

// Training batches are augmented, validation and test images are not: with hflip p = 1 the first
// training losses differ from a run without flips, while (at a learning rate too small to move
// the weights much) the validation and test losses stay the same.
BOOST_AUTO_TEST_CASE(augmentation_applies_to_training_batches_only) {
  test::TempDir flipped_dir, plain_dir;
  const Sets common{{"optimizer.lr", "1e-7"},
                    {"optimizer.momentum", "0"},
                    {"train.epochs", "1"},
                    {"train.log_every", "1"},
                    {"train.diagnostics_every", "0"}};
  Sets flipped = common;
  flipped.push_back({"data.augment", "[{type: hflip, p: 1}]"});
  Sets plain = common;
  plain.push_back({"data.augment", "[{type: hflip, p: 0}]"});
  const TrainSummary a = run(flipped_dir.path(), flipped);
  const TrainSummary b = run(plain_dir.path(), plain);
  const auto ha = load_checkpoint_training_state(flipped_dir / "model.h5")->history;
  const auto hb = load_checkpoint_training_state(plain_dir / "model.h5")->history;
  const double train_difference =
      std::abs(ha.at("iterations/loss")[0] - hb.at("iterations/loss")[0]);
  const double val_difference = std::abs(ha.at("val_loss")[0] - hb.at("val_loss")[0]);
  const double test_difference = std::abs(a.test_loss - b.test_loss);
  BOOST_TEST_MESSAGE("train " << train_difference << " val " << val_difference << " test "
                              << test_difference);
  BOOST_TEST(train_difference > 1e-3);
  BOOST_TEST(train_difference > 100 * val_difference);
  BOOST_TEST(val_difference < 1e-4);
  BOOST_TEST(test_difference < 1e-4);
}

BOOST_AUTO_TEST_CASE(augment_and_preprocess_take_their_own_kind) {
  test::TempDir dir;
  STRATA_CHECK_CONTAINS(test::error_of([&] {
                          run(dir.path(), {{"data.augment", "[{type: normalize}]"}});
                        }),
                        "'normalize' is not a random transform; list it under data.preprocess");
  STRATA_CHECK_CONTAINS(
      test::error_of([&] {
        run(dir.path(), {{"data.preprocess", "[{type: hflip}]"}});
      }),
      "'hflip' is a random transform (data augmentation); list it under data.augment");
  // A crop that changes the image size must match the model's input.
  STRATA_CHECK_CONTAINS(test::error_of([&] {
                          run(dir.path(), {{"data.augment", "[{type: random_crop, size: 10}]"}});
                        }),
                        "the model input is [1, 12, 12] but the dataset's images are [1, 10, 10]");
}

// A crop to 10x10 (model input 10x10) trains; evaluation gets the centre crop.
BOOST_AUTO_TEST_CASE(training_with_a_smaller_crop_learns) {
  test::TempDir dir;
  const TrainSummary s =
      run(dir.path(), {{"data.augment", "[{type: random_crop, size: 10, padding: 1}]"},
                       {"model.input", "[1, 10, 10]"}});
  BOOST_TEST_MESSAGE("test accuracy with 10x10 crops " << s.test_accuracy);
  BOOST_TEST(s.test_accuracy > 0.3);  // chance is 0.1
}

namespace {

// A split of `size` samples [3, 32, 32] made up on demand (never held): what a dataset larger
// than memory looks like to the loader. Counts its reads.
class VirtualSplit final : public SplitReader {
 public:
  explicit VirtualSplit(int64_t size) : labels_(static_cast<std::size_t>(size)) {
    for (std::size_t i = 0; i < labels_.size(); ++i) labels_[i] = static_cast<int32_t>(i % 10);
  }
  int64_t size() const override { return static_cast<int64_t>(labels_.size()); }
  std::span<const int32_t> labels() const override { return labels_; }
  void read(int64_t index, Image& out) const override {
    reads_.fetch_add(1);
    out.resize(3, 32, 32);
    for (std::size_t i = 0; i < out.pixels.size(); ++i)
      out.pixels[i] = static_cast<float>((index * 31 + static_cast<int64_t>(i)) % 255) / 255.0f;
  }
  int64_t reads() const { return reads_.load(); }

 private:
  std::vector<int32_t> labels_;
  mutable std::atomic<int64_t> reads_{0};
};

int64_t heap_in_use() {
  const struct mallinfo2 info = mallinfo2();
  return static_cast<int64_t>(info.uordblks + info.hblkhd);
}

}  // namespace

// The streaming loader reads only the samples of the batches it assembles (the one it returns
// and the one it prefetches), and its memory does not grow with the batches it has delivered:
// 2 million samples of [3, 32, 32] (24 GB as float32) cost a few batches and the index arrays.
BOOST_AUTO_TEST_CASE(loader_memory_is_bounded_by_batches_not_the_dataset) {
  const int64_t n = 2'000'000, batch = 64, taken = 5;
  auto split = std::make_shared<VirtualSplit>(n);
  SampleSet samples;
  samples.name = "train";
  samples.reader = split;
  samples.rows.resize(static_cast<std::size_t>(n));
  std::iota(samples.rows.begin(), samples.rows.end(), int64_t{0});
  const int64_t before = heap_in_use();
  int64_t after_first = 0, after_all = 0;
  {
    LoaderOptions options;
    options.batch_size = batch;
    options.augment = true;
    const Shape sample{3, 32, 32};
    std::vector<std::shared_ptr<const Transform>> flip{make_transform("{type: hflip}", sample)};
    BatchLoader loader(samples, flip, sample, options);
    loader.start_epoch(0, epoch_order(7, 0, n));
    for (int64_t b = 0; b < taken; ++b) {
      const Batch got = loader.next();
      BOOST_REQUIRE(got.size() == batch);
      if (b == 0) after_first = heap_in_use();
    }
    after_all = heap_in_use();
  }  // the loader waits for the batch it prefetched
  BOOST_TEST(split->reads() == (taken + 1) * batch);  // 5 returned + 1 prefetched, nothing else
  // glibc's counters (a sanitizer's allocator is not counted: then only the reads are checked).
  BOOST_TEST_MESSAGE("heap: +" << (after_all - before) / 1024 << " KiB for the loader, +"
                                << (after_all - after_first) / 1024 << " KiB over 4 batches");
  if (after_all > before) {
    const int64_t index_arrays = 3 * n * static_cast<int64_t>(sizeof(int64_t));  // order, shard
    BOOST_TEST(after_all - before < index_arrays + (64 << 20));
    BOOST_TEST(after_all - after_first < (4 << 20));  // no growth per batch
  }
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(babysitting)

BOOST_AUTO_TEST_CASE(dead_units_are_those_never_positive_in_the_batch) {
  std::mt19937 rng(4);
  Tensor a = test::random_tensor(Shape{4, 2, 3}, rng, 0.5f, 1.0f);  // all alive
  BOOST_TEST(dead_unit_fraction(a) == 0.0);
  // Unit 1 is <= 0 in every sample: dead. Unit 2 is <= 0 in all but one: alive.
  for (int64_t n = 0; n < 4; ++n) {
    a.data()[n * 6 + 1] = n == 0 ? 0.0f : -a.data()[n * 6 + 1];
    if (n != 2) a.data()[n * 6 + 2] = -a.data()[n * 6 + 2];
  }
  BOOST_TEST(dead_unit_fraction(a) == 1.0 / 6.0);
}

BOOST_AUTO_TEST_CASE(metric_progress_counts_epochs_without_improvement) {
  const std::vector<double> accuracy{0.5, 0.6, 0.6, 0.65, 0.64, 0.7, 0.69, 0.69};
  MetricProgress p = metric_progress(accuracy, true, 0.0);
  BOOST_TEST(p.best_epoch == 6);
  BOOST_TEST(p.best == 0.7);
  BOOST_TEST(p.epochs_without_improvement == 2);
  // With min_delta 0.06, only 0.5 -> 0.6 (by 0.1) and 0.6 -> 0.7 (0.65 is not 0.06 above 0.6).
  p = metric_progress(accuracy, true, 0.06);
  BOOST_TEST(p.best_epoch == 6);
  p = metric_progress(std::vector<double>{2.0, 1.0, 1.5, std::nan(""), 0.9}, false, 0.0);
  BOOST_TEST(p.best_epoch == 5);
  BOOST_TEST(p.epochs_without_improvement == 0);
  p = metric_progress(std::vector<double>{std::nan(""), 3.0, 3.0}, false, 0.0);
  BOOST_TEST(p.best_epoch == 2);
  BOOST_TEST(p.epochs_without_improvement == 1);
}

// Diagnostics of one step against direct computation: a known update w += 1e-3 w gives a ratio
// of 1e-3; gradient norms and activation statistics match sums over the tensors. The statistics
// are taken during the training forward, as training keeps only the outputs backward reads
// (conv1's is not kept here), and an inference forward in between does not replace them.
BOOST_AUTO_TEST_CASE(step_diagnostics_match_direct_computation) {
  Rng rng(2);
  Config model = test::yaml(R"(
input: [1, 6, 6]
layers:
  - {name: conv1, type: conv2d, out_channels: 3, kernel: 3}
  - {name: relu1, type: relu}
  - {name: fc1, type: linear, out_features: 4}
)");
  Graph graph(model, test::registries(), test::backend(), rng);
  auto backend = test::registries().backends.create("reference", Config{});
  Context context{true, &rng, backend.get()};
  std::mt19937 data_rng(3);
  const Tensor x = test::random_tensor(Shape{5, 1, 6, 6}, data_rng);
  graph.forward(context, x);  // every output kept (OutputRetention::kAll): the expected values
  const Tensor conv = graph.activation("conv1").clone(), relu = graph.activation("relu1").clone();
  graph.set_output_retention(OutputRetention::kBackward);
  BOOST_TEST(!graph.keeps_output(0));
  StepDiagnostics diagnostics(graph);
  diagnostics.watch_forward(true);
  graph.forward(context, x);
  Context inference{false, &rng, backend.get()};
  graph.forward(inference, test::random_tensor(Shape{2, 1, 6, 6}, data_rng));
  graph.forward(context, x);
  graph.backward(context, test::random_tensor(Shape{5, 4}, data_rng));
  diagnostics.before_step();
  for (ParamRef& ref : graph.params()) {
    for (float& w : ref.param->value.span()) w += 1e-3f * w;
  }
  const std::vector<LayerDiagnostics> results = diagnostics.after_step();
  BOOST_REQUIRE(results.size() == 3u);
  BOOST_TEST(results[0].layer == "conv1");
  BOOST_TEST(results[1].layer == "relu1");
  for (std::size_t i : {0u, 2u}) {
    BOOST_TEST(results[i].update_ratio == 1e-3, boost::test_tools::tolerance(1e-3));
  }
  BOOST_TEST(std::isnan(results[1].update_ratio));
  BOOST_TEST(std::isnan(results[0].dead_fraction));
  BOOST_TEST(results[1].dead_fraction == dead_unit_fraction(relu));
  for (const auto& [index, out] : {std::pair{0, conv}, std::pair{1, relu}}) {
    double sum = 0, squares = 0;
    for (float v : out.span()) sum += v;
    const double mean = sum / out.numel();
    for (float v : out.span()) squares += (v - mean) * (v - mean);
    BOOST_TEST(results[index].activation_mean == mean, boost::test_tools::tolerance(1e-9));
    BOOST_TEST(results[index].activation_std == std::sqrt(squares / out.numel()),
               boost::test_tools::tolerance(1e-9));
  }
  double grad = 0;
  for (ParamRef& ref : graph.params()) {
    if (ref.key.starts_with("fc1/")) {
      for (float g : ref.param->grad.span()) grad += static_cast<double>(g) * g;
    }
  }
  BOOST_TEST(results[2].grad_norm == std::sqrt(grad), boost::test_tools::tolerance(1e-9));
  // Healthy ratios give no warning; a big one does.
  BOOST_TEST(diagnostic_warnings(results).empty() == (results[1].dead_fraction <= 0.5));
  std::vector<LayerDiagnostics> bad = results;
  bad[0].update_ratio = 0.5;
  bad[1].dead_fraction = 0.75;
  const std::vector<std::string> notes = diagnostic_warnings(bad);
  BOOST_REQUIRE(notes.size() >= 2u);
  STRATA_CHECK_CONTAINS(notes[0], "conv1 update/weight 5.0e-01");
  STRATA_CHECK_CONTAINS(notes[1], "relu1 75% dead");
}

// An epoch's measurements become at most one line per layer, saying in how many of the epoch's
// checks each warning fired and its most extreme value; a warning that fired in half of the
// checks or fewer (noisy batches) is left out, unless the gradient was not finite; take_lines()
// starts the next epoch.
BOOST_AUTO_TEST_CASE(diagnostics_are_summarized_per_epoch) {
  constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
  std::mt19937 rng(21);
  std::uniform_real_distribution<double> healthy(2e-4, 5e-3), high(2e-2, 9e-2);
  DiagnosticsSummary summary;
  double worst_high = 0;
  double worst_dead = 0;
  for (int check = 0; check < 8; ++check) {
    const double conv1 = check == 3 ? healthy(rng) : high(rng);  // too high in 7 of 8
    if (check != 3) worst_high = std::max(worst_high, conv1);
    const bool dying = check != 1 && check != 6 && check != 7;  // dead in 5 of 8
    const double dead = dying ? 0.6 + 0.01 * check : 0.2;
    if (dying) worst_dead = std::max(worst_dead, dead);
    const std::vector<LayerDiagnostics> results = {
        {"conv1", "conv2d", conv1, 1.0, 2.0, 0.1, 1.0, kNaN},
        {"relu1", "relu", kNaN, kNaN, kNaN, 0.1, 1.0, dead},
        {"fc1", "linear", healthy(rng), 1.0, 2.0, 0.1, 1.0, kNaN},
        {"fc2", "linear", check < 4 ? high(rng) : healthy(rng), 1.0, 2.0, 0.1, 1.0, kNaN},
    };
    summary.add(results);
  }
  BOOST_TEST(summary.checks() == 8);
  const std::vector<std::string> lines = summary.take_lines(3);
  BOOST_TEST_REQUIRE(lines.size() == 2u);  // fc1 stayed healthy, fc2 was high in 4 of 8 only
  BOOST_TEST(lines[0] ==
             fmt::format("epoch 3 diagnostics: conv1 update/weight up to {:.1e} (lr too "
                         "high?) in 7 of 8 checks",
                         worst_high));
  BOOST_TEST(lines[1] ==
             fmt::format("epoch 3 diagnostics: relu1 up to {:.0f}% dead in 5 of 8 checks",
                         100 * worst_dead));
  // The next epoch starts empty; a layer with two kinds of warning still gets one line, and a
  // non-finite gradient norm is reported even once.
  BOOST_TEST(summary.checks() == 0);
  BOOST_TEST(summary.take_lines(4).empty());
  const double inf = std::numeric_limits<double>::infinity();
  summary.add(std::vector<LayerDiagnostics>{{"fc1", "linear", 0.5, inf, 2.0, 0, 1, kNaN}});
  summary.add(std::vector<LayerDiagnostics>{{"fc1", "linear", 0.2, 1.0, 2.0, 0, 1, kNaN}});
  summary.add(std::vector<LayerDiagnostics>{{"fc1", "linear", 3e-5, 1.0, 2.0, 0, 1, kNaN}});
  const std::vector<std::string> mixed = summary.take_lines(5);
  BOOST_TEST_REQUIRE(mixed.size() == 1u);
  BOOST_TEST(mixed[0] ==
             "epoch 5 diagnostics: fc1 update/weight up to 5.0e-01 (lr too high?) in 2 "
             "of 3 checks; gradient norm inf in 1 of 3 checks");
}

// /history/iterations/... and /history/diagnostics/<layer>/... are nested groups in the file
// and come back under the same keys.
BOOST_AUTO_TEST_CASE(nested_history_round_trips_through_the_checkpoint) {
  test::TempDir dir;
  std::mt19937 rng(8);
  std::uniform_real_distribution<double> uniform(-1, 1);
  Checkpoint checkpoint;
  checkpoint.experiment_yaml = "seed: 1\n";
  TrainingState state;
  state.epoch = 2;
  state.iteration = 40;
  state.rng_state = "1 2 3";
  for (const char* key : {"train_loss", "iterations/iteration", "iterations/loss", "iterations/lr",
                          "diagnostics/iteration", "diagnostics/conv1/update_ratio",
                          "diagnostics/relu1/dead_fraction", "sanity/initial_loss"}) {
    for (int i = 0; i < 7; ++i) state.history[key].push_back(uniform(rng));
  }
  checkpoint.training = state;
  save_checkpoint(dir / "h.h5", checkpoint);
  const auto loaded = load_checkpoint_training_state(dir / "h.h5");
  BOOST_REQUIRE(loaded.has_value());
  BOOST_TEST(loaded->history == state.history);
}

// A run records iterations/* every log_every steps, diagnostics/* every diagnostics_every, the
// initial loss with its chance value, and the regularization term separately from the data loss.
BOOST_AUTO_TEST_CASE(history_holds_iterations_diagnostics_and_regularization) {
  test::TempDir dir;
  const TrainSummary s =
      run(dir.path(), {{"train.log_every", "7"}, {"train.diagnostics_every", "11"}});
  const auto state = load_checkpoint_training_state(dir / "model.h5");
  BOOST_REQUIRE(state.has_value());
  const auto& h = state->history;
  const int64_t iterations = state->iteration;  // 3 epochs of 25 steps
  BOOST_TEST(iterations == 75);
  const auto& logged = h.at("iterations/iteration");
  BOOST_TEST(logged.size() == static_cast<std::size_t>(iterations / 7));
  for (std::size_t i = 0; i < logged.size(); ++i) BOOST_TEST(logged[i] == 7.0 * (i + 1));
  for (const char* key : {"iterations/loss", "iterations/regularization", "iterations/lr"}) {
    BOOST_TEST(h.at(key).size() == logged.size(), key);
  }
  BOOST_TEST(h.at("iterations/lr")[0] == 0.05, boost::test_tools::tolerance(1e-6));
  const auto& measured = h.at("diagnostics/iteration");
  BOOST_TEST(measured.size() == static_cast<std::size_t>(iterations / 11));
  for (const char* key : {"diagnostics/conv1/update_ratio", "diagnostics/conv1/grad_norm",
                          "diagnostics/fc2/activation_std", "diagnostics/relu1/dead_fraction",
                          "diagnostics/relu2/activation_mean"}) {
    BOOST_TEST(h.at(key).size() == measured.size(), key);
  }
  BOOST_TEST(h.count("diagnostics/relu1/update_ratio") == 0u);
  for (double r : h.at("diagnostics/fc1/update_ratio")) BOOST_TEST((r > 1e-5 && r < 1.0));
  BOOST_TEST(h.at("sanity/expected_initial_loss")[0] == std::log(10.0),
             boost::test_tools::tolerance(1e-12));
  BOOST_TEST(std::isfinite(s.initial_loss));
  BOOST_TEST(h.at("sanity/initial_loss")[0] == s.initial_loss);

  // The regularization term is 0.5 * weight_decay * sum of squared weights (biases have
  // decay_mult 0), from the final weights in the checkpoint.
  Rng rng(1);
  Graph graph(Config::parse_string(kExperiment, "small.yaml").at("model"), test::registries(),
              test::backend("tbb"), rng);
  std::vector<NamedTensor> weights = graph.state_tensors();
  load_checkpoint_tensors(dir / "model.h5", "model", weights);
  double squares = 0;
  for (const NamedTensor& t : weights) {
    if (!t.name.ends_with("/weight")) continue;
    for (float w : t.tensor.span()) squares += static_cast<double>(w) * w;
  }
  BOOST_TEST(h.at("train_regularization").back() == 0.5 * 0.001 * squares,
             boost::test_tools::tolerance(1e-9));
  BOOST_TEST(h.at("iterations/regularization").back() > 0.0);
}

// train.overfit: 50 images, no weight decay, no validation: training accuracy reaches ~100%.
BOOST_AUTO_TEST_CASE(overfit_reaches_full_training_accuracy) {
  test::TempDir dir;
  const TrainSummary s = run(dir.path(), {{"train.overfit", "50"},
                                          {"train.epochs", "40"},
                                          {"train.batch_size", "10"},
                                          {"optimizer.weight_decay", "0.1"},
                                          {"data.augment", "[{type: hflip}]"}});
  const auto h = load_checkpoint_training_state(dir / "model.h5")->history;
  BOOST_TEST_MESSAGE("overfit training accuracy " << h.at("train_accuracy").back());
  BOOST_TEST(h.at("train_accuracy").back() >= 0.98);
  BOOST_TEST(h.at("train_loss").back() < 0.1);
  for (double r : h.at("train_regularization")) BOOST_TEST(r == 0.0);
  BOOST_TEST(std::isnan(h.at("val_accuracy").back()));
  BOOST_TEST(!fs::exists(dir / "best.h5"));
  const std::string json = read_bytes(dir / "summary.json");
  STRATA_CHECK_CONTAINS(json, "\"train_images\": 50");
  STRATA_CHECK_CONTAINS(json, "\"validation_images\": 0");
}

// A learning rate multiplied by 1e4 after epoch 1 makes the loss explode in epoch 2: the run stops
// naming the iteration, and model.h5 is still epoch 1's file, byte for byte.
BOOST_AUTO_TEST_CASE(explosion_guard_stops_and_keeps_the_last_good_checkpoint) {
  test::TempDir dir;
  std::string after_epoch_one;
  const std::string message = test::error_of([&] {
    run(dir.path(),
        {{"optimizer.schedule", "{type: step, step_size: 1, gamma: 10000}"}, {"train.epochs", "3"}},
        [&](const EpochReport& report) {
          if (report.epoch == 1) after_epoch_one = read_bytes(dir / "model.h5");
        });
  });
  STRATA_CHECK_CONTAINS(message, "training diverged at iteration ");
  STRATA_CHECK_CONTAINS(message, "epoch 2,");
  STRATA_CHECK_CONTAINS(message, "was not overwritten and still holds epoch 1");
  const std::size_t at = message.find("at iteration ");
  const int iteration = std::stoi(message.substr(at + 13));
  BOOST_TEST(iteration > 25);  // epoch 1 has 25 steps
  BOOST_TEST(iteration <= 50);
  BOOST_REQUIRE(!after_epoch_one.empty());
  BOOST_TEST((read_bytes(dir / "model.h5") == after_epoch_one));
  BOOST_TEST(load_checkpoint_training_state(dir / "model.h5")->epoch == 1);
  BOOST_TEST(!fs::exists(dir / "summary.json"));

  // A huge learning rate from the start: stops in the first epoch, having saved nothing.
  test::TempDir fresh;
  const std::string first = test::error_of([&] { run(fresh.path(), {{"optimizer.lr", "1000"}}); });
  STRATA_CHECK_CONTAINS(first, "training diverged at iteration ");
  STRATA_CHECK_CONTAINS(first, "no checkpoint was written");
  BOOST_TEST(!fs::exists(fresh / "model.h5"));
}

// Early stopping on a metric that cannot improve by min_delta stops after `patience` epochs
// without improvement; a resumed run that already met the criterion trains no further.
BOOST_AUTO_TEST_CASE(early_stopping_stops_after_patience_epochs) {
  test::TempDir dir;
  const TrainSummary s = run(
      dir.path(), {{"train.epochs", "10"},
                   {"train.early_stopping", "{metric: train_loss, patience: 2, min_delta: 100}"}});
  BOOST_TEST(s.stopped_early);
  BOOST_TEST(s.epochs == 3);  // epoch 1 is the best; 2 and 3 do not improve by 100
  BOOST_TEST(load_checkpoint_training_state(dir / "model.h5")->epoch == 3);
  BOOST_TEST(s.best_epoch == 3);  // best.h5 follows train_loss with no min_delta
  Config config = Config::parse_string(kExperiment, "small.yaml");
  config.set("train.epochs", "10");
  config.set("train.early_stopping", "{metric: train_loss, patience: 2, min_delta: 100}");
  TrainOptions options;
  options.out_dir = dir.path();
  options.resume = true;
  options.progress = "none";
  const TrainSummary resumed = train_experiment(config, test::registries(), options);
  BOOST_TEST(resumed.epochs == 3);
  BOOST_TEST(resumed.stopped_early);

  // val_accuracy needs a validation split.
  STRATA_CHECK_CONTAINS(test::error_of([&] {
                          run(dir.path(), {{"data.validation", "0"},
                                           {"train.early_stopping", "{metric: val_accuracy}"}});
                        }),
                        "val_accuracy needs a validation split, and data.validation is 0");
  STRATA_CHECK_CONTAINS(test::error_of([&] {
                          run(dir.path(), {{"train.early_stopping", "{metric: val_acuracy}"}});
                        }),
                        "did you mean 'val_accuracy'?");
  STRATA_CHECK_CONTAINS(test::error_of([&] {
                          run(dir.path(), {{"train.explode_factor", "0.5"}});
                        }),
                        "train.explode_factor");
}

// best.h5 holds the epoch with the best validation metric; model.h5 the last epoch.
BOOST_AUTO_TEST_CASE(best_checkpoint_holds_the_best_epoch) {
  test::TempDir dir;
  // Eight times the learning rate from epoch 3 makes the validation loss worse again (four times
  // did with std::shuffle's batch order, but epoch 4 recovered below epoch 2 with epoch_order's).
  const TrainSummary s =
      run(dir.path(), {{"train.epochs", "4"},
                       {"optimizer.schedule", "{type: step, step_size: 2, gamma: 8}"},
                       {"train.explode_factor", "0"},
                       {"checkpoint", "{best: val_loss}"}});
  const auto last = load_checkpoint_training_state(dir / "model.h5");
  const auto& val_loss = last->history.at("val_loss");
  BOOST_REQUIRE(val_loss.size() == 4u);
  const int64_t best_epoch =
      std::min_element(val_loss.begin(), val_loss.end()) - val_loss.begin() + 1;
  BOOST_TEST_MESSAGE("val_loss per epoch: " << val_loss[0] << " " << val_loss[1] << " "
                                            << val_loss[2] << " " << val_loss[3]);
  BOOST_TEST(s.best_epoch == best_epoch);
  const auto best = load_checkpoint_training_state(dir / "best.h5");
  BOOST_REQUIRE(best.has_value());
  BOOST_TEST(best->epoch == best_epoch);
  BOOST_TEST(best->history.at("val_loss").back() == val_loss[best_epoch - 1]);
  BOOST_TEST(best_epoch < 4);
  BOOST_TEST((read_bytes(dir / "best.h5") != read_bytes(dir / "model.h5")));
  STRATA_CHECK_CONTAINS(
      test::error_of([&] {
        run(dir.path(), {{"data.validation", "0"}, {"checkpoint", "{best: val_accuracy}"}});
      }),
      "needs a validation split");
}

BOOST_AUTO_TEST_SUITE_END()
