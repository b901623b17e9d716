// The decoded cache: strata/training/data_cache.hpp.
//
// HDF5 calls hold strata::hdf5_mutex() (unless libhdf5 is thread-safe) with HDF5's error printing
// off, only around the calls themselves: the samples are decoded by TBB workers without it, and
// the source may be an `hdf5` reader that takes the same lock.
#include "strata/training/data_cache.hpp"

#include <hdf5.h>
#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>
#include <zlib.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <utility>
#include <vector>

#include "strata/error.hpp"
#include "strata/files.hpp"
#include "strata/hdf5_lock.hpp"
#include "strata/tensor.hpp"

namespace strata {
namespace {

namespace fs = std::filesystem;

constexpr std::string_view kFormat = "strata-decoded-cache";
constexpr int64_t kFormatVersion = 1;

// ---- HDF5 plumbing ----

using Handle = Hdf5Handle;

// ---- settings ----

struct Settings {
  fs::path path;
  std::optional<std::array<int64_t, 2>> size;  // [H, W]
  bool square = false;                         // size: S (shorter side, then centre crop)
  int compression = 4;
  std::string budget;
  Shape shape;  // [C, H, W] of the cached images
};

fs::path split_path(const Config& cache, std::string_view split) {
  std::string text = cache.get<std::string>("path");
  if (text.empty()) cache.fail_key("path", "must name a file");
  if (text.find("{split}") == std::string::npos) {
    const fs::path path(text);
    return path.parent_path() /
           fmt::format("{}-{}{}", path.stem().string(), split, path.extension().string());
  }
  for (std::size_t at = text.find("{split}"); at != std::string::npos;
       at = text.find("{split}", at)) {
    text.replace(at, 7, split);
    at += split.size();
  }
  return text;
}

Settings read_settings(const Config& cache, const Dataset& dataset, std::string_view split) {
  Settings settings;
  settings.path = split_path(cache, split);
  if (auto node = cache.find("size")) {
    settings.square = !node->is_sequence();
    settings.size = cache.get_pair("size", 1);
  }
  settings.compression = cache.get<int>("compression", 4);
  if (settings.compression < 0 || settings.compression > 9) {
    cache.fail_key("compression", fmt::format("expected a gzip level from 0 (none) to 9, found {}",
                                              settings.compression));
  }
  settings.budget = cache.get<std::string>("memory_budget", "1GB");
  const Shape source = dataset.sample_shape();
  if (settings.size) {
    settings.shape = Shape{source[0], (*settings.size)[0], (*settings.size)[1]};
  } else if (source[1] == 0 || source[2] == 0) {
    cache.fail(
        fmt::format("the images vary in size (the dataset gives {}): give `size: S` (the "
                    "shorter side, then a centre crop) or `size: [H, W]`",
                    source.str()));
  } else {
    settings.shape = source;
  }
  return settings;
}

std::string size_text(const Settings& settings) {
  if (!settings.size) return "as read";
  if (settings.square) return fmt::format("{}", (*settings.size)[0]);
  return fmt::format("[{}, {}]", (*settings.size)[0], (*settings.size)[1]);
}

// resize (and center_crop for size S), set up for the dataset's sample shape.
std::vector<std::shared_ptr<Transform>> make_transforms(const Config& cache, const Dataset& dataset,
                                                        const Settings& settings,
                                                        const Registries& registries) {
  std::vector<std::shared_ptr<Transform>> transforms;
  if (!settings.size) return transforms;
  const std::string size = size_text(settings);
  transforms.push_back(registries.transforms.create(
      Config::synthesize(fmt::format("{{type: resize, size: {}}}", size), cache, "size")));
  if (settings.square) {
    transforms.push_back(registries.transforms.create(
        Config::synthesize(fmt::format("{{type: center_crop, size: {}}}", size), cache, "size")));
  }
  Shape shape = dataset.sample_shape();
  for (const auto& transform : transforms) {
    transform->setup(shape);
    shape = transform->output_shape(shape);
  }
  return transforms;
}

// ---- writing ----

struct Attributes {
  std::string source, split, size;
  int64_t samples = 0, classes = 0;
};

// The cache file being written at `temporary`; every call holds the HDF5 lock.
class Writer {
 public:
  Writer(const fs::path& temporary, const Settings& settings, int64_t samples)
      : what_("decoded cache " + temporary.string()) {
    Hdf5Lock lock;
    file_ = Handle(check(H5Fcreate(temporary.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT),
                         "cannot create the file"),
                   H5Fclose);
    const Shape& shape = settings.shape;
    const std::array<hsize_t, 4> dims{static_cast<hsize_t>(samples), static_cast<hsize_t>(shape[0]),
                                      static_cast<hsize_t>(shape[1]),
                                      static_cast<hsize_t>(shape[2])};
    std::array<hsize_t, 4> chunk = dims;
    chunk[0] = 1;
    Handle space(check(H5Screate_simple(4, dims.data(), nullptr), "cannot create a dataspace"),
                 H5Sclose);
    Handle properties(check(H5Pcreate(H5P_DATASET_CREATE), "cannot create properties"), H5Pclose);
    check(H5Pset_chunk(properties, 4, chunk.data()), "cannot set the chunks");
    if (settings.compression > 0) {
      check(H5Pset_deflate(properties, static_cast<unsigned>(settings.compression)),
            "cannot set the compression");
    }
    Handle access(check(H5Pcreate(H5P_DATASET_ACCESS), "cannot create properties"), H5Pclose);
    check(H5Pset_chunk_cache(access, H5D_CHUNK_CACHE_NSLOTS_DEFAULT, 0, H5D_CHUNK_CACHE_W0_DEFAULT),
          "cannot set the chunk cache");
    images_ = Handle(
        check(H5Dcreate2(file_, "images", H5T_STD_U8LE, space, H5P_DEFAULT, properties, access),
              "cannot create /images"),
        H5Dclose);
  }
  ~Writer() {
    Hdf5Lock lock;
    images_.close();
    file_.close();
  }
  Writer(const Writer&) = delete;
  Writer& operator=(const Writer&) = delete;

