// datasets/augment: random transforms for data augmentation.
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
//     [0, W + 2*padding - size_w], each drawn as rng() % (range + 1) (top first).
//     keys: padding (0; an integer or [vertical, horizontal], >= 0 and at most 2^31 - 1)
//           size (the image's [H, W]; an integer or [height, width], >= 1, at most the padded
//                 extent). Required when the images vary in size (input [C, 0, 0]).
//           fill (0.0): the padding value, in the units of the images at this point of the list
//                 (after `normalize`, 0 is the training mean).
//     apply(): a centre crop to `size` (top = (H - size_h) / 2, rounded down; the identity when
//     `size` is the image size). A size larger than the image is allowed only for training
//     (with enough padding): then apply() is an error naming the key.
//     Output shape [C, size_h, size_w].
//
//   hflip
//     Mirrors the image left-right (x -> W - 1 - x in every channel and row) with probability p:
//     flips when (rng() >> 8) * 2^-24 < p, a uniform draw in [0, 1) (one draw per sample, also
//     when p is 0 or 1).
//     keys: p (0.5, in [0, 1])
//     apply(): the identity. Any input shape; output shape = input shape.
//
// REQUIRES
//   setup(input shape) with a [C, H, W] shape (H = W = 0: sizes vary) before anything else.
// ENSURES
//   - random() is true; nothing to fit and state() is empty (nothing to checkpoint).
//   - apply() and augment() read only their arguments and the configuration: safe from many
//     threads. A transform that changes the size writes into `scratch` and swaps it with `image`
//     (no allocation once the buffers have grown).
#include <fmt/format.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "augment_common.hpp"
#include "strata/config.hpp"
#include "strata/dataset.hpp"
#include "strata/error.hpp"
#include "strata/plugin.hpp"
#include "strata/registry.hpp"

namespace strata::augment {
namespace {

class RandomCrop final : public Transform {
 public:
  explicit RandomCrop(const Config& config) : config_(config) {
    padding_ = read_pair(config, "padding", 0).value_or(Pair{});
    size_ = read_pair(config, "size", 1);
    fill_ = static_cast<float>(config.get<double>("fill", 0.0));
  }

  std::string_view type() const override { return "random_crop"; }
  bool random() const override { return true; }

  void setup(const Shape& input) override {
    check_input_shape(type(), input);
    if (varying(input) && !size_) {
      config_.fail(fmt::format("random_crop needs `size` when the images vary in size (input {})",
                               input.str()));
    }
    channels_ = input[0];
    crop_ = size_.value_or(Pair{input[1], input[2]});
    if (!varying(input)) check_fits(input[1], input[2]);
  }

  Shape output_shape(const Shape& input) const override {
    return Shape{input[0], crop_.vertical, crop_.horizontal};
  }

  void apply(Image& image, Image& scratch) const override {
    check_channels(type(), image, channels_);
    if (crop_.vertical == image.height && crop_.horizontal == image.width) return;
    if (crop_.vertical > image.height || crop_.horizontal > image.width) {
      config_.fail_key("size",
                       fmt::format("evaluation images get a centre crop, and a {}x{} crop is "
                                   "larger than the {}x{} image",
                                   crop_.vertical, crop_.horizontal, image.height, image.width));
    }
    const int64_t top = (image.height - crop_.vertical) / 2;
    const int64_t left = (image.width - crop_.horizontal) / 2;
    copy_window(image, top, left, crop_.vertical, crop_.horizontal, fill_, scratch);
    std::swap(image, scratch);
  }

  void augment(Image& image, Image& scratch, Rng& rng) const override {
    check_channels(type(), image, channels_);
    const int64_t height = image.height, width = image.width;
    check_fits(height, width);
    const int64_t range_y = height + 2 * padding_.vertical - crop_.vertical;
    const int64_t range_x = width + 2 * padding_.horizontal - crop_.horizontal;
    // Offsets of the window in the unpadded image (negative: starts in the padding).
    const int64_t top =
        static_cast<int64_t>(rng() % static_cast<uint32_t>(range_y + 1)) - padding_.vertical;
    const int64_t left =
        static_cast<int64_t>(rng() % static_cast<uint32_t>(range_x + 1)) - padding_.horizontal;
    copy_window(image, top, left, crop_.vertical, crop_.horizontal, fill_, scratch);
    std::swap(image, scratch);
  }

