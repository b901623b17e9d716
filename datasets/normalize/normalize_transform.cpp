// datasets/normalize: the `normalize` transform, standardization with training-set statistics.
//
// WHAT THIS OBJECT REPRESENTS
//   x -> (x - mean) / std, with mean and std per channel ([C]) or per pixel ([C, H, W]). This is
//   what torchvision's Normalize(mean, std) computes, so the saved state maps onto it directly.
//
// CONFIGURATION
//   Statistics given in the configuration (then nothing is fitted, needs_fit() is false, and they
//   are still saved in checkpoints), per channel:
//     mean: [m_1, .., m_C] and std: [s_1, .., s_C], both or neither, one value per channel of the
//           images (checked at setup), every std > 0; or
//     preset: imagenet: mean [0.485, 0.456, 0.406], std [0.229, 0.224, 0.225] (torchvision's
//           ImageNet statistics; 3-channel images).
//   They exclude per: pixel, scale: none and epsilon (which describe fitting).
//   Without them, the statistics are fitted on the training images:
//   per: channel (default) | pixel.
//   scale: std (default): subtract the mean and divide by the standard deviation; none: subtract
//          the mean only (std stays all ones).
//   epsilon: 1e-8 (> 0). A standard deviation below epsilon (a constant channel or pixel, such as
//          an MNIST corner) is stored as 1: that feature is only centred, rather than divided by
//          a tiny number that would blow up any test image in which it is not constant.
//
// REQUIRES
//   setup(input shape) with a [C, H, W] shape before anything else. per: pixel needs a fixed
//   shape (H, W > 0): images of varying size must be resized or cropped before it (an Error).
//   fit() and apply() then take images with C channels (and, per pixel, exactly H x W).
//
// ENSURES
//   - setup() allocates state "mean" (zeros) and "std" (ones), shaped [C] or [C, H, W], so the
//     transform is the identity until fit() or a checkpoint fills them.
//   - fit() computes them in double precision from the given (training) images only: the mean and
//     the population standard deviation (divided by the count, not count - 1) over every H*W
//     value of every image per channel, or over the N values per pixel. Parallel (oneTBB) and
//     bit-identical whatever the thread count: the images are split into fixed chunks of
//     kChunk, each chunk accumulates count, mean and M2 (the sum of squared deviations)
//     sequentially, image by image, and the chunks are merged in index order with Chan et al.'s
//     pairwise update. Each image's own per-channel mean and M2 come from two passes over it, so
//     no sum of squares minus squared sum cancels.
//   - apply() rewrites one image in place (float32, (x - mean) / std as torchvision);
//     state() returns handles that alias the statistics, so writing into them loads a checkpoint.
#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "strata/config.hpp"
#include "strata/dataset.hpp"
#include "strata/error.hpp"
#include "strata/export.hpp"
#include "strata/plugin.hpp"
#include "strata/registry.hpp"

namespace {

using strata::Config;
using strata::fail;
using strata::Image;
using strata::Shape;
using strata::Tensor;

// Images per chunk of fit(); the chunks, not the threads, fix the order of the arithmetic.
constexpr int64_t kChunk = 64;
// Chunks held at once by fit(): bounds the memory of per-pixel statistics, whatever the thread
// count (the result does not depend on it either: chunks are merged in order).
constexpr int64_t kChunksPerWave = 16;

std::string get_choice(const Config& config, std::string_view key, const std::string& fallback,
                       const std::vector<std::string>& choices) {
  std::string value = config.get<std::string>(key, fallback);
  for (const auto& choice : choices) {
    if (value == choice) return value;
  }
  config.fail_key(key, fmt::format("unknown value '{}'\n  {}", value,
                                   strata::suggestion_text(value, choices, "values")));
}

// count, mean and M2 (sum of squared deviations from the mean) of one statistic's values.
struct Moments {
  std::vector<double> count, mean, m2;

  void reset(std::size_t stats) {
    count.assign(stats, 0.0);
    mean.assign(stats, 0.0);
    m2.assign(stats, 0.0);
  }
  // Adds a group of n values with mean `m` and M2 `q` to statistic s (Chan et al.).
  void merge(std::size_t s, double n, double m, double q) {
    if (n == 0) return;
    const double total = count[s] + n;
    const double delta = m - mean[s];
    mean[s] += delta * (n / total);
    m2[s] += q + delta * delta * (count[s] * n / total);
    count[s] = total;
  }
  void merge(const Moments& other) {
    for (std::size_t s = 0; s < count.size(); ++s) {
      merge(s, other.count[s], other.mean[s], other.m2[s]);
    }
  }
};

class Normalize final : public strata::Transform {
 public:
  explicit Normalize(const Config& config) : config_(config) {
    read_given_statistics(config);
    if (given_mean_.empty()) read_fit_options(config);
  }

  std::string_view type() const override { return "normalize"; }
  bool needs_fit() const override { return given_mean_.empty(); }

