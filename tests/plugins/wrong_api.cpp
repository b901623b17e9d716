// A plugin that claims a plugin API version this Strata does not speak. The loader must refuse it
// after reading `api`, without calling register_all (which would abort the test).
#include <cstdlib>

#include "strata/plugin.hpp"

namespace {
void register_all(strata::Registries&) { std::abort(); }
}  // namespace

extern "C" STRATA_EXPORT const strata::PluginInfo* strata_plugin() {
  static const strata::PluginInfo info{strata::kPluginApi + 41, "test_wrong_api", "0.0", register_all};
  return &info;
}
