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

// Each source file registers its transforms.
void register_augment(Registries& registries);  // random_crop, hflip
}  // namespace strata::augment
