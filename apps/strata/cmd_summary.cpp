// strata summary EXP.yaml [--json] [--expand] [--set key=value]...
// The model's accounting (tools/src/summary.cpp): one row per layer or block, then totals. Builds
// the model without initializing it and loads no data (unless --memory), so even VGG-19
// summarises in a second.
#include <cstdio>

#include "cli.hpp"
#include "strata/tools/summary.hpp"

namespace strata::cli {

int run_summary(Session& session, const std::vector<std::string>& args) {
  po::options_description options("options");
  options.add_options()("json", po::bool_switch(), "print the same data as JSON, for scripts")(
      "expand", po::bool_switch(), "one row per layer inside blocks (default: one row per block)")(
      "memory", po::bool_switch(),
      "also estimate a whole run's peak memory: opens the data as `strata train` does and measures "
      "what it and the process take (docs/memory.md)");
  add_set_option(options);
  const Usage usage{
      "summary", "EXP.yaml [options]",
      "Print the model layer by layer: output shape, activations (count and bytes per image),\n"
      "parameters, multiply-adds and receptive field (with its jump, the product of strides),\n"
      "then totals: parameters, activation memory per image (forward, and an estimate for\n"
      "training at the experiment's batch size) and multiply-adds. Loads no data, unless "
      "--memory."};
  auto vm = parse(usage, options, {"EXP.yaml"}, args);
  if (!vm) return 0;
  const std::string path = (*vm)["positional-words"].as<std::vector<std::string>>()[0];
  Config experiment = load_experiment(path, *vm);
  load_experiment_plugins(experiment, session.loader);
  ModelSummary summary =
      summarize_experiment(experiment, session.registries, (*vm)["expand"].as<bool>());
  if ((*vm)["memory"].as<bool>()) measure_run_memory(experiment, session.registries, summary);
  const std::string text = (*vm)["json"].as<bool>() ? summary_json(summary) : format_summary(summary);
  std::fputs(text.c_str(), stdout);
  return 0;
}

}  // namespace strata::cli
