// datasets/augment/augment_common.hpp: what the augment plugin's source files share (internal to
// the plugin: its symbols are hidden).
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

#include "strata/config.hpp"
#include "strata/dataset.hpp"
#include "strata/registry.hpp"

namespace strata::augment {

struct Pair {
  int64_t vertical = 0, horizontal = 0;
};

// An integer or a list [vertical, horizontal], each in [minimum, 2^31 - 1] (Config::get_pair);
// nullopt when the key is absent.
std::optional<Pair> read_pair(const Config& config, std::string_view key, int64_t minimum);

// True for an input shape [C, 0, 0]: the images vary in size.
inline bool varying(const Shape& input) { return input[1] == 0 || input[2] == 0; }

// An Error unless `shape` is [C, H, W] with C > 0 and either H, W > 0 or H = W = 0.
void check_input_shape(std::string_view type, const Shape& shape);
// An Error unless `image` has `channels` channels and a positive height and width.
void check_channels(std::string_view type, const Image& image, int64_t channels);

// Mirrors every row of `image` in place.
void flip_horizontally(Image& image);

// The height x width window of `image` whose top-left corner is (top, left), into `out`; the
// parts of the window outside the image (negative offsets, or past the edge) are `fill`.
void copy_window(const Image& image, int64_t top, int64_t left, int64_t height, int64_t width,
                 float fill, Image& out);

// Resizes the height x width region at (top, left) of every channel of `in` to out_height x
// out_width into `out` (resample.cpp): PIL's antialiased BILINEAR (torchvision's resize with
// antialias), through stb_image_resize. The region must lie inside the image.
void resize_region(const Image& in, int64_t top, int64_t left, int64_t height, int64_t width,
                   int64_t out_height, int64_t out_width, Image& out);

// A uniform draw in [0, 1) with 53 random bits, from two draws of `rng`.
inline double uniform01(Rng& rng) {
  const uint32_t high = rng() >> 5, low = rng() >> 6;
  return (static_cast<double>(high) * 67108864.0 + static_cast<double>(low)) * 0x1p-53;
}
// A uniform draw in [low, high].
inline double uniform(Rng& rng, double low, double high) {
  return low + uniform01(rng) * (high - low);
}
// A uniform integer in [0, n) (1 <= n <= 2^31): rng() % n, as random_crop always drew.
inline int64_t uniform_index(Rng& rng, int64_t n) {
  return static_cast<int64_t>(rng() % static_cast<uint32_t>(n));
}

// Each source file registers its transforms.
void register_augment(Registries& registries);  // random_crop, hflip
void register_resize(Registries& registries);   // resize, center_crop, random_resized_crop
void register_color(Registries& registries);    // color_jitter
}  // namespace strata::augment
