// The per-sample transforms (datasets/normalize, datasets/augment): shapes, the normalize fit
// and its independence of the thread count, given statistics, the random transforms' draws and
// parameter ranges, and every configuration error. The comparison with torchvision's definitions
// on the same images is tests/scripts/test_transforms_vs_torchvision.sh.
#define BOOST_TEST_MODULE transforms
#include <tbb/task_arena.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "strata/dataset.hpp"
#include "test_support.hpp"

using strata::Image;
using strata::Rng;
using strata::Shape;
using strata::Tensor;
using strata::Transform;
using strata::test::error_of;
using strata::test::registries;
using strata::test::yaml;

namespace {

// A transform from `config`, every key read, set up for `input`.
std::shared_ptr<Transform> make(const std::string& config, const Shape& input) {
  const strata::Config parsed = yaml(config);
  auto transform = registries().transforms.create(parsed);
  parsed.check_unused();
  transform->setup(input);
  return transform;
}

// The message of creating and setting up the transform (which must fail).
std::string setup_error(const std::string& config, const Shape& input) {
  return error_of([&] { make(config, input); });
}

Image random_image(int64_t channels, int64_t height, int64_t width, std::mt19937& rng,
                   float low = 0.0f, float high = 1.0f) {
  Image image;
  image.resize(channels, height, width);
  std::uniform_real_distribution<float> dist(low, high);
  for (float& value : image.pixels) value = dist(rng);
  return image;
}

float max_abs_diff(const Image& a, const Image& b) {
  BOOST_REQUIRE(a.shape() == b.shape());
  float worst = 0;
  for (std::size_t i = 0; i < a.pixels.size(); ++i) {
    worst = std::max(worst, std::abs(a.pixels[i] - b.pixels[i]));
  }
  return worst;
}

float at(const Image& image, int64_t c, int64_t y, int64_t x) {
  return image.plane(c)[y * image.width + x];
}

// The window (top, left, height, width) of `image`, copied (inside the image).
Image window(const Image& image, int64_t top, int64_t left, int64_t height, int64_t width) {
  Image out;
  out.resize(image.channels, height, width);
  for (int64_t c = 0; c < image.channels; ++c) {
    for (int64_t y = 0; y < height; ++y) {
      std::memcpy(out.plane(c) + y * width, image.plane(c) + (top + y) * image.width + left,
                  width * sizeof(float));
    }
  }
  return out;
}

Image applied(const Transform& transform, Image image) {
  Image scratch;
  transform.apply(image, scratch);
  return image;
}

Image augmented(const Transform& transform, Image image, uint32_t seed) {
  Image scratch;
  Rng rng(seed);
  transform.augment(image, scratch, rng);
  return image;
}

// The statistic `name` of a transform's state.
Tensor state_of(Transform& transform, const std::string& name) {
  for (const auto& entry : transform.state()) {
    if (entry.name == name) return entry.tensor;
  }
  BOOST_FAIL("no state tensor named " << name);
  return Tensor();
}

// The documented draws (datasets/augment/augment_common.hpp), for the oracles below.
double uniform01(Rng& rng) {
  const uint32_t high = rng() >> 5, low = rng() >> 6;
  return (static_cast<double>(high) * 67108864.0 + static_cast<double>(low)) * 0x1p-53;
}
double uniform(Rng& rng, double low, double high) { return low + uniform01(rng) * (high - low); }

}  // namespace

// ---------------------------------------------------------------------------------------------
BOOST_AUTO_TEST_SUITE(shapes)

