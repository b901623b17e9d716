// datasets/hdf5: the `hdf5` dataset type, image arrays in HDF5 files as h5py users write them.
//
// WHAT THIS OBJECT REPRESENTS
//   Per split, one group of an HDF5 file holding two datasets: `images`, [N, C, H, W] or
//   [N, H, W, C], uint8 (scaled by 1/255) or float32 (taken as is: values should be in [0, 1], as
//   every reader's are; normalization is the pipeline's `normalize`), and `labels`, [N], any
//   integer type. What `f.create_dataset("images", data=x)` writes from numpy, chunked and
//   gzip-compressed or not.
//
// CONFIGURATION
//   train, test: the HDF5 file of each split (may be the same file).
//   train_group, test_group: the group of each split, default the root ("/") when a file serves
//        one split, "train" and "test" when train and test are the same file.
//   images: the images' dataset name in the group, default "images". labels: default "labels".
//   layout: auto (default), nchw or nhwc. auto takes [N, H, W, C] when the last extent is 1, 3 or
//        4 and the second is not, else [N, C, H, W]. A 3-D array [N, H, W] is grey images (C = 1).
//   classes: default 1 + the largest label of both splits. class_names: optional list.
//   memory_budget: default "1GB"; a byte count or a number with KB, MB or GB (binary: 1 KB =
//        1024 bytes). An images array of at most this many bytes (as stored: 1 per uint8, 4 per
//        float32) is read whole by open(); a larger one is read one sample at a time, through a
//        cache of decoded chunks that never holds more than the budget.
//
// ENSURES
//   - Construction checks both splits without reading any image: the files exist and are HDF5,
//     the groups and datasets exist (a missing one lists what its group holds), images have rank 4
//     and a supported type, labels rank 1 and an integer type, counts agree, N > 0, both splits'
//     images have one [C, H, W], every label is in [0, classes). Labels are read and kept.
//     Every error names the file and the dataset ("dataset hdf5 data.h5: /train/labels: ...").
//   - read() gives float32 [C, H, W] in planar order whatever the file's layout.
//   - Streaming (array larger than the budget): a sample is read by hyperslab. For a chunked
//     array, the rows of one chunk along N (a "block": all of its chunks across C, H and W) are
//     decoded once and kept in a least-recently-used cache while the blocks held fit the budget;
//     a block larger than the budget is not cached (each sample read decodes its chunks again).
//     HDF5's own chunk cache is switched off, so the budget is the whole of what is kept. A sample
//     whose chunk HDF5 cannot decode is a BadSample naming the file, dataset and index.
//   - HDF5 calls hold the process's HDF5 lock (strata::Hdf5Lock, strata/hdf5_lock.hpp), with
//     HDF5's error printing off; a cache hit is a memcpy under the reader's lock.
#include <hdf5.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "strata/config.hpp"
#include "strata/dataset.hpp"
#include "strata/error.hpp"
#include "strata/file_check.hpp"
#include "strata/hdf5_lock.hpp"
#include "strata/plugin.hpp"
#include "strata/registry.hpp"
#include "strata/tensor.hpp"

