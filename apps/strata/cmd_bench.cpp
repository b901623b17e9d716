// strata bench EXP.yaml [--iterations N] [--warmup N] [--threads T] [--json] [--set k=v]...
// Times the experiment's model on synthetic data (strata/tools/bench.hpp says exactly what is timed).
#include <cstdio>
#include <nlohmann/json.hpp>

#include "cli.hpp"
#include "strata/tools/bench.hpp"
#include "strata/error.hpp"

namespace strata::cli {

namespace {

nlohmann::json to_json(const BenchReport& r) {
  nlohmann::json layers = nlohmann::json::array();
  for (const LayerTiming& l : r.layers) {
    nlohmann::json row = {{"name", l.name},
                          {"type", l.type},
                          {"output_shape", l.output_shape},
                          {"forward_seconds", l.forward_seconds},
                          {"backward_seconds", l.backward_seconds},
                          {"forward_flops", l.forward_flops},
                          {"backward_flops", l.backward_flops}};
    row["forward_gflops"] =
        l.forward_flops > 0 ? nlohmann::json(l.forward_flops / l.forward_seconds * 1e-9) : nullptr;
    row["backward_gflops"] = l.backward_flops > 0
                                 ? nlohmann::json(l.backward_flops / l.backward_seconds * 1e-9)
                                 : nullptr;
    layers.push_back(std::move(row));
  }
  return {{"experiment", r.experiment},
          {"backend", r.backend},
          {"backend_description", r.backend_description},
          {"threads", r.threads},
          {"batch_size", r.batch},
          {"iterations", r.iterations},
          {"warmup", r.warmup},
          {"parameters", r.parameters},
          {"layers", layers},
          {"forward_seconds", r.forward_seconds},
          {"loss_seconds", r.loss_seconds},
          {"backward_seconds", r.backward_seconds},
          {"optimizer_seconds", r.optimizer_seconds},
          {"step_seconds", r.step_seconds},
          {"images_per_second", r.images_per_second},
          {"gflops", r.total_flops / r.step_seconds * 1e-9},
          {"peak_rss_bytes", r.peak_rss_bytes}};
}

}  // namespace

int run_bench(Session& session, const std::vector<std::string>& args) {
  po::options_description options("options");
  options.add_options()("iterations", po::value<int64_t>()->default_value(20),
                        "timed training steps (the table shows their mean)")(
      "warmup", po::value<int64_t>()->default_value(3), "untimed steps before them")(
      "threads", po::value<int>(), "threads (default: the experiment's `threads`; 0: all cores)")(
      "json", po::bool_switch(), "print the measurements as one JSON object instead of a table");
  add_set_option(options);
  const Usage usage{
      "bench", "EXP.yaml [options]",
      "Time the experiment's model, loss and optimizer on synthetic data of its input shape at\n"
      "train.batch_size: forward and backward per layer, the loss, the optimizer step, GFLOP/s\n"
      "of conv and linear layers, images/s and peak resident memory. The data section is not\n"
      "read, so nothing is loaded from disk."};
  auto vm = parse(usage, options, {"EXP.yaml"}, args);
  if (!vm) return 0;
  const std::string path = (*vm)["positional-words"].as<std::vector<std::string>>()[0];

  Config experiment = load_experiment(path, *vm);
  load_experiment_plugins(experiment, session.loader);
  BenchOptions bench_options;
  bench_options.iterations = (*vm)["iterations"].as<int64_t>();
  bench_options.warmup = (*vm)["warmup"].as<int64_t>();
  if (vm->count("threads")) {
    bench_options.threads = (*vm)["threads"].as<int>();
    if (bench_options.threads < 0)
      fail("--threads {}: must be 0 (all cores) or positive", bench_options.threads);
  }
  const BenchReport report = bench_experiment(experiment, session.registries, bench_options);
  if ((*vm)["json"].as<bool>()) {
    std::printf("%s\n", to_json(report).dump(2).c_str());
  } else {
    std::printf("%s", format_bench_report(report).c_str());
  }
  return 0;
}

}  // namespace strata::cli
