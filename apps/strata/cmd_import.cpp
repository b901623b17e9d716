// strata import MODEL.onnx --out DIR [--overwrite]
// An ONNX model (interop/, strata/interop/onnx_import.hpp) as DIR/experiment.yaml and
// DIR/weights.h5, checked against the layers this Strata's plugins build before either file is
// in place; both files appear together at the end, or neither does.
#include <fmt/ranges.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <map>
#include <system_error>

#include "cli.hpp"
#include "strata/checkpoint.hpp"
#include "strata/error.hpp"
#include "strata/files.hpp"
#include "strata/graph.hpp"
#include "strata/interop/onnx_import.hpp"
#include "strata/plugin_records.hpp"
#include "strata/training/experiment.hpp"

namespace strata::cli {

namespace fs = std::filesystem;

namespace {

// The imported model built as every command builds it (its weights are checked against its
// layers by write_import, which loads the checkpoint it wrote into them).
Experiment build_imported(const interop::OnnxImport& imported, const std::string& source,
                          Registries& registries) {
  Config experiment =
      Config::parse_string(imported.experiment_yaml, source + " (imported experiment)");
  try {
    return Experiment::read(experiment, registries, Experiment::Scope::shapes);
  } catch (const Error& error) {
    fail(
        "{}\n  the experiment mapped from {} does not build in this Strata (a layer key its "
        "plugins do not know?); nothing was written",
        error.what(), source);
  }
}

// Writes experiment.yaml and weights.h5 under temporary names in `out`, checks that the
// checkpoint loads into the model (every tensor its layers hold, by name and shape, none more,
// and finite), then renames both into place. On failure nothing is left: not the temporary
// files, nor `out` when this call created it.
void write_import(const fs::path& out, const interop::OnnxImport& imported, Experiment& run,
                  Registries& registries) {
  const bool created = !fs::exists(out);
  fs::create_directories(out);
  const fs::path yaml_temporary = out / ("experiment.yaml" + temporary_suffix());
  const fs::path weights_temporary = out / ("weights.h5" + temporary_suffix());
  TemporaryFile yaml_guard(yaml_temporary), weights_guard(weights_temporary);
  try {
    Checkpoint checkpoint;
    checkpoint.model = imported.weights;
    checkpoint.experiment_yaml = imported.experiment_yaml;
    // The placeholder dataset import writes (interop/src/onnx_import.cpp, experiment_yaml).
    checkpoint.plugins =
        plugins_needed(registries, *run.graph, run.backend_name, "synthetic", run.loss_type, {});
    write_file_atomically(yaml_temporary, imported.experiment_yaml);
    save_checkpoint(weights_temporary, checkpoint);
    std::vector<NamedTensor> state = run.graph->state_tensors();
    load_checkpoint_tensors(weights_temporary, "model", state);
    fs::rename(weights_temporary, out / "weights.h5");
    fs::rename(yaml_temporary, out / "experiment.yaml");
  } catch (...) {
    std::error_code ignored;
    fs::remove(yaml_temporary, ignored);
    fs::remove(weights_temporary, ignored);
    if (created) fs::remove(out, ignored);
    throw;
  }
}

}  // namespace

int run_import(Session& session, const std::vector<std::string>& args) {
  po::options_description options("options");
  options.add_options()("out", po::value<std::string>()->required(),
                        "the folder to write experiment.yaml and weights.h5 into")(
      "overwrite", po::bool_switch(),
      "replace the experiment.yaml and weights.h5 already in --out");
  const Usage usage{
      "import", "MODEL.onnx --out DIR [--overwrite]",
      "Map an ONNX model (as torch.onnx.export writes torchvision's CNNs, opsets 11 to 17) onto\n"
      "Strata layers: DIR/experiment.yaml (the model, and a placeholder dataset to replace) and\n"
      "DIR/weights.h5 (a checkpoint with the weights), for strata forward, strata eval and\n"
      "strata train --weights. Prints the nodes per operator and the files written. An operator\n"
      "without a mapping is an error naming the node; nothing is written unless the whole\n"
      "import succeeds. docs/interop.md lists what maps to what."};
  auto vm = parse(usage, options, {"MODEL.onnx"}, args);
  if (!vm) return 0;
  const std::string path = (*vm)["positional-words"].as<std::vector<std::string>>()[0];
  const fs::path out = (*vm)["out"].as<std::string>();
  if (out.empty()) fail("--out: an empty folder name");
  if (fs::exists(out) && !fs::is_directory(out))
    fail("--out {}: exists and is not a folder", out.string());
  const bool overwrite = (*vm)["overwrite"].as<bool>();
  for (const char* name : {"experiment.yaml", "weights.h5"}) {
    if (!overwrite && fs::exists(out / name)) {
      fail("--out {}: {} exists; --overwrite replaces it, or choose another --out", out.string(),
           name);
    }
    check_output_file("--out", out / name, {{"the model", path}});
  }
  remove_temporary_files_on_signal();

  const interop::OnnxImport imported = interop::import_onnx(path);
  Experiment run = build_imported(imported, path, session.registries);
  write_import(out, imported, run, session.registries);

  int64_t nodes = 0;
  std::string counts;
  for (const auto& [op, count] : imported.operator_counts) {
    nodes += count;
    counts += fmt::format("{}{} {}", counts.empty() ? "" : ", ", op, count);
  }
  std::map<std::string, int64_t> layer_types;
  for (std::size_t i = 0; i < run.graph->size(); ++i)
    layer_types[std::string(run.graph->layer(i).type())] += 1;
  std::string types;
  for (const auto& [type, count] : layer_types)
    types += fmt::format("{}{} {}", types.empty() ? "" : ", ", type, count);
  std::printf("read %s (%s, opset %lld): %lld nodes: %s\n", path.c_str(), imported.producer.c_str(),
              static_cast<long long>(imported.opset), static_cast<long long>(nodes),
              counts.c_str());
  std::printf("mapped to %zu layers: %s\n", run.graph->size(), types.c_str());
  std::printf("wrote %s (input [%s], output layer '%s') and %s (%lld parameters)\n",
              (out / "experiment.yaml").c_str(),
              fmt::format("{}", fmt::join(imported.input_shape.dims(), ", ")).c_str(),
              imported.output_layer.c_str(), (out / "weights.h5").c_str(),
              static_cast<long long>(run.graph->num_parameters()));
  return 0;
}

}  // namespace strata::cli
