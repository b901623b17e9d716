// datasets/augment/resize_transforms.cpp: resize, center_crop and random_resized_crop, with
// torchvision 0.14's definitions and defaults (transforms.Resize, CenterCrop, RandomResizedCrop).
//
// Resizing is PIL's antialiased BILINEAR, what torchvision does to PIL images and to tensors
// with antialias=True, through stb_image_resize (resample.cpp); measured against torchvision by
// tests/scripts/test_transforms_vs_torchvision.sh.
//
//   resize
//     keys: size: an integer S: the shorter side becomes S and the longer one
//                 int(S * long / short) (truncated, as torchvision computes it), keeping the
//                 aspect ratio; or a list [H, W]: exactly that size. Required, >= 1.
//           max_size (none; only with an integer size, > size): when the longer side would
//                 exceed it, the longer side becomes max_size and the shorter
//                 int(max_size * short / long), as torchvision.
//     Deterministic: augment() is apply(). An image already of the target size is unchanged.
//     Output shape: [C, H, W] for a list; for an integer, computed when the input shape is
//     fixed, else [C, 0, 0] (the size still varies with the aspect ratio).
//
//   center_crop
//     keys: size: an integer (a square) or [height, width]; required, >= 1.
//     Cuts out the centre window: top = int(round((H - h) / 2.)) with Python's round (halves to
//     even), the same for left. Where the crop is larger than the image, the image is first padded
//     with 0 as torchvision: (h - H) // 2 rows above, the rest below (the same for columns).
//     Deterministic. Output shape [C, h, w].
//
//   random_resized_crop
//     keys: size: an integer or [height, width]; required, >= 1.
//           scale ([0.08, 1.0]): the range of the crop's area as a fraction of the image's,
//                 0 < min <= max.
//           ratio ([3/4, 4/3]): the range of the crop's aspect ratio (width / height),
//                 0 < min <= max.
//           eval_resize (round(max(height, width) * 256 / 224), so 256 for 224): see apply().
//     augment(): torchvision's RandomResizedCrop.get_params, then crop and resize to `size`:
//       up to 10 attempts: area = H * W * uniform(scale), aspect = exp(uniform(log ratio));
//       w = round(sqrt(area * aspect)), h = round(sqrt(area / aspect)) (halves to even); when
//       0 < w <= W and 0 < h <= H, top = uniform integer in [0, H - h], left in [0, W - w], done.
//       After 10 failures the fallback: the central crop of the whole image clamped to the ratio
//       range (w = W, h = round(W / min ratio) when W / H < min ratio; h = H,
//       w = round(H * max ratio) when W / H > max ratio; else the whole image), top = (H - h) // 2,
//       left = (W - w) // 2. The crop is resized to `size` (read in place: resample.cpp copies
//       only the crop, interleaving its channels for stb).
//       Draws, in this order per attempt: area (2 draws of rng: a 53-bit uniform), aspect (2),
//       and on success top then left (1 each, rng() % (range + 1)).
//     apply() (evaluation): resize the shorter side to eval_resize, then center_crop to `size`:
//       the standard ImageNet evaluation (Resize(256), CenterCrop(224)).
//     Output shape [C, height, width].
//
// REQUIRES
//   setup(input shape) with [C, H, W] (or [C, 0, 0]) before anything else.
// ENSURES
//   Each writes the result into `scratch` and swaps it with `image`; no allocation once the
//   buffers (and resample.cpp's per-thread working block) have grown. Safe from many threads.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "augment_common.hpp"
#include "strata/config.hpp"
#include "strata/dataset.hpp"
#include "strata/error.hpp"
#include "strata/registry.hpp"

