// strata: the command-line tool. One file per subcommand (cmd_<name>.cpp); this file only lists
// them and turns errors into messages and exit statuses:
//   0 success, 1 a strata::Error (bad input, with a complete message), 2 an internal error (the
//   message names the subcommand, the exception type and its text).
//
// Plugins are loaded from <folder of this program>/../lib/strata, then from each folder of
// STRATA_PLUGIN_PATH, then the files an experiment lists under `plugins:`.
#include <boost/core/demangle.hpp>
#include <cstdio>
#include <new>
#include <string>
#include <typeinfo>
#include <vector>

#include "cli.hpp"
#include "strata/checkpoint.hpp"
#include "strata/error.hpp"
#include "strata/plugin_probe.hpp"
#include "strata/plugin.hpp"

namespace strata::cli {

int run_train(Session& session, const std::vector<std::string>& args);
int run_forward(Session& session, const std::vector<std::string>& args);
int run_plugins(Session& session, const std::vector<std::string>& args);
int run_bench(Session& session, const std::vector<std::string>& args);
int run_check_plugin(Session& session, const std::vector<std::string>& args);
int run_search(Session& session, const std::vector<std::string>& args);
int run_gradcheck(Session& session, const std::vector<std::string>& args);
int run_summary(Session& session, const std::vector<std::string>& args);
int run_inspect(Session& session, const std::vector<std::string>& args);
int run_eval(Session& session, const std::vector<std::string>& args);
int run_import(Session& session, const std::vector<std::string>& args);
int run_export(Session& session, const std::vector<std::string>& args);

namespace {

struct Command {
  const char* name;
  const char* summary;
  int (*run)(Session&, const std::vector<std::string>&);
};

// Add a subcommand here, in cmd_<name>.cpp, and nowhere else.
const Command kCommands[] = {
    {"train", "train an experiment, with checkpoints and an exact --resume", run_train},
    {"forward", "run a trained model on HDF5 input and write layer activations", run_forward},
    {"search", "hyperparameter search (random, grid, ASHA; coarse to fine stages)", run_search},
    {"summary", "per-layer shapes, parameters, memory, multiply-adds, receptive fields", run_summary},
    {"plugins", "list the loaded plugins and the types they register", run_plugins},
    {"bench", "time a model's training step per layer on synthetic data", run_bench},
    {"inspect", "show a checkpoint: experiment, plugins, training state, parameter statistics", run_inspect},
    {"eval", "evaluate a checkpoint: accuracy, loss, confusion matrix, confident mistakes", run_eval},
    {"import", "an ONNX model as an experiment file and a checkpoint", run_import},
    {"check-plugin", "run the layer conformance checks on a plugin's layers", run_check_plugin},
    {"gradcheck", "check the model's backward() against finite differences", run_gradcheck},
    {"export", "write a checkpoint's network as an ONNX model (--onnx FILE)", run_export},
};

void print_usage(std::FILE* out) {
  std::fprintf(
      out,
      "usage: strata COMMAND [options]   (strata help COMMAND or strata COMMAND --help for "
      "details)\n       strata --version\n\ncommands:\n");
  for (const Command& command : kCommands)
    std::fprintf(out, "  %-14s %s\n", command.name, command.summary);
  std::fprintf(
      out,
      "\nPlugins load from <this program>/../lib/strata, STRATA_PLUGIN_PATH (colon-separated "
      "folders),\nand the experiment's `plugins:` list. Documentation: docs/ in the source "
      "tree.\n");
}

int dispatch(int argc, char** argv) {
  if (argc < 2) {
    print_usage(stderr);
    fail("no command given");
  }
  std::string name = argv[1];
  std::vector<std::string> args(argv + 2, argv + argc);
  if (name == "--version" || name == "version") {
    if (!args.empty()) fail("{} takes no arguments, found '{}'", name, args[0]);
    std::printf("strata %s (plugin API %d, checkpoint format_version %d)\n", STRATA_VERSION,
                kPluginApi, kCheckpointFormatVersion);
    return 0;
  }
  if (name == "--help" || name == "-h" || name == "help") {
    if (args.empty()) {
      print_usage(stdout);
      return 0;
    }
    // `strata help train` is `strata train --help`.
    if (args.size() > 1) fail("help: expected one command name, found '{}'", fmt::join(args, " "));
    name = args[0];
    args = {"--help"};
  }
  for (const Command& command : kCommands) {
    if (name != command.name) continue;
    Session session;
    // The commands that look at plugins try each one in a child process first, so that a plugin
    // crashing in its registration is reported by file and signal instead of killing them.
    if (name == "plugins" || name == "check-plugin") {
      load_default_plugins_probed(session.loader);
    } else {
      session.loader.load_default();
    }
    return command.run(session, args);
  }
  std::vector<std::string> names;
  for (const Command& command : kCommands) names.emplace_back(command.name);
  fail("unknown command '{}'\n  {}\n  (strata --help lists them)", name,
       suggestion_text(name, names, "commands"));
}

}  // namespace

}  // namespace strata::cli

int main(int argc, char** argv) {
  try {
    return strata::cli::dispatch(argc, argv);
  } catch (const strata::Error& error) {
    std::fflush(stdout);
    std::fprintf(stderr, "error: %s\n", error.what());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fflush(stdout);
    std::fprintf(stderr,
                 "error: strata %s: out of memory (std::bad_alloc): an input asked for more "
                 "memory than this machine could give; please report the input that did this\n",
                 argc > 1 ? argv[1] : "");
    return 2;
  } catch (const std::exception& error) {
    std::fflush(stdout);
    std::fprintf(stderr,
                 "error: strata %s: internal error (%s: %s); this is a bug in strata, please "
                 "report it with the command line\n",
                 argc > 1 ? argv[1] : "", boost::core::demangle(typeid(error).name()).c_str(),
                 error.what());
    return 2;
  } catch (...) {
    std::fflush(stdout);
    std::fprintf(stderr,
                 "error: strata %s: internal error (an exception that is not a std::exception); "
                 "this is a bug in strata, please report it with the command line\n",
                 argc > 1 ? argv[1] : "");
    return 2;
  }
}
