// strata/dataset.hpp: dataset readers and preprocessing transforms.
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "strata/tensor.hpp"

namespace strata {

// One split held in memory: images [N, C, H, W] as float32 and labels in [0, classes).
struct Split {
  Tensor images;
  std::vector<int32_t> labels;
};

class Dataset {
 public:
  virtual ~Dataset() = default;
  virtual Shape sample_shape() const = 0;  // [C, H, W]
  virtual int num_classes() const = 0;
  // Loads "train" or "test". Pixel values are scaled to [0, 1]. Missing, truncated or corrupt
  // files are Errors that name the file and the expected and actual sizes.
  virtual Split load(std::string_view split) = 0;
  // One name per class, index = label ("T-shirt/top", ...), or empty when the dataset has none.
  // Added with plugin API 2.
  virtual std::vector<std::string> class_names() const { return {}; }
};

// The rows the trainer uses, in one place so that every reader of a checkpoint (strata eval, the
// analysis API) sees exactly the split the trainer saw:
//   first_rows:        the first `limit` rows (all when limit <= 0 or >= N): train_limit/test_limit;
//   split_validation:  `validation` rows of `train` held out, chosen by shuffling the row indices
//                      with std::mt19937(seed ^ 0x9e3779b9) and taking the first `validation`;
//                      both parts keep the original row order. validation 0: val is empty.
Split first_rows(const Split& split, int64_t limit);
struct TrainValSplit {
  Split train, val;
};
TrainValSplit split_validation(const Split& train, int64_t validation, uint32_t seed);
// The rows (of a training split of `available` rows) that split_validation puts in each part, in
// order: what traces an evaluated row back to its dataset row.
struct TrainValRows {
  std::vector<int64_t> train, val;
};
TrainValRows split_validation_rows(int64_t available, int64_t validation, uint32_t seed);


using Rng = std::mt19937;  // the same generator as strata/layer.hpp's

// A step between the dataset and the model. Two kinds:
//   - deterministic (normalize; listed under data.preprocess): statistics fitted once on the
//     training split, then applied once to every split;
//   - random (random_crop, hflip; listed under data.augment): applied to training batches only,
//     with fresh random parameters drawn for every sample from an Rng the loader seeds from
//     (seed, epoch, sample index); evaluation images get apply(), the deterministic version
//     (identity for a flip, a centre crop for a crop).
class Transform {
 public:
  virtual ~Transform() = default;
  virtual std::string_view type() const = 0;
  // Allocates the statistics for images of `sample_shape` [C, H, W]; called before fit() or
  // before state() is filled from a checkpoint.
  virtual void setup(const Shape& sample_shape) = 0;
  // Computes statistics from training images [N, C, H, W].
  virtual void fit(const Tensor& train_images) = 0;
  // Applies the transform to images [N, C, H, W] in place (a transform whose output_shape()
  // differs from its input replaces `images` with a new tensor of [N, output_shape()]).
  virtual void apply(Tensor& images) const = 0;
  // The fitted statistics, saved in checkpoints ("mean", "std"); load by writing into them.
  virtual std::vector<NamedTensor> state() = 0;

  // ---- random transforms (data augmentation) ----
  // True for a transform that draws random parameters per sample and implements augment().
  virtual bool random() const { return false; }
  // The sample shape produced from `input` (setup()'s shape): `input` unless the transform crops.
  virtual Shape output_shape(const Shape& input) const { return input; }
  // Writes a randomly transformed copy of one sample `in` (setup()'s shape, contiguous) into `out`
  // (output_shape(), contiguous, not overlapping `in`), drawing only from `rng`. Called from
  // several threads at once on one object: it must not modify the transform.
  virtual void augment(const float* in, float* out, Rng& rng) const;
};
}  // namespace strata
