// Reading an experiment file into an Experiment (strata/training/experiment.hpp): every default and
// range check of the top-level keys and of the train, data, optimizer and checkpoint sections.
#include "strata/training/experiment.hpp"

#include <algorithm>
#include <cmath>

#include "strata/error.hpp"
#include "strata/training/checks.hpp"
#include "strata/training/data_cache.hpp"
#include "strata/training/lr_scaling.hpp"

namespace strata {

namespace {

std::string read_epoch_metric(const Config& config, std::string_view key, const std::string& fallback,
                              bool has_validation, std::string_view why_no_validation) {
  const std::string metric = config.get<std::string>(key, fallback);
  const auto& metrics = epoch_metrics();
  if (std::find(metrics.begin(), metrics.end(), metric) == metrics.end()) {
    config.fail_key(key, fmt::format("unknown metric '{}'\n  {}", metric,
                                     suggestion_text(metric, metrics, "metrics")));
  }
  if (metric.starts_with("val_") && !has_validation) {
    config.fail_key(key, fmt::format("{} needs a validation split, and {}", metric, why_no_validation));
  }
  return metric;
}

std::vector<std::shared_ptr<Transform>> read_transforms(const Config& data_cfg, std::string_view key,
                                                        bool random, const Registries& registries) {
  std::vector<std::shared_ptr<Transform>> transforms;
  std::optional<Config> list = data_cfg.find(key);
  if (!list) return transforms;
  for (const Config& item : list->items()) {
    std::shared_ptr<Transform> transform = registries.transforms.create(item);
    if (transform->random() != random) {
      item.fail_key("type", random ? fmt::format("'{}' is not a random transform; list it under "
                                                 "data.preprocess",
                                                 transform->type())
                                   : fmt::format("'{}' is a random transform (data augmentation); "
                                                 "list it under data.augment",
                                                 transform->type()));
    }
    transforms.push_back(std::move(transform));
  }
  return transforms;
}

TrainSettings read_train_settings(const Config& train_cfg) {
  TrainSettings train;
  train.epochs = train_cfg.get<int64_t>("epochs");
  train.batch_size = train_cfg.get<int64_t>("batch_size");
  train.eval_batch_size = train_cfg.get<int64_t>("eval_batch_size", 500);
  train.shuffle = train_cfg.get<bool>("shuffle", true);
  if (train.epochs < 1) train_cfg.fail_key("epochs", "must be at least 1");
  if (train.batch_size < 1) train_cfg.fail_key("batch_size", "must be at least 1");
  if (train.eval_batch_size < 1) train_cfg.fail_key("eval_batch_size", "must be at least 1");
  // Babysitting (docs/training.md).
  train.log_every = train_cfg.get<int64_t>("log_every", 10);
  train.diagnostics_every = train_cfg.get<int64_t>("diagnostics_every", 100);
  train.overfit = train_cfg.get<int64_t>("overfit", 0);
  train.explode_factor = train_cfg.get<double>("explode_factor", 3.0);
  if (train.log_every < 0) train_cfg.fail_key("log_every", "must be 0 (off) or positive");
  if (train.diagnostics_every < 0) {
    train_cfg.fail_key("diagnostics_every", "must be 0 (off) or positive");
  }
  if (train.overfit < 0) {
    train_cfg.fail_key("overfit", "must be 0 (off) or a number of training images");
  }
  train.clipping = GradientClipping::read(train_cfg);
  if (!(train.explode_factor == 0 || train.explode_factor > 1)) {
    train_cfg.fail_key("explode_factor",
                       fmt::format("must be 0 (only NaN and Inf stop a run) or above 1, found {}",
                                   train.explode_factor));
  }
  return train;
}

// The batch sizes of `train` for the scopes that do not train: read (and range-checked as for
// training) when given; the section and the keys may be absent.
void read_batch_sizes(Experiment& run, const Config& experiment) {
  std::optional<Config> train_cfg = experiment.find("train");
  if (!train_cfg || !train_cfg->is_map()) return;
  if (train_cfg->has("batch_size")) {
    run.train.batch_size = train_cfg->get<int64_t>("batch_size");
    if (run.train.batch_size < 1) train_cfg->fail_key("batch_size", "must be at least 1");
  }
  if (train_cfg->has("eval_batch_size")) {
    run.train.eval_batch_size = train_cfg->get<int64_t>("eval_batch_size");
    if (run.train.eval_batch_size < 1) train_cfg->fail_key("eval_batch_size", "must be at least 1");
  }
}

// Seed, backend, threads, precision and recompute: the keys every scope reads.
void read_run_keys(Experiment& run, const Config& experiment, const Registries& registries) {
  const int64_t seed_value = experiment.get<int64_t>("seed", 1);
  if (seed_value < 0 || seed_value > int64_t{0xffffffff}) {
    experiment.fail_key("seed", fmt::format("must be between 0 and 4294967295 (2^32 - 1), found {}",
                                            seed_value));
  }
  run.seed = static_cast<uint32_t>(seed_value);
  run.backend_name = experiment.get<std::string>("backend", registries.default_backend());
  run.threads = experiment.get<int>("threads", 0);
  if (run.threads < 0) experiment.fail_key("threads", "must be 0 (all cores) or positive");
  std::optional<Config> backend_key = experiment.find("backend");
  run.backend = registries.backends.create(run.backend_name, backend_key ? *backend_key : Config{});
  run.backend->set_threads(run.threads);
  const std::string precision = experiment.get<std::string>("precision", "fp32");
  const std::optional<Precision> parsed = parse_precision(precision);
  if (!parsed) {
    experiment.fail_key("precision", fmt::format("must be fp32 or bf16, found '{}'", precision));
  }
  run.precision = *parsed;
  run.recompute = experiment.get<bool>("recompute", false);
}

// The type a plugin declared the default of `registry`'s kind, for an experiment without `key`.
template <class Base>
const std::string& default_type(const Registry<Base>& registry, const Config& parent,
                                std::string_view key) {
  if (registry.default_type().empty()) {
    parent.fail(fmt::format("`{}` is not given and no loaded plugin declares a default {} type; "
                            "give `{}: {{type: ...}}`, one of: {}",
                            key, registry.kind(), key, fmt::join(registry.types(), ", ")));
  }
  return registry.default_type();
}

void read_loss(Experiment& run, const Config& experiment, const Registries& registries) {
  std::optional<Config> loss_cfg = experiment.find("loss");
  run.loss_type = loss_cfg ? loss_cfg->get<std::string>("type")
                           : default_type(registries.losses, experiment, "loss");
  run.loss = loss_cfg ? registries.losses.create(*loss_cfg)
                      : registries.losses.create(run.loss_type, Config{});
}

// The optimizer and its schedule, set up on the graph's parameters.
void read_optimizer(Experiment& run, const Config& experiment, const Registries& registries) {
  const Config optimizer_cfg = experiment.at("optimizer");
  // The schedule is nested in the optimizer's section but is not the optimizer's to read: build
  // it first, so the optimizer's unknown-key check finds its keys already read.
  std::optional<Config> schedule_cfg = optimizer_cfg.find("schedule");
  run.schedule = schedule_cfg ? registries.schedules.create(*schedule_cfg)
                              : registries.schedules.create(
                                    default_type(registries.schedules, optimizer_cfg, "schedule"),
                                    Config{});
  // optimizer.lr_scaling (strata/training/lr_scaling.hpp) wraps the schedule; read before the
  // optimizer too, for the same reason.
  if (optimizer_cfg.has("lr_scaling")) {
    const std::string schedule_type =
        schedule_cfg && schedule_cfg->is_map() ? schedule_cfg->get<std::string>("type") : "";
    run.lr_scaling = LrScaling::read(optimizer_cfg, run.required_batch_size(), schedule_type);
    run.schedule = scaled_schedule(*run.lr_scaling, run.schedule);
  }
  run.optimizer = registries.optimizers.create(optimizer_cfg);
  if (!std::isfinite(run.optimizer->base_lr())) {
    optimizer_cfg.fail_key("lr", fmt::format("is {} as a 32-bit float: expected |lr| < 3.4e38",
                                             run.optimizer->base_lr()));
  }
  if (run.lr_scaling && !std::isfinite(run.lr_scaling->peak_lr(run.optimizer->base_lr()))) {
    optimizer_cfg.fail_key(
        "lr_scaling",
        fmt::format("scales lr {} by {} to {} as a 32-bit float", run.optimizer->base_lr(),
                    run.lr_scaling->factor(), run.lr_scaling->peak_lr(run.optimizer->base_lr())));
  }
  run.divergence_advice = divergence_advice(optimizer_cfg);
  std::vector<ParamRef> params = run.graph->params();
  // train.overfit: no regularization. Weight decay is switched off through every parameter's
  // decay_mult, which each optimizer's weight decay is scaled by.
  if (run.train.overfit > 0) {
    for (ParamRef& ref : params) ref.param->decay_mult = 0.0f;
  }
  run.optimizer->setup(params);
}

void read_checkpoint_policy(Experiment& run, const Config& experiment) {
  const bool has_validation = run.validation > 0;
  run.checkpoint.best_metric = run.train.early_stopping ? run.train.early_stopping->metric
                               : has_validation         ? std::string("val_accuracy")
                                                        : std::string("none");
  if (auto checkpoint_cfg = experiment.find("checkpoint")) {
    run.checkpoint.every = checkpoint_cfg->get<int64_t>("every", 1);
    if (run.checkpoint.every < 0) {
      checkpoint_cfg->fail_key("every", "must be 0 (only at the end) or positive");
    }
    if (checkpoint_cfg->has("best") && checkpoint_cfg->get<std::string>("best") != "none") {
      run.checkpoint.best_metric = read_epoch_metric(
          *checkpoint_cfg, "best", run.checkpoint.best_metric, has_validation, run.why_no_validation);
    } else if (checkpoint_cfg->has("best")) {
      run.checkpoint.best_metric = "none";
    }
  }
}

// The `distributed` section, when given (its defaults are not recorded in the experiment as
// run: a plain run's checkpoint stays as it was).
DistributedSettings read_distributed(const Config& experiment) {
  DistributedSettings settings;
  const auto section = experiment.find("distributed");
  if (!section) return settings;
  settings.bucket_mb = section->get<double>("bucket_mb", settings.bucket_mb);
  if (!(settings.bucket_mb > 0 && settings.bucket_mb <= 4096)) {
    section->fail_key("bucket_mb", fmt::format("must be in (0, 4096] MiB, found {}", settings.bucket_mb));
  }
  settings.overlap = section->get<bool>("overlap", settings.overlap);
  settings.watchdog_seconds = section->get<double>("watchdog_seconds", settings.watchdog_seconds);
  if (!(settings.watchdog_seconds >= 0)) {
    section->fail_key("watchdog_seconds", "must be 0 (off) or a number of seconds");
  }
  settings.check_replicas = section->get<std::string>("check_replicas", settings.check_replicas);
  if (settings.check_replicas != "epoch" && settings.check_replicas != "step" &&
      settings.check_replicas != "never") {
    section->fail_key("check_replicas", fmt::format("must be epoch, step or never, found '{}'",
                                                    settings.check_replicas));
  }
  section->check_unused();
  return settings;
}

// The `train` and `data` sections as training reads them (Scope::training).
void read_training_sections(Experiment& run, const Config& experiment,
                            const Registries& registries) {
  const Config train_cfg = experiment.at("train");
  run.train = read_train_settings(train_cfg);
  run.data_config = experiment.at("data");
  run.data = read_data_settings(run.data_config, registries);
  run.dataset = registries.datasets.create(run.data_config);
  run.sample_shape = run.data.cache ? cached_sample_shape(*run.data.cache, *run.dataset)
                                    : run.dataset->sample_shape();
  run.validation = run.train.overfit > 0 ? 0 : run.data.validation;
  run.why_no_validation = run.train.overfit > 0 ? "train.overfit uses none" : "data.validation is 0";
  if (auto es = train_cfg.find("early_stopping")) {
    EarlyStopping& stopping = run.train.early_stopping.emplace();
    stopping.metric = read_epoch_metric(*es, "metric", "val_accuracy", run.validation > 0,
                                        run.why_no_validation);
    stopping.patience = es->get<int64_t>("patience", 5);
    stopping.min_delta = es->get<double>("min_delta", 0.0);
    if (stopping.patience < 1) es->fail_key("patience", "must be at least 1 epoch");
    if (!(stopping.min_delta >= 0)) es->fail_key("min_delta", "must be >= 0");
  }
}

}  // namespace

const std::vector<std::string>& epoch_metrics() {
  static const std::vector<std::string> metrics = {"val_accuracy", "val_loss", "train_accuracy",
                                                   "train_loss"};
  return metrics;
}

bool metric_is_maximized(const std::string& metric) { return metric.ends_with("accuracy"); }

DataSettings read_data_settings(const Config& data, const Registries& registries) {
  DataSettings settings;
  settings.validation = data.get<int64_t>("validation", 0);
  settings.train_limit = data.get<int64_t>("train_limit", 0);
  settings.test_limit = data.get<int64_t>("test_limit", 0);
  if (settings.train_limit < 0) data.fail_key("train_limit", "must be 0 (all images) or positive");
  if (settings.test_limit < 0) data.fail_key("test_limit", "must be 0 (all images) or positive");
  if (data.find("transforms")) {
    for (const char* older : {"preprocess", "augment"}) {
      if (data.find(older)) {
        data.fail_key(older, fmt::format("give either data.transforms (one list, in order) or "
                                         "data.preprocess and data.augment, not both"));
      }
    }
    for (const Config& item : data.at("transforms").items())
      settings.transforms.push_back(registries.transforms.create(item));
  } else {
    settings.transforms = read_transforms(data, "preprocess", false, registries);
    for (auto& transform : read_transforms(data, "augment", true, registries))
      settings.transforms.push_back(std::move(transform));
  }
  settings.fit_samples = data.get<int64_t>("fit_samples", 10000);
  if (settings.fit_samples < 1) data.fail_key("fit_samples", "must be at least 1");
  const std::string on_bad = data.get<std::string>("on_bad_image", "error");
  if (on_bad != "error" && on_bad != "skip") {
    data.fail_key("on_bad_image", fmt::format("must be error or skip, found '{}'", on_bad));
  }
  settings.skip_bad_images = on_bad == "skip";
  if (auto cache = data.find("cache")) {
    check_cache_keys(*cache);
    settings.cache = *cache;
  }
  return settings;
}

int64_t evaluation_batch(const Graph& graph, const TrainSettings& train) {
  if (train.batch_size < 1 || !graph.samples_independent_in_inference())
    return train.eval_batch_size;
  return std::min(train.eval_batch_size, train.batch_size);
}

int64_t Experiment::required_batch_size() const {
  if (train.batch_size > 0) return train.batch_size;
  return config.at("train").get<int64_t>("batch_size");  // the error for the missing key
}

Experiment Experiment::read(const Config& experiment, const Registries& registries, Scope scope) {
  Experiment run;
  run.config = experiment;
  run.scope = scope;
  read_run_keys(run, experiment, registries);
  if (scope == Scope::training) {
    read_training_sections(run, experiment, registries);
  } else {
    read_batch_sizes(run, experiment);
  }
  run.model_config = experiment.at("model");
  run.rng = Rng(run.seed);
  run.graph =
      scope == Scope::shapes
          ? std::make_unique<Graph>(run.model_config, registries, *run.backend, run.precision)
          : std::make_unique<Graph>(run.model_config, registries, *run.backend, run.rng,
                                    run.precision);
  run.graph->set_recomputation(run.recompute);
  read_loss(run, experiment, registries);
  if (scope == Scope::optimization) read_optimizer(run, experiment, registries);
  if (scope != Scope::training) {
    // The rest of the file (data, checkpoint, plugins, ...) is not this scope's to read; the
    // model's own keys are, and a typo there is an error.
    run.model_config.check_unused();
    experiment.mark_used();
    return run;
  }

  read_optimizer(run, experiment, registries);
  read_checkpoint_policy(run, experiment);
  run.distributed = read_distributed(experiment);
  // `plugins` is handled by the command line tool before the registries are used.
  if (auto plugins = experiment.find("plugins")) plugins->mark_used();
  // `search` is read by `strata search` (docs/search.md); training runs the experiment as written.
  if (auto search = experiment.find("search")) search->mark_used();
  experiment.check_unused();
  // Every key has been read, so every default is recorded: this is the experiment as run.
  run.yaml = experiment.dump();
  return run;
}

}  // namespace strata
