// strata/tools/gradcheck.hpp: checks a whole model's backward() against finite differences.
//
// The objective is L = sum(output * R), R ~ U(-1, 1) fixed, on a random input batch
// x ~ U(-1, 1), so dL/doutput = R. For each checked tensor (the model input and every parameter
// of the selected layers) backward() gives the analytic gradient a, and each checked entry v gets
// centered differences
//     n(h) = (L(v + h) - L(v - h)) / ((v + h) - (v - h))     (the step as stored in float32)
// with L summed in double from the float32 outputs. The relative error of an entry is
//     |n - a| / max(|n|, |a|, floor),   floor = 0.1 * rms(a over the tensor)
// (the floor keeps entries whose gradient is nearly zero from failing on rounding noise).
//
// Kinks are frozen, not guessed at. relu, leaky_relu and max_pool are only piecewise smooth: in a
// real network one weight of the first layer moves thousands of relu and max-pool decisions, and
// in float32 no step h is both small enough to cross none of them and large enough to rise above
// rounding (issue 20: 68% of a ResNet's conv entries straddled a kink at h = 1e-3). So the check
// runs every pass under FrozenBranches (strata/layer.hpp): the unperturbed pass records each
// kinked layer's decisions (which side of 0, which window element), and every perturbed pass
// replays them. The network then computes one smooth function that equals the real one on the
// open region around the unperturbed point, so its derivative there is exactly the derivative
// backward() must produce, and h can be large enough (default 1e-2) to put rounding noise near
// 1e-4 of the gradient. Through relu, max pooling, convolutions and linear layers the frozen
// function is even linear in each single parameter, so the difference has no truncation error.
// Dropout and other stochastic layers run in training mode with the random generator reseeded
// before every forward pass, so each evaluation draws the same mask.
//
// Three step sizes. An entry whose error at h exceeds threshold / 4 is measured again at h / 2
// (less truncation); if n(h) and n(h / 2) agree within threshold / 4, its error is that of
// n(h / 2). Otherwise it is measured at 2 h (less rounding); if n(2 h) and n(h) agree, its error
// is that of n(h). If neither pair agrees, the difference is no reliable derivative there
// (curvature, rounding, or a kink in a layer that cannot freeze its branches): the entry is
// counted as skipped, never silently.
//
// Pass rule: a tensor passes when EVERY compared (not skipped) entry is within the threshold 1e-2
// and at most half of its checked entries were skipped. A derivative 5% off fails by 5x; a wrong
// backward() confined to one element fails as soon as that element is among the checked ones
// (`--entries 0` checks all).
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
  double eps = 1e-2;                // the step h
  double threshold = 1e-2;          // pass: relative error <= threshold
  bool freeze_branches = true;      // false: plain differences, kinks only detected (see above)
  uint32_t seed = 1;
};

struct TensorGradcheck {
  std::string name;      // "input" or "<layer>/<param>"
  std::string shape;     // "[2, 1, 28, 28]"
  int64_t entries = 0;   // elements of the tensor
  int64_t checked = 0;   // entries measured (skipped ones included)
  int64_t skipped = 0;   // entries left out: differences at eps/2, eps, 2 eps disagree
  int64_t within = 0;    // compared entries whose relative error is within the threshold
  double max_error = 0;  // largest relative error over the compared (not skipped) entries
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

// Builds the experiment's model as every command does (strata/training/experiment.hpp,
// Experiment::Scope::model: its seed, backend, threads and `model`; the data, optimizer and
// training settings are not read) and checks it on the experiment's backend.
GradcheckReport gradient_check_experiment(const Config& experiment, const Registries& registries,
                                          const GradcheckOptions& options);

}  // namespace strata
