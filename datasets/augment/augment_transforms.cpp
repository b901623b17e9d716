// datasets/augment: random transforms for data augmentation (listed under `data.augment`).
//
// WHAT THESE OBJECTS REPRESENT
//   Per-sample random transforms of training images [C, H, W], the torchvision RandomCrop and
//   RandomHorizontalFlip. The training loader calls augment() once per sample with a generator
//   seeded from (seed, epoch, sample index), so a run draws the same images whatever the thread
//   count. Evaluation images (validation, test) get apply(): the deterministic counterpart.
//
//   random_crop
//     Pads the image by `padding` pixels on every side with the value `fill`, then cuts out a
//     window of `size` at a uniformly drawn position: top in [0, H + 2*padding - size_h], left in
//     [0, W + 2*padding - size_w], each drawn as rng() % (range + 1).
//     keys: padding (0; an integer or [vertical, horizontal], >= 0 and at most 2^31 - 1)
//           size (the image's [H, W]; an integer or [height, width], >= 1, at most the padded
//                 extent)
//           fill (0.0): the padding value, in the units of the images after data.preprocess
//                 (after `normalize`, 0 is the training mean).
//     apply(): a centre crop to `size` (top = (H - size_h) / 2, rounded down; the identity when
//     `size` is the image size). A size larger than the image is allowed only for training
//     (with enough padding): then apply() is an error naming the key.
//
//   hflip
//     Mirrors the image left-right (x -> W - 1 - x in every channel and row) with probability p:
//     flips when (rng() >> 8) * 2^-24 < p, a uniform draw in [0, 1).
//     keys: p (0.5, in [0, 1])
//     apply(): the identity.
//
// REQUIRES
//   setup(sample_shape) with a [C, H, W] shape before anything else.
// ENSURES
//   - random() is true; fit() does nothing and state() is empty (nothing to checkpoint).
//   - augment() reads only its arguments and the configuration: it is safe from many threads.
#include <fmt/format.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "strata/config.hpp"
#include "strata/dataset.hpp"
#include "strata/error.hpp"
#include "strata/plugin.hpp"
#include "strata/registry.hpp"

namespace {

using strata::Config;
using strata::fail;
using strata::Rng;
using strata::Shape;
using strata::Tensor;

struct Pair {
  int64_t vertical = 0, horizontal = 0;
};

// An integer or a list [vertical, horizontal], each in [minimum, 2^31 - 1] (Config::get_pair);
// nullopt when the key is absent.
std::optional<Pair> read_pair(const Config& config, std::string_view key, int64_t minimum) {
  const auto pair = config.get_pair(key, minimum);
  if (!pair) return std::nullopt;
  return Pair{(*pair)[0], (*pair)[1]};
}

void check_sample_shape(std::string_view type, const Shape& shape) {
  if (shape.rank() != 3 || shape.numel() <= 0) {
    fail("transform {}: samples must have shape [C, H, W] with positive extents, got {}", type,
         shape.str());
  }
}

void check_images(std::string_view type, const Tensor& images, const Shape& sample) {
  if (images.rank() != 4 || images.shape().without_batch() != sample) {
    fail("transform {}: expected images [N, {}, {}, {}], got {}", type, sample[0], sample[1],
         sample[2], images.shape().str());
  }
}

class RandomCrop final : public strata::Transform {
 public:
  explicit RandomCrop(const Config& config) : config_(config) {
    padding_ = read_pair(config, "padding", 0).value_or(Pair{});
    size_ = read_pair(config, "size", 1);
    fill_ = static_cast<float>(config.get<double>("fill", 0.0));
  }

  std::string_view type() const override { return "random_crop"; }
  bool random() const override { return true; }

  void setup(const Shape& sample_shape) override {
    check_sample_shape(type(), sample_shape);
    in_ = sample_shape;
    crop_ = size_.value_or(Pair{in_[1], in_[2]});
    if (crop_.vertical > in_[1] + 2 * padding_.vertical ||
        crop_.horizontal > in_[2] + 2 * padding_.horizontal) {
      config_.fail_key(
          "size", fmt::format("the crop {}x{} does not fit in the padded image {}x{} "
                              "(images {}x{}, padding {}x{})",
                              crop_.vertical, crop_.horizontal, in_[1] + 2 * padding_.vertical,
                              in_[2] + 2 * padding_.horizontal, in_[1], in_[2], padding_.vertical,
                              padding_.horizontal));
    }
  }

  Shape output_shape(const Shape& input) const override {
    return Shape{input[0], crop_.vertical, crop_.horizontal};
  }