// Every transform on a fixed shape, on varying sizes ([C, 0, 0]) and on one channel: apply() and
// augment() give images of output_shape() (its fixed extents), with the input's channels.
BOOST_AUTO_TEST_CASE(every_transform_gives_its_output_shape) {
  const std::vector<std::string> configs = {
      "{type: normalize, mean: [0.5, 0.4, 0.3], std: [0.2, 0.3, 0.25]}",
      "{type: random_crop, size: [16, 20], padding: 2}",
      "{type: hflip}",
      "{type: resize, size: 24}",
      "{type: resize, size: 24, max_size: 30}",
      "{type: resize, size: [24, 30]}",
      "{type: center_crop, size: [20, 60]}",
      "{type: center_crop, size: 17}",
      "{type: random_resized_crop, size: 24}",
      "{type: random_resized_crop, size: [20, 28], scale: [0.5, 1.0]}",
      "{type: color_jitter, brightness: 0.4, contrast: 0.4, saturation: 0.4}",
  };
  std::mt19937 rng(1601);
  for (const int64_t channels : {3, 1}) {
    for (const bool varying : {false, true}) {
      const Shape input = varying ? Shape{channels, 0, 0} : Shape{channels, 37, 53};
      for (std::string config : configs) {
        if (channels == 1 && config.find("normalize") != std::string::npos) {
          config = "{type: normalize, mean: [0.5], std: [0.2]}";
        }
        BOOST_TEST_CONTEXT(config << " on " << input.str()) {
          auto transform = make(config, input);
          const Shape out = transform->output_shape(input);
          BOOST_TEST(out.rank() == 3u);
          BOOST_TEST(out[0] == channels);
          for (int trial = 0; trial < 6; ++trial) {
            const int64_t height = varying ? 16 + static_cast<int64_t>(rng() % 60) : 37;
            const int64_t width = varying ? 20 + static_cast<int64_t>(rng() % 60) : 53;
            const Image image = random_image(channels, height, width, rng);
            for (const Image& result :
                 {applied(*transform, image), augmented(*transform, image, rng())}) {
              BOOST_TEST(result.channels == channels);
              BOOST_TEST(result.pixels.size() ==
                         static_cast<std::size_t>(channels * result.height * result.width));
              if (out[1] > 0) {
                BOOST_TEST(result.height == out[1]);
                BOOST_TEST(result.width == out[2]);
              }
            }
          }
        }
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(fixed_and_varying_output_shapes) {
  BOOST_TEST(make("{type: resize, size: 24}", Shape{3, 0, 0})->output_shape(Shape{3, 0, 0}) ==
             (Shape{3, 0, 0}));
  BOOST_TEST(make("{type: resize, size: 24}", Shape{3, 37, 53})->output_shape(Shape{3, 37, 53}) ==
             (Shape{3, 24, 34}));
  BOOST_TEST(make("{type: resize, size: [5, 6]}", Shape{2, 0, 0})->output_shape(Shape{2, 0, 0}) ==
             (Shape{2, 5, 6}));
  BOOST_TEST(make("{type: center_crop, size: 7}", Shape{2, 0, 0})->output_shape(Shape{2, 0, 0}) ==
             (Shape{2, 7, 7}));
  BOOST_TEST(make("{type: random_resized_crop, size: [7, 9]}", Shape{3, 0, 0})
                 ->output_shape(Shape{3, 0, 0}) == (Shape{3, 7, 9}));
  BOOST_TEST(make("{type: random_crop, size: 5}", Shape{3, 0, 0})->output_shape(Shape{3, 0, 0}) ==
             (Shape{3, 5, 5}));
  BOOST_TEST(make("{type: hflip}", Shape{3, 0, 0})->output_shape(Shape{3, 0, 0}) ==
             (Shape{3, 0, 0}));
  BOOST_TEST(
      make("{type: color_jitter, brightness: 0.2}", Shape{3, 8, 9})->output_shape(Shape{3, 8, 9}) ==
      (Shape{3, 8, 9}));
}

// Which transforms are random (augment() draws) and which are deterministic.
BOOST_AUTO_TEST_CASE(random_or_deterministic) {
  const Shape input{3, 0, 0};
  for (const char* config :
       {"{type: random_crop, size: 4}", "{type: hflip}", "{type: random_resized_crop, size: 4}",
        "{type: color_jitter, brightness: 0.1}"}) {
    BOOST_TEST(make(config, input)->random(), config);
  }
  for (const char* config :
       {"{type: resize, size: 4}", "{type: center_crop, size: 4}", "{type: normalize}"}) {
    BOOST_TEST(!make(config, input)->random(), config);
  }
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------
BOOST_AUTO_TEST_SUITE(normalize)

namespace {

// Images held in memory, as the fit sees a sample of the training split.
class Images final : public strata::FitImages {
 public:
  std::vector<Image> images;
  std::vector<int64_t> skipped;  // indices read() reports as skipped bad images
  int64_t size() const override { return static_cast<int64_t>(images.size()); }
  bool read(int64_t i, Image& out) const override {
    if (std::find(skipped.begin(), skipped.end(), i) != skipped.end()) return false;
    const Image& source = images[static_cast<std::size_t>(i)];
    out.resize(source.channels, source.height, source.width);
    std::copy(source.pixels.begin(), source.pixels.end(), out.pixels.begin());
    return true;
  }
};

// `count` random images; channel c has values in [2c - 1, 2c - 1 + (0.5 + c)), plus a slope
// along the pixels, so the statistics are far from 0 and 1. Sizes vary unless `fixed`.
Images shifted_images(int64_t count, int64_t channels, bool fixed, std::mt19937& rng) {
  Images out;
  for (int64_t n = 0; n < count; ++n) {
    const int64_t height = fixed ? 5 : 3 + static_cast<int64_t>(rng() % 6);
    const int64_t width = fixed ? 7 : 4 + static_cast<int64_t>(rng() % 5);
    Image image = random_image(channels, height, width, rng);
    for (int64_t c = 0; c < channels; ++c) {
      for (int64_t i = 0; i < image.plane_size(); ++i) {
        float& value = image.plane(c)[i];
        value = value * (0.5f + static_cast<float>(c)) + 2.0f * static_cast<float>(c) - 1.0f +
                0.01f * static_cast<float>(i);
      }
    }
    out.images.push_back(std::move(image));
  }
  return out;
}

// The straightforward computation: two passes in double over every value of each statistic.
struct Reference {
  std::vector<double> mean, std;
};
Reference reference(const Images& images, bool per_pixel) {
  const Image& first = images.images.front();
  const std::size_t stats =
      static_cast<std::size_t>(per_pixel ? first.channels * first.plane_size() : first.channels);
  std::vector<double> sum(stats, 0.0), squares(stats, 0.0), count(stats, 0.0);
  auto index = [&](int64_t c, int64_t i, const Image& image) {
    return static_cast<std::size_t>(per_pixel ? c * image.plane_size() + i : c);
  };
  for (const Image& image : images.images)
    for (int64_t c = 0; c < image.channels; ++c)
      for (int64_t i = 0; i < image.plane_size(); ++i) {
        sum[index(c, i, image)] += image.plane(c)[i];
        count[index(c, i, image)] += 1;
      }
  Reference r{std::vector<double>(stats), std::vector<double>(stats)};
  for (std::size_t s = 0; s < stats; ++s) r.mean[s] = sum[s] / count[s];
  for (const Image& image : images.images)
    for (int64_t c = 0; c < image.channels; ++c)
      for (int64_t i = 0; i < image.plane_size(); ++i) {
        const double d = image.plane(c)[i] - r.mean[index(c, i, image)];
        squares[index(c, i, image)] += d * d;
      }
  for (std::size_t s = 0; s < stats; ++s) r.std[s] = std::sqrt(squares[s] / count[s]);
  return r;
}

// Fits inside a task arena of `threads` threads.
void fit_with_threads(Transform& transform, const Images& images, int threads) {
  tbb::task_arena arena(threads);
  arena.execute([&] { transform.fit(images); });
}

void check_fit(bool per_pixel, bool divide) {
  std::mt19937 rng(per_pixel ? 1611 : 1612);
  // 300 images: 5 chunks of 64, the last one partial.
  const Images train = shifted_images(300, 3, per_pixel, rng);
  const std::string config = fmt::format("{{type: normalize, per: {}, scale: {}}}",
                                         per_pixel ? "pixel" : "channel", divide ? "std" : "none");
  const Shape input = per_pixel ? Shape{3, 5, 7} : Shape{3, 0, 0};
  auto one = make(config, input);
  auto two = make(config, input);
  BOOST_TEST(one->needs_fit());
  fit_with_threads(*one, train, 1);
  fit_with_threads(*two, train, 2);

  const Reference expected = reference(train, per_pixel);
  const Tensor mean = state_of(*one, "mean"), std = state_of(*one, "std");
  BOOST_TEST(mean.shape() == (per_pixel ? Shape{3, 5, 7} : Shape{3}));
  BOOST_TEST(std.shape() == mean.shape());
  for (std::size_t s = 0; s < expected.mean.size(); ++s) {
    // Both are double computations rounded to float: they differ in summation order only.
    BOOST_TEST(std::abs(mean.data()[s] - expected.mean[s]) <= 1e-6 * std::abs(expected.mean[s]));
    if (divide) {
      BOOST_TEST(std::abs(std.data()[s] - expected.std[s]) <= 1e-6 * expected.std[s]);
    } else {
      BOOST_TEST(std.data()[s] == 1.0f);
    }
  }
  // Bit-identical whatever the thread count.
  const Tensor mean2 = state_of(*two, "mean"), std2 = state_of(*two, "std");
  BOOST_TEST(std::memcmp(mean.data(), mean2.data(), mean.numel() * sizeof(float)) == 0);
  BOOST_TEST(std::memcmp(std.data(), std2.data(), std.numel() * sizeof(float)) == 0);

  // apply(): (x - mean) / std in float32, on an image the fit did not see.
  const Image test = shifted_images(1, 3, true, rng).images[0];
  const Image out = applied(*one, test);
  for (int64_t c = 0; c < 3; ++c) {
    for (int64_t i = 0; i < test.plane_size(); ++i) {
      const std::size_t s = static_cast<std::size_t>(per_pixel ? c * test.plane_size() + i : c);
      BOOST_TEST(out.plane(c)[i] == (test.plane(c)[i] - mean.data()[s]) / std.data()[s]);
    }
  }
}

}  // namespace

BOOST_AUTO_TEST_CASE(per_channel_on_varying_sizes) { check_fit(false, true); }
BOOST_AUTO_TEST_CASE(per_pixel) { check_fit(true, true); }
BOOST_AUTO_TEST_CASE(per_channel_mean_only) { check_fit(false, false); }
BOOST_AUTO_TEST_CASE(per_pixel_mean_only) { check_fit(true, false); }

// Many chunks (more than one wave of 16): still equal to the reference and thread-independent.
BOOST_AUTO_TEST_CASE(many_chunks) {
  std::mt19937 rng(1613);
  const Images train = shifted_images(64 * 17 + 5, 2, false, rng);
  auto one = make("{type: normalize}", Shape{2, 0, 0});
  auto two = make("{type: normalize}", Shape{2, 0, 0});
  fit_with_threads(*one, train, 1);
  fit_with_threads(*two, train, 2);
  const Reference expected = reference(train, false);
  for (std::size_t c = 0; c < 2; ++c) {
    BOOST_TEST(std::abs(state_of(*one, "mean").data()[c] - expected.mean[c]) <=
               1e-6 * std::abs(expected.mean[c]));
    BOOST_TEST(std::abs(state_of(*one, "std").data()[c] - expected.std[c]) <=
               1e-6 * expected.std[c]);
    BOOST_TEST(state_of(*one, "mean").data()[c] == state_of(*two, "mean").data()[c]);
    BOOST_TEST(state_of(*one, "std").data()[c] == state_of(*two, "std").data()[c]);
  }
}

// Images the reader skipped as bad (data.on_bad_image: skip) are left out of the statistics: the
// fit equals the fit on the others; when every image is skipped, the fit is an error.
BOOST_AUTO_TEST_CASE(skipped_images_are_left_out) {
  std::mt19937 rng(1614);
  Images train = shifted_images(150, 3, false, rng);
  Images kept;
  for (int64_t i = 0; i < train.size(); ++i) {
    if (rng() % 4 == 0) {
      train.skipped.push_back(i);
    } else {
      kept.images.push_back(train.images[static_cast<std::size_t>(i)]);
    }
  }
  auto with_skips = make("{type: normalize}", Shape{3, 0, 0});
  auto reference_fit = make("{type: normalize}", Shape{3, 0, 0});
  fit_with_threads(*with_skips, train, 2);
  fit_with_threads(*reference_fit, kept, 2);
  const Reference expected = reference(kept, false);
  for (std::size_t c = 0; c < 3; ++c) {
    BOOST_TEST(std::abs(state_of(*with_skips, "mean").data()[c] - expected.mean[c]) <=
               1e-6 * std::abs(expected.mean[c]));
    BOOST_TEST(std::abs(state_of(*with_skips, "std").data()[c] - expected.std[c]) <=
               1e-6 * expected.std[c]);
  }
  Images none = shifted_images(3, 3, false, rng);
  none.skipped = {0, 1, 2};
  auto empty = make("{type: normalize}", Shape{3, 0, 0});
  STRATA_CHECK_CONTAINS(error_of([&] { empty->fit(none); }),
                        "every one of the 3 images to fit it on was skipped as bad");
}

BOOST_AUTO_TEST_CASE(constant_pixel_is_only_centred) {
  std::mt19937 rng(1614);
  Images train = shifted_images(25, 1, true, rng);
  const float constant = std::uniform_real_distribution<float>(0.2f, 0.8f)(rng);
  for (Image& image : train.images) image.pixels[5] = constant;
  auto transform = make("{type: normalize, per: pixel}", Shape{1, 5, 7});
  transform->fit(train);
  BOOST_TEST(state_of(*transform, "std").data()[5] == 1.0f);
  BOOST_TEST(state_of(*transform, "mean").data()[5] == constant);
  const Image test = random_image(1, 5, 7, rng);
  BOOST_TEST(applied(*transform, test).pixels[5] == test.pixels[5] - constant);
}

// A second transform loaded through state() behaves exactly as the fitted one.
BOOST_AUTO_TEST_CASE(state_round_trip) {
  std::mt19937 rng(1615);
  const Images train = shifted_images(40, 2, true, rng);
  auto fitted = make("{type: normalize, per: pixel}", Shape{2, 5, 7});
  fitted->fit(train);
  auto loaded = make("{type: normalize, per: pixel}", Shape{2, 5, 7});
  auto target = loaded->state();
  for (const auto& entry : fitted->state()) {
    for (auto& slot : target) {
      if (slot.name == entry.name) slot.tensor.copy_from(entry.tensor);
    }
  }
  const Image test = shifted_images(1, 2, true, rng).images[0];
  BOOST_TEST(max_abs_diff(applied(*fitted, test), applied(*loaded, test)) == 0.0f);
  BOOST_TEST(max_abs_diff(applied(*fitted, test), test) > 0.1f);
}

BOOST_AUTO_TEST_CASE(given_statistics) {
  std::mt19937 rng(1616);
  auto given = make("{type: normalize, mean: [0.25, 0.5], std: [0.5, 0.125]}", Shape{2, 0, 0});
  BOOST_TEST(!given->needs_fit());
  BOOST_TEST(state_of(*given, "mean").shape() == Shape{2});
  BOOST_TEST(state_of(*given, "mean").data()[1] == 0.5f);
  BOOST_TEST(state_of(*given, "std").data()[0] == 0.5f);
  const Image image = random_image(2, 6, 9, rng);
  const Image out = applied(*given, image);
  for (int64_t i = 0; i < image.plane_size(); ++i) {
    BOOST_TEST(out.plane(0)[i] == (image.plane(0)[i] - 0.25f) / 0.5f);
    BOOST_TEST(out.plane(1)[i] == (image.plane(1)[i] - 0.5f) / 0.125f);
  }
  STRATA_CHECK_CONTAINS(error_of([&] { given->fit(Images{}); }), "the statistics are given");

  auto imagenet = make("{type: normalize, preset: imagenet}", Shape{3, 224, 224});
  BOOST_TEST(!imagenet->needs_fit());
  const std::array<float, 3> mean{0.485f, 0.456f, 0.406f}, std{0.229f, 0.224f, 0.225f};
  for (std::size_t c = 0; c < 3; ++c) {
    BOOST_TEST(state_of(*imagenet, "mean").data()[c] == mean[c]);
    BOOST_TEST(state_of(*imagenet, "std").data()[c] == std[c]);
  }
}

BOOST_AUTO_TEST_CASE(errors) {
  std::mt19937 rng(1617);
  STRATA_CHECK_CONTAINS(
      error_of([] { registries().transforms.create(yaml("{type: normalize}"))->fit(Images{}); }),
      "fit() called before setup()");
  auto transform = make("{type: normalize}", Shape{3, 0, 0});
  STRATA_CHECK_CONTAINS(error_of([&] { transform->fit(Images{}); }), "at least one");
  Images wrong_channels;
  wrong_channels.images.push_back(random_image(2, 4, 4, rng));
  STRATA_CHECK_CONTAINS(error_of([&] { transform->fit(wrong_channels); }),
                        "fit() got an image of shape [2, 4, 4]");
  STRATA_CHECK_CONTAINS(error_of([&] { applied(*transform, wrong_channels.images[0]); }),
                        "apply() got an image of shape [2, 4, 4]");
  auto per_pixel = make("{type: normalize, per: pixel}", Shape{1, 4, 4});
  STRATA_CHECK_CONTAINS(error_of([&] { applied(*per_pixel, random_image(1, 4, 5, rng)); }),
                        "images of shape [1, 4, 4]");
  // A checkpoint holding a zero std is refused when applied.
  auto loaded = make("{type: normalize}", Shape{1, 0, 0});
  state_of(*loaded, "std").data()[0] = 0.0f;
  STRATA_CHECK_CONTAINS(error_of([&] { applied(*loaded, random_image(1, 2, 2, rng)); }),
                        "std[0] is 0");

  const std::string varying = setup_error("{type: normalize, per: pixel}", Shape{3, 0, 0});
  STRATA_CHECK_CONTAINS(varying, "per: statistics per pixel need images of one size");
  STRATA_CHECK_CONTAINS(varying, "resize or crop");
  STRATA_CHECK_CONTAINS(setup_error("{type: normalize, per: pixle}", Shape{3, 0, 0}),
                        "did you mean 'pixel'?");
  STRATA_CHECK_CONTAINS(setup_error("{type: normalize, scale: unit}", Shape{3, 0, 0}),
                        "scale: unknown value 'unit'");
  STRATA_CHECK_CONTAINS(setup_error("{type: normalize, epsilon: 0}", Shape{3, 0, 0}),
                        "epsilon: must be positive");
  STRATA_CHECK_CONTAINS(setup_error("{type: normalize, mean: [0.5, 0.5]}", Shape{2, 0, 0}),
                        "`mean` is given without `std`");
  STRATA_CHECK_CONTAINS(setup_error("{type: normalize, std: [0.5, 0.5]}", Shape{2, 0, 0}),
                        "`std` is given without `mean`");
  const std::string length =
      setup_error("{type: normalize, mean: [0.5, 0.5], std: [0.2, 0.2]}", Shape{3, 0, 0});
  STRATA_CHECK_CONTAINS(length, "mean: gives statistics for 2 channels, but the images have 3");
  STRATA_CHECK_CONTAINS(setup_error("{type: normalize, preset: imagenet}", Shape{1, 0, 0}),
                        "preset: gives statistics for 3 channels, but the images have 1");
  STRATA_CHECK_CONTAINS(
      setup_error("{type: normalize, mean: [0.5, 0.5], std: [0.2]}", Shape{2, 0, 0}),
      "std: has 1 values, but mean has 2");
  STRATA_CHECK_CONTAINS(
      setup_error("{type: normalize, mean: [0.5, 0.5], std: [0.2, 0]}", Shape{2, 0, 0}),
      "std: std[1] is 0; every std must be positive");
  STRATA_CHECK_CONTAINS(setup_error("{type: normalize, mean: [0.5], std: [-1]}", Shape{1, 0, 0}),
                        "std[0] is -1");
  STRATA_CHECK_CONTAINS(setup_error("{type: normalize, preset: imagenett}", Shape{3, 0, 0}),
                        "preset: unknown value 'imagenett'");
  STRATA_CHECK_CONTAINS(
      setup_error("{type: normalize, preset: imagenet, mean: [0, 0, 0]}", Shape{3, 0, 0}),
      "mean: is given twice");
  STRATA_CHECK_CONTAINS(
      setup_error("{type: normalize, preset: imagenet, per: pixel}", Shape{3, 0, 0}),
      "per: describes fitting the statistics, but they are given");
  STRATA_CHECK_CONTAINS(setup_error("{type: normalize, mean: 0.5, std: 0.2}", Shape{1, 0, 0}),
                        "mean: expected a list");
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------
BOOST_AUTO_TEST_SUITE(random_crop_and_hflip)

BOOST_AUTO_TEST_CASE(hflip_mirrors_every_row_or_keeps_the_image) {
  std::mt19937 data_rng(1621);
  const Image image = random_image(3, 4, 5, data_rng);
  const Image flipped = augmented(*make("{type: hflip, p: 1}", Shape{3, 4, 5}), image, 1);
  for (int64_t c = 0; c < 3; ++c)
    for (int64_t y = 0; y < 4; ++y)
      for (int64_t x = 0; x < 5; ++x) BOOST_TEST(at(flipped, c, y, x) == at(image, c, y, 4 - x));
  BOOST_TEST(max_abs_diff(augmented(*make("{type: hflip, p: 0}", Shape{3, 4, 5}), image, 1),
                          image) == 0.0f);
  auto half = make("{type: hflip}", Shape{3, 0, 0});
  BOOST_TEST(max_abs_diff(applied(*half, image), image) == 0.0f);  // evaluation: identity
  int flips = 0;
  for (uint32_t seed = 0; seed < 1000; ++seed) {
    flips += augmented(*half, image, seed).pixels[0] != image.pixels[0];
  }
  BOOST_TEST(flips > 420);
  BOOST_TEST(flips < 580);
  STRATA_CHECK_CONTAINS(setup_error("{type: hflip, p: 1.5}", Shape{3, 0, 0}),
                        "p: must be in [0, 1], found 1.5");
}

// The crop is the window of the fill-padded image at the documented offsets (top then left,
// rng() % (range + 1)), every offset in range is reached; on a fixed and on a varying input.
BOOST_AUTO_TEST_CASE(random_crop_cuts_the_padded_image_at_the_drawn_offset) {
  std::mt19937 data_rng(1622);
  const Image image = random_image(2, 6, 7, data_rng, 1.0f, 2.0f);
  for (const Shape& input : {Shape{2, 6, 7}, Shape{2, 0, 0}}) {
    auto crop = make("{type: random_crop, padding: 2, size: [5, 6], fill: -3}", input);
    BOOST_TEST(crop->output_shape(input) == (Shape{2, 5, 6}));
    std::set<std::pair<int64_t, int64_t>> offsets;
    for (uint32_t seed = 0; seed < 400; ++seed) {
      Rng replay(seed);
      const int64_t top = static_cast<int64_t>(replay() % (6 + 4 - 5 + 1)) - 2;
      const int64_t left = static_cast<int64_t>(replay() % (7 + 4 - 6 + 1)) - 2;
      offsets.insert({top, left});
      const Image out = augmented(*crop, image, seed);
      BOOST_REQUIRE(out.shape() == (Shape{2, 5, 6}));
      for (int64_t c = 0; c < 2; ++c)
        for (int64_t y = 0; y < 5; ++y)
          for (int64_t x = 0; x < 6; ++x) {
            const int64_t sy = top + y, sx = left + x;
            const float expected =
                sy >= 0 && sy < 6 && sx >= 0 && sx < 7 ? at(image, c, sy, sx) : -3.0f;
            BOOST_REQUIRE(at(out, c, y, x) == expected);
          }
    }
    BOOST_TEST(offsets.size() == 6u * 6u);  // tops -2..3, lefts -2..3
  }
}

BOOST_AUTO_TEST_CASE(random_crop_centre_crops_evaluation_images) {
  std::mt19937 data_rng(1623);
  const Image image = random_image(1, 6, 6, data_rng);
  const Image out = applied(*make("{type: random_crop, size: 3}", Shape{1, 6, 6}), image);
  BOOST_REQUIRE(out.shape() == (Shape{1, 3, 3}));
  for (int64_t y = 0; y < 3; ++y)
    for (int64_t x = 0; x < 3; ++x) BOOST_TEST(at(out, 0, y, x) == at(image, 0, y + 1, x + 1));
  // The image's own size (the default) with padding: evaluation images are untouched.
  BOOST_TEST(max_abs_diff(applied(*make("{type: random_crop, padding: 4}", Shape{1, 6, 6}), image),
                          image) == 0.0f);
  // A crop larger than the image, allowed for training with padding, is refused at evaluation.
  auto larger = make("{type: random_crop, size: 7, padding: 1}", Shape{1, 6, 6});
  BOOST_TEST(augmented(*larger, image, 3).shape() == (Shape{1, 7, 7}));
  STRATA_CHECK_CONTAINS(error_of([&] { applied(*larger, image); }),
                        "size: evaluation images get a centre crop");

  const std::string too_big =
      setup_error("{type: random_crop, padding: 1, size: 9}", Shape{1, 6, 6});
  STRATA_CHECK_CONTAINS(too_big, "size: the crop 9x9 does not fit in the padded image 8x8");
  // Varying sizes: `size` is required, and an image too small for it is refused when it comes.
  STRATA_CHECK_CONTAINS(setup_error("{type: random_crop, padding: 2}", Shape{1, 0, 0}),
                        "random_crop needs `size` when the images vary in size");
  auto varying = make("{type: random_crop, size: 8}", Shape{1, 0, 0});
  STRATA_CHECK_CONTAINS(error_of([&] { augmented(*varying, image, 1); }),
                        "the crop 8x8 does not fit in the padded image 6x6");
  STRATA_CHECK_CONTAINS(
      setup_error("{type: random_crop, padding: 4611686018427387904}", Shape{1, 6, 6}),
      "padding: must be at most 2147483647 (2^31 - 1), found 4611686018427387904");
  STRATA_CHECK_CONTAINS(setup_error("{type: random_crop, size: [2, 3, 4]}", Shape{1, 6, 6}),
                        "size: expected an integer or a list [height, width], found a list of 3");
  STRATA_CHECK_CONTAINS(error_of([&] { applied(*varying, random_image(2, 9, 9, data_rng)); }),
                        "setup() was for 1 channels");
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------
BOOST_AUTO_TEST_SUITE(resize_and_crops)

// torchvision's sizes: the shorter side to S, the longer int(S * long / short); max_size caps
// the longer side (the shorter becomes int(max_size * short / long)).
BOOST_AUTO_TEST_CASE(resize_sizes) {
  std::mt19937 rng(1631);
  auto resize = make("{type: resize, size: 16}", Shape{1, 0, 0});
  auto capped = make("{type: resize, size: 16, max_size: 20}", Shape{1, 0, 0});
  for (int trial = 0; trial < 40; ++trial) {
    const int64_t height = 5 + static_cast<int64_t>(rng() % 60);
    const int64_t width = 5 + static_cast<int64_t>(rng() % 60);
    const Image image = random_image(1, height, width, rng);
    const int64_t shorter = std::min(height, width), longer = std::max(height, width);
    const auto expected_long =
        static_cast<int64_t>(16.0 * static_cast<double>(longer) / static_cast<double>(shorter));
    const Image out = applied(*resize, image);
    BOOST_TEST(std::min(out.height, out.width) == 16);
    BOOST_TEST(std::max(out.height, out.width) == expected_long);
    BOOST_TEST((out.height <= out.width) == (height <= width));
    const Image limited = applied(*capped, image);
    if (expected_long > 20) {
      BOOST_TEST(std::max(limited.height, limited.width) == 20);
      BOOST_TEST(std::min(limited.height, limited.width) ==
                 static_cast<int64_t>(20.0 * 16.0 / static_cast<double>(expected_long)));
    } else {
      BOOST_TEST(limited.shape() == out.shape());
    }
  }
  // The worked example of the documentation: 375 x 500 to 256 gives 256 x 341.
  BOOST_TEST(
      make("{type: resize, size: 256}", Shape{3, 375, 500})->output_shape(Shape{3, 375, 500}) ==
      (Shape{3, 256, 341}));
  // An image already of the size is unchanged, bit for bit.
  const Image image = random_image(1, 16, 21, rng);
  BOOST_TEST(max_abs_diff(applied(*resize, image), image) == 0.0f);
  BOOST_TEST(max_abs_diff(applied(*make("{type: resize, size: [16, 21]}", Shape{1, 0, 0}), image),
                          image) == 0.0f);
}

// Resizing keeps a constant image constant (the weights sum to 1, also at the borders), and the
// mean of any image approximately.
BOOST_AUTO_TEST_CASE(resize_preserves_constants) {
  std::mt19937 rng(1632);
  Image constant;
  constant.resize(2, 23, 31);
  std::fill(constant.pixels.begin(), constant.pixels.end(), 0.375f);
  for (const char* config : {"{type: resize, size: [7, 9]}", "{type: resize, size: [60, 80]}",
                             "{type: resize, size: [5, 90]}"}) {
    const Image out = applied(*make(config, Shape{2, 0, 0}), constant);
    for (float value : out.pixels) BOOST_REQUIRE(std::abs(value - 0.375f) < 1e-6f);
  }
}

// Channels are resized independently of each other (in groups of up to 4 inside): a 6-channel
// image gives, channel by channel, what each channel alone gives (up to float rounding: stb's
// loops for 1 and for 4 channels may order their sums differently).
BOOST_AUTO_TEST_CASE(channels_are_resized_independently) {
  std::mt19937 rng(1634);
  const Image image = random_image(6, 19, 27, rng);
  for (const char* config : {"{type: resize, size: [8, 11]}", "{type: resize, size: [40, 33]}"}) {
    const Image out = applied(*make(config, Shape{6, 0, 0}), image);
    auto single = make(config, Shape{1, 0, 0});
    for (int64_t c = 0; c < 6; ++c) {
      Image channel;
      channel.resize(1, 19, 27);
      std::copy(image.plane(c), image.plane(c) + image.plane_size(), channel.pixels.begin());
      const Image alone = applied(*single, channel);
      float worst = 0;
      for (int64_t i = 0; i < alone.plane_size(); ++i) {
        worst =
            std::max(worst, std::abs(alone.pixels[static_cast<std::size_t>(i)] - out.plane(c)[i]));
      }
      BOOST_TEST(worst <= 1e-6f, config << " channel " << c << ": " << worst);
    }
  }
}

// center_crop: torchvision's offsets (Python's round, halves to even) and zero padding.
BOOST_AUTO_TEST_CASE(center_crop_offsets_and_padding) {
  std::mt19937 rng(1633);
  // (image, crop) -> offset: (5 - 2) / 2 = 1.5 -> 2; (9 - 4) / 2 = 2.5 -> 2; (7 - 4) / 2 = 1.5 ->
  // 2; (8 - 3) / 2 = 2.5 -> 2; (10 - 3) / 2 = 3.5 -> 4; (6 - 2) / 2 = 2.
  const std::vector<std::array<int64_t, 3>> cases = {{5, 2, 2}, {9, 4, 2},  {7, 4, 2},
                                                     {8, 3, 2}, {10, 3, 4}, {6, 2, 2}};
  for (const auto& [size, crop, offset] : cases) {
    const Image image = random_image(2, size, size + 1, rng);
    auto transform =
        make(fmt::format("{{type: center_crop, size: [{}, {}]}}", crop, crop + 1), Shape{2, 0, 0});
    const Image out = applied(*transform, image);
    BOOST_REQUIRE(out.shape() == (Shape{2, crop, crop + 1}));
    // The width differs by the same amount, so it has the same offset.
    BOOST_TEST(max_abs_diff(out, window(image, offset, offset, crop, crop + 1)) == 0.0f);
  }
  // Larger than the image: padded with 0, (crop - size) // 2 in front.
  const Image image = random_image(1, 3, 4, rng, 0.5f, 1.0f);
  const Image out = applied(*make("{type: center_crop, size: [6, 7]}", Shape{1, 0, 0}), image);
  BOOST_REQUIRE(out.shape() == (Shape{1, 6, 7}));
  for (int64_t y = 0; y < 6; ++y)
    for (int64_t x = 0; x < 7; ++x) {
      const int64_t sy = y - 1, sx = x - 1;  // (6 - 3) // 2 = 1, (7 - 4) // 2 = 1
      const bool inside = sy >= 0 && sy < 3 && sx >= 0 && sx < 4;
      BOOST_TEST(at(out, 0, y, x) == (inside ? at(image, 0, sy, sx) : 0.0f));
    }
  // Larger in one direction only: padded there, cropped in the other.
  const Image mixed = applied(*make("{type: center_crop, size: [1, 6]}", Shape{1, 0, 0}), image);
  BOOST_REQUIRE(mixed.shape() == (Shape{1, 1, 6}));
  BOOST_TEST(at(mixed, 0, 0, 0) == 0.0f);
  BOOST_TEST(at(mixed, 0, 0, 1) == at(image, 0, 1, 0));  // round(2 / 2) = 1
  BOOST_TEST(at(mixed, 0, 0, 5) == 0.0f);
}

BOOST_AUTO_TEST_CASE(errors) {
  const Shape input{3, 0, 0};
  STRATA_CHECK_CONTAINS(setup_error("{type: resize}", input), "missing required key 'size'");
  STRATA_CHECK_CONTAINS(setup_error("{type: resize, size: 0}", input), "size: must be in [1,");
  STRATA_CHECK_CONTAINS(setup_error("{type: resize, size: [0, 4]}", input),
                        "size: must be at least 1, found 0");
  STRATA_CHECK_CONTAINS(setup_error("{type: resize, size: [4, 4], max_size: 9}", input),
                        "max_size: needs an integer size");
  STRATA_CHECK_CONTAINS(setup_error("{type: resize, size: 8, max_size: 8}", input),
                        "max_size: must be greater than size (8), found 8");
  STRATA_CHECK_CONTAINS(setup_error("{type: resize, size: 8, antialias: false}", input),
                        "unknown key 'antialias'");
  STRATA_CHECK_CONTAINS(setup_error("{type: center_crop}", input), "missing required key 'size'");
  STRATA_CHECK_CONTAINS(setup_error("{type: center_crop, size: [1, 2, 3]}", input),
                        "size: expected an integer or a list [height, width], found a list of 3");
  STRATA_CHECK_CONTAINS(setup_error("{type: random_resized_crop}", input),
                        "missing required key 'size'");
  STRATA_CHECK_CONTAINS(setup_error("{type: random_resized_crop, size: 8, scale: [0, 1]}", input),
                        "scale: expected 0 < min <= max, found [0, 1]");
  STRATA_CHECK_CONTAINS(
      setup_error("{type: random_resized_crop, size: 8, scale: [0.9, 0.5]}", input),
      "scale: expected 0 < min <= max, found [0.9, 0.5]");
  STRATA_CHECK_CONTAINS(setup_error("{type: random_resized_crop, size: 8, ratio: [1]}", input),
                        "ratio: expected a list [min, max], found a list of 1");
  STRATA_CHECK_CONTAINS(setup_error("{type: random_resized_crop, size: 8, ratio: 1}", input),
                        "ratio: expected a list");
  STRATA_CHECK_CONTAINS(setup_error("{type: random_resized_crop, size: 8, eval_resize: 0}", input),
                        "eval_resize: must be in [1,");
  STRATA_CHECK_CONTAINS(setup_error("{type: center_crop, size: 4}", Shape{3, 5}),
                        "images must have shape [C, H, W]");
  STRATA_CHECK_CONTAINS(setup_error("{type: resize, size: 4}", Shape{3, 0, 5}),
                        "images must have shape [C, H, W]");
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------
BOOST_AUTO_TEST_SUITE(random_resized_crop)

namespace {

struct Box {
  int64_t top, left, height, width;
  bool fallback;
};

// torchvision 0.14's RandomResizedCrop.get_params, written from its source with the documented
// draws: the oracle the transform is checked against.
Box get_params(int64_t height, int64_t width, std::array<double, 2> scale,
               std::array<double, 2> ratio, Rng& rng) {
  const double area = static_cast<double>(height * width);
  const double log_low = std::log(ratio[0]), log_high = std::log(ratio[1]);
  for (int attempt = 0; attempt < 10; ++attempt) {
    const double target_area = area * uniform(rng, scale[0], scale[1]);
    const double aspect = std::exp(uniform(rng, log_low, log_high));
    const auto w = static_cast<int64_t>(std::nearbyint(std::sqrt(target_area * aspect)));
    const auto h = static_cast<int64_t>(std::nearbyint(std::sqrt(target_area / aspect)));
    if (0 < w && w <= width && 0 < h && h <= height) {
      const auto top = static_cast<int64_t>(rng() % static_cast<uint32_t>(height - h + 1));
      const auto left = static_cast<int64_t>(rng() % static_cast<uint32_t>(width - w + 1));
      return {top, left, h, w, false};
    }
  }
  const double in_ratio = static_cast<double>(width) / static_cast<double>(height);
  int64_t w = width, h = height;
  if (in_ratio < ratio[0]) {
    h = static_cast<int64_t>(std::nearbyint(static_cast<double>(w) / ratio[0]));
  } else if (in_ratio > ratio[1]) {
    w = static_cast<int64_t>(std::nearbyint(static_cast<double>(h) * ratio[1]));
  }
  return {(height - h) / 2, (width - w) / 2, h, w, true};
}

}  // namespace

// augment() is get_params' crop resized to `size` (compared with resize of the copied crop,
// exactly), the crop's area and aspect ratio lie in the scale and ratio ranges, and the output
// depends only on the seed.
BOOST_AUTO_TEST_CASE(crop_follows_get_params_within_bounds) {
  std::mt19937 data_rng(1641);
  const std::array<double, 2> scale{0.2, 0.9}, ratio{0.6, 1.5};
  auto crop = make(
      "{type: random_resized_crop, size: [12, 10], scale: [0.2, 0.9], "
      "ratio: [0.6, 1.5]}",
      Shape{3, 0, 0});
  auto resize = make("{type: resize, size: [12, 10]}", Shape{3, 0, 0});
  int crops = 0;
  std::set<int64_t> tops, heights;
  for (uint32_t seed = 0; seed < 200; ++seed) {
    const int64_t height = 8 + static_cast<int64_t>(data_rng() % 40);
    const int64_t width = 8 + static_cast<int64_t>(data_rng() % 40);
    const Image image = random_image(3, height, width, data_rng);
    Rng replay(seed);
    const Box box = get_params(height, width, scale, ratio, replay);
    const Image out = augmented(*crop, image, seed);
    const Image expected =
        applied(*resize, window(image, box.top, box.left, box.height, box.width));
    BOOST_REQUIRE(max_abs_diff(out, expected) == 0.0f);
    BOOST_TEST(max_abs_diff(augmented(*crop, image, seed), out) == 0.0f);  // deterministic
    if (box.fallback) continue;
    ++crops;
    tops.insert(box.top);
    heights.insert(box.height);
    const double h = static_cast<double>(box.height), w = static_cast<double>(box.width);
    const double area = static_cast<double>(height * width);
    // Within the ranges up to the rounding of w and h to integers (half a pixel each).
    BOOST_TEST((w - 0.5) * (h - 0.5) <= scale[1] * area);
    BOOST_TEST((w + 0.5) * (h + 0.5) >= scale[0] * area);
    BOOST_TEST((w - 0.5) / (h + 0.5) <= ratio[1]);
    BOOST_TEST((w + 0.5) / (h - 0.5) >= ratio[0]);
    BOOST_TEST(box.top + box.height <= height);
    BOOST_TEST(box.left + box.width <= width);
  }
  BOOST_TEST(crops > 150);  // the fallback is rare with these ranges
  BOOST_TEST(tops.size() > 10u);
  BOOST_TEST(heights.size() > 10u);
}

// Ranges that no crop can meet: after 10 attempts, torchvision's central fallback.
BOOST_AUTO_TEST_CASE(fallback_is_the_central_crop) {
  std::mt19937 data_rng(1642);
  const Image image = random_image(1, 20, 20, data_rng);
  // A ratio of at least 2 on a square image with scale near 1: w > 20 every time.
  auto crop = make("{type: random_resized_crop, size: 5, scale: [0.95, 1.0], ratio: [2, 3]}",
                   Shape{1, 0, 0});
  auto resize = make("{type: resize, size: [5, 5]}", Shape{1, 0, 0});
  // in_ratio 1 < 2: w = 20, h = round(20 / 2) = 10, top = 5, left = 0.
  BOOST_TEST(max_abs_diff(augmented(*crop, image, 5),
                          applied(*resize, window(image, 5, 0, 10, 20))) == 0.0f);
}

// Evaluation: the shorter side resized to eval_resize (round(size * 256 / 224): 224 -> 256),
// then the centre crop.
BOOST_AUTO_TEST_CASE(evaluation_is_resize_then_center_crop) {
  std::mt19937 data_rng(1643);
  const Image image = random_image(3, 300, 400, data_rng);
  const Image out = applied(*make("{type: random_resized_crop, size: 224}", Shape{3, 0, 0}), image);
  const Image expected =
      applied(*make("{type: center_crop, size: 224}", Shape{3, 0, 0}),
              applied(*make("{type: resize, size: 256}", Shape{3, 0, 0}), image));
  BOOST_TEST(max_abs_diff(out, expected) == 0.0f);
  const Image small = random_image(3, 30, 41, data_rng);
  const Image custom = applied(
      *make("{type: random_resized_crop, size: [10, 12], eval_resize: 20}", Shape{3, 0, 0}), small);
  const Image custom_expected =
      applied(*make("{type: center_crop, size: [10, 12]}", Shape{3, 0, 0}),
              applied(*make("{type: resize, size: 20}", Shape{3, 0, 0}), small));
  BOOST_TEST(max_abs_diff(custom, custom_expected) == 0.0f);
}

// No allocation in steady state: the results alternate between the two buffers.
BOOST_AUTO_TEST_CASE(buffers_are_reused) {
  std::mt19937 data_rng(1644);
  const Image source = random_image(3, 50, 60, data_rng);
  auto crop = make("{type: random_resized_crop, size: 16}", Shape{3, 0, 0});
  Image image, scratch;
  image.pixels.reserve(source.pixels.size());
  scratch.pixels.reserve(source.pixels.size());
  const std::set<const float*> buffers{image.pixels.data(), scratch.pixels.data()};
  for (uint32_t seed = 0; seed < 20; ++seed) {
    image.resize(source.channels, source.height, source.width);
    std::copy(source.pixels.begin(), source.pixels.end(), image.pixels.begin());
    Rng rng(seed);
    crop->augment(image, scratch, rng);
    BOOST_REQUIRE(buffers.count(image.pixels.data()) == 1u);
    BOOST_REQUIRE(buffers.count(scratch.pixels.data()) == 1u);
  }
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------
BOOST_AUTO_TEST_SUITE(color_jitter)

namespace {

float gray(const Image& image, int64_t i) {
  return 0.2989f * image.plane(0)[i] + 0.587f * image.plane(1)[i] + 0.114f * image.plane(2)[i];
}

// torchvision's adjust_* on float images, written from its source: the oracle.
void adjust(Image& image, int which, float factor) {
  auto blend = [](float f, float x, float y) {
    return std::clamp(f * x + (1.0f - f) * y, 0.0f, 1.0f);
  };
  const int64_t plane = image.plane_size();
  if (which == 0) {
    for (float& x : image.pixels) x = blend(factor, x, 0.0f);
  } else if (which == 1) {
    double sum = 0;
    for (int64_t i = 0; i < plane; ++i)
      sum += image.channels == 3 ? gray(image, i) : image.pixels[i];
    const auto mean = static_cast<float>(sum / static_cast<double>(plane));
    for (float& x : image.pixels) x = blend(factor, x, mean);
  } else if (image.channels == 3) {
    for (int64_t i = 0; i < plane; ++i) {
      const float g = gray(image, i);
      for (int64_t c = 0; c < 3; ++c) image.plane(c)[i] = blend(factor, image.plane(c)[i], g);
    }
  }
}

}  // namespace

// The documented draws (a shuffle of the three, then the enabled factors) and definitions,
// in every order: augment() equals the oracle within float rounding.
BOOST_AUTO_TEST_CASE(random_order_and_definitions) {
  std::mt19937 data_rng(1651);
  auto jitter = make(
      "{type: color_jitter, brightness: 0.5, contrast: [0.3, 1.7], "
      "saturation: [0, 2]}",
      Shape{3, 0, 0});
  const std::array<std::array<double, 2>, 3> ranges{{{0.5, 1.5}, {0.3, 1.7}, {0.0, 2.0}}};
  std::set<std::array<int, 3>> orders;
  for (uint32_t seed = 0; seed < 60; ++seed) {
    const Image image = random_image(3, 9, 11, data_rng);
    Rng replay(seed);
    std::array<int, 3> order{0, 1, 2};
    for (int i = 2; i > 0; --i) {
      std::swap(order[static_cast<std::size_t>(i)],
                order[static_cast<std::size_t>(replay() % static_cast<uint32_t>(i + 1))]);
    }
    orders.insert(order);
    std::array<float, 3> factors{};
    for (std::size_t k = 0; k < 3; ++k) {
      factors[k] = static_cast<float>(uniform(replay, ranges[k][0], ranges[k][1]));
      BOOST_TEST(factors[k] >= ranges[k][0]);
      BOOST_TEST(factors[k] <= ranges[k][1]);
    }
    Image expected = image;
    for (int k : order) adjust(expected, k, factors[static_cast<std::size_t>(k)]);
    BOOST_REQUIRE(max_abs_diff(augmented(*jitter, image, seed), expected) <= 1e-6f);
  }
  BOOST_TEST(orders.size() == 6u);
  const Image image = random_image(3, 4, 4, data_rng);
  BOOST_TEST(max_abs_diff(applied(*jitter, image), image) == 0.0f);  // evaluation: identity
}

// The drawn factor lies in its range and covers it: brightness b on a constant image gives
// value * factor, so the factor is observable.
BOOST_AUTO_TEST_CASE(factors_in_range) {
  Image constant;
  constant.resize(3, 2, 2);
  std::fill(constant.pixels.begin(), constant.pixels.end(), 0.25f);
  auto brightness = make("{type: color_jitter, brightness: 0.4}", Shape{3, 0, 0});
  auto pair = make("{type: color_jitter, brightness: [0.2, 0.5]}", Shape{3, 0, 0});
  auto large = make("{type: color_jitter, brightness: 1.5}", Shape{3, 0, 0});  // [0, 2.5]
  double low = 10, high = 0, pair_low = 10, pair_high = 0, large_low = 10;
  for (uint32_t seed = 0; seed < 500; ++seed) {
    const double factor = augmented(*brightness, constant, seed).pixels[0] / 0.25;
    low = std::min(low, factor);
    high = std::max(high, factor);
    const double paired = augmented(*pair, constant, seed).pixels[3] / 0.25;
    pair_low = std::min(pair_low, paired);
    pair_high = std::max(pair_high, paired);
    large_low = std::min(large_low, augmented(*large, constant, seed).pixels[0] / 0.25);
  }
  BOOST_TEST(low >= 0.6 - 1e-6);
  BOOST_TEST(high <= 1.4 + 1e-6);
  BOOST_TEST(low < 0.62);
  BOOST_TEST(high > 1.38);
  BOOST_TEST(pair_low >= 0.2 - 1e-6);
  BOOST_TEST(pair_high <= 0.5 + 1e-6);
  BOOST_TEST(pair_low < 0.21);
  BOOST_TEST(pair_high > 0.49);
  BOOST_TEST(large_low >= 0.0);
  BOOST_TEST(large_low < 0.05);
}

// One channel: contrast blends with the image's mean, saturation is the identity; off (0 or
// [1, 1]) draws nothing and changes nothing.
BOOST_AUTO_TEST_CASE(grayscale_and_off) {
  std::mt19937 data_rng(1652);
  const Image image = random_image(1, 6, 7, data_rng);
  BOOST_TEST(max_abs_diff(augmented(*make("{type: color_jitter, saturation: 0.9}", Shape{1, 0, 0}),
                                    image, 3),
                          image) == 0.0f);
  Image expected = image;
  adjust(expected, 1, 0.5f);
  BOOST_TEST(
      max_abs_diff(
          augmented(*make("{type: color_jitter, contrast: [0.5, 0.5]}", Shape{1, 0, 0}), image, 3),
          expected) <= 1e-6f);
  for (const char* off : {"{type: color_jitter}", "{type: color_jitter, brightness: 0}",
                          "{type: color_jitter, contrast: [1, 1], saturation: 0}"}) {
    BOOST_TEST(max_abs_diff(augmented(*make(off, Shape{1, 0, 0}), image, 4), image) == 0.0f);
  }
  // Brightness alone takes any channel count.
  const Image four = random_image(4, 3, 3, data_rng);
  BOOST_TEST(
      augmented(*make("{type: color_jitter, brightness: 0.3}", Shape{4, 0, 0}), four, 1).channels ==
      4);
}

BOOST_AUTO_TEST_CASE(errors) {
  const Shape input{3, 0, 0};
  STRATA_CHECK_CONTAINS(setup_error("{type: color_jitter, brightness: -0.1}", input),
                        "brightness: must be a non-negative number, found -0.1");
  STRATA_CHECK_CONTAINS(setup_error("{type: color_jitter, contrast: [0.5, 0.2]}", input),
                        "contrast: expected 0 <= min <= max, found [0.5, 0.2]");
  STRATA_CHECK_CONTAINS(setup_error("{type: color_jitter, saturation: [-1, 2]}", input),
                        "saturation: expected 0 <= min <= max, found [-1, 2]");
  STRATA_CHECK_CONTAINS(setup_error("{type: color_jitter, saturation: [1, 2, 3]}", input),
                        "saturation: expected a number or a list [min, max], found a list of 3");
  STRATA_CHECK_CONTAINS(setup_error("{type: color_jitter, hue: 0.1}", input), "unknown key 'hue'");
  STRATA_CHECK_CONTAINS(setup_error("{type: color_jitter, contrast: 0.2}", Shape{4, 0, 0}),
                        "contrast: needs images with 1 or 3 channels (grayscale or RGB), but "
                        "they have 4");
  STRATA_CHECK_CONTAINS(setup_error("{type: color_jitter, saturation: 0.2}", Shape{2, 0, 0}),
                        "saturation: needs images with 1 or 3 channels");
}

BOOST_AUTO_TEST_SUITE_END()
