#include "strata/tools/conformance.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <boost/dll/shared_library.hpp>
#include <cmath>
#include <functional>
#include <limits>
#include <numeric>
#include <optional>
#include <ostream>

#include "central_difference.hpp"
#include "strata/checkpoint.hpp"
#include "strata/config.hpp"
#include "strata/error.hpp"
#include "strata/layer.hpp"
#include "strata/registry.hpp"

namespace strata {

namespace fs = std::filesystem;

std::ostream& operator<<(std::ostream& os, const ConformanceCase& layer_case) {
  os << layer_case.yaml << " on";
  for (const Shape& shape : layer_case.inputs) os << ' ' << shape.str();
  return os;
}

namespace conformance {

Tensor random_tensor(const Shape& shape, Rng& rng, float low, float high) {
  Tensor t(shape);
  std::uniform_real_distribution<float> dist(low, high);
  for (float& v : t.span()) v = dist(rng);
  return t;
}

LayerInstance make_layer(const Registries& registries, const Config& layer_config,
                         const std::vector<Shape>& inputs, const std::string& backend_name) {
  LayerInstance instance;
  instance.layer = registries.layers.create(layer_config);
  instance.layer->set_name("l");
  const SetupContext setup(registries.kernels, backend_name, "l");
  instance.output = instance.layer->setup(setup, inputs);
  instance.backend = registries.backends.create(backend_name, Config{});
  instance.backend->set_threads(0);
  return instance;
}

// Parameters get U(-1, 1); buffers (batch norm's running statistics) U(0.5, 1.5), positive so
// that a running variance stays valid, and different from their initial 0 and 1, so that the
// evaluation path and the checkpoint round trip of buffers are really exercised.
void randomize_params(Layer& layer, Rng& rng) {
  for (Param* param : layer.params())
    param->value.copy_from(random_tensor(param->value.shape(), rng));
  for (NamedTensor& buffer : layer.buffers()) {
    buffer.tensor.copy_from(random_tensor(buffer.tensor.shape(), rng, 0.5f, 1.5f));
  }
}

// Runs forward with a freshly seeded Rng, so stochastic layers (dropout) draw the same mask on
// every call with the same seed. The output buffer is pre-filled with NaN: a layer that reads its
// output before writing it, or leaves part of it unwritten, produces NaNs that the checks see.
Tensor run_forward(LayerInstance& instance, const std::vector<Tensor>& inputs, bool training,
                   uint32_t seed) {
  Rng rng(seed);
  Context context{training, &rng, instance.backend.get()};
  Tensor out(instance.output.with_batch(inputs.at(0).dim(0)));
  out.fill(std::numeric_limits<float>::quiet_NaN());
  instance.layer->forward(context, inputs, out);
  return out;
}

// backward() into NaN-filled input and parameter gradients (they must be overwritten, never
// accumulated). `want_input_grads` false passes undefined din tensors (nobody needs them).
std::vector<Tensor> run_backward(LayerInstance& instance, const std::vector<Tensor>& inputs,
                                 const Tensor& out, const Tensor& dout, bool training,
                                 uint32_t seed, bool want_input_grads) {
  Rng rng(seed);
  Context context{training, &rng, instance.backend.get()};
  std::vector<Tensor> din;
  for (const Tensor& x : inputs) {
    din.push_back(want_input_grads ? Tensor(x.shape()) : Tensor());
    if (want_input_grads) din.back().fill(std::numeric_limits<float>::quiet_NaN());
  }
  for (Param* param : instance.layer->params()) {
    param->grad.fill(std::numeric_limits<float>::quiet_NaN());
  }
  instance.layer->backward(context, inputs, out, dout, din);
  return din;
}

double dot(const Tensor& a, const Tensor& b) {
  double sum = 0.0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    sum += static_cast<double>(a.data()[i]) * static_cast<double>(b.data()[i]);
  }
  return sum;
}

bool all_finite(const Tensor& t) {
  return std::all_of(t.span().begin(), t.span().end(), [](float v) { return std::isfinite(v); });
}

float max_abs(const Tensor& t) {
  float m = 0.0f;
  for (float v : t.span()) m = std::max(m, std::abs(v));
  return m;
}

// |a - b| over all elements, NaN-aware: any non-finite element makes the result +inf.
float max_abs_diff(const Tensor& a, const Tensor& b) {
  if (a.numel() != b.numel())
    fail("tensors of shapes {} and {} compared", a.shape().str(), b.shape().str());
  float worst = 0.0f;
  for (int64_t i = 0; i < a.numel(); ++i) {
    const float d = std::abs(a.data()[i] - b.data()[i]);
    if (!std::isfinite(d)) return std::numeric_limits<float>::infinity();
    worst = std::max(worst, d);
  }
  return worst;
}

double rms(const Tensor& t) {
  double sum = 0.0;
  for (float v : t.span()) sum += static_cast<double>(v) * v;
  return t.numel() == 0 ? 0.0 : std::sqrt(sum / static_cast<double>(t.numel()));
}

}  // namespace conformance

