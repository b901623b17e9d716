// datasets/augment/color_jitter.cpp: color_jitter, torchvision 0.14's ColorJitter (brightness,
// contrast, saturation; no hue) on float images in [0, 1].
//
//   color_jitter
//     keys: brightness, contrast, saturation (each 0 = off, the default as in torchvision):
//             a number b >= 0: the factor is drawn uniformly from [max(0, 1 - b), 1 + b];
//             a list [min, max] with 0 <= min <= max: the factor is drawn from [min, max].
//             As in torchvision, a range that is exactly [1, 1] is off (draws nothing).
//     augment(): draws a random order of the three adjustments (a Fisher-Yates shuffle of
//       (brightness, contrast, saturation): for i = 2, 1: swap i with rng() % (i + 1)), then the
//       factors of the enabled ones in the order brightness, contrast, saturation (a 53-bit
//       uniform from 2 draws each), then applies the enabled ones in the drawn order, each with
//       torchvision's tensor definition, in float32:
//         brightness f: x -> clamp(f * x, 0, 1)                       (a blend with black)
//         contrast f:   x -> clamp(f * x + (1 - f) * m, 0, 1), m the mean over the whole image of
//                       its grayscale (one value; for 1 channel, the mean of the image)
//         saturation f: x -> clamp(f * x + (1 - f) * gray, 0, 1), per pixel
//                       (the identity on a 1-channel image)
//       where gray = 0.2989 R + 0.587 G + 0.114 B.
//     apply(): the identity.
//     Images with 1 or 3 channels; other channel counts are an Error at setup when contrast or
//     saturation is on (brightness alone takes any). Output shape = input shape.
#include <fmt/format.h>

#include <algorithm>
#include <array>
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

constexpr float kRed = 0.2989f, kGreen = 0.587f, kBlue = 0.114f;

// A factor range, or nullopt (off).
std::optional<std::array<double, 2>> read_factor(const Config& config, std::string_view key) {
  const auto node = config.find(key);
  if (!node) return std::nullopt;
  std::array<double, 2> range{};
  if (node->is_sequence()) {
    const auto values = node->as<std::vector<double>>();
    if (values.size() != 2) {
      node->fail(
          fmt::format("expected a number or a list [min, max], found a list of {}", values.size()));
    }
    if (!(values[0] >= 0 && values[0] <= values[1] && std::isfinite(values[1]))) {
      node->fail(fmt::format("expected 0 <= min <= max, found [{}, {}]", values[0], values[1]));
    }
    range = {values[0], values[1]};
  } else {
    const double value = node->as<double>();
    if (!(value >= 0 && std::isfinite(value))) {
      node->fail(fmt::format("must be a non-negative number, found {}", value));
    }
    range = {std::max(0.0, 1.0 - value), 1.0 + value};
  }
  if (range[0] == 1.0 && range[1] == 1.0) return std::nullopt;
  return range;
}

// torchvision's _blend: clamp(f * x + (1 - f) * y, 0, 1), in float32.
inline float blend(float factor, float x, float other_term) {
  return std::clamp(factor * x + other_term, 0.0f, 1.0f);
}

class ColorJitter final : public Transform {
 public:
  explicit ColorJitter(const Config& config) : config_(config) {
    ranges_[kBrightness] = read_factor(config, "brightness");
    ranges_[kContrast] = read_factor(config, "contrast");
    ranges_[kSaturation] = read_factor(config, "saturation");
  }

  std::string_view type() const override { return "color_jitter"; }
  bool random() const override { return true; }

  void setup(const Shape& input) override {
    check_input_shape(type(), input);
    channels_ = input[0];
    if (channels_ != 1 && channels_ != 3) {
      const std::pair<int, const char*> needs_gray[] = {{kContrast, "contrast"},
                                                        {kSaturation, "saturation"}};
      for (const auto& [index, key] : needs_gray) {
        if (!ranges_[static_cast<std::size_t>(index)]) continue;
        config_.fail_key(key, fmt::format("needs images with 1 or 3 channels (grayscale or RGB), "
                                          "but they have {}",
                                          channels_));
      }
    }
  }

  void apply(Image& image, Image&) const override { check_channels(type(), image, channels_); }

  void augment(Image& image, Image&, Rng& rng) const override {
    check_channels(type(), image, channels_);
    std::array<int, 3> order{kBrightness, kContrast, kSaturation};
    for (int i = 2; i > 0; --i) {
      std::swap(order[static_cast<std::size_t>(i)],
                order[static_cast<std::size_t>(uniform_index(rng, i + 1))]);
    }
    std::array<float, 3> factors{};
    for (std::size_t k = 0; k < 3; ++k) {
      if (ranges_[k])
        factors[k] = static_cast<float>(uniform(rng, (*ranges_[k])[0], (*ranges_[k])[1]));
    }
    for (int k : order) {
      const auto index = static_cast<std::size_t>(k);
      if (!ranges_[index]) continue;
      if (k == kBrightness) adjust_brightness(image, factors[index]);
      if (k == kContrast) adjust_contrast(image, factors[index]);
      if (k == kSaturation) adjust_saturation(image, factors[index]);
    }
  }

 private:
  enum { kBrightness = 0, kContrast = 1, kSaturation = 2 };

  static void adjust_brightness(Image& image, float factor) {
    for (float& x : image.pixels) x = blend(factor, x, 0.0f);
  }

  static void adjust_contrast(Image& image, float factor) {
    const int64_t plane = image.plane_size();
    double sum = 0;
    if (image.channels == 3) {
      const float *r = image.plane(0), *g = image.plane(1), *b = image.plane(2);
      for (int64_t i = 0; i < plane; ++i) sum += kRed * r[i] + kGreen * g[i] + kBlue * b[i];
    } else {
      for (float x : image.pixels) sum += x;
    }
    const auto mean = static_cast<float>(sum / static_cast<double>(plane));
    const float other = (1.0f - factor) * mean;
    for (float& x : image.pixels) x = blend(factor, x, other);
  }

  static void adjust_saturation(Image& image, float factor) {
    if (image.channels == 1) return;
    const int64_t plane = image.plane_size();
    float *r = image.plane(0), *g = image.plane(1), *b = image.plane(2);
    const float keep = 1.0f - factor;
    for (int64_t i = 0; i < plane; ++i) {
      const float other = keep * (kRed * r[i] + kGreen * g[i] + kBlue * b[i]);
      r[i] = blend(factor, r[i], other);
      g[i] = blend(factor, g[i], other);
      b[i] = blend(factor, b[i], other);
    }
  }

  Config config_;  // for errors found at setup, which name the key
  std::array<std::optional<std::array<double, 2>>, 3> ranges_;
  int64_t channels_ = 0;
};

}  // namespace

void register_color(Registries& registries) {
  registries.transforms.add<ColorJitter>("color_jitter");
}

}  // namespace strata::augment
