// datasets/idx: the `idx` dataset type, MNIST and Fashion-MNIST in Yann LeCun's IDX format.
//
// WHAT THIS OBJECT REPRESENTS
//   Four IDX files: train and test images (magic 0x00000803: count, rows, columns, then one
//   unsigned byte per pixel, row-major) and train and test labels (magic 0x00000801: count, then
//   one byte per label). All integers in the headers are big-endian 32-bit. Each file may be raw
//   or gzip-compressed.
//
// CONFIGURATION
//   dir: folder holding train-images-idx3-ubyte, train-labels-idx1-ubyte,
//        t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte, each raw or with ".gz" (the raw file
//        wins when both exist). Required unless all four paths below are given.
//   train_images, train_labels, test_images, test_labels: optional explicit paths that replace
//        the defaults; relative ones are relative to `dir` when it is given. Used exactly as
//        written (no ".gz" fallback).
//   classes: number of classes, default 10; every label must be below it.
//   class_names: optional, one name per class: a list, or `fashion-mnist` (T-shirt/top, Trouser,
//        Pullover, Dress, Coat, Sandal, Shirt, Sneaker, Bag, Ankle boot) or `digits` ("0" to "9").
//        Used by `strata eval` for the confusion matrix.
//
// ENSURES
//   - Construction resolves the four files (a missing one is an error at the config key that
//     named it, listing every candidate path) and reads the train images' header, so
//     sample_shape() is [1, rows, columns] without loading any pixels.
//   - load("train") / load("test") return images [N, 1, rows, columns] as float32 pixel/255 in
//     [0, 1] and N labels in [0, classes). Any other split name is an error.
//   - Every file error names the file. Sizes in messages are decompressed sizes. Errors: missing
//     file, bad magic number, zero dimensions, truncated file or trailing bytes (with the counts
//     from the header, the expected and the actual byte sizes), corrupt gzip stream, image and
//     label counts that differ, a label >= classes, test images whose size differs from train's.
//   - A file is read only as far as its header declares (plus at most 16 MB more, to report
//     trailing data), and a header whose payload would not fit in memory is refused before it is
//     read: a small gzip file that inflates to gigabytes costs no more than its header announces.
#include <zlib.h>

#include <array>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "strata/config.hpp"
#include "strata/dataset.hpp"
#include "strata/error.hpp"
#include "strata/file_check.hpp"
#include "strata/plugin.hpp"
#include "strata/registry.hpp"
#include "strata/tensor.hpp"

namespace {

namespace fs = std::filesystem;
using strata::Config;
using strata::fail;
using strata::regular_file_problem;
using strata::require_regular_file;

constexpr uint32_t kImagesMagic = 0x00000803;  // unsigned bytes, 3 dimensions
constexpr uint32_t kLabelsMagic = 0x00000801;  // unsigned bytes, 1 dimension
constexpr std::size_t kImagesHeaderBytes = 16;
constexpr std::size_t kLabelsHeaderBytes = 8;

uint32_t read_big_endian(const uint8_t* bytes) {
  return (uint32_t{bytes[0]} << 24) | (uint32_t{bytes[1]} << 16) | (uint32_t{bytes[2]} << 8) |
         uint32_t{bytes[3]};
}

// An open gzip (or raw) file, closed on scope exit.
class GzFile {
 public:
  explicit GzFile(const fs::path& path) : path_(path) {
    require_regular_file(path, "dataset");
    file_ = gzopen(path.c_str(), "rb");
    if (file_ == nullptr) fail("dataset {}: cannot open: {}", path.string(), std::strerror(errno));
    gzbuffer(file_, 1 << 18);
    if (path.extension() == ".gz" && gzdirect(file_) != 0) {
      gzclose(file_);
      fail("dataset {}: the name ends in .gz but the file is not gzip-compressed", path.string());
    }
  }
  GzFile(const GzFile&) = delete;
  GzFile& operator=(const GzFile&) = delete;
  ~GzFile() { gzclose(file_); }