namespace {

// A failed expectation inside a check: ends the check with this message.
struct CheckFailure {
  std::string message;
};
template <class... Args>
[[noreturn]] void check_fail(fmt::format_string<Args...> format, Args&&... args) {
  throw CheckFailure{fmt::format(format, std::forward<Args>(args)...)};
}

// Runs `body` (which returns the detail of a pass) and turns every way of failing into a result.
CheckResult run_check(const std::string& name, const std::function<std::string()>& body) {
  CheckResult result{name, false, ""};
  try {
    result.detail = body();
    result.passed = true;
  } catch (const CheckFailure& failure) {
    result.detail = failure.message;
  } catch (const Error& error) {
    result.detail = fmt::format("error: {}", error.what());
  } catch (const std::exception& error) {
    result.detail = fmt::format("the layer threw an exception: {}", error.what());
  } catch (...) {
    result.detail = "the layer threw something that is not a std::exception";
  }
  return result;
}

Config case_config(const ConformanceCase& layer_case) {
  return Config::parse_string(layer_case.yaml, "<conformance case>");
}

uint32_t case_seed(const ConformanceCase& layer_case) {
  return static_cast<uint32_t>(std::hash<std::string>{}(layer_case.yaml) & 0x7fffffff);
}

using conformance::all_finite;
using conformance::dot;
using conformance::max_abs;
using conformance::max_abs_diff;
using conformance::random_tensor;
using conformance::randomize_params;
using conformance::rms;
using conformance::run_backward;
using conformance::run_forward;
using Instance = conformance::LayerInstance;

std::vector<Shape> batched(const std::vector<Shape>& samples, int64_t batch) {
  std::vector<Shape> shapes;
  for (const Shape& shape : samples) shapes.push_back(shape.with_batch(batch));
  return shapes;
}

// The harness's own precondition checks: a missing type or backend ends the check with its detail.
Instance make_layer(const Registries& registries, const ConformanceCase& layer_case,
                    const std::string& backend_name) {
  const Config config = case_config(layer_case);
  const std::string type = config.get<std::string>("type");
  if (!registries.layers.contains(type))
    check_fail("no loaded plugin registers layer type '{}'", type);
  if (!registries.backends.contains(backend_name)) {
    check_fail("backend '{}' is not registered (is its plugin loaded?)", backend_name);
  }
  return conformance::make_layer(registries, config, layer_case.inputs, backend_name);
}

// Inputs for the gradient check: a shuffled grid of distinct values in [-2, 2] with spacing s,
// none closer than s/2 to zero. A central difference with eps <= s/4 therefore never crosses a
// kink of relu/leaky_relu (at 0) nor changes which element of a max-pool window is the maximum
// (values differ by >= s > 2 eps), so every difference sees a smooth function.
Tensor kink_free_tensor(const Shape& shape, Rng& rng, double* spacing) {
  Tensor t(shape);
  const int64_t n = t.numel();
  *spacing = 4.0 / static_cast<double>(n);
  std::vector<int64_t> order(static_cast<std::size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rng);
  for (int64_t i = 0; i < n; ++i) {
    const double k = static_cast<double>(order[static_cast<std::size_t>(i)]);
    t.data()[i] = static_cast<float>(-2.0 + (k + 0.5) * *spacing);
  }
  return t;
}

struct GradientReport {
  int64_t checked = 0;
  int64_t failed = 0;
  std::string first_failures;
};

void compare_gradient(const std::string& what, int64_t index, double numerical, double analytic,
                      double scale, GradientReport& report) {
  ++report.checked;
  const double error = std::abs(numerical - analytic);
  if (std::isfinite(numerical) && std::isfinite(analytic) &&
      error <= 3e-3 * (std::abs(analytic) + scale) + 1e-6) {
    return;
  }
  if (++report.failed <= 5) {
    report.first_failures += fmt::format("\n  {}[{}]: numerical {:.6g}, backward {:.6g}", what,
                                         index, numerical, analytic);
  }
}

// Checks every element of `values` (an input or a parameter) against `analytic`.
void check_tensor_gradient(const std::string& what, Tensor values, const Tensor& analytic,
                           double eps, const std::function<double()>& objective,
                           GradientReport& report) {
  if (!all_finite(analytic)) check_fail("{}: backward left NaN or inf in the gradient", what);
  const double scale = rms(analytic);
  for (int64_t i = 0; i < values.numel(); ++i) {
    compare_gradient(what, i, central_difference(values.data()[i], eps, objective),
                     analytic.data()[i], scale, report);
  }
}

std::vector<NamedTensor> state_of(Layer& layer) {
  std::vector<NamedTensor> state;
  for (Param* param : layer.params())
    state.push_back({layer.name() + "/" + param->name, param->value});
  for (NamedTensor& buffer : layer.buffers())
    state.push_back({layer.name() + "/" + buffer.name, buffer.tensor});
  return state;
}

}  // namespace

