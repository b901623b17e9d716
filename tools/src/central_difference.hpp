// central_difference.hpp (private to tools/): the one numerical derivative of the gradient checks
// (conformance.cpp's per-layer check and gradcheck.cpp's whole-model check).
#pragma once

namespace strata {

// d objective / d value by central differences: `value` is moved to value +- eps, the objective
// evaluated at each, and `value` restored. The step is measured from the float values actually
// taken (value + eps rounds in float32), not assumed to be 2 * eps.
template <class Objective>
double central_difference(float& value, double eps, Objective&& objective) {
  const float saved = value;
  value = static_cast<float>(saved + eps);
  const double up = value;
  const double plus = objective();
  value = static_cast<float>(saved - eps);
  const double down = value;
  const double minus = objective();
  value = saved;
  return (plus - minus) / (up - down);
}

}  // namespace strata
