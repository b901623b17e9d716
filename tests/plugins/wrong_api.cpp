// A plugin that claims a plugin API version this Strata does not speak. The loader must refuse it
// after reading `api`, without calling register_all (which would abort the test).
#include <cstdlib>

#include "strata/plugin.hpp"

namespace {
void register_all(strata::Registries&) { std::abort(); }
}  // namespace

// STRATA_TEST_API: a plugin built for that older API (2: datasets loaded whole splits; 3: before
// Context carried the communicator; 4: before the export hooks; 5: before implementation() and
// the kernel implementation lists; 6: before the bf16 precision and normalize(); 7: before
// Conv2dKernel::arithmetic()): the refusal says what changed since.
#ifdef STRATA_TEST_API
constexpr int kApi = STRATA_TEST_API;
#else
constexpr int kApi = strata::kPluginApi + 41;
#endif

extern "C" STRATA_EXPORT const strata::PluginInfo* strata_plugin() {
  static const strata::PluginInfo info{kApi, "test_wrong_api", "0.0", register_all};
  return &info;
}