// ---- shapes ----
//
// setup() returns the output sample shape; output_shape() must report the same, the case's
// expected shape (worked out by hand) must match when given, and forward() on a batch of 2 must
// write every element of a buffer of that shape (pre-filled with NaN).
CheckResult check_shapes(const Registries& registries, const ConformanceCase& layer_case) {
  return run_check("shapes", [&] {
    Instance instance = make_layer(registries, layer_case, "reference");
    if (instance.layer->output_shape() != instance.output) {
      check_fail("setup() returns {} but output_shape() is {}", instance.output.str(),
                 instance.layer->output_shape().str());
    }
    if (layer_case.output.rank() > 0 && instance.output != layer_case.output) {
      check_fail("setup() gives {}, expected {}", instance.output.str(), layer_case.output.str());
    }
    Rng rng(case_seed(layer_case) + 4);
    randomize_params(*instance.layer, rng);
    std::vector<Tensor> inputs;
    for (const Shape& shape : batched(layer_case.inputs, 2))
      inputs.push_back(random_tensor(shape, rng));
    const Tensor out = run_forward(instance, inputs, false, 1);
    if (!all_finite(out))
      check_fail("forward() left NaN or inf in its {} output", out.shape().str());
    return fmt::format("output {}", instance.output.str());
  });
}

// ---- gradients ----
//
// Objective L = sum(out * R) with R ~ U(-1, 1), so dL/dout = R and backward(dout = R) must give
// dL/din and dL/dparam. Each element v is checked against the central difference
//   (L(v + eps) - L(v - eps)) / ((v + eps) - (v - eps)),
// the denominator being the perturbation as actually stored in float. L is summed in double from
// the float outputs; the layer is deterministic, so outputs v does not touch cancel exactly and
// only the rounding of the affected outputs (~1e-7 relative each) divided by 2 eps remains.
//
//   inputs:     eps = min(1e-2, s/4) on the kink-free grid above (s = 4/numel, so eps >= 1e-3
//               for inputs up to 1000 elements): float noise ~1e-4 relative at worst.
//   parameters: eps = 1e-2 on U(-1, 1) values. Layers linear in their parameters (conv, linear,
//               PReLU's slope) have no truncation error, and the larger eps keeps noise small.
//   tolerance:  |numerical - analytic| <= 3e-3 * (|analytic| + rms(analytic gradient)) + 1e-6.
//               The rms term keeps elements whose gradient is nearly cancelled from failing on
//               absolute noise. Over the in-tree table the worst observed ratio |num - ana| /
//               (|ana| + rms) is ~1e-4 (conv2d with groups), a 30x margin, while a 1% error in a
//               derivative fails, and an indexing bug fails by orders of magnitude. Smooth layers
//               (tanh, sigmoid, swish) add a truncation error eps^2 |f'''| / 6 < 2e-5, far below.
//
// Stochastic layers run in training mode with the Rng reseeded before every forward, so dropout
// draws the same mask for every evaluation and is checked as the linear map it then is.
CheckResult check_gradients(const Registries& registries, const ConformanceCase& layer_case) {
  return run_check("gradients", [&] {
    const int64_t kBatch = layer_case.gradient_batch;
    constexpr bool kTraining = true;
    const uint32_t seed = case_seed(layer_case);
    Rng rng(seed);
    Instance instance = make_layer(registries, layer_case, "reference");

    double min_spacing = 1.0;
    std::vector<Tensor> inputs;
    for (const Shape& shape : batched(layer_case.inputs, kBatch)) {
      double spacing = 0.0;
      inputs.push_back(kink_free_tensor(shape, rng, &spacing));
      min_spacing = std::min(min_spacing, spacing);
    }
    randomize_params(*instance.layer, rng);

    const Tensor out = run_forward(instance, inputs, kTraining, seed);
    if (!all_finite(out)) check_fail("forward left NaN or inf in its output");
    const Tensor weights = random_tensor(out.shape(), rng);

    // Analytic gradients, then the same backward without input gradients: the parameter
    // gradients must not change (an undefined din means "skip", not "skip everything").
    const std::vector<Tensor> din = run_backward(instance, inputs, out, weights, kTraining, seed);
    std::vector<Tensor> param_grads;
    for (Param* param : instance.layer->params()) param_grads.push_back(param->grad.clone());
    run_backward(instance, inputs, out, weights, kTraining, seed, /*want_input_grads=*/false);
    for (std::size_t p = 0; p < param_grads.size(); ++p) {
      const Param& param = *instance.layer->params()[p];
      if (max_abs_diff(param.grad, param_grads[p]) != 0.0f) {
        check_fail("the {} gradient changes when the input gradient is not wanted", param.name);
      }
    }

    auto objective = [&] { return dot(run_forward(instance, inputs, kTraining, seed), weights); };
    GradientReport report;
    const double input_eps = std::min(1e-2, min_spacing / 4.0);
    for (std::size_t i = 0; i < inputs.size(); ++i) {
      check_tensor_gradient(fmt::format("input{}", i), inputs[i], din[i], input_eps, objective,
                            report);
    }
    for (std::size_t p = 0; p < param_grads.size(); ++p) {
      Param& param = *instance.layer->params()[p];
      check_tensor_gradient(param.name, param.value, param_grads[p], 1e-2, objective, report);
    }
    if (report.failed > 0) {
      check_fail("{} of {} gradient elements disagree with central differences:{}", report.failed,
                 report.checked, report.first_failures);
    }
    if (report.checked == 0) check_fail("nothing to check: the layer has no input elements");
    return fmt::format("{} elements", report.checked);
  });
}