namespace {

namespace fs = std::filesystem;
using strata::Config;
using strata::fail;

// ---- HDF5 plumbing ----

using Handle = strata::Hdf5Handle;

// A file being read, for messages: "dataset hdf5 <file>: <object>: <what>".
struct Where {
  std::string file;
  [[noreturn]] void fail(std::string_view object, std::string_view what) const {
    if (object.empty()) strata::fail("dataset hdf5 {}: {}", file, what);
    strata::fail("dataset hdf5 {}: {}: {}", file, object, what);
  }
  hid_t check(hid_t id, std::string_view object, std::string_view what) const {
    if (id < 0) fail(object, fmt::format("{}{}", what, strata::hdf5_error_reason()));
    return id;
  }
};

// "uint8", "int64", "float32", "string", ...
std::string type_text(hid_t type) {
  const std::size_t bytes = H5Tget_size(type);
  switch (H5Tget_class(type)) {
    case H5T_INTEGER:
      return fmt::format("{}int{}", H5Tget_sign(type) == H5T_SGN_NONE ? "u" : "", bytes * 8);
    case H5T_FLOAT:
      return fmt::format("float{}", bytes * 8);
    case H5T_STRING:
      return "string";
    case H5T_COMPOUND:
      return "compound";
    case H5T_ENUM:
      return "enum (h5py's bool)";
    default:
      return fmt::format("HDF5 type class {}", static_cast<int>(H5Tget_class(type)));
  }
}

std::vector<int64_t> dataset_dims(const Where& where, hid_t dataset, const std::string& name) {
  Handle space(where.check(H5Dget_space(dataset), name, "cannot read the shape"), H5Sclose);
  const int rank = H5Sget_simple_extent_ndims(space);
  if (rank < 0) where.fail(name, "cannot read the shape" + strata::hdf5_error_reason());
  std::vector<hsize_t> dims(static_cast<std::size_t>(rank));
  if (rank > 0) H5Sget_simple_extent_dims(space, dims.data(), nullptr);
  return {dims.begin(), dims.end()};
}

std::string dims_text(const std::vector<int64_t>& dims) {
  return fmt::format("[{}]", fmt::join(dims, ", "));
}

struct Listing {
  hid_t group;
  std::vector<std::string> entries;
};

herr_t list_entry(hid_t group, const char* name, const H5L_info_t* info, void* data) {
  auto& listing = *static_cast<Listing*>(data);
  if (listing.entries.size() >= 20) {
    listing.entries.push_back("...");
    return 1;
  }
  std::string text = name;
  if (info->type == H5L_TYPE_HARD) {
    Handle object(H5Oopen(group, name, H5P_DEFAULT), H5Oclose);
    if (object >= 0 && H5Iget_type(object) == H5I_GROUP) {
      text += " (group)";
    } else if (object >= 0 && H5Iget_type(object) == H5I_DATASET) {
      Handle type(H5Dget_type(object), H5Tclose);
      Handle space(H5Dget_space(object), H5Sclose);
      std::array<hsize_t, H5S_MAX_RANK> dims{};
      const int rank = space >= 0 ? H5Sget_simple_extent_dims(space, dims.data(), nullptr) : -1;
      const std::vector<int64_t> shape(dims.begin(), dims.begin() + std::max(rank, 0));
      text += fmt::format(" ({} {})", type >= 0 ? type_text(type) : "?", dims_text(shape));
    }
  } else {
    text += " (link)";
  }
  listing.entries.push_back(text);
  return 0;
}

// "holds: images (uint8 [10, 28, 28, 1]), labels (int64 [10]), train (group)" or "is empty".
std::string contents_text(hid_t group) {
  Listing listing{group, {}};
  H5Literate(group, H5_INDEX_NAME, H5_ITER_INC, nullptr, list_entry, &listing);
  H5Eclear2(H5E_DEFAULT);
  if (listing.entries.empty()) return "is empty";
  return "holds: " + fmt::format("{}", fmt::join(listing.entries, ", "));
}

// ---- what a split is ----

struct ArrayInfo {
  std::string file;
  std::string group;   // "/" or "/train"
  std::string images;  // "/train/images"
  std::string labels;
  int64_t n = 0, c = 0, h = 0, w = 0;
  int rank = 4;  // 3 for grey images stored [N, H, W]
  bool nhwc = false;
  bool is_float = false;
  int64_t chunk_rows = 0;             // rows of one chunk along N; 0 when the array is not chunked
  std::vector<int64_t> chunk;         // the chunk shape, empty when not chunked
  bool chunk_splits_samples = false;  // a chunk holds only part of each image
  std::vector<int32_t> label_values;

