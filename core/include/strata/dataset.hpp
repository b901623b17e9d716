// strata/dataset.hpp: dataset readers and preprocessing transforms.
#pragma once

#include <cstdint>
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

// A preprocessing step whose statistics come from the training split only.
class Transform {
 public:
  virtual ~Transform() = default;
  virtual std::string_view type() const = 0;
  // Allocates the statistics for images of `sample_shape` [C, H, W]; called before fit() or
  // before state() is filled from a checkpoint.
  virtual void setup(const Shape& sample_shape) = 0;
  // Computes statistics from training images [N, C, H, W].
  virtual void fit(const Tensor& train_images) = 0;
  // Applies the transform in place to images [N, C, H, W].
  virtual void apply(Tensor& images) const = 0;
  // The fitted statistics, saved in checkpoints ("mean", "std"); load by writing into them.
  virtual std::vector<NamedTensor> state() = 0;
};

}  // namespace strata
