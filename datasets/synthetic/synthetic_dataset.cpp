// datasets/synthetic: the `synthetic` dataset type, a deterministic learnable dataset for tests.
//
// WHAT THIS OBJECT REPRESENTS
//   `classes` smooth random prototype images (one per class: a coarse 4x4 grid of uniform [0, 1]
//   values per channel, bilinearly interpolated to H x W). A sample of class c is prototype c,
//   shifted by -1, 0 or +1 pixels along each axis (edges repeated), plus gaussian noise of standard
//   deviation `noise`, clipped to [0, 1]. Small CNNs (and even a nearest-class-mean classifier)
//   learn it to far above chance within an epoch or two at the default settings.
//
// CONFIGURATION
//   classes: 10 (at least 2). shape: [1, 16, 16], the sample shape [C, H, W].
//   train_size: 2000. test_size: 500. seed: 0. noise: 0.35 (>= 0).
//
// ENSURES
//   - The data depends only on the configuration: the same keys give the same bytes on every run.
//     The generator is a std::mt19937_64 with hand-written uniform and gaussian draws, because the
//     standard library's distributions differ between implementations.
//   - Prototypes, train samples and test samples come from three separate streams of one seed:
//     the test set does not change when train_size does, and the two splits share prototypes.
//   - Labels are balanced: each class occurs floor(size/classes) or ceil(size/classes) times, in
//     random order. Images are [size, C, H, W] with values in [0, 1].
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numbers>
#include <random>
#include <string>
#include <vector>

#include "strata/config.hpp"
#include "strata/dataset.hpp"
#include "strata/error.hpp"
#include "strata/plugin.hpp"
#include "strata/registry.hpp"
#include "strata/tensor.hpp"
#include "strata/random.hpp"

namespace {

using strata::Config;

using strata::Stream;

constexpr uint64_t kPrototypeStream = 1;
constexpr uint64_t kTrainStream = 2;
constexpr uint64_t kTestStream = 3;
constexpr int kGrid = 4;  // control points per axis of a prototype

class SyntheticDataset final : public strata::InMemoryDataset {
 public:
  explicit SyntheticDataset(const Config& config) {
    classes_ = config.get<int>("classes", 10);
    if (classes_ < 2) {
      config.fail_key("classes", fmt::format("must be at least 2, got {}", classes_));
    }
    const auto shape = config.get<std::vector<int64_t>>("shape", {1, 16, 16});
    if (shape.size() != 3 ||
        std::any_of(shape.begin(), shape.end(), [](int64_t d) { return d < 1; })) {
      config.fail_key("shape", fmt::format("must be [C, H, W] with positive extents, got [{}]",
                                           fmt::join(shape, ", ")));
    }
    shape_ = strata::Shape(shape);
    train_size_ = config.get<int64_t>("train_size", 2000);
    if (train_size_ < 1) {
      config.fail_key("train_size", fmt::format("must be at least 1, got {}", train_size_));
    }
    test_size_ = config.get<int64_t>("test_size", 500);
    if (test_size_ < 1) {
      config.fail_key("test_size", fmt::format("must be at least 1, got {}", test_size_));
    }
    seed_ = static_cast<uint64_t>(config.get<int64_t>("seed", 0));
    noise_ = config.get<double>("noise", 0.35);
    if (noise_ < 0) config.fail_key("noise", fmt::format("must not be negative, got {}", noise_));
    check_memory(config);
    make_prototypes();
  }

  // The images are generated, not read, so nothing else bounds their size: compare what each
  // allocation will need with the machine's memory before making any (long double: the products
  // of absurd settings must not overflow).
  void check_memory(const Config& config) const {
    const long double memory = static_cast<long double>(strata::physical_memory_bytes());
    const long double pixels = static_cast<long double>(shape_[0]) * shape_[1] * shape_[2];
    const auto too_much = [&](const char* key, const std::string& what, long double bytes) {
      if (bytes <= memory) return;
      config.fail_key(key, fmt::format("{} need {}, more than this machine's memory ({})", what,
                                       strata::bytes_text(static_cast<double>(bytes)),
                                       strata::bytes_text(static_cast<double>(memory))));
    };
    too_much("shape", fmt::format("the {} class prototypes of shape {}", classes_, shape_.str()),
             pixels * classes_ * sizeof(double));
    for (const auto& [key, size] : {std::pair{"train_size", train_size_}, std::pair{"test_size", test_size_}}) {
      too_much(key, fmt::format("{} images of shape {}", size, shape_.str()),
               static_cast<long double>(size) * (pixels * sizeof(float) + sizeof(int32_t)));
    }
  }