  int64_t sample_bytes() const { return c * h * w * (is_float ? 4 : 1); }
  uint64_t array_bytes() const { return static_cast<uint64_t>(n) * sample_bytes(); }
  hid_t memory_type() const { return is_float ? H5T_NATIVE_FLOAT : H5T_NATIVE_UINT8; }
};

struct Names {
  std::string images = "images";
  std::string labels = "labels";
  std::string layout = "auto";
};

std::string join_path(const std::string& group, const std::string& name) {
  return group == "/" ? "/" + name : group + "/" + name;
}

// H5I_GROUP, H5I_DATASET, ... of the object at `path` (relative to `location`), H5I_BADID if none.
H5I_type_t object_type(hid_t location, const std::string& path) {
  Handle object(H5Oopen(location, path.c_str(), H5P_DEFAULT), H5Oclose);
  const H5I_type_t type = object >= 0 ? H5Iget_type(object) : H5I_BADID;
  H5Eclear2(H5E_DEFAULT);
  return type;
}

Handle open_file(const Where& where) {
  const htri_t is_hdf5 = H5Fis_hdf5(where.file.c_str());
  if (is_hdf5 == 0) where.fail("", "not an HDF5 file");
  if (is_hdf5 < 0) where.fail("", "cannot read the file" + strata::hdf5_error_reason());
  Handle access(where.check(H5Pcreate(H5P_FILE_ACCESS), "", "cannot create file properties"),
                H5Pclose);
  H5Pset_fclose_degree(access, H5F_CLOSE_STRONG);
  return Handle(
      where.check(H5Fopen(where.file.c_str(), H5F_ACC_RDONLY, access), "", "cannot open the file"),
      H5Fclose);
}

// Opens `group` ("/", "train", "/a/b"), or fails listing what its parent holds.
Handle open_group(const Where& where, hid_t file, const std::string& group, const char* key) {
  std::string path = "/";
  for (std::size_t start = group.find_first_not_of('/'); start != std::string::npos;) {
    const std::size_t end = std::min(group.find('/', start), group.size());
    const std::string parent = path;
    path = join_path(path, group.substr(start, end - start));
    Handle parent_group(
        where.check(H5Gopen2(file, parent.c_str(), H5P_DEFAULT), parent, "cannot open the group"),
        H5Gclose);
    const htri_t exists = H5Lexists(file, path.c_str(), H5P_DEFAULT);
    H5Eclear2(H5E_DEFAULT);
    if (exists <= 0 || object_type(file, path) != H5I_GROUP) {
      H5Eclear2(H5E_DEFAULT);
      where.fail(
          path, fmt::format("no such group ({}); {} {}", key, parent, contents_text(parent_group)));
    }
    start = group.find_first_not_of('/', end);
  }
  return Handle(
      where.check(H5Gopen2(file, path.c_str(), H5P_DEFAULT), path, "cannot open the group"),
      H5Gclose);
}

// Opens the dataset `name` of `group`, or fails listing what the group holds.
Handle open_dataset(const Where& where, hid_t group, const std::string& group_path,
                    const std::string& name, const char* key, hid_t access = H5P_DEFAULT) {
  const std::string path = join_path(group_path, name);
  const htri_t exists = H5Lexists(group, name.c_str(), H5P_DEFAULT);
  H5Eclear2(H5E_DEFAULT);
  if (exists <= 0 || object_type(group, name) != H5I_DATASET) {
    H5Eclear2(H5E_DEFAULT);
    where.fail(path, fmt::format("no such dataset (key {}: '{}'); {} {}", key, name, group_path,
                                 contents_text(group)));
  }
  return Handle(where.check(H5Dopen2(group, name.c_str(), access), path, "cannot open"), H5Dclose);
}

void inspect_images(const Where& where, hid_t dataset, const std::string& layout, ArrayInfo& info) {
  std::vector<int64_t> dims = dataset_dims(where, dataset, info.images);
  if (dims.size() != 4 && dims.size() != 3) {
    where.fail(info.images,
               fmt::format("expected 4 dimensions, [N, C, H, W] or [N, H, W, C] (or 3, [N, H, W], "
                           "for grey images), found {} {}",
                           dims.size(), dims_text(dims)));
  }
  // [N, H, W] (MNIST as numpy holds it): grey images, the same bytes as [N, H, W, 1].
  info.rank = static_cast<int>(dims.size());
  const bool grey = info.rank == 3;
  if (grey) dims.push_back(1);
  Handle type(where.check(H5Dget_type(dataset), info.images, "cannot read the type"), H5Tclose);
  const H5T_class_t type_class = H5Tget_class(type);
  const std::size_t bytes = H5Tget_size(type);
  const bool uint8 = type_class == H5T_INTEGER && bytes == 1 && H5Tget_sign(type) == H5T_SGN_NONE;
  info.is_float = type_class == H5T_FLOAT && bytes == 4;
  if (!uint8 && !info.is_float) {
    where.fail(info.images,
               fmt::format("unsupported type {}: images must be uint8 (scaled by 1/255) or float32 "
                           "in [0, 1] (in numpy: x.astype('float32'))",
                           type_text(type)));
  }
  const auto channel_like = [](int64_t d) { return d == 1 || d == 3 || d == 4; };
  info.nhwc = grey || layout == "nhwc" ||
              (layout == "auto" && channel_like(dims[3]) && !channel_like(dims[1]));
  info.n = dims[0];
  info.c = info.nhwc ? dims[3] : dims[1];
  info.h = info.nhwc ? dims[1] : dims[2];
  info.w = info.nhwc ? dims[2] : dims[3];
  if (info.n == 0)
    where.fail(info.images, fmt::format("holds no images (shape {})", dims_text(dims)));
  if (info.c == 0 || info.h == 0 || info.w == 0) {
    where.fail(info.images, fmt::format("has an empty image extent (shape {})", dims_text(dims)));
  }
  Handle properties(
      where.check(H5Dget_create_plist(dataset), info.images, "cannot read the properties"),
      H5Pclose);
  if (H5Pget_layout(properties) == H5D_CHUNKED) {
    std::array<hsize_t, 4> chunk{0, 0, 0, 1};
    if (H5Pget_chunk(properties, info.rank, chunk.data()) == info.rank) {
      info.chunk_rows = static_cast<int64_t>(chunk[0]);
      info.chunk.assign(chunk.begin(), chunk.begin() + info.rank);
      info.chunk_splits_samples = chunk[1] < static_cast<hsize_t>(dims[1]) ||
                                  chunk[2] < static_cast<hsize_t>(dims[2]) ||
                                  chunk[3] < static_cast<hsize_t>(dims[3]);
    }
  }
}

std::vector<int64_t> read_labels(const Where& where, hid_t dataset, ArrayInfo& info) {
  const std::vector<int64_t> dims = dataset_dims(where, dataset, info.labels);
  if (dims.size() != 1) {
    where.fail(info.labels,
               fmt::format("expected 1 dimension [N], found {} {}", dims.size(), dims_text(dims)));
  }
  Handle type(where.check(H5Dget_type(dataset), info.labels, "cannot read the type"), H5Tclose);
  if (H5Tget_class(type) != H5T_INTEGER) {
    where.fail(info.labels, fmt::format("unsupported type {}: labels must be integers (in numpy: "
                                        "y.astype('int64'))",
                                        type_text(type)));
  }
  if (dims[0] != info.n) {
    where.fail(info.labels,
               fmt::format("holds {} labels but {} holds {} images", dims[0], info.images, info.n));
  }
  std::vector<int64_t> values(static_cast<std::size_t>(info.n));
  if (H5Dread(dataset, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()) < 0) {
    where.fail(info.labels, "cannot read" + strata::hdf5_error_reason());
  }
  return values;
}

// Everything about one split but its pixels; labels as stored (checked by the caller).
ArrayInfo inspect_split(const fs::path& file, const std::string& group, const Names& names,
                        const char* group_key, std::vector<int64_t>& labels) {
  strata::Hdf5Lock lock;
  const Where where{file.string()};
  ArrayInfo info;
  info.file = file.string();
  Handle handle = open_file(where);
  Handle group_handle = open_group(where, handle, group, group_key);
  info.group = "/";
  for (std::size_t start = group.find_first_not_of('/'); start != std::string::npos;) {
    const std::size_t end = std::min(group.find('/', start), group.size());
    info.group = join_path(info.group, group.substr(start, end - start));
    start = group.find_first_not_of('/', end);
  }
  info.images = join_path(info.group, names.images);
  info.labels = join_path(info.group, names.labels);
  Handle images = open_dataset(where, group_handle, info.group, names.images, "images");
  inspect_images(where, images, names.layout, info);
  Handle label_set = open_dataset(where, group_handle, info.group, names.labels, "labels");
  labels = read_labels(where, label_set, info);
  return info;
}

// ---- reading ----

// Decoded samples as stored (uint8 or float32, CHW or HWC) -> float32 planar [C, H, W] in [0, 1].
void convert(const ArrayInfo& info, const uint8_t* raw, strata::Image& out) {
  out.resize(info.c, info.h, info.w);
  float* pixels = out.pixels.data();
  const int64_t plane = info.h * info.w;
  const int64_t count = info.c * plane;
  if (!info.is_float) {
    static const std::array<float, 256> scale = [] {
      std::array<float, 256> table{};
      for (int v = 0; v < 256; ++v) table[v] = static_cast<float>(v) / 255.0f;
      return table;
    }();
    if (!info.nhwc) {
      for (int64_t i = 0; i < count; ++i) pixels[i] = scale[raw[i]];
    } else {
      for (int64_t p = 0; p < plane; ++p) {
        for (int64_t ch = 0; ch < info.c; ++ch)
          pixels[ch * plane + p] = scale[raw[p * info.c + ch]];
      }
    }
    return;
  }
  if (!info.nhwc) {
    std::memcpy(pixels, raw, static_cast<std::size_t>(count) * sizeof(float));
    return;
  }
  for (int64_t p = 0; p < plane; ++p) {
    for (int64_t ch = 0; ch < info.c; ++ch) {
      std::memcpy(&pixels[ch * plane + p], raw + (p * info.c + ch) * sizeof(float), sizeof(float));
    }
  }
}

class Hdf5Split final : public strata::SplitReader {
 public:
  Hdf5Split(ArrayInfo info, uint64_t budget) : info_(std::move(info)), budget_(budget) {
    // Handles are opened into locals and moved into the members at the end, so that an exception
    // closes them while the lock is still held.
    strata::Hdf5Lock lock;
    const Where where{info_.file};
    Handle file = open_file(where);
    Handle group(where.check(H5Gopen2(file, info_.group.c_str(), H5P_DEFAULT), info_.group,
                             "cannot open the group"),
                 H5Gclose);
    // HDF5's chunk cache is off: this reader's cache is all that is kept.
    Handle access(where.check(H5Pcreate(H5P_DATASET_ACCESS), "", "cannot create properties"),
                  H5Pclose);
    H5Pset_chunk_cache(access, H5D_CHUNK_CACHE_NSLOTS_DEFAULT, 0, H5D_CHUNK_CACHE_W0_DEFAULT);
    const std::string name = info_.images.substr(info_.group == "/" ? 1 : info_.group.size() + 1);
    Handle dataset = open_dataset(where, group, info_.group, name, "images", access);
    if (info_.array_bytes() <= budget_) {
      whole_.resize(info_.array_bytes());
      if (H5Dread(dataset, info_.memory_type(), H5S_ALL, H5S_ALL, H5P_DEFAULT, whole_.data()) < 0) {
        where.fail(info_.images, "cannot read" + strata::hdf5_error_reason());
      }
      return;
    }
    const uint64_t block_bytes = static_cast<uint64_t>(info_.chunk_rows) * info_.sample_bytes();
    if (info_.chunk_rows > 0 && block_bytes <= budget_) block_rows_ = info_.chunk_rows;
    if (info_.chunk_rows > 64 || info_.chunk_splits_samples) note_slow_chunks();
    file_ = std::move(file);
    dataset_ = std::move(dataset);
  }
  ~Hdf5Split() override {
    strata::Hdf5Lock lock;
    dataset_.close();
    file_.close();
  }

