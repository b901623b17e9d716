// datasets/normalize: the `normalize` transform, standardization with training-set statistics.
//
// WHAT THIS OBJECT REPRESENTS
//   x -> (x - mean) / std, with mean and std per channel ([C]) or per pixel ([C, H, W]). This is
//   what torchvision's Normalize(mean, std) computes, so the saved state maps onto it directly.
//
// CONFIGURATION
//   per: channel (default) | pixel.
//   scale: std (default): subtract the mean and divide by the standard deviation; none: subtract
//          the mean only (std stays all ones).
//   epsilon: 1e-8 (> 0). A standard deviation below epsilon (a constant channel or pixel, such as
//          an MNIST corner) is stored as 1: that feature is only centred, rather than divided by
//          a tiny number that would blow up any test image in which it is not constant.
//
// REQUIRES
//   setup(sample_shape) with a [C, H, W] shape before anything else; fit() and apply() then take
//   images [N, C, H, W] of exactly that sample shape (anything else is an Error).
//
// ENSURES
//   - setup() allocates state "mean" (zeros) and "std" (ones), shaped [C] or [C, H, W], so the
//     transform is the identity until fit() or a checkpoint fills them.
//   - fit() computes them in double precision from the given (training) images only: the mean and
//     the population standard deviation (divided by the count, not count - 1) over N*H*W values
//     per channel, or over N values per pixel.
//   - apply() rewrites images in place; state() returns handles that alias the statistics, so
//     writing into them loads a checkpoint.
#include <cmath>
#include <cstdint>
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
using strata::Shape;
using strata::Tensor;

std::string get_choice(const Config& config, std::string_view key, const std::string& fallback,
                       const std::vector<std::string>& choices) {
  std::string value = config.get<std::string>(key, fallback);
  for (const auto& choice : choices) {
    if (value == choice) return value;
  }
  config.fail_key(key, fmt::format("unknown value '{}'\n  {}", value,
                                   strata::suggestion_text(value, choices, "values")));
}

class Normalize final : public strata::Transform {
 public:
  explicit Normalize(const Config& config) {
    per_pixel_ = get_choice(config, "per", "channel", {"channel", "pixel"}) == "pixel";
    divide_by_std_ = get_choice(config, "scale", "std", {"std", "none"}) == "std";
    epsilon_ = config.get<double>("epsilon", 1e-8);
    if (!(epsilon_ > 0)) {
      config.fail_key("epsilon", fmt::format("must be positive, got {}", epsilon_));
    }
  }

  std::string_view type() const override { return "normalize"; }

  void setup(const Shape& sample_shape) override {
    if (sample_shape.rank() != 3 || sample_shape.numel() <= 0) {
      fail("transform normalize: samples must have shape [C, H, W] with positive extents, got {}",
           sample_shape.str());
    }
    sample_shape_ = sample_shape;
    const Shape stats_shape = per_pixel_ ? sample_shape : Shape{sample_shape[0]};
    mean_ = Tensor(stats_shape);
    std_ = Tensor(stats_shape);
    std_.fill(1.0f);
  }

  void fit(const Tensor& train_images) override {
    check_images(train_images, "fit");
    const int64_t count = train_images.dim(0);
    if (count == 0) fail("transform normalize: fit() needs at least one training image");
    const int64_t channels = sample_shape_[0];
    const int64_t plane = sample_shape_[1] * sample_shape_[2];
    const float* data = train_images.data();
    const int64_t stats = mean_.numel();
    const double values_per_stat = static_cast<double>(count) * (per_pixel_ ? 1 : plane);

    // Two passes (mean, then squared deviations) rather than sum of squares minus squared sum,
    // which cancels catastrophically when the mean is large compared with the spread.
    // accumulate(sums, term) adds term(value, index of its statistic) over every value.
    auto accumulate = [&](std::vector<double>& sums, auto term) {
      for (int64_t n = 0; n < count; ++n) {
        for (int64_t c = 0; c < channels; ++c) {
          const float* values = data + (n * channels + c) * plane;
          if (per_pixel_) {
            double* sum = sums.data() + c * plane;
            for (int64_t i = 0; i < plane; ++i) sum[i] += term(values[i], c * plane + i);
          } else {
            double sum = 0;
            for (int64_t i = 0; i < plane; ++i) sum += term(values[i], c);
            sums[c] += sum;
          }
        }
      }
    };
    std::vector<double> mean(stats, 0.0);
    accumulate(mean, [](float value, int64_t) { return static_cast<double>(value); });
    for (double& m : mean) m /= values_per_stat;
    for (int64_t s = 0; s < stats; ++s) mean_.data()[s] = static_cast<float>(mean[s]);

    std_.fill(1.0f);
    if (!divide_by_std_) return;
    std::vector<double> squares(stats, 0.0);
    accumulate(squares, [&](float value, int64_t s) {
      const double deviation = value - mean[s];
      return deviation * deviation;
    });
    for (int64_t s = 0; s < stats; ++s) {
      const double sigma = std::sqrt(squares[s] / values_per_stat);
      std_.data()[s] = sigma < epsilon_ ? 1.0f : static_cast<float>(sigma);
    }
  }

  void apply(Tensor& images) const override {
    check_images(images, "apply");
    for (int64_t s = 0; s < std_.numel(); ++s) {
      const float value = std_.data()[s];
      if (!(value > 0) || !std::isfinite(value)) {
        fail("transform normalize: std[{}] is {}; every std must be positive and finite", s, value);
      }
    }
    const int64_t count = images.dim(0);
    const int64_t channels = sample_shape_[0];
    const int64_t plane = sample_shape_[1] * sample_shape_[2];
    const float* mean = mean_.data();
    const float* std = std_.data();
    float* data = images.data();
    for (int64_t n = 0; n < count; ++n) {
      for (int64_t c = 0; c < channels; ++c) {
        float* values = data + (n * channels + c) * plane;
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
  }

  std::vector<strata::NamedTensor> state() override { return {{"mean", mean_}, {"std", std_}}; }

 private:
  void check_images(const Tensor& images, const char* operation) const {
    if (sample_shape_.rank() == 0) {
      fail("transform normalize: {}() called before setup()", operation);
    }
    if (images.rank() != 4 || images.shape().without_batch() != sample_shape_) {
      fail(
          "transform normalize: {}() got images of shape {}, but setup() was for samples of shape "
          "{} (expected [N, {}, {}, {}])",
          operation, images.shape().str(), sample_shape_.str(), sample_shape_[0], sample_shape_[1],
          sample_shape_[2]);
    }
  }

  bool per_pixel_ = false;
  bool divide_by_std_ = true;
  double epsilon_ = 1e-8;
  Shape sample_shape_;
  Tensor mean_;
  Tensor std_;
};

void register_all(strata::Registries& registries) {
  registries.transforms.add<Normalize>("normalize");
}

}  // namespace

STRATA_PLUGIN("normalize", "1.0", register_all)