  void fit(const Tensor&) override {}
  std::vector<strata::NamedTensor> state() override { return {}; }

  void apply(Tensor& images) const override {
    check_images(type(), images, in_);
    if (crop_.vertical == in_[1] && crop_.horizontal == in_[2]) return;
    if (crop_.vertical > in_[1] || crop_.horizontal > in_[2]) {
      config_.fail_key("size",
                       fmt::format("evaluation images get a centre crop, and a {}x{} crop is "
                                   "larger than the {}x{} images",
                                   crop_.vertical, crop_.horizontal, in_[1], in_[2]));
    }
    const int64_t n = images.dim(0);
    Tensor out(output_shape(in_).with_batch(n));
    const int64_t top = (in_[1] - crop_.vertical) / 2;
    const int64_t left = (in_[2] - crop_.horizontal) / 2;
    for (int64_t i = 0; i < n * in_[0]; ++i) {
      const float* plane = images.data() + i * in_[1] * in_[2];
      float* target = out.data() + i * crop_.vertical * crop_.horizontal;
      for (int64_t y = 0; y < crop_.vertical; ++y) {
        std::memcpy(target + y * crop_.horizontal, plane + (top + y) * in_[2] + left,
                    crop_.horizontal * sizeof(float));
      }
    }
    images = out;
  }

  void augment(const float* in, float* out, Rng& rng) const override {
    const int64_t height = in_[1], width = in_[2];
    const int64_t range_y = height + 2 * padding_.vertical - crop_.vertical;
    const int64_t range_x = width + 2 * padding_.horizontal - crop_.horizontal;
    // Offsets of the window in the unpadded image (negative: starts in the padding).
    const int64_t top =
        static_cast<int64_t>(rng() % static_cast<uint32_t>(range_y + 1)) - padding_.vertical;
    const int64_t left =
        static_cast<int64_t>(rng() % static_cast<uint32_t>(range_x + 1)) - padding_.horizontal;
    // Columns of the window that fall inside the image: [x0, x1).
    const int64_t x0 = std::clamp<int64_t>(-left, 0, crop_.horizontal);
    const int64_t x1 = std::clamp<int64_t>(width - left, x0, crop_.horizontal);
    for (int64_t c = 0; c < in_[0]; ++c) {
      const float* plane = in + c * height * width;
      for (int64_t y = 0; y < crop_.vertical; ++y) {
        float* row = out + (c * crop_.vertical + y) * crop_.horizontal;
        const int64_t source_y = top + y;
        if (source_y < 0 || source_y >= height) {
          std::fill(row, row + crop_.horizontal, fill_);
          continue;
        }
        std::fill(row, row + x0, fill_);
        std::memcpy(row + x0, plane + source_y * width + left + x0, (x1 - x0) * sizeof(float));
        std::fill(row + x1, row + crop_.horizontal, fill_);
      }
    }
  }

 private:
  Config config_;  // for errors found at setup, which name the key
  Pair padding_;
  std::optional<Pair> size_;
  float fill_ = 0;
  Shape in_;
  Pair crop_;
};

class HorizontalFlip final : public strata::Transform {
 public:
  explicit HorizontalFlip(const Config& config) : p_(config.get<double>("p", 0.5)) {
    if (!(p_ >= 0.0 && p_ <= 1.0))
      config.fail_key("p", fmt::format("must be in [0, 1], found {}", p_));
  }

  std::string_view type() const override { return "hflip"; }
  bool random() const override { return true; }

  void setup(const Shape& sample_shape) override {
    check_sample_shape(type(), sample_shape);
    in_ = sample_shape;
  }
  void fit(const Tensor&) override {}
  std::vector<strata::NamedTensor> state() override { return {}; }
  void apply(Tensor& images) const override { check_images(type(), images, in_); }

  void augment(const float* in, float* out, Rng& rng) const override {
    const bool flip = static_cast<double>(rng() >> 8) * 0x1p-24 < p_;
    const int64_t rows = in_[0] * in_[1], width = in_[2];
    if (!flip) {
      std::memcpy(out, in, rows * width * sizeof(float));
      return;
    }
    for (int64_t r = 0; r < rows; ++r) {
      std::reverse_copy(in + r * width, in + (r + 1) * width, out + r * width);
    }
  }

 private:
  double p_;
  Shape in_;
};

void register_all(strata::Registries& registries) {
  registries.transforms.add<RandomCrop>("random_crop");
  registries.transforms.add<HorizontalFlip>("hflip");
}

}  // namespace

STRATA_PLUGIN("augment", "1.0", register_all)
