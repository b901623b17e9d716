// The `hdf5` dataset reader (datasets/hdf5) on files h5py wrote, and the decoded cache
// (strata/training/data_cache.hpp). Files are written by tests/scripts/hdf5_dataset_files.py from
// random arrays this test draws, so every pixel read is compared with the value written.
#define BOOST_TEST_MODULE hdf5_dataset
#include <fmt/format.h>
#include <hdf5.h>
#include <malloc.h>

#include <algorithm>
#include <atomic>
#include <boost/test/unit_test.hpp>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "strata/dataset.hpp"
#include "strata/error.hpp"
#include "strata/registry.hpp"
#include "strata/training/data_cache.hpp"
#include "test_support.hpp"

namespace fs = std::filesystem;
using strata::Image;
using strata::SplitReader;
using strata::test::error_of;
using strata::test::registries;
using strata::test::TempDir;
using strata::test::yaml;

namespace {

// One array as the test drew it: `expected` is what the reader must give, [N, C, H, W] floats;
// `bytes` is what goes into the file, in the file's layout and type.
struct Array {
  std::string dtype;
  std::vector<int64_t> shape;  // in the file
  std::vector<uint8_t> bytes;
  std::vector<float> expected;
};

// Images [n, c, h, w] of `dtype` ("uint8" or "float32"), stored NHWC when `nhwc`.
Array random_images(int64_t n, int64_t c, int64_t h, int64_t w, const std::string& dtype, bool nhwc,
                    std::mt19937& rng) {
  Array array;
  array.dtype = dtype;
  array.shape = nhwc ? std::vector<int64_t>{n, h, w, c} : std::vector<int64_t>{n, c, h, w};
  const int64_t count = n * c * h * w;
  array.expected.resize(static_cast<std::size_t>(count));
  const bool is_float = dtype == "float32";
  array.bytes.resize(static_cast<std::size_t>(count) * (is_float ? 4 : 1));
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t ch = 0; ch < c; ++ch) {
      for (int64_t p = 0; p < h * w; ++p) {
        const int64_t planar = ((i * c) + ch) * h * w + p;
        const int64_t stored = nhwc ? (i * h * w + p) * c + ch : planar;
        if (is_float) {
          const float value = unit(rng);
          array.expected[planar] = value;
          std::memcpy(&array.bytes[stored * 4], &value, 4);
        } else {
          const auto value = static_cast<uint8_t>(byte(rng));
          array.expected[planar] = static_cast<float>(value) / 255.0f;
          array.bytes[stored] = value;
        }
      }
    }
  }
  return array;
}

Array labels_array(const std::vector<int64_t>& labels, const std::string& dtype = "int64") {
  Array array;
  array.dtype = dtype;
  array.shape = {static_cast<int64_t>(labels.size())};
  for (int64_t label : labels) {
    if (dtype == "int64") {
      const auto* bytes = reinterpret_cast<const uint8_t*>(&label);
      array.bytes.insert(array.bytes.end(), bytes, bytes + 8);
    } else if (dtype == "uint8") {
      array.bytes.push_back(static_cast<uint8_t>(label));
    } else if (dtype == "int16") {
      const auto value = static_cast<int16_t>(label);
      const auto* bytes = reinterpret_cast<const uint8_t*>(&value);
      array.bytes.insert(array.bytes.end(), bytes, bytes + 2);
    } else if (dtype == "float32") {
      const auto value = static_cast<float>(label);
      const auto* bytes = reinterpret_cast<const uint8_t*>(&value);
      array.bytes.insert(array.bytes.end(), bytes, bytes + 4);
    }
  }
  return array;
}

std::vector<int64_t> random_labels(int64_t n, int classes, std::mt19937& rng) {
  std::uniform_int_distribution<int> label(0, classes - 1);
  std::vector<int64_t> labels(static_cast<std::size_t>(n));
  for (auto& value : labels) value = label(rng);
  return labels;
}