namespace strata::augment {
namespace {

// int(round(x)) with Python's round (halves to even; the default rounding mode).
int64_t round_half_even(double x) { return static_cast<int64_t>(std::nearbyint(x)); }

// torchvision's crop offset along one axis for a crop of `crop` from `size`: int(round((size -
// crop) / 2.)), or minus the padding in front when the crop is larger ((crop - size) // 2).
int64_t center_offset(int64_t size, int64_t crop) {
  if (crop > size) return -((crop - size) / 2);
  return round_half_even(static_cast<double>(size - crop) / 2.0);
}

// The centre crop of `image` to height x width (padding with 0 where larger), into `out`.
void center_crop(const Image& image, int64_t height, int64_t width, Image& out) {
  copy_window(image, center_offset(image.height, height), center_offset(image.width, width), height,
              width, 0.0f, out);
}

// The target size of resizing the shorter side of a height x width image to `shorter`
// (torchvision's _compute_resized_output_size); max_size 0 = none.
Pair shorter_side_size(int64_t height, int64_t width, int64_t shorter, int64_t max_size) {
  const int64_t short_side = std::min(height, width), long_side = std::max(height, width);
  int64_t new_short = shorter;
  // Python: int(requested_new_short * long / short), a true division of integers.
  auto new_long = static_cast<int64_t>(static_cast<double>(shorter * long_side) /
                                       static_cast<double>(short_side));
  if (max_size > 0 && new_long > max_size) {
    new_short = static_cast<int64_t>(static_cast<double>(max_size * new_short) /
                                     static_cast<double>(new_long));
    new_long = max_size;
  }
  // An extreme aspect ratio may round the shorter side to 0; torchvision would fail there.
  new_short = std::max<int64_t>(new_short, 1);
  return width <= height ? Pair{new_long, new_short} : Pair{new_short, new_long};
}

// Resizes the whole image to height x width into scratch and swaps (unchanged when equal).
void resize_whole(Image& image, Image& scratch, int64_t height, int64_t width) {
  if (image.height == height && image.width == width) return;
  resize_region(image, 0, 0, image.height, image.width, height, width, scratch);
  std::swap(image, scratch);
}

// A required `size`: an integer (a square) or [height, width].
Pair required_size(const Config& config) {
  const auto size = read_pair(config, "size", 1);
  if (!size) config.fail("missing required key 'size' (an integer or [height, width])");
  return *size;
}

// A range [min, max] with 0 < min <= max, or the default when absent.
std::array<double, 2> read_range(const Config& config, std::string_view key,
                                 std::array<double, 2> fallback) {
  const auto node = config.find(key);
  if (!node) return fallback;
  const auto values = node->as<std::vector<double>>();
  if (values.size() != 2) {
    node->fail(fmt::format("expected a list [min, max], found a list of {}", values.size()));
  }
  if (!(values[0] > 0 && values[0] <= values[1] && std::isfinite(values[1]))) {
    node->fail(fmt::format("expected 0 < min <= max, found [{}, {}]", values[0], values[1]));
  }
  return {values[0], values[1]};
}

class Resize final : public Transform {
 public:
  explicit Resize(const Config& config) {
    const auto node = config.find("size");
    if (!node) config.fail("missing required key 'size' (an integer or [height, width])");
    if (node->is_sequence()) {
      size_ = read_pair(config, "size", 1);
    } else {
      shorter_ = node->as<int64_t>();
      if (shorter_ < 1 || shorter_ > kMaxExtent) {
        node->fail(fmt::format("must be in [1, {}], found {}", kMaxExtent, shorter_));
      }
    }
    if (const auto max_size = config.find("max_size")) {
      if (size_) {
        max_size->fail("needs an integer size (the shorter side), but size is [height, width]");
      }
      max_size_ = max_size->as<int64_t>();
      if (max_size_ <= shorter_ || max_size_ > kMaxExtent) {
        max_size->fail(
            fmt::format("must be greater than size ({}), found {}", shorter_, max_size_));
      }
    }
  }

  std::string_view type() const override { return "resize"; }

  void setup(const Shape& input) override {
    check_input_shape(type(), input);
    channels_ = input[0];
  }

  Shape output_shape(const Shape& input) const override {
    if (size_) return Shape{input[0], size_->vertical, size_->horizontal};
    if (varying(input)) return Shape{input[0], 0, 0};
    const Pair out = shorter_side_size(input[1], input[2], shorter_, max_size_);
    return Shape{input[0], out.vertical, out.horizontal};
  }

  void apply(Image& image, Image& scratch) const override {
    check_channels(type(), image, channels_);
    const Pair out =
        size_ ? *size_ : shorter_side_size(image.height, image.width, shorter_, max_size_);
    resize_whole(image, scratch, out.vertical, out.horizontal);
  }

 private:
  std::optional<Pair> size_;  // [H, W], or
  int64_t shorter_ = 0;       // the shorter side
  int64_t max_size_ = 0;      // 0: none
  int64_t channels_ = 0;
};

class CenterCrop final : public Transform {
 public:
  explicit CenterCrop(const Config& config) : size_(required_size(config)) {}

  std::string_view type() const override { return "center_crop"; }

  void setup(const Shape& input) override {
    check_input_shape(type(), input);
    channels_ = input[0];
  }
  Shape output_shape(const Shape& input) const override {
    return Shape{input[0], size_.vertical, size_.horizontal};
  }

