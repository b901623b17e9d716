#include "cli.hpp"

#include <algorithm>
#include <cstdlib>
#include <cstdio>
#include <filesystem>
#include <sstream>

#include "strata/error.hpp"
#include "strata/plugin_probe.hpp"

namespace strata::cli {

namespace fs = std::filesystem;

namespace {

// The one-line reminder appended to every command-line error.
std::string usage_hint(const Usage& usage) {
  return fmt::format("  usage: strata {} {}   (strata {} --help lists the options)", usage.command,
                     usage.synopsis, usage.command);
}

std::string usage_text(const Usage& usage, const po::options_description& options) {
  std::ostringstream text;
  text << "usage: strata " << usage.command << ' ' << usage.synopsis << "\n\n"
       << usage.description << "\n\n"
       << options;
  return text.str();
}

// Keys of the experiment file (docs/experiment-file.md) that a user may try as options
// ("--epochs 3"); the keys of the file at hand are added to them. Optional keys are listed because
// a file need not hold them.
const char* const kExperimentKeys[] = {"seed",
                                       "backend",
                                       "threads",
                                       "data.type",
                                       "data.dir",
                                       "data.validation",
                                       "data.train_limit",
                                       "data.test_limit",
                                       "data.class_names",
                                       "model.input",
                                       "loss.type",
                                       "optimizer.type",
                                       "optimizer.lr",
                                       "optimizer.momentum",
                                       "optimizer.weight_decay",
                                       "optimizer.nesterov",
                                       "optimizer.betas",
                                       "optimizer.eps",
                                       "optimizer.schedule.type",
                                       "train.epochs",
                                       "train.batch_size",
                                       "train.eval_batch_size",
                                       "train.shuffle",
                                       "train.log_every",
                                       "train.diagnostics_every",
                                       "train.overfit",
                                       "train.explode_factor",
                                       "checkpoint.every",
                                       "checkpoint.best"};

// Every key path of the maps in `config` (lists are not entered: model.layers[i] keys are not
// options anyone would guess).
void collect_key_paths(const Config& config, const std::string& prefix,
                       std::vector<std::string>& out) {
  if (!config.is_map()) return;
  for (const std::string& key : config.keys()) {
    const std::string path = prefix.empty() ? key : prefix + "." + key;
    out.push_back(path);
    collect_key_paths(*config.find(key), path, out);
  }
}

// For an unknown option such as --epochs (or --batch-size, --train.epochs=3) that names a key of
// the experiment: "; to change train.epochs use --set train.epochs=3". Empty when none matches.
std::string set_suggestion(const std::string& given, const std::vector<std::string>& args) {
  const std::string option = given.substr(0, given.find('='));  // "--lr=0.1" comes whole
  std::string name = option.substr(option.find_first_not_of('-') == std::string::npos
                                       ? option.size()
                                       : option.find_first_not_of('-'));
  std::replace(name.begin(), name.end(), '-', '_');
  if (name.empty()) return "";
  std::vector<std::string> keys(std::begin(kExperimentKeys), std::end(kExperimentKeys));
  // The experiment named on the command line, when there is one and it parses.
  for (const std::string& word : args) {
    const std::string extension = fs::path(word).extension().string();
    if (word.starts_with("-") || (extension != ".yaml" && extension != ".yml")) continue;
    try {
      collect_key_paths(Config::parse_file(word), "", keys);
    } catch (const Error&) {
    }
    break;
  }
  std::vector<std::string> matches;
  for (const std::string& key : keys) {
    const std::string last =
        key.substr(key.rfind('.') == std::string::npos ? 0 : key.rfind('.') + 1);
    const bool match = name.find('.') != std::string::npos ? key == name : last == name;
    if (match && std::find(matches.begin(), matches.end(), key) == matches.end()) {
      matches.push_back(key);
    }
  }
  if (matches.empty()) return "";
  // The value the user gave: --epochs=3, or the word after --epochs.
  std::string value = "VALUE";
  for (std::size_t i = 0; i < args.size(); ++i) {
    if (args[i].starts_with(option + "=")) {
      value = args[i].substr(option.size() + 1);
    } else if (args[i] == option && i + 1 < args.size() && !args[i + 1].starts_with("-")) {
      value = args[i + 1];
    } else {
      continue;
    }
    break;
  }
  if (matches.size() == 1) {
    return fmt::format("; to change {} use --set {}={}", matches[0], matches[0], value);
  }
  return fmt::format("; to change one of {} use --set KEY={} (e.g. --set {}={})",
                     fmt::join(matches, ", "), value, matches[0], value);
}

}  // namespace

std::optional<po::variables_map> parse(const Usage& usage, const po::options_description& options,
                                       const std::vector<std::string>& positional_names,
                                       const std::vector<std::string>& args) {
  po::options_description all(options);
  all.add_options()("help,h", "show this help");
  // Positional words are collected under one hidden name and checked here, so that the message
  // for a missing or extra word can name it.
  po::options_description hidden;
  hidden.add_options()("positional-words", po::value<std::vector<std::string>>(), "");
  po::options_description parsed_options(all);
  parsed_options.add(hidden);
  po::positional_options_description positional;
  positional.add("positional-words", -1);

  po::variables_map vm;
  try {
    po::store(
        po::command_line_parser(args)
            .options(parsed_options)
            .positional(positional)
            .style(po::command_line_style::default_style & ~po::command_line_style::allow_guessing)
            .run(),
        vm);
    // --help wins over missing required options, so notify() (which checks them) comes after.
    if (!vm.count("help")) po::notify(vm);
  } catch (const po::unknown_option& error) {
    const std::string suggestion = options.find_nothrow("set", false) != nullptr
                                       ? set_suggestion(error.get_option_name(), args)
                                       : std::string();
    fail("{}: unknown option '{}'{}\n{}", usage.command,
         error.get_option_name().substr(0, error.get_option_name().find('=')), suggestion,
         usage_hint(usage));
  } catch (const po::error& error) {
    fail("{}: {}\n{}", usage.command, error.what(), usage_hint(usage));
  }
  if (vm.count("help")) {
    std::fputs(usage_text(usage, all).c_str(), stdout);
    return std::nullopt;
  }

  const std::vector<std::string> words = vm.count("positional-words")
                                             ? vm["positional-words"].as<std::vector<std::string>>()
                                             : std::vector<std::string>{};
  const bool takes_rest = !positional_names.empty() && positional_names.back().ends_with("...");
  const std::size_t required = takes_rest ? positional_names.size() - 1 : positional_names.size();
  if (words.size() < required) {
    fail("{}: expected {} (missing {})\n{}", usage.command, usage.synopsis,
         positional_names[words.size()], usage_hint(usage));
  }
  if (!takes_rest && words.size() > required) {
    fail("{}: unexpected argument '{}'\n{}", usage.command, words[required], usage_hint(usage));
  }
  return vm;
}

void add_set_option(po::options_description& options) {
  options.add_options()("set", po::value<std::vector<std::string>>()->composing(),
                        "override a key of the experiment: --set key.path=value (value in YAML, "
                        "e.g. --set train.epochs=2 --set 'model.input=[1, 28, 28]'); repeatable");
}

std::vector<std::string> set_options(const po::variables_map& vm) {
  return vm.count("set") ? vm["set"].as<std::vector<std::string>>() : std::vector<std::string>{};
}

Config load_experiment(const std::string& path, const po::variables_map& vm) {
  Config config = Config::parse_file(path);
  for (const std::string& set : set_options(vm)) {
    const auto eq = set.find('=');
    if (eq == std::string::npos || eq == 0) fail("--set {}: expected key.path=value", set);
    if (set.substr(0, eq) == "include" || set.starts_with("include[")) {
      fail(
          "--set {}: include: is resolved when the experiment file is read, so it can only be "
          "written in the file",
          set);
    }
    config.set(set.substr(0, eq), set.substr(eq + 1));
  }
  return config;
}

void load_experiment_plugins(const Config& experiment, PluginLoader& loader, bool probe) {
  auto plugins = experiment.find("plugins");
  if (!plugins) return;
  const fs::path base = fs::path(experiment.source_file()).parent_path();
  for (const Config& item : plugins->items()) {
    fs::path file = item.as<std::string>();
    // Relative to the file that lists it (an included file may be in another folder); a --set
    // value is relative to the experiment file.
    std::error_code ec;
    const fs::path listed_in = item.source_file();
    if (file.is_relative()) {
      file = (fs::is_regular_file(listed_in, ec) ? listed_in.parent_path() : base) / file;
    }
    try {
      if (probe) {
        load_plugin_probed(loader, file);
      } else {
        loader.load_file(file);
      }
    } catch (const Error& error) {
      item.fail(error.what());
    }
  }
}

std::string option_or(const po::variables_map& vm, const std::string& name,
                      const std::string& fallback) {
  return vm.count(name) ? vm[name].as<std::string>() : fallback;
}

std::vector<std::string> layers_option(const po::variables_map& vm) {
  if (!vm.count("layers")) return {};
  const std::string list = vm["layers"].as<std::string>();
  if (list.empty()) {
    fail(
        "--layers: empty; give layer names separated by commas (e.g. --layers conv1,fc1), or "
        "leave the option out for the last layer");
  }
  std::vector<std::string> names;
  for (std::size_t start = 0; start <= list.size();) {
    const std::size_t comma = std::min(list.find(',', start), list.size());
    if (comma == start) {
      fail("--layers {}: an empty layer name at character {}; separate names with single commas",
           list, start + 1);
    }
    names.push_back(list.substr(start, comma - start));
    start = comma + 1;
  }
  return names;
}

fs::path output_folder(const po::variables_map& vm, const std::string& experiment,
                       const std::string& suffix) {
  if (vm.count("out")) {
    const std::string out = vm["out"].as<std::string>();
    if (out.empty()) fail("--out: empty; give the output folder (e.g. --out runs/my_run)");
    return out;
  }
  // The file name without its .yaml (or .yml): "", "." and ".." are not folders of their own
  // (std::filesystem's stem() of ".yaml" is ".yaml", a hidden folder, so strip by hand).
  std::string stem = fs::path(experiment).filename().string();
  if (stem.ends_with(".yaml")) {
    stem.resize(stem.size() - 5);
  } else if (stem.ends_with(".yml")) {
    stem.resize(stem.size() - 4);
  } else {
    stem = fs::path(stem).stem().string();
  }
  if (stem.empty() || stem == "." || stem == "..") {
    fail(
        "{}: the file name gives no name for the default output folder (runs/{}{} would not be "
        "a folder of its own); give one with --out",
        experiment, stem, suffix);
  }
  return fs::path("runs") / (stem + suffix);
}

const char* environment(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr && *value != '\0' ? value : nullptr;
}

std::optional<std::string> launcher_evidence() {
  // srun gives its tasks a PMI only when asked (--mpi=..., or MpiDefault in slurm.conf), and
  // Open MPI as Debian builds it starts only through PMIx (PMI-2 fails in MPI_Init too). A step
  // of one task without PMIx is a single process; more tasks would each train alone, writing the
  // same files, so that is an error before MPI prints its own, which blames the build.
  if (const char* tasks = environment("SLURM_STEP_NUM_TASKS");
      tasks != nullptr && environment("PMIX_RANK") == nullptr &&
      environment("OMPI_COMM_WORLD_SIZE") == nullptr) {
    if (std::string_view(tasks) == "1") return std::nullopt;
    const char* type = environment("SLURM_MPI_TYPE");
    fail("srun started {} tasks (SLURM_STEP_NUM_TASKS={}) without PMIx ({}), and Open MPI cannot "
         "make them one job without it: run `srun --mpi=pmix ...`, or set MpiDefault=pmix in "
         "slurm.conf",
         tasks, tasks,
         type != nullptr ? fmt::format("SLURM_MPI_TYPE={}", type) : "no --mpi and no MpiDefault");
  }
  // Sizes first: a variable that gives the job's size says more than one that gives a rank.
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "PMI_RANK"}) {
    if (const char* value = environment(name)) return fmt::format("{}={}", name, value);
  }
  return std::nullopt;
}

Communicator* job_communicator(Session& session) {
  if (session.communicator) return session.communicator.get();
  const std::optional<std::string> evidence = launcher_evidence();
  if (!evidence) return nullptr;
  if (!session.registries.communicators.contains("mpi")) {
    fail(
        "this process was started by an MPI launcher ({}), but no plugin provides the 'mpi' "
        "communicator: Strata was built without MPI. Install openmpi-bin and libopenmpi-dev "
        "(`make deps` does) and rebuild, or run strata without mpirun/srun",
        *evidence);
  }
  session.communicator = session.registries.communicators.create("mpi", Config());
  return session.communicator.get();
}

}  // namespace strata::cli
