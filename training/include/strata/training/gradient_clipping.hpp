// strata/training/gradient_clipping.hpp: clipping the gradients between backward and the optimizer step,
// as torch.nn.utils.clip_grad_value_ and clip_grad_norm_ (PyTorch 1.13) do.
//
// WHAT THIS REPRESENTS
//   train.clip_grad_value: v   every gradient element is clamped to [-v, v] (NaN stays NaN).
//   train.clip_grad_norm: m    the global L2 norm n of all gradients taken together is computed;
//                              every gradient is multiplied by min(1, m / (n + 1e-6)).
//   Both given: by value first, then by norm (so the norm bound holds after both).
//   Only parameters an optimizer updates take part: frozen parameters are left out, as PyTorch
//   leaves out parameters with requires_grad=False (their .grad is None). Weight decay is added
//   by the optimizer's step afterwards, so it is not clipped, as in PyTorch.
//
// REQUIRES
//   - the parameter gradients of the step are in place (after Graph::backward).
// ENSURES
//   - returns the global L2 norm of the gradients before any clipping (sums in double), which
//     the trainer records as /history/iterations/grad_norm.
#pragma once

#include <span>

#include "strata/config.hpp"
#include "strata/optimizer.hpp"

namespace strata {

struct GradientClipping {
  double max_norm = 0;   // train.clip_grad_norm; 0: off
  double max_value = 0;  // train.clip_grad_value; 0: off
  bool enabled() const { return max_norm > 0 || max_value > 0; }
  // Reads clip_grad_norm and clip_grad_value from the `train` section; each must be a finite
  // number > 0 when given (an error at the key otherwise).
  static GradientClipping read(const Config& train);
};

// sqrt of the sum of squares of every gradient element of the non-frozen parameters.
double global_gradient_norm(std::span<const ParamRef> params);

// Clips as described above and returns the norm before clipping.
double clip_gradients(std::span<const ParamRef> params, const GradientClipping& clipping);

}  // namespace strata
