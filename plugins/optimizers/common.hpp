// Shared by the optimizers of the "optimizers" plugin: reading keys with torch.optim defaults and
// range checks.
#pragma once

#include <fmt/format.h>

#include <cmath>
#include <string>

#include "strata/config.hpp"
#include "strata/error.hpp"
#include "strata/optimizer.hpp"

namespace strata::optimizers {

// Reads a key with a torch.optim default and checks `ok`, failing with "must be <what>".
inline double read_checked(const Config& config, const char* key, double fallback,
                           bool (*ok)(double), const char* what) {
  const double value = config.get<double>(key, fallback);
  if (!std::isfinite(value) || !ok(value)) {
    config.fail_key(key, fmt::format("must be {}, found {}", what, value));
  }
  return value;
}
inline bool is_positive(double v) { return v > 0.0; }
inline bool is_non_negative(double v) { return v >= 0.0; }
inline bool is_probability(double v) { return v >= 0.0 && v < 1.0; }  // [0, 1)

// The per-parameter loop, frozen parameters, lr_mult/decay_mult, step counts and slot naming:
// the runtime's base class (strata/optimizer.hpp), which the sgd plugin uses too.
using strata::PerParameterOptimizer;

}  // namespace strata::optimizers