 private:
  void check_fits(int64_t height, int64_t width) const {
    if (crop_.vertical > height + 2 * padding_.vertical ||
        crop_.horizontal > width + 2 * padding_.horizontal) {
      config_.fail_key(
          "size", fmt::format("the crop {}x{} does not fit in the padded image {}x{} "
                              "(image {}x{}, padding {}x{})",
                              crop_.vertical, crop_.horizontal, height + 2 * padding_.vertical,
                              width + 2 * padding_.horizontal, height, width, padding_.vertical,
                              padding_.horizontal));
    }
  }

  Config config_;  // for errors found at setup, which name the key
  Pair padding_;
  std::optional<Pair> size_;
  float fill_ = 0;
  int64_t channels_ = 0;
  Pair crop_;
};

class HorizontalFlip final : public Transform {
 public:
  explicit HorizontalFlip(const Config& config) : p_(config.get<double>("p", 0.5)) {
    if (!(p_ >= 0.0 && p_ <= 1.0))
      config.fail_key("p", fmt::format("must be in [0, 1], found {}", p_));
  }

  std::string_view type() const override { return "hflip"; }
  bool random() const override { return true; }

  void setup(const Shape& input) override {
    check_input_shape(type(), input);
    channels_ = input[0];
  }
  void apply(Image& image, Image&) const override { check_channels(type(), image, channels_); }

  void augment(Image& image, Image&, Rng& rng) const override {
    check_channels(type(), image, channels_);
    const bool flip = static_cast<double>(rng() >> 8) * 0x1p-24 < p_;
    if (flip) flip_horizontally(image);
  }

 private:
  double p_;
  int64_t channels_ = 0;
};

}  // namespace

void copy_window(const Image& image, int64_t top, int64_t left, int64_t height, int64_t width,
                 float fill, Image& out) {
  out.resize(image.channels, height, width);
  // Columns of the window that fall inside the image: [x0, x1).
  const int64_t x0 = std::clamp<int64_t>(-left, 0, width);
  const int64_t x1 = std::clamp<int64_t>(image.width - left, x0, width);
  for (int64_t c = 0; c < image.channels; ++c) {
    const float* plane = image.plane(c);
    for (int64_t y = 0; y < height; ++y) {
      float* row = out.plane(c) + y * width;
      const int64_t source_y = top + y;
      if (source_y < 0 || source_y >= image.height) {
        std::fill(row, row + width, fill);
        continue;
      }
      std::fill(row, row + x0, fill);
      std::memcpy(row + x0, plane + source_y * image.width + left + x0, (x1 - x0) * sizeof(float));
      std::fill(row + x1, row + width, fill);
    }
  }
}

void flip_horizontally(Image& image) {
  const int64_t rows = image.channels * image.height, width = image.width;
  float* data = image.pixels.data();
  for (int64_t r = 0; r < rows; ++r) std::reverse(data + r * width, data + (r + 1) * width);
}

std::optional<Pair> read_pair(const Config& config, std::string_view key, int64_t minimum) {
  const auto pair = config.get_pair(key, minimum);
  if (!pair) return std::nullopt;
  return Pair{(*pair)[0], (*pair)[1]};
}

void check_input_shape(std::string_view type, const Shape& shape) {
  if (shape.rank() != 3 || shape[0] <= 0 || shape[1] < 0 || shape[2] < 0 ||
      ((shape[1] == 0) != (shape[2] == 0))) {
    fail(
        "transform {}: images must have shape [C, H, W] (or [C, 0, 0] when their size varies), "
        "got {}",
        type, shape.str());
  }
}

void check_channels(std::string_view type, const Image& image, int64_t channels) {
  if (image.channels != channels || image.height <= 0 || image.width <= 0) {
    fail("transform {}: got an image of shape {}, but setup() was for {} channels", type,
         image.shape().str(), channels);
  }
}

void register_augment(Registries& registries) {
  registries.transforms.add<RandomCrop>("random_crop");
  registries.transforms.add<HorizontalFlip>("hflip");
}

}  // namespace strata::augment

namespace {
void register_all(strata::Registries& registries) {
  strata::augment::register_augment(registries);
  strata::augment::register_resize(registries);
  strata::augment::register_color(registries);
}
}  // namespace

STRATA_PLUGIN("augment", "1.0", register_all)