// ---- backends ----
//
// The same layer is set up on "reference" and on the other backend with identical parameters,
// then both run forward and backward on the same random inputs. The batch is large enough (>= 50K
// input elements, up to N = 64) that parallel loops really split the work. Tolerance: max |b -
// reference| <= 1e-4 * max(1, max |reference|) per tensor. The reference sums in double; a float
// kernel summing K terms in another order is off by ~sqrt(K) * 6e-8 relative (K <= ~5000 here,
// so ~5e-6), 20x below the bound, while an indexing or border bug gives O(1) relative errors.
// The detail names each backend with the kernel implementation its layer ran
// (Layer::implementation(), e.g. "tbb (channel_window)"), so a reader sees what was compared.
CheckResult check_backends_agree(const Registries& registries, const ConformanceCase& layer_case,
                                 std::vector<std::string> backends) {
  return run_check("backends", [&] {
    if (backends.empty()) {
      for (const std::string& name : registries.backends.types()) {
        if (name != "reference") backends.push_back(name);
      }
    }
    if (backends.empty()) return std::string("no backend besides reference");
    std::vector<std::string> compared;  // each backend, with the kernel implementation it ran
    for (const std::string& backend : backends) {
      const uint32_t seed = case_seed(layer_case) + 1;
      Rng rng(seed);
      Instance reference = make_layer(registries, layer_case, "reference");
      Instance other = make_layer(registries, layer_case, backend);
      if (other.output != reference.output) {
        check_fail("{} gives output {}, reference {}", backend, other.output.str(),
                   reference.output.str());
      }
      int64_t sample_elements = 0;
      for (const Shape& shape : layer_case.inputs) sample_elements += shape.numel();
      const int64_t batch = std::clamp<int64_t>(
          (50000 + sample_elements - 1) / std::max<int64_t>(sample_elements, 1), 2, 64);

      randomize_params(*reference.layer, rng);
      const auto reference_params = reference.layer->params();
      const auto other_params = other.layer->params();
      if (reference_params.size() != other_params.size()) {
        check_fail("{} has {} parameters, reference {}", backend, other_params.size(),
                   reference_params.size());
      }
      for (std::size_t p = 0; p < other_params.size(); ++p) {
        other_params[p]->value.copy_from(reference_params[p]->value);
      }
      const auto reference_buffers = reference.layer->buffers();
      auto other_buffers = other.layer->buffers();
      if (reference_buffers.size() != other_buffers.size()) {
        check_fail("{} has {} buffers, reference {}", backend, other_buffers.size(),
                   reference_buffers.size());
      }
      for (std::size_t b = 0; b < other_buffers.size(); ++b) {
        other_buffers[b].tensor.copy_from(reference_buffers[b].tensor);
      }
      std::vector<Tensor> inputs;
      for (const Shape& shape : batched(layer_case.inputs, batch))
        inputs.push_back(random_tensor(shape, rng));
      auto compare = [&](const std::string& what, const Tensor& got, const Tensor& want) {
        if (got.shape() != want.shape()) {
          check_fail("{}: {} gives shape {}, reference {}", what, backend, got.shape().str(),
                     want.shape().str());
        }
        const float tolerance = 1e-4f * std::max(1.0f, max_abs(want));
        const float diff = max_abs_diff(got, want);
        if (!(diff <= tolerance)) {
          check_fail("{}: {} differs from reference by {} (tolerance {})", what, backend, diff,
                     tolerance);
        }
      };
      const Tensor reference_out = run_forward(reference, inputs, true, seed);
      const Tensor other_out = run_forward(other, inputs, true, seed);
      compare("forward", other_out, reference_out);
      const Tensor dout = random_tensor(reference_out.shape(), rng);
      const auto reference_din = run_backward(reference, inputs, reference_out, dout, true, seed);
      const auto other_din = run_backward(other, inputs, other_out, dout, true, seed);
      for (std::size_t i = 0; i < inputs.size(); ++i) {
        compare(fmt::format("input{} gradient", i), other_din[i], reference_din[i]);
      }
      for (std::size_t p = 0; p < other_params.size(); ++p) {
        compare(reference_params[p]->name + " gradient", other_params[p]->grad,
                reference_params[p]->grad);
      }
      // Buffers a training forward updates (batch norm's running statistics) agree too.
      for (std::size_t b = 0; b < other_buffers.size(); ++b) {
        compare(reference_buffers[b].name + " after a training forward", other_buffers[b].tensor,
                reference_buffers[b].tensor);
      }
      const std::string implementation = other.layer->implementation();
      compared.push_back(implementation.empty() ? backend
                                                : fmt::format("{} ({})", backend, implementation));
    }
    return fmt::format("{}", fmt::join(compared, ", "));
  });
}

