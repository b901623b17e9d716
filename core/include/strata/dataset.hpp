// strata/dataset.hpp: datasets that produce samples on demand, and the per-sample transforms.
//
// WHAT THESE OBJECTS REPRESENT (plugin API 3)
//   A Dataset is a reader's configuration; open("train") / open("test") gives a SplitReader: the
//   split's size, every label, and sample i decoded on demand, from any thread. Nothing requires a
//   split to fit in memory: the training loader asks only for the samples of the batches it is
//   about to use (strata/training/data_loader.hpp), so memory stays within a few batches.
//   Readers that do hold a split in memory (IDX, CIFAR-10, synthetic) derive from
//   InMemoryDataset and return a Split from load(), as before API 3.
//
//   A sample is an Image: float32 [C, H, W], values in [0, 1] as read. Image readers (image_folder)
//   give images of varying height and width; their sample_shape() is [C, 0, 0], and a transform
//   (resize to [H, W], center_crop, random_resized_crop) must give them one size before the model.
//
//   A Transform changes one sample at a time. The experiment lists them in order (data.transforms,
//   or the older data.preprocess followed by data.augment); training samples get augment() (random
//   for a random transform, drawing only from a generator seeded from (seed, epoch, sample)),
//   evaluation samples get apply(), the deterministic counterpart. A transform with statistics
//   (normalize) is fitted on a sample of the training split (data.fit_samples images) that has
//   passed through the transforms listed before it, and its statistics are saved in checkpoints.
//
// SHARDING
//   shard(order, rank, ranks) is the part of an epoch's order that rank `rank` of `ranks` reads:
//   order[rank], order[rank + ranks], ... Over all ranks every position is read exactly once, and
//   a rank reads nothing else.
#pragma once

#include <cstdint>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "strata/error.hpp"
#include "strata/tensor.hpp"

namespace strata {

class ExportContext;

// An allocator that leaves new elements uninitialized (default-initialized): a reader or a
// transform writes every pixel of an image it resizes, so zero-filling first would be wasted
// (it was a tenth of the loader's time on photos).
template <class T>
struct UninitializedAllocator : std::allocator<T> {
  template <class U>
  struct rebind {
    using other = UninitializedAllocator<U>;
  };
  UninitializedAllocator() = default;
  template <class U>
  UninitializedAllocator(const UninitializedAllocator<U>&) noexcept {}
  template <class U>
  void construct(U* p) noexcept(std::is_nothrow_default_constructible_v<U>) {
    ::new (static_cast<void*>(p)) U;
  }
  template <class U, class... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
};

// One image, float32 in planar order [C, H, W]. Buffers are reused between samples: resize()
// keeps the capacity, so a loader thread allocates only while its images grow. resize() leaves
// new pixels uninitialized: write them all.
struct Image {
  int64_t channels = 0, height = 0, width = 0;
  std::vector<float, UninitializedAllocator<float>> pixels;

  void resize(int64_t c, int64_t h, int64_t w) {
    channels = c;
    height = h;
    width = w;
    pixels.resize(static_cast<std::size_t>(c * h * w));
  }
  Shape shape() const { return Shape{channels, height, width}; }
  int64_t plane_size() const { return height * width; }
  float* plane(int64_t c) { return pixels.data() + c * height * width; }
  const float* plane(int64_t c) const { return pixels.data() + c * height * width; }
};

// A sample that cannot be decoded: a corrupt, truncated or zero-byte image, a file that is not an
// image, a colour layout the reader refuses. The message names the file (and the sample index).
// `data.on_bad_image: skip` skips exactly these; any other Error (an unreadable folder, a list
// naming a missing file, a bug) stops the run whatever on_bad_image says.
class BadSample : public Error {
 public:
  using Error::Error;
  ~BadSample() override;  // out of line: one type_info, so a plugin's throw is caught here
};

// One split of a dataset, read on demand. Every member is safe to call from many threads at once.
class SplitReader {
 public:
  virtual ~SplitReader() = default;
  virtual int64_t size() const = 0;
  // Every sample's label, in [0, classes). Held in memory: the loader, the validation split and
  // the label checks need them without decoding an image.
  virtual std::span<const int32_t> labels() const = 0;
  // Decodes sample `index` (0 <= index < size()) into `out`, resizing it. Values are in [0, 1].
  // Throws BadSample for a sample that cannot be decoded, naming it (describe()).
  virtual void read(int64_t index, Image& out) const = 0;
  // What sample `index` is, for messages: a file ("train/cat/0001.jpg") or "sample 17".
  virtual std::string describe(int64_t index) const;
};

// A whole split in memory: images [N, C, H, W] as float32 in [0, 1], labels in [0, classes).
struct Split {
  Tensor images;
  std::vector<int32_t> labels;
};

// A SplitReader over a Split in memory; read() copies one row.
class InMemorySplit final : public SplitReader {
 public:
  explicit InMemorySplit(Split split);
  int64_t size() const override { return static_cast<int64_t>(split_.labels.size()); }
  std::span<const int32_t> labels() const override { return split_.labels; }
  void read(int64_t index, Image& out) const override;
  const Split& split() const { return split_; }