// HDF5 files to write with h5py, all in one Python run.
class H5pyFiles {
 public:
  explicit H5pyFiles(const TempDir& dir) : dir_(dir) {}
  // Adds dataset `path` ("train/images") of `array` to `file` (created on first use).
  void add(const std::string& file, const std::string& path, const Array& array,
           std::vector<int64_t> chunks = {}, bool gzip = false) {
    const fs::path raw = dir_ / fmt::format("raw{}.bin", count_++);
    std::ofstream(raw, std::ios::binary)
        .write(reinterpret_cast<const char*>(array.bytes.data()),
               static_cast<std::streamsize>(array.bytes.size()));
    nlohmann::json item = {{"path", path},
                           {"raw", array.bytes.empty() ? nlohmann::json() : nlohmann::json(raw)},
                           {"dtype", array.dtype},
                           {"shape", array.shape}};
    item["chunks"] = chunks.empty() ? nlohmann::json() : nlohmann::json(chunks);
    item["compression"] = gzip ? nlohmann::json("gzip") : nlohmann::json();
    const std::string name = (dir_ / file).string();
    for (auto& entry : spec_) {
      if (entry["file"] == name) {
        entry["datasets"].push_back(item);
        return;
      }
    }
    spec_.push_back({{"file", name}, {"datasets", nlohmann::json::array({item})}});
  }
  void write() {
    const fs::path spec = dir_ / "spec.json";
    std::ofstream(spec) << spec_.dump();
    const std::string command =
        fmt::format("/usr/bin/python3 {}/tests/scripts/hdf5_dataset_files.py {}", STRATA_SOURCE_DIR,
                    spec.string());
    BOOST_REQUIRE_MESSAGE(std::system(command.c_str()) == 0, "failed: " << command);
    spec_ = nlohmann::json::array();
  }

 private:
  const TempDir& dir_;
  nlohmann::json spec_ = nlohmann::json::array();
  int count_ = 0;
};

std::shared_ptr<strata::Dataset> hdf5_dataset(const std::string& text) {
  return registries().datasets.create(yaml(text));
}

// Every sample of `reader` equals `expected` ([N, C, H, W]) exactly, with `labels`.
void check_reads(const SplitReader& reader, const Array& images, const std::vector<int64_t>& labels,
                 const std::vector<int64_t>& chw) {
  BOOST_REQUIRE_EQUAL(reader.size(), static_cast<int64_t>(labels.size()));
  const std::span<const int32_t> read_labels = reader.labels();
  BOOST_REQUIRE_EQUAL(read_labels.size(), labels.size());
  for (std::size_t i = 0; i < labels.size(); ++i) BOOST_CHECK_EQUAL(read_labels[i], labels[i]);
  const int64_t row = chw[0] * chw[1] * chw[2];
  Image image;
  for (int64_t i = 0; i < reader.size(); ++i) {
    reader.read(i, image);
    BOOST_REQUIRE(image.shape() == strata::Shape(chw));
    BOOST_REQUIRE(
        std::equal(image.pixels.begin(), image.pixels.end(), images.expected.begin() + i * row));
  }
}

bool have_h5py() { return std::system("/usr/bin/python3 -c 'import h5py' 2>/dev/null") == 0; }

}  // namespace

// NCHW and NHWC, uint8 and float32, contiguous and chunked + gzip, each in one file holding both
// splits in the groups "train" and "test" (the defaults when train and test are the same file).
BOOST_AUTO_TEST_CASE(layouts_types_and_storage_read_exactly) {
  BOOST_REQUIRE(have_h5py());
  TempDir dir;
  std::mt19937 rng(1601);
  H5pyFiles files(dir);
  struct Case {
    std::string file, dtype;
    bool nhwc, chunked;
    Array train, test;
    std::vector<int64_t> train_labels, test_labels;
  };
  std::vector<Case> cases;
  for (const std::string dtype : {"uint8", "float32"}) {
    for (const bool nhwc : {false, true}) {
      for (const bool chunked : {false, true}) {
        Case item{fmt::format("{}_{}_{}.h5", dtype, nhwc ? "nhwc" : "nchw", chunked),
                  dtype,
                  nhwc,
                  chunked,
                  random_images(9, 3, 5, 7, dtype, nhwc, rng),
                  random_images(4, 3, 5, 7, dtype, nhwc, rng),
                  random_labels(9, 6, rng),
                  random_labels(4, 6, rng)};
        const std::vector<int64_t> chunks =
            chunked ? (nhwc ? std::vector<int64_t>{2, 5, 7, 3} : std::vector<int64_t>{2, 3, 5, 7})
                    : std::vector<int64_t>{};
        files.add(item.file, "train/images", item.train, chunks, chunked);
        files.add(item.file, "train/labels", labels_array(item.train_labels, "uint8"));
        files.add(item.file, "test/images", item.test, chunks, chunked);
        files.add(item.file, "test/labels", labels_array(item.test_labels, "int16"));
        cases.push_back(std::move(item));
      }
    }
  }
  files.write();
  for (const Case& item : cases) {
    BOOST_TEST_CONTEXT(item.file) {
      const std::string path = (dir / item.file).string();
      auto dataset =
          hdf5_dataset(fmt::format("{{type: hdf5, train: {}, test: {}, classes: 6}}", path, path));
      BOOST_CHECK(dataset->sample_shape() == strata::Shape({3, 5, 7}));
      BOOST_CHECK_EQUAL(dataset->num_classes(), 6);
      check_reads(*dataset->open("train"), item.train, item.train_labels, {3, 5, 7});
      check_reads(*dataset->open("test"), item.test, item.test_labels, {3, 5, 7});
      // The same file through a tiny budget: streamed, every sample the same.
      auto streamed = hdf5_dataset(fmt::format(
          "{{type: hdf5, train: {}, test: {}, classes: 6, memory_budget: 300}}", path, path));
      check_reads(*streamed->open("train"), item.train, item.train_labels, {3, 5, 7});
      // Layout forced: NHWC read as NCHW gives [5, 7, 3] images.
      auto forced = hdf5_dataset(fmt::format("{{type: hdf5, train: {}, test: {}, layout: {}}}",
                                             path, path, item.nhwc ? "nchw" : "nhwc"));
      const strata::Shape forced_shape =
          item.nhwc ? strata::Shape({5, 7, 3}) : strata::Shape({7, 3, 5});
      BOOST_CHECK(forced->sample_shape() == forced_shape);
    }
  }
}