  void write_labels(std::span<const int32_t> labels) {
    Hdf5Lock lock;
    const hsize_t count = labels.size();
    Handle space(check(H5Screate_simple(1, &count, nullptr), "cannot create a dataspace"),
                 H5Sclose);
    Handle dataset(check(H5Dcreate2(file_, "labels", H5T_STD_I32LE, space, H5P_DEFAULT, H5P_DEFAULT,
                                    H5P_DEFAULT),
                         "cannot create /labels"),
                   H5Dclose);
    check(H5Dwrite(dataset, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, labels.data()),
          "cannot write /labels");
  }

  // One chunk per row, from `first` on, stored as they are (already through the filters).
  void write_chunks(int64_t first, const std::vector<std::vector<uint8_t>>& chunks) {
    Hdf5Lock lock;
    for (std::size_t row = 0; row < chunks.size(); ++row) {
      const std::array<hsize_t, 4> offset{static_cast<hsize_t>(first) + row, 0, 0, 0};
      check(H5Dwrite_chunk(images_, H5P_DEFAULT, 0, offset.data(), chunks[row].size(),
                           chunks[row].data()),
            fmt::format("cannot write image {}", first + static_cast<int64_t>(row)));
    }
  }

  void write_attributes(const Attributes& attributes) {
    Hdf5Lock lock;
    write_string("format", std::string(kFormat));
    write_integer("format_version", kFormatVersion);
    write_string("source", attributes.source);
    write_string("split", attributes.split);
    write_string("size", attributes.size);
    write_integer("samples", attributes.samples);
    write_integer("classes", attributes.classes);
  }

  // Closes the file: HDF5 writes what it still holds now, so a failure here is a failed write.
  void finish() {
    Hdf5Lock lock;
    if (!images_.close() || !file_.close()) {
      fail("{}: cannot finish the file{}", what_, strata::hdf5_error_reason());
    }
  }

 private:
  hid_t check(hid_t id, std::string_view what) const {
    if (id < 0) fail("{}: {}{}", what_, what, strata::hdf5_error_reason());
    return id;
  }
  void write_string(const char* name, const std::string& value) {
    Handle type(check(H5Tcopy(H5T_C_S1), "cannot create a string type"), H5Tclose);
    check(H5Tset_size(type, H5T_VARIABLE), "cannot create a string type");
    check(H5Tset_cset(type, H5T_CSET_UTF8), "cannot create a string type");
    Handle space(check(H5Screate(H5S_SCALAR), "cannot create a dataspace"), H5Sclose);
    Handle attribute(check(H5Acreate2(file_, name, type, space, H5P_DEFAULT, H5P_DEFAULT),
                           fmt::format("cannot create the attribute {}", name)),
                     H5Aclose);
    const char* text = value.c_str();
    check(H5Awrite(attribute, type, &text), fmt::format("cannot write the attribute {}", name));
  }
  void write_integer(const char* name, int64_t value) {
    Handle space(check(H5Screate(H5S_SCALAR), "cannot create a dataspace"), H5Sclose);
    Handle attribute(check(H5Acreate2(file_, name, H5T_STD_I64LE, space, H5P_DEFAULT, H5P_DEFAULT),
                           fmt::format("cannot create the attribute {}", name)),
                     H5Aclose);
    check(H5Awrite(attribute, H5T_NATIVE_INT64, &value),
          fmt::format("cannot write the attribute {}", name));
  }

