// test_marker: stands for a malicious plugin. Loading it (dlopen runs its constructor, before any
// Strata code could refuse it) creates the file named by STRATA_TEST_MARKER, so a test can prove it
// was never loaded. It registers an initializer, so every checkpoint trained with it loaded
// records it under /plugins (all initializer plugins are recorded).
#include <cstdio>
#include <cstdlib>

#include "strata/layer.hpp"
#include "strata/plugin.hpp"
#include "strata/registry.hpp"

namespace {

__attribute__((constructor)) void leave_a_mark() {
  if (const char* marker = std::getenv("STRATA_TEST_MARKER")) {
    if (std::FILE* file = std::fopen(marker, "w")) std::fclose(file);
  }
}

class Ones final : public strata::Initializer {
 public:
  explicit Ones(const strata::Config&) {}
  void fill(strata::Tensor& value, int64_t, int64_t, strata::Rng&) const override {
    for (float& v : value.span()) v = 1.0f;
  }
};

void register_all(strata::Registries& registries) {
  registries.initializers.add<Ones>("test_marker_ones");
}

}  // namespace

STRATA_PLUGIN("test_marker", "0.0", register_all)
