// apps/strata/cli.hpp: what every subcommand of the `strata` tool shares.
//
// Each subcommand lives in its own file, cmd_<name>.cpp, and exposes one function
//   int run_<name>(Session& session, const std::vector<std::string>& args);
// which main.cpp lists in its command table. `args` are the words after the subcommand's name.
// A subcommand describes its options with Boost.Program_options and calls parse(), which handles
// `--help` and turns every option error into a strata::Error with the subcommand's usage.
#pragma once

#include <boost/program_options.hpp>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "strata/communicator.hpp"
#include "strata/config.hpp"
#include "strata/plugin.hpp"
#include "strata/registry.hpp"

namespace strata::cli {

namespace po = boost::program_options;

// The registries and the loader that filled them from the default plugin folders.
struct Session {
  Registries registries;
  PluginLoader loader{registries};
  std::shared_ptr<Communicator> communicator;  // set by job_communicator(); destroyed first
};

// The environment variable `name`, or null when it is unset or empty.
const char* environment(const char* name);

// What says that a launcher started this process as one rank of a job ("OMPI_COMM_WORLD_SIZE=2"
// from Open MPI's mpirun, PMI_SIZE/PMIX_RANK from MPICH, PMIx or Slurm's PMI), or nothing for a
// process started on its own. srun without PMIx (SLURM_STEP_NUM_TASKS but no PMIX_RANK): one
// task is a process on its own, more are an Error saying to run srun --mpi=pmix.
std::optional<std::string> launcher_evidence();

// The job this process is a rank of: the "mpi" communicator (plugins/comm_mpi), created once,
// when launcher_evidence() finds a launcher; null otherwise, and the run is a plain single process.
// A launcher without the plugin is an Error saying how to get it.
Communicator* job_communicator(Session& session);

// How a subcommand presents itself in `strata CMD --help`.
struct Usage {
  std::string command;   // "train"
  std::string synopsis;  // "EXP.yaml [options]"
  std::string description;
};

// Parses `args` against `options` (plus `--help`) and the positional `names` (each taken once, in
// order; a trailing "..." name takes all the rest). Returns nullopt after printing the usage when
// --help was given. Unknown options, missing values and extra words are Errors naming the word;
// for a command with --set, an unknown option named like an experiment key (--epochs) suggests
// the --set form (--set train.epochs=3).
std::optional<po::variables_map> parse(const Usage& usage, const po::options_description& options,
                                       const std::vector<std::string>& positional_names,
                                       const std::vector<std::string>& args);

// The `--set key.path=value` option (repeatable), for commands that read an experiment.
void add_set_option(po::options_description& options);

// The `--set` values in `vm` ("key.path=value"), in order.
std::vector<std::string> set_options(const po::variables_map& vm);

// The experiment file at `path` with the `--set` overrides in `vm` applied.
Config load_experiment(const std::string& path, const po::variables_map& vm);

// Loads the plugin files an experiment lists under `plugins:` (relative to the file's folder);
// an error points at the list entry. `probe`: try each in a child process first
// (strata/plugin_probe.hpp), so that a crashing plugin is an error, not a crash.
void load_experiment_plugins(const Config& experiment, PluginLoader& loader, bool probe = false);

// The value of a string option, or `fallback` when it was not given.
std::string option_or(const po::variables_map& vm, const std::string& name,
                      const std::string& fallback);

// The layer names of a `--layers a,b,c` option; empty when the option was not given. An empty
// list (`--layers ''`) or an empty name in it (`a,,b`) is an Error: it would select nothing.
std::vector<std::string> layers_option(const po::variables_map& vm);

// A command's output folder: `--out` when given (an empty --out is an Error), else
// runs/<the experiment file's stem><suffix>, which must name a folder of its own (a file named
// `.yaml` or `..yaml` has no usable stem: an Error asking for --out).
std::filesystem::path output_folder(const po::variables_map& vm, const std::string& experiment,
                                    const std::string& suffix);

}  // namespace strata::cli
