// strata forward CKPT.h5 --input IN.h5 --output OUT.h5 [--layers a,b,...] [--preprocess]
// strata forward EXP.yaml --weights CKPT.h5 --input IN.h5 --output OUT.h5 [--layers a,b,...]
#include <algorithm>
#include <cstdio>
#include <filesystem>

#include "cli.hpp"
#include "strata/tools/analysis.hpp"
#include "strata/backend.hpp"
#include "strata/checkpoint.hpp"
#include "strata/error.hpp"
#include "strata/files.hpp"
#include "strata/graph.hpp"
#include "strata/training/experiment.hpp"

namespace strata::cli {

int run_forward(Session& session, const std::vector<std::string>& args) {
  po::options_description options("options");
  options.add_options()("weights", po::value<std::string>(),
                        "with EXP.yaml: the checkpoint whose /model group to load")(
      "preprocess",
      "apply the checkpoint's fitted preprocessing (e.g. normalize) to /data first, "
      "so raw images in [0, 1] can be fed (checkpoint form only)")(
      "input", po::value<std::string>()->required(),
      "HDF5 file with a float32 dataset /data [N, C, H, W]")(
      "output", po::value<std::string>()->required(), "HDF5 file to write, one dataset per layer")(
      "allow-nonfinite", po::bool_switch(), "load weights that hold NaN or infinite values")(
      "layers", po::value<std::string>(),
      "comma-separated layer names to write (default: the last)");
  add_set_option(options);
  const Usage usage{
      "forward", "CKPT.h5|EXP.yaml [--weights CKPT.h5] --input IN.h5 --output OUT.h5 [options]",
      "Run the model in inference mode on /data of IN.h5 [N, C, H, W] and write the\n"
      "requested layers' activations to OUT.h5. Given a checkpoint alone, the model is\n"
      "rebuilt from the experiment stored inside it (its plugins are loaded as\n"
      "recorded), from any folder; --preprocess then applies its fitted preprocessing.\n"
      "Without --preprocess, /data is used as is. --set changes the experiment file, or\n"
      "for a checkpoint the stored experiment as for strata eval (backend, threads,\n"
      "train.eval_batch_size, data.*; the model cannot change)."};
  auto vm = parse(usage, options, {"CKPT.h5|EXP.yaml"}, args);
  if (!vm) return 0;
  const std::string path = (*vm)["positional-words"].as<std::vector<std::string>>()[0];
  const std::string extension = std::filesystem::path(path).extension().string();
  if (!vm->count("weights") && (extension == ".yaml" || extension == ".yml")) {
    fail("forward: the option '--weights' is required with an experiment file ({}); or give the "
         "checkpoint alone: strata forward CKPT.h5 --input IN.h5 --output OUT.h5",
         path);
  }
  // The output never replaces an input (checkpoint, --input, --weights, the experiment file, a
  // plugin) nor a device, FIFO, folder or link; checked before the work and again before the
  // write. A signal mid-write removes the temporary file.
  remove_temporary_files_on_signal();
  const std::filesystem::path output_option = (*vm)["output"].as<std::string>();
  std::vector<CommandInput> inputs = {{"--input", (*vm)["input"].as<std::string>()}};
  if (vm->count("weights")) {
    inputs.push_back({"--weights", (*vm)["weights"].as<std::string>()});
    inputs.push_back({"the experiment file", path});
  } else {
    inputs.push_back({"the checkpoint", path});
  }
  const auto check_output = [&] {
    std::vector<CommandInput> all = inputs;
    for (const PluginRef& plugin : session.loader.plugins())
      all.push_back({"the plugin", plugin->path});
    check_output_file("--output", output_option, all);
  };
  check_output();
  if (!vm->count("weights")) {
    // --set changes the stored experiment as for strata eval (backend, threads, ...).
    TrainedModelOptions model_options;
    model_options.set = set_options(*vm);
    TrainedModel model(path, session.registries, session.loader, model_options);
    check_output();
    const std::filesystem::path input_path = (*vm)["input"].as<std::string>();
    const std::filesystem::path output_path = (*vm)["output"].as<std::string>();
    Tensor input = read_hdf5_tensor(input_path, "data");
    if (vm->count("preprocess")) model.preprocess(input);
    std::vector<std::string> layers = layers_option(*vm);
    if (layers.empty()) layers.push_back(model.graph().name(model.graph().size() - 1));
    const std::vector<NamedTensor> outputs = model.run(input, layers);
    check_output();
    write_hdf5_tensors(output_path, outputs);
    std::printf("wrote %zu dataset(s) for %lld input(s) to %s\n", outputs.size(),
                static_cast<long long>(input.dim(0)), output_path.c_str());
    return 0;
  }
  if (vm->count("preprocess")) {
    fail(
        "forward: --preprocess needs the checkpoint form (strata forward CKPT.h5 ...), whose "
        "checkpoint holds the fitted preprocessing");
  }

  Config experiment = load_experiment(path, *vm);
  load_experiment_plugins(experiment, session.loader);
  const std::filesystem::path weights = (*vm)["weights"].as<std::string>();
  const std::filesystem::path input_path = (*vm)["input"].as<std::string>();
  const std::filesystem::path output_path = (*vm)["output"].as<std::string>();
  Registries& registries = session.registries;
  check_output();  // with the experiment's plugins now loaded

  // The model as every command builds it (seed, backend, threads); data, optimizer and training
  // settings do not matter here.
  Experiment run = Experiment::read(experiment, registries, Experiment::Scope::model);
  Graph& graph = *run.graph;
  Rng& rng = run.rng;

  std::vector<NamedTensor> state = graph.state_tensors();
  load_checkpoint_tensors(weights, "model", state, false, (*vm)["allow-nonfinite"].as<bool>());

  Tensor input = read_hdf5_tensor(input_path, "data");
  if (input.rank() != graph.input_shape().rank() + 1 ||
      input.shape().without_batch() != graph.input_shape()) {
    fail("{}: /data has shape {} but the model expects [N, {}]", input_path.string(),
         input.shape().str(), fmt::join(graph.input_shape().dims(), ", "));
  }

  std::vector<std::string> layers = layers_option(*vm);
  if (layers.empty()) layers.push_back(graph.name(graph.size() - 1));
  std::vector<std::string> known;
  for (std::size_t i = 0; i < graph.size(); ++i) known.push_back(graph.name(i));
  std::vector<NamedTensor> outputs;
  for (const std::string& name : layers) {
    const int index = graph.index_of(name);
    if (index < 0)
      fail("--layers: the model has no layer '{}'\n  {}", name,
           suggestion_text(name, known, "layers"));
    outputs.push_back({name, Tensor(graph.layer(index).output_shape().with_batch(input.dim(0)))});
  }

  Context context{false, &rng, run.backend.get()};
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
  check_output();
  write_hdf5_tensors(output_path, outputs);
  std::printf("wrote %zu dataset(s) for %lld input(s) to %s\n", outputs.size(),
              static_cast<long long>(n), output_path.c_str());
  return 0;
}

}  // namespace strata::cli