// ---- batch independence (inference mode) ----
//
// The graph hands layers batch_slice() views (an offset into a larger buffer) and a smaller last
// batch. In inference mode a layer maps each sample on its own, so sample 2 of a batch of 3, run
// alone as a view into the batch, must give the same output. Tolerance 1e-6 relative to the
// largest output: a backend may split work differently for another batch size.
// This is checked in inference mode only, and that matters for batch_norm: in training it
// normalizes with the statistics of the whole batch, so a sample's output there depends on the
// other samples by design. Its evaluation path (running statistics, randomized to values other
// than 0 and 1) is what this covers; its training path is covered by the gradient check over the
// whole batch and the backend comparison. A layer that declares mixes_samples_in_inference()
// (batch_norm without running statistics) is exempt, and the check says so: evaluation then never
// splits its batches.
CheckResult check_batch_independence(const Registries& registries,
                                     const ConformanceCase& layer_case) {
  return run_check("batch", [&]() -> std::string {
    const uint32_t seed = case_seed(layer_case) + 3;
    std::vector<std::string> backends = registries.backends.types();
    for (const std::string& backend : backends) {
      Rng rng(seed);
      Instance instance = make_layer(registries, layer_case, backend);
      if (instance.layer->mixes_samples_in_inference()) {
        return "not applicable: the layer mixes the samples of a batch in inference";
      }
      randomize_params(*instance.layer, rng);
      std::vector<Tensor> batch, single;
      for (const Shape& shape : batched(layer_case.inputs, 3)) {
        batch.push_back(random_tensor(shape, rng));
        single.push_back(batch.back().batch_slice(2, 3));
      }
      const Tensor all = run_forward(instance, batch, false, seed);
      const Tensor one = run_forward(instance, single, false, seed);
      const float tolerance = 1e-6f * std::max(1.0f, max_abs(all));
      const float diff = max_abs_diff(one, all.batch_slice(2, 3));
      if (!(diff <= tolerance)) {
        check_fail("{}: sample 2 alone differs from sample 2 in the batch by {} (tolerance {})",
                   backend, diff, tolerance);
      }
    }
    return fmt::format("{}", fmt::join(backends, ", "));
  });
}

// ---- NaN propagation ----
//
// A NaN in the input must reach the output, on every backend, in inference and in training mode,
// as in PyTorch (relu(NaN) = NaN, max_pool picks NaN): a layer that turns NaN into a finite value
// hides a diverged model from the trainer's divergence check. Every element of the first of two
// samples is NaN (a single NaN may sit where no window of a strided, dilated conv reads it), and
// the second sample must stay finite. In training mode a layer may legitimately mix the samples
// (batch_norm's batch statistics do, in PyTorch too): the leak check is skipped there when changing
// sample 0 changes sample 1's training output.
CheckResult check_nan_propagates(const Registries& registries, const ConformanceCase& layer_case) {
  return run_check("nan", [&] {
    const uint32_t seed = case_seed(layer_case) + 5;
    std::vector<std::string> backends = registries.backends.types();
    std::string notes;
    for (const std::string& backend : backends) {
      for (const bool training : {false, true}) {
        const char* mode = training ? "training" : "inference";
        Rng rng(seed);
        Instance instance = make_layer(registries, layer_case, backend);
        randomize_params(*instance.layer, rng);
        std::vector<Tensor> inputs, shifted;
        for (const Shape& shape : batched(layer_case.inputs, 2)) {
          inputs.push_back(random_tensor(shape, rng));
          shifted.push_back(inputs.back().clone());
          shifted.back().batch_slice(0, 1).copy_from(random_tensor(shape.without_batch().with_batch(1), rng));
        }
        bool coupled = false;
        if (training) {
          const Tensor a = run_forward(instance, inputs, true, seed);
          const Tensor b = run_forward(instance, shifted, true, seed);
          coupled = max_abs_diff(a.batch_slice(1, 2), b.batch_slice(1, 2)) > 0.0f;
        }
        for (Tensor& input : inputs) input.batch_slice(0, 1).fill(std::numeric_limits<float>::quiet_NaN());
        const Tensor out = run_forward(instance, inputs, training, seed);
        const Tensor first = out.batch_slice(0, 1);
        if (std::none_of(first.span().begin(), first.span().end(), [](float v) { return std::isnan(v); })) {
          check_fail("{} ({}): an all-NaN sample gives no NaN output", backend, mode);
        }
        if (coupled) {
          notes = " (samples mix in training: leak check in inference only)";
          continue;
        }
        const Tensor second = out.batch_slice(1, 2);
        if (std::any_of(second.span().begin(), second.span().end(), [](float v) { return !std::isfinite(v); })) {
          check_fail("{} ({}): the NaN of sample 0 leaked into sample 1", backend, mode);
        }
      }
    }
    return fmt::format("{}{}", fmt::join(backends, ", "), notes);
  });
}

