// strata/gradcheck.hpp: checks a whole model's backward() against finite differences.
//
// The objective is L = sum(output * R), R ~ U(-1, 1) fixed, on a random input batch
// x ~ U(-1, 1), so dL/doutput = R. For each checked tensor (the model input and every parameter
// of the selected layers) backward() gives the analytic gradient a, and each checked entry v gets
// the centered difference
//     n = (L(v + eps) - L(v - eps)) / ((v + eps) - (v - eps))     (the step as stored in float32)
// with L summed in double from the float32 outputs. The relative error of an entry is
//     |n - a| / max(|n|, |a|, floor),   floor = 0.1 * rms(a over the tensor)
// (the floor keeps entries whose gradient is nearly zero from failing on rounding noise).
//
// Tensors are float32, so "double precision" here means double accumulation: the reference
// backend (the default) sums every dot product in double and rounds once per output, which puts
// the noise in L near 1e-7 relative and the noise in n near 1e-4 of the gradient at eps = 1e-3.
// The pass threshold is 1e-2: correct models (convolutions, relu, max pooling, tanh, dropout) stay
// below about 4e-3 in the tests, and a derivative that is 5% off fails by 5x.
//
// Kinks: relu, leaky relu and max pooling are not differentiable everywhere, and a difference
// that straddles a kink is wrong by up to the size of the gradient. An entry whose error exceeds
// threshold / 4 is therefore measured again with 4 eps: if the two differences disagree with
// each other by more than threshold / 4, the function is not smooth around v, and the entry is
// counted as a kink and left out; if they agree, the error stands. In a real network a weight of
// the first layer moves thousands of relu and max-pool decisions, and a few entries straddle
// several kinks at once, which the second step does not always expose. So a tensor passes when at
// least 95% of its entries off kinks are within the threshold, and at most half of its checked
// entries are kinks (else too little was checked). A wrong backward() fails nearly every entry;
// a bug confined to fewer than 5% of a tensor's entries can pass (the "within" percentage and the
// "max rel err" column still show it).
//
// Dropout and other stochastic layers run in training mode with the random generator reseeded
// before every forward pass, so each evaluation draws the same mask.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "strata/config.hpp"
#include "strata/registry.hpp"

namespace strata {

class Graph;
class Backend;

struct GradcheckOptions {
  int64_t batch = 2;                // samples in the random batch
  std::vector<std::string> layers;  // layers whose parameters are checked ("input": the input);
                                    // empty: the input and every layer
  int64_t max_entries = 200;        // entries checked per tensor (a seeded sample); 0: all
  double eps = 1e-3;
  double threshold = 1e-2;  // pass: relative error <= threshold
  uint32_t seed = 1;
};

struct TensorGradcheck {
  std::string name;      // "input" or "<layer>/<param>"
  std::string shape;     // "[2, 1, 28, 28]"
  int64_t entries = 0;   // elements of the tensor
  int64_t checked = 0;   // entries compared (kinks included)
  int64_t kinks = 0;     // entries left out because a kink lay within eps
  int64_t within = 0;    // entries off kinks whose relative error is within the threshold
  double max_error = 0;  // largest relative error over the compared entries that were not kinks
  int64_t worst_index = -1;
  double worst_numerical = 0, worst_analytic = 0;
  bool passed = true;
};

struct GradcheckReport {
  std::vector<TensorGradcheck> tensors;
  double threshold = 0;
  bool passed = true;
  std::string text() const;  // the table `strata gradcheck` prints
};

// Checks `graph` on `backend`. All parameters are treated as trainable during the check (frozen
// layers are checked too); their values are restored afterwards.
GradcheckReport gradient_check(Graph& graph, Backend& backend, const GradcheckOptions& options);

// Builds the experiment's model (its `seed`, the `model` section; every other section is
// ignored) on `backend_name` and checks it.
GradcheckReport gradient_check_experiment(const Config& experiment, const Registries& registries,
                                          const std::string& backend_name,
                                          const GradcheckOptions& options);

}  // namespace strata
