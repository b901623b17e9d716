// strata search EXP.yaml [--out DIR] [--resume] [--concurrency N] [--threads-per-trial N]
//                        [--set key.path=value]...
// Runs the experiment's `search:` section (docs/search.md); the logic is
// strata::search::run_search. Under an MPI launcher every rank runs this command.
#include <csignal>
#include <cstdio>
#include <filesystem>

#include "cli.hpp"
#include "strata/error.hpp"
#include "strata/search/search.hpp"

namespace strata::cli {

namespace {

std::atomic<bool> interrupt_requested{false};

// The first Ctrl-C stops the search cleanly (trials in flight abort, finished ones stay in the
// journal); SA_RESETHAND restores the default, so a second Ctrl-C kills the process at once.
extern "C" void on_interrupt(int) { interrupt_requested.store(true); }

}  // namespace

int run_search(Session& session, const std::vector<std::string>& args) {
  po::options_description options("options");
  options.add_options()("out", po::value<std::string>(),
                        "output folder for trials.jsonl, search.h5 and best.yaml "
                        "(default: runs/<experiment file name>_search)")(
      "resume", po::bool_switch(),
      "continue the search in DIR: finished trials are read from DIR/trials.jsonl, not rerun")(
      "concurrency", po::value<int>(), "trials run at once (overrides search.concurrency)")(
      "threads-per-trial", po::value<int>(),
      "threads of each trial's task arena (overrides search.threads_per_trial; default: cores / "
      "concurrency)");
  add_set_option(options);
  const Usage usage{"search", "EXP.yaml [options]",
                    "Hyperparameter search over the experiment's `search:` section: random, grid\n"
                    "or ASHA trials, coarse to fine in stages. Prints a line per trial and the\n"
                    "best trials of each stage; writes DIR/trials.jsonl (one line per trial),\n"
                    "DIR/search.h5 (curves) and DIR/best.yaml (the winner, for strata train).\n"
                    "Ctrl-C stops it; --resume continues it."};
  auto vm = parse(usage, options, {"EXP.yaml"}, args);
  if (!vm) return 0;
  const std::string path = (*vm)["positional-words"].as<std::vector<std::string>>()[0];

  Config experiment = load_experiment(path, *vm);
  load_experiment_plugins(experiment, session.loader);
  search::SearchOptions search_options;
  search_options.out_dir = output_folder(*vm, path, "_search");
  search_options.resume = (*vm)["resume"].as<bool>();
  if (vm->count("concurrency")) search_options.concurrency = (*vm)["concurrency"].as<int>();
  if (vm->count("threads-per-trial")) {
    search_options.threads_per_trial = (*vm)["threads-per-trial"].as<int>();
  }
  search_options.stop = &interrupt_requested;
  // Under mpirun or srun: rank 0 schedules, journals and prints; every rank trains trials
  // (docs/search.md, "On MPI"). The other ranks print nothing but errors.
  search_options.communicator = job_communicator(session);
  if (search_options.communicator && search_options.communicator->rank() != 0) {
    search_options.live = false;
  }

  struct sigaction action {};
  action.sa_handler = on_interrupt;
  action.sa_flags = SA_RESETHAND;
  sigemptyset(&action.sa_mask);
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);

  auto runner = search::trainer_runner(session.registries);
  const search::SearchResult result = search::run_search(experiment, *runner, search_options);
  return result.interrupted ? 130 : 0;
}

}  // namespace strata::cli
