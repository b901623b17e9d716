// strata inspect CKPT.h5 [--json] [--set key.path=value]...: what a checkpoint holds, read from the
// checkpoint alone (and the summary.json the trainer wrote beside it, for the test accuracy).
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "cli.hpp"
#include "strata/tools/analysis.hpp"

namespace strata::cli {

namespace {

namespace fs = std::filesystem;

struct TensorStats {
  std::string name, shape;
  int64_t count = 0;
  double min = 0, max = 0, mean = 0, std = 0, norm = 0;
};

TensorStats stats_of(const NamedTensor& entry) {
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
  return {entry.name, t.shape().str(), t.numel(), lo, hi, mean, std::sqrt(var), std::sqrt(squares)};
}

// What a user looks for first: how the run ended.
struct FinalMetrics {
  int64_t epochs = 0, iteration = 0;
  std::optional<double> test_accuracy, test_loss;  // from summary.json, when it is this run's
  std::optional<double> best_val_accuracy;
  int64_t best_val_epoch = 0;
  std::optional<double> train_loss, train_accuracy, val_loss, val_accuracy;
};

std::optional<double> last_of(const TrainingState& training, const std::string& metric) {
  auto it = training.history.find(metric);
  if (it == training.history.end() || it->second.empty() || !std::isfinite(it->second.back())) {
    return std::nullopt;
  }
  return it->second.back();
}

// The checkpoint does not hold the test accuracy (the trainer tests after the last save); the
// summary.json beside it does, when it was written by the same run at the same epoch.
void read_summary(const fs::path& checkpoint, FinalMetrics& metrics) {
  const fs::path summary = checkpoint.parent_path() / "summary.json";
  std::ifstream in(summary);
  if (!in) return;
  const nlohmann::json json = nlohmann::json::parse(in, nullptr, false);
  if (json.is_discarded() || !json.is_object()) return;
  const auto number = [&](const char* key) -> std::optional<double> {
    if (!json.contains(key) || !json[key].is_number()) return std::nullopt;
    return json[key].get<double>();
  };
  const bool same_run =
      json.contains("checkpoint") && json["checkpoint"].is_string() &&
      fs::path(json["checkpoint"].get<std::string>()).filename() == checkpoint.filename() &&
      number("epochs") == std::optional<double>(static_cast<double>(metrics.epochs));
  if (!same_run) return;
  metrics.test_accuracy = number("test_accuracy");
  metrics.test_loss = number("test_loss");
}

FinalMetrics final_metrics(const TrainedModel& model) {
  FinalMetrics metrics;
  const auto& training = model.training();
  if (!training) return metrics;
  metrics.epochs = training->epoch;
  metrics.iteration = training->iteration;
  metrics.train_loss = last_of(*training, "train_loss");
  metrics.train_accuracy = last_of(*training, "train_accuracy");
  metrics.val_loss = last_of(*training, "val_loss");
  metrics.val_accuracy = last_of(*training, "val_accuracy");
  if (auto it = training->history.find("val_accuracy"); it != training->history.end()) {
    for (std::size_t i = 0; i < it->second.size(); ++i) {
      const double value = it->second[i];
      if (std::isfinite(value) &&
          (!metrics.best_val_accuracy || value > *metrics.best_val_accuracy)) {
        metrics.best_val_accuracy = value;
        metrics.best_val_epoch = static_cast<int64_t>(i) + 1;
      }
    }
  }
  read_summary(model.path(), metrics);
  return metrics;
}

nlohmann::json number_or_null(std::optional<double> value) {
  return value && std::isfinite(*value) ? nlohmann::json(*value) : nlohmann::json(nullptr);
}

}  // namespace

int run_inspect(Session& session, const std::vector<std::string>& args) {
  po::options_description options("options");
  options.add_options()("json", po::bool_switch(),
                        "print everything as one JSON object instead of text");
  add_set_option(options);
  const Usage usage{
      "inspect", "CKPT.h5 [options]",
      "Print how the run ended first (epochs, test accuracy from the summary.json beside\n"
      "the checkpoint, best validation accuracy, final losses), then the experiment stored\n"
      "in the checkpoint, the plugins it needs, every parameter and buffer with its shape,\n"
      "element count, min, max, mean, std and L2 norm, and the last value of every recorded\n"
      "metric and diagnostic. --set changes the stored experiment as for strata eval\n"
      "(backend, threads, train.eval_batch_size, data.*)."};
  auto vm = parse(usage, options, {"CKPT.h5"}, args);
  if (!vm) return 0;
  const std::string path = (*vm)["positional-words"].as<std::vector<std::string>>()[0];
  TrainedModelOptions model_options;
  model_options.set = set_options(*vm);
  TrainedModel model(path, session.registries, session.loader, model_options);
  // With --set, the experiment as changed; otherwise exactly what the checkpoint stores.
  const std::string yaml =
      model_options.set.empty() ? model.experiment_yaml() : model.experiment().dump();
  const FinalMetrics metrics = final_metrics(model);
  std::vector<TensorStats> stats;
  int64_t total = 0;
  for (const NamedTensor& entry : model.parameters()) {
    stats.push_back(stats_of(entry));
    total += stats.back().count;
  }

  if ((*vm)["json"].as<bool>()) {
    nlohmann::json result;
    result["checkpoint"] = path;
    nlohmann::json final = {
        {"epochs", metrics.epochs},
        {"iteration", metrics.iteration},
        {"test_accuracy", number_or_null(metrics.test_accuracy)},
        {"test_loss", number_or_null(metrics.test_loss)},
        {"best_val_accuracy", number_or_null(metrics.best_val_accuracy)},
        {"best_val_epoch", metrics.best_val_accuracy ? nlohmann::json(metrics.best_val_epoch)
                                                     : nlohmann::json(nullptr)},
        {"train_loss", number_or_null(metrics.train_loss)},
        {"train_accuracy", number_or_null(metrics.train_accuracy)},
        {"val_loss", number_or_null(metrics.val_loss)},
        {"val_accuracy", number_or_null(metrics.val_accuracy)}};
    result["final"] = final;
    result["training_state"] = model.training().has_value();
    result["experiment"] = yaml;
    nlohmann::json plugins = nlohmann::json::array();
    for (const PluginRecord& plugin : model.plugins()) {
      plugins.push_back(
          {{"name", plugin.name}, {"version", plugin.version}, {"path", plugin.path}});
    }
    result["plugins"] = plugins;
    nlohmann::json parameters = nlohmann::json::array();
    for (const TensorStats& s : stats) {
      parameters.push_back({{"name", s.name},
                            {"shape", s.shape},
                            {"count", s.count},
                            {"min", number_or_null(s.min)},
                            {"max", number_or_null(s.max)},
                            {"mean", number_or_null(s.mean)},
                            {"std", number_or_null(s.std)},
                            {"norm", number_or_null(s.norm)}});
    }
    result["parameters"] = parameters;
    result["total_values"] = total;
    nlohmann::json last = nlohmann::json::object();
    if (const auto& training = model.training()) {
      for (const auto& [metric, values] : training->history) {
        if (!values.empty()) last[metric] = number_or_null(values.back());
      }
    }
    result["last_metrics"] = last;
    // Names and paths come from files: invalid UTF-8 is replaced rather than thrown on.
    std::puts(result.dump(2, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    return 0;
  }

  std::printf("checkpoint %s\n\n", path.c_str());
  if (model.training()) {
    auto value = [](std::optional<double> v) {
      return v ? fmt::format("{:.4f}", *v) : std::string("-");
    };
    std::printf("after %lld epoch%s (%lld iteration%s):\n", static_cast<long long>(metrics.epochs),
                metrics.epochs == 1 ? "" : "s", static_cast<long long>(metrics.iteration),
                metrics.iteration == 1 ? "" : "s");
    if (metrics.test_accuracy) {
      std::printf("  test accuracy      %s (loss %s; from summary.json)\n",
                  value(metrics.test_accuracy).c_str(), value(metrics.test_loss).c_str());
    } else {
      std::printf("  test accuracy      not recorded here (strata eval %s measures it)\n",
                  path.c_str());
    }
    if (metrics.best_val_accuracy) {
      std::printf("  best val accuracy  %.4f (epoch %lld)\n", *metrics.best_val_accuracy,
                  static_cast<long long>(metrics.best_val_epoch));
    }
    std::printf("  final val          accuracy %s  loss %s\n", value(metrics.val_accuracy).c_str(),
                value(metrics.val_loss).c_str());
    std::printf("  final train        accuracy %s  loss %s\n",
                value(metrics.train_accuracy).c_str(), value(metrics.train_loss).c_str());
  } else {
    std::printf("training: no training state (not saved by the trainer)\n");
  }

  std::printf("\nexperiment:\n");
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

  std::printf("\nparameters and buffers:\n  %-24s %-16s %9s %11s %11s %11s %11s %11s\n", "name",
              "shape", "count", "min", "max", "mean", "std", "norm");
  for (const TensorStats& s : stats) {
    std::printf("  %-24s %-16s %9lld %11.4g %11.4g %11.4g %11.4g %11.4g\n", s.name.c_str(),
                s.shape.c_str(), static_cast<long long>(s.count), s.min, s.max, s.mean, s.std,
                s.norm);
  }
  std::printf("  total %lld values\n", static_cast<long long>(total));

  if (const auto& training = model.training(); training && !training->history.empty()) {
    std::printf("\nlast value of every metric and diagnostic (epoch %lld):\n",
                static_cast<long long>(training->epoch));
    for (const auto& [metric, values] : training->history) {
      if (values.empty()) continue;
      std::printf("  %-20s %.6g\n", metric.c_str(), values.back());
    }
  }
  return 0;
}

}  // namespace strata::cli