namespace {

// A training backward's input gradients, then its parameter gradients (copied), and the name of
// the k-th of them in a message: "input0 gradient", "weight gradient".
std::vector<Tensor> all_gradients(Instance& instance, const std::vector<Tensor>& inputs,
                                  const Tensor& out, const Tensor& dout, uint32_t seed) {
  std::vector<Tensor> gradients = run_backward(instance, inputs, out, dout, true, seed);
  for (Param* param : instance.layer->params()) gradients.push_back(param->grad.clone());
  return gradients;
}

std::string gradient_name(Instance& instance, std::size_t inputs, std::size_t k) {
  return k < inputs ? fmt::format("input{} gradient", k)
                    : instance.layer->params()[k - inputs]->name + " gradient";
}

}  // namespace

// ---- what backward reads ----
//
// A layer that says its backward does not read its inputs' or its output's values
// (Layer::backward_reads_inputs()/backward_reads_output() false) gets, in training, tensors whose
// memory the graph has reused since the forward. So after a training forward and a backward, the
// check runs backward again with those tensors overwritten by other random values: every input
// and parameter gradient must come out bit-identical, on every backend (nothing else changed, and
// the kernels are deterministic for a given shape).
CheckResult check_backward_reads(const Registries& registries, const ConformanceCase& layer_case) {
  return run_check("reads", [&]() -> std::string {
    const uint32_t seed = case_seed(layer_case) + 7;
    std::vector<std::string> backends = registries.backends.types();
    std::string unread;
    for (const std::string& backend : backends) {
      Rng rng(seed);
      Instance instance = make_layer(registries, layer_case, backend);
      const bool reads_inputs = instance.layer->backward_reads_inputs();
      const bool reads_output = instance.layer->backward_reads_output();
      if (reads_inputs && reads_output) return "not applicable: backward reads every tensor";
      unread = !reads_inputs && !reads_output ? "inputs and output"
               : !reads_inputs                ? "inputs"
                                              : "output";
      randomize_params(*instance.layer, rng);
      std::vector<Tensor> inputs;
      for (const Shape& shape : batched(layer_case.inputs, layer_case.gradient_batch))
        inputs.push_back(random_tensor(shape, rng));
      const Tensor out = run_forward(instance, inputs, true, seed);
      const Tensor dout = random_tensor(out.shape(), rng);
      const std::vector<Tensor> gradients = all_gradients(instance, inputs, out, dout, seed);
      std::vector<Tensor> other_inputs = inputs;
      if (!reads_inputs) {
        for (Tensor& input : other_inputs) input = random_tensor(input.shape(), rng, -3.0f, 3.0f);
      }
      const Tensor other_out = reads_output ? out : random_tensor(out.shape(), rng, -3.0f, 3.0f);
      const std::vector<Tensor> again =
          all_gradients(instance, other_inputs, other_out, dout, seed);
      for (std::size_t k = 0; k < gradients.size(); ++k) {
        const float diff = max_abs_diff(again[k], gradients[k]);
        if (!(diff == 0.0f)) {
          check_fail(
              "{}: the layer says its backward does not read its {}, but with them changed the {} "
              "changed by {}",
              backend, unread, gradient_name(instance, inputs.size(), k), diff);
        }
      }
    }
    return fmt::format("{} unread on {}", unread, fmt::join(backends, ", "));
  });
}

