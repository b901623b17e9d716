// strata/tools/conformance.hpp: the layer conformance checks, one implementation for the test suite
// (tests/test_layers.cpp runs them over its table of in-tree cases) and for plugin authors
// (`strata check-plugin libfoo.so` runs them over every layer a plugin registers).
//
// A ConformanceCase is a layer's YAML and its input sample shapes. Each check builds the layer from
// the registries, runs it on fresh random inputs, and returns a CheckResult instead of throwing:
// an Error or any other exception raised by the layer is a failed check whose detail says what
// threw. The checks:
//   shapes       setup() agrees with output_shape(), with the expected shape when the case gives
//                one, and forward() writes every element of an output of that shape;
//   gradients    backward() against central differences, for every input and parameter element,
//                on the reference backend; gradients are overwritten, never accumulated, and an
//                undefined din leaves the parameter gradients unchanged;
//   backends     every other registered backend agrees with "reference" on forward, input and
//                parameter gradients (max |b - ref| <= 1e-4 * max(1, max |ref|) per tensor); the
//                detail names the kernel implementation each ran, e.g. "tbb (channel_window)";
//   batch        in inference mode, a sample run alone (as a batch_slice view) gives the output it
//                gets inside a batch, on every backend (1e-6 relative);
//   nan          an all-NaN sample gives NaN outputs (as in PyTorch) on every backend, in both
//                modes, and does not leak into the other sample (unless the layer mixes samples
//                in training, as batch_norm does);
//   reads        a layer that says its backward does not read its inputs' or output's values
//                (Layer::backward_reads_inputs()/backward_reads_output()) computes bit-identical
//                gradients with those tensors overwritten, on every backend;
//   checkpoint   parameters and buffers survive save_checkpoint/load_checkpoint_tensors into a
//                fresh layer, which then computes a bit-identical output.
// Tolerances and the reasoning behind them are documented beside each check in conformance.cpp.
//
// A plugin may ship its own cases, for layers that need keys, with STRATA_CONFORMANCE_CASES
// (strata/conformance_cases.hpp).
#pragma once

#include <cstdint>
#include <filesystem>
#include <iosfwd>
#include <memory>
#include <string>
#include <vector>

#include "strata/conformance_cases.hpp"
#include "strata/layer.hpp"
#include "strata/plugin.hpp"
#include "strata/tensor.hpp"

namespace strata {

class Backend;
class Registries;

struct ConformanceCase {
  std::string yaml;           // the layer's config, as in an experiment file ("{type: relu}")
  std::vector<Shape> inputs;  // input sample shapes (no batch dimension)
  Shape output;               // expected output sample shape; rank 0: unknown, only consistency
  // Batch of the gradient check. 2 unless a layer needs more samples to be non-degenerate
  // (batch_norm on features [C] normalizes over the batch alone: with 2 samples every x_hat is
  // +-1 and the input gradient vanishes).
  int64_t gradient_batch = 2;
};
std::ostream& operator<<(std::ostream& os, const ConformanceCase& layer_case);

struct CheckResult {
  // "shapes", "gradients", "backends", "batch", "nan", "reads", "fusion", "recompute",
  // "checkpoint"
  std::string check;
  bool passed = false;
  std::string detail;  // what failed, or what was checked ("312 elements", "tbb")
};

CheckResult check_shapes(const Registries& registries, const ConformanceCase& layer_case);
CheckResult check_gradients(const Registries& registries, const ConformanceCase& layer_case);
// `backends`: the ones to compare with "reference"; empty: every other registered backend.
CheckResult check_backends_agree(const Registries& registries, const ConformanceCase& layer_case,
                                 std::vector<std::string> backends = {});
CheckResult check_batch_independence(const Registries& registries,
                                     const ConformanceCase& layer_case);
CheckResult check_nan_propagates(const Registries& registries, const ConformanceCase& layer_case);
CheckResult check_backward_reads(const Registries& registries, const ConformanceCase& layer_case);
CheckResult check_fusion(const Registries& registries, const ConformanceCase& layer_case);
CheckResult check_recompute(const Registries& registries, const ConformanceCase& layer_case);
// Writes its checkpoint into `scratch_dir`, which must exist.
CheckResult check_checkpoint_round_trip(const Registries& registries,
                                        const ConformanceCase& layer_case,
                                        const std::filesystem::path& scratch_dir);
// All eight, in the order above.
std::vector<CheckResult> run_conformance(const Registries& registries,
                                         const ConformanceCase& layer_case,
                                         const std::filesystem::path& scratch_dir);

// "3,28,28" -> [3, 28, 28]; several inputs "3,8,8;3,8,8". Errors name `what`.
std::vector<Shape> parse_sample_shapes(const std::string& text, const std::string& what);

// The cases a plugin exports with STRATA_CONFORMANCE_CASES (empty when it exports none).
std::vector<ConformanceCase> exported_conformance_cases(const Plugin& plugin);

// The harness the checks run on, for tests that drive a layer by hand (tests/test_layers.cpp uses
// it beside the checks, so there is one copy).
namespace conformance {

// A layer set up on one backend, with that backend's execution policy (set_threads(0)).
struct LayerInstance {
  std::shared_ptr<Layer> layer;
  std::shared_ptr<Backend> backend;
  Shape output;  // sample shape from setup()
};
// Creates the layer from `layer_config` (named "l"), sets it up for `inputs` (sample shapes) with
// the kernels of `backend_name`, and creates that backend. Errors are the registries' (unknown
// type or backend, bad keys, shapes the layer refuses).
LayerInstance make_layer(const Registries& registries, const Config& layer_config,
                         const std::vector<Shape>& inputs, const std::string& backend_name);

// U(low, high) in every element.
Tensor random_tensor(const Shape& shape, Rng& rng, float low = -1.0f, float high = 1.0f);
// Parameters get U(-1, 1); buffers (batch norm's running statistics) U(0.5, 1.5): positive, so a
// running variance stays valid, and unlike their initial 0 and 1.
void randomize_params(Layer& layer, Rng& rng);
// forward() in `training` mode with an Rng seeded by `seed` (a stochastic layer draws the same
// mask for the same seed), into an output pre-filled with NaN (unwritten elements show).
Tensor run_forward(LayerInstance& instance, const std::vector<Tensor>& inputs, bool training,
                   uint32_t seed);
// backward() into NaN-filled input and parameter gradients (they must be overwritten, never
// accumulated); returns the input gradients. `want_input_grads` false passes undefined din.
std::vector<Tensor> run_backward(LayerInstance& instance, const std::vector<Tensor>& inputs,
                                 const Tensor& out, const Tensor& dout, bool training,
                                 uint32_t seed, bool want_input_grads = true);

double dot(const Tensor& a, const Tensor& b);  // in double
bool all_finite(const Tensor& t);
float max_abs(const Tensor& t);
double rms(const Tensor& t);  // 0 for an empty tensor
// max |a - b|, NaN-aware: any non-finite difference gives +inf. Different sizes: an Error.
float max_abs_diff(const Tensor& a, const Tensor& b);

}  // namespace conformance

}  // namespace strata

