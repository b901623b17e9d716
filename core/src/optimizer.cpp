// What strata/optimizer.hpp declares beside the interfaces.
#include "strata/optimizer.hpp"

namespace strata {

double l2_penalty(std::span<const ParamRef> params, double weight_decay) {
  if (weight_decay == 0) return 0;
  double sum = 0;
  for (const ParamRef& ref : params) {
    if (ref.param->decay_mult == 0.0f) continue;
    double squares = 0;
    for (float v : ref.param->value.span()) squares += static_cast<double>(v) * v;
    sum += ref.param->decay_mult * squares;
  }
  return 0.5 * weight_decay * sum;
}

}  // namespace strata
