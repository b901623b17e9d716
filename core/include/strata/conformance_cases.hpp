// strata/conformance_cases.hpp: the conformance cases a plugin may export for `strata
// check-plugin` (the checks themselves are a tool: strata/tools/conformance.hpp).
//
// For layers that need keys, a plugin exports beside STRATA_PLUGIN
//   STRATA_CONFORMANCE_CASES({"{type: prelu}", "3,5,5", nullptr}, {"{type: foo, k: 2}", "4", "2"})
// : the layer's YAML, its input sample shapes ("C,H,W", several inputs separated by ';') and
// optionally the expected output sample shape. The symbol is optional and read only by
// check-plugin, so adding it does not change the plugin API version.
#pragma once

#include "strata/plugin.hpp"

namespace strata {

// The layout of one exported case (C strings, so that it stays readable across compilers).
struct ConformanceCaseInfo {
  const char* yaml;    // the layer's YAML; nullptr ends the list
  const char* inputs;  // "C,H,W[;C,H,W...]"
  const char* output;  // expected output sample shape, or nullptr
};

}  // namespace strata

#define STRATA_CONFORMANCE_CASES(...)                                                        \
  extern "C" STRATA_EXPORT const ::strata::ConformanceCaseInfo* strata_conformance_cases() { \
    static const ::strata::ConformanceCaseInfo cases[] = {__VA_ARGS__,                       \
                                                          {nullptr, nullptr, nullptr}};      \
    return cases;                                                                            \
  }
