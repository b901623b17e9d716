// The "initializers" plugin: how parameters are filled before training.
//
// Every initializer receives the parameter's fans from its layer (conv2d: fan_in =
// in_channels/groups * kh * kw, fan_out = out_channels/groups * kh * kw; linear: in and out
// features), so one definition serves every layer.
//
//   xavier_uniform  U(-a, a), a = gain * sqrt(6 / (fan_in + fan_out))      keys: gain (1)
//   xavier_normal   N(0, std), std = gain * sqrt(2 / (fan_in + fan_out))   keys: gain (1)
//   he_normal       N(0, std), std = gain / sqrt(fan)                       keys: mode,
//   negative_slope he_uniform      U(-a, a), a = gain * sqrt(3 / fan)                      keys:
//   mode, negative_slope
//                   (Kaiming; fan = fan_in or fan_out by `mode` (fan_in), and
//                   gain = sqrt(2 / (1 + negative_slope^2)), sqrt(2) for relu: PyTorch's
//                   kaiming_normal_/kaiming_uniform_ with nonlinearity leaky_relu)
//   gaussian        N(mean, std)                                            keys: std (required),
//   mean (0) constant        every element = value                                   keys: value
//   (0)
//
// All draws come from the Rng passed to fill(), in element order, so a seed reproduces a model.
#include <fmt/format.h>

#include <cmath>
#include <random>
#include <string>

#include "strata/config.hpp"
#include "strata/error.hpp"
#include "strata/layer.hpp"
#include "strata/plugin.hpp"
#include "strata/registry.hpp"

namespace strata::initializers {

namespace {

void fill_uniform(Tensor& value, float bound, Rng& rng) {
  std::uniform_real_distribution<float> dist(-bound, bound);
  for (float& v : value.span()) v = dist(rng);
}

void fill_normal(Tensor& value, float mean, float stddev, Rng& rng) {
  if (stddev == 0.0f) {
    value.fill(mean);
    return;
  }
  std::normal_distribution<float> dist(mean, stddev);
  for (float& v : value.span()) v = dist(rng);
}

// Both fans must be positive for the variance-scaling rules; a zero fan means a layer reported
// no fans for this parameter.
void require_fans(std::string_view type, int64_t fan_in, int64_t fan_out) {
  if (fan_in < 1 || fan_out < 1) {
    fail("initializer {} needs positive fans, but the parameter has fan_in {} and fan_out {}", type,
         fan_in, fan_out);
  }
}

float read_gain(const Config& config) {
  const auto gain = config.get<double>("gain", 1.0);
  if (gain <= 0.0) config.fail_key("gain", fmt::format("must be positive, found {}", gain));
  return static_cast<float>(gain);
}

class Xavier final : public Initializer {
 public:
  Xavier(const Config& config, bool uniform) : uniform_(uniform), gain_(read_gain(config)) {}

  void fill(Tensor& value, int64_t fan_in, int64_t fan_out, Rng& rng) const override {
    require_fans(uniform_ ? "xavier_uniform" : "xavier_normal", fan_in, fan_out);
    const double fans = static_cast<double>(fan_in + fan_out);
    if (uniform_) {
      fill_uniform(value, static_cast<float>(gain_ * std::sqrt(6.0 / fans)), rng);
    } else {
      fill_normal(value, 0.0f, static_cast<float>(gain_ * std::sqrt(2.0 / fans)), rng);
    }
  }

 private:
  bool uniform_;
  float gain_;
};

class He final : public Initializer {
 public:
  He(const Config& config, bool uniform) : uniform_(uniform) {
    const auto mode = config.get<std::string>("mode", "fan_in");
    if (mode != "fan_in" && mode != "fan_out") {
      config.fail_key("mode", fmt::format("expected 'fan_in' or 'fan_out', found '{}'", mode));
    }
    use_fan_in_ = mode == "fan_in";
    const auto slope = config.get<double>("negative_slope", 0.0);
    gain_ = std::sqrt(2.0 / (1.0 + slope * slope));
  }

  void fill(Tensor& value, int64_t fan_in, int64_t fan_out, Rng& rng) const override {
    require_fans(uniform_ ? "he_uniform" : "he_normal", fan_in, fan_out);
    const double fan = static_cast<double>(use_fan_in_ ? fan_in : fan_out);
    const double stddev = gain_ / std::sqrt(fan);
    if (uniform_) {
      fill_uniform(value, static_cast<float>(stddev * std::sqrt(3.0)), rng);
    } else {
      fill_normal(value, 0.0f, static_cast<float>(stddev), rng);
    }
  }

 private:
  bool uniform_;
  bool use_fan_in_ = true;
  double gain_ = 0.0;
};

class Gaussian final : public Initializer {
 public:
  explicit Gaussian(const Config& config)
      : stddev_(config.get<float>("std")), mean_(config.get<float>("mean", 0.0f)) {
    if (stddev_ < 0.0f) config.fail_key("std", fmt::format("must be >= 0, found {}", stddev_));
  }

  void fill(Tensor& value, int64_t, int64_t, Rng& rng) const override {
    fill_normal(value, mean_, stddev_, rng);
  }

 private:
  float stddev_;
  float mean_;
};

class Constant final : public Initializer {
 public:
  explicit Constant(const Config& config) : value_(config.get<float>("value", 0.0f)) {}
  void fill(Tensor& value, int64_t, int64_t, Rng&) const override { value.fill(value_); }

 private:
  float value_;
};

template <class T, bool kUniform>
std::unique_ptr<Initializer> make(const Config& config) {
  return std::make_unique<T>(config, kUniform);
}

void register_all(Registries& registries) {
  registries.initializers.add("xavier_uniform", make<Xavier, true>);
  registries.initializers.add("xavier_normal", make<Xavier, false>);
  registries.initializers.add("he_normal", make<He, false>);
  registries.initializers.add("he_uniform", make<He, true>);
  registries.initializers.add<Gaussian>("gaussian");
  registries.initializers.add<Constant>("constant");
}

}  // namespace

}  // namespace strata::initializers

STRATA_PLUGIN("initializers", "1.0", strata::initializers::register_all)
