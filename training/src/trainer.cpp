// train_experiment: the setup, in named steps (prepare_output, check_model_fits_data, load_data,
// preprocess, restore_or_start, initial_loss_check), then train_loop, a short loop over epochs
// and steps that emits the events of strata/training/hooks.hpp. The concerns around it are the
// built-in hooks (builtin_hooks(), one file each, sharing the Run of loop.hpp).
#include "strata/training/trainer.hpp"

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

#include "data_parallel.hpp"
#include "loop.hpp"
#include "strata/backend.hpp"
#include "strata/checkpoint.hpp"
#include "strata/dataset.hpp"
#include "strata/file_check.hpp"
#include "strata/files.hpp"
#include "strata/graph.hpp"
#include "strata/layer.hpp"
#include "strata/optimizer.hpp"
#include "strata/plugin_records.hpp"
#include "strata/random.hpp"
#include "strata/training/checks.hpp"
#include "strata/training/data_loader.hpp"
#include "strata/training/diagnostics.hpp"
#include "strata/training/experiment.hpp"
#include "strata/training/run_data.hpp"
#include "strata/training/gradient_clipping.hpp"

namespace strata {

namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

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

// The loss and accuracy over `samples`, through the transforms' deterministic apply(), read in
// batches of evaluation_batch() (a loader of its own, so memory is two batches whatever the
// split's size).
// Skipped bad images (data.on_bad_image: skip) count in neither and are noted.
// Under MPI each rank evaluates its shard and the sums are reduced, so every rank returns the same.
Evaluation evaluate(const Experiment& experiment, Context& context, const RunData& data,
                    const SampleSet& samples, training_loop::DataParallel& parallel,
                    training_loop::Progress* progress = nullptr) {
  if (samples.size() == 0) return {};
  LoaderOptions options;
  options.batch_size =
      std::min(evaluation_batch(*experiment.graph, experiment.train), samples.size());
  options.skip_bad = experiment.data.skip_bad_images;
  options.rank = parallel.rank();
  options.ranks = parallel.ranks();
  BatchLoader loader(samples, data.transforms, data.sample, options);
  loader.start_epoch(0);
  context.training = false;
  double total_loss = 0;
  int64_t correct = 0, seen = 0;
  for (int64_t b = 0; b < loader.batches_per_epoch(); ++b) {
    const Batch batch = loader.next();
    if (batch.size() == 0) continue;
    const Tensor& logits = experiment.graph->forward(context, batch.images);
    total_loss += static_cast<double>(experiment.loss->forward_backward(logits, batch.labels, nullptr)) *
                  batch.size();
    correct += count_correct(logits, batch.labels);
    seen += batch.size();
  }
  double sums[4] = {total_loss, static_cast<double>(correct), static_cast<double>(seen),
                    static_cast<double>(loader.skipped())};
  parallel.sum(sums, fmt::format("the evaluation of {}", samples.name));
  total_loss = sums[0];
  correct = static_cast<int64_t>(sums[1]);
  seen = static_cast<int64_t>(sums[2]);
  const auto skipped = static_cast<int64_t>(sums[3]);
  if (skipped > 0 && progress != nullptr) {
    const std::string example =
        loader.skip_examples().empty() ? "" : ", e.g. " + loader.skip_examples().front();
    progress->note(fmt::format("{}: skipped {} bad image(s) (data.on_bad_image: skip){}",
                               samples.name, skipped, example));
  }
  if (seen == 0) return {};
  return {total_loss / seen, static_cast<double>(correct) / seen};
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
  fail(
      "--resume: the experiment differs from the one that wrote {} (its /experiment):\n  {}\n"
      "Resume may change only {}. Use another --out for a new run, or --force to resume anyway",
      checkpoint.string(), fmt::join(refused, "\n  "), resume_may_change_text());
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

namespace {

using training_loop::Progress;
using training_loop::Run;

// ---- Setup: named steps, in the order train_experiment takes them. ----

// The lock creates the folder, proves it writable and keeps other runs out (a validate-only call,
// strata search checking a trial's experiment, writes nothing and takes none). A resume needs
// this experiment's checkpoint; a new run refuses a folder holding a run unless --overwrite.
// Returns the previous run's files that --overwrite deletes once the data is loaded.
std::vector<fs::path> prepare_output(const Run& run, std::optional<OutputLock>& lock) {
  const TrainOptions& options = run.options;
  if (!options.validate_only) lock.emplace(options.out_dir, kRunFiles);
  if (options.resume) check_resumable(run.checkpoint_path, run.experiment.yaml, options.force);
  if (options.validate_only || options.resume) return {};
  std::vector<fs::path> previous_run = run_files_in(options.out_dir);
  if (!previous_run.empty() && !options.overwrite) {
    std::vector<std::string> names;
    for (const fs::path& file : previous_run) names.push_back(file.filename().string());
    fail(
        "{}: already holds a run ({}); continue it with --resume, start it over with "
        "--overwrite (which deletes them), or choose another --out",
        options.out_dir.string(), fmt::join(names, ", "));
  }
  return previous_run;
}

// Before any data is loaded: the dataset's images, through data.preprocess and data.augment, are
// the model's input, its logits one score per class, and the activations fit in memory. Returns
// the plugins a checkpoint of this run needs.
std::vector<PluginRecord> check_model_fits_data(Experiment& run, const Registries& registries) {
  Dataset& dataset = *run.dataset;
  Graph& graph = *run.graph;
  set_up_transforms(run);
  // Checked here, before the data is loaded, rather than by the loss at the first batch.
  const Shape logits = graph.output_shape();
  const Config last_item = run.config.at("model").at("layers").items().back();
  const std::string last_layer = graph.name(graph.size() - 1);
  if (logits.rank() != 1) {
    last_item.fail(
        fmt::format("the last layer '{}' gives {} per image, but the loss "
                    "expects one score per class (a rank-1 shape such as "
                    "[{}]); end the model with a linear layer",
                    last_layer, logits.str(), dataset.num_classes()));
  }
  if (logits[0] != dataset.num_classes()) {
    last_item.fail(
        fmt::format("the last layer '{}' gives {} scores per image but the "
                    "dataset has {} classes",
                    last_layer, logits[0], dataset.num_classes()));
  }
  check_memory(graph, run.train.batch_size, evaluation_batch(graph, run.train),
               run.config.at("train"));
  return plugins_needed(registries, graph, run.backend_name,
                        run.data_config.get<std::string>("type"), run.loss_type, run.data.transforms);
}

// Fits the transforms that have statistics on a sample of the training images (or restores what a
// resumed run fitted), and names their statistics for the checkpoint.
void prepare_transforms(Run& run, const RunData& data) {
  const auto& transforms = run.experiment.data.transforms;
  for (std::size_t i = 0; i < transforms.size(); ++i) {
    for (NamedTensor& t : transforms[i]->state()) {
      run.preprocess_state.push_back(
          {fmt::format("{}.{}/{}", i, transforms[i]->type(), t.name), t.tensor});
    }
  }
  // Under MPI rank 0 fits (or restores) them and broadcasts them (share_run_state).
  if (!run.writes_files()) return;
  if (run.options.resume) {
    load_checkpoint_tensors(run.checkpoint_path, "preprocess", run.preprocess_state, false,
                            run.options.allow_nonfinite);
    return;
  }
  const int64_t skipped = fit_transforms(run.experiment, data);
  if (skipped > 0 && !run.options.quiet) {
    std::printf("fitting the data transforms: skipped %lld bad image(s) (data.on_bad_image: skip)\n",
                static_cast<long long>(skipped));
  }
}

// Sets up the schedule, then restores a resumed run (weights, optimizer, schedule, training state,
// generator) or loads --weights.
void restore_or_start(Run& run, bool has_validation) {
  Experiment& experiment = run.experiment;
  SchedulePlan plan;
  plan.base_lr = experiment.optimizer->base_lr();
  plan.epochs = experiment.train.epochs;
  plan.iterations_per_epoch = run.steps;
  plan.metrics = {"train_loss", "train_accuracy"};
  if (has_validation) plan.metrics.insert(plan.metrics.end(), {"val_loss", "val_accuracy"});
  experiment.schedule->setup(plan);
  const TrainOptions& options = run.options;
  const fs::path& checkpoint = run.checkpoint_path;
  if (!run.writes_files()) return;  // under MPI, rank 0 reads and shares (share_run_state)
  if (!options.resume) {
    if (!options.weights.empty()) load_finetuning_weights(*experiment.graph, options, checkpoint);
    return;
  }
  auto saved = load_checkpoint_training_state(checkpoint);
  if (!saved) fail("checkpoint {}: has no training state to resume from", checkpoint.string());
  validate_training_state(*saved, checkpoint, experiment.train.epochs, run.steps,
                          training_loop::kHistorySeries);
  if (saved->partial && saved->partial->rng_state != training_loop::kStreamOrder) {
    fail(
        "checkpoint {}: was interrupted in epoch {} by a Strata that shuffled the batches with "
        "std::shuffle; this one draws each epoch's order from (seed, epoch) and cannot finish that "
        "epoch in the same order. Resume it with the Strata that wrote it, or start the run over "
        "(--overwrite)",
        checkpoint.string(), saved->epoch + 1);
  }
  std::vector<NamedTensor> model_state = experiment.graph->state_tensors();
  load_checkpoint_tensors(checkpoint, "model", model_state, false, options.allow_nonfinite);
  std::vector<NamedTensor> optimizer_state = experiment.optimizer->state();
  load_checkpoint_tensors(checkpoint, "optimizer", optimizer_state, false, options.allow_nonfinite);
  // A plateau schedule's best value is +-inf until a metric was finite: not a sign of damage.
  std::vector<NamedTensor> schedule_state = experiment.schedule->state();
  load_checkpoint_tensors(checkpoint, "schedule", schedule_state, false, true);
  run.state = *saved;
  run.saved_epoch = run.state.epoch;
  std::istringstream rng_text(run.state.rng_state);
  rng_text >> experiment.rng;
  if (!rng_text)
    fail("checkpoint {}: the stored random generator state is corrupt", checkpoint.string());
  if (options.quiet) return;
  if (run.state.partial) {
    std::printf("resuming %s in epoch %lld after step %lld of %lld (iteration %lld)\n",
                checkpoint.c_str(), static_cast<long long>(run.state.epoch + 1),
                static_cast<long long>(run.state.partial->step), static_cast<long long>(run.steps),
                static_cast<long long>(run.state.iteration));
  } else {
    std::printf("resuming %s after epoch %lld (iteration %lld)\n", checkpoint.c_str(),
                static_cast<long long>(run.state.epoch),
                static_cast<long long>(run.state.iteration));
  }
}

// Under MPI: rank 0's weights (initialized, fine-tuned or resumed), optimizer and schedule state,
// fitted transform statistics and training position go to every rank, so that every replica
// starts identical whatever each rank could read. Ranks > 0 then draw dropout masks from a
// generator of their own (seeded from the seed, the rank and the iteration), so the ranks do not
// drop the same units of different images.
void share_run_state(Run& run) {
  training_loop::DataParallel& parallel = *run.parallel;
  if (!parallel.distributed()) return;
  Experiment& experiment = run.experiment;
  std::vector<NamedTensor> model = experiment.graph->state_tensors();
  parallel.broadcast(model, "the model's weights");
  std::vector<NamedTensor> optimizer = experiment.optimizer->state();
  parallel.broadcast(optimizer, "the optimizer state");
  std::vector<NamedTensor> schedule = experiment.schedule->state();
  parallel.broadcast(schedule, "the schedule state");
  parallel.broadcast(run.preprocess_state, "the transform statistics");
  TrainingState& state = run.state;
  const PartialEpoch partial = state.partial.value_or(PartialEpoch{});
  auto& history = state.history;
  const auto initial = history.find("sanity/initial_loss");
  const bool has_initial = initial != history.end() && !initial->second.empty();
  double position[10] = {static_cast<double>(state.epoch),
                         static_cast<double>(state.iteration),
                         state.partial ? 1.0 : 0.0,
                         static_cast<double>(partial.step),
                         partial.loss_sum,
                         static_cast<double>(partial.correct),
                         static_cast<double>(partial.seen),
                         partial.seconds,
                         has_initial ? 1.0 : 0.0,
                         has_initial ? initial->second.front() : 0.0};
  parallel.broadcast(position, "the training position");
  if (run.rank == 0) return;
  state.epoch = static_cast<int64_t>(position[0]);
  state.iteration = static_cast<int64_t>(position[1]);
  if (position[2] != 0) {
    PartialEpoch& resumed = state.partial.emplace();
    resumed.step = static_cast<int64_t>(position[3]);
    resumed.rng_state = training_loop::kStreamOrder;
    resumed.loss_sum = position[4];
    resumed.correct = static_cast<int64_t>(position[5]);
    resumed.seen = static_cast<int64_t>(position[6]);
    resumed.seconds = position[7];
  }
  if (position[8] != 0) history["sanity/initial_loss"] = {position[9]};
  run.saved_epoch = state.epoch;
  const auto iteration = static_cast<uint64_t>(state.iteration);
  std::seed_seq seeds{experiment.seed, static_cast<uint32_t>(run.rank),
                      static_cast<uint32_t>(iteration), static_cast<uint32_t>(iteration >> 32)};
  experiment.rng.seed(seeds);
}

// --overwrite: the previous run's files go once this run has its data and is about to train, so
// that a new run never leaves a folder mixing two runs (an old best.h5 beside a new model.h5).
void delete_previous_run(const std::vector<fs::path>& previous_run, bool quiet) {
  for (const fs::path& file : previous_run) {
    std::error_code removed;
    fs::remove(file, removed);
    if (removed) fail("{}: cannot delete it for --overwrite: {}", file.string(), removed.message());
    if (!quiet) std::printf("--overwrite: deleted %s of the previous run\n", file.c_str());
  }
}

// Under MPI every rank must read the same splits (a shared file system, or identical copies): the
// shards, the steps per epoch and the evaluations all assume it.
void check_same_data(training_loop::DataParallel& parallel, const RunData& data) {
  if (!parallel.distributed()) return;
  const double sizes[3] = {static_cast<double>(data.train.size()), static_cast<double>(data.val.size()),
                           static_cast<double>(data.test.size())};
  double low[3] = {sizes[0], sizes[1], sizes[2]}, high[3] = {sizes[0], sizes[1], sizes[2]};
  Communicator& communicator = *parallel.communicator();
  communicator.allreduce(std::span<double>(low), ReduceOp::min, "the split sizes (min)");
  communicator.allreduce(std::span<double>(high), ReduceOp::max, "the split sizes (max)");
  if (std::equal(low, low + 3, high)) return;
  throw JobError(fmt::format(
      "the ranks read different data: between {:.0f} and {:.0f} training, {:.0f} and {:.0f} "
      "validation, {:.0f} and {:.0f} test images (this rank, {}: {:.0f}, {:.0f}, {:.0f}); every "
      "rank must see the same files (a shared file system, or the same copy on every node)",
      low[0], high[0], low[1], high[1], low[2], high[2], rank_label(communicator), sizes[0],
      sizes[1], sizes[2]));
}

// Under MPI train.batch_size is the global batch: each of N ranks computes batch_size / N.
void check_global_batch(const Experiment& experiment, int ranks) {
  const int64_t batch = experiment.train.batch_size;
  if (ranks <= 1 || batch % ranks == 0) return;
  experiment.config.at("train").fail_key(
      "batch_size",
      fmt::format("{} is the global batch, split evenly among the {} ranks of this MPI job, but "
                  "{} / {} is not a whole number; choose a multiple of {} (e.g. {} or {})",
                  batch, ranks, batch, ranks, ranks, batch / ranks * ranks,
                  (batch / ranks + 1) * ranks));
}

void print_run_header(const Run& run, double data_seconds) {
  if (run.options.quiet) return;
  const Experiment& experiment = run.experiment;
  std::printf(
      "model: %zu layers, %lld parameters; data: %lld train, %lld validation, %lld test "
      "images (loaded in %.1fs); backend %s, %d thread(s)\n",
      experiment.graph->size(), static_cast<long long>(experiment.graph->num_parameters()),
      static_cast<long long>(run.train_images), static_cast<long long>(run.validation_images),
      static_cast<long long>(run.test_images), data_seconds, experiment.backend_name.c_str(),
      experiment.backend->threads());
  if (const std::string about = experiment.backend->description(); !about.empty()) {
    std::printf("backend %s: %s\n", experiment.backend_name.c_str(), about.c_str());
  }
  if (experiment.precision != Precision::kFp32) {
    std::printf(
        "precision %s: conv2d and linear multiply bfloat16-rounded inputs, sums and "
        "weights in float (docs/precision.md)\n",
        std::string(precision_name(experiment.precision)).c_str());
  }
  if (const training_loop::DataParallel& parallel = *run.parallel; parallel.distributed()) {
    const Communicator& communicator = *parallel.communicator();
    const int64_t batch = experiment.train.batch_size;
    std::printf(
        "MPI: %d rank(s), %d per node (rank 0 on %s), %d thread(s) per rank; global batch %lld = "
        "%d x %lld; gradients in %zu bucket(s) of up to %g MiB%s\n",
        communicator.size(), communicator.local_size(), communicator.host().c_str(),
        experiment.backend->threads(), static_cast<long long>(batch), communicator.size(),
        static_cast<long long>(batch / communicator.size()), parallel.bucket_count(),
        experiment.distributed.bucket_mb,
        experiment.distributed.overlap ? ", overlapped with backward" : "");
    if (const std::string about = communicator.description(); !about.empty()) {
      std::printf("MPI: %s\n", about.c_str());
    }
  }
  if (const auto& scaling = experiment.lr_scaling) {
    const float lr = experiment.optimizer->base_lr();
    std::printf("%s\n", scaling->describe(lr, experiment.train.epochs).c_str());
  }
  if (experiment.train.overfit > 0) {
    std::printf(
        "overfit check: training on the first %lld training images with no validation "
        "split, no weight decay and no augmentation; expect the training accuracy to "
        "reach about 1\n",
        static_cast<long long>(run.train_images));
  }
}

// The loss before any step, beside its value at chance (Loss::chance_loss); a resumed run keeps
// the one its first part measured. A non-finite one stops the run.
double initial_loss_check(Run& run, const RunData& data, Context& context) {
  auto& history = run.state.history;
  if (auto it = history.find("sanity/initial_loss"); it != history.end() && !it->second.empty()) {
    return it->second.front();
  }
  if (run.state.iteration != 0 || run.train_images == 0)
    return std::numeric_limits<double>::quiet_NaN();
  Experiment& experiment = run.experiment;
  // The first batch of the first epoch (not the first rows: an image folder lists one class first).
  SampleSet first = data.train;
  const std::vector<int64_t> order =
      epoch_order(experiment.seed, 0, run.train_images, experiment.train.shuffle);
  first.rows.resize(static_cast<std::size_t>(std::min(experiment.train.batch_size, run.train_images)));
  for (std::size_t i = 0; i < first.rows.size(); ++i) first.rows[i] = data.train.rows[order[i]];
  const double initial_loss = evaluate(experiment, context, data, first, *run.parallel).loss;
  const int64_t classes = experiment.graph->output_shape().numel();
  const std::optional<double> expected = experiment.loss->chance_loss(classes);
  history["sanity/initial_loss"] = {initial_loss};
  std::string line = fmt::format("initial loss {:.4f} on the first batch ({} training images)",
                                 initial_loss, first.rows.size());
  if (expected) {
    history["sanity/expected_initial_loss"] = {*expected};
    line +=
        fmt::format(" (expected about {:.4f} for {} at chance", *expected, experiment.loss_type);
    // Said of the number, whatever loss gives it (cross-entropy, with or without smoothing).
    if (*expected == std::log(static_cast<double>(classes)))
      line += fmt::format(": ln({})", classes);
    line += ")";
    if (!(initial_loss < 1.5 * *expected && initial_loss > 0.5 * *expected)) {
      line += "; far from it: check the initialization scale and the data";
    }
  }
  run.progress->note(line);
  if (!std::isfinite(initial_loss)) {
    fail(
        "the initial loss is {} before any training step: check the data and the model's "
        "initialization",
        initial_loss);
  }
  return initial_loss;
}

// ---- The loop. ----

// The data seam: each epoch's training batches, in the order epoch_order() draws from (seed,
// epoch); the loop only calls start_epoch and next. Under MPI, rank r of N reads only its shard
// (positions r, r + N, ... of the epoch's order) in batches of batch_size / N, so that the
// ranks' batch k together hold exactly the images of a single process's batch k. A rank whose
// shard has fewer batches than the epoch's steps (an uneven last batch) gets empty batches.
class EpochBatches {
 public:
  EpochBatches(const Experiment& experiment, const RunData& data, int rank, int ranks)
      : loader_(data.train, data.transforms, data.sample,
                rank_options(training_loader_options(experiment), rank, ranks)),
        seed_(experiment.seed),
        shuffle_(experiment.train.shuffle),
        rows_(data.train.size()),
        empty_(Shape(data.sample).with_batch(0)) {}

  int64_t steps() const { return loader_.batches_per_epoch(); }
  // Epoch `epoch` (0-based), from its step `first_step` (where an interrupted epoch resumes).
  void start_epoch(int64_t epoch, int64_t first_step) {
    next_ = first_step;
    // A shard with no batch left at first_step starts at 0 (its next() is never called).
    loader_.start_epoch(epoch, epoch_order(seed_, epoch, rows_, shuffle_),
                        first_step < steps() ? first_step : 0);
  }
  Batch next() {
    if (next_++ >= steps()) return Batch{empty_, {}, 0};
    return loader_.next();
  }
  const BatchLoader& loader() const { return loader_; }

 private:
  static LoaderOptions rank_options(LoaderOptions options, int rank, int ranks) {
    options.batch_size /= ranks;
    options.rank = rank;
    options.ranks = ranks;
    return options;
  }

  BatchLoader loader_;
  uint32_t seed_;
  bool shuffle_;
  int64_t rows_;
  Tensor empty_;  // [0, sample]: the batch of a rank with no images in a step
  int64_t next_ = 0;
};

// The hooks in the order the loop calls them: the search's abort sees a step's loss before the
// guards; the guards and early stopping decide before the checkpoint hook saves; the progress
// line follows the save; the search's on_epoch sees a saved epoch; the interrupt hook comes last.
std::vector<std::shared_ptr<TrainingHook>> builtin_hooks(
    Run& run, const std::function<void(const EpochReport&)>& on_epoch) {
  namespace loop = training_loop;
  std::vector<std::shared_ptr<TrainingHook>> hooks = {
      loop::iteration_callback_hook(run.options.on_iteration),
      loop::divergence_guard_hook(run),
      loop::diagnostics_hook(run),
      loop::early_stopping_hook(run),
      loop::checkpoint_hook(run),
      loop::progress_hook(run),
      loop::epoch_callback_hook(on_epoch),
      loop::interrupt_hook(run),
      loop::summary_hook(run)};
  std::erase(hooks, nullptr);
  hooks.insert(hooks.end(), run.options.hooks.begin(), run.options.hooks.end());
  return hooks;
}

template <class Event>
void emit(const std::vector<std::shared_ptr<TrainingHook>>& hooks,
          void (TrainingHook::*handler)(const Event&), const Event& event) {
  for (const auto& hook : hooks) ((*hook).*handler)(event);
}

// The end of an epoch: the validation figures, the schedule's epoch hook, the history series.
EpochReport finish_epoch(Run& run, const RunData& data, Context& context, const StepEvent& last,
                         int64_t epoch) {
  Experiment& experiment = run.experiment;
  EpochReport report;
  report.epoch = epoch + 1;
  report.epochs = experiment.train.epochs;
  report.seconds = last.seconds;
  report.images_per_second = last.seen / report.seconds;
  report.train_loss = last.loss_sum / last.seen;
  report.train_regularization = experiment.optimizer->regularization_loss();
  report.train_accuracy = static_cast<double>(last.correct) / last.seen;
  report.lr = static_cast<float>(last.lr);
  const auto validation_start = Clock::now();
  const Evaluation val = evaluate(experiment, context, data, data.val, *run.parallel, run.progress);
  run.time.validation += seconds_since(validation_start);
  report.val_loss = val.loss;
  report.val_accuracy = val.accuracy;
  Metrics metrics{{"train_loss", report.train_loss}, {"train_accuracy", report.train_accuracy}};
  if (data.val.size() > 0) {
    metrics["val_loss"] = report.val_loss;
    metrics["val_accuracy"] = report.val_accuracy;
  }
  experiment.schedule->on_epoch_end(epoch, metrics);
  run.state.epoch = epoch + 1;
  static_assert(std::size(training_loop::kHistorySeries) == 8, "each series below is listed");
  auto& history = run.state.history;
  history["train_loss"].push_back(report.train_loss);
  history["train_regularization"].push_back(report.train_regularization);
  history["train_accuracy"].push_back(report.train_accuracy);
  history["val_loss"].push_back(report.val_loss);
  history["val_accuracy"].push_back(report.val_accuracy);
  history["lr"].push_back(report.lr);
  history["epoch_seconds"].push_back(report.seconds);
  history["images_per_second"].push_back(report.images_per_second);
  return report;
}

// What train_experiment returns; after the last epoch, the test split is evaluated once (on the
// final weights, not best.h5's).
TrainSummary run_summary(Run& run, const RunData& data, Context& context) {
  TrainSummary summary;
  summary.epochs = run.state.epoch;
  summary.iterations = run.state.iteration;
  summary.initial_loss = run.initial_loss;
  summary.checkpoint = run.checkpoint_path;
  summary.interrupted = run.interrupted;
  if (run.interrupted) return summary;
  Experiment& experiment = run.experiment;
  const auto test_start = Clock::now();
  const Evaluation test = evaluate(experiment, context, data, data.test, *run.parallel, run.progress);
  run.time.test += seconds_since(test_start);
  summary.test_accuracy = test.accuracy;
  summary.test_loss = test.loss;
  summary.stopped_early = run.stopped_early;
  if (const std::string& metric = experiment.checkpoint.best_metric; metric != "none") {
    const MetricProgress best =
        metric_progress(run.state.history[metric], metric_is_maximized(metric), 0.0);
    summary.best_epoch = best.best_epoch;
    summary.best_value = best.best;
    if (best.best_epoch > 0) summary.best_checkpoint = run.best_path;
  }
  const auto& seconds = run.state.history["epoch_seconds"];
  const auto& rates = run.state.history["images_per_second"];
  double images = 0;
  for (std::size_t i = 0; i < seconds.size(); ++i) images += seconds[i] * rates[i];
  summary.train_seconds = std::accumulate(seconds.begin(), seconds.end(), 0.0);
  summary.train_images_per_second = summary.train_seconds > 0 ? images / summary.train_seconds : 0;
  return summary;
}

// The end of an epoch, on every rank alike: the bad images and a late stop request agreed over the
// ranks, the buffers synchronized, the validation (finish_epoch), the replicas checked, and the
// epoch hooks (checkpoints). Its time, less the validation's, is run.time.epoch_ends.
void end_epoch(Run& run, const RunData& data, const BatchLoader& loader, Context& context,
               const StepEvent& e, int64_t epoch, bool stop_flag,
               const std::vector<std::shared_ptr<TrainingHook>>& hooks) {
  Experiment& experiment = run.experiment;
  training_loop::DataParallel& parallel = *run.parallel;
  const auto start = Clock::now();
  const double validation_before = run.time.validation;
  // The epoch's bad images over all ranks, and a stop request that came after the last step.
  double epoch_end[2] = {static_cast<double>(loader.skipped()), stop_flag ? 1.0 : 0.0};
  parallel.sum(epoch_end, fmt::format("the end of epoch {}", epoch + 1));
  const auto skipped = static_cast<int64_t>(epoch_end[0]);
  run.stop_requested = run.stop_requested || epoch_end[1] > 0;
  if (skipped > 0) {
    run.progress->note(fmt::format(
        "epoch {}: skipped {} bad training image(s) (data.on_bad_image: skip); the first: {}",
        epoch + 1, skipped, fmt::join(loader.skip_examples(), "; ")));
  }
  parallel.sync_buffers(fmt::format("the buffers after epoch {}", epoch + 1));
  EpochReport report = finish_epoch(run, data, context, e, epoch);
  report.skipped_images = skipped;
  if (experiment.distributed.check_replicas != "never") {
    parallel.check_replicas(*experiment.graph, *experiment.optimizer, true,
                            fmt::format("after epoch {}", epoch + 1));
  }
  emit(hooks, &TrainingHook::on_epoch_end, report);
  run.time.epoch_ends += seconds_since(start) - (run.time.validation - validation_before);
}

// Epochs of steps, each step: the next batch, forward and loss, backward, clipping, the optimizer
// step; each emitting its event (strata/training/hooks.hpp). The hooks do everything else. Under
// MPI the step's collectives (data_parallel.hpp) sit between them, taken by every rank in the same
// order whatever happened to it, so that a rank's data error, NaN or stop request stops every
// rank at the same step; the events then carry the global batch's figures.
TrainSummary train_loop(Run& run, const RunData& data, EpochBatches& batches, Context& context,
                        const std::vector<std::shared_ptr<TrainingHook>>& hooks) {
  Experiment& experiment = run.experiment;
  Graph& graph = *experiment.graph;
  TrainingState& state = run.state;
  training_loop::DataParallel& parallel = *run.parallel;
  const std::vector<ParamRef> params = graph.params();
  const int64_t local_batch = experiment.train.batch_size / parallel.ranks();
  Tensor dlogits(graph.output_shape().with_batch(local_batch));
  const bool check_every_step = experiment.distributed.check_replicas == "step";
  auto stop_flag = [&] { return run.options.stop != nullptr && run.options.stop->load(); };
  emit(hooks, &TrainingHook::on_run_start,
       RunStartEvent{experiment.train.epochs, run.steps, state.epoch, state.iteration,
                     run.initial_loss});
  for (int64_t epoch = state.epoch;
       epoch < experiment.train.epochs && !run.stopped_early && !run.interrupted; ++epoch) {
    // An interrupted epoch continues where it stopped, with its running totals.
    const std::optional<PartialEpoch> resumed = std::exchange(state.partial, std::nullopt);
    StepEvent e;
    e.epoch = epoch + 1;
    e.steps = run.steps;
    if (resumed) {
      e.step = resumed->step;
      e.loss_sum = resumed->loss_sum;
      e.correct = resumed->correct;
      e.seen = resumed->seen;
    }
    const double seconds_before = resumed ? resumed->seconds : 0.0;
    batches.start_epoch(epoch, e.step);
    const auto epoch_start = Clock::now();
    while (e.step < run.steps && !run.interrupted) {
      // The step's time, less the batch wait and the hooks, is run.time.steps.
      const auto step_start = Clock::now();
      const double hooks_before = run.time.step_hooks;
      Batch batch;
      std::optional<std::string> data_error;
      try {
        batch = batches.next();  // the data seam
      } catch (const Error& error) {
        if (!parallel.distributed()) throw;
        data_error = error.what();
      }
      const double data_seconds = seconds_since(step_start);
      run.time.data += data_seconds;
      const auto timed_emit = [&](auto handler, const auto& event) {
        const auto start = Clock::now();
        emit(hooks, handler, event);
        run.time.step_hooks += seconds_since(start);
      };
      e.step += 1;
      const int64_t images = parallel.agree_images(batch.size(), data_error, state.iteration + 1);
      if (images == 0) {  // every image of the batch was skipped as bad
        run.time.steps += seconds_since(step_start) - data_seconds;
        continue;
      }
      e.iteration = state.iteration + 1;
      e.images = images;
      const float lr = experiment.schedule->lr(epoch, state.iteration);
      e.lr = lr;
      // This rank's part: forward and loss on its images (none: under MPI a rank may have no
      // image in the last batch; it still runs the passes when a layer communicates in them).
      Tensor dl = batch.size() == local_batch ? dlogits : dlogits.batch_slice(0, batch.size());
      training_loop::DataParallel::Totals local;
      float loss = 0;
      const bool runs_passes = batch.size() > 0 || parallel.every_rank_runs_every_pass();
      if (runs_passes) {
        context.training = true;
        const Tensor& logits = graph.forward(context, batch.images);
        if (batch.size() > 0) {
          loss = experiment.loss->forward_backward(logits, batch.labels, &dl);
          local.loss_sum = static_cast<double>(loss) * batch.size();
          local.correct = count_correct(logits, batch.labels);
          // The loss is this rank's mean; the gradient summed over the ranks must be the global
          // batch's mean (exactly 1 for one rank, leaving dl as it is).
          if (const float share = static_cast<float>(batch.size()) / static_cast<float>(images);
              share != 1.0f) {
            float* d = dl.data();
            for (int64_t k = 0, n = dl.numel(); k < n; ++k) d[k] *= share;
          }
        }
      }
      local.stop = stop_flag();
      const training_loop::DataParallel::Totals totals = parallel.agree_totals(local, e.iteration);
      e.loss = parallel.distributed() ? totals.loss_sum / static_cast<double>(images) : loss;
      try {
        timed_emit(&TrainingHook::on_loss, e);  // may throw: the step is not taken
      } catch (const Error& error) {
        // The guards judge the global loss, which every rank holds: every rank throws alike.
        if (!parallel.distributed()) throw;
        throw JobError(error.what());
      }
      parallel.backward(graph, context, dl, runs_passes, e.iteration);
      timed_emit(&TrainingHook::on_backward, e);  // the gradients are the global batch's
      const GradientClipping& clipping = experiment.train.clipping;
      e.grad_norm = clipping.enabled() ? clip_gradients(params, clipping) : 0.0;
      timed_emit(&TrainingHook::on_gradients, e);
      experiment.optimizer->step(lr);
      ++state.iteration;
      e.loss_sum += totals.loss_sum;
      e.correct += totals.correct;
      e.seen += images;
      e.seconds = seconds_before + seconds_since(epoch_start);
      if (check_every_step) {
        parallel.check_replicas(graph, *experiment.optimizer, false,
                                fmt::format("after iteration {}", state.iteration));
      }
      // A stop request is honoured after the step: under MPI as the ranks agreed with the loss;
      // in one process as it stands now (a hook of this step may have made it).
      run.stop_requested = parallel.distributed() ? totals.stop : stop_flag();
      timed_emit(&TrainingHook::on_step, e);
      run.time.steps +=
          seconds_since(step_start) - data_seconds - (run.time.step_hooks - hooks_before);
    }
    if (run.interrupted) break;
    end_epoch(run, data, batches.loader(), context, e, epoch, stop_flag(), hooks);
  }
  TrainSummary summary = run_summary(run, data, context);
  summary.time = run.time;
  if (parallel.distributed()) {
    const training_loop::DataParallel::CommunicationTime& time = parallel.communication();
    summary.ranks = parallel.ranks();
    summary.gradient_bytes_per_step = time.gradient_bytes;
    if (time.steps > 0) summary.communication_seconds_per_step = time.seconds / time.steps;
    run.progress->note(fmt::format(
        "MPI: {} steps on {} ranks; waiting for the other ranks {:.2f} ms per step (agreements "
        "and the part of the gradient sums backward did not hide), {:.2f} MB of gradients summed "
        "per step",
        time.steps, parallel.ranks(), 1e3 * summary.communication_seconds_per_step,
        time.gradient_bytes / 1e6));
  }
  emit(hooks, &TrainingHook::on_run_end, RunEndEvent{summary, run.interrupted});
  return summary;
}

}  // namespace

TrainSummary train_experiment(const Config& experiment_config, const Registries& registries,
                              const TrainOptions& given_options,
                              const std::function<void(const EpochReport&)>& on_epoch) {
  // Read the whole experiment before doing any work (under MPI every rank reads it, and a rank
  // that cannot, say for a file missing on its node, stops them all).
  Communicator* communicator = given_options.communicator;
  std::optional<Experiment> read;
  training_loop::agree_on_errors(communicator, "reading the experiment", [&] {
    read.emplace(Experiment::read(experiment_config, registries));
  });
  Experiment& experiment = *read;
  // Training keeps only the outputs a backward reads; the rest share memory (strata/graph.hpp).
  experiment.graph->set_output_retention(OutputRetention::kBackward);
  TrainOptions options = given_options;
  if (communicator != nullptr && communicator->rank() > 0) options.quiet = true;  // rank 0 speaks
  Run run(experiment, options);
  training_loop::DataParallel parallel(communicator, *experiment.graph, experiment.distributed);
  run.parallel = &parallel;
  run.rank = parallel.rank();
  // Setup may keep ranks waiting for rank 0 far longer than a step (a cache to build, statistics
  // to fit): the watchdog guards the training loop only.
  if (communicator != nullptr) communicator->set_watchdog(0);

  std::optional<OutputLock> lock;
  std::vector<fs::path> previous_run;
  parallel.agree("checking the output folder", [&] {
    if (run.writes_files()) previous_run = prepare_output(run, lock);
  });
  parallel.agree("checking the model against the data", [&] {
    run.plugin_records = check_model_fits_data(experiment, registries);
    check_global_batch(experiment, parallel.ranks());
  });
  if (options.validate_only) return {};

  const auto data_start = Clock::now();
  RunData data;
  // A decoded cache is built by the first rank to open the data; rank 0 builds it, the others
  // open it once it is there.
  const bool rank0_first = experiment.data.cache.has_value() && parallel.ranks() > 1;
  for (const bool rank0_turn : rank0_first ? std::vector<bool>{true, false} : std::vector<bool>{true}) {
    parallel.agree("opening the data", [&] {
      if (!rank0_first || rank0_turn == (run.rank == 0)) data = open_run_data(experiment, registries);
    });
  }
  check_same_data(parallel, data);
  parallel.agree("fitting the transforms", [&] { prepare_transforms(run, data); });
  const double data_seconds = seconds_since(data_start);
  run.train_images = data.train.size();
  run.validation_images = data.val.size();
  run.test_images = data.test.size();
  run.steps = (run.train_images + experiment.train.batch_size - 1) / experiment.train.batch_size;

  parallel.agree("restoring the run", [&] { restore_or_start(run, run.validation_images > 0); });
  share_run_state(run);
  delete_previous_run(previous_run, options.quiet);
  EpochBatches batches(experiment, data, parallel.rank(), parallel.ranks());
  if (batches.steps() > run.steps || (parallel.ranks() == 1 && batches.steps() != run.steps))
    fail("internal: the loader plans {} batches, the trainer {}", batches.steps(), run.steps);
  print_run_header(run, data_seconds);

  Context context{true, &experiment.rng, experiment.backend.get(), nullptr, communicator};
  Progress progress(options.quiet ? "none" : options.progress, experiment.train.epochs, run.steps);
  run.progress = &progress;
  run.resident_before_model = resident_bytes();
  run.initial_loss = initial_loss_check(run, data, context);
  if (communicator != nullptr) communicator->set_watchdog(experiment.distributed.watchdog_seconds);
  return train_loop(run, data, batches, context, builtin_hooks(run, on_epoch));
}

}  // namespace strata
