#include "strata/training/trainer.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <numeric>
#include <optional>
#include <sstream>
#include <utility>

#include "strata/backend.hpp"
#include "strata/checkpoint.hpp"
#include "strata/training/data_loader.hpp"
#include "strata/dataset.hpp"
#include "strata/training/diagnostics.hpp"
#include "strata/file_check.hpp"
#include "strata/files.hpp"
#include "strata/training/gradient_clipping.hpp"
#include "strata/graph.hpp"
#include "strata/layer.hpp"
#include "strata/optimizer.hpp"
#include "strata/training/checks.hpp"
#include "strata/training/experiment.hpp"
#include "strata/plugin_records.hpp"

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

  // A line of its own (a warning, a sanity check), also in bar mode.
  void note(const std::string& text) {
    if (quiet_) return;
    if (bar_) std::printf("\r\033[K");
    std::printf("%s\n", text.c_str());
    std::fflush(stdout);
  }

  void epoch_done(const EpochReport& r) {
    if (quiet_) return;
    if (bar_) std::printf("\r\033[K");
    std::string val = std::isnan(r.val_loss)
                          ? std::string()
                          : fmt::format("  val loss {:.4f} acc {:.4f}", r.val_loss, r.val_accuracy);
    const std::string reg = r.train_regularization > 0
                                ? fmt::format(" (+{:.4f} reg)", r.train_regularization)
                                : std::string();
    std::printf("epoch %lld/%lld  train loss %.4f%s acc %.4f%s  lr %.4g  %.1fs  %.0f img/s\n",
                static_cast<long long>(r.epoch), static_cast<long long>(r.epochs), r.train_loss,
                reg.c_str(), r.train_accuracy, val.c_str(), r.lr, r.seconds, r.images_per_second);
    std::fflush(stdout);
    last_ = Clock::now();
  }

 private:
  int64_t epochs_, steps_;
  bool bar_ = false, quiet_ = false;
  Clock::time_point last_ = Clock::now();
};

