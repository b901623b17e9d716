// strata export CKPT.h5 --onnx MODEL.onnx [--opset 13] [--preprocess]
// The trained network as an ONNX file for deployment: the model is rebuilt from the experiment
// stored in the checkpoint (as `strata forward CKPT.h5` does), every layer describes itself through
// its export hook (strata/export.hpp), and interop/ writes and checks the ONNX model.
#include <cstdio>
#include <filesystem>

#include "cli.hpp"
#include "strata/error.hpp"
#include "strata/export.hpp"
#include "strata/files.hpp"
#include "strata/interop/onnx_export.hpp"
#include "strata/tools/analysis.hpp"

namespace strata::cli {

int run_export(Session& session, const std::vector<std::string>& args) {
  po::options_description options("options");
  options.add_options()("onnx", po::value<std::string>()->required(), "the ONNX file to write")(
      "opset", po::value<int>()->default_value(13),
      "the ONNX opset (13 up to the newest this libonnx knows)")(
      "preprocess",
      "put the checkpoint's fitted preprocessing (normalize) into the model as its first nodes, "
      "so that it takes raw images in [0, 1]");
  const Usage usage{
      "export", "CKPT.h5 --onnx MODEL.onnx [--opset 13] [--preprocess]",
      "Write the trained network of a checkpoint as an ONNX model in inference mode: batch norm\n"
      "with its running statistics, dropout as the identity. The input is named 'input'\n"
      "[batch, C, H, W] and the output 'logits', with a dynamic batch dimension. The model is\n"
      "rebuilt from the experiment stored in the checkpoint (its plugins are loaded as\n"
      "recorded); every layer must have an export mapping (docs/interop.md). The file is\n"
      "checked with ONNX's checker and shape inference and written atomically: on any error\n"
      "nothing is written."};
  auto vm = parse(usage, options, {"CKPT.h5"}, args);
  if (!vm) return 0;
  const std::string path = (*vm)["positional-words"].as<std::vector<std::string>>()[0];
  const std::filesystem::path output = (*vm)["onnx"].as<std::string>();
  const int opset = (*vm)["opset"].as<int>();
  interop::check_export_opset(opset);
  // The output never replaces the checkpoint or a plugin, nor a device, FIFO, folder or link;
  // checked before the work and again before the write. A signal mid-write removes the
  // temporary file.
  remove_temporary_files_on_signal();
  const auto check_output = [&] {
    std::vector<CommandInput> inputs = {{"the checkpoint", path}};
    for (const PluginRef& plugin : session.loader.plugins())
      inputs.push_back({"the plugin", plugin->path});
    check_output_file("--onnx", output, inputs);
  };
  check_output();

  TrainedModel model(path, session.registries, session.loader);
  std::vector<std::shared_ptr<const Transform>> preprocess;
  if (vm->count("preprocess")) {
    if (!model.has_preprocessing()) {
      fail(
          "export --preprocess: checkpoint {} has no data transforms (data.transforms or "
          "data.preprocess) to put into the model",
          path);
    }
    preprocess = model.model_input_transforms();
  }
  ExportOptions export_options;
  export_options.opset = opset;
  const ExportedModel described =
      export_graph(model.graph(), session.registries, export_options, preprocess);
  interop::OnnxWriteInfo info;
  info.producer_version = STRATA_VERSION;
  info.doc_string = fmt::format("exported by strata export from the checkpoint {}{}",
                                std::filesystem::path(path).filename().string(),
                                preprocess.empty() ? "" : " with its preprocessing");
  check_output();
  interop::write_onnx(described, output, info);
  std::printf(
      "wrote %s: opset %d, %zu nodes, %zu initializers; input '%s' [batch, %s], output "
      "'%s' [batch, %s]%s\n",
      output.c_str(), opset, described.nodes.size(), described.initializers.size(),
      described.input_name.c_str(),
      fmt::format("{}", fmt::join(described.input_shape.dims(), ", ")).c_str(),
      described.output_name.c_str(),
      fmt::format("{}", fmt::join(described.output_shape.dims(), ", ")).c_str(),
      preprocess.empty() ? "" : ", with the preprocessing");
  return 0;
}

}  // namespace strata::cli
