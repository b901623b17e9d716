// datasets/cifar10: the `cifar10` dataset type, CIFAR-10 in its official binary format.
//
// WHAT THIS OBJECT REPRESENTS
//   Files of 3073-byte records: one label byte (0 to 9), then 3072 pixel bytes: 1024 red, 1024
//   green, 1024 blue, each plane a row-major 32x32 image. This is the "CIFAR-10 binary version"
//   (cifar-10-binary.tar.gz, which unpacks to cifar-10-batches-bin/).
//
// CONFIGURATION
//   dir: folder holding data_batch_1.bin ... data_batch_5.bin (train) and test_batch.bin (test).
//        Required unless both lists below are given.
//   train_files, test_files: optional lists of paths replacing the defaults; relative ones are
//        relative to `dir` when it is given. Records are concatenated in list order.
//
// ENSURES
//   - Construction checks that every file exists (an error at the config key that named it).
//   - sample_shape() is [3, 32, 32]; num_classes() is 10.
//   - load("train") / load("test") return images [N, 3, 32, 32] as float32 byte/255 in [0, 1], in
//     the file's channel order (R, G, B), and N labels in [0, 10). Any other split is an error.
//   - Files are read in blocks of 1024 records, only as far as their size said when counted; a
//     split larger than the machine's memory is refused before anything is allocated.
//   - Errors name the file: missing file, a size that is not a positive multiple of the record
//     size (with the size, the record size and the remainder), a label above 9.
#include <array>
#include <cstdint>
#include <filesystem>
#include <fstream>
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

constexpr int kClasses = 10;
constexpr int64_t kChannels = 3;
constexpr int64_t kSide = 32;
constexpr std::size_t kPixelBytes = kChannels * kSide * kSide;  // 3072
constexpr std::size_t kRecordBytes = 1 + kPixelBytes;           // 3073

// Number of records in `path`, after checking that its size is a whole number of records.
std::size_t record_count(const fs::path& path) {
  std::error_code ec;
  require_regular_file(path, "dataset");
  const std::uintmax_t size = fs::file_size(path, ec);
  if (ec) fail("dataset {}: cannot read the file size: {}", path.string(), ec.message());
  if (size == 0) {
    fail("dataset {}: the file is empty; a CIFAR-10 file holds {}-byte records", path.string(),
         kRecordBytes);
  }
  if (size % kRecordBytes != 0) {
    // CIFAR-100 records carry two label bytes: say so, since that is the likely mix-up.
    const std::string hint =
        size % (kRecordBytes + 1) == 0 ? " (a multiple of 3074: is this CIFAR-100?)" : "";
    fail(
        "dataset {}: size {} bytes is not a multiple of the {}-byte CIFAR-10 record "
        "(1 label byte + {} pixel bytes): {} whole records and {} bytes left over{}",
        path.string(), size, kRecordBytes, kPixelBytes, size / kRecordBytes, size % kRecordBytes,
        hint);
  }
  return static_cast<std::size_t>(size / kRecordBytes);
}

// A list of files from `key`, or the default names inside `dir`.
struct FileList {
  const char* key;
  std::vector<std::string> default_names;
  std::optional<Config> node;
};

class Cifar10Dataset final : public strata::InMemoryDataset {
 public:
  explicit Cifar10Dataset(const Config& config) {
    std::optional<fs::path> dir;
    if (auto node = config.find("dir")) dir = fs::path(node->as<std::string>());
    std::array<FileList, 2> lists{{
        {"train_files",
         {"data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin",
          "data_batch_5.bin"},
         {}},
        {"test_files", {"test_batch.bin"}, {}},
    }};
    for (auto& list : lists) list.node = config.find(list.key);
    if (!dir && (!lists[0].node || !lists[1].node)) {
      config.check_unused();  // a typo such as `dri:` is reported as such, with a suggestion
      config.fail(
          "missing required key 'dir' (the folder holding data_batch_1.bin ... data_batch_5.bin "
          "and test_batch.bin); without it, give both train_files and test_files");
    }

    std::array<std::vector<fs::path>, 2> paths;
    for (std::size_t i = 0; i < lists.size(); ++i) {
      const FileList& list = lists[i];
      if (list.node) {
        const std::vector<Config> items = list.node->items();
        if (items.empty()) list.node->fail("the list of files is empty");
        for (const Config& item : items) {
          fs::path path = item.as<std::string>();
          if (path.is_relative() && dir) path = *dir / path;
          if (const std::string problem = regular_file_problem(path); !problem.empty()) {
            item.fail(fmt::format("dataset file {} {}", path.string(), problem));
          }
          paths[i].push_back(path);
        }
      } else {
        for (const std::string& name : list.default_names) {
          const fs::path path = *dir / name;
          if (const std::string problem = regular_file_problem(path);
              !problem.empty() && problem != "does not exist") {
            config.fail_key("dir",
                            fmt::format("dataset cifar10: file {} {}", path.string(), problem));
          } else if (!problem.empty()) {
            config.fail_key("dir", fmt::format("dataset cifar10: missing file {} (the binary "
                                               "version has data_batch_1.bin ... "
                                               "data_batch_5.bin and test_batch.bin)",
                                               path.string()));
          }
          paths[i].push_back(path);
        }
      }
    }
    train_ = std::move(paths[0]);
    test_ = std::move(paths[1]);
  }