 private:
  Split split_;
};

class Dataset {
 public:
  virtual ~Dataset() = default;
  // [C, H, W] of the samples read(); H and W are 0 when they vary from sample to sample.
  virtual Shape sample_shape() const = 0;
  virtual int num_classes() const = 0;
  // One name per class, index = label ("T-shirt/top", ...), or empty when the dataset has none.
  virtual std::vector<std::string> class_names() const { return {}; }
  // Opens "train" or "test": lists files, reads headers and labels, but decodes no image (an
  // in-memory reader loads its split here). Missing, truncated or corrupt files are Errors that
  // name the file and what was expected.
  virtual std::shared_ptr<const SplitReader> open(std::string_view split) = 0;
};

// A reader that holds each split in memory (IDX, CIFAR-10, synthetic): it implements load(), and
// open() wraps the Split in an InMemorySplit.
class InMemoryDataset : public Dataset {
 public:
  // Loads "train" or "test", pixel values scaled to [0, 1].
  virtual Split load(std::string_view split) = 0;
  std::shared_ptr<const SplitReader> open(std::string_view split) override;
};

// The rows of one split that a run uses (after train_limit, the validation hold-out, ...), and the
// split they come from.
struct SampleSet {
  std::string name;                           // "train", "validation", "test": for messages
  std::shared_ptr<const SplitReader> reader;  // the dataset split
  std::vector<int64_t> rows;                  // dataset rows, in the split's order
  int64_t size() const { return static_cast<int64_t>(rows.size()); }
};

// The positions of an epoch's `order` that rank `rank` of `ranks` reads: order[rank],
// order[rank + ranks], ... (0 <= rank < ranks). Shard sizes differ by at most one.
std::vector<int64_t> shard(std::span<const int64_t> order, int rank, int ranks);

// The rows of a training split of `available` rows that the validation split holds out
// (`validation` of them, chosen by shuffling the row indices with std::mt19937(seed ^ 0x9e3779b9)
// and taking the first `validation`) and the rows left for training; both in increasing order.
// One function, so that every reader of a checkpoint (strata eval, the analysis API) sees exactly
// the split the trainer saw.
struct TrainValRows {
  std::vector<int64_t> train, val;
};
TrainValRows split_validation_rows(int64_t available, int64_t validation, uint32_t seed);

using Rng = std::mt19937;  // the same generator as strata/layer.hpp's

// The images a transform is fitted on: a sample of the training split, each read and passed
// through the transforms listed before it (their deterministic apply()).
class FitImages {
 public:
  virtual ~FitImages() = default;
  virtual int64_t size() const = 0;
  // Image `i` (0 <= i < size()); safe to call from many threads at once. Returns false for an
  // image skipped as bad (data.on_bad_image: skip), which the fit leaves out.
  virtual bool read(int64_t i, Image& out) const = 0;
};

// A step between the dataset and the model, one sample at a time.
class Transform {
 public:
  virtual ~Transform() = default;
  virtual std::string_view type() const = 0;
  // Called once with the shape of the images this transform receives ([C, H, W]; H = W = 0 when
  // they vary in size), before fit(), apply() or loading state() from a checkpoint. Allocates the
  // statistics; refuses (Error) a shape it cannot take.
  virtual void setup(const Shape& input) = 0;
  // The shape it gives for `input` (setup()'s): `input` unless it crops or resizes.
  virtual Shape output_shape(const Shape& input) const { return input; }

  // The deterministic transform, what evaluation samples get: changes `image` in place, or writes
  // into `scratch` and swaps the two (a transform that changes the size). Called from many
  // threads at once on one object: it must not modify the transform.
  virtual void apply(Image& image, Image& scratch) const = 0;

  // ---- random transforms (data augmentation) ----
  virtual bool random() const { return false; }
  // What a training sample gets: as apply(), drawing random parameters only from `rng`.
  // The default is apply().
  virtual void augment(Image& image, Image& scratch, Rng& rng) const;

  // ---- fitted statistics (normalize) ----
  // True when the statistics come from fit() (not from the configuration).
  virtual bool needs_fit() const { return false; }
  virtual void fit(const FitImages& images);
  // The statistics, saved in checkpoints ("mean", "std"); loading writes into them.
  virtual std::vector<NamedTensor> state() { return {}; }

  // ---- export (strata/export.hpp) ----
  // Describes apply() on images of the model's input shape as ONNX nodes, for `strata export
  // --preprocess`; false (the default): no description (a transform whose apply() leaves such
  // images unchanged is then left out, any other is an Error).
  virtual bool export_to(ExportContext& context) const {
    (void)context;
    return false;
  }
};

}  // namespace strata
