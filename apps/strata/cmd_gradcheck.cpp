// strata gradcheck EXP.yaml [--layers a,b] [--batch N] [--entries N] [--backend B] [--seed S]
//                           [--eps H]
//
// Checks the model's backward() against centered finite differences (strata/tools/gradcheck.hpp has the
// method and the threshold), prints one line per tensor and exits 1 when any tensor fails.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>

#include "cli.hpp"
#include "strata/error.hpp"
#include "strata/tools/gradcheck.hpp"
#include "strata/training/experiment.hpp"

namespace strata::cli {

int run_gradcheck(Session& session, const std::vector<std::string>& args) {
  po::options_description options("options");
  options.add_options()("layers", po::value<std::string>(),
                        "comma-separated layers whose parameters to check; `input` names the model "
                        "input (default: the input and every layer)")(
      "batch", po::value<int64_t>()->default_value(2), "samples in the random batch")(
      "entries", po::value<int64_t>()->default_value(200),
      "entries checked per tensor, a random sample (0: all)")(
      "backend", po::value<std::string>(),
      "compute backend, as --set backend=B (default: the experiment's, as for every command; "
      "reference: double accumulation, the ground truth)")(
      "seed", po::value<int64_t>()->default_value(1), "seed of the batch and the sample")(
      "eps", po::value<double>()->default_value(GradcheckOptions{}.eps),
      "the finite-difference step h (relu/max-pool decisions are frozen, so h need not be tiny)");
  add_set_option(options);
  const Usage usage{"gradcheck", "EXP.yaml [options]",
                    "Check the model's analytic gradients (every parameter and the input) against\n"
                    "centered finite differences on a small random batch. Prints the largest\n"
                    "relative error per tensor; exits 1 if any tensor exceeds the threshold 1e-2."};
  auto vm = parse(usage, options, {"EXP.yaml"}, args);
  if (!vm) return 0;
  const std::string path = (*vm)["positional-words"].as<std::vector<std::string>>()[0];
  Config experiment = load_experiment(path, *vm);
  // --backend B is --set backend=B: the backend, like every key, is read by Experiment.
  if (vm->count("backend")) experiment.set("backend", (*vm)["backend"].as<std::string>());
  load_experiment_plugins(experiment, session.loader);

  GradcheckOptions check;
  check.batch = (*vm)["batch"].as<int64_t>();
  check.max_entries = (*vm)["entries"].as<int64_t>();
  const int64_t seed = (*vm)["seed"].as<int64_t>();  // uint32_t would take -1 as 4294967295
  if (seed < 0 || seed > int64_t{UINT32_MAX}) {
    fail("--seed: must be between 0 and 4294967295 (2^32 - 1), found {}", seed);
  }
  check.seed = static_cast<uint32_t>(seed);
  check.eps = (*vm)["eps"].as<double>();
  if (!(check.eps > 0) || !std::isfinite(check.eps))
    fail("--eps: must be a positive number, found {}", check.eps);
  if (check.batch < 1) fail("--batch: must be at least 1, found {}", check.batch);
  if (check.max_entries < 0)
    fail("--entries: must be 0 (all) or positive, found {}", check.max_entries);
  check.layers = layers_option(*vm);
  // The model as every command builds it: seed, backend (the default one unless given), threads.
  const Experiment run = Experiment::read(experiment, session.registries, Experiment::Scope::model);
  std::printf("gradcheck %s: batch %lld, up to %lld entries per tensor, backend %s, eps %g\n",
              path.c_str(), static_cast<long long>(check.batch),
              static_cast<long long>(check.max_entries), run.backend_name.c_str(), check.eps);
  const GradcheckReport report = gradient_check(*run.graph, *run.backend, check);
  std::fputs(report.text().c_str(), stdout);
  return report.passed ? 0 : 1;
}

}  // namespace strata::cli
