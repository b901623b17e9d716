#include "strata/trainer.hpp"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <numeric>
#include <sstream>

#include "strata/backend.hpp"
#include "strata/checkpoint.hpp"
#include "strata/dataset.hpp"
#include "strata/graph.hpp"
#include "strata/layer.hpp"
#include "strata/optimizer.hpp"
#include "strata/analysis.hpp"

namespace strata {

namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

struct Data {
  Split train, val, test;
  std::vector<std::shared_ptr<Transform>> transforms;
};

int64_t count_correct(const Tensor& logits, std::span<const int32_t> labels) {
  const int64_t n = logits.dim(0);
  const int64_t classes = logits.numel() / std::max<int64_t>(n, 1);
  int64_t correct = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float* row = logits.data() + i * classes;
    const int64_t best = std::max_element(row, row + classes) - row;
    correct += best == labels[i];
  }
  return correct;
}

struct Evaluation {
  double loss = std::numeric_limits<double>::quiet_NaN();
  double accuracy = std::numeric_limits<double>::quiet_NaN();
};

Evaluation evaluate(Graph& graph, Loss& loss, Context& context, const Split& split, int64_t batch) {
  const int64_t n = static_cast<int64_t>(split.labels.size());
  if (n == 0) return {};
  context.training = false;
  double total_loss = 0;
  int64_t correct = 0;
  for (int64_t begin = 0; begin < n; begin += batch) {
    const int64_t end = std::min(n, begin + batch);
    const Tensor& logits = graph.forward(context, split.images.batch_slice(begin, end));
    std::span<const int32_t> labels(split.labels.data() + begin, end - begin);
    total_loss += static_cast<double>(loss.forward_backward(logits, labels, nullptr)) * (end - begin);
    correct += count_correct(logits, labels);
  }
  return {total_loss / n, static_cast<double>(correct) / n};
}

// A progress bar redrawn in place on a terminal, or plain lines (at most one every 10 s).
class Progress {
 public:
  Progress(const std::string& mode, int64_t epochs, int64_t steps)
      : epochs_(epochs), steps_(steps) {
    const bool tty = ::isatty(::fileno(stdout)) != 0;
    bar_ = mode == "bar" || (mode == "auto" && tty);
    quiet_ = mode == "none";
  }

  void step(int64_t epoch, int64_t step, double loss, double accuracy, double images_per_second) {
    if (quiet_) return;
    const auto now = Clock::now();
    const double since = std::chrono::duration<double>(now - last_).count();
    if (bar_) {
      if (since < 0.1 && step != steps_) return;
      constexpr int kWidth = 24;
      const int filled = static_cast<int>(kWidth * step / std::max<int64_t>(steps_, 1));
      std::printf("\r\033[Kepoch %lld/%lld [%s%s] %lld/%lld  loss %.4f  acc %.4f  %.0f img/s",
                  static_cast<long long>(epoch), static_cast<long long>(epochs_),
                  std::string(filled, '=').c_str(), std::string(kWidth - filled, ' ').c_str(),
                  static_cast<long long>(step), static_cast<long long>(steps_), loss, accuracy,
                  images_per_second);
      std::fflush(stdout);
    } else {
      if (since < 10.0) return;
      std::printf("epoch %lld/%lld  step %lld/%lld  loss %.4f  acc %.4f  %.0f img/s\n",
                  static_cast<long long>(epoch), static_cast<long long>(epochs_),
                  static_cast<long long>(step), static_cast<long long>(steps_), loss, accuracy,
                  images_per_second);
      std::fflush(stdout);
    }
    last_ = now;
  }

  void epoch_done(const EpochReport& r) {
    if (quiet_) return;
    if (bar_) std::printf("\r\033[K");
    std::string val = std::isnan(r.val_loss)
                          ? std::string()
                          : fmt::format("  val loss {:.4f} acc {:.4f}", r.val_loss, r.val_accuracy);
    std::printf("epoch %lld/%lld  train loss %.4f acc %.4f%s  lr %.4g  %.1fs  %.0f img/s\n",
                static_cast<long long>(r.epoch), static_cast<long long>(r.epochs), r.train_loss,
                r.train_accuracy, val.c_str(), r.lr, r.seconds, r.images_per_second);
    std::fflush(stdout);
    last_ = Clock::now();
  }

 private:
  int64_t epochs_, steps_;
  bool bar_ = false, quiet_ = false;
  Clock::time_point last_ = Clock::now();
};

void write_file_atomically(const fs::path& path, const std::string& text) {
  const fs::path temporary = path.string() + fmt::format(".tmp-{}", ::getpid());
  {
    std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
    out << text;
    out.flush();
    if (!out) {
      std::error_code ec;
      fs::remove(temporary, ec);
      fail("{}: cannot write", path.string());
    }
  }
  std::error_code ec;
  fs::rename(temporary, path, ec);
  if (ec) {
    fs::remove(temporary, ec);
    fail("{}: cannot replace: {}", path.string(), ec.message());
  }
}