  strata::Shape sample_shape() const override { return strata::Shape{kChannels, kSide, kSide}; }
  int num_classes() const override { return kClasses; }

  strata::Split load(std::string_view split) override {
    if (split == "train") return load_files(train_);
    if (split == "test") return load_files(test_);
    fail("dataset cifar10: unknown split '{}'; the splits are 'train' and 'test'", split);
  }

 private:
  static strata::Split load_files(const std::vector<fs::path>& files) {
    // Check every size first: a bad last file fails before anything large is allocated.
    std::vector<std::size_t> counts;
    std::size_t total = 0;
    for (const fs::path& path : files) {
      counts.push_back(record_count(path));
      total += counts.back();
    }

    // The sizes come from the files themselves (a 3 GB file of records is 3 GB of data), but a
    // sparse or huge file must be refused with the figures, not by std::bad_alloc.
    const uint64_t memory = strata::physical_memory_bytes();
    if (total > memory / (kPixelBytes * sizeof(float) + sizeof(int))) {
      fail(
          "dataset {}{}: {} records of 32x32x3 need {} as float32, more than this machine's "
          "memory ({})",
          files.front().string(), files.size() > 1 ? " and the other files of its split" : "",
          total, strata::bytes_text(static_cast<double>(total) * kPixelBytes * sizeof(float)),
          strata::bytes_text(static_cast<double>(memory)));
    }
    strata::Split result;
    result.images =
        strata::Tensor(strata::Shape{static_cast<int64_t>(total), kChannels, kSide, kSide});
    result.labels.resize(total);
    std::array<float, 256> scale{};
    for (int value = 0; value < 256; ++value) scale[value] = static_cast<float>(value) / 255.0f;

    // Read in blocks of records, so that only one block of raw bytes is held besides the floats;
    // each file is read only as far as its size said when it was counted.
    constexpr std::size_t kBlockRecords = 1024;
    std::size_t record = 0;
    std::vector<uint8_t> bytes;
    for (std::size_t f = 0; f < files.size(); ++f) {
      const fs::path& path = files[f];
      std::ifstream in(path, std::ios::binary);
      for (std::size_t first = 0; first < counts[f]; first += kBlockRecords) {
        const std::size_t block = std::min(kBlockRecords, counts[f] - first);
        bytes.resize(block * kRecordBytes);
        in.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
        if (!in || static_cast<std::size_t>(in.gcount()) != bytes.size()) {
          fail("dataset {}: read {} of its {} bytes", path.string(),
               first * kRecordBytes +
                   static_cast<std::size_t>(std::max<std::streamsize>(0, in.gcount())),
               counts[f] * kRecordBytes);
        }
        for (std::size_t i = 0; i < block; ++i, ++record) {
          const uint8_t* source = bytes.data() + i * kRecordBytes;
          if (source[0] >= kClasses) {
            fail("dataset {}: record {} has label {}; CIFAR-10 labels are 0 to 9", path.string(),
                 first + i, source[0]);
          }
          result.labels[record] = source[0];
          float* out = result.images.data() + record * kPixelBytes;
          for (std::size_t p = 0; p < kPixelBytes; ++p) out[p] = scale[source[1 + p]];
        }
      }
    }
    return result;
  }

  std::vector<fs::path> train_;
  std::vector<fs::path> test_;
};

void register_all(strata::Registries& registries) {
  registries.datasets.add<Cifar10Dataset>("cifar10");
}

}  // namespace

STRATA_PLUGIN("cifar10", "1.0", register_all)