// Writes through POSIX calls so that a failure keeps its errno text ("No space left on device").
void write_file_atomically(const fs::path& path, const std::string& text) {
  const fs::path temporary = path.string() + fmt::format(".tmp-{}", ::getpid());
  const int fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail("{}: cannot write: {}", path.string(), std::strerror(errno));
  std::size_t written = 0;
  int error = 0;
  while (written < text.size()) {
    const ssize_t n = ::write(fd, text.data() + written, text.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      error = n < 0 ? errno : EIO;
      break;
    }
    written += static_cast<std::size_t>(n);
  }
  if (error == 0 && ::fsync(fd) != 0) error = errno;
  if (::close(fd) != 0 && error == 0) error = errno;
  if (error != 0) {
    ::unlink(temporary.c_str());
    fail("{}: cannot write: {}", path.string(), std::strerror(error));
  }
  if (::rename(temporary.c_str(), path.c_str()) != 0) {
    const int rename_error = errno;  // before unlink() can change it
    ::unlink(temporary.c_str());
    fail("{}: cannot replace: {}", path.string(), std::strerror(rename_error));
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

// The files a run writes in its output folder (each atomically, through "<name>.tmp-<pid>"); any
// of them there means the folder holds a run.
const std::vector<std::string> kRunFiles = {"model.h5", "best.h5", "summary.json"};

std::vector<fs::path> run_files_in(const fs::path& out_dir) {
  std::vector<fs::path> found;
  for (const std::string& name : kRunFiles) {
    std::error_code ec;
    if (fs::exists(fs::symlink_status(out_dir / name, ec))) found.push_back(out_dir / name);
  }
  return found;
}

// The per-epoch metrics the trainer records in /history (a resume checks each is whole).
// The per-epoch history series; a resume checks that each holds one value per completed epoch.
const std::string kHistorySeries[] = {"train_loss", "train_regularization", "train_accuracy",
                                      "val_loss",   "val_accuracy",         "lr",
                                      "epoch_seconds", "images_per_second"};

// Before any data is loaded: a resume needs a checkpoint, written by this same experiment.
void check_resumable(const fs::path& checkpoint, const std::string& experiment_yaml, bool force) {
  // Only a path with nothing at all there is "nothing to resume"; a folder, FIFO or link loop is
  // named as what it is by the checkpoint reader.
  if (regular_file_problem(checkpoint) == "does not exist") {
    fail("--resume: {} does not exist, so there is nothing to resume (run without --resume to "
         "start a new run)",
         checkpoint.string());
  }
  const std::string saved = load_checkpoint_experiment(checkpoint);
  std::vector<std::string> refused;
  for (std::string& difference : experiment_differences(saved, experiment_yaml)) {
    const std::string key = difference.substr(0, difference.find(": "));
    if (!resume_may_change(key)) refused.push_back(std::move(difference));
  }
  if (refused.empty()) return;
  if (force) {
    std::printf("--force: resuming although the experiment differs from the checkpoint's:\n  %s\n",
                fmt::format("{}", fmt::join(refused, "\n  ")).c_str());
    return;
  }
  fail("--resume: the experiment differs from the one that wrote {} (its /experiment):\n  {}\n"
       "Resume may change only train.epochs, threads, backend, checkpoint.every, "
       "train.eval_batch_size, data.test_limit, plugins, train.log_every, "
       "train.diagnostics_every, train.explode_factor and train.early_stopping.patience. Use "
       "another --out for a new run, or "
       "--force to resume anyway",
       checkpoint.string(), fmt::join(refused, "\n  "));
}

}  // namespace

namespace {

// `--weights CKPT`: the model starts from another checkpoint's /model tensors. Strict by default
// (every tensor present with the model's shape, no extra ones: load_checkpoint_tensors names the
// offender and both shapes); with weights_partial, what matches by name and shape is loaded and
// the rest is listed (the usual new head on a pretrained body).
void load_finetuning_weights(Graph& graph, const TrainOptions& options, const fs::path& own_checkpoint) {
  std::error_code ec;
  if (fs::equivalent(options.weights, own_checkpoint, ec)) {
    fail("--weights {} is this run's own checkpoint: to continue it, use --resume", options.weights.string());
  }
  std::vector<NamedTensor> state = graph.state_tensors();
  if (!options.weights_partial) {
    // A checkpoint of a different model (a new head, a renamed layer): the strict load names the
    // first difference, and the partial load is probably what was meant.
    const std::map<std::string, Shape> stored = checkpoint_tensor_shapes(options.weights, "model");
    std::map<std::string, Shape> wanted;
    for (const NamedTensor& entry : state) wanted.emplace(entry.name, entry.tensor.shape());
    try {
      load_checkpoint_tensors(options.weights, "model", state, false, options.allow_nonfinite);
    } catch (const Error& error) {
      if (stored == wanted) throw;
      fail(
          "{}\n  --weights loads every tensor of the model, matched by name and shape; to load "
          "the ones that match and initialize the rest as usual (e.g. a new head), add "
          "--weights-partial",
          error.what());
    }
    if (!options.quiet) {
      std::printf("fine-tuning from %s: loaded all %zu tensors\n", options.weights.c_str(), state.size());
    }
    return;
  }
  std::map<std::string, Shape> stored = checkpoint_tensor_shapes(options.weights, "model");
  std::vector<NamedTensor> matching;
  std::vector<std::string> skipped;
  for (NamedTensor& entry : state) {
    auto it = stored.find(entry.name);
    if (it == stored.end()) {
      skipped.push_back(fmt::format("{} (not in the checkpoint)", entry.name));
    } else if (it->second != entry.tensor.shape()) {
      skipped.push_back(fmt::format("{} (checkpoint {}, model {})", entry.name, it->second.str(),
                                    entry.tensor.shape().str()));
      stored.erase(it);
    } else {
      matching.push_back(entry);
      stored.erase(it);
    }
  }
  if (matching.empty()) {
    fail("--weights-partial {}: no tensor of the model is in the checkpoint with the same name and "
         "shape; skipped: {}",
         options.weights.string(), fmt::join(skipped, ", "));
  }
  load_checkpoint_tensors(options.weights, "model", matching, true, options.allow_nonfinite);
  if (options.quiet) return;
  std::printf("fine-tuning from %s: loaded %zu of %zu tensors\n", options.weights.c_str(),
              matching.size(), state.size());
  if (!skipped.empty()) std::printf("  skipped (initialized as usual): %s\n", fmt::format("{}", fmt::join(skipped, ", ")).c_str());
  if (!stored.empty()) {
    std::vector<std::string> unused;
    for (const auto& [name, shape] : stored) unused.push_back(name);
    std::printf("  in the checkpoint but not in the model: %s\n", fmt::format("{}", fmt::join(unused, ", ")).c_str());
  }
}

}  // namespace


TrainSummary train_experiment(const Config& experiment, const Registries& registries,
                              const TrainOptions& options,
                              const std::function<void(const EpochReport&)>& on_epoch) {
  // ---- Read the whole experiment before doing any work. ----
  Experiment run = Experiment::read(experiment, registries);
  const uint32_t seed = run.seed;
  const std::string& backend_name = run.backend_name;
  const std::shared_ptr<Backend>& backend = run.backend;
  const Config train_cfg = experiment.at("train");
  const int64_t epochs = run.train.epochs;
  const int64_t batch_size = run.train.batch_size;
  const int64_t eval_batch = run.train.eval_batch_size;
  const bool shuffle = run.train.shuffle;
  const int64_t log_every = run.train.log_every;
  const int64_t diagnostics_every = run.train.diagnostics_every;
  const int64_t overfit = run.train.overfit;
  const double explode_factor = run.train.explode_factor;
  const GradientClipping clipping = run.train.clipping;
  const Config& data_cfg = run.data_config;
  const int64_t validation_key = run.data.validation;
  const int64_t validation = run.validation;
  const int64_t train_limit = run.data.train_limit;
  const int64_t test_limit = run.data.test_limit;
  std::vector<std::shared_ptr<Transform>> transforms = run.data.preprocess;
  std::vector<std::shared_ptr<Transform>> augment = run.data.augment;
  const std::shared_ptr<Dataset>& dataset = run.dataset;
  const std::optional<EarlyStopping>& early_stopping = run.train.early_stopping;
  Rng& rng = run.rng;
  Graph& graph = *run.graph;
  const std::shared_ptr<Loss>& loss = run.loss;
  const std::string& loss_type = run.loss_type;
  const std::shared_ptr<Schedule>& schedule = run.schedule;
  const std::shared_ptr<Optimizer>& optimizer = run.optimizer;
  const std::string& advice = run.divergence_advice;
  const int64_t checkpoint_every = run.checkpoint.every;
  const std::string& best_metric = run.checkpoint.best_metric;
  const std::string& experiment_yaml = run.yaml;
  const std::vector<ParamRef> params = graph.params();

  const fs::path out_dir = options.out_dir;
  const fs::path checkpoint_path = out_dir / "model.h5";
  const bool resuming = options.resume;
  // The lock creates the folder, proves it writable and keeps other runs out; a validate-only
  // call (strata search checking a trial's experiment) writes nothing and takes none.
  std::optional<OutputLock> lock;
  if (!options.validate_only) lock.emplace(out_dir, kRunFiles);
  if (resuming) check_resumable(checkpoint_path, experiment_yaml, options.force);
  const std::vector<fs::path> previous_run =
      options.validate_only || resuming ? std::vector<fs::path>{} : run_files_in(out_dir);
  if (!previous_run.empty() && !options.overwrite) {
    std::vector<std::string> names;
    for (const fs::path& file : previous_run) names.push_back(file.filename().string());
    fail(
        "{}: already holds a run ({}); continue it with --resume, start it over with "
        "--overwrite (which deletes them), or choose another --out",
        out_dir.string(), fmt::join(names, ", "));
  }

  // ---- Shapes through the transforms: the dataset's, after preprocess, after augment. ----
  Shape sample = dataset->sample_shape();
  for (auto& transform : transforms) {
    transform->setup(sample);
    sample = transform->output_shape(sample);
  }
  const Shape preprocessed_sample = sample;
  for (auto& transform : augment) {
    transform->setup(sample);
    sample = transform->output_shape(sample);
  }
  if (graph.input_shape() != sample) {
    const std::string through = sample == dataset->sample_shape()
                                    ? std::string()
                                    : fmt::format(" ({} from the dataset, through data.preprocess "
                                                  "and data.augment)",
                                                  dataset->sample_shape().str());
    experiment.at("model").fail_key(
        "input", fmt::format("the model input is {} but the dataset's images are {}{}",
                             graph.input_shape().str(), sample.str(), through));
  }

  // The logits must be one score per class of the dataset: checked here, before the data is loaded,
  // rather than by the loss at the first batch.
  const Shape logits = graph.output_shape();
  const Config last_item = experiment.at("model").at("layers").items().back();
  const std::string last_layer = graph.name(graph.size() - 1);
  if (logits.rank() != 1) {
    last_item.fail(fmt::format("the last layer '{}' gives {} per image, but the loss "
                                             "expects one score per class (a rank-1 shape such as "
                                             "[{}]); end the model with a linear layer",
                                             last_layer, logits.str(), dataset->num_classes()));
  }
  if (logits[0] != dataset->num_classes()) {
    last_item.fail(fmt::format("the last layer '{}' gives {} scores per image but the "
                                             "dataset has {} classes",
                                             last_layer, logits[0], dataset->num_classes()));
  }
  check_memory(graph, batch_size, eval_batch, train_cfg);
  std::vector<std::shared_ptr<Transform>> all_transforms = transforms;  // augment too: reloading
  all_transforms.insert(all_transforms.end(), augment.begin(), augment.end());  // reads its keys
  const std::vector<PluginRecord> plugin_records = plugins_needed(
      registries, graph, backend_name, data_cfg.get<std::string>("type"),
      loss_type, all_transforms);

  // ---- Data: load, hold out validation, fit preprocessing on the training part only. ----
  if (options.validate_only) return {};
  const auto data_start = Clock::now();
  Data data;
  // A dataset too large for memory is reported at the data section, with the figure.
  auto load_split = [&](const char* split) {
    try {
      return dataset->load(split);
    } catch (const Error& error) {
      data_cfg.fail(error.what());
    } catch (const std::bad_alloc&) {
      data_cfg.fail(fmt::format("not enough memory to load the {} split (this machine has {})", split,
                                bytes_text(static_cast<double>(physical_memory_bytes()))));
    }
  };
  data.train = first_rows(load_split("train"), train_limit);
  data.test = first_rows(load_split("test"), test_limit);
  const int64_t available = static_cast<int64_t>(data.train.labels.size());
  if (validation_key < 0 || (overfit == 0 && validation_key >= available)) {
    data_cfg.fail_key("validation", fmt::format("must be between 0 and {} (the training images), found {}",
                                                available - 1, validation_key));
  }
  if (overfit > 0) {
    if (overfit > available) {
      train_cfg.fail_key("overfit", fmt::format("asks for {} images, but the training split holds {}",
                                                overfit, available));
    }
    data.train = first_rows(data.train, overfit);
  }
  if (validation > 0) {
    TrainValSplit parts = split_validation(data.train, validation, seed);
    data.train = std::move(parts.train);
    data.val = std::move(parts.val);
  }

  const fs::path best_path = out_dir / "best.h5";

  std::vector<NamedTensor> preprocess_state;
  for (std::size_t i = 0; i < transforms.size(); ++i) {
    for (NamedTensor& t : transforms[i]->state()) {
      preprocess_state.push_back({fmt::format("{}.{}/{}", i, transforms[i]->type(), t.name), t.tensor});
    }
  }
  if (resuming) {
    load_checkpoint_tensors(checkpoint_path, "preprocess", preprocess_state, false,
                            options.allow_nonfinite);
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
  // Evaluation images get the deterministic counterpart of each augmentation (a centre crop for
  // a crop, nothing for a flip); so do the training images when train.overfit turns augmentation
  // off. Otherwise the loader augments every training batch afresh.
  for (auto& transform : augment) {
    if (!data.val.labels.empty()) transform->apply(data.val.images);
    transform->apply(data.test.images);
    if (overfit > 0) transform->apply(data.train.images);
  }
  std::vector<std::shared_ptr<const Transform>> loader_augment;
  if (overfit == 0) loader_augment.assign(augment.begin(), augment.end());
  const double data_seconds = seconds_since(data_start);

  // ---- Resume, or start fresh. ----
  const int64_t train_n = static_cast<int64_t>(data.train.labels.size());
  const int64_t steps = (train_n + batch_size - 1) / batch_size;
  TrainingState state;
  SchedulePlan plan;
  plan.base_lr = optimizer->base_lr();
  plan.epochs = epochs;
  plan.iterations_per_epoch = steps;
  plan.metrics = {"train_loss", "train_accuracy"};
  if (!data.val.labels.empty()) plan.metrics.insert(plan.metrics.end(), {"val_loss", "val_accuracy"});
  schedule->setup(plan);
  int64_t saved_epoch = -1;  // the epoch model.h5 holds; -1: this run has not written one
  if (resuming) {
    auto saved = load_checkpoint_training_state(checkpoint_path);
    if (!saved) fail("checkpoint {}: has no training state to resume from", checkpoint_path.string());
    validate_training_state(*saved, checkpoint_path, epochs, steps, kHistorySeries);
    std::vector<NamedTensor> model_state = graph.state_tensors();
    load_checkpoint_tensors(checkpoint_path, "model", model_state, false, options.allow_nonfinite);
    std::vector<NamedTensor> optimizer_state = optimizer->state();
    load_checkpoint_tensors(checkpoint_path, "optimizer", optimizer_state, false,
                            options.allow_nonfinite);
    // A plateau schedule's best value is +-inf until a metric was finite: not a sign of damage.
    std::vector<NamedTensor> schedule_state = schedule->state();
    load_checkpoint_tensors(checkpoint_path, "schedule", schedule_state, false, true);
    state = *saved;
    saved_epoch = state.epoch;
    std::istringstream rng_text(state.rng_state);
    rng_text >> rng;
    if (!rng_text) fail("checkpoint {}: the stored random generator state is corrupt", checkpoint_path.string());
    if (!options.quiet && state.partial) {
      std::printf("resuming %s in epoch %lld after step %lld of %lld (iteration %lld)\n",
                  checkpoint_path.c_str(), static_cast<long long>(state.epoch + 1),
                  static_cast<long long>(state.partial->step), static_cast<long long>(steps),
                  static_cast<long long>(state.iteration));
    } else if (!options.quiet) {
      std::printf("resuming %s after epoch %lld (iteration %lld)\n", checkpoint_path.c_str(),
                static_cast<long long>(state.epoch), static_cast<long long>(state.iteration));
    }
  } else if (!options.weights.empty()) {
    load_finetuning_weights(graph, options, checkpoint_path);
  }
  // --overwrite: the previous run's files go once this run has its data and is about to train, so
  // that a new run never leaves a folder mixing two runs (an old best.h5 beside a new model.h5).
  for (const fs::path& file : previous_run) {
    std::error_code removed;
    fs::remove(file, removed);
    if (removed) fail("{}: cannot delete it for --overwrite: {}", file.string(), removed.message());
    if (!options.quiet) std::printf("--overwrite: deleted %s of the previous run\n", file.c_str());
  }

  auto save = [&](const fs::path& path) {
    Checkpoint checkpoint;
    checkpoint.model = graph.state_tensors();
    checkpoint.optimizer = optimizer->state();
    checkpoint.schedule = schedule->state();
    checkpoint.preprocess = preprocess_state;
    checkpoint.experiment_yaml = experiment_yaml;
    checkpoint.plugins = plugin_records;
    std::ostringstream rng_text;
    rng_text << rng;
    state.rng_state = rng_text.str();
    checkpoint.training = state;
    save_checkpoint(path, checkpoint);
    if (path == checkpoint_path) saved_epoch = state.epoch;
  };

  TrainingLoader loader(data.train, loader_augment, batch_size, seed);
  if (loader.batches_per_epoch() != steps) fail("internal: the loader plans {} batches, the trainer {}", loader.batches_per_epoch(), steps);
  if (!options.quiet)
    std::printf("model: %zu layers, %lld parameters; data: %lld train, %lld validation, %lld test "
              "images (loaded in %.1fs); backend %s, %d thread(s)\n",
              graph.size(), static_cast<long long>(graph.num_parameters()),
              static_cast<long long>(train_n), static_cast<long long>(data.val.labels.size()),
              static_cast<long long>(data.test.labels.size()), data_seconds, backend_name.c_str(),
              backend->threads());
  if (const std::string about = backend->description(); !options.quiet && !about.empty()) {
    std::printf("backend %s: %s\n", backend_name.c_str(), about.c_str());
  }
  if (overfit > 0 && !options.quiet) {
    std::printf("overfit check: training on the first %lld training images with no validation "
                "split, no weight decay and no augmentation; expect the training accuracy to "
                "reach about 1\n",
                static_cast<long long>(train_n));
  }

  Context context{true, &rng, backend.get()};
  Progress progress(options.quiet ? "none" : options.progress, epochs, steps);

  // ---- Sanity check: the loss before any step, beside its value at chance. ----
  double initial_loss = std::numeric_limits<double>::quiet_NaN();
  if (auto it = state.history.find("sanity/initial_loss"); it != state.history.end() && !it->second.empty()) {
    initial_loss = it->second.front();
  } else if (state.iteration == 0 && train_n > 0) {
    Split first = first_rows(data.train, std::min(batch_size, train_n));
    if (overfit == 0) {
      for (auto& transform : augment) transform->apply(first.images);
    }
    initial_loss = evaluate(graph, *loss, context, first, eval_batch).loss;
    const std::optional<double> expected = loss->chance_loss(graph.output_shape().numel());
    state.history["sanity/initial_loss"] = {initial_loss};
    std::string line = fmt::format("initial loss {:.4f} on the first {} training images", initial_loss,
                                   first.labels.size());
    if (expected) {
      state.history["sanity/expected_initial_loss"] = {*expected};
      line += fmt::format(" (expected about {:.4f} for {} at chance", *expected, loss_type);
      if (loss_type == "softmax_cross_entropy") {
        line += fmt::format(": ln({})", graph.output_shape().numel());
      }
      line += ")";
      if (!(initial_loss < 1.5 * *expected && initial_loss > 0.5 * *expected)) {
        line += "; far from it: check the initialization scale and the data";
      }
    }
    progress.note(line);
    if (!std::isfinite(initial_loss)) {
      fail("the initial loss is {} before any training step: check the data and the model's "
           "initialization",
           initial_loss);
    }
  }

  // Early stopping and best.h5 look at the whole history, so a resumed run picks up where the
  // interrupted one was.
  auto early_stop_reason = [&]() -> std::optional<std::string> {
    if (!early_stopping) return std::nullopt;
    const auto& values = state.history[early_stopping->metric];
    const MetricProgress p = metric_progress(values, metric_is_maximized(early_stopping->metric),
                                             early_stopping->min_delta);
    if (p.epochs_without_improvement < early_stopping->patience) return std::nullopt;
    return fmt::format("early stopping after epoch {}: {} has not improved by more than {} for {} "
                       "epochs (best {:.4f} at epoch {})",
                       state.epoch, early_stopping->metric, early_stopping->min_delta,
                       p.epochs_without_improvement, p.best, p.best_epoch);
  };

  StepDiagnostics diagnostics(graph);
  DiagnosticsSummary diagnostics_summary;  // the epoch's warnings, printed once at its end
  Tensor dlogits(graph.output_shape().with_batch(batch_size));
  std::vector<int64_t> order(train_n);
  bool stopped_early = false;
  if (auto reason = early_stop_reason()) {
    progress.note(*reason);
    stopped_early = true;
  }

  // Ctrl-C (options.stop) ends the run at a step boundary, with a checkpoint of that point.
  bool interrupted = false;
  auto stop_requested = [&] { return options.stop != nullptr && options.stop->load(); };
  auto read_rng = [&](const std::string& text) {
    std::istringstream in(text);
    in >> rng;
    if (!in)
      fail("checkpoint {}: the stored random generator state is corrupt", checkpoint_path.string());
  };

  for (int64_t epoch = state.epoch; epoch < epochs && !stopped_early && !interrupted; ++epoch) {
    // An interrupted epoch continues where it stopped: the generator as it was when the epoch
    // began gives the same order, then it continues from where it was at the stop.
    const std::optional<PartialEpoch> resumed = std::exchange(state.partial, std::nullopt);
    std::string epoch_rng_state;
    if (resumed) {
      epoch_rng_state = resumed->rng_state;
      read_rng(epoch_rng_state);
    } else {
      std::ostringstream text;
      text << rng;
      epoch_rng_state = text.str();
    }
    std::iota(order.begin(), order.end(), 0);
    if (shuffle) std::shuffle(order.begin(), order.end(), rng);
    if (resumed) read_rng(state.rng_state);
    const int64_t first_step = resumed ? resumed->step : 0;
    loader.start_epoch(epoch, order, first_step);
    float lr = 0;
    const auto epoch_start = Clock::now();
    const double seconds_before = resumed ? resumed->seconds : 0.0;
    double loss_sum = resumed ? resumed->loss_sum : 0.0;
    int64_t correct = resumed ? resumed->correct : 0, seen = resumed ? resumed->seen : 0;
    for (int64_t step = first_step; step < steps; ++step) {
      const Batch batch = loader.next();
      const int64_t n = batch.size();
      Tensor dl = n == batch_size ? dlogits : dlogits.batch_slice(0, n);

      lr = schedule->lr(epoch, state.iteration);
      context.training = true;
      const Tensor& logits = graph.forward(context, batch.images);
      const float batch_loss = loss->forward_backward(logits, batch.labels, &dl);
      if (options.on_iteration) options.on_iteration({epoch + 1, state.iteration + 1, batch_loss});
      // The explosion guard: stop before this step touches the weights.
      const bool exploded = explode_factor > 0 && batch_loss > explode_factor * initial_loss;
      if (!std::isfinite(batch_loss) || exploded) {
        const std::string what =
            exploded ? fmt::format("the loss {:.4g} exceeds {} x the initial loss {:.4g} "
                                   "(train.explode_factor)",
                                   batch_loss, explode_factor, initial_loss)
                     : fmt::format("the loss is {}", number_text(batch_loss));
        fail(
            "training diverged at iteration {} (epoch {}, step {} of {}, learning rate {:.4g}): "
            "{}; {}. Stopped without saving: {}",
            state.iteration + 1, epoch + 1, step + 1, steps, lr, what, advice,
            kept_checkpoint_text(checkpoint_path, saved_epoch));
      }
      correct += count_correct(logits, batch.labels);
      graph.backward(context, dl);
      const double grad_norm = clipping.enabled() ? clip_gradients(params, clipping) : 0.0;
      const bool measure = diagnostics_every > 0 && (state.iteration + 1) % diagnostics_every == 0;
      if (measure) diagnostics.before_step();
      optimizer->step(lr);
      ++state.iteration;
      if (measure) {
        const std::vector<LayerDiagnostics> results = diagnostics.after_step();
        record_diagnostics(state.history, state.iteration, results);
        diagnostics_summary.add(results);
      }
      if (log_every > 0 && state.iteration % log_every == 0) {
        state.history["iterations/iteration"].push_back(static_cast<double>(state.iteration));
        state.history["iterations/loss"].push_back(batch_loss);
        state.history["iterations/regularization"].push_back(optimizer->regularization_loss());
        state.history["iterations/lr"].push_back(lr);
        if (clipping.enabled()) state.history["iterations/grad_norm"].push_back(grad_norm);
      }
      loss_sum += static_cast<double>(batch_loss) * n;
      seen += n;
      progress.step(epoch + 1, step + 1, loss_sum / seen, static_cast<double>(correct) / seen,
                    seen / (seconds_before + seconds_since(epoch_start)));
      // The last step's stop request is honoured at the end of the epoch, after its save.
      if (step + 1 < steps && stop_requested()) {
        PartialEpoch partial;
        partial.step = step + 1;
        partial.rng_state = epoch_rng_state;
        partial.loss_sum = loss_sum;
        partial.correct = correct;
        partial.seen = seen;
        partial.seconds = seconds_before + seconds_since(epoch_start);
        state.partial = std::move(partial);
        save(checkpoint_path);
        progress.note(
            fmt::format("interrupted: stopped after iteration {} (epoch {}, step {} of "
                        "{}); {} holds this point",
                        state.iteration, epoch + 1, step + 1, steps, checkpoint_path.string()));
        interrupted = true;
        break;
      }
    }
    if (interrupted) break;
    EpochReport report;
    report.epoch = epoch + 1;
    report.epochs = epochs;
    report.seconds = seconds_before + seconds_since(epoch_start);
    report.images_per_second = seen / report.seconds;
    report.train_loss = loss_sum / seen;
    report.train_regularization = optimizer->regularization_loss();
    report.train_accuracy = static_cast<double>(correct) / seen;
    report.lr = lr;
    const Evaluation val = evaluate(graph, *loss, context, data.val, eval_batch);
    report.val_loss = val.loss;
    report.val_accuracy = val.accuracy;
    check_not_diverged(report.epoch, report.train_loss, report.val_loss, !data.val.labels.empty(),
                       graph.state_tensors(), optimizer->state(), checkpoint_path, saved_epoch,
                       advice);
    Metrics metrics{{"train_loss", report.train_loss}, {"train_accuracy", report.train_accuracy}};
    if (!data.val.labels.empty()) {
      metrics["val_loss"] = report.val_loss;
      metrics["val_accuracy"] = report.val_accuracy;
    }
    schedule->on_epoch_end(epoch, metrics);

    state.epoch = epoch + 1;
    static_assert(std::size(kHistorySeries) == 8, "every series below is listed in kHistorySeries");
    state.history["train_loss"].push_back(report.train_loss);
    state.history["train_regularization"].push_back(report.train_regularization);
    state.history["train_accuracy"].push_back(report.train_accuracy);
    state.history["val_loss"].push_back(report.val_loss);
    state.history["val_accuracy"].push_back(report.val_accuracy);
    state.history["lr"].push_back(report.lr);
    state.history["epoch_seconds"].push_back(report.seconds);
    state.history["images_per_second"].push_back(report.images_per_second);
    const std::optional<std::string> stop_reason = early_stop_reason();
    stopped_early = stop_reason.has_value();
    if ((checkpoint_every > 0 && state.epoch % checkpoint_every == 0) || state.epoch == epochs ||
        stopped_early) {
      save(checkpoint_path);
    }
    if (best_metric != "none") {
      const MetricProgress best =
          metric_progress(state.history[best_metric], metric_is_maximized(best_metric), 0.0);
      if (best.best_epoch == state.epoch) save(best_path);
    }
    progress.epoch_done(report);
    for (const std::string& line : diagnostics_summary.take_lines(report.epoch))
      progress.note(line);
    if (stop_reason) progress.note(*stop_reason);
    if (on_epoch) on_epoch(report);
    if (!stopped_early && state.epoch < epochs && stop_requested()) {
      if (saved_epoch != state.epoch) save(checkpoint_path);
      progress.note(
          fmt::format("interrupted: stopped after epoch {} (iteration {}); {} holds this "
                      "point",
                      state.epoch, state.iteration, checkpoint_path.string()));
      interrupted = true;
    }
  }
  if (interrupted) {
    TrainSummary summary;
    summary.interrupted = true;
    summary.epochs = state.epoch;
    summary.iterations = state.iteration;
    summary.initial_loss = initial_loss;
    summary.checkpoint = checkpoint_path;
    return summary;
  }
  if (state.epoch == 0 || !fs::exists(checkpoint_path)) save(checkpoint_path);

  // ---- Test once, at the end (on the final weights, not best.h5's). ----
  const Evaluation test = evaluate(graph, *loss, context, data.test, eval_batch);
  TrainSummary summary;
  summary.test_accuracy = test.accuracy;
  summary.test_loss = test.loss;
  summary.epochs = state.epoch;
  summary.iterations = state.iteration;
  summary.stopped_early = stopped_early;
  summary.initial_loss = initial_loss;
  if (best_metric != "none") {
    const MetricProgress best =
        metric_progress(state.history[best_metric], metric_is_maximized(best_metric), 0.0);
    summary.best_epoch = best.best_epoch;
    summary.best_value = best.best;
    if (best.best_epoch > 0) summary.best_checkpoint = best_path;
  }
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
      "  \"initial_loss\": {},\n  \"stopped_early\": {},\n  \"best_metric\": \"{}\",\n"
      "  \"best_epoch\": {},\n  \"best_value\": {},\n  \"best_checkpoint\": \"{}\",\n"
      "  \"history\": {{\n{}\n  }}\n}}\n",
      json_number(summary.test_accuracy), json_number(summary.test_loss), summary.epochs,
      json_number(summary.train_seconds), json_number(summary.train_images_per_second),
      graph.num_parameters(), train_n, data.val.labels.size(), data.test.labels.size(), backend_name,
      backend->threads(), batch_size, checkpoint_path.string(), json_number(initial_loss),
      stopped_early, best_metric, summary.best_epoch, json_number(summary.best_value),
      summary.best_checkpoint.string(), fmt::join(history, ",\n"));
  try {
    write_file_atomically(summary.summary, json);
  } catch (const Error& error) {
    fail("{} (the run itself finished: test accuracy {:.4f}, loss {:.4f}; checkpoint {})", error.what(),
         summary.test_accuracy, summary.test_loss, checkpoint_path.string());
  }
  return summary;
}

}  // namespace strata
