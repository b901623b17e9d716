#include "strata/training/diagnostics.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace strata {

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

double sum_of_squares(const Tensor& t) {
  double sum = 0;
  for (float v : t.span()) sum += static_cast<double>(v) * v;
  return sum;
}

}  // namespace

double dead_unit_fraction(const Tensor& activation) {
  const int64_t n = activation.rank() > 0 ? activation.dim(0) : 0;
  if (n == 0 || activation.numel() == 0) return kNaN;
  const int64_t units = activation.numel() / n;
  std::vector<char> alive(static_cast<std::size_t>(units), 0);
  const float* data = activation.data();
  for (int64_t i = 0; i < n; ++i) {
    const float* sample = data + i * units;
    for (int64_t u = 0; u < units; ++u) alive[u] |= sample[u] > 0.0f;
  }
  int64_t dead = 0;
  for (char a : alive) dead += a == 0;
  return static_cast<double>(dead) / static_cast<double>(units);
}

StepDiagnostics::StepDiagnostics(Graph& graph)
    : graph_(graph), watched_index_(graph.size(), -1), fusion_(graph.fusion()) {
  for (std::size_t i = 0; i < graph.size(); ++i) {
    Layer& layer = graph.layer(i);
    std::vector<Param*> params = layer.params();
    if (params.empty() && !layer.has_dead_units()) continue;
    Watched w;
    w.node = i;
    w.params = params;
    for (Param* p : params) w.before.push_back(Tensor(p->value.shape()));
    w.activation_mean = w.activation_std = w.dead_fraction = kNaN;
    watched_index_[i] = static_cast<int>(watched_.size());
    watched_.push_back(std::move(w));
  }
  graph_.set_forward_observer([this](std::size_t node, const Tensor& out, const Context& context) {
    if (armed_ && context.training) observe(node, out);
  });
}

StepDiagnostics::~StepDiagnostics() {
  graph_.set_forward_observer({});
  graph_.set_fusion(fusion_);
}

void StepDiagnostics::watch_forward(bool on) {
  armed_ = on;
  graph_.set_fusion(fusion_ && !on);
}

void StepDiagnostics::observe(std::size_t node, const Tensor& out) {
  if (node >= watched_index_.size() || watched_index_[node] < 0) return;
  Watched& w = watched_[static_cast<std::size_t>(watched_index_[node])];
  w.activation_mean = w.activation_std = kNaN;
  if (out.numel() > 0) {
    double sum = 0;
    for (float v : out.span()) sum += v;
    const double mean = sum / static_cast<double>(out.numel());
    double squares = 0;
    for (float v : out.span()) squares += (v - mean) * (v - mean);
    w.activation_mean = mean;
    w.activation_std = std::sqrt(squares / static_cast<double>(out.numel()));
  }
  w.dead_fraction = graph_.layer(node).has_dead_units() ? dead_unit_fraction(out) : kNaN;
}

void StepDiagnostics::before_step() {
  armed_ = false;
  for (Watched& w : watched_) {
    const Layer& layer = graph_.layer(w.node);
    LayerDiagnostics& r = w.result;
    r = LayerDiagnostics{graph_.name(w.node),
                         std::string(layer.type()),
                         kNaN,
                         kNaN,
                         kNaN,
                         w.activation_mean,
                         w.activation_std,
                         w.dead_fraction,
                         layer.has_dead_units()};
    w.activation_mean = w.activation_std = w.dead_fraction = kNaN;
    if (w.params.empty()) continue;
    double grad = 0, weight = 0;
    for (std::size_t p = 0; p < w.params.size(); ++p) {
      grad += sum_of_squares(w.params[p]->grad);
      weight += sum_of_squares(w.params[p]->value);
      w.before[p].copy_from(w.params[p]->value);
    }
    r.grad_norm = std::sqrt(grad);
    r.weight_norm = std::sqrt(weight);
  }
}

std::vector<LayerDiagnostics> StepDiagnostics::after_step() {
  std::vector<LayerDiagnostics> results;
  for (Watched& w : watched_) {
    double update = 0, weight = 0;
    bool trained = false;
    for (std::size_t p = 0; p < w.params.size(); ++p) {
      if (w.params[p]->lr_mult == 0.0f) continue;
      trained = true;
      const float* after = w.params[p]->value.data();
      const float* before = w.before[p].data();
      for (int64_t i = 0; i < w.before[p].numel(); ++i) {
        const double d = static_cast<double>(after[i]) - before[i];
        update += d * d;
        weight += static_cast<double>(before[i]) * before[i];
      }
    }
    if (trained) w.result.update_ratio = std::sqrt(update) / std::sqrt(weight);
    results.push_back(w.result);
  }
  return results;
}

void record_diagnostics(std::map<std::string, std::vector<double>>& history, int64_t iteration,
                        std::span<const LayerDiagnostics> results) {
  history["diagnostics/iteration"].push_back(static_cast<double>(iteration));
  for (const LayerDiagnostics& r : results) {
    const std::string prefix = "diagnostics/" + r.layer + "/";
    if (!std::isnan(r.weight_norm)) {
      history[prefix + "update_ratio"].push_back(r.update_ratio);
      history[prefix + "grad_norm"].push_back(r.grad_norm);
      history[prefix + "weight_norm"].push_back(r.weight_norm);
    }
    history[prefix + "activation_mean"].push_back(r.activation_mean);
    history[prefix + "activation_std"].push_back(r.activation_std);
    if (r.has_dead_units) history[prefix + "dead_fraction"].push_back(r.dead_fraction);
  }
}