  bool compressed() const { return gzdirect(file_) == 0; }

  // Reads up to `count` bytes; returns how many were read (fewer only at the end of the data).
  std::size_t read(uint8_t* out, std::size_t count) {
    std::size_t total = 0;
    while (total < count) {
      const unsigned chunk = static_cast<unsigned>(std::min<std::size_t>(count - total, 1 << 24));
      const int got = gzread(file_, out + total, chunk);
      if (got < 0) corrupt();
      if (got == 0) break;
      total += static_cast<std::size_t>(got);
    }
    // A gzip stream that ends early is reported through gzerror, not by gzread's return value.
    int status = Z_OK;
    gzerror(file_, &status);
    if (status != Z_OK && status != Z_STREAM_END) corrupt();
    return total;
  }

 private:
  [[noreturn]] void corrupt() {
    int status = Z_OK;
    std::string message = gzerror(file_, &status);
    if (status == Z_ERRNO) {
      fail("dataset {}: read error: {}", path_.string(), std::strerror(errno));
    }
    // zlib prefixes its message with the path, which ours already names.
    if (const std::string prefix = path_.string() + ": "; message.starts_with(prefix)) {
      message.erase(0, prefix.size());
    }
    fail("dataset {}: corrupt gzip stream: {}", path_.string(), message);
  }

  fs::path path_;
  gzFile file_ = nullptr;
};

// A file's header and exactly the payload the header declares, decompressed when it is gzip.
struct FileBytes {
  std::vector<uint8_t> bytes;
  bool compressed = false;

