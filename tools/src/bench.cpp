#include "strata/tools/bench.hpp"

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <random>

#include "strata/backend.hpp"
#include "strata/error.hpp"
#include "strata/graph.hpp"
#include "strata/layer.hpp"
#include "strata/optimizer.hpp"
#include "strata/training/experiment.hpp"

namespace strata {

namespace {

using Clock = std::chrono::steady_clock;

// Multiply-adds per output element of a layer whose weight is [out, ...] (linear, conv2d): one
// per weight element that an output element reads, i.e. weight.numel() / weight.dim(0). 0 when
// the layer has no such weight.
double macs_per_output(Layer& layer) {
  for (Param* param : layer.params()) {
    const Tensor& w = param->value;
    if (param->name == "weight" && (w.rank() == 2 || w.rank() == 4) && w.dim(0) > 0) {
      return static_cast<double>(w.numel()) / static_cast<double>(w.dim(0));
    }
  }
  return 0.0;
}

int64_t peak_rss_bytes() {
  rusage usage{};
  if (::getrusage(RUSAGE_SELF, &usage) != 0) return 0;
  return static_cast<int64_t>(usage.ru_maxrss) * 1024;  // Linux reports KiB
}

}  // namespace

BenchReport bench_experiment(const Config& experiment, const Registries& registries,
                             const BenchOptions& options) {
  if (options.iterations < 1)
    fail("bench: --iterations must be at least 1, found {}", options.iterations);
  if (options.warmup < 0) fail("bench: --warmup must be 0 or more, found {}", options.warmup);
  if (options.threads < -1) fail("bench: --threads must be 0 (all cores) or positive");

  BenchReport report;
  report.experiment = experiment.source_file();
  // --threads overrides the experiment's `threads` as `--set threads=N` would.
  Config overridden = experiment;
  if (options.threads >= 0) {
    overridden = experiment.clone();
    overridden.set("threads", std::to_string(options.threads));
  }
  // The model, loss, optimizer and schedule (validated, but the bench steps at base_lr). The rest
  // (data, checkpoint, plugins, ...) is not read: synthetic data stands in for the data.
  Experiment run = Experiment::read(overridden, registries, Experiment::Scope::optimization);
  report.backend = run.backend_name;
  report.batch = run.required_batch_size();
  Backend* backend = run.backend.get();
  Graph& graph = *run.graph;
  graph.set_output_retention(OutputRetention::kBackward);  // what training holds
  graph.set_fusion(options.fusion);
  report.fusion = options.fusion;
  report.recompute = graph.recomputation();
  Loss* loss = run.loss.get();
  Optimizer* optimizer = run.optimizer.get();
  Rng& rng = run.rng;

  // Synthetic batch: uniform images, labels below the number of outputs.
  const Shape sample = graph.input_shape();
  const int64_t classes = graph.output_shape().numel();
  Tensor images(sample.with_batch(report.batch));
  std::uniform_real_distribution<float> uniform(0.0f, 1.0f);
  for (float& v : images.span()) v = uniform(rng);
  std::vector<int32_t> labels(static_cast<std::size_t>(report.batch));
  std::uniform_int_distribution<int32_t> label(
      0, static_cast<int32_t>(std::max<int64_t>(classes, 1) - 1));
  for (int32_t& l : labels) l = label(rng);
  Tensor dlogits(graph.output_shape().with_batch(report.batch));

  Context context{true, &rng, backend};
  const float lr = optimizer->base_lr();
  GraphProfile profile;
  double forward = 0, loss_time = 0, backward = 0, step_opt = 0, whole = 0;
  for (int64_t it = 0; it < options.warmup + options.iterations; ++it) {
    if (it == options.warmup) {
      graph.set_profile(&profile);  // resets it
      forward = loss_time = backward = step_opt = whole = 0;
    }
    const auto t0 = Clock::now();
    const Tensor& logits = graph.forward(context, images);
    const auto t1 = Clock::now();
    const float value = loss->forward_backward(logits, labels, &dlogits);
    const auto t2 = Clock::now();
    graph.backward(context, dlogits);
    const auto t3 = Clock::now();
    optimizer->step(lr);
    const auto t4 = Clock::now();
    if (!std::isfinite(value)) {
      fail(
          "bench: the loss became {} at step {}; lower optimizer.lr (the synthetic labels are "
          "random)",
          value, it + 1);
    }
    forward += std::chrono::duration<double>(t1 - t0).count();
    loss_time += std::chrono::duration<double>(t2 - t1).count();
    backward += std::chrono::duration<double>(t3 - t2).count();
    step_opt += std::chrono::duration<double>(t4 - t3).count();
    whole += std::chrono::duration<double>(t4 - t0).count();
  }
  graph.set_profile(nullptr);

  const double steps = static_cast<double>(options.iterations);
  report.threads = backend->threads();
  report.backend_description = backend->description();
  report.iterations = options.iterations;
  report.warmup = options.warmup;
  report.parameters = graph.num_parameters();
  report.forward_seconds = forward / steps;
  report.loss_seconds = loss_time / steps;
  report.backward_seconds = backward / steps;
  report.optimizer_seconds = step_opt / steps;
  report.step_seconds = whole / steps;
  report.images_per_second = static_cast<double>(report.batch) / report.step_seconds;
  for (std::size_t i = 0; i < graph.size(); ++i) {
    Layer& layer = graph.layer(i);
    LayerTiming row;
    row.name = layer.name();
    row.type = std::string(layer.type());
    row.output_shape = layer.output_shape().dims();
    row.forward_seconds = profile.forward_seconds[i] / steps;
    row.backward_seconds = profile.backward_seconds[i] / steps;
    const int fused_into = graph.fused_into(i);
    row.implementation = fused_into < 0 ? layer.implementation()
                                        : fmt::format("fused into {}", graph.name(fused_into));
    if (graph.recomputes(i)) row.implementation += " (recomputed)";
    const double macs = macs_per_output(layer) * static_cast<double>(layer.output_shape().numel()) *
                        static_cast<double>(report.batch);
    row.forward_flops = 2.0 * macs;
    // A layer that reads only the model input computes no data gradient: weights only.
    const std::vector<std::string> inputs = graph.input_names(i);
    const bool data_gradient = std::any_of(inputs.begin(), inputs.end(),
                                           [](const std::string& n) { return n != "input"; });
    row.backward_flops = (data_gradient ? 4.0 : 2.0) * macs;
    report.total_flops += row.forward_flops + row.backward_flops;
    report.layers.push_back(std::move(row));
  }
  report.peak_rss_bytes = peak_rss_bytes();
  return report;
}

std::string format_bench_report(const BenchReport& r) {
  std::string out = fmt::format(
      "{}: batch {}, backend {}, {} thread(s), {} parameters; mean of {} steps after {} "
      "warm-up{}{}\n\n",
      r.experiment, r.batch, r.backend, r.threads, r.parameters, r.iterations, r.warmup,
      r.fusion ? "" : "; no fusion",
      r.recompute ? "; recomputing outputs in backward (its times include the second forwards)"
                  : "");
  if (!r.backend_description.empty()) {
    out.insert(out.size() - 1, fmt::format("backend {}: {}\n", r.backend, r.backend_description));
  }
  std::size_t name_width = 5, type_width = 4, shape_width = 12;
  for (const LayerTiming& l : r.layers) {
    name_width = std::max(name_width, l.name.size());
    type_width = std::max(type_width, l.type.size());
    shape_width = std::max(shape_width, Shape(l.output_shape).str().size());
  }
  const auto gflops = [](double flops, double seconds) {
    return flops > 0 && seconds > 0 ? fmt::format("{:7.1f}", flops / seconds * 1e-9)
                                    : std::string(7, ' ');
  };
  out += fmt::format("{:<{}}  {:<{}}  {:<{}}  {:>9}  {:>9}  {:>6}  {:>7}  {:>7}  {}\n", "layer",
                     name_width, "type", type_width, "output", shape_width, "fwd ms", "bwd ms",
                     "step%", "fwd GF/s", "bwd GF/s", "implementation");
  for (const LayerTiming& l : r.layers) {
    const double share = 100.0 * (l.forward_seconds + l.backward_seconds) / r.step_seconds;
    std::string row = fmt::format(
        "{:<{}}  {:<{}}  {:<{}}  {:9.3f}  {:9.3f}  {:5.1f}%  {}   {}   {}", l.name, name_width,
        l.type, type_width, Shape(l.output_shape).str(), shape_width, l.forward_seconds * 1e3,
        l.backward_seconds * 1e3, share, gflops(l.forward_flops, l.forward_seconds),
        gflops(l.backward_flops, l.backward_seconds), l.implementation);
    row.erase(row.find_last_not_of(' ') + 1);  // no trailing blanks for a layer without one
    out += row + "\n";
  }
  const std::size_t label_width = name_width + type_width + shape_width + 4;
  // (the labels below are at most 16 characters; the three columns are at least 21 wide)
  const auto line = [&](const std::string& label, double fwd, double bwd) {
    return fmt::format("{:<{}}  {:9.3f}  {:9.3f}  {:5.1f}%\n", label, label_width, fwd * 1e3,
                       bwd * 1e3, 100.0 * (fwd + bwd) / r.step_seconds);
  };
  out += line("loss", r.loss_seconds, 0.0);
  out += line("optimizer step", 0.0, r.optimizer_seconds);
  out +=
      line("total", r.forward_seconds + r.loss_seconds, r.backward_seconds + r.optimizer_seconds);
  out += fmt::format(
      "\nstep {:.3f} ms  |  {:.0f} images/s  |  {:.1f} GFLOP/s in conv/linear layers  |  peak "
      "memory {:.1f} MiB\n",
      r.step_seconds * 1e3, r.images_per_second, r.total_flops / r.step_seconds * 1e-9,
      static_cast<double>(r.peak_rss_bytes) / (1024.0 * 1024.0));
  return out;
}

}  // namespace strata