// Grey images as numpy holds MNIST, [N, H, W]: one channel, read whole, streamed through a tiny
// budget, contiguous or chunked one image per chunk.
BOOST_AUTO_TEST_CASE(grey_three_dimensional_arrays) {
  BOOST_REQUIRE(have_h5py());
  TempDir dir;
  std::mt19937 rng(1602);
  H5pyFiles files(dir);
  Array train = random_images(11, 1, 5, 6, "uint8", true, rng);
  Array test = random_images(3, 1, 5, 6, "uint8", true, rng);
  train.shape = {11, 5, 6};
  test.shape = {3, 5, 6};
  const std::vector<int64_t> train_labels = random_labels(11, 4, rng), test_labels = random_labels(3, 4, rng);
  for (const bool chunked : {false, true}) {
    const std::string file = chunked ? "grey_chunked.h5" : "grey.h5";
    const std::vector<int64_t> chunks = chunked ? std::vector<int64_t>{1, 5, 6} : std::vector<int64_t>{};
    files.add(file, "train/images", train, chunks, chunked);
    files.add(file, "train/labels", labels_array(train_labels, "int64"));
    files.add(file, "test/images", test, chunks, chunked);
    files.add(file, "test/labels", labels_array(test_labels, "int64"));
  }
  files.write();
  for (const std::string file : {"grey.h5", "grey_chunked.h5"}) {
    BOOST_TEST_CONTEXT(file) {
      const std::string path = (dir / file).string();
      for (const std::string budget : {"1GB", "100"}) {
        auto dataset = hdf5_dataset(fmt::format(
            "{{type: hdf5, train: {}, test: {}, classes: 4, memory_budget: {}}}", path, path, budget));
        BOOST_CHECK(dataset->sample_shape() == strata::Shape({1, 5, 6}));
        check_reads(*dataset->open("train"), train, train_labels, {1, 5, 6});
        check_reads(*dataset->open("test"), test, test_labels, {1, 5, 6});
      }
    }
  }
}

