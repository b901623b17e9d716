// Whole-model gradient checking; the method and its thresholds are in strata/tools/gradcheck.hpp.
#include "strata/tools/gradcheck.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>

#include "central_difference.hpp"
#include "strata/backend.hpp"
#include "strata/graph.hpp"
#include "strata/layer.hpp"
#include "strata/training/experiment.hpp"

namespace strata {

namespace {

constexpr double kMaxSkippedFraction = 0.5;
constexpr double kWiderStep = 2.0;  // the third difference uses 2 eps (rounding-limited entries)
constexpr double kFloorFactor = 0.1;
constexpr double kRecheckStep = 0.5;       // the second difference uses eps / 2
constexpr double kRecheckFraction = 0.25;  // recheck above threshold / 4

Tensor uniform_tensor(const Shape& shape, Rng& rng) {
  Tensor t(shape);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  for (float& v : t.span()) v = dist(rng);
  return t;
}

double rms(const Tensor& t) {
  double sum = 0;
  for (float v : t.span()) sum += static_cast<double>(v) * v;
  return t.numel() == 0 ? 0.0 : std::sqrt(sum / static_cast<double>(t.numel()));
}

struct Target {
  std::string name;
  Tensor values;    // the tensor perturbed (aliases the parameter or the input)
  Tensor analytic;  // a copy of backward()'s gradient
};

}  // namespace

GradcheckReport gradient_check(Graph& graph, Backend& backend, const GradcheckOptions& options) {
  if (options.batch < 1)
    fail("gradcheck: the batch must hold at least 1 sample, found {}", options.batch);
  if (!(options.eps > 0) || !std::isfinite(options.eps))
    fail("gradcheck: eps must be positive and finite, found {}", options.eps);
  std::vector<std::string> known{"input"};
  for (std::size_t i = 0; i < graph.size(); ++i) known.push_back(graph.name(i));
  for (const std::string& layer : options.layers) {
    if (std::find(known.begin(), known.end(), layer) == known.end()) {
      fail("gradcheck: the model has no layer '{}'\n  {}", layer,
           suggestion_text(layer, known, "layers"));
    }
  }
  auto selected = [&](const std::string& layer) {
    return options.layers.empty() ||
           std::find(options.layers.begin(), options.layers.end(), layer) != options.layers.end();
  };

  Rng data_rng(options.seed);
  Tensor input = uniform_tensor(graph.input_shape().with_batch(options.batch), data_rng);
  const Tensor weights = uniform_tensor(graph.output_shape().with_batch(options.batch), data_rng);

  // Every parameter takes part, frozen or not; restored at the end.
  std::vector<ParamRef> params = graph.params();
  std::vector<bool> was_frozen;
  for (const ParamRef& ref : params) {
    was_frozen.push_back(ref.param->frozen);
    ref.param->frozen = false;
  }
  struct Restore {
    std::vector<ParamRef>& params;
    std::vector<bool>& frozen;
    Graph& graph;
    ~Restore() {
      for (std::size_t i = 0; i < params.size(); ++i) params[i].param->frozen = frozen[i];
      graph.set_input_gradient(false);
    }
  } restore{params, was_frozen, graph};

  Rng layer_rng(options.seed + 1);
  FrozenBranches frozen;  // records at the unperturbed point, then replays (see the header)
  Context context{true, &layer_rng, &backend, options.freeze_branches ? &frozen : nullptr};
  auto objective = [&] {
    layer_rng.seed(options.seed + 1);  // the same dropout mask for every evaluation
    const Tensor& out = graph.forward(context, input);
    double total = 0;
    for (int64_t i = 0; i < out.numel(); ++i)
      total += static_cast<double>(out.data()[i]) * weights.data()[i];
    return total;
  };

  graph.set_input_gradient(selected("input"));
  objective();
  graph.backward(context, weights);
  frozen.recording = false;

  std::vector<Target> targets;
  if (selected("input")) targets.push_back({"input", input, graph.input_gradient().clone()});
  for (const ParamRef& ref : params) {
    const std::string layer = ref.key.substr(0, ref.key.find('/'));
    if (selected(layer)) targets.push_back({ref.key, ref.param->value, ref.param->grad.clone()});
  }

  GradcheckReport report;
  report.threshold = options.threshold;
  Rng pick_rng(options.seed + 2);
  for (Target& target : targets) {
    TensorGradcheck check;
    check.name = target.name;
    check.shape = target.values.shape().str();
    check.entries = target.values.numel();
    std::vector<int64_t> indices(static_cast<std::size_t>(check.entries));
    std::iota(indices.begin(), indices.end(), 0);
    if (options.max_entries > 0 && check.entries > options.max_entries) {
      std::shuffle(indices.begin(), indices.end(), pick_rng);
      indices.resize(static_cast<std::size_t>(options.max_entries));
      std::sort(indices.begin(), indices.end());
    }
    const double floor = kFloorFactor * rms(target.analytic);
    auto difference = [&](int64_t i, double eps) {
      return central_difference(target.values.data()[i], eps, objective);
    };
    auto relative = [&](double x, double y) {
      return std::abs(x - y) / std::max({std::abs(x), std::abs(y), floor, 1e-30});
    };
    for (int64_t i : indices) {
      ++check.checked;
      const double analytic = target.analytic.data()[i];
      double numerical = difference(i, options.eps);
      double error = relative(numerical, analytic);
      if (!(error <= kRecheckFraction * options.threshold)) {
        // Not clearly right: is the difference a derivative? Around a smooth point the difference
        // at eps / 2 agrees with the one at eps (beyond rounding and curvature); across a kink
        // that no layer froze, or when rounding dominates, it does not.
        const double finer = difference(i, options.eps * kRecheckStep);
        if (relative(numerical, finer) <= kRecheckFraction * options.threshold) {
          numerical = finer;  // agreement: the finer of the pair has less truncation error
        } else {
          // Rounding grows as the step shrinks: try the pair (2 eps, eps) before giving up.
          const double wider = difference(i, options.eps * kWiderStep);
          if (!(relative(numerical, wider) <= kRecheckFraction * options.threshold)) {
            ++check.skipped;
            continue;
          }
        }
        error = relative(numerical, analytic);
      }
      if (!std::isfinite(error)) error = std::numeric_limits<double>::infinity();
      check.within += error <= options.threshold;
      if (check.worst_index < 0 || error > check.max_error) {
        check.max_error = error;
        check.worst_index = i;
        check.worst_numerical = numerical;
        check.worst_analytic = analytic;
      }
    }
    const int64_t compared = check.checked - check.skipped;
    check.passed = static_cast<double>(check.skipped) <=
                       kMaxSkippedFraction * static_cast<double>(check.checked) &&
                   check.within == compared;
    report.passed = report.passed && check.passed;
    report.tensors.push_back(check);
  }
  // Leave the graph's activations as a plain forward pass would.
  context.frozen = nullptr;
  objective();
  return report;
}

std::string GradcheckReport::text() const {
  std::size_t width = 24;  // ResNet names such as layer2.0.downsample.0/weight are longer
  for (const TensorGradcheck& t : tensors) width = std::max(width, t.name.size());
  std::string out =
      fmt::format("{:<{}} {:<18} {:>8} {:>8} {:>7} {:>8} {:>12}  {}\n", "tensor", width, "shape",
                  "entries", "checked", "skipped", "within", "max rel err", "result");
  int failed = 0;
  for (const TensorGradcheck& t : tensors) {
    std::string verdict = t.passed ? "pass" : "FAIL";
    const int64_t compared = t.checked - t.skipped;
    if (!t.passed) {
      ++failed;
      if (t.within < compared) {
        verdict += fmt::format("  (worst: entry {}, numerical {:.6g}, backward {:.6g})",
                               t.worst_index, t.worst_numerical, t.worst_analytic);
      } else {
        verdict += fmt::format(
            "  ({} of {} entries skipped: differences at eps/2, eps, 2 eps "
            "disagree)",
            t.skipped, t.checked);
      }
    }
    const double within =
        compared > 0 ? 100.0 * static_cast<double>(t.within) / static_cast<double>(compared) : 0.0;
    out += fmt::format("{:<{}} {:<18} {:>8} {:>8} {:>7} {:>7.1f}% {:>12.2e}  {}\n", t.name, width,
                       t.shape, t.entries, t.checked, t.skipped, within, t.max_error, verdict);
  }
  const std::string rule = fmt::format(
      "every compared entry within relative error {:g}, at most half skipped", threshold);
  out += passed
             ? fmt::format("all {} tensors pass ({})\n", tensors.size(), rule)
             : fmt::format("{} of {} tensors FAIL ({} required)\n", failed, tensors.size(), rule);
  return out;
}

GradcheckReport gradient_check_experiment(const Config& experiment, const Registries& registries,
                                          const GradcheckOptions& options) {
  const Experiment run = Experiment::read(experiment, registries, Experiment::Scope::model);
  return gradient_check(*run.graph, *run.backend, options);
}

}  // namespace strata
