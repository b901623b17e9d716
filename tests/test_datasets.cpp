// Dataset readers (idx, cifar10, synthetic) and the normalize transform.
//
// Every reader test writes its own files with random content into a TempDir and checks an exact
// round trip: every pixel byte b must come back as b / 255.0f at the right [n, c, y, x], and every
// label unchanged. Images are never square, so a swapped row/column index cannot pass. Each bad
// input case checks that the message names the file and carries the numbers a user needs.
#define BOOST_TEST_MODULE datasets
#include <zlib.h>

#include <algorithm>
#include <boost/test/unit_test.hpp>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "strata/dataset.hpp"
#include "strata/error.hpp"
#include "strata/registry.hpp"
#include "test_support.hpp"

namespace fs = std::filesystem;
using strata::Shape;
using strata::Split;
using strata::Tensor;
using strata::test::error_of;
using strata::test::load_split;
using strata::test::registries;
using strata::test::TempDir;
using strata::test::yaml;

namespace {

using Bytes = std::vector<uint8_t>;

// ---------------------------------------------------------------------------------------------
// Helpers

int random_int(std::mt19937& rng, int low, int high) {  // inclusive
  return std::uniform_int_distribution<int>(low, high)(rng);
}

Bytes random_bytes(std::size_t count, std::mt19937& rng, int high = 255) {
  Bytes bytes(count);
  std::uniform_int_distribution<int> dist(0, high);
  for (auto& b : bytes) b = static_cast<uint8_t>(dist(rng));
  return bytes;
}

void append_be32(Bytes& bytes, uint32_t value) {
  for (int shift = 24; shift >= 0; shift -= 8)
    bytes.push_back(static_cast<uint8_t>(value >> shift));
}

void write_raw(const fs::path& path, const Bytes& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
  BOOST_REQUIRE(out.good());
}

void write_gz(const fs::path& path, const Bytes& bytes) {
  gzFile file = gzopen(path.c_str(), "wb");
  BOOST_REQUIRE(file != nullptr);
  BOOST_REQUIRE_EQUAL(gzwrite(file, bytes.data(), static_cast<unsigned>(bytes.size())),
                      static_cast<int>(bytes.size()));
  BOOST_REQUIRE_EQUAL(gzclose(file), Z_OK);
}

Bytes read_raw(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Writes raw, or gzip when the name ends in ".gz".
void write_file(const fs::path& path, const Bytes& bytes) {
  if (path.extension() == ".gz") {
    write_gz(path, bytes);
  } else {
    write_raw(path, bytes);
  }
}


std::shared_ptr<strata::Dataset> make_dataset(const std::string& config) {
  return registries().datasets.create(yaml(config));
}

// Checks images [N, C, H, W] == bytes / 255 exactly (bytes in the same order) and the labels.
void check_exact(const Split& split, const Shape& expected_shape, const Bytes& pixels,
                 const Bytes& labels) {
  BOOST_REQUIRE_EQUAL(split.images.shape().str(), expected_shape.str());
  BOOST_REQUIRE_EQUAL(static_cast<std::size_t>(split.images.numel()), pixels.size());
  std::size_t mismatches = 0;
  for (std::size_t i = 0; i < pixels.size(); ++i) {
    if (split.images.data()[i] != static_cast<float>(pixels[i]) / 255.0f) ++mismatches;
  }
  BOOST_TEST(mismatches == 0u);
  const std::vector<int32_t> expected_labels(labels.begin(), labels.end());
  BOOST_CHECK_EQUAL_COLLECTIONS(split.labels.begin(), split.labels.end(), expected_labels.begin(),
                                expected_labels.end());
}

// ---------------------------------------------------------------------------------------------
// IDX files

struct IdxSplit {
  uint32_t count = 0;
  uint32_t rows = 0;
  uint32_t columns = 0;
  Bytes pixels;
  Bytes labels;

  Bytes image_file() const {
    Bytes bytes;
    append_be32(bytes, 0x00000803);
    append_be32(bytes, count);
    append_be32(bytes, rows);
    append_be32(bytes, columns);
    bytes.insert(bytes.end(), pixels.begin(), pixels.end());
    return bytes;
  }
  Bytes label_file() const {
    Bytes bytes;
    append_be32(bytes, 0x00000801);
    append_be32(bytes, static_cast<uint32_t>(labels.size()));
    bytes.insert(bytes.end(), labels.begin(), labels.end());
    return bytes;
  }
  Shape shape() const { return Shape{count, 1, rows, columns}; }
};

// Random images of rows x columns (never square) and labels below `classes`.
IdxSplit random_idx(std::mt19937& rng, uint32_t rows, uint32_t columns, int classes) {
  IdxSplit split;
  split.count = static_cast<uint32_t>(random_int(rng, 15, 40));
  split.rows = rows;
  split.columns = columns;
  split.pixels = random_bytes(std::size_t{split.count} * rows * columns, rng);
  split.labels = random_bytes(split.count, rng, classes - 1);
  return split;
}

// A folder with the four default-named files; `suffix` is "" or ".gz".
struct IdxFolder {
  TempDir dir;
  IdxSplit train;
  IdxSplit test;
  int classes = 0;

  IdxFolder(std::mt19937& rng, const std::string& suffix) {
    classes = random_int(rng, 3, 12);
    const auto rows = static_cast<uint32_t>(random_int(rng, 4, 9));
    const auto columns = static_cast<uint32_t>(random_int(rng, 10, 15));
    train = random_idx(rng, rows, columns, classes);
    test = random_idx(rng, rows, columns, classes);
    write_file(path("train-images-idx3-ubyte" + suffix), train.image_file());
    write_file(path("train-labels-idx1-ubyte" + suffix), train.label_file());
    write_file(path("t10k-images-idx3-ubyte" + suffix), test.image_file());
    write_file(path("t10k-labels-idx1-ubyte" + suffix), test.label_file());
  }
  fs::path path(const std::string& name) const { return dir / name; }
  std::string config() const {
    return fmt::format("{{type: idx, dir: {}, classes: {}}}", dir.path().string(), classes);
  }
};

}  // namespace

BOOST_AUTO_TEST_SUITE(idx)

BOOST_AUTO_TEST_CASE(raw_files_round_trip) {
  std::mt19937 rng(101);
  IdxFolder folder(rng, "");
  auto dataset = make_dataset(folder.config());
  BOOST_TEST(dataset->sample_shape().str() ==
             Shape({1, folder.train.rows, folder.train.columns}).str());
  BOOST_TEST(dataset->num_classes() == folder.classes);
  check_exact(load_split(*dataset, "train"), folder.train.shape(), folder.train.pixels,
              folder.train.labels);
  check_exact(load_split(*dataset, "test"), folder.test.shape(), folder.test.pixels, folder.test.labels);
}

BOOST_AUTO_TEST_CASE(gzip_files_round_trip) {
  std::mt19937 rng(102);
  IdxFolder folder(rng, ".gz");
  auto dataset = make_dataset(folder.config());
  check_exact(load_split(*dataset, "train"), folder.train.shape(), folder.train.pixels,
              folder.train.labels);
  check_exact(load_split(*dataset, "test"), folder.test.shape(), folder.test.pixels, folder.test.labels);
}

BOOST_AUTO_TEST_CASE(raw_file_is_preferred_over_gzip) {
  std::mt19937 rng(103);
  IdxFolder folder(rng, "");
  // A different, valid gzip twin of the train images: the raw file must win.
  IdxSplit other = random_idx(rng, folder.train.rows, folder.train.columns, folder.classes);
  other.count = folder.train.count;
  other.pixels = random_bytes(folder.train.pixels.size(), rng);
  write_gz(folder.path("train-images-idx3-ubyte.gz"), other.image_file());
  auto dataset = make_dataset(folder.config());
  check_exact(load_split(*dataset, "train"), folder.train.shape(), folder.train.pixels,
              folder.train.labels);
}

BOOST_AUTO_TEST_CASE(explicit_paths) {
  std::mt19937 rng(104);
  IdxFolder folder(rng, "");
  // Relative paths resolve against `dir`; with all four absolute paths, `dir` is not needed.
  fs::create_directories(folder.path("sub"));
  IdxSplit swapped = random_idx(rng, folder.train.rows, folder.train.columns, folder.classes);
  write_gz(folder.path("sub/imgs.gz"), swapped.image_file());
  write_raw(folder.path("sub/lbls"), swapped.label_file());
  auto relative = make_dataset(fmt::format(
      "{{type: idx, dir: {}, classes: {}, test_images: sub/imgs.gz, test_labels: sub/lbls}}",
      folder.dir.path().string(), folder.classes));
  check_exact(load_split(*relative, "test"), swapped.shape(), swapped.pixels, swapped.labels);
  check_exact(load_split(*relative, "train"), folder.train.shape(), folder.train.pixels,
              folder.train.labels);

  auto absolute = make_dataset(
      fmt::format("{{type: idx, classes: {}, train_images: {}, train_labels: {}, test_images: {}, "
                  "test_labels: {}}}",
                  folder.classes, folder.path("t10k-images-idx3-ubyte").string(),
                  folder.path("t10k-labels-idx1-ubyte").string(),
                  folder.path("sub/imgs.gz").string(), folder.path("sub/lbls").string()));
  check_exact(load_split(*absolute, "train"), folder.test.shape(), folder.test.pixels, folder.test.labels);
}

BOOST_AUTO_TEST_CASE(unknown_split) {
  std::mt19937 rng(105);
  IdxFolder folder(rng, "");
  auto dataset = make_dataset(folder.config());
  const std::string message = error_of([&] { load_split(*dataset, "valid"); });
  STRATA_CHECK_CONTAINS(message, "unknown split 'valid'");
}

BOOST_AUTO_TEST_CASE(missing_files) {
  TempDir empty;
  const std::string message =
      error_of([&] { make_dataset(fmt::format("{{type: idx, dir: {}}}", empty.path().string())); });
  STRATA_CHECK_CONTAINS(message, (empty / "train-images-idx3-ubyte").string() + " nor ");
  STRATA_CHECK_CONTAINS(message, (empty / "train-images-idx3-ubyte.gz").string());
  STRATA_CHECK_CONTAINS(message, "<test>:1:");  // the position of `dir` in the config

  // Only the test labels are missing.
  std::mt19937 rng(106);
  IdxFolder folder(rng, ".gz");
  fs::remove(folder.path("t10k-labels-idx1-ubyte.gz"));
  const std::string labels = error_of([&] { make_dataset(folder.config()); });
  STRATA_CHECK_CONTAINS(labels, folder.path("t10k-labels-idx1-ubyte.gz").string());

  // An explicit path is used exactly as written.
  const std::string explicit_path = error_of([&] {
    make_dataset(fmt::format("{{type: idx, dir: {}, train_labels: nowhere.idx}}",
                             folder.dir.path().string()));
  });
  STRATA_CHECK_CONTAINS(explicit_path, "train_labels: dataset file " +
                                    folder.path("nowhere.idx").string() + " does not exist");
}

BOOST_AUTO_TEST_CASE(truncated_images) {
  for (const std::string suffix : {"", ".gz"}) {
    std::mt19937 rng(107);
    IdxFolder folder(rng, suffix);
    const fs::path file = folder.path("train-images-idx3-ubyte" + suffix);
    Bytes bytes = folder.train.image_file();
    const std::size_t cut = static_cast<std::size_t>(random_int(rng, 1, 200));
    bytes.resize(bytes.size() - cut);
    write_file(file, bytes);
    auto dataset = make_dataset(folder.config());  // the header alone is intact
    const std::string message = error_of([&] { load_split(*dataset, "train"); });
    const IdxSplit& t = folder.train;
    STRATA_CHECK_CONTAINS(message, "dataset " + file.string() + ": truncated: ");
    STRATA_CHECK_CONTAINS(message, fmt::format("header says {} images of {}x{} (16 + {} bytes)", t.count,
                                        t.rows, t.columns, t.pixels.size()));
    STRATA_CHECK_CONTAINS(message, fmt::format("file holds {} bytes", bytes.size()));
    if (suffix == ".gz") STRATA_CHECK_CONTAINS(message, "after decompression");
  }
  // Shorter than the header: fails at construction, which reads it.
  std::mt19937 rng(108);
  IdxFolder folder(rng, "");
  write_raw(folder.path("train-images-idx3-ubyte"), random_bytes(11, rng));
  const std::string message = error_of([&] { make_dataset(folder.config()); });
  STRATA_CHECK_CONTAINS(message, folder.path("train-images-idx3-ubyte").string());
  STRATA_CHECK_CONTAINS(message, "file holds 11 bytes");
}

BOOST_AUTO_TEST_CASE(trailing_bytes) {
  std::mt19937 rng(109);
  IdxFolder folder(rng, ".gz");
  const fs::path file = folder.path("t10k-images-idx3-ubyte.gz");
  Bytes bytes = folder.test.image_file();
  const std::size_t extra = static_cast<std::size_t>(random_int(rng, 1, 50));
  const Bytes garbage = random_bytes(extra, rng);
  bytes.insert(bytes.end(), garbage.begin(), garbage.end());
  write_gz(file, bytes);
  auto dataset = make_dataset(folder.config());
  const std::string message = error_of([&] { load_split(*dataset, "test"); });
  STRATA_CHECK_CONTAINS(message, fmt::format("dataset {}: trailing data: header says {} images of {}x{}",
                                      file.string(), folder.test.count, folder.test.rows,
                                      folder.test.columns));
  STRATA_CHECK_CONTAINS(message, fmt::format("file holds {} bytes after decompression ({} extra)",
                                      bytes.size(), extra));

  // Trailing bytes in a label file.
  Bytes labels = folder.train.label_file();
  labels.push_back(static_cast<uint8_t>(random_int(rng, 0, 255)));
  write_gz(folder.path("train-labels-idx1-ubyte.gz"), labels);
  const std::string label_message = error_of([&] { load_split(*dataset, "train"); });
  STRATA_CHECK_CONTAINS(label_message, folder.path("train-labels-idx1-ubyte.gz").string());
  STRATA_CHECK_CONTAINS(label_message,
                 fmt::format("trailing data: header says {} labels (8 + {} bytes), file holds {} "
                             "bytes after decompression (1 extra)",
                             folder.train.count, folder.train.count, labels.size()));
}

BOOST_AUTO_TEST_CASE(bad_magic) {
  std::mt19937 rng(110);
  IdxFolder folder(rng, "");
  // A label file where the images belong: found at construction (the header is read there).
  write_raw(folder.path("train-images-idx3-ubyte"), folder.train.label_file());
  const std::string message = error_of([&] { make_dataset(folder.config()); });
  STRATA_CHECK_CONTAINS(message, folder.path("train-images-idx3-ubyte").string());
  STRATA_CHECK_CONTAINS(message, "bad magic number 0x00000801, expected 0x00000803");
  STRATA_CHECK_CONTAINS(message, "this is an IDX label file");

  // A random magic in the test labels.
  write_raw(folder.path("train-images-idx3-ubyte"), folder.train.image_file());
  Bytes labels = folder.test.label_file();
  const Bytes magic = random_bytes(4, rng);
  std::copy(magic.begin(), magic.end(), labels.begin());
  labels[0] |= 0x10;  // never 0x00000801 by chance
  write_raw(folder.path("t10k-labels-idx1-ubyte"), labels);
  auto dataset = make_dataset(folder.config());
  const std::string label_message = error_of([&] { load_split(*dataset, "test"); });
  STRATA_CHECK_CONTAINS(label_message, folder.path("t10k-labels-idx1-ubyte").string());
  STRATA_CHECK_CONTAINS(label_message,
                 fmt::format("bad magic number 0x{:02x}{:02x}{:02x}{:02x}, expected 0x00000801",
                             labels[0], labels[1], labels[2], labels[3]));
}

BOOST_AUTO_TEST_CASE(label_count_mismatch) {
  std::mt19937 rng(111);
  IdxFolder folder(rng, "");
  IdxSplit fewer = folder.train;
  fewer.labels.pop_back();
  write_raw(folder.path("train-labels-idx1-ubyte"), fewer.label_file());
  auto dataset = make_dataset(folder.config());
  const std::string message = error_of([&] { load_split(*dataset, "train"); });
  STRATA_CHECK_CONTAINS(message, folder.path("train-labels-idx1-ubyte").string());
  STRATA_CHECK_CONTAINS(message, fmt::format("holds {} labels", fewer.labels.size()));
  STRATA_CHECK_CONTAINS(message, fmt::format("number {}", folder.train.count));
}

BOOST_AUTO_TEST_CASE(label_out_of_range) {
  std::mt19937 rng(112);
  IdxFolder folder(rng, ".gz");
  IdxSplit bad = folder.test;
  const std::size_t index = static_cast<std::size_t>(random_int(rng, 0, bad.count - 1));
  bad.labels[index] = static_cast<uint8_t>(random_int(rng, folder.classes, 255));
  write_gz(folder.path("t10k-labels-idx1-ubyte.gz"), bad.label_file());
  auto dataset = make_dataset(folder.config());
  const std::string message = error_of([&] { load_split(*dataset, "test"); });
  STRATA_CHECK_CONTAINS(message, folder.path("t10k-labels-idx1-ubyte.gz").string());
  STRATA_CHECK_CONTAINS(message, fmt::format("label {} at index {} is out of range for classes: {}",
                                      bad.labels[index], index, folder.classes));
}

BOOST_AUTO_TEST_CASE(corrupt_gzip) {
  std::mt19937 rng(113);
  IdxFolder folder(rng, ".gz");
  const fs::path file = folder.path("train-images-idx3-ubyte.gz");
  const Bytes good = read_raw(file);
  BOOST_REQUIRE_GT(good.size(), 60u);

  // Damaged deflate data in the second half, so the IDX header still decodes: a data error or a
  // CRC mismatch.
  Bytes damaged = good;
  const int size = static_cast<int>(good.size());
  for (int i = 0; i < 8; ++i) {
    damaged[static_cast<std::size_t>(random_int(rng, size / 2, size - 20))] ^=
        static_cast<uint8_t>(random_int(rng, 1, 255));
  }
  write_raw(file, damaged);
  const std::string message = error_of([&] { load_split(*make_dataset(folder.config()), "train"); });
  STRATA_CHECK_CONTAINS(message, "dataset " + file.string() + ": corrupt gzip stream");

  // A gzip stream cut short.
  Bytes cut(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(good.size() / 2));
  write_raw(file, cut);
  const std::string cut_message = error_of([&] { load_split(*make_dataset(folder.config()), "train"); });
  STRATA_CHECK_CONTAINS(cut_message, "dataset " + file.string() + ": corrupt gzip stream");

  // Not gzip at all, though named .gz.
  write_raw(file, folder.train.image_file());
  const std::string raw_message = error_of([&] { make_dataset(folder.config()); });
  STRATA_CHECK_CONTAINS(raw_message, file.string() + ": the name ends in .gz but the file is not gzip");
}

BOOST_AUTO_TEST_CASE(test_images_of_another_size) {
  std::mt19937 rng(114);
  IdxFolder folder(rng, "");
  IdxSplit other = random_idx(rng, folder.train.rows + 1, folder.train.columns, folder.classes);
  write_raw(folder.path("t10k-images-idx3-ubyte"), other.image_file());
  write_raw(folder.path("t10k-labels-idx1-ubyte"), other.label_file());
  auto dataset = make_dataset(folder.config());
  const std::string message = error_of([&] { load_split(*dataset, "test"); });
  STRATA_CHECK_CONTAINS(message, fmt::format("test images are {}x{} but the train images", other.rows,
                                      other.columns));
}

BOOST_AUTO_TEST_CASE(config_errors) {
  std::mt19937 rng(115);
  IdxFolder folder(rng, "");
  const std::string dir = folder.dir.path().string();
  // A typo of `dir`, alone or beside the real key.
  for (const std::string& config : {fmt::format("{{type: idx, dri: {}}}", dir),
                                    fmt::format("{{type: idx, dir: {}, dri: {}}}", dir, dir)}) {
    const std::string message = error_of([&] { make_dataset(config); });
    STRATA_CHECK_CONTAINS(message, "<test>:1:");
    STRATA_CHECK_CONTAINS(message, "unknown key 'dri'");
    STRATA_CHECK_CONTAINS(message, "did you mean 'dir'?");
  }
  const std::string classes =
      error_of([&] { make_dataset(fmt::format("{{type: idx, dir: {}, classes: 0}}", dir)); });
  STRATA_CHECK_CONTAINS(classes, "classes: must be between 1 and 256");
  const std::string missing_dir = error_of([&] { make_dataset("{type: idx, classes: 3}"); });
  STRATA_CHECK_CONTAINS(missing_dir, "missing required key 'dir'");
}

// The real Fashion-MNIST, when the Debian package dataset-fashion-mnist is installed.
BOOST_AUTO_TEST_CASE(fashion_mnist) {
  const fs::path dir = "/usr/share/datasets/fashion-mnist";
  if (!fs::exists(dir)) {
    BOOST_TEST_MESSAGE("skipped: " << dir << " does not exist");
    return;
  }
  const auto start = std::chrono::steady_clock::now();
  auto dataset = make_dataset(fmt::format("{{type: idx, dir: {}}}", dir.string()));
  const Split train = load_split(*dataset, "train");
  const Split test = load_split(*dataset, "test");
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  BOOST_TEST_MESSAGE("Fashion-MNIST loaded (train + test, gzip) in " << seconds << " s");

  BOOST_TEST(dataset->sample_shape().str() == "[1, 28, 28]");
  BOOST_TEST(train.images.shape().str() == "[60000, 1, 28, 28]");
  BOOST_TEST(test.images.shape().str() == "[10000, 1, 28, 28]");
  BOOST_TEST(train.labels.size() == 60000u);
  BOOST_TEST(test.labels.size() == 10000u);
  BOOST_TEST(train.labels.front() == 9);  // the first training image is an ankle boot
  for (const Split* split : {&train, &test}) {
    const auto values = split->images.span();
    const auto [low, high] = std::minmax_element(values.begin(), values.end());
    BOOST_TEST(*low == 0.0f);
    BOOST_TEST(*high == 1.0f);
    const std::set<int32_t> labels(split->labels.begin(), split->labels.end());
    BOOST_TEST(labels.size() == 10u);
    BOOST_TEST(*labels.begin() == 0);
    BOOST_TEST(*labels.rbegin() == 9);
  }
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------
// CIFAR-10

namespace {

constexpr std::size_t kCifarRecord = 3073;

// `count` random records: label byte below 10, then 3072 random pixel bytes.
Bytes random_cifar(std::mt19937& rng, std::size_t count) {
  Bytes bytes = random_bytes(count * kCifarRecord, rng);
  for (std::size_t i = 0; i < count; ++i)
    bytes[i * kCifarRecord] = static_cast<uint8_t>(random_int(rng, 0, 9));
  return bytes;
}

// Checks a split against concatenated records, indexing [n][c][y][x] the long way.
void check_cifar(const Split& split, const Bytes& records) {
  const std::size_t count = records.size() / kCifarRecord;
  BOOST_REQUIRE_EQUAL(split.images.shape().str(),
                      Shape({static_cast<int64_t>(count), 3, 32, 32}).str());
  BOOST_REQUIRE_EQUAL(split.labels.size(), count);
  std::size_t mismatches = 0;
  for (std::size_t n = 0; n < count; ++n) {
    const uint8_t* record = records.data() + n * kCifarRecord;
    BOOST_TEST(split.labels[n] == int32_t{record[0]});
    for (std::size_t c = 0; c < 3; ++c) {  // R, G, B planes of 1024 bytes
      for (std::size_t y = 0; y < 32; ++y) {
        for (std::size_t x = 0; x < 32; ++x) {
          const float expected = static_cast<float>(record[1 + c * 1024 + y * 32 + x]) / 255.0f;
          const float actual = split.images.data()[((n * 3 + c) * 32 + y) * 32 + x];
          if (actual != expected) ++mismatches;
        }
      }
    }
  }
  BOOST_TEST(mismatches == 0u);
}

Bytes concat(const Bytes& a, const Bytes& b) {
  Bytes result = a;
  result.insert(result.end(), b.begin(), b.end());
  return result;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(cifar10)

BOOST_AUTO_TEST_CASE(explicit_files_round_trip) {
  std::mt19937 rng(201);
  TempDir dir;
  const Bytes batch1 = random_cifar(rng, 7);
  const Bytes batch2 = random_cifar(rng, 7);
  const Bytes test = random_cifar(rng, 5);
  write_raw(dir / "data_batch_1.bin", batch1);
  write_raw(dir / "data_batch_2.bin", batch2);
  write_raw(dir / "test_batch.bin", test);
  auto dataset = make_dataset(
      fmt::format("{{type: cifar10, dir: {}, train_files: [data_batch_1.bin, data_batch_2.bin], "
                  "test_files: [{}]}}",
                  dir.path().string(), (dir / "test_batch.bin").string()));
  BOOST_TEST(dataset->sample_shape().str() == "[3, 32, 32]");
  BOOST_TEST(dataset->num_classes() == 10);
  check_cifar(load_split(*dataset, "train"), concat(batch1, batch2));
  check_cifar(load_split(*dataset, "test"), test);
}

BOOST_AUTO_TEST_CASE(default_names_round_trip) {
  std::mt19937 rng(202);
  TempDir dir;
  Bytes train;
  for (int i = 1; i <= 5; ++i) {
    const Bytes batch = random_cifar(rng, static_cast<std::size_t>(random_int(rng, 1, 4)));
    write_raw(dir / fmt::format("data_batch_{}.bin", i), batch);
    train = concat(train, batch);
  }
  const Bytes test = random_cifar(rng, 3);
  write_raw(dir / "test_batch.bin", test);
  auto dataset = make_dataset(fmt::format("{{type: cifar10, dir: {}}}", dir.path().string()));
  check_cifar(load_split(*dataset, "train"), train);
  check_cifar(load_split(*dataset, "test"), test);
}

BOOST_AUTO_TEST_CASE(bad_files) {
  std::mt19937 rng(203);
  TempDir dir;
  const std::string config = fmt::format("{{type: cifar10, train_files: [{}], test_files: [{}]}}",
                                         (dir / "train.bin").string(), (dir / "test.bin").string());
  write_raw(dir / "test.bin", random_cifar(rng, 2));

  // Missing file: named at construction.
  const std::string missing = error_of([&] { make_dataset(config); });
  STRATA_CHECK_CONTAINS(missing, "dataset file " + (dir / "train.bin").string() + " does not exist");
  STRATA_CHECK_CONTAINS(missing, "train_files[0]");

  // Not a whole number of records.
  const std::size_t extra = static_cast<std::size_t>(random_int(rng, 1, 3000));
  const Bytes odd = concat(random_cifar(rng, 7), random_bytes(extra, rng));
  write_raw(dir / "train.bin", odd);
  const std::string size = error_of([&] { load_split(*make_dataset(config), "train"); });
  STRATA_CHECK_CONTAINS(size, "dataset " + (dir / "train.bin").string());
  STRATA_CHECK_CONTAINS(size, fmt::format("size {} bytes is not a multiple of the 3073-byte", odd.size()));
  STRATA_CHECK_CONTAINS(size, fmt::format("7 whole records and {} bytes left over", extra));

  // Empty file.
  write_raw(dir / "train.bin", {});
  STRATA_CHECK_CONTAINS(error_of([&] { load_split(*make_dataset(config), "train"); }),
                 "train.bin: the file is empty");

  // CIFAR-100 records (two label bytes) are recognised as such.
  write_raw(dir / "train.bin", random_bytes(3 * 3074, rng));
  STRATA_CHECK_CONTAINS(error_of([&] { load_split(*make_dataset(config), "train"); }), "is this CIFAR-100?");

  // A label above 9.
  Bytes bad_label = random_cifar(rng, 6);
  const std::size_t record = static_cast<std::size_t>(random_int(rng, 0, 5));
  bad_label[record * kCifarRecord] = static_cast<uint8_t>(random_int(rng, 10, 255));
  write_raw(dir / "train.bin", bad_label);
  const std::string label = error_of([&] { load_split(*make_dataset(config), "train"); });
  STRATA_CHECK_CONTAINS(
      label, fmt::format("dataset {}: record {} has label {}", (dir / "train.bin").string(), record,
                         bad_label[record * kCifarRecord]));

  // A default-named batch missing from `dir`.
  TempDir partial;
  for (int i = 1; i <= 4; ++i)
    write_raw(partial / fmt::format("data_batch_{}.bin", i), random_cifar(rng, 1));
  write_raw(partial / "test_batch.bin", random_cifar(rng, 1));
  const std::string batch5 = error_of(
      [&] { make_dataset(fmt::format("{{type: cifar10, dir: {}}}", partial.path().string())); });
  STRATA_CHECK_CONTAINS(batch5, "missing file " + (partial / "data_batch_5.bin").string());
}

BOOST_AUTO_TEST_CASE(unknown_key) {
  TempDir dir;
  const std::string message = error_of(
      [&] { make_dataset(fmt::format("{{type: cifar10, dri: {}}}", dir.path().string())); });
  STRATA_CHECK_CONTAINS(message, "unknown key 'dri'");
  STRATA_CHECK_CONTAINS(message, "did you mean 'dir'?");
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------
// Synthetic

namespace {

// Accuracy on `test` of the nearest class mean fitted on `train`: a lower bound on what a small
// CNN can learn from the data.
double nearest_mean_accuracy(const Split& train, const Split& test, int classes) {
  const int64_t sample = train.images.numel() / train.images.dim(0);
  std::vector<double> means(static_cast<std::size_t>(classes * sample), 0.0);
  std::vector<int> counts(static_cast<std::size_t>(classes), 0);
  for (int64_t n = 0; n < train.images.dim(0); ++n) {
    const int label = train.labels[n];
    ++counts[label];
    for (int64_t i = 0; i < sample; ++i)
      means[label * sample + i] += train.images.data()[n * sample + i];
  }
  for (int c = 0; c < classes; ++c) {
    for (int64_t i = 0; i < sample; ++i) means[c * sample + i] /= std::max(1, counts[c]);
  }
  int correct = 0;
  for (int64_t n = 0; n < test.images.dim(0); ++n) {
    int best = 0;
    double best_distance = INFINITY;
    for (int c = 0; c < classes; ++c) {
      double distance = 0;
      for (int64_t i = 0; i < sample; ++i) {
        const double d = test.images.data()[n * sample + i] - means[c * sample + i];
        distance += d * d;
      }
      if (distance < best_distance) {
        best_distance = distance;
        best = c;
      }
    }
    correct += best == test.labels[n];
  }
  return static_cast<double>(correct) / static_cast<double>(test.images.dim(0));
}

bool same_split(const Split& a, const Split& b) {
  const auto left = a.images.span();
  const auto right = b.images.span();
  return a.images.shape() == b.images.shape() && a.labels == b.labels &&
         std::equal(left.begin(), left.end(), right.begin());
}

}  // namespace

BOOST_AUTO_TEST_SUITE(synthetic)

BOOST_AUTO_TEST_CASE(defaults_shapes_and_balance) {
  auto dataset = make_dataset("{type: synthetic}");
  BOOST_TEST(dataset->sample_shape().str() == "[1, 16, 16]");
  BOOST_TEST(dataset->num_classes() == 10);
  const Split train = load_split(*dataset, "train");
  const Split test = load_split(*dataset, "test");
  BOOST_TEST(train.images.shape().str() == "[2000, 1, 16, 16]");
  BOOST_TEST(test.images.shape().str() == "[500, 1, 16, 16]");
  for (const Split* split : {&train, &test}) {
    const auto values = split->images.span();
    const auto [low, high] = std::minmax_element(values.begin(), values.end());
    BOOST_TEST(*low >= 0.0f);
    BOOST_TEST(*high <= 1.0f);
    std::vector<int> counts(10, 0);
    for (int32_t label : split->labels) {
      BOOST_REQUIRE(label >= 0 && label < 10);
      ++counts[label];
    }
    const int expected = static_cast<int>(split->labels.size() / 10);
    for (int count : counts) BOOST_TEST(count == expected);  // sizes divisible by 10: exact
  }
  // Not a fixed order: a shuffled labelling.
  BOOST_TEST(!std::is_sorted(train.labels.begin(), train.labels.end()));

  const double accuracy = nearest_mean_accuracy(train, test, 10);
  BOOST_TEST_MESSAGE("synthetic defaults: nearest-class-mean test accuracy " << accuracy);
  BOOST_TEST(accuracy > 0.8);  // chance is 0.1
}

BOOST_AUTO_TEST_CASE(deterministic_for_a_seed) {
  const std::string config =
      "{type: synthetic, classes: 4, shape: [3, 6, 9], train_size: 103, test_size: 41, seed: 7, "
      "noise: 0.2}";
  auto first = make_dataset(config);
  auto second = make_dataset(config);
  BOOST_TEST(first->sample_shape().str() == "[3, 6, 9]");
  const Split train = load_split(*first, "train");
  BOOST_TEST(train.images.shape().str() == "[103, 3, 6, 9]");
  BOOST_TEST(same_split(train, load_split(*second, "train")));
  BOOST_TEST(same_split(load_split(*first, "test"), load_split(*second, "test")));
  BOOST_TEST(same_split(train, load_split(*first, "train")));  // loading twice gives the same data
  std::vector<int> counts(4, 0);
  for (int32_t label : train.labels) ++counts[label];
  for (int count : counts) BOOST_TEST((count == 25 || count == 26));  // 103 = 4 * 25 + 3

  auto other_seed = make_dataset(
      "{type: synthetic, classes: 4, shape: [3, 6, 9], train_size: 103, test_size: 41, seed: 8, "
      "noise: 0.2}");
  BOOST_TEST(!same_split(train, load_split(*other_seed, "train")));
  // Train and test are different draws.
  const Split test = load_split(*first, "test");
  const auto train_values = train.images.span();
  BOOST_TEST(!std::equal(train_values.begin(), train_values.begin() + 3 * 6 * 9,
                         test.images.span().begin()));
  // The test split does not depend on train_size.
  auto more_train = make_dataset(
      "{type: synthetic, classes: 4, shape: [3, 6, 9], train_size: 500, test_size: 41, seed: 7, "
      "noise: 0.2}");
  BOOST_TEST(same_split(load_split(*first, "test"), load_split(*more_train, "test")));
}

BOOST_AUTO_TEST_CASE(config_errors) {
  STRATA_CHECK_CONTAINS(error_of([] { make_dataset("{type: synthetic, shape: [16, 16]}"); }),
                 "shape: must be [C, H, W]");
  STRATA_CHECK_CONTAINS(error_of([] { make_dataset("{type: synthetic, classes: 1}"); }),
                 "classes: must be at least 2");
  STRATA_CHECK_CONTAINS(error_of([] { make_dataset("{type: synthetic, seeed: 3}"); }),
                 "did you mean 'seed'?");
  STRATA_CHECK_CONTAINS(error_of([] { load_split(*make_dataset("{type: synthetic}"), "validation"); }),
                 "unknown split 'validation'");
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------
// Normalize

namespace {

std::shared_ptr<strata::Transform> make_normalize(const std::string& config) {
  return registries().transforms.create(yaml(config));
}

// Random images whose channels have different offsets and spreads, so that per-channel and
// per-pixel statistics are far from 0 and 1 before the transform.
Tensor shifted_images(const Shape& shape, std::mt19937& rng) {
  Tensor images = strata::test::random_tensor(shape, rng, 0.0f, 1.0f);
  const int64_t plane = shape[2] * shape[3];
  for (int64_t n = 0; n < shape[0]; ++n) {
    for (int64_t c = 0; c < shape[1]; ++c) {
      const float scale = 0.5f + static_cast<float>(c),
                  offset = 2.0f * static_cast<float>(c) - 1.0f;
      float* values = images.data() + (n * shape[1] + c) * plane;
      for (int64_t i = 0; i < plane; ++i)
        values[i] = values[i] * scale + offset + 0.01f * static_cast<float>(i);
    }
  }
  return images;
}

// Mean and population standard deviation, in double, of the values that `group(n, c, i)` maps to
// each statistic index.
struct Moments {
  std::vector<double> mean;
  std::vector<double> std;
};
Moments moments(const Tensor& images, bool per_pixel) {
  const int64_t count = images.dim(0), channels = images.dim(1);
  const int64_t plane = images.dim(2) * images.dim(3);
  const std::size_t stats = static_cast<std::size_t>(per_pixel ? channels * plane : channels);
  std::vector<double> sum(stats, 0.0), squares(stats, 0.0), n_values(stats, 0.0);
  auto index = [&](int64_t c, int64_t i) {
    return static_cast<std::size_t>(per_pixel ? c * plane + i : c);
  };
  for (int64_t n = 0; n < count; ++n)
    for (int64_t c = 0; c < channels; ++c)
      for (int64_t i = 0; i < plane; ++i) {
        sum[index(c, i)] += images.data()[(n * channels + c) * plane + i];
        n_values[index(c, i)] += 1;
      }
  Moments m{std::vector<double>(stats), std::vector<double>(stats)};
  for (std::size_t s = 0; s < stats; ++s) m.mean[s] = sum[s] / n_values[s];
  for (int64_t n = 0; n < count; ++n)
    for (int64_t c = 0; c < channels; ++c)
      for (int64_t i = 0; i < plane; ++i) {
        const double d = images.data()[(n * channels + c) * plane + i] - m.mean[index(c, i)];
        squares[index(c, i)] += d * d;
      }
  for (std::size_t s = 0; s < stats; ++s) m.std[s] = std::sqrt(squares[s] / n_values[s]);
  return m;
}

// The state tensor `name` (a handle aliasing the transform's statistics).
Tensor state_of(strata::Transform& transform, const std::string& name) {
  for (const auto& entry : transform.state()) {
    if (entry.name == name) return entry.tensor;
  }
  BOOST_FAIL("no state tensor named " << name);
  return Tensor();
}

// Fits on train, applies to train and test; checks the train moments are 0 / 1 and the test
// values equal the hand computation from the train statistics.
void check_normalize(bool per_pixel, bool divide) {
  std::mt19937 rng(per_pixel ? 301 : 302);
  const Shape sample{3, 5, 7};
  const Tensor train = shifted_images(sample.with_batch(120), rng);
  const Tensor test = shifted_images(sample.with_batch(17), rng);
  auto transform =
      make_normalize(fmt::format("{{type: normalize, per: {}, scale: {}}}",
                                 per_pixel ? "pixel" : "channel", divide ? "std" : "none"));
  BOOST_TEST(transform->type() == "normalize");
  transform->setup(sample);
  strata::test::fit_on(*transform, train);

  const Moments expected = moments(train, per_pixel);
  const Tensor mean = state_of(*transform, "mean");
  const Tensor std = state_of(*transform, "std");
  BOOST_TEST(mean.shape().str() == (per_pixel ? sample.str() : "[3]"));
  BOOST_TEST(std.shape().str() == mean.shape().str());
  // Both sides are double sums rounded to float; they may differ in summation order only.
  for (std::size_t s = 0; s < expected.mean.size(); ++s) {
    BOOST_TEST(std::abs(mean.data()[s] - expected.mean[s]) <= 1e-6 * std::abs(expected.mean[s]));
    if (divide) {
      BOOST_TEST(std::abs(std.data()[s] - expected.std[s]) <= 1e-6 * expected.std[s]);
    } else {
      BOOST_TEST(std.data()[s] == 1.0f);
    }
  }

  // Train: centred, and unit spread when dividing (float32 values: tolerance 1e-5 on the mean,
  // 1e-5 relative on the std), or unchanged spread with scale: none.
  Tensor normalized_train = train.clone();
  strata::test::apply_batch(*transform, normalized_train);
  const Moments after = moments(normalized_train, per_pixel);
  for (std::size_t s = 0; s < after.mean.size(); ++s) {
    BOOST_TEST(std::abs(after.mean[s]) < 1e-5);
    const double target = divide ? 1.0 : expected.std[s];
    BOOST_TEST(std::abs(after.std[s] - target) < 1e-5 * target);
  }

  // Test: uses the train statistics, exactly (x - mean) / std in float32.
  Tensor normalized_test = test.clone();
  strata::test::apply_batch(*transform, normalized_test);
  const int64_t plane = 5 * 7;
  float worst = 0;
  for (int64_t n = 0; n < 17; ++n)
    for (int64_t c = 0; c < 3; ++c)
      for (int64_t i = 0; i < plane; ++i) {
        const int64_t at = (n * 3 + c) * plane + i;
        const std::size_t s = static_cast<std::size_t>(per_pixel ? c * plane + i : c);
        const double hand = (test.data()[at] - expected.mean[s]) / (divide ? expected.std[s] : 1.0);
        worst = std::max(worst, static_cast<float>(std::abs(normalized_test.data()[at] - hand)));
      }
  BOOST_TEST(worst < 1e-5f);  // float32 rounding of values of magnitude < 10
}

}  // namespace

BOOST_AUTO_TEST_SUITE(normalize)

BOOST_AUTO_TEST_CASE(per_channel) { check_normalize(false, true); }
BOOST_AUTO_TEST_CASE(per_pixel) { check_normalize(true, true); }
BOOST_AUTO_TEST_CASE(per_channel_mean_only) { check_normalize(false, false); }
BOOST_AUTO_TEST_CASE(per_pixel_mean_only) { check_normalize(true, false); }

BOOST_AUTO_TEST_CASE(state_round_trip) {
  // A second transform loaded through state() behaves exactly as the fitted one.
  std::mt19937 rng(303);
  const Shape sample{2, 4, 6};
  const Tensor train = shifted_images(sample.with_batch(30), rng);
  const Tensor test = shifted_images(sample.with_batch(9), rng);
  auto fitted = make_normalize("{type: normalize, per: pixel}");
  fitted->setup(sample);
  strata::test::fit_on(*fitted, train);
  auto loaded = make_normalize("{type: normalize, per: pixel}");
  loaded->setup(sample);
  auto target = loaded->state();
  for (const auto& entry : fitted->state()) {
    for (auto& slot : target) {
      if (slot.name == entry.name) slot.tensor.copy_from(entry.tensor);
    }
  }
  Tensor a = test.clone(), b = test.clone();
  strata::test::apply_batch(*fitted, a);
  strata::test::apply_batch(*loaded, b);
  BOOST_TEST(strata::test::max_abs_diff(a, b) == 0.0f);
  BOOST_TEST(strata::test::max_abs_diff(a, test) > 0.1f);
}

BOOST_AUTO_TEST_CASE(constant_pixel_is_only_centred) {
  std::mt19937 rng(304);
  const Shape sample{1, 3, 4};
  Tensor train = strata::test::random_tensor(sample.with_batch(25), rng, 0.0f, 1.0f);
  const float constant = std::uniform_real_distribution<float>(0.2f, 0.8f)(rng);
  for (int64_t n = 0; n < 25; ++n) train.data()[n * 12 + 5] = constant;
  auto transform = make_normalize("{type: normalize, per: pixel}");
  transform->setup(sample);
  strata::test::fit_on(*transform, train);
  BOOST_TEST(state_of(*transform, "std").data()[5] == 1.0f);
  BOOST_TEST(state_of(*transform, "mean").data()[5] == constant);
  Tensor test = strata::test::random_tensor(sample.with_batch(3), rng, 0.0f, 1.0f);
  const float before = test.data()[5];
  strata::test::apply_batch(*transform, test);
  BOOST_TEST(test.data()[5] == before - constant);
}

BOOST_AUTO_TEST_CASE(errors) {
  std::mt19937 rng(305);
  auto transform = make_normalize("{type: normalize}");
  Tensor images = strata::test::random_tensor(Shape{4, 3, 5, 7}, rng);
  STRATA_CHECK_CONTAINS(error_of([&] { strata::test::fit_on(*transform, images); }), "fit() called before setup()");
  transform->setup(Shape{3, 5, 7});
  strata::test::fit_on(*transform, images);
  // Per channel, any height and width normalizes; other channel counts do not.
  Tensor other = strata::test::random_tensor(Shape{4, 3, 7, 5}, rng);
  strata::test::apply_batch(*transform, other);
  Tensor two = strata::test::random_tensor(Shape{4, 2, 5, 7}, rng);
  const std::string message = error_of([&] { strata::test::apply_batch(*transform, two); });
  STRATA_CHECK_CONTAINS(message, "apply() got an image of shape [2, 5, 7]");
  STRATA_CHECK_CONTAINS(message, "images of shape [3, 5, 7]");
  STRATA_CHECK_CONTAINS(error_of([&] { strata::test::fit_on(*transform, two); }), "fit() got an image of shape");
  // Per pixel, the statistics have the image's shape.
  auto pixel = make_normalize("{type: normalize, per: pixel}");
  pixel->setup(Shape{3, 5, 7});
  STRATA_CHECK_CONTAINS(error_of([&] { strata::test::apply_batch(*pixel, other); }),
                        "apply() got an image of shape [3, 7, 5]");

  STRATA_CHECK_CONTAINS(error_of([] { make_normalize("{type: normalize, per: pixle}"); }),
                 "did you mean 'pixel'?");
  STRATA_CHECK_CONTAINS(error_of([] { make_normalize("{type: normalize, scale: unit}"); }),
                 "unknown value 'unit'");
  STRATA_CHECK_CONTAINS(error_of([] { make_normalize("{type: normalize, epsilon: 0}"); }),
                 "epsilon: must be positive");
  STRATA_CHECK_CONTAINS(error_of([] { make_normalize("{type: normalize, mean: [0.5]}"); }),
                 "`mean` is given without `std`");
  STRATA_CHECK_CONTAINS(error_of([] { make_normalize("{type: normalize, maen: 0.5}"); }),
                 "unknown key 'maen'");
}

BOOST_AUTO_TEST_SUITE_END()

// Issue 20, item 9: a dataset file is read only as far as its header (or its size) declares, and a
// declared size beyond memory is refused before anything is allocated.
BOOST_AUTO_TEST_SUITE(bounded_reads)

// A gzip "bomb": a header declaring 3 images, their pixels, then 256 MB of zeros in 256 gzip
// members (about 256 KB on disk). Refused as trailing data after inflating at most 16 MB more.
BOOST_AUTO_TEST_CASE(idx_gzip_bomb_is_not_inflated) {
  std::mt19937 rng(301);
  IdxFolder folder(rng, ".gz");
  const fs::path file = folder.path("train-images-idx3-ubyte.gz");
  IdxSplit small = random_idx(rng, folder.train.rows, folder.train.columns, folder.classes);
  small.count = 3;
  small.pixels.resize(std::size_t{3} * small.rows * small.columns);
  write_gz(file, small.image_file());
  const fs::path zeros = folder.path("zeros.gz");
  write_gz(zeros, Bytes(std::size_t{1} << 20, 0));
  const Bytes member = read_raw(zeros);
  {
    std::ofstream out(file, std::ios::binary | std::ios::app);
    for (int i = 0; i < 256; ++i) {
      out.write(reinterpret_cast<const char*>(member.data()),
                static_cast<std::streamsize>(member.size()));
    }
  }
  BOOST_TEST(fs::file_size(file) < (std::size_t{2} << 20));
  auto dataset = make_dataset(folder.config());
  const std::string message = error_of([&] { load_split(*dataset, "train"); });
  STRATA_CHECK_CONTAINS(message,
                        fmt::format("dataset {}: trailing data: header says 3 images of "
                                    "{}x{} (16 + {} bytes), file holds more than {} "
                                    "bytes after decompression (more than 16777216 "
                                    "extra; the rest was not read)",
                                    file.string(), small.rows, small.columns, small.pixels.size(),
                                    16 + small.pixels.size() + 16777216));
}

// A header that declares more than memory holds: refused before the payload is read; and a short
// gzip stream declaring a million images is truncated, after reading only what it holds.
BOOST_AUTO_TEST_CASE(idx_declared_sizes_are_checked_first) {
  std::mt19937 rng(302);
  for (const std::string suffix : {"", ".gz"}) {
    IdxFolder folder(rng, suffix);
    const fs::path file = folder.path("t10k-images-idx3-ubyte" + suffix);
    IdxSplit huge = folder.test;
    huge.count = 4000000000u;
    write_file(file, huge.image_file());
    auto dataset = make_dataset(folder.config());
    // A raw file's size is known without reading it: it is truncated. A gzip file's is not.
    STRATA_CHECK_CONTAINS(
        error_of([&] { load_split(*dataset, "test"); }),
        fmt::format("dataset {}: {}header says 4000000000 images of {}x{} (16 + "
                    "{} bytes), {}",
                    file.string(), suffix.empty() ? "truncated: " : "", huge.rows, huge.columns,
                    uint64_t{4000000000u} * huge.rows * huge.columns,
                    suffix.empty() ? "file holds" : "more than this machine's memory"));
    huge.count = 1000000;
    write_file(file, huge.image_file());
    STRATA_CHECK_CONTAINS(
        error_of([&] { load_split(*dataset, "test"); }),
        fmt::format("truncated: header says 1000000 images of {}x{}", huge.rows, huge.columns));
  }
}

// CIFAR-10 is read in blocks of 1024 records: a file of more records round-trips exactly, and a
// (sparse) file larger than memory is refused before anything is allocated.
BOOST_AUTO_TEST_CASE(cifar_blocks_and_size_bound) {
  std::mt19937 rng(303);
  TempDir dir;
  const Bytes train = random_cifar(rng, 1500);
  write_raw(dir / "train.bin", train);
  write_raw(dir / "test.bin", random_cifar(rng, 2));
  const std::string config = fmt::format("{{type: cifar10, train_files: [{}], test_files: [{}]}}",
                                         (dir / "train.bin").string(), (dir / "test.bin").string());
  check_cifar(load_split(*make_dataset(config), "train"), train);

  write_raw(dir / "train.bin", {});
  fs::resize_file(dir / "train.bin", std::uintmax_t{kCifarRecord} * 100000000u);  // 307 GB, sparse
  STRATA_CHECK_CONTAINS(error_of([&] { load_split(*make_dataset(config), "train"); }),
                        fmt::format("dataset {}: 100000000 records of 32x32x3 need 1.2 TB as "
                                    "float32, more than this machine's memory",
                                    (dir / "train.bin").string()));
}

BOOST_AUTO_TEST_SUITE_END()