// Explicit groups and dataset names, one file per split, labels of any integer type; classes
// default to 1 + the largest label of both splits; class_names are kept.
BOOST_AUTO_TEST_CASE(groups_names_and_default_classes) {
  BOOST_REQUIRE(have_h5py());
  TempDir dir;
  std::mt19937 rng(1602);
  H5pyFiles files(dir);
  const Array train = random_images(6, 1, 4, 4, "uint8", false, rng);
  const Array test = random_images(3, 1, 4, 4, "uint8", false, rng);
  const std::vector<int64_t> train_labels{0, 1, 2, 1, 0, 2};
  const std::vector<int64_t> test_labels{3, 0, 1};
  files.add("train.h5", "data/fashion/x", train);
  files.add("train.h5", "data/fashion/y", labels_array(train_labels));
  files.add("test.h5", "x", test);
  files.add("test.h5", "y", labels_array(test_labels, "int16"));
  files.write();
  auto dataset = hdf5_dataset(fmt::format(
      "{{type: hdf5, train: {}, test: {}, train_group: data/fashion, images: x, labels: y, "
      "class_names: [a, b, c, d]}}",
      (dir / "train.h5").string(), (dir / "test.h5").string()));
  BOOST_CHECK_EQUAL(dataset->num_classes(), 4);
  BOOST_CHECK(dataset->class_names() == std::vector<std::string>({"a", "b", "c", "d"}));
  BOOST_CHECK(dataset->sample_shape() == strata::Shape({1, 4, 4}));
  auto train_reader = dataset->open("train");
  check_reads(*train_reader, train, train_labels, {1, 4, 4});
  check_reads(*dataset->open("test"), test, test_labels, {1, 4, 4});
  STRATA_CHECK_CONTAINS(train_reader->describe(4), "train.h5:/data/fashion/x[4]");
  STRATA_CHECK_CONTAINS(error_of([&] { dataset->open("validation"); }), "unknown split");
}

namespace {

// Bytes the process has allocated with malloc now, from the heap and by mmap (glibc's count; a
// sanitizer's allocator is not counted).
int64_t heap_in_use() {
  const struct mallinfo2 info = mallinfo2();
  return static_cast<int64_t>(info.uordblks + info.hblkhd);
}

bool heap_counted() {
  char* volatile probe = static_cast<char*>(std::malloc(1 << 20));
  probe[0] = 1;
  const int64_t with = heap_in_use();
  std::free(probe);
  return with - heap_in_use() >= (1 << 20) - 4096;
}

}  // namespace

