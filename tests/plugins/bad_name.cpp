// test_bad_name: a plugin whose name would escape /plugins in a checkpoint ("../evil"). The loader
// must refuse it when it loads, before it registers anything.
#include "strata/plugin.hpp"
#include "strata/registry.hpp"

namespace {
void register_all(strata::Registries&) {}
}  // namespace

STRATA_PLUGIN("../evil", "0.0", register_all)
