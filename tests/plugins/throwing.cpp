// test_throwing: register_all() throws a std::runtime_error, as a buggy plugin might.
#include <stdexcept>

#include "strata/plugin.hpp"

namespace {
void register_all(strata::Registries&) { throw std::runtime_error("out of cheese"); }
}  // namespace

STRATA_PLUGIN("test_throwing", "0.0", register_all)