  void apply(Image& image, Image& scratch) const override {
    check_channels(type(), image, channels_);
    if (image.height == size_.vertical && image.width == size_.horizontal) return;
    center_crop(image, size_.vertical, size_.horizontal, scratch);
    std::swap(image, scratch);
  }

 private:
  Pair size_;
  int64_t channels_ = 0;
};

class RandomResizedCrop final : public Transform {
 public:
  explicit RandomResizedCrop(const Config& config)
      : size_(required_size(config)),
        scale_(read_range(config, "scale", {0.08, 1.0})),
        ratio_(read_range(config, "ratio", {3.0 / 4.0, 4.0 / 3.0})) {
    const int64_t larger = std::max(size_.vertical, size_.horizontal);
    eval_resize_ = config.get<int64_t>(
        "eval_resize", static_cast<int64_t>(std::lround(static_cast<double>(larger) * 256 / 224)));
    if (eval_resize_ < 1 || eval_resize_ > kMaxExtent) {
      config.fail_key("eval_resize",
                      fmt::format("must be in [1, {}], found {}", kMaxExtent, eval_resize_));
    }
    log_ratio_ = {std::log(ratio_[0]), std::log(ratio_[1])};
  }

  std::string_view type() const override { return "random_resized_crop"; }
  bool random() const override { return true; }

  void setup(const Shape& input) override {
    check_input_shape(type(), input);
    channels_ = input[0];
  }
  Shape output_shape(const Shape& input) const override {
    return Shape{input[0], size_.vertical, size_.horizontal};
  }

  void apply(Image& image, Image& scratch) const override {
    check_channels(type(), image, channels_);
    const Pair resized = shorter_side_size(image.height, image.width, eval_resize_, 0);
    resize_whole(image, scratch, resized.vertical, resized.horizontal);
    if (image.height == size_.vertical && image.width == size_.horizontal) return;
    center_crop(image, size_.vertical, size_.horizontal, scratch);
    std::swap(image, scratch);
  }

  void augment(Image& image, Image& scratch, Rng& rng) const override {
    check_channels(type(), image, channels_);
    const CropBox box = crop_box(image.height, image.width, rng);
    if (box.height == size_.vertical && box.width == size_.horizontal) {
      // torchvision's resize returns the crop unchanged when it already has the size.
      copy_window(image, box.top, box.left, box.height, box.width, 0.0f, scratch);
    } else {
      resize_region(image, box.top, box.left, box.height, box.width, size_.vertical,
                    size_.horizontal, scratch);
    }
    std::swap(image, scratch);
  }

 private:
  struct CropBox {
    int64_t top, left, height, width;
  };

  // torchvision 0.14's RandomResizedCrop.get_params, drawing from `rng`.
  CropBox crop_box(int64_t height, int64_t width, Rng& rng) const {
    const double area = static_cast<double>(height * width);
    for (int attempt = 0; attempt < 10; ++attempt) {
      const double target_area = area * uniform(rng, scale_[0], scale_[1]);
      const double aspect = std::exp(uniform(rng, log_ratio_[0], log_ratio_[1]));
      const int64_t w = round_half_even(std::sqrt(target_area * aspect));
      const int64_t h = round_half_even(std::sqrt(target_area / aspect));
      if (0 < w && w <= width && 0 < h && h <= height) {
        const int64_t top = uniform_index(rng, height - h + 1);
        const int64_t left = uniform_index(rng, width - w + 1);
        return {top, left, h, w};
      }
    }
    const double in_ratio = static_cast<double>(width) / static_cast<double>(height);
    int64_t w = width, h = height;
    if (in_ratio < ratio_[0]) {
      h = round_half_even(static_cast<double>(w) / ratio_[0]);
    } else if (in_ratio > ratio_[1]) {
      w = round_half_even(static_cast<double>(h) * ratio_[1]);
    }
    // The rounding cannot leave the image (h <= H since W / H < min ratio, likewise w), but an
    // extreme ratio could round to 0.
    h = std::clamp<int64_t>(h, 1, height);
    w = std::clamp<int64_t>(w, 1, width);
    return {(height - h) / 2, (width - w) / 2, h, w};
  }

  Pair size_;
  std::array<double, 2> scale_, ratio_, log_ratio_{};
  int64_t eval_resize_ = 0;
  int64_t channels_ = 0;
};

}  // namespace

void register_resize(Registries& registries) {
  registries.transforms.add<Resize>("resize");
  registries.transforms.add<CenterCrop>("center_crop");
  registries.transforms.add<RandomResizedCrop>("random_resized_crop");
}

}  // namespace strata::augment
