#include "strata/training/gradient_clipping.hpp"

#include <fmt/format.h>

#include <cmath>

namespace strata {

namespace {

double read_limit(const Config& train, std::string_view key) {
  if (!train.has(key)) return 0;
  const double limit = train.get<double>(key);
  if (!(limit > 0) || !std::isfinite(limit)) {
    train.fail_key(key, fmt::format("must be a finite number above 0 (leave it out for no "
                                    "clipping), found {}",
                                    limit));
  }
  return limit;
}

}  // namespace

GradientClipping GradientClipping::read(const Config& train) {
  GradientClipping clipping;
  clipping.max_norm = read_limit(train, "clip_grad_norm");
  clipping.max_value = read_limit(train, "clip_grad_value");
  return clipping;
}

double global_gradient_norm(std::span<const ParamRef> params) {
  double sum = 0;
  for (const ParamRef& ref : params) {
    if (ref.param->frozen) continue;
    for (float g : ref.param->grad.span()) sum += static_cast<double>(g) * g;
  }
  return std::sqrt(sum);
}

double clip_gradients(std::span<const ParamRef> params, const GradientClipping& clipping) {
  const double norm = global_gradient_norm(params);
  if (clipping.max_value > 0) {
    const auto limit = static_cast<float>(clipping.max_value);
    for (const ParamRef& ref : params) {
      if (ref.param->frozen) continue;
      // NaN stays NaN (both comparisons are false), as with torch.clamp.
      for (float& g : ref.param->grad.span()) g = g < -limit ? -limit : (g > limit ? limit : g);
    }
  }
  if (clipping.max_norm > 0) {
    const double seen = clipping.max_value > 0 ? global_gradient_norm(params) : norm;
    // torch: clip_coef = max_norm / (total_norm + 1e-6) in float32, clamped to at most 1; a
    // coefficient of 1 leaves the gradients as they are. NaN (a NaN gradient) multiplies, as in
    // torch.
    const float coefficient =
        static_cast<float>(clipping.max_norm) / (static_cast<float>(seen) + 1e-6f);
    if (!(coefficient >= 1.0f)) {
      for (const ParamRef& ref : params) {
        if (ref.param->frozen) continue;
        for (float& g : ref.param->grad.span()) g *= coefficient;
      }
    }
  }
  return norm;
}

}  // namespace strata