  int64_t size() const override { return info_.n; }
  std::span<const int32_t> labels() const override { return info_.label_values; }
  std::string describe(int64_t index) const override {
    return fmt::format("{}:{}[{}]", info_.file, info_.images, index);
  }

  void read(int64_t index, strata::Image& out) const override {
    if (index < 0 || index >= info_.n) {
      fail("dataset hdf5 {}: {}: sample {} requested, but the split has {}", info_.file,
           info_.images, index, info_.n);
    }
    const auto bytes = static_cast<std::size_t>(info_.sample_bytes());
    if (!whole_.empty()) {
      convert(info_, whole_.data() + static_cast<std::size_t>(index) * bytes, out);
      return;
    }
    std::vector<uint8_t> raw(bytes);
    {
      std::lock_guard guard(mutex_);
      if (block_rows_ > 0) {
        const std::vector<uint8_t>& block = cached_block(index / block_rows_);
        std::memcpy(raw.data(),
                    block.data() + static_cast<std::size_t>(index % block_rows_) * bytes, bytes);
      } else {
        read_rows(index, 1, raw.data());
      }
    }
    convert(info_, raw.data(), out);
  }

 private:
  // Read in random order, a chunk of many samples is decoded again for most samples read, and
  // a chunk that cuts images apart is slow to gather (h5py chunks a compressed array that way
  // unless told otherwise): said once per file and dataset, on stderr.
  void note_slow_chunks() const {
    static std::mutex mutex;
    static std::set<std::string> noted;
    std::lock_guard guard(mutex);
    if (!noted.insert(info_.file + ":" + info_.images).second) return;
    const std::vector<int64_t> sample = info_.nhwc
                                            ? std::vector<int64_t>{info_.h, info_.w, info_.c}
                                            : std::vector<int64_t>{info_.c, info_.h, info_.w};
    fmt::print(stderr,
               "note: dataset hdf5 {}: {} is larger than memory_budget and read sample by sample, "
               "but its chunks {} hold {} samples{}: reading in random order is slow. Rewrite it "
               "with chunks of whole images, e.g. h5py's chunks=(1, {}).\n",
               info_.file, info_.images, dims_text(info_.chunk), info_.chunk_rows,
               info_.chunk_splits_samples ? " and cut each image apart" : "",
               fmt::join(sample, ", "));
  }

