// A plugin that claims a plugin API version this Strata does not speak. The loader must refuse it
// after reading `api`, without calling register_all (which would abort the test).
#include <cstdlib>

#include "strata/plugin.hpp"

namespace {
void register_all(strata::Registries&) { std::abort(); }
}  // namespace

// STRATA_TEST_API_2: a plugin built for API 2, whose datasets loaded whole splits: the refusal
// says what changed.
#ifdef STRATA_TEST_API_2
constexpr int kApi = 2;
#else
constexpr int kApi = strata::kPluginApi + 41;
#endif

extern "C" STRATA_EXPORT const strata::PluginInfo* strata_plugin() {
  static const strata::PluginInfo info{kApi, "test_wrong_api", "0.0", register_all};
  return &info;
}
