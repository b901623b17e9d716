#include "test_support.hpp"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>

#include "strata/error.hpp"
#include "strata/plugin.hpp"

namespace strata::test {

Registries& registries() {
  static Registries* instance = [] {
    auto* r = new Registries();
    static PluginLoader loader(*r);
    // The build's own plugins only: whatever STRATA_PLUGIN_PATH holds (a user's own plugins, a
    // half-built one) must not change what the in-tree suite checks.
    loader.load_dir(std::filesystem::path(STRATA_BIN_DIR) / ".." / "lib" / "strata");
    return r;
  }();
  return *instance;
}

const Backend& backend(const std::string& name) {
  static std::map<std::string, std::shared_ptr<Backend>> backends;
  std::shared_ptr<Backend>& entry = backends[name];
  if (!entry) {
    entry = registries().backends.create(name, Config{});
    entry->set_threads(0);
  }
  return *entry;
}

Tensor random_tensor(const Shape& shape, std::mt19937& rng, float low, float high) {
  Tensor t(shape);
  std::uniform_real_distribution<float> dist(low, high);
  for (float& v : t.span()) v = dist(rng);
  return t;
}

Config yaml(const std::string& text) { return Config::parse_string(text, "<test>"); }

TempDir::TempDir() {
  static int counter = 0;
  path_ = std::filesystem::temp_directory_path() /
          fmt::format("strata-test-{}-{}", ::getpid(), counter++);
  std::filesystem::remove_all(path_);
  std::filesystem::create_directories(path_);
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

float max_abs_diff(const Tensor& a, const Tensor& b) {
  if (a.numel() != b.numel()) fail("max_abs_diff: {} vs {}", a.shape().str(), b.shape().str());
  float worst = 0;
  for (int64_t i = 0; i < a.numel(); ++i) worst = std::max(worst, std::abs(a.data()[i] - b.data()[i]));
  return worst;
}

}  // namespace strata::test