  // Reads rows [first, first + count) of the images into `out` (BadSample when HDF5 cannot).
  void read_rows(int64_t first, int64_t count, uint8_t* out) const {
    strata::Hdf5Lock lock;
    Handle space(H5Dget_space(dataset_), H5Sclose);
    const std::array<hsize_t, 4> offset{static_cast<hsize_t>(first), 0, 0, 0};
    std::array<hsize_t, 4> extent{};
    H5Sget_simple_extent_dims(space, extent.data(), nullptr);
    extent[0] = static_cast<hsize_t>(count);
    Handle memory(H5Screate_simple(info_.rank, extent.data(), nullptr), H5Sclose);
    if (space < 0 || memory < 0 ||
        H5Sselect_hyperslab(space, H5S_SELECT_SET, offset.data(), nullptr, extent.data(), nullptr) <
            0 ||
        H5Dread(dataset_, info_.memory_type(), memory, space, H5P_DEFAULT, out) < 0) {
      const std::string reason = strata::hdf5_error_reason();
      throw strata::BadSample(fmt::format("dataset hdf5 {}: {}: cannot read samples {} to {}{}",
                                          info_.file, info_.images, first, first + count - 1,
                                          reason));
    }
  }

  // The decoded block `block` (rows block * block_rows_ ...), from the cache or read now. Called
  // with mutex_ held; evicts the least recently used blocks to stay within the budget.
  const std::vector<uint8_t>& cached_block(int64_t block) const {
    if (const auto found = where_.find(block); found != where_.end()) {
      lru_.splice(lru_.begin(), lru_, found->second);
      return found->second->second;
    }
    const int64_t first = block * block_rows_;
    const int64_t rows = std::min(block_rows_, info_.n - first);
    const uint64_t bytes = static_cast<uint64_t>(rows) * info_.sample_bytes();
    while (!lru_.empty() && held_ + bytes > budget_) {
      held_ -= lru_.back().second.size();
      where_.erase(lru_.back().first);
      lru_.pop_back();
    }
    std::vector<uint8_t> data(bytes);
    read_rows(first, rows, data.data());
    lru_.emplace_front(block, std::move(data));
    where_[block] = lru_.begin();
    held_ += bytes;
    return lru_.front().second;
  }