  void setup(const Shape& input) override {
    if (input.rank() != 3 || input[0] <= 0 || input[1] < 0 || input[2] < 0) {
      fail("transform normalize: samples must have shape [C, H, W], got {}", input.str());
    }
    if (per_pixel_ && (input[1] == 0 || input[2] == 0)) {
      config_.fail_key(
          "per", fmt::format("statistics per pixel need images of one size, but they vary ({}); "
                             "resize or crop them to one size in a transform before "
                             "normalize (resize: [H, W], center_crop, random_resized_crop)",
                             input.str()));
    }
    input_ = input;
    const Shape stats_shape = per_pixel_ ? input : Shape{input[0]};
    mean_ = Tensor(stats_shape);
    std_ = Tensor(stats_shape);
    std_.fill(1.0f);
    if (!given_mean_.empty()) {
      if (static_cast<int64_t>(given_mean_.size()) != input[0]) {
        const char* key = config_.has("preset") ? "preset" : "mean";
        config_.fail_key(key, fmt::format("gives statistics for {} channels, but the images have "
                                          "{} ({})",
                                          given_mean_.size(), input[0], input.str()));
      }
      for (std::size_t c = 0; c < given_mean_.size(); ++c) {
        mean_.data()[c] = static_cast<float>(given_mean_[c]);
        std_.data()[c] = static_cast<float>(given_std_[c]);
      }
    }
  }

  void fit(const strata::FitImages& images) override {
    check_setup("fit");
    if (!given_mean_.empty()) {
      fail("transform normalize: fit() called, but the statistics are given in the configuration");
    }
    const int64_t count = images.size();
    if (count <= 0) fail("transform normalize: fit() needs at least one training image");
    const auto stats = static_cast<std::size_t>(mean_.numel());
    const int64_t chunks = (count + kChunk - 1) / kChunk;

    Moments total;
    total.reset(stats);
    std::vector<Moments> wave(static_cast<std::size_t>(std::min(chunks, kChunksPerWave)));
    for (int64_t first = 0; first < chunks; first += kChunksPerWave) {
      const int64_t last = std::min(chunks, first + kChunksPerWave);
      tbb::parallel_for(tbb::blocked_range<int64_t>(first, last, 1),
                        [&](const tbb::blocked_range<int64_t>& range) {
                          Image image;
                          for (int64_t chunk = range.begin(); chunk < range.end(); ++chunk) {
                            Moments& moments = wave[static_cast<std::size_t>(chunk - first)];
                            moments.reset(stats);
                            const int64_t end = std::min(count, (chunk + 1) * kChunk);
                            for (int64_t i = chunk * kChunk; i < end; ++i) {
                              if (!images.read(i, image)) continue;  // a skipped bad image
                              check_image(image, "fit");
                              add_image(image, moments);
                            }
                          }
                        });
      for (int64_t chunk = first; chunk < last; ++chunk) {
        total.merge(wave[static_cast<std::size_t>(chunk - first)]);
      }
    }

    if (stats > 0 && total.count[0] == 0) {
      fail("transform normalize: every one of the {} images to fit it on was skipped as bad", count);
    }
    for (std::size_t s = 0; s < stats; ++s) mean_.data()[s] = static_cast<float>(total.mean[s]);
    std_.fill(1.0f);
    if (!divide_by_std_) return;
    for (std::size_t s = 0; s < stats; ++s) {
      const double sigma = std::sqrt(total.m2[s] / total.count[s]);
      std_.data()[s] = sigma < epsilon_ ? 1.0f : static_cast<float>(sigma);
    }
  }

  void apply(Image& image, Image&) const override {
    check_setup("apply");
    check_image(image, "apply");
    const int64_t stats = std_.numel();
    const float* mean = mean_.data();
    const float* std = std_.data();
    // A checkpoint may have loaded anything into std.
    for (int64_t s = 0; s < stats; ++s) {
      if (!(std[s] > 0) || !std::isfinite(std[s])) {
        fail("transform normalize: std[{}] is {}; every std must be positive and finite", s,
             std[s]);
      }
    }
    const int64_t plane = image.plane_size();
    for (int64_t c = 0; c < image.channels; ++c) {
      float* values = image.plane(c);
      if (per_pixel_) {
        const float* m = mean + c * plane;
        const float* d = std + c * plane;
        for (int64_t i = 0; i < plane; ++i) values[i] = (values[i] - m[i]) / d[i];
      } else {
        const float m = mean[c];
        const float d = std[c];
        for (int64_t i = 0; i < plane; ++i) values[i] = (values[i] - m) / d;
      }
    }
  }

  std::vector<strata::NamedTensor> state() override { return {{"mean", mean_}, {"std", std_}}; }

  // ONNX Sub then Div, by the statistics as initializers "preprocess.<i>.normalize.mean" and
  // ".std" (per channel viewed as [C, 1, 1], so that they broadcast over [N, C, H, W]).
  bool export_to(strata::ExportContext& context) const override {
    check_setup("export_to");
    const Shape shape = per_pixel_ ? input_ : Shape{input_[0], 1, 1};
    const std::string centred = context.value("centred");
    context.node("Sub", {context.input(), context.parameter("mean", mean_.view(shape))}, {centred});
    context.node("Div", {centred, context.parameter("std", std_.view(shape))}, {context.output()});
    return true;
  }