std::vector<std::string> diagnostic_warnings(std::span<const LayerDiagnostics> results) {
  std::vector<std::string> notes;
  for (const LayerDiagnostics& r : results) {
    if (!std::isnan(r.update_ratio) &&
        !(r.update_ratio >= kUpdateRatioLow && r.update_ratio <= kUpdateRatioHigh)) {
      notes.push_back(
          fmt::format("{} update/weight {:.1e} ({})", r.layer, r.update_ratio,
                      r.update_ratio > kUpdateRatioHigh ? "lr too high?" : "lr too low?"));
    }
    if (!std::isnan(r.grad_norm) && !std::isfinite(r.grad_norm)) {
      notes.push_back(fmt::format("{} gradient norm {}", r.layer, r.grad_norm));
    }
    if (!std::isnan(r.dead_fraction) && r.dead_fraction > kDeadFractionHigh) {
      notes.push_back(fmt::format("{} {:.0f}% dead", r.layer, 100 * r.dead_fraction));
    }
  }
  return notes;
}

void DiagnosticsSummary::add(std::span<const LayerDiagnostics> results) {
  ++checks_;
  for (const LayerDiagnostics& r : results) {
    auto note = [&](Kind kind, double value, bool larger_is_worse) {
      auto it = std::find_if(layers_.begin(), layers_.end(),
                             [&](const LayerIssues& l) { return l.layer == r.layer; });
      if (it == layers_.end()) {
        layers_.push_back(LayerIssues{r.layer, {}});
        it = layers_.end() - 1;
      }
      Issue& issue = it->issues[kind];
      if (issue.count == 0 || (larger_is_worse ? value > issue.extreme : value < issue.extreme)) {
        issue.extreme = value;
      }
      ++issue.count;
    };
    if (!std::isnan(r.update_ratio)) {
      if (r.update_ratio > kUpdateRatioHigh) note(kUpdateHigh, r.update_ratio, true);
      if (!(r.update_ratio >= kUpdateRatioLow)) note(kUpdateLow, r.update_ratio, false);
    }
    if (!std::isnan(r.grad_norm) && !std::isfinite(r.grad_norm)) {
      note(kGradientNotFinite, r.grad_norm, true);
    }
    if (!std::isnan(r.dead_fraction) && r.dead_fraction > kDeadFractionHigh) {
      note(kDead, r.dead_fraction, true);
    }
  }
}

std::vector<std::string> DiagnosticsSummary::take_lines(int64_t epoch) {
  // Layers in the order of their first issue within the epoch: graph order when they start at
  // the same measurement (StepDiagnostics reports in graph order).
  std::vector<std::string> lines;
  // A ratio or dead fraction outside its range in half of the epoch's checks or fewer describes
  // some batches, not the epoch: it stays in the history but is not reported. A non-finite
  // gradient is reported however rarely it happened.
  auto persistent = [&](const Issue& issue) { return 2 * issue.count > checks_; };
  for (const LayerIssues& l : layers_) {
    std::vector<std::string> parts;
    auto times = [&](const Issue& issue) {
      return fmt::format("in {} of {} checks", issue.count, checks_);
    };
    if (const Issue& i = l.issues[kUpdateHigh]; persistent(i)) {
      parts.push_back(
          fmt::format("update/weight up to {:.1e} (lr too high?) {}", i.extreme, times(i)));
    }
    if (const Issue& i = l.issues[kUpdateLow]; persistent(i)) {
      parts.push_back(
          fmt::format("update/weight down to {:.1e} (lr too low?) {}", i.extreme, times(i)));
    }
    if (const Issue& i = l.issues[kGradientNotFinite]; i.count > 0) {
      parts.push_back(fmt::format("gradient norm {} {}", i.extreme, times(i)));
    }
    if (const Issue& i = l.issues[kDead]; persistent(i)) {
      parts.push_back(fmt::format("up to {:.0f}% dead {}", 100 * i.extreme, times(i)));
    }
    if (parts.empty()) continue;
    lines.push_back(
        fmt::format("epoch {} diagnostics: {} {}", epoch, l.layer, fmt::join(parts, "; ")));
  }
  layers_.clear();
  checks_ = 0;
  return lines;
}

MetricProgress metric_progress(std::span<const double> values, bool maximize, double min_delta) {
  MetricProgress progress;
  for (std::size_t i = 0; i < values.size(); ++i) {
    const double v = values[i];
    bool improved = false;
    if (std::isfinite(v)) {
      if (progress.best_epoch == 0) {
        improved = true;
      } else {
        improved = maximize ? v > progress.best + min_delta : v < progress.best - min_delta;
      }
    }
    if (improved) {
      progress.best = v;
      progress.best_epoch = static_cast<int64_t>(i) + 1;
      progress.epochs_without_improvement = 0;
    } else {
      ++progress.epochs_without_improvement;
    }
  }
  return progress;
}

}  // namespace strata
