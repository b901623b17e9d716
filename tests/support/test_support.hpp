// Shared helpers for the Boost.Test suites.
#pragma once

#include <filesystem>
#include <random>
#include <string>

#include "strata/config.hpp"
#include "strata/registry.hpp"
#include "strata/tensor.hpp"

namespace strata::test {

// Registries filled from the build's plugin folder (bin/../lib/strata), loaded once per process.
Registries& registries();

// Uniform random values in [low, high): tests never run on zeros or constants.
Tensor random_tensor(const Shape& shape, std::mt19937& rng, float low = -1.0f, float high = 1.0f);

// A YAML snippet as a Config (source name "<test>").
Config yaml(const std::string& text);

// A fresh, empty temporary folder, removed when the object goes out of scope.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

// Largest |a - b| over all elements (shapes must have equal element counts).
float max_abs_diff(const Tensor& a, const Tensor& b);

}  // namespace strata::test