 private:
  // mean/std or preset, into given_mean_/given_std_ (left empty when absent).
  void read_given_statistics(const Config& config) {
    const bool has_mean = config.has("mean"), has_std = config.has("std");
    const bool has_preset = config.has("preset");
    if (!has_mean && !has_std && !has_preset) return;
    for (const char* fit_key : {"per", "scale", "epsilon"}) {
      if (config.has(fit_key)) {
        config.fail_key(fit_key, fmt::format("describes fitting the statistics, but they are "
                                             "given ({}); remove one",
                                             has_preset ? "preset" : "mean and std"));
      }
    }
    if (has_preset) {
      if (has_mean || has_std) {
        config.fail_key(has_mean ? "mean" : "std",
                        "is given twice: by `preset` and here; remove one");
      }
      get_choice(config, "preset", "", {"imagenet"});  // the only preset
      given_mean_ = {0.485, 0.456, 0.406};
      given_std_ = {0.229, 0.224, 0.225};
      return;
    }
    if (!has_mean || !has_std) {
      config.fail(
          fmt::format("`{}` is given without `{}`: give both (one value per channel), "
                      "`preset: imagenet`, or neither to fit them",
                      has_mean ? "mean" : "std", has_mean ? "std" : "mean"));
    }
    given_mean_ = config.get<std::vector<double>>("mean");
    given_std_ = config.get<std::vector<double>>("std");
    if (given_mean_.empty()) config.fail_key("mean", "expected one value per channel, found none");
    if (given_std_.size() != given_mean_.size()) {
      config.fail_key("std", fmt::format("has {} values, but mean has {}: one per channel each",
                                         given_std_.size(), given_mean_.size()));
    }
    for (std::size_t c = 0; c < given_mean_.size(); ++c) {
      if (!std::isfinite(given_mean_[c])) {
        config.fail_key("mean",
                        fmt::format("mean[{}] is {}; expected a finite number", c, given_mean_[c]));
      }
      if (!(given_std_[c] > 0) || !std::isfinite(given_std_[c])) {
        config.fail_key("std",
                        fmt::format("std[{}] is {}; every std must be positive", c, given_std_[c]));
      }
    }
  }

  void read_fit_options(const Config& config) {
    per_pixel_ = get_choice(config, "per", "channel", {"channel", "pixel"}) == "pixel";
    divide_by_std_ = get_choice(config, "scale", "std", {"std", "none"}) == "std";
    epsilon_ = config.get<double>("epsilon", 1e-8);
    if (!(epsilon_ > 0)) {
      config.fail_key("epsilon", fmt::format("must be positive, got {}", epsilon_));
    }
  }

  // Adds one image's values to `moments`: per channel, the image's own mean and M2 (two passes)
  // merged as one group; per pixel, one value per statistic (Welford's update).
  void add_image(const Image& image, Moments& moments) const {
    const int64_t plane = image.plane_size();
    for (int64_t c = 0; c < image.channels; ++c) {
      const float* values = image.plane(c);
      if (per_pixel_) {
        const std::size_t base = static_cast<std::size_t>(c * plane);
        for (int64_t i = 0; i < plane; ++i) {
          moments.merge(base + static_cast<std::size_t>(i), 1.0, values[i], 0.0);
        }
      } else {
        if (plane == 0) continue;
        double sum = 0;
        for (int64_t i = 0; i < plane; ++i) sum += values[i];
        const double mean = sum / static_cast<double>(plane);
        double m2 = 0;
        for (int64_t i = 0; i < plane; ++i) {
          const double deviation = values[i] - mean;
          m2 += deviation * deviation;
        }
        moments.merge(static_cast<std::size_t>(c), static_cast<double>(plane), mean, m2);
      }
    }
  }

  void check_setup(const char* operation) const {
    if (input_.rank() == 0) fail("transform normalize: {}() called before setup()", operation);
  }

  void check_image(const Image& image, const char* operation) const {
    const bool fits = image.channels == input_[0] &&
                      (!per_pixel_ || (image.height == input_[1] && image.width == input_[2]));
    if (!fits) {
      fail(
          "transform normalize: {}() got an image of shape {}, but setup() was for images of "
          "shape {}",
          operation, image.shape().str(), input_.str());
    }
  }

  Config config_;                               // for errors found at setup, which name the key
  std::vector<double> given_mean_, given_std_;  // empty: fitted
  bool per_pixel_ = false;
  bool divide_by_std_ = true;
  double epsilon_ = 1e-8;
  Shape input_;
  Tensor mean_;
  Tensor std_;
};

void register_all(strata::Registries& registries) {
  registries.transforms.add<Normalize>("normalize");
}

}  // namespace

STRATA_PLUGIN("normalize", "1.0", register_all)