  strata::Shape sample_shape() const override { return shape_; }
  int num_classes() const override { return classes_; }

  strata::Split load(std::string_view split) override {
    if (split == "train") return generate(train_size_, kTrainStream);
    if (split == "test") return generate(test_size_, kTestStream);
    strata::fail("dataset synthetic: unknown split '{}'; the splits are 'train' and 'test'", split);
  }

 private:
  void make_prototypes() {
    const int64_t channels = shape_[0], height = shape_[1], width = shape_[2];
    Stream stream(seed_, kPrototypeStream);
    prototypes_.assign(static_cast<std::size_t>(classes_ * shape_.numel()), 0.0);
    // Position of pixel i on the control grid, in [0, kGrid - 1].
    auto grid_coordinate = [](int64_t i, int64_t extent) {
      return extent == 1 ? 0.0
                         : static_cast<double>(i) * (kGrid - 1) / static_cast<double>(extent - 1);
    };
    std::vector<double> grid(kGrid * kGrid);
    double* out = prototypes_.data();
    for (int c = 0; c < classes_; ++c) {
      for (int64_t channel = 0; channel < channels; ++channel) {
        for (double& value : grid) value = stream.uniform();
        for (int64_t y = 0; y < height; ++y) {
          const double gy = grid_coordinate(y, height);
          const int y0 = std::min(static_cast<int>(gy), kGrid - 2);
          const double fy = gy - y0;
          for (int64_t x = 0; x < width; ++x) {
            const double gx = grid_coordinate(x, width);
            const int x0 = std::min(static_cast<int>(gx), kGrid - 2);
            const double fx = gx - x0;
            const double top = grid[y0 * kGrid + x0] * (1 - fx) + grid[y0 * kGrid + x0 + 1] * fx;
            const double bottom =
                grid[(y0 + 1) * kGrid + x0] * (1 - fx) + grid[(y0 + 1) * kGrid + x0 + 1] * fx;
            *out++ = top * (1 - fy) + bottom * fy;
          }
        }
      }
    }
  }

  strata::Split generate(int64_t size, uint64_t stream_id) const {
    const int64_t channels = shape_[0], height = shape_[1], width = shape_[2];
    Stream stream(seed_, stream_id);
    strata::Split split;
    split.labels.resize(static_cast<std::size_t>(size));
    for (int64_t i = 0; i < size; ++i) split.labels[i] = static_cast<int32_t>(i % classes_);
    for (int64_t i = size - 1; i > 0; --i) {  // Fisher-Yates
      std::swap(split.labels[i], split.labels[stream.below(static_cast<uint64_t>(i + 1))]);
    }
    split.images = strata::Tensor(shape_.with_batch(size));
    float* out = split.images.data();
    for (int64_t i = 0; i < size; ++i) {
      const double* prototype = prototypes_.data() + split.labels[i] * shape_.numel();
      const int64_t dy = static_cast<int64_t>(stream.below(3)) - 1;
      const int64_t dx = static_cast<int64_t>(stream.below(3)) - 1;
      for (int64_t channel = 0; channel < channels; ++channel) {
        for (int64_t y = 0; y < height; ++y) {
          const int64_t source_y = std::clamp<int64_t>(y + dy, 0, height - 1);
          for (int64_t x = 0; x < width; ++x) {
            const int64_t source_x = std::clamp<int64_t>(x + dx, 0, width - 1);
            const double value = prototype[(channel * height + source_y) * width + source_x] +
                                 noise_ * stream.gaussian();
            *out++ = static_cast<float>(std::clamp(value, 0.0, 1.0));
          }
        }
      }
    }
    return split;
  }

  int classes_ = 10;
  strata::Shape shape_;
  int64_t train_size_ = 0;
  int64_t test_size_ = 0;
  uint64_t seed_ = 0;
  double noise_ = 0;
  std::vector<double> prototypes_;  // [classes, C, H, W]
};

void register_all(strata::Registries& registries) {
  registries.datasets.add<SyntheticDataset>("synthetic");
}

}  // namespace

STRATA_PLUGIN("synthetic", "1.0", register_all)
