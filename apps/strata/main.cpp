// strata: the command-line tool.
//
//   strata train EXP.yaml [--set key.path=value]... [--out DIR] [--resume] [--progress MODE]
//   strata forward EXP.yaml --weights CKPT.h5 --input IN.h5 --output OUT.h5 [--layers a,b,...]
//   strata plugins
//
// Plugins are loaded from <folder of this program>/../lib/strata, then from each folder of
// STRATA_PLUGIN_PATH, then the files an experiment lists under `plugins:`.
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "strata/backend.hpp"
#include "strata/checkpoint.hpp"
#include "strata/config.hpp"
#include "strata/error.hpp"
#include "strata/graph.hpp"
#include "strata/plugin.hpp"
#include "strata/registry.hpp"
#include "strata/trainer.hpp"

namespace fs = std::filesystem;
using namespace strata;

namespace {

constexpr const char* kUsage = R"(usage:
  strata train EXP.yaml [--set key.path=value]... [--out DIR] [--resume] [--progress MODE]
      Train the experiment. Writes DIR/model.h5 (checkpoint) and DIR/summary.json.
      DIR defaults to runs/<experiment name>. --resume continues from DIR/model.h5.
      MODE: auto (a bar on a terminal, plain lines otherwise), bar, lines or none.
  strata forward EXP.yaml --weights CKPT.h5 --input IN.h5 --output OUT.h5 [--layers a,b,...]
      Run the model in inference mode on the float32 dataset /data [N, C, H, W] of IN.h5 (no
      preprocessing) and write one dataset per requested layer (default: the last) to OUT.h5.
  strata plugins
      List the loaded plugins and every type they register.

Plugins load from <this program>/../lib/strata, STRATA_PLUGIN_PATH (colon-separated folders),
and the experiment's `plugins:` list. Documentation: docs/ in the source tree.
)";

struct Arguments {
  std::string command;
  std::vector<std::string> positional;
  std::vector<std::string> sets;
  std::map<std::string, std::string> options;  // --name value
  bool resume = false;
};

Arguments parse_arguments(int argc, char** argv) {
  Arguments args;
  if (argc < 2) fail("no command given\n{}", kUsage);
  args.command = argv[1];
  static const std::vector<std::string> kValued{"--out", "--weights", "--input", "--output",
                                                "--layers", "--progress"};
  for (int i = 2; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--resume") {
      args.resume = true;
    } else if (arg == "--set") {
      if (i + 1 >= argc) fail("--set needs key.path=value");
      args.sets.push_back(argv[++i]);
    } else if (std::find(kValued.begin(), kValued.end(), arg) != kValued.end()) {
      if (i + 1 >= argc) fail("{} needs a value", arg);
      args.options[arg] = argv[++i];
    } else if (arg.starts_with("--")) {
      fail("unknown option '{}'\n{}", arg, kUsage);
    } else {
      args.positional.push_back(arg);
    }
  }
  return args;
}

std::string required(const Arguments& args, const std::string& option) {
  auto it = args.options.find(option);
  if (it == args.options.end()) fail("{}: {} is required\n{}", args.command, option, kUsage);
  return it->second;
}

// The experiment file with --set overrides applied.
Config load_experiment(const Arguments& args) {
  if (args.positional.size() != 1) fail("{}: expected one experiment file\n{}", args.command, kUsage);
  Config config = Config::parse_file(args.positional[0]);
  for (const std::string& set : args.sets) {
    const auto eq = set.find('=');
    if (eq == std::string::npos || eq == 0) fail("--set {}: expected key.path=value", set);
    config.set(set.substr(0, eq), set.substr(eq + 1));
  }
  return config;
}

// Plugin files named by the experiment, relative to the experiment file's folder.
void load_experiment_plugins(const Config& experiment, PluginLoader& loader) {
  auto plugins = experiment.find("plugins");
  if (!plugins) return;
  const fs::path base = fs::path(experiment.source_file()).parent_path();
  for (const Config& item : plugins->items()) {
    fs::path file = item.as<std::string>();
    if (file.is_relative()) file = base / file;
    try {
      loader.load_file(file);
    } catch (const Error& error) {
      item.fail(error.what());
    }
  }
}

int command_train(const Arguments& args, Registries& registries, PluginLoader& loader) {
  Config experiment = load_experiment(args);
  load_experiment_plugins(experiment, loader);
  TrainOptions options;
  options.out_dir = args.options.count("--out")
                        ? fs::path(args.options.at("--out"))
                        : fs::path("runs") / fs::path(args.positional[0]).stem();
  options.resume = args.resume;
  if (args.options.count("--progress")) options.progress = args.options.at("--progress");
  if (options.progress != "auto" && options.progress != "bar" && options.progress != "lines" &&
      options.progress != "none") {
    fail("--progress {}: expected auto, bar, lines or none", options.progress);
  }
  const TrainSummary summary = train_experiment(experiment, registries, options);
  std::printf("test accuracy %.4f (loss %.4f) after %lld epochs, %.1fs of training at %.0f images/s\n",
              summary.test_accuracy, summary.test_loss, static_cast<long long>(summary.epochs),
              summary.train_seconds, summary.train_images_per_second);
  std::printf("checkpoint: %s\nsummary: %s\n", summary.checkpoint.c_str(), summary.summary.c_str());
  return 0;
}