// A file larger than the budget is streamed: each sample reads identically to the whole-file
// path, from two threads at once, and the heap the reader holds stays within the budget (measured
// with glibc's malloc statistics after every read), while the whole-file reader holds the array.
BOOST_AUTO_TEST_CASE(budget_streams_within_the_budget) {
  BOOST_REQUIRE(have_h5py());
  TempDir dir;
  std::mt19937 rng(1603);
  H5pyFiles files(dir);
  const int64_t n = 512;
  const Array images = random_images(n, 3, 32, 32, "uint8", true, rng);  // 1.5 MB
  const std::vector<int64_t> labels = random_labels(n, 10, rng);
  // Chunks of 4 rows (12 KB blocks, cached), of 64 rows (192 KB: above the budget, not cached),
  // and contiguous storage (read by hyperslab).
  files.add("small_chunks.h5", "images", images, {4, 32, 32, 3}, true);
  files.add("small_chunks.h5", "labels", labels_array(labels));
  files.add("large_chunks.h5", "images", images, {64, 16, 16, 3}, true);
  files.add("large_chunks.h5", "labels", labels_array(labels));
  files.add("contiguous.h5", "images", images);
  files.add("contiguous.h5", "labels", labels_array(labels));
  files.write();
  constexpr int64_t kBudget = 64 << 10;
  constexpr int64_t kSlack = 16 << 10;  // HDF5's chunk index and the reader's own vectors
  const bool counted = heap_counted();
  if (!counted) BOOST_TEST_MESSAGE("malloc statistics unavailable (sanitizer): memory not checked");
  for (const std::string name : {"small_chunks.h5", "large_chunks.h5", "contiguous.h5"}) {
    BOOST_TEST_CONTEXT(name) {
      const std::string path = (dir / name).string();
      const std::string base = fmt::format(
          "{{type: hdf5, train: {}, test: {}, train_group: /, test_group: /", path, path);
      const int64_t before_whole = heap_in_use();
      auto whole = hdf5_dataset(base + "}")->open("train");
      if (counted) BOOST_CHECK_GE(heap_in_use() - before_whole, n * 3 * 32 * 32 * 9 / 10);
      check_reads(*whole, images, labels, {3, 32, 32});
      whole.reset();

      // Heap over the level before the dataset was created, at its highest while every sample is
      // read twice in random order. With budget 0 nothing is cached: that peak is HDF5's own cost
      // of an open file; the budget may add at most itself.
      std::vector<int64_t> order(static_cast<std::size_t>(n) * 2);
      for (std::size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int64_t>(i) % n;
      std::shuffle(order.begin(), order.end(), rng);
      std::shared_ptr<const SplitReader> streamed;
      const auto streaming_peak = [&](int64_t budget) {
        streamed.reset();
        const int64_t baseline = heap_in_use();
        streamed = hdf5_dataset(base + fmt::format(", memory_budget: {}}}", budget))->open("train");
        Image image;
        int64_t peak = 0;
        for (int64_t index : order) {
          streamed->read(index, image);
          peak = std::max(peak, heap_in_use() - baseline);
          BOOST_REQUIRE(std::equal(image.pixels.begin(), image.pixels.end(),
                                   images.expected.begin() + index * 3 * 32 * 32));
        }
        return peak;
      };
      const int64_t uncached = streaming_peak(0);
      const int64_t peak = streaming_peak(kBudget);
      BOOST_TEST_MESSAGE(name << ": peak heap while streaming: " << uncached << " bytes without a "
                              << "cache, " << peak << " with a budget of " << kBudget);
      if (counted) {
        BOOST_CHECK_LE(peak, uncached + kBudget + kSlack);
        BOOST_CHECK_LE(uncached, 1 << 20);  // HDF5's open file, well below the array's 1.5 MB
      }
      // Two threads at once, each checking what it reads.
      std::vector<std::thread> threads;
      std::atomic<int> mismatches{0};
      for (int t = 0; t < 2; ++t) {
        threads.emplace_back([&, t] {
          Image local;
          for (int64_t i = t; i < n; i += 2) {
            streamed->read(i, local);
            if (!std::equal(local.pixels.begin(), local.pixels.end(),
                            images.expected.begin() + i * 3 * 32 * 32)) {
              ++mismatches;
            }
          }
        });
      }
      for (auto& thread : threads) thread.join();
      BOOST_CHECK_EQUAL(mismatches.load(), 0);
    }
  }
}

// Every refusal names the file and the dataset, and says what was expected and found.
BOOST_AUTO_TEST_CASE(bad_files_are_clear_errors) {
  BOOST_REQUIRE(have_h5py());
  TempDir dir;
  std::mt19937 rng(1604);
  H5pyFiles files(dir);
  const Array images = random_images(5, 1, 4, 4, "uint8", false, rng);
  const Array labels = labels_array({0, 1, 2, 1, 0});
  files.add("good.h5", "images", images);
  files.add("good.h5", "labels", labels);
  files.add("no_images.h5", "labels", labels);
  files.add("no_labels.h5", "images", images);
  files.add("rank.h5", "images", Array{"uint8", {5, 16}, images.bytes, {}});
  files.add("rank.h5", "labels", labels);
  files.add("int16.h5", "images", Array{"int16", {5, 1, 4, 2}, images.bytes, {}});
  files.add("int16.h5", "labels", labels);
  files.add("float_labels.h5", "images", images);
  files.add("float_labels.h5", "labels", labels_array({0, 1, 2, 1, 0}, "float32"));
  files.add("count.h5", "images", images);
  files.add("count.h5", "labels", labels_array({0, 1, 2, 1}));
  files.add("range.h5", "images", images);
  files.add("range.h5", "labels", labels_array({0, 1, 2, 7, 0}));
  files.add("negative.h5", "images", images);
  files.add("negative.h5", "labels", labels_array({0, 1, -1, 1, 0}));
  files.add("empty.h5", "images", Array{"uint8", {0, 1, 4, 4}, {}, {}});
  files.add("empty.h5", "labels", Array{"int64", {0}, {}, {}});
  files.add("wide.h5", "images", random_images(5, 1, 4, 5, "uint8", false, rng));
  files.add("wide.h5", "labels", labels);
  files.write();
  std::ofstream(dir / "text.h5") << "not an HDF5 file\n";
  const std::string good = (dir / "good.h5").string();
  const auto open = [&](const std::string& train, const std::string& extra = "") {
    return error_of([&] {
      auto dataset = hdf5_dataset(fmt::format("{{type: hdf5, train: {}, test: {}{}}}",
                                              (dir / train).string(), good, extra));
      dataset->open("train");
    });
  };
  const std::string missing = open("missing.h5");
  STRATA_CHECK_CONTAINS(missing, "missing.h5 does not exist");
  STRATA_CHECK_CONTAINS(missing, "train");
  STRATA_CHECK_CONTAINS(open("text.h5"), "text.h5: not an HDF5 file");
  const std::string no_images = open("no_images.h5");
  STRATA_CHECK_CONTAINS(no_images, "no_images.h5: /images: no such dataset");
  STRATA_CHECK_CONTAINS(no_images, "/ holds: labels (int64 [5])");
  const std::string no_labels = open("no_labels.h5", ", labels: y");
  STRATA_CHECK_CONTAINS(no_labels, "no_labels.h5: /y: no such dataset (key labels: 'y')");
  STRATA_CHECK_CONTAINS(no_labels, "holds: images (uint8 [5, 1, 4, 4])");
  STRATA_CHECK_CONTAINS(open("rank.h5"), "rank.h5: /images: expected 4 dimensions");
  STRATA_CHECK_CONTAINS(open("rank.h5"), "(or 3, [N, H, W], for grey images), found 2 [5, 16]");
  STRATA_CHECK_CONTAINS(open("int16.h5"), "int16.h5: /images: unsupported type int16");
  STRATA_CHECK_CONTAINS(open("float_labels.h5"),
                        "float_labels.h5: /labels: unsupported type float32");
  STRATA_CHECK_CONTAINS(open("count.h5"), "count.h5: /labels: holds 4 labels but /images holds 5");
  STRATA_CHECK_CONTAINS(open("range.h5", ", classes: 5"),
                        "range.h5: /labels: label 7 at index 3 is out of range for classes: 5");
  STRATA_CHECK_CONTAINS(open("negative.h5"), "negative.h5: /labels: label -1 at index 2");
  STRATA_CHECK_CONTAINS(open("empty.h5"), "empty.h5: /images: holds no images");
  STRATA_CHECK_CONTAINS(open("wide.h5"), "test images are [C, H, W] = [1, 4, 4]");
  STRATA_CHECK_CONTAINS(open("good.h5", ", train_group: nothing"),
                        "good.h5: /nothing: no such group (train_group); / holds: images");
  STRATA_CHECK_CONTAINS(open("good.h5", ", memory_budget: lots"),
                        "expected a byte count or a size such as 512MB");
  STRATA_CHECK_CONTAINS(open("good.h5", ", layout: chw"), "expected auto, nchw or nhwc");
  // Same file for both splits: the default groups are train and test.
  STRATA_CHECK_CONTAINS(
      error_of(
          [&] { hdf5_dataset(fmt::format("{{type: hdf5, train: {}, test: {}}}", good, good)); }),
      "/train: no such group (train_group)");
}

// ---- the decoded cache ----

namespace {

// A split in memory that counts its reads and can fail at one index (BadSample or Error).
class CountingSplit final : public SplitReader {
 public:
  CountingSplit(strata::Split split, int64_t fail_at = -1, bool bad_sample = true)
      : inner_(std::move(split)), fail_at_(fail_at), bad_sample_(bad_sample) {}
  int64_t size() const override { return inner_.size(); }
  std::span<const int32_t> labels() const override { return inner_.labels(); }
  void read(int64_t index, Image& out) const override {
    ++reads;
    if (index == fail_at_) {
      if (bad_sample_) throw strata::BadSample(fmt::format("{}: truncated JPEG", describe(index)));
      throw strata::Error("disk on fire");
    }
    inner_.read(index, out);
  }
  std::string describe(int64_t index) const override {
    return fmt::format("photos/{:04}.jpg", index);
  }
  mutable std::atomic<int64_t> reads{0};

 private:
  strata::InMemorySplit inner_;
  int64_t fail_at_;
  bool bad_sample_;
};

class FixedDataset final : public strata::Dataset {
 public:
  FixedDataset(strata::Shape shape, int classes) : shape_(std::move(shape)), classes_(classes) {}
  strata::Shape sample_shape() const override { return shape_; }
  int num_classes() const override { return classes_; }
  std::vector<std::string> class_names() const override { return {"cat", "dog", "emu"}; }
  std::shared_ptr<const SplitReader> open(std::string_view) override { return nullptr; }

 private:
  strata::Shape shape_;
  int classes_;
};

strata::Split random_split(int64_t n, const strata::Shape& shape, std::mt19937& rng) {
  strata::Split split;
  split.images =
      strata::test::random_tensor(strata::Shape{n, shape[0], shape[1], shape[2]}, rng, 0.0f, 1.0f);
  for (int64_t i = 0; i < n; ++i) split.labels.push_back(static_cast<int32_t>(rng() % 3));
  return split;
}

// What the cache must hold for sample `index`: the source image through `transforms`, rounded to
// bytes and scaled back.
std::vector<float> expected_cached(
    const SplitReader& source, int64_t index,
    const std::vector<std::shared_ptr<strata::Transform>>& transforms) {
  Image image, scratch;
  source.read(index, image);
  for (const auto& transform : transforms) transform->apply(image, scratch);
  std::vector<float> values;
  for (float v : image.pixels) {
    const float scaled = std::clamp(v * 255.0f, 0.0f, 255.0f);
    values.push_back(static_cast<float>(std::lround(scaled)) / 255.0f);
  }
  return values;
}

std::shared_ptr<strata::Transform> transform(const std::string& text, const strata::Shape& input) {
  auto made = registries().transforms.create(yaml(text));
  made->setup(input);
  return made;
}

void check_cached(const SplitReader& cached, const SplitReader& source,
                  const std::vector<std::shared_ptr<strata::Transform>>& transforms,
                  const strata::Shape& shape) {
  BOOST_REQUIRE_EQUAL(cached.size(), source.size());
  BOOST_CHECK(std::equal(cached.labels().begin(), cached.labels().end(), source.labels().begin()));
  Image image;
  for (int64_t i = 0; i < cached.size(); ++i) {
    cached.read(i, image);
    BOOST_REQUIRE(image.shape() == shape);
    const std::vector<float> expected = expected_cached(source, i, transforms);
    BOOST_REQUIRE(std::equal(image.pixels.begin(), image.pixels.end(), expected.begin()));
  }
}

}  // namespace

// Built once (every source sample read once), in blocks (300 samples: two blocks), one sample per
// gzip chunk; read back with the same pixels; a second call reads no source sample.
BOOST_AUTO_TEST_CASE(cache_is_written_once_and_reread) {
  TempDir dir;
  std::mt19937 rng(1605);
  const strata::Shape shape{3, 12, 10};
  FixedDataset dataset(shape, 3);
  auto source = std::make_shared<CountingSplit>(random_split(300, shape, rng));
  const strata::Config cache = yaml(fmt::format(
      "{{path: '{}/cache/{{split}}.h5', size: [6, 8], compression: 6}}", dir.path().string()));
  const auto cached = strata::cached_split(cache, dataset, source, "train", registries(), "a: 1\n");
  BOOST_CHECK_EQUAL(source->reads.load(), 300);
  const fs::path file = dir / "cache/train.h5";
  BOOST_REQUIRE(fs::is_regular_file(file));
  BOOST_CHECK_EQUAL(std::distance(fs::directory_iterator(dir / "cache"), fs::directory_iterator()),
                    1);
  source->reads = 0;
  const std::vector<std::shared_ptr<strata::Transform>> stretch{
      transform("{type: resize, size: [6, 8]}", shape)};
  check_cached(*cached, *source, stretch, strata::Shape{3, 6, 8});
  source->reads = 0;
  const auto again = strata::cached_split(cache, dataset, source, "train", registries(), "a: 1\n");
  BOOST_CHECK_EQUAL(source->reads.load(), 0);
  check_cached(*again, *source, stretch, strata::Shape{3, 6, 8});
  STRATA_CHECK_CONTAINS(again->describe(7), "train.h5:/images[7]");

  // The file: [N, C, H, W] uint8, one sample per chunk, gzip level 6, labels.
  const hid_t h5 = H5Fopen(file.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  BOOST_REQUIRE(h5 >= 0);
  const hid_t images = H5Dopen2(h5, "images", H5P_DEFAULT);
  const hid_t properties = H5Dget_create_plist(images);
  std::array<hsize_t, 4> chunk{};
  BOOST_CHECK_EQUAL(H5Pget_chunk(properties, 4, chunk.data()), 4);
  BOOST_CHECK(chunk == (std::array<hsize_t, 4>{1, 3, 6, 8}));
  unsigned flags = 0, level = 0;
  std::size_t elements = 1;
  BOOST_CHECK_EQUAL(H5Pget_filter2(properties, 0, &flags, &elements, &level, 0, nullptr, nullptr),
                    H5Z_FILTER_DEFLATE);
  BOOST_CHECK_EQUAL(level, 6u);
  const hid_t type = H5Dget_type(images);
  BOOST_CHECK(H5Tequal(type, H5T_STD_U8LE) > 0);
  H5Tclose(type);
  H5Pclose(properties);
  H5Dclose(images);
  H5Fclose(h5);

  // size S: the shorter side to S, then the centre S x S; without {split} in the path the split
  // is appended to the name.
  source->reads = 0;
  const strata::Config square =
      yaml(fmt::format("{{path: {}/square.h5, size: 5}}", dir.path().string()));
  const auto cropped = strata::cached_split(square, dataset, source, "test", registries(), "b\n");
  BOOST_CHECK(fs::is_regular_file(dir / "square-test.h5"));
  BOOST_CHECK_EQUAL(source->reads.load(), 300);
  auto resize = transform("{type: resize, size: 5}", shape);
  auto crop = transform("{type: center_crop, size: 5}", resize->output_shape(shape));
  check_cached(*cropped, *source, {resize, crop}, strata::Shape{3, 5, 5});
}

// An existing cache written for something else is refused, saying what differs and to delete it.
BOOST_AUTO_TEST_CASE(cache_mismatch_is_an_error) {
  TempDir dir;
  std::mt19937 rng(1606);
  // Two channels of 4 x 4: [N, 2, 4, 4] would pass for NHWC, so the cache must say NCHW.
  const strata::Shape shape{2, 8, 8};
  FixedDataset dataset(shape, 3);
  strata::Split split = random_split(20, shape, rng);
  auto source = std::make_shared<CountingSplit>(split);
  const std::string path = (dir / "c.h5").string();
  const auto cache_yaml = [&](const std::string& size) {
    return yaml(fmt::format("{{path: {}, size: {}, compression: 0}}", path, size));
  };
  const auto built = strata::cached_split(cache_yaml("[4, 4]"), dataset, source, "train",
                                          registries(), "type: x\n");
  check_cached(*built, *source, {transform("{type: resize, size: [4, 4]}", shape)},
               strata::Shape{2, 4, 4});
  const auto error = [&](const std::string& size, const std::string& source_yaml,
                         std::shared_ptr<const SplitReader> from) {
    return error_of([&] {
      strata::cached_split(cache_yaml(size), dataset, from, "train", registries(), source_yaml);
    });
  };
  const std::string other_source = error("[4, 4]", "type: y\n", source);
  STRATA_CHECK_CONTAINS(other_source, "was written for another dataset");
  STRATA_CHECK_CONTAINS(other_source, "type: x");
  STRATA_CHECK_CONTAINS(other_source, "Delete " + fs::path(dir / "c-train.h5").string());
  STRATA_CHECK_CONTAINS(error("[4, 5]", "type: x\n", source),
                        "another size:\n  the file has: [4, 4]\n  this run has: [4, 5]");
  STRATA_CHECK_CONTAINS(
      error("[4, 4]", "type: x\n", std::make_shared<CountingSplit>(random_split(21, shape, rng))),
      "another number of samples");
  split.labels[13] = (split.labels[13] + 1) % 3;
  STRATA_CHECK_CONTAINS(error("[4, 4]", "type: x\n", std::make_shared<CountingSplit>(split)),
                        "of sample 13 (photos/0013.jpg)");
  std::ofstream(dir / "junk-train.h5") << "junk";
  STRATA_CHECK_CONTAINS(error_of([&] {
                          strata::cached_split(
                              yaml(fmt::format("{{path: {}/junk.h5}}", dir.path().string())),
                              dataset, source, "train", registries(), "type: x\n");
                        }),
                        "exists but is not an HDF5 file; delete it");
}

// A failure mid-write (a bad sample in the second block, or any other error) leaves no cache
// file and no temporary file; a bad sample is an Error naming the cache and the sample.
BOOST_AUTO_TEST_CASE(cache_is_written_atomically) {
  TempDir dir;
  std::mt19937 rng(1607);
  const strata::Shape shape{1, 8, 8};
  FixedDataset dataset(shape, 3);
  const strata::Config cache =
      yaml(fmt::format("{{path: '{}/{{split}}.h5'}}", dir.path().string()));
  for (const bool bad_sample : {true, false}) {
    auto source = std::make_shared<CountingSplit>(random_split(600, shape, rng), 555, bad_sample);
    const std::string message = error_of(
        [&] { strata::cached_split(cache, dataset, source, "train", registries(), "a\n"); });
    if (bad_sample) {
      STRATA_CHECK_CONTAINS(message, "decoded cache " + (dir / "train.h5").string());
      STRATA_CHECK_CONTAINS(message, "photos/0555.jpg: truncated JPEG");
      STRATA_CHECK_CONTAINS(message, "fix or remove that file");
    } else {
      STRATA_CHECK_CONTAINS(message, "disk on fire");
    }
    BOOST_CHECK_GE(source->reads.load(), 512);  // two blocks were written before the failure
    BOOST_CHECK(fs::is_empty(dir.path()));
  }
}