  // "1234 bytes" or "1234 bytes after decompression".
  std::string size_text() const { return size_text(bytes.size()); }
  std::string size_text(uint64_t size) const {
    return fmt::format("{} bytes{}", size, compressed ? " after decompression" : "");
  }
};

// What a header announces: `payload` bytes after it (`overflows` when that exceeds 2^64), and the
// header's description for messages ("100 images of 28x28").
struct Declared {
  uint64_t payload = 0;
  bool overflows = false;
  std::string description;
};

// How far past the declared end a gzip stream is inflated to report how much trailing data it
// holds; beyond this the message says "more than".
constexpr uint64_t kCountedTrailingBytes = uint64_t{16} << 20;

// Reads the header (`header_bytes`), lets `declare` check it and say how long the payload is, then
// reads exactly that payload and never more: a 4 MB gzip file that inflates to 4 GB behind a header
// declaring 100 images costs 100 images of memory, and a short file claiming many images costs only
// what it holds. `memory_per_byte` is what one payload byte costs once loaded (the byte plus its
// float), checked against the machine's memory before the payload is read.
template <class Declare>
FileBytes read_declared(const fs::path& path, std::size_t header_bytes, uint64_t memory_per_byte,
                        Declare declare) {
  GzFile file(path);
  FileBytes result;
  result.compressed = file.compressed();
  result.bytes.resize(header_bytes);
  result.bytes.resize(file.read(result.bytes.data(), header_bytes));
  const Declared declared = declare(result.bytes.data(), result.bytes.size(), result.size_text());
  const std::string expected = declared.overflows
                                   ? fmt::format("{} + more than 2^64 bytes", header_bytes)
                                   : fmt::format("{} + {} bytes", header_bytes, declared.payload);
  const uint64_t target = header_bytes + declared.payload;
  if (!result.compressed) {
    // Its size is known without reading it.
    std::error_code ec;
    const uint64_t size = fs::file_size(path, ec);
    if (ec) fail("dataset {}: cannot read the file size: {}", path.string(), ec.message());
    if (declared.overflows || size < target) {
      fail("dataset {}: truncated: header says {} ({}), file holds {}", path.string(),
           declared.description, expected, result.size_text(size));
    }
    if (size > target) {
      fail("dataset {}: trailing data: header says {} ({}), file holds {} ({} extra)",
           path.string(), declared.description, expected, result.size_text(size), size - target);
    }
  }
  const uint64_t memory = strata::physical_memory_bytes();
  if (declared.overflows || declared.payload > memory / memory_per_byte) {
    fail("dataset {}: header says {} ({}), more than this machine's memory ({}) can load",
         path.string(), declared.description, expected,
         strata::bytes_text(static_cast<double>(memory)));
  }
  // Grow the buffer as the data arrives.
  std::size_t have = result.bytes.size();
  while (have < target) {
    const std::size_t next = static_cast<std::size_t>(
        std::min<uint64_t>(target, std::max<uint64_t>(uint64_t{have} * 2, uint64_t{1} << 20)));
    result.bytes.resize(next);
    const std::size_t got = file.read(result.bytes.data() + have, next - have);
    have += got;
    if (have < next) break;  // the end of the data
  }
  result.bytes.resize(have);
  if (have < target) {
    fail("dataset {}: truncated: header says {} ({}), file holds {}", path.string(),
         declared.description, expected, result.size_text());
  }
  // Trailing data: counted up to a bound, never kept.
  uint64_t extra = 0;
  std::vector<uint8_t> scratch(std::size_t{1} << 16);
  while (extra <= kCountedTrailingBytes) {
    const std::size_t got = file.read(scratch.data(), scratch.size());
    if (got == 0) break;
    extra += got;
  }
  if (extra > kCountedTrailingBytes) {
    fail(
        "dataset {}: trailing data: header says {} ({}), file holds more than {} (more than {} "
        "extra; the rest was not read)",
        path.string(), declared.description, expected,
        result.size_text(target + kCountedTrailingBytes), kCountedTrailingBytes);
  }
  if (extra > 0) {
    fail("dataset {}: trailing data: header says {} ({}), file holds {} ({} extra)", path.string(),
         declared.description, expected, result.size_text(target + extra), extra);
  }
  return result;
}

std::string magic_hint(uint32_t magic) {
  if (magic == kImagesMagic) return " (this is an IDX image file)";
  if (magic == kLabelsMagic) return " (this is an IDX label file)";
  return "";
}

void check_magic(const fs::path& path, const uint8_t* header, uint32_t expected, const char* what) {
  const uint32_t magic = read_big_endian(header);
  if (magic != expected) {
    fail("dataset {}: bad magic number 0x{:08x}, expected 0x{:08x} for {}{}", path.string(), magic,
         expected, what, magic_hint(magic));
  }
}

struct ImagesHeader {
  uint32_t count = 0;
  uint32_t rows = 0;
  uint32_t columns = 0;
};

// Checks the magic number and the dimensions of an image file's first 16 bytes.
ImagesHeader parse_images_header(const fs::path& path, const uint8_t* header, std::size_t available,
                                 const std::string& size_text) {
  if (available < kImagesHeaderBytes) {
    fail("dataset {}: truncated: an IDX image file starts with a {}-byte header, file holds {}",
         path.string(), kImagesHeaderBytes, size_text);
  }
  check_magic(path, header, kImagesMagic, "images (unsigned bytes, 3 dimensions)");
  ImagesHeader result{read_big_endian(header + 4), read_big_endian(header + 8),
                      read_big_endian(header + 12)};
  if (result.count == 0 || result.rows == 0 || result.columns == 0) {
    fail("dataset {}: header says {} images of {}x{}; every dimension must be positive",
         path.string(), result.count, result.rows, result.columns);
  }
  return result;
}

struct SplitFiles {
  fs::path images;
  fs::path labels;
};

class IdxDataset final : public strata::InMemoryDataset {
 public:
  explicit IdxDataset(const Config& config) {
    classes_ = config.get<int>("classes", 10);
    if (classes_ < 1 || classes_ > 256) {
      config.fail_key("classes", fmt::format("must be between 1 and 256 (labels are single bytes), "
                                             "got {}",
                                             classes_));
    }
    if (auto node = config.find("class_names")) {
      if (node->is_sequence()) {
        class_names_ = node->as<std::vector<std::string>>();
      } else {
        const std::string preset = node->as<std::string>();
        if (preset == "fashion-mnist") {
          class_names_ = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                          "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};
        } else if (preset == "digits") {
          class_names_ = {"0", "1", "2", "3", "4", "5", "6", "7", "8", "9"};
        } else {
          node->fail(fmt::format("expected a list of names, 'fashion-mnist' or 'digits', found '{}'", preset));
        }
      }
      if (static_cast<int>(class_names_.size()) != classes_) {
        node->fail(fmt::format("gives {} names for {} classes", class_names_.size(), classes_));
      }
    }
    std::optional<fs::path> dir;
    if (auto node = config.find("dir")) dir = fs::path(node->as<std::string>());

    // Read every key before reporting a missing `dir`, so that a typo such as `dri:` is reported
    // as the unknown key it is (with a suggestion) rather than as a missing `dir`.
    struct FileKey {
      const char* key;
      const char* default_name;
      std::optional<Config> node;
    };
    std::array<FileKey, 4> keys{{{"train_images", "train-images-idx3-ubyte", {}},
                                 {"train_labels", "train-labels-idx1-ubyte", {}},
                                 {"test_images", "t10k-images-idx3-ubyte", {}},
                                 {"test_labels", "t10k-labels-idx1-ubyte", {}}}};
    for (auto& entry : keys) entry.node = config.find(entry.key);
    if (!dir) {
      for (const auto& entry : keys) {
        if (!entry.node) {
          config.check_unused();
          config.fail(fmt::format(
              "missing required key 'dir' (the folder holding {}[.gz] and the other IDX files); "
              "without it, give all of train_images, train_labels, test_images and test_labels",
              entry.default_name));
        }
      }
    }

    std::array<fs::path, 4> paths;
    for (std::size_t i = 0; i < keys.size(); ++i) {
      const FileKey& entry = keys[i];
      if (entry.node) {
        fs::path path = entry.node->as<std::string>();
        if (path.is_relative() && dir) path = *dir / path;
        if (const std::string problem = regular_file_problem(path); !problem.empty()) {
          entry.node->fail(fmt::format("dataset file {} {}", path.string(), problem));
        }
        paths[i] = path;
      } else {
        const fs::path raw = *dir / entry.default_name;
        const fs::path gz = *dir / (std::string(entry.default_name) + ".gz");
        const std::string raw_problem = regular_file_problem(raw);
        const std::string gz_problem = regular_file_problem(gz);
        if (raw_problem.empty()) {
          paths[i] = raw;
        } else if (gz_problem.empty()) {
          paths[i] = gz;
        } else if (raw_problem != "does not exist" || gz_problem != "does not exist") {
          // Something is there but cannot be read: say what it is, not "does not exist".
          const bool raw_there = raw_problem != "does not exist";
          config.fail_key("dir", fmt::format("dataset file {} {}", (raw_there ? raw : gz).string(),
                                             raw_there ? raw_problem : gz_problem));
        } else {
          config.fail_key("dir", fmt::format("dataset idx: neither {} nor {} exists", raw.string(),
                                             gz.string()));
        }
      }
    }
    train_ = {paths[0], paths[1]};
    test_ = {paths[2], paths[3]};

    // Only the header of the train images: enough for sample_shape(), and a bad file fails now.
    GzFile file(train_.images);
    std::array<uint8_t, kImagesHeaderBytes> header{};
    const std::size_t got = file.read(header.data(), header.size());
    const ImagesHeader parsed = parse_images_header(
        train_.images, header.data(), got,
        fmt::format("{} bytes{}", got, file.compressed() ? " after decompression" : ""));
    rows_ = parsed.rows;
    columns_ = parsed.columns;
  }