  std::string what_;
  Handle file_, images_;
};

uint8_t to_byte(float value) {
  float scaled = value * 255.0f;
  if (!(scaled >= 0.0f)) scaled = 0.0f;  // NaN too
  if (scaled > 255.0f) scaled = 255.0f;
  return static_cast<uint8_t>(std::lround(scaled));
}

// Samples [first, first + rows) of `source`, transformed and converted, into `out`.
// Samples [first, first + rows) of `source`, transformed, converted to bytes and, with
// `compression` > 0, deflated as HDF5's gzip filter stores a chunk (a zlib stream): one chunk per
// sample, compressed in parallel, so that writing the block is only I/O.
void decode_rows(const SplitReader& source,
                 const std::vector<std::shared_ptr<Transform>>& transforms, const Shape& shape,
                 int compression, int64_t first, std::vector<std::vector<uint8_t>>& chunks) {
  const auto sample_bytes = static_cast<std::size_t>(shape.numel());
  const auto rows = static_cast<int64_t>(chunks.size());
  tbb::parallel_for(tbb::blocked_range<int64_t>(0, rows),
                    [&](const tbb::blocked_range<int64_t>& range) {
                      Image image, scratch;
                      std::vector<uint8_t> bytes(sample_bytes);
                      for (int64_t row = range.begin(); row < range.end(); ++row) {
                        const int64_t index = first + row;
                        source.read(index, image);
                        for (const auto& transform : transforms) transform->apply(image, scratch);
                        if (image.shape() != shape) {
                          fail("decoded cache: {} is {} after resizing, expected {}",
                               source.describe(index), image.shape().str(), shape.str());
                        }
                        for (std::size_t i = 0; i < sample_bytes; ++i)
                          bytes[i] = to_byte(image.pixels[i]);
                        std::vector<uint8_t>& chunk = chunks[static_cast<std::size_t>(row)];
                        if (compression == 0) {
                          chunk = bytes;
                          continue;
                        }
                        uLongf size = compressBound(static_cast<uLong>(sample_bytes));
                        chunk.resize(size);
                        if (compress2(chunk.data(), &size, bytes.data(),
                                      static_cast<uLong>(sample_bytes), compression) != Z_OK) {
                          fail("decoded cache: cannot compress {}", source.describe(index));
                        }
                        chunk.resize(size);
                      }
                    });
}

// Writes the whole cache of `source` to `path` through "<path>.tmp-<pid>".
void build(const Settings& settings, const Attributes& attributes, const SplitReader& source,
           const std::vector<std::shared_ptr<Transform>>& transforms) {
  const fs::path& path = settings.path;
  std::error_code error;
  if (path.has_parent_path()) fs::create_directories(path.parent_path(), error);
  fs::path temporary = path;
  temporary += temporary_suffix();
  const TemporaryFile registered(temporary);
  if (fs::is_regular_file(fs::symlink_status(temporary, error))) fs::remove(temporary, error);
  const auto start = std::chrono::steady_clock::now();
  auto last_report = start;
  const auto seconds_since = [](auto then) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - then).count();
  };
  const int64_t samples = source.size();
  const int64_t sample_bytes = settings.shape.numel();
  // Blocks of at most 16 MB and 256 samples: memory stays bounded, progress lines come often.
  const int64_t block = std::clamp<int64_t>((int64_t{16} << 20) / sample_bytes, 1, 256);
  try {
    Writer writer(temporary, settings, samples);
    writer.write_labels(source.labels());
    writer.write_attributes(attributes);
    std::vector<std::vector<uint8_t>> chunks;
    for (int64_t first = 0; first < samples; first += block) {
      chunks.resize(static_cast<std::size_t>(std::min(block, samples - first)));
      try {
        decode_rows(source, transforms, settings.shape, settings.compression, first, chunks);
      } catch (const BadSample& bad) {
        fail(
            "decoded cache {}: {}\n  The cache needs every sample: fix or remove that file, then "
            "run again.",
            path.string(), bad.what());
      }
      writer.write_chunks(first, chunks);
      const int64_t rows = static_cast<int64_t>(chunks.size());
      if (seconds_since(last_report) >= 10.0) {
        last_report = std::chrono::steady_clock::now();
        fmt::print("cache {}: {}/{} images, {:.0f} s\n", path.string(), first + rows, samples,
                   seconds_since(start));
        std::fflush(stdout);
      }
    }
    writer.finish();
    if (::rename(temporary.c_str(), path.c_str()) != 0) {
      fail("decoded cache {}: cannot rename {} to it: {}", path.string(), temporary.string(),
           std::strerror(errno));
    }
  } catch (...) {
    fs::remove(temporary, error);
    throw;
  }
  fmt::print("cache {}: wrote {} images of {}, {}, in {:.1f} s\n", path.string(), samples,
             settings.shape.str(), bytes_text(static_cast<double>(fs::file_size(path, error))),
             seconds_since(start));
  std::fflush(stdout);
}

