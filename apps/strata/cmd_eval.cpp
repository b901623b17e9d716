// strata eval CKPT.h5 [--split test|val|train] [--output preds.h5] [--wrong N] [--json]
//   [--set key.path=value]...
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>

#include "cli.hpp"
#include "strata/tools/analysis.hpp"
#include "strata/checkpoint.hpp"
#include "strata/files.hpp"
#include "strata/training/data_loader.hpp"

namespace strata::cli {

namespace {

// A split scored: predictions, the confusion matrix and the confidently wrong rows.
struct EvalScores {
  struct Wrong {
    int64_t index;
    int32_t label;
    int64_t predicted;
    float confidence;
  };
  int64_t n = 0, classes = 0, correct = 0;
  double loss = NAN;
  std::vector<std::string> names;  // one per class: the dataset's, or the class numbers
  Tensor probabilities;
  std::vector<int64_t> predictions, labels;
  std::vector<int64_t> confusion;  // [true class * classes + predicted]
  std::vector<Wrong> wrong;        // most confident first
};

EvalScores score(const Tensor& logits, std::span<const int32_t> labels, double loss,
                 std::vector<std::string> names) {
  EvalScores s;
  s.n = logits.dim(0);
  s.classes = logits.numel() / std::max<int64_t>(s.n, 1);
  s.loss = loss;
  const int64_t n = s.n, classes = s.classes;
  if (static_cast<int64_t>(names.size()) != classes) {
    names.clear();
    for (int64_t c = 0; c < classes; ++c) names.push_back(std::to_string(c));
  }
  s.names = std::move(names);
  s.probabilities = Tensor(logits.shape());
  s.predictions.assign(n, 0);
  s.labels.assign(n, 0);
  s.confusion.assign(classes * classes, 0);
  for (int64_t i = 0; i < n; ++i) {
    const float* row = logits.data() + i * classes;
    float* prob = s.probabilities.data() + i * classes;
    const float top = *std::max_element(row, row + classes);
    double z = 0;
    for (int64_t c = 0; c < classes; ++c) z += std::exp(static_cast<double>(row[c]) - top);
    for (int64_t c = 0; c < classes; ++c)
      prob[c] = static_cast<float>(std::exp(static_cast<double>(row[c]) - top) / z);
    const int64_t best = std::max_element(row, row + classes) - row;
    const int32_t label = labels[i];
    s.predictions[i] = best;
    s.labels[i] = label;
    if (label >= 0 && label < classes) ++s.confusion[label * classes + best];
    if (best == label) {
      ++s.correct;
    } else {
      s.wrong.push_back({i, label, best, prob[best]});
    }
  }
  std::sort(s.wrong.begin(), s.wrong.end(), [](const EvalScores::Wrong& a, const EvalScores::Wrong& b) {
    return a.confidence != b.confidence ? a.confidence > b.confidence : a.index < b.index;
  });
  return s;
}

// The model's logits for every sample of `samples`, read and transformed in batches (memory is a
// few batches whatever the split's size); `labels` receives their labels.
Tensor model_logits(TrainedModel& model, const SampleSet& samples, std::vector<int32_t>& labels) {
  const Shape input = model.input_shape();
  Tensor logits;
  if (samples.size() == 0) return Tensor(Shape{0, 1});
  LoaderOptions options;
  options.batch_size = std::min(model.batch_size(), samples.size());
  BatchLoader loader(samples, model.evaluation_transforms(), input, options);
  loader.start_epoch(0);
  int64_t filled = 0;
  for (int64_t b = 0; b < loader.batches_per_epoch(); ++b) {
    const Batch batch = loader.next();
    const Tensor out = model.run(batch.images);
    if (b == 0) logits = Tensor(out.shape().without_batch().with_batch(samples.size()));
    std::copy_n(out.data(), out.numel(), logits.data() + filled * out.numel() / out.dim(0));
    labels.insert(labels.end(), batch.labels.begin(), batch.labels.end());
    filled += batch.size();
  }
  return logits;
}

void print_json(const EvalScores& s, const std::string& path, const std::string& split_name,
                std::size_t shown, const std::vector<int64_t>& dataset_rows,
                const std::string& output) {
  const int64_t n = s.n, classes = s.classes;
  const double accuracy = n ? static_cast<double>(s.correct) / n : NAN;
  auto number = [](double value) {
    return std::isfinite(value) ? nlohmann::json(value) : nlohmann::json(nullptr);
  };
  nlohmann::json confusion_rows = nlohmann::json::array();
  nlohmann::json per_class = nlohmann::json::array();
  for (int64_t t = 0; t < classes; ++t) {
    const std::vector<int64_t> row(s.confusion.begin() + t * classes,
                                   s.confusion.begin() + (t + 1) * classes);
    const int64_t total = std::accumulate(row.begin(), row.end(), int64_t{0});
    confusion_rows.push_back(row);
    per_class.push_back({{"class", t},
                         {"name", s.names[t]},
                         {"accuracy", number(total ? static_cast<double>(row[t]) / total : NAN)},
                         {"correct", row[t]},
                         {"total", total}});
  }
  nlohmann::json wrong_rows = nlohmann::json::array();
  for (std::size_t i = 0; i < shown; ++i) {
    const EvalScores::Wrong& w = s.wrong[i];
    wrong_rows.push_back({{"row", w.index},
                          {"index", dataset_rows[w.index]},
                          {"label", w.label},
                          {"label_name", s.names[w.label]},
                          {"predicted", w.predicted},
                          {"predicted_name", s.names[w.predicted]},
                          {"confidence", w.confidence}});
  }
  const nlohmann::json result = {
      {"checkpoint", path},
      {"split", split_name},
      {"images", n},
      {"accuracy", number(accuracy)},
      {"loss", number(s.loss)},
      {"correct", s.correct},
      {"classes", s.names},
      {"confusion", confusion_rows},
      {"per_class", per_class},
      {"wrong_count", s.wrong.size()},
      {"most_confidently_wrong", wrong_rows},
      {"output", output.empty() ? nlohmann::json(nullptr) : nlohmann::json(output)}};
  // Class names come from files: dump() escapes them, and replaces invalid UTF-8 rather than
  // throwing.
  std::puts(result.dump(2, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
}

void print_text(const EvalScores& s, const std::string& path, const std::string& split_name,
                std::size_t shown, const std::string& output) {
  const int64_t n = s.n, classes = s.classes;
  const std::vector<std::string>& names = s.names;
  std::printf("checkpoint %s, split %s: %lld images\naccuracy %.4f  loss %.4f\n", path.c_str(),
              split_name.c_str(), static_cast<long long>(n),
              n ? static_cast<double>(s.correct) / n : NAN, s.loss);

  std::size_t width = 5;
  for (const std::string& name : names) width = std::max(width, name.size());
  std::printf("\nconfusion matrix (rows: true class, columns: predicted)\n%*s",
              static_cast<int>(width), "");
  for (int64_t c = 0; c < classes; ++c) std::printf(" %6lld", static_cast<long long>(c));
  std::printf("\n");
  for (int64_t t = 0; t < classes; ++t) {
    std::printf("%*s", static_cast<int>(width), names[t].c_str());
    for (int64_t p = 0; p < classes; ++p)
      std::printf(" %6lld", static_cast<long long>(s.confusion[t * classes + p]));
    std::printf("\n");
  }
  std::printf("\nper-class accuracy\n");
  for (int64_t c = 0; c < classes; ++c) {
    const int64_t total = std::accumulate(s.confusion.begin() + c * classes,
                                          s.confusion.begin() + (c + 1) * classes, int64_t{0});
    std::printf("  %2lld %-*s %.4f  (%lld of %lld)\n", static_cast<long long>(c),
                static_cast<int>(width), names[c].c_str(),
                total ? static_cast<double>(s.confusion[c * classes + c]) / total : NAN,
                static_cast<long long>(s.confusion[c * classes + c]), static_cast<long long>(total));
  }
  std::printf("\nmost confidently wrong (%zu of %zu wrong; index = row of the %s split)\n", shown,
              s.wrong.size(), split_name.c_str());
  for (std::size_t i = 0; i < shown; ++i) {
    const EvalScores::Wrong& w = s.wrong[i];
    std::printf("  #%-6lld true %-*s predicted %-*s p=%.4f\n", static_cast<long long>(w.index),
                static_cast<int>(width), names[w.label].c_str(), static_cast<int>(width),
                names[w.predicted].c_str(), w.confidence);
  }
  if (!output.empty()) {
    std::printf(
        "\nwrote /labels, /predictions, /index, /probabilities, /logits for %lld images to %s\n",
        static_cast<long long>(n), output.c_str());
  }
}

}  // namespace

int run_eval(Session& session, const std::vector<std::string>& args) {
  po::options_description options("options");
  options.add_options()("split", po::value<std::string>()->default_value("test"),
                        "test, val (the held-out split the trainer used) or train")(
      "output", po::value<std::string>(),
      "write every prediction to this HDF5 file: /labels, /predictions, /index (int64 [N]; "
      "/index is each row's row in the dataset's file), /probabilities, /logits (float32 "
      "[N, classes])")("wrong", po::value<int>()->default_value(10),
                       "how many confidently wrong examples to list")(
      "json", po::bool_switch(), "print the results as one JSON object instead of text");
  add_set_option(options);
  const Usage usage{
      "eval", "CKPT.h5 [options]",
      "Evaluate a checkpoint on a split of its experiment's dataset, preprocessed as in\n"
      "training: accuracy and loss, the confusion matrix (rows: true class, columns:\n"
      "predicted), per-class accuracy and the most confidently wrong examples.\n"
      "--set changes the stored experiment for this evaluation: backend, threads,\n"
      "train.eval_batch_size and data.* (e.g. data.test_limit, data.dir) may change;\n"
      "the model, the fitted data.preprocess and the training settings may not."};
  auto vm = parse(usage, options, {"CKPT.h5"}, args);
  if (!vm) return 0;
  const std::string path = (*vm)["positional-words"].as<std::vector<std::string>>()[0];
  const std::string split_name = (*vm)["split"].as<std::string>();
  if (split_name != "test" && split_name != "val" && split_name != "train") {
    fail("eval: --split {}: expected test, val or train", split_name);
  }
  const int wrong_count = (*vm)["wrong"].as<int>();
  if (wrong_count < 0) fail("eval: --wrong must be 0 or positive");

  // The output never replaces an input (the checkpoint, the dataset's files, a plugin) nor a
  // device, FIFO, folder or link; checked before the work and again before the write.
  remove_temporary_files_on_signal();
  std::vector<CommandInput> inputs = {{"the checkpoint", path}};
  const auto check_output = [&] {
    if (vm->count("output"))
      check_output_file("--output", (*vm)["output"].as<std::string>(), inputs);
  };
  check_output();
  const bool json = (*vm)["json"].as<bool>();
  TrainedModelOptions model_options;
  model_options.set = set_options(*vm);
  TrainedModel model(path, session.registries, session.loader, model_options);
  for (const auto& data : model.dataset_paths()) inputs.push_back({"the dataset's", data});
  for (const PluginRef& plugin : session.loader.plugins())
    inputs.push_back({"the plugin", plugin->path});
  check_output();
  const SampleSet samples = model.samples(split_name);
  const std::vector<int64_t>& dataset_rows = samples.rows;
  std::vector<int32_t> labels;
  const Tensor logits = model_logits(model, samples, labels);
  const double loss =
      logits.dim(0) > 0 ? model.loss().forward_backward(logits, labels, nullptr) : NAN;
  const EvalScores scores = score(logits, labels, loss, model.class_names());
  const std::size_t shown =
      std::min<std::size_t>(scores.wrong.size(), static_cast<std::size_t>(wrong_count));
  std::string output;
  if (vm->count("output")) {
    output = (*vm)["output"].as<std::string>();
    const std::vector<NamedTensor> tensors = {{"probabilities", scores.probabilities},
                                              {"logits", logits}};
    const std::vector<NamedIntegers> integers = {
        {"labels", scores.labels}, {"predictions", scores.predictions}, {"index", dataset_rows}};
    const std::map<std::string, std::string> attributes = {
        {"checkpoint", path},
        {"split", split_name},
        {"index_of", split_name == "test" ? "test" : "train"}};
    check_output();
    write_hdf5_tensors(output, tensors, integers, attributes);
  }

  if (json) {
    print_json(scores, path, split_name, shown, dataset_rows, output);
  } else {
    print_text(scores, path, split_name, shown, output);
  }
  return 0;
}

}  // namespace strata::cli