  strata::Shape sample_shape() const override {
    return strata::Shape{1, static_cast<int64_t>(rows_), static_cast<int64_t>(columns_)};
  }
  int num_classes() const override { return classes_; }
  std::vector<std::string> class_names() const override { return class_names_; }

  strata::Split load(std::string_view split) override {
    if (split == "train") return load_files(train_, "train");
    if (split == "test") return load_files(test_, "test");
    fail("dataset idx: unknown split '{}'; the splits are 'train' and 'test'", split);
  }

 private:
  strata::Split load_files(const SplitFiles& files, std::string_view split) const {
    strata::Split result;
    ImagesHeader header;
    uint64_t pixels = 0;
    // Each pixel costs its byte and its float.
    const FileBytes images = read_declared(
        files.images, kImagesHeaderBytes, 1 + sizeof(float),
        [&](const uint8_t* bytes, std::size_t got, const std::string& size_text) {
          header = parse_images_header(files.images, bytes, got, size_text);
          Declared declared;
          declared.overflows = __builtin_mul_overflow(
              uint64_t{header.count}, uint64_t{header.rows} * header.columns, &pixels);
          declared.payload = pixels;
          declared.description =
              fmt::format("{} images of {}x{}", header.count, header.rows, header.columns);
          return declared;
        });
    if (header.rows != rows_ || header.columns != columns_) {
      fail("dataset {}: {} images are {}x{} but the train images ({}) are {}x{}",
           files.images.string(), split, header.rows, header.columns, train_.images.string(), rows_,
           columns_);
    }

    uint32_t label_count = 0;
    const FileBytes labels = read_declared(
        files.labels, kLabelsHeaderBytes, 1 + sizeof(int),
        [&](const uint8_t* bytes, std::size_t got, const std::string& size_text) {
          if (got < kLabelsHeaderBytes) {
            fail(
                "dataset {}: truncated: an IDX label file starts with an {}-byte header, file "
                "holds {}",
                files.labels.string(), kLabelsHeaderBytes, size_text);
          }
          check_magic(files.labels, bytes, kLabelsMagic, "labels (unsigned bytes, 1 dimension)");
          label_count = read_big_endian(bytes + 4);
          return Declared{label_count, false, fmt::format("{} labels", label_count)};
        });
    if (label_count != header.count) {
      fail("dataset {}: holds {} labels but the {} images ({}) number {}", files.labels.string(),
           label_count, split, files.images.string(), header.count);
    }

    const uint8_t* label_bytes = labels.bytes.data() + kLabelsHeaderBytes;
    result.labels.resize(label_count);
    for (uint32_t i = 0; i < label_count; ++i) {
      if (label_bytes[i] >= classes_) {
        fail("dataset {}: label {} at index {} is out of range for classes: {}",
             files.labels.string(), label_bytes[i], i, classes_);
      }
      result.labels[i] = label_bytes[i];
    }

    std::array<float, 256> scale{};
    for (int value = 0; value < 256; ++value) scale[value] = static_cast<float>(value) / 255.0f;
    result.images = strata::Tensor(strata::Shape{header.count, 1, header.rows, header.columns});
    const uint8_t* pixel_bytes = images.bytes.data() + kImagesHeaderBytes;
    float* out = result.images.data();
    for (uint64_t i = 0; i < pixels; ++i) out[i] = scale[pixel_bytes[i]];
    return result;
  }

  SplitFiles train_;
  SplitFiles test_;
  int classes_ = 10;
  std::vector<std::string> class_names_;
  uint32_t rows_ = 0;
  uint32_t columns_ = 0;
};

void register_all(strata::Registries& registries) { registries.datasets.add<IdxDataset>("idx"); }

}  // namespace

STRATA_PLUGIN("idx", "1.0", register_all)