  ArrayInfo info_;
  uint64_t budget_;
  std::vector<uint8_t> whole_;  // the whole array, when it fits the budget
  Handle file_, dataset_;       // open while streaming
  int64_t block_rows_ = 0;      // rows of a cached block; 0: every sample read directly
  mutable std::mutex mutex_;
  using Blocks = std::list<std::pair<int64_t, std::vector<uint8_t>>>;
  mutable Blocks lru_;  // most recently used first
  mutable std::unordered_map<int64_t, Blocks::iterator> where_;
  mutable uint64_t held_ = 0;
};

// ---- configuration ----

// memory_budget: a byte count, or a number with KB, MB or GB (1 KB = 1024 bytes).
uint64_t parse_budget(const Config& config) {
  const auto node = config.find("memory_budget");
  if (!node) return uint64_t{1} << 30;
  const std::string text = node->as<std::string>();
  std::size_t used = 0;
  double value = -1;
  try {
    value = std::stod(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  std::string unit = text.substr(used);
  unit.erase(0, unit.find_first_not_of(' '));
  for (char& ch : unit) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
  const std::vector<std::pair<std::string, double>> units = {
      {"", 1}, {"B", 1}, {"KB", 1024.0}, {"MB", 1024.0 * 1024}, {"GB", 1024.0 * 1024 * 1024}};
  const auto unit_it = std::find_if(units.begin(), units.end(),
                                    [&](const auto& entry) { return entry.first == unit; });
  if (used == 0 || unit_it == units.end() || !(value >= 0) || value * unit_it->second > 1e18) {
    node->fail(
        fmt::format("expected a byte count or a size such as 512MB or 2GB (KB, MB, GB: "
                    "powers of 1024), found '{}'",
                    text));
  }
  return static_cast<uint64_t>(value * unit_it->second);
}

fs::path required_file(const Config& config, const char* key) {
  const fs::path path = config.get<std::string>(key);
  if (const std::string problem = strata::regular_file_problem(path); !problem.empty()) {
    config.fail_key(key, fmt::format("dataset file {} {}", path.string(), problem));
  }
  return path;
}

bool same_file(const fs::path& a, const fs::path& b) {
  std::error_code error;
  return fs::equivalent(a, b, error);
}

class Hdf5Dataset final : public strata::Dataset {
 public:
  explicit Hdf5Dataset(const Config& config) {
    const fs::path train = required_file(config, "train");
    const fs::path test = required_file(config, "test");
    const bool shared = same_file(train, test);
    const std::string train_group = config.get<std::string>("train_group", shared ? "train" : "/");
    const std::string test_group = config.get<std::string>("test_group", shared ? "test" : "/");
    Names names;
    names.images = config.get<std::string>("images", names.images);
    names.labels = config.get<std::string>("labels", names.labels);
    names.layout = config.get<std::string>("layout", names.layout);
    if (names.layout != "auto" && names.layout != "nchw" && names.layout != "nhwc") {
      config.fail_key("layout",
                      fmt::format("expected auto, nchw or nhwc, found '{}'", names.layout));
    }
    budget_ = parse_budget(config);
    std::vector<int64_t> train_labels, test_labels;
    train_ = inspect_split(train, train_group, names, "train_group", train_labels);
    test_ = inspect_split(test, test_group, names, "test_group", test_labels);
    if (test_.c != train_.c || test_.h != train_.h || test_.w != train_.w) {
      fail(
          "dataset hdf5 {}: {}: test images are [C, H, W] = [{}, {}, {}] but the train images "
          "({}:{}) are [{}, {}, {}]",
          test_.file, test_.images, test_.c, test_.h, test_.w, train_.file, train_.images, train_.c,
          train_.h, train_.w);
    }
    set_classes(config, train_labels, test_labels);
    train_.label_values = checked_labels(train_, train_labels);
    test_.label_values = checked_labels(test_, test_labels);
  }

  strata::Shape sample_shape() const override {
    return strata::Shape{train_.c, train_.h, train_.w};
  }
  int num_classes() const override { return classes_; }
  std::vector<std::string> class_names() const override { return class_names_; }

  std::shared_ptr<const strata::SplitReader> open(std::string_view split) override {
    if (split == "train") return std::make_shared<Hdf5Split>(train_, budget_);
    if (split == "test") return std::make_shared<Hdf5Split>(test_, budget_);
    fail("dataset hdf5: unknown split '{}'; the splits are 'train' and 'test'", split);
  }

 private:
  void set_classes(const Config& config, const std::vector<int64_t>& train,
                   const std::vector<int64_t>& test) {
    if (config.has("classes")) {
      classes_ = config.get<int>("classes");
      if (classes_ < 1)
        config.fail_key("classes", fmt::format("must be at least 1, got {}", classes_));
    } else {
      int64_t largest = 0;
      for (const auto* labels : {&train, &test}) {
        for (int64_t label : *labels) largest = std::max(largest, label);
      }
      if (largest >= (int64_t{1} << 24)) {
        fail(
            "dataset hdf5 {}: {}: the largest label is {}, more classes than Strata takes (2^24); "
            "labels must be 0 ... classes - 1",
            train_.file, train_.labels, largest);
      }
      classes_ = static_cast<int>(largest + 1);
    }
    if (auto node = config.find("class_names")) {
      class_names_ = node->as<std::vector<std::string>>();
      if (static_cast<int>(class_names_.size()) != classes_) {
        node->fail(fmt::format("gives {} names for {} classes", class_names_.size(), classes_));
      }
    }
  }

  std::vector<int32_t> checked_labels(const ArrayInfo& info, const std::vector<int64_t>& labels) {
    std::vector<int32_t> result(labels.size());
    for (std::size_t i = 0; i < labels.size(); ++i) {
      if (labels[i] < 0 || labels[i] >= classes_) {
        fail(
            "dataset hdf5 {}: {}: label {} at index {} is out of range for classes: {} (labels "
            "must be 0 ... {})",
            info.file, info.labels, labels[i], i, classes_, classes_ - 1);
      }
      result[i] = static_cast<int32_t>(labels[i]);
    }
    return result;
  }

  ArrayInfo train_, test_;
  uint64_t budget_ = 0;
  int classes_ = 0;
  std::vector<std::string> class_names_;
};

void register_all(strata::Registries& registries) { registries.datasets.add<Hdf5Dataset>("hdf5"); }

}  // namespace

STRATA_PLUGIN("hdf5", "1.0", register_all)