// ---- checking an existing cache ----

// The root attributes of the cache file at `path` (Error when it is not a cache).
Attributes read_attributes(const Config& cache, const fs::path& path) {
  Hdf5Lock lock;
  const auto refuse = [&](const std::string& why) {
    cache.fail_key("path", fmt::format("{} {}; delete it to let Strata build the cache again",
                                       path.string(), why));
  };
  if (H5Fis_hdf5(path.c_str()) <= 0) refuse("exists but is not an HDF5 file");
  Handle file(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
  if (file < 0) refuse("cannot be opened" + strata::hdf5_error_reason());
  const auto read_string = [&](const char* name) -> std::string {
    Handle attribute(H5Aexists(file, name) > 0 ? H5Aopen(file, name, H5P_DEFAULT) : -1, H5Aclose);
    Handle type(attribute >= 0 ? H5Aget_type(attribute) : -1, H5Tclose);
    if (type < 0 || H5Tget_class(type) != H5T_STRING || H5Tis_variable_str(type) <= 0) {
      H5Eclear2(H5E_DEFAULT);
      refuse(fmt::format("is not a Strata decoded cache (no string attribute '{}')", name));
    }
    Handle memory(H5Tcopy(H5T_C_S1), H5Tclose);
    H5Tset_size(memory, H5T_VARIABLE);
    H5Tset_cset(memory, H5T_CSET_UTF8);
    char* text = nullptr;
    if (H5Aread(attribute, memory, &text) < 0 || text == nullptr)
      refuse("cannot be read" + strata::hdf5_error_reason());
    std::string value(text);
    H5free_memory(text);
    return value;
  };
  const auto read_integer = [&](const char* name) -> int64_t {
    Handle attribute(H5Aexists(file, name) > 0 ? H5Aopen(file, name, H5P_DEFAULT) : -1, H5Aclose);
    int64_t value = 0;
    if (attribute < 0 || H5Aread(attribute, H5T_NATIVE_INT64, &value) < 0) {
      H5Eclear2(H5E_DEFAULT);
      refuse(fmt::format("is not a Strata decoded cache (no integer attribute '{}')", name));
    }
    return value;
  };
  if (read_string("format") != kFormat) refuse("is not a Strata decoded cache");
  if (const int64_t version = read_integer("format_version"); version != kFormatVersion) {
    refuse(
        fmt::format("has cache format version {}, this Strata writes {}", version, kFormatVersion));
  }
  Attributes attributes;
  attributes.source = read_string("source");
  attributes.split = read_string("split");
  attributes.size = read_string("size");
  attributes.samples = read_integer("samples");
  attributes.classes = read_integer("classes");
  return attributes;
}

void check_attributes(const Config& cache, const fs::path& path, const Attributes& found,
                      const Attributes& expected) {
  const auto differs = [&](std::string_view what, std::string file, std::string now) {
    for (std::string* text : {&file, &now}) {
      while (!text->empty() && std::isspace(static_cast<unsigned char>(text->back())))
        text->pop_back();
    }
    cache.fail_key("path", fmt::format("the cache {} was written for another {}:\n  the file has: "
                                       "{}\n  this run has: {}\n  Delete {} to build it again.",
                                       path.string(), what, file, now, path.string()));
  };
  if (found.source != expected.source) differs("dataset", found.source, expected.source);
  if (found.split != expected.split) differs("split", found.split, expected.split);
  if (found.size != expected.size) differs("size", found.size, expected.size);
  if (found.samples != expected.samples) {
    differs("number of samples", std::to_string(found.samples), std::to_string(expected.samples));
  }
  if (found.classes != expected.classes) {
    differs("number of classes", std::to_string(found.classes), std::to_string(expected.classes));
  }
}

std::string quoted(const std::string& text) { return nlohmann::json(text).dump(); }

// The `hdf5` reader of the cache file, kept alive with its dataset.
std::shared_ptr<const SplitReader> open_cache(const Config& cache, const Dataset& dataset,
                                              const Settings& settings,
                                              const Registries& registries) {
  if (!registries.datasets.contains("hdf5")) {
    cache.fail(
        "the decoded cache is read by the `hdf5` dataset plugin (libstrata_hdf5.so), which "
        "is not loaded");
  }
  const std::string file = quoted(settings.path.string());
  std::string yaml = fmt::format(
      "{{type: hdf5, train: {}, test: {}, train_group: /, test_group: /, layout: nchw, classes: "
      "{}, "
      "memory_budget: {}",
      file, file, dataset.num_classes(), quoted(settings.budget));
  if (const auto names = dataset.class_names(); !names.empty()) {
    std::vector<std::string> items;
    for (const auto& name : names) items.push_back(quoted(name));
    yaml += fmt::format(", class_names: [{}]", fmt::join(items, ", "));
  }
  yaml += "}";
  std::shared_ptr<Dataset> reader_dataset =
      registries.datasets.create(Config::synthesize(yaml, cache, "path"));
  std::shared_ptr<const SplitReader> reader = reader_dataset->open("train");
  auto holder =
      std::make_shared<std::pair<std::shared_ptr<Dataset>, std::shared_ptr<const SplitReader>>>(
          std::move(reader_dataset), reader);
  return std::shared_ptr<const SplitReader>(holder, reader.get());
}

void check_labels(const Config& cache, const fs::path& path, const SplitReader& cached,
                  const SplitReader& source) {
  const auto cached_labels = cached.labels();
  const auto source_labels = source.labels();
  for (std::size_t i = 0; i < std::min(cached_labels.size(), source_labels.size()); ++i) {
    if (cached_labels[i] != source_labels[i]) {
      cache.fail_key("path", fmt::format("the cache {} was written for other samples: label {} of "
                                         "sample {} ({}) is {} in the cache\n  Delete {} to build "
                                         "it again.",
                                         path.string(), source_labels[i], i,
                                         source.describe(static_cast<int64_t>(i)), cached_labels[i],
                                         path.string()));
    }
  }
}

}  // namespace

