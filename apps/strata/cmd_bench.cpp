// strata bench EXP.yaml [--iterations N] [--warmup N] [--threads T] [--json] [--set k=v]...
// Times the experiment's model on synthetic data (strata/tools/bench.hpp says exactly what is timed).
// strata bench --data EXP.yaml [--batches N] [--warmup N] [--threads T] [--json] [--set k=v]...
// Times the experiment's training input pipeline alone (strata/tools/data_bench.hpp).
#include <cstdio>
#include <nlohmann/json.hpp>

#include "cli.hpp"
#include "strata/tools/bench.hpp"
#include "strata/tools/data_bench.hpp"
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
                          {"backward_flops", l.backward_flops},
                          {"implementation", l.implementation}};
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
          {"fusion", r.fusion},
          {"recompute", r.recompute},
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

nlohmann::json to_json(const DataBenchReport& r) {
  return {{"experiment", r.experiment},
          {"dataset", r.dataset},
          {"transforms", r.transforms},
          {"sample_shape", r.sample_shape},
          {"threads", r.threads},
          {"batch_size", r.batch},
          {"batches", r.batches},
          {"warmup", r.warmup},
          {"train_rows", r.train_rows},
          {"images", r.images},
          {"skipped", r.skipped},
          {"epochs", r.epochs},
          {"open_seconds", r.open_seconds},
          {"fit_seconds", r.fit_seconds},
          {"load_seconds", r.load_seconds},
          {"batch_seconds", r.batch_seconds},
          {"min_batch_seconds", r.min_batch_seconds},
          {"max_batch_seconds", r.max_batch_seconds},
          {"images_per_second", r.images_per_second},
          {"buffer_bytes", r.buffer_bytes},
          {"rss_before_loader_bytes", r.rss_before_loader_bytes},
          {"peak_rss_bytes", r.peak_rss_bytes}};
}

}  // namespace

int run_bench(Session& session, const std::vector<std::string>& args) {
  po::options_description options("options");
  options.add_options()("data", po::bool_switch(),
                        "time the training input pipeline (read, transforms, batches) instead of "
                        "the model")(
      "iterations", po::value<int64_t>(),
      "timed training steps (default 20; the table shows their mean)")(
      "batches", po::value<int64_t>(), "with --data: timed batches (default 20)")(
      "warmup", po::value<int64_t>(), "untimed steps (or batches) before them (default 3)")(
      "threads", po::value<int>(), "threads (default: the experiment's `threads`; 0: all cores)")(
      "no-fusion", po::bool_switch(),
      "run every activation as its own layer (by default one that alone reads a batch_norm's or "
      "an add's output runs inside it: docs/performance.md, \"Fusion\")")(
      "json", po::bool_switch(), "print the measurements as one JSON object instead of a table");
  add_set_option(options);
  const Usage usage{
      "bench", "EXP.yaml [options]",
      "Time the experiment's model, loss and optimizer on synthetic data of its input shape at\n"
      "train.batch_size: forward and backward per layer, the loss, the optimizer step, GFLOP/s\n"
      "of conv and linear layers, images/s and peak resident memory. The data section is not\n"
      "read, so nothing is loaded from disk.\n"
      "With --data: time the training input pipeline alone, as `strata train` runs it (the\n"
      "dataset's training rows read and transformed with augmentation into batches of\n"
      "train.batch_size, in parallel): images/s, ms per batch, the open and fit times, the\n"
      "loader's buffers and peak resident memory. No model step is run."};
  auto vm = parse(usage, options, {"EXP.yaml"}, args);
  if (!vm) return 0;
  const std::string path = (*vm)["positional-words"].as<std::vector<std::string>>()[0];

  const bool data = (*vm)["data"].as<bool>();
  if (data && vm->count("iterations"))
    fail("--iterations counts model steps; with --data, give --batches");
  if (!data && vm->count("batches")) fail("--batches counts loader batches: it needs --data");
  if (data && (*vm)["no-fusion"].as<bool>())
    fail("--no-fusion concerns the model: not with --data");
  int threads = -1;
  if (vm->count("threads")) {
    threads = (*vm)["threads"].as<int>();
    if (threads < 0) fail("--threads {}: must be 0 (all cores) or positive", threads);
  }
  const int64_t warmup = vm->count("warmup") ? (*vm)["warmup"].as<int64_t>() : 3;

  Config experiment = load_experiment(path, *vm);
  load_experiment_plugins(experiment, session.loader);
  if (data) {
    DataBenchOptions data_options;
    data_options.batches = vm->count("batches") ? (*vm)["batches"].as<int64_t>() : 20;
    data_options.warmup = warmup;
    data_options.threads = threads;
    if (data_options.batches < 1) fail("--batches {}: must be at least 1", data_options.batches);
    if (data_options.warmup < 0) fail("--warmup {}: must be 0 or more", data_options.warmup);
    const DataBenchReport report = bench_data(experiment, session.registries, data_options);
    if ((*vm)["json"].as<bool>()) {
      std::printf("%s\n", to_json(report).dump(2).c_str());
    } else {
      std::printf("%s", format_data_bench_report(report).c_str());
    }
    return 0;
  }
  BenchOptions bench_options;
  bench_options.iterations = vm->count("iterations") ? (*vm)["iterations"].as<int64_t>() : 20;
  bench_options.warmup = warmup;
  bench_options.threads = threads;
  bench_options.fusion = !(*vm)["no-fusion"].as<bool>();
  const BenchReport report = bench_experiment(experiment, session.registries, bench_options);
  if ((*vm)["json"].as<bool>()) {
    std::printf("%s\n", to_json(report).dump(2).c_str());
  } else {
    std::printf("%s", format_bench_report(report).c_str());
  }
  return 0;
}

}  // namespace strata::cli