// ---- fusion ----
//
// A layer that says it fuses an activation (Layer::fuses, strata/graph.hpp "Fusion") must write,
// with it set, what the activation layer writes on its unfused output, in training and in
// inference, on every backend, and compute as before once it is cleared. The activations are
// offered as the graph offers them: those whose derivative reads only y, to a layer whose
// backward does not read its output. relu, leaky_relu and relu6 bit for bit (the same float
// operations); tanh and sigmoid within 1e-6 of max(|y|, 1), since a backend's activation kernel
// may evaluate exp and tanh with vector functions.
CheckResult check_fusion(const Registries& registries, const ConformanceCase& layer_case) {
  return run_check("fusion", [&]() -> std::string {
    const uint32_t seed = case_seed(layer_case) + 11;
    const std::vector<std::string> backends = registries.backends.types();
    const std::vector<std::pair<std::string, bool>> activations = {
        {"{type: relu}", true},
        {"{type: leaky_relu, negative_slope: 0.1}", true},
        {"{type: relu6}", true},
        {"{type: tanh}", false},
        {"{type: sigmoid}", false}};
    std::vector<std::string> fused;
    for (const std::string& backend : backends) {
      Rng rng(seed);
      Instance instance = make_layer(registries, layer_case, backend);
      if (instance.layer->backward_reads_output()) {
        return "not applicable: its backward reads its output";
      }
      randomize_params(*instance.layer, rng);
      std::vector<Tensor> inputs;
      for (const Shape& shape : batched(layer_case.inputs, layer_case.gradient_batch))
        inputs.push_back(random_tensor(shape, rng, -3.0f, 3.0f));
      for (const auto& [yaml, exact] : activations) {
        const Config config = Config::parse_string(yaml, "<conformance activation>");
        if (!registries.layers.contains(config.get<std::string>("type"))) continue;
        Instance activation =
            conformance::make_layer(registries, config, {instance.output}, backend);
        const std::optional<ActivationDesc> desc = activation.layer->fusable_activation();
        if (!desc || !activation::derivative_reads_output(*desc) || !instance.layer->fuses(*desc)) {
          continue;
        }
        for (const bool training : {true, false}) {
          const char* mode = training ? "training" : "inference";
          const Tensor plain = run_forward(instance, inputs, training, seed);
          const Tensor want = run_forward(activation, {plain}, training, seed);
          instance.layer->set_fused_activation(desc);
          const Tensor got = run_forward(instance, inputs, training, seed);
          instance.layer->set_fused_activation(std::nullopt);
          const Tensor again = run_forward(instance, inputs, training, seed);
          const float diff = max_abs_diff(got, want);
          const float bound = exact ? 0.0f : 1e-6f * std::max(max_abs(want), 1.0f);
          if (!(diff <= bound)) {
            check_fail("{}, {}: with {} fused the output differs from {} on its output by {}",
                       backend, mode, activation_name(*desc), activation_name(*desc), diff);
          }
          if (!(max_abs_diff(again, plain) == 0.0f)) {
            check_fail("{}, {}: with the fused {} cleared the output is not the unfused one",
                       backend, mode, activation_name(*desc));
          }
        }
        if (backend == backends.front()) fused.emplace_back(activation_name(*desc));
      }
    }
    if (fused.empty()) return "not applicable: it fuses no activation";
    return fmt::format("fuses {} on {}", fmt::join(fused, ", "), fmt::join(backends, ", "));
  });
}

// ---- recomputation ----
//
// A layer that says it is recomputable (Layer::recomputable, strata/graph.hpp "Recomputation")
// may have its training forward run again, with Context::recomputing, between a forward and its
// backward. On every backend: a training forward, then the same forward again with recomputing
// set and a generator seeded differently (a layer that draws again is caught), must write the
// same output bit for bit and leave the buffers (batch norm's running statistics) as the first
// left them; the backward that follows must give the gradients of a backward right after the
// first forward, bit for bit.
CheckResult check_recompute(const Registries& registries, const ConformanceCase& layer_case) {
  return run_check("recompute", [&]() -> std::string {
    const uint32_t seed = case_seed(layer_case) + 13;
    const std::vector<std::string> backends = registries.backends.types();
    for (const std::string& backend : backends) {
      Rng rng(seed);
      Instance instance = make_layer(registries, layer_case, backend);
      if (!instance.layer->recomputable()) return "not applicable: it is not recomputable";
      randomize_params(*instance.layer, rng);
      std::vector<Tensor> inputs;
      for (const Shape& shape : batched(layer_case.inputs, layer_case.gradient_batch))
        inputs.push_back(random_tensor(shape, rng));
      Tensor out = run_forward(instance, inputs, true, seed);
      const Tensor dout = random_tensor(out.shape(), rng);
      const std::vector<Tensor> want = all_gradients(instance, inputs, out, dout, seed);
      out = run_forward(instance, inputs, true, seed);
      std::vector<Tensor> buffers;
      for (NamedTensor& buffer : instance.layer->buffers())
        buffers.push_back(buffer.tensor.clone());
      Rng other(seed + 1);
      Context again{true, &other, instance.backend.get()};
      again.recomputing = true;
      Tensor recomputed(out.shape());
      recomputed.fill(std::numeric_limits<float>::quiet_NaN());
      instance.layer->forward(again, inputs, recomputed);
      if (const float diff = max_abs_diff(recomputed, out); !(diff == 0.0f)) {
        check_fail("{}: recomputing the forward changed the output by {}", backend, diff);
      }
      const std::vector<NamedTensor> after = instance.layer->buffers();
      for (std::size_t k = 0; k < after.size(); ++k) {
        if (!(max_abs_diff(after[k].tensor, buffers[k]) == 0.0f)) {
          check_fail("{}: recomputing the forward changed the buffer '{}'", backend, after[k].name);
        }
      }
      const std::vector<Tensor> got = all_gradients(instance, inputs, out, dout, seed);
      for (std::size_t k = 0; k < got.size(); ++k) {
        if (const float diff = max_abs_diff(got[k], want[k]); !(diff == 0.0f)) {
          check_fail("{}: after a recomputed forward the {} changed by {}", backend,
                     gradient_name(instance, inputs.size(), k), diff);
        }
      }
    }
    return fmt::format("recomputed on {}", fmt::join(backends, ", "));
  });
}

