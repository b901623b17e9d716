// strata inspect CKPT.h5: what a checkpoint holds, read from the checkpoint alone.
#include <cmath>
#include <cstdio>

#include "cli.hpp"
#include "strata/analysis.hpp"

namespace strata::cli {

int run_inspect(Session& session, const std::vector<std::string>& args) {
  po::options_description options("options");
  const Usage usage{
      "inspect", "CKPT.h5",
      "Print the experiment stored in the checkpoint, the plugins it needs, the training\n"
      "state (epoch, iteration), every parameter and buffer with its shape, element count,\n"
      "min, max, mean, std and L2 norm, and the last value of each recorded metric."};
  auto vm = parse(usage, options, {"CKPT.h5"}, args);
  if (!vm) return 0;
  const std::string path = (*vm)["positional-words"].as<std::vector<std::string>>()[0];
  TrainedModel model(path, session.registries, session.loader);

  std::printf("checkpoint %s\n\nexperiment:\n", path.c_str());
  std::string yaml = model.experiment_yaml();
  for (std::size_t start = 0; start < yaml.size();) {
    const std::size_t end = std::min(yaml.find('\n', start), yaml.size());
    std::printf("  %s\n", yaml.substr(start, end - start).c_str());
    start = end + 1;
  }
  std::printf("\nplugins:\n");
  if (model.plugins().empty()) std::printf("  (none recorded: format_version 1 file)\n");
  for (const PluginRecord& plugin : model.plugins()) {
    std::printf("  %-20s %-6s %s\n", plugin.name.c_str(), plugin.version.c_str(),
                plugin.path.c_str());
  }
  if (const auto& training = model.training()) {
    std::printf("\ntraining: epoch %lld, iteration %lld\n", static_cast<long long>(training->epoch),
                static_cast<long long>(training->iteration));
  } else {
    std::printf("\ntraining: no training state (not saved by the trainer)\n");
  }

  std::printf("\nparameters and buffers:\n  %-24s %-16s %9s %11s %11s %11s %11s %11s\n", "name",
              "shape", "count", "min", "max", "mean", "std", "norm");
  int64_t total = 0;
  for (const NamedTensor& entry : model.parameters()) {
    const Tensor& t = entry.tensor;
    double sum = 0, squares = 0;
    float lo = INFINITY, hi = -INFINITY;
    for (float v : t.span()) {
      sum += v;
      squares += static_cast<double>(v) * v;
      lo = std::min(lo, v);
      hi = std::max(hi, v);
    }
    const double n = static_cast<double>(std::max<int64_t>(t.numel(), 1));
    const double mean = sum / n;
    const double var = std::max(0.0, squares / n - mean * mean);
    total += t.numel();
    std::printf("  %-24s %-16s %9lld %11.4g %11.4g %11.4g %11.4g %11.4g\n", entry.name.c_str(),
                t.shape().str().c_str(), static_cast<long long>(t.numel()), lo, hi, mean,
                std::sqrt(var), std::sqrt(squares));
  }
  std::printf("  total %lld values\n", static_cast<long long>(total));

  if (const auto& training = model.training(); training && !training->history.empty()) {
    std::printf("\nlast metrics (epoch %lld):\n", static_cast<long long>(training->epoch));
    for (const auto& [metric, values] : training->history) {
      if (values.empty()) continue;
      std::printf("  %-20s %.6g\n", metric.c_str(), values.back());
    }
  }
  return 0;
}

}  // namespace strata::cli