int command_forward(const Arguments& args, Registries& registries, PluginLoader& loader) {
  Config experiment = load_experiment(args);
  load_experiment_plugins(experiment, loader);
  const fs::path weights = required(args, "--weights");
  const fs::path input_path = required(args, "--input");
  const fs::path output_path = required(args, "--output");

  const std::string backend_name = experiment.get<std::string>("backend", "tbb");
  std::optional<Config> backend_key = experiment.find("backend");
  auto backend = registries.backends.create(backend_name, backend_key ? *backend_key : Config{});
  backend->set_threads(experiment.get<int>("threads", 0));
  Rng rng(static_cast<uint32_t>(experiment.get<int64_t>("seed", 1)));
  const Config model = experiment.at("model");
  Graph graph(model, registries, backend_name, rng);
  model.check_unused();
  experiment.mark_used();  // data, optimizer and training settings do not matter here

  std::vector<NamedTensor> state = graph.state_tensors();
  load_checkpoint_tensors(weights, "model", state);

  Tensor input = read_hdf5_tensor(input_path, "data");
  if (input.rank() != graph.input_shape().rank() + 1 ||
      input.shape().without_batch() != graph.input_shape()) {
    fail("{}: /data has shape {} but the model expects [N, {}]", input_path.string(),
         input.shape().str(), fmt::join(graph.input_shape().dims(), ", "));
  }

  std::vector<std::string> layers;
  if (args.options.count("--layers")) {
    std::string list = args.options.at("--layers");
    for (std::size_t start = 0; start <= list.size();) {
      std::size_t comma = std::min(list.find(',', start), list.size());
      if (comma > start) layers.push_back(list.substr(start, comma - start));
      start = comma + 1;
    }
  }
  if (layers.empty()) layers.push_back(graph.name(graph.size() - 1));
  std::vector<std::string> known;
  for (std::size_t i = 0; i < graph.size(); ++i) known.push_back(graph.name(i));
  std::vector<NamedTensor> outputs;
  for (const std::string& name : layers) {
    const int index = graph.index_of(name);
    if (index < 0) fail("--layers: the model has no layer '{}'\n  {}", name, suggestion_text(name, known, "layers"));
    outputs.push_back({name, Tensor(graph.layer(index).output_shape().with_batch(input.dim(0)))});
  }

  Context context{false, &rng, backend.get()};
  constexpr int64_t kBatch = 256;
  const int64_t n = input.dim(0);
  for (int64_t begin = 0; begin < n; begin += kBatch) {
    const int64_t end = std::min(n, begin + kBatch);
    graph.forward(context, input.batch_slice(begin, end));
    for (NamedTensor& output : outputs) {
      Tensor rows = output.tensor.batch_slice(begin, end);
      rows.copy_from(graph.activation(output.name));
    }
  }
  write_hdf5_tensors(output_path, outputs);
  std::printf("wrote %zu dataset(s) for %lld input(s) to %s\n", outputs.size(),
              static_cast<long long>(n), output_path.c_str());
  return 0;
}

template <class R>
void list_types(const char* title, const R& registry) {
  std::printf("%s:\n", title);
  for (const auto& [type, entry] : registry.entries()) {
    std::printf("  %-24s %s\n", type.c_str(), entry.owner->name.c_str());
  }
}

int command_plugins(Registries& registries, PluginLoader& loader) {
  std::printf("plugins:\n");
  for (const auto& plugin : loader.plugins()) {
    std::printf("  %-20s %-6s %s\n", plugin->name.c_str(), plugin->version.c_str(), plugin->path.c_str());
  }
  list_types("layer types", registries.layers);
  list_types("loss types", registries.losses);
  list_types("optimizer types", registries.optimizers);
  list_types("schedule types", registries.schedules);
  list_types("initializer types", registries.initializers);
  list_types("dataset types", registries.datasets);
  list_types("transform types", registries.transforms);
  list_types("backends", registries.backends);
  std::printf("kernels (op: backend, plugin):\n");
  for (const auto& [key, entry] : registries.kernels.entries()) {
    std::printf("  %-12s %-12s %s\n", key.first.c_str(), key.second.c_str(), entry.owner->name.c_str());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 2 && (std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0 ||
                    std::strcmp(argv[1], "help") == 0)) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  try {
    const Arguments args = parse_arguments(argc, argv);
    Registries registries;
    PluginLoader loader(registries);
    loader.load_default();
    if (args.command == "train") return command_train(args, registries, loader);
    if (args.command == "forward") return command_forward(args, registries, loader);
    if (args.command == "plugins") return command_plugins(registries, loader);
    fail("unknown command '{}'\n  {}\n{}", args.command,
         suggestion_text(args.command, {"train", "forward", "plugins"}, "commands"), kUsage);
  } catch (const Error& error) {
    std::fflush(stdout);
    std::fprintf(stderr, "error: %s\n", error.what());
    return 1;
  } catch (const std::exception& error) {
    std::fflush(stdout);
    std::fprintf(stderr, "error: internal: %s\n", error.what());
    return 2;
  }
}