std::string json_number(double value) {
  if (!std::isfinite(value)) return "null";
  return fmt::format("{}", value);
}

std::string json_list(const std::vector<double>& values) {
  std::vector<std::string> items;
  for (double v : values) items.push_back(json_number(v));
  return fmt::format("[{}]", fmt::join(items, ", "));
}

}  // namespace

TrainSummary train_experiment(const Config& experiment, const Registries& registries,
                              const TrainOptions& options,
                              const std::function<void(const EpochReport&)>& on_epoch) {
  // ---- Read the whole experiment before doing any work. ----
  const auto seed = static_cast<uint32_t>(experiment.get<int64_t>("seed", 1));
  const std::string backend_name = experiment.get<std::string>("backend", "tbb");
  const int threads = experiment.get<int>("threads", 0);
  if (threads < 0) experiment.fail_key("threads", "must be 0 (all cores) or positive");
  std::optional<Config> backend_key = experiment.find("backend");
  auto backend = registries.backends.create(backend_name, backend_key ? *backend_key : Config{});
  backend->set_threads(threads);

  const Config train_cfg = experiment.at("train");
  const int64_t epochs = train_cfg.get<int64_t>("epochs");
  const int64_t batch_size = train_cfg.get<int64_t>("batch_size");
  const int64_t eval_batch = train_cfg.get<int64_t>("eval_batch_size", 500);
  const bool shuffle = train_cfg.get<bool>("shuffle", true);
  if (epochs < 1) train_cfg.fail_key("epochs", "must be at least 1");
  if (batch_size < 1) train_cfg.fail_key("batch_size", "must be at least 1");
  if (eval_batch < 1) train_cfg.fail_key("eval_batch_size", "must be at least 1");

  const Config data_cfg = experiment.at("data");
  const int64_t validation = data_cfg.get<int64_t>("validation", 0);
  const int64_t train_limit = data_cfg.get<int64_t>("train_limit", 0);
  const int64_t test_limit = data_cfg.get<int64_t>("test_limit", 0);
  std::vector<std::shared_ptr<Transform>> transforms;
  if (auto preprocess = data_cfg.find("preprocess")) {
    for (const Config& item : preprocess->items()) transforms.push_back(registries.transforms.create(item));
  }
  auto dataset = registries.datasets.create(data_cfg);

  Rng rng(seed);
  Graph graph(experiment.at("model"), registries, backend_name, rng);
  std::optional<Config> loss_cfg = experiment.find("loss");
  auto loss = loss_cfg ? registries.losses.create(*loss_cfg)
                       : registries.losses.create("softmax_cross_entropy", Config{});
  const Config optimizer_cfg = experiment.at("optimizer");
  // The schedule is nested in the optimizer's section but is not the optimizer's to read: build
  // it first, so the optimizer's unknown-key check finds its keys already read.
  std::optional<Config> schedule_cfg = optimizer_cfg.find("schedule");
  auto schedule = schedule_cfg ? registries.schedules.create(*schedule_cfg)
                               : registries.schedules.create("constant", Config{});
  auto optimizer = registries.optimizers.create(optimizer_cfg);
  std::vector<ParamRef> params = graph.params();
  optimizer->setup(params);

  int64_t checkpoint_every = 1;
  if (auto checkpoint_cfg = experiment.find("checkpoint")) {
    checkpoint_every = checkpoint_cfg->get<int64_t>("every", 1);
    if (checkpoint_every < 0) checkpoint_cfg->fail_key("every", "must be 0 (only at the end) or positive");
  }
  // `plugins` is handled by the command line tool before the registries are used.
  if (auto plugins = experiment.find("plugins")) plugins->mark_used();
  experiment.check_unused();
  const std::vector<PluginRecord> plugin_records = plugins_needed(
      registries, graph, backend_name, data_cfg.get<std::string>("type"),
      loss_cfg ? loss_cfg->get<std::string>("type") : "softmax_cross_entropy", transforms);

  // ---- Data: load, hold out validation, fit preprocessing on the training part only. ----
  const Shape sample = graph.input_shape();
  if (dataset->sample_shape() != sample) {
    experiment.at("model").fail_key(
        "input", fmt::format("the model input is {} but the dataset's images are {}", sample.str(),
                             dataset->sample_shape().str()));
  }
  const auto data_start = Clock::now();
  Data data;
  data.train = first_rows(dataset->load("train"), train_limit);
  data.test = first_rows(dataset->load("test"), test_limit);
  const int64_t available = static_cast<int64_t>(data.train.labels.size());
  if (validation < 0 || validation >= available) {
    data_cfg.fail_key("validation", fmt::format("must be between 0 and {} (the training images), found {}",
                                                available - 1, validation));
  }
  if (validation > 0) {
    TrainValSplit parts = split_validation(data.train, validation, seed);
    data.train = std::move(parts.train);
    data.val = std::move(parts.val);
  }

  const fs::path out_dir = options.out_dir;
  const fs::path checkpoint_path = out_dir / "model.h5";
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) fail("{}: cannot create the output folder: {}", out_dir.string(), ec.message());
  const bool resuming = options.resume && fs::exists(checkpoint_path);

  for (auto& transform : transforms) transform->setup(sample);
  std::vector<NamedTensor> preprocess_state;
  for (std::size_t i = 0; i < transforms.size(); ++i) {
    for (NamedTensor& t : transforms[i]->state()) {
      preprocess_state.push_back({fmt::format("{}.{}/{}", i, transforms[i]->type(), t.name), t.tensor});
    }
  }
  if (resuming) {
    load_checkpoint_tensors(checkpoint_path, "preprocess", preprocess_state);
  } else {
    for (auto& transform : transforms) {
      transform->fit(data.train.images);
      transform->apply(data.train.images);
    }
  }
  if (resuming) {
    for (auto& transform : transforms) transform->apply(data.train.images);
  }
  for (auto& transform : transforms) {
    if (!data.val.labels.empty()) transform->apply(data.val.images);
    transform->apply(data.test.images);
  }
  const double data_seconds = seconds_since(data_start);

  // ---- Resume, or start fresh. ----
  TrainingState state;
  if (resuming) {
    std::vector<NamedTensor> model_state = graph.state_tensors();
    load_checkpoint_tensors(checkpoint_path, "model", model_state);
    std::vector<NamedTensor> optimizer_state = optimizer->state();
    load_checkpoint_tensors(checkpoint_path, "optimizer", optimizer_state);
    auto saved = load_checkpoint_training_state(checkpoint_path);
    if (!saved) fail("checkpoint {}: has no training state to resume from", checkpoint_path.string());
    state = *saved;
    std::istringstream rng_text(state.rng_state);
    rng_text >> rng;
    if (!rng_text) fail("checkpoint {}: the stored random generator state is corrupt", checkpoint_path.string());
    std::printf("resuming %s after epoch %lld (iteration %lld)\n", checkpoint_path.c_str(),
                static_cast<long long>(state.epoch), static_cast<long long>(state.iteration));
  }

  const std::string experiment_yaml = experiment.dump();
  auto save = [&] {
    Checkpoint checkpoint;
    checkpoint.model = graph.state_tensors();
    checkpoint.optimizer = optimizer->state();
    checkpoint.preprocess = preprocess_state;
    checkpoint.experiment_yaml = experiment_yaml;
    checkpoint.plugins = plugin_records;
    std::ostringstream rng_text;
    rng_text << rng;
    state.rng_state = rng_text.str();
    checkpoint.training = state;
    save_checkpoint(checkpoint_path, checkpoint);
  };

  const int64_t train_n = static_cast<int64_t>(data.train.labels.size());
  const int64_t steps = (train_n + batch_size - 1) / batch_size;
  std::printf("model: %zu layers, %lld parameters; data: %lld train, %lld validation, %lld test "
              "images (loaded in %.1fs); backend %s, %d thread(s)\n",
              graph.size(), static_cast<long long>(graph.num_parameters()),
              static_cast<long long>(train_n), static_cast<long long>(data.val.labels.size()),
              static_cast<long long>(data.test.labels.size()), data_seconds, backend_name.c_str(),
              backend->threads());

  Context context{true, &rng, backend.get()};
  Progress progress(options.progress, epochs, steps);
  Tensor batch_images(sample.with_batch(batch_size));
  std::vector<int32_t> batch_labels(batch_size);
  Tensor dlogits(graph.output_shape().with_batch(batch_size));
  std::vector<int64_t> order(train_n);
  const int64_t row_size = sample.numel();

  for (int64_t epoch = state.epoch; epoch < epochs; ++epoch) {
    std::iota(order.begin(), order.end(), 0);
    if (shuffle) std::shuffle(order.begin(), order.end(), rng);
    const float lr = schedule->lr(optimizer->base_lr(), epoch, state.iteration, steps);
    const auto epoch_start = Clock::now();
    double loss_sum = 0;
    int64_t correct = 0, seen = 0;
    for (int64_t step = 0; step < steps; ++step) {
      const int64_t begin = step * batch_size;
      const int64_t n = std::min(batch_size, train_n - begin);
      for (int64_t i = 0; i < n; ++i) {
        std::memcpy(batch_images.data() + i * row_size, data.train.images.data() + order[begin + i] * row_size,
                    row_size * sizeof(float));
        batch_labels[i] = data.train.labels[order[begin + i]];
      }
      const Tensor x = n == batch_size ? batch_images : batch_images.batch_slice(0, n);
      Tensor dl = n == batch_size ? dlogits : dlogits.batch_slice(0, n);
      std::span<const int32_t> labels(batch_labels.data(), n);

      context.training = true;
      const Tensor& logits = graph.forward(context, x);
      const float batch_loss = loss->forward_backward(logits, labels, &dl);
      if (!std::isfinite(batch_loss)) {
        fail("training diverged: the loss is {} at epoch {}, iteration {} (step {} of {} in the "
             "epoch, learning rate {}); lower optimizer.lr or check the data. The last good "
             "checkpoint, if any, is {}",
             batch_loss, epoch + 1, state.iteration + 1, step + 1, steps, lr, checkpoint_path.string());
      }
      correct += count_correct(logits, labels);
      graph.backward(context, dl);
      optimizer->step(schedule->lr(optimizer->base_lr(), epoch, state.iteration, steps));
      ++state.iteration;
      loss_sum += static_cast<double>(batch_loss) * n;
      seen += n;
      progress.step(epoch + 1, step + 1, loss_sum / seen, static_cast<double>(correct) / seen,
                    seen / seconds_since(epoch_start));
    }
    EpochReport report;
    report.epoch = epoch + 1;
    report.epochs = epochs;
    report.seconds = seconds_since(epoch_start);
    report.images_per_second = seen / report.seconds;
    report.train_loss = loss_sum / seen;
    report.train_accuracy = static_cast<double>(correct) / seen;
    report.lr = lr;
    const Evaluation val = evaluate(graph, *loss, context, data.val, eval_batch);
    report.val_loss = val.loss;
    report.val_accuracy = val.accuracy;

    state.epoch = epoch + 1;
    state.history["train_loss"].push_back(report.train_loss);
    state.history["train_accuracy"].push_back(report.train_accuracy);
    state.history["val_loss"].push_back(report.val_loss);
    state.history["val_accuracy"].push_back(report.val_accuracy);
    state.history["lr"].push_back(report.lr);
    state.history["epoch_seconds"].push_back(report.seconds);
    state.history["images_per_second"].push_back(report.images_per_second);
    if ((checkpoint_every > 0 && state.epoch % checkpoint_every == 0) || state.epoch == epochs) save();
    progress.epoch_done(report);
    if (on_epoch) on_epoch(report);
  }
  if (state.epoch == 0 || !fs::exists(checkpoint_path)) save();

  // ---- Test once, at the end. ----
  const Evaluation test = evaluate(graph, *loss, context, data.test, eval_batch);
  TrainSummary summary;
  summary.test_accuracy = test.accuracy;
  summary.test_loss = test.loss;
  summary.epochs = state.epoch;
  const auto& seconds = state.history["epoch_seconds"];
  const auto& rates = state.history["images_per_second"];
  double images = 0;
  for (std::size_t i = 0; i < seconds.size(); ++i) images += seconds[i] * rates[i];
  summary.train_seconds = std::accumulate(seconds.begin(), seconds.end(), 0.0);
  summary.train_images_per_second = summary.train_seconds > 0 ? images / summary.train_seconds : 0;
  summary.checkpoint = checkpoint_path;
  summary.summary = out_dir / "summary.json";

  std::vector<std::string> history;
  for (const auto& [metric, values] : state.history) {
    history.push_back(fmt::format("    \"{}\": {}", metric, json_list(values)));
  }
  const std::string json = fmt::format(
      "{{\n  \"test_accuracy\": {},\n  \"test_loss\": {},\n  \"epochs\": {},\n"
      "  \"train_seconds\": {},\n  \"train_images_per_second\": {},\n  \"parameters\": {},\n"
      "  \"train_images\": {},\n  \"validation_images\": {},\n  \"test_images\": {},\n"
      "  \"backend\": \"{}\",\n  \"threads\": {},\n  \"batch_size\": {},\n  \"checkpoint\": \"{}\",\n"
      "  \"history\": {{\n{}\n  }}\n}}\n",
      json_number(summary.test_accuracy), json_number(summary.test_loss), summary.epochs,
      json_number(summary.train_seconds), json_number(summary.train_images_per_second),
      graph.num_parameters(), train_n, data.val.labels.size(), data.test.labels.size(), backend_name,
      backend->threads(), batch_size, checkpoint_path.string(), fmt::join(history, ",\n"));
  write_file_atomically(summary.summary, json);
  return summary;
}

}  // namespace strata
