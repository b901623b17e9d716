// strata train EXP.yaml [--set key.path=value]... [--out DIR] [--overwrite | --resume [--force]
//   [--allow-nonfinite]] [--weights CKPT [--weights-partial]] [--progress MODE] [--threads N]
#include <cstdio>
#include <filesystem>

#include "cli.hpp"
#include "strata/error.hpp"
#include "strata/trainer.hpp"

namespace strata::cli {

int run_train(Session& session, const std::vector<std::string>& args) {
  po::options_description options("options");
  options.add_options()("out", po::value<std::string>(),
                        "output folder for model.h5 and summary.json "
                        "(default: runs/<experiment file name>)")("resume", po::bool_switch(),
                                                                  "continue from DIR/model.h5")(
      "force", po::bool_switch(),
      "with --resume: continue even when the experiment differs from the checkpoint's")(
      "overwrite", po::bool_switch(),
      "start a new run in a folder that holds one: its model.h5, best.h5 and summary.json are "
      "deleted once the data is loaded (without it, such a folder is refused)")(
      "allow-nonfinite", po::bool_switch(),
      "with --resume or --weights: load a checkpoint that holds NaN or infinite values")(
      "weights", po::value<std::string>(),
      "fine-tune: start from CKPT's /model tensors, matched by layer name (every tensor must "
      "match)")("weights-partial", po::bool_switch(),
                "with --weights: load the tensors that match by name and shape, list the rest")(
      "progress", po::value<std::string>()->default_value("auto"),
      "auto (a bar on a terminal, plain lines otherwise), bar, lines or none")(
      "threads", po::value<int>(),
      "worker threads of the backend (0: all cores); the same as --set threads=N");
  add_set_option(options);
  const Usage usage{"train", "EXP.yaml [options]",
                    "Train the experiment. Writes DIR/model.h5 (an HDF5 checkpoint, replaced\n"
                    "atomically) and DIR/summary.json."};
  auto vm = parse(usage, options, {"EXP.yaml"}, args);
  if (!vm) return 0;
  const std::string path = (*vm)["positional-words"].as<std::vector<std::string>>()[0];

  Config experiment = load_experiment(path, *vm);
  if (vm->count("threads")) {
    const int threads = (*vm)["threads"].as<int>();
    if (threads < 0) fail("--threads {}: expected 0 (all cores) or a positive count", threads);
    experiment.set("threads", std::to_string(threads));
  }
  load_experiment_plugins(experiment, session.loader);
  TrainOptions train_options;
  train_options.out_dir = output_folder(*vm, path, "");
  train_options.resume = (*vm)["resume"].as<bool>();
  train_options.force = (*vm)["force"].as<bool>();
  train_options.overwrite = (*vm)["overwrite"].as<bool>();
  if (train_options.overwrite && train_options.resume) {
    fail("--overwrite starts the run in DIR over and --resume continues it: give one of them");
  }
  train_options.allow_nonfinite = (*vm)["allow-nonfinite"].as<bool>();
  if (vm->count("weights")) train_options.weights = (*vm)["weights"].as<std::string>();
  train_options.weights_partial = (*vm)["weights-partial"].as<bool>();
  if (train_options.force && !train_options.resume) fail("--force only applies with --resume");
  if (train_options.allow_nonfinite && !train_options.resume && train_options.weights.empty()) {
    fail("--allow-nonfinite only applies with --resume or --weights");
  }
  if (train_options.weights_partial && train_options.weights.empty()) {
    fail("--weights-partial needs --weights CKPT (the checkpoint to take the matching tensors from)");
  }
  if (train_options.resume && !train_options.weights.empty()) {
    fail("--weights starts a new run from another checkpoint's weights and --resume continues this "
         "run from DIR/model.h5: give one of them");
  }
  train_options.progress = (*vm)["progress"].as<std::string>();
  const auto& mode = train_options.progress;
  if (mode != "auto" && mode != "bar" && mode != "lines" && mode != "none") {
    fail("--progress {}: expected auto, bar, lines or none", mode);
  }
  const TrainSummary summary = train_experiment(experiment, session.registries, train_options);
  std::printf(
      "test accuracy %.4f (loss %.4f) after %lld epochs, %.1fs of training at %.0f images/s\n",
      summary.test_accuracy, summary.test_loss, static_cast<long long>(summary.epochs),
      summary.train_seconds, summary.train_images_per_second);
  std::printf("checkpoint: %s\nsummary: %s\n", summary.checkpoint.c_str(), summary.summary.c_str());
  return 0;
}

}  // namespace strata::cli
