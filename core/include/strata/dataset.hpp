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
};

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