std::string cache_source_yaml(const Config& data) {
  Config copy = data.clone();
  for (const char* key : {"validation", "train_limit", "test_limit", "preprocess", "augment",
                          "transforms", "fit_samples", "on_bad_image", "cache"}) {
    copy.erase(key);
  }
  return copy.dump();
}

std::shared_ptr<const SplitReader> cached_split(const Config& cache, const Dataset& dataset,
                                                std::shared_ptr<const SplitReader> source,
                                                std::string_view split,
                                                const Registries& registries,
                                                std::string_view source_yaml) {
  const Settings settings = read_settings(cache, dataset, split);
  Attributes expected;
  expected.source = std::string(source_yaml);
  expected.split = std::string(split);
  expected.size = size_text(settings);
  expected.samples = source->size();
  expected.classes = dataset.num_classes();
  std::error_code error;
  if (!fs::exists(fs::symlink_status(settings.path, error))) {
    const auto transforms = make_transforms(cache, dataset, settings, registries);
    build(settings, expected, *source, transforms);
  } else {
    check_attributes(cache, settings.path, read_attributes(cache, settings.path), expected);
  }
  auto reader = open_cache(cache, dataset, settings, registries);
  check_labels(cache, settings.path, *reader, *source);
  return reader;
}

void check_cache_keys(const Config& cache) {
  split_path(cache, "train");
  if (cache.find("size")) cache.get_pair("size", 1);
  const int compression = cache.get<int>("compression", 4);
  if (compression < 0 || compression > 9) {
    cache.fail_key("compression",
                   fmt::format("expected a gzip level from 0 (none) to 9, found {}", compression));
  }
  cache.get<std::string>("memory_budget", "1GB");
  cache.check_unused();
}

Shape cached_sample_shape(const Config& cache, const Dataset& dataset) {
  return read_settings(cache, dataset, "train").shape;
}

std::shared_ptr<const SplitReader> open_dataset_split(const Config& data, Dataset& dataset,
                                                      std::string_view split,
                                                      const Registries& registries,
                                                      const std::string& as_run_yaml) {
  std::shared_ptr<const SplitReader> reader = dataset.open(split);
  const std::optional<Config> cache = data.find("cache");
  if (!cache || reader == nullptr) return reader;
  const Config as_run = Config::parse_string(as_run_yaml, "the experiment as run");
  return cached_split(*cache, dataset, std::move(reader), split, registries,
                      cache_source_yaml(as_run.at("data")));
}

}  // namespace strata