// ---- checkpoint round trip ----
//
// Parameters and buffers go into a Checkpoint as "<layer>/<name>", through save_checkpoint into an
// HDF5 file, and back with load_checkpoint_tensors into a freshly created layer whose parameters
// start different. Both layers must then produce bit-identical outputs (inference mode).
CheckResult check_checkpoint_round_trip(const Registries& registries,
                                        const ConformanceCase& layer_case,
                                        const fs::path& scratch_dir) {
  return run_check("checkpoint", [&] {
    const uint32_t seed = case_seed(layer_case) + 2;
    Rng rng(seed);
    const fs::path path = scratch_dir / fmt::format("conformance-{}.h5", seed);

    Instance saved = make_layer(registries, layer_case, "reference");
    randomize_params(*saved.layer, rng);
    Checkpoint checkpoint;
    checkpoint.model = state_of(*saved.layer);
    checkpoint.experiment_yaml = layer_case.yaml;
    save_checkpoint(path, checkpoint);

    Instance loaded = make_layer(registries, layer_case, "reference");
    randomize_params(*loaded.layer, rng);  // so that a load that does nothing cannot pass
    std::vector<NamedTensor> into = state_of(*loaded.layer);
    load_checkpoint_tensors(path, "model", into);
    std::error_code ec;
    fs::remove(path, ec);
    // load_checkpoint_tensors may fill the given storage or hand back new tensors; either way the
    // layer's own tensors must end up holding the file's values.
    std::vector<NamedTensor> targets = state_of(*loaded.layer);
    if (targets.size() != into.size()) check_fail("the layer's state changed size after the load");
    for (std::size_t i = 0; i < into.size(); ++i) {
      if (!into[i].tensor.same_storage(targets[i].tensor))
        targets[i].tensor.copy_from(into[i].tensor);
      if (max_abs_diff(targets[i].tensor, checkpoint.model[i].tensor) != 0.0f) {
        check_fail("{} differs after the round trip", into[i].name);
      }
    }
    std::vector<Tensor> inputs;
    for (const Shape& shape : batched(layer_case.inputs, 3))
      inputs.push_back(random_tensor(shape, rng));
    const Tensor expected = run_forward(saved, inputs, false, seed);
    const Tensor actual = run_forward(loaded, inputs, false, seed);
    if (max_abs_diff(actual, expected) != 0.0f)
      check_fail("the reloaded layer computes another output");
    return fmt::format("{} tensor(s)", into.size());
  });
}

std::vector<CheckResult> run_conformance(const Registries& registries,
                                         const ConformanceCase& layer_case,
                                         const fs::path& scratch_dir) {
  return {check_shapes(registries, layer_case),
          check_gradients(registries, layer_case),
          check_backends_agree(registries, layer_case),
          check_batch_independence(registries, layer_case),
          check_nan_propagates(registries, layer_case),
          check_backward_reads(registries, layer_case),
          check_fusion(registries, layer_case),
          check_recompute(registries, layer_case),
          check_checkpoint_round_trip(registries, layer_case, scratch_dir)};
}

std::vector<Shape> parse_sample_shapes(const std::string& text, const std::string& what) {
  std::vector<Shape> shapes;
  std::size_t start = 0;
  while (start <= text.size()) {
    const std::size_t end = std::min(text.find(';', start), text.size());
    const std::string item = text.substr(start, end - start);
    std::vector<int64_t> dims;
    std::size_t pos = 0;
    while (pos <= item.size()) {
      const std::size_t comma = std::min(item.find(',', pos), item.size());
      const std::string number = item.substr(pos, comma - pos);
      std::size_t used = 0;
      long long value = 0;
      try {
        value = std::stoll(number, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used == 0 || used != number.size() || value < 1) {
        fail(
            "{}: '{}': expected positive integers separated by commas (C,H,W), several inputs "
            "separated by ';'",
            what, text);
      }
      dims.push_back(value);
      pos = comma + 1;
    }
    shapes.emplace_back(std::move(dims));
    start = end + 1;
  }
  return shapes;
}

std::vector<ConformanceCase> exported_conformance_cases(const Plugin& plugin) {
  std::vector<ConformanceCase> cases;
  if (!plugin.library || !plugin.library->has("strata_conformance_cases")) return cases;
  using Entry = const ConformanceCaseInfo*();
  const ConformanceCaseInfo* info = plugin.library->get<Entry>("strata_conformance_cases")();
  const std::string where =
      fmt::format("plugin {}: strata_conformance_cases()", plugin.path.string());
  if (info == nullptr) fail("{} returned null", where);
  for (int i = 0; info[i].yaml != nullptr; ++i) {
    const std::string item = fmt::format("{} case {}", where, i);
    if (info[i].inputs == nullptr) fail("{}: no input shapes", item);
    ConformanceCase layer_case;
    layer_case.yaml = info[i].yaml;
    layer_case.inputs = parse_sample_shapes(info[i].inputs, item + " inputs");
    if (info[i].output != nullptr) {
      const auto output = parse_sample_shapes(info[i].output, item + " output");
      if (output.size() != 1) fail("{} output: expected one shape", item);
      layer_case.output = output[0];
    }
    cases.push_back(std::move(layer_case));
  }
  return cases;
}

}  // namespace strata
