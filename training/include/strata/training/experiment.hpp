// strata/training/experiment.hpp: an experiment file, read once into types.
//
// Every command that runs a model from an experiment (train, bench, summary, gradcheck, forward,
// eval and the analysis API) builds an Experiment from the parsed Config (with its --set overrides)
// and reads nothing of the file itself, so a key has one meaning, one default and one range check
// everywhere. docs/experiment-file.md documents the keys.
//
//   Experiment run = Experiment::read(config, registries);           // the whole run
//   Experiment model = Experiment::read(config, registries, Experiment::Scope::model);
//
// Every scope reads the keys running the model needs (seed, backend, threads, model, loss) and
// builds the backend, the graph on it and the loss. Scope::shapes leaves the parameters at zero
// (a 140M-parameter model stays cheap to account for: `strata summary`); Scope::model initializes
// them from the seed (forward, gradcheck, eval and the analysis API, which then load weights);
// Scope::optimization also builds the optimizer and its schedule (`strata bench`). These scopes
// read train.batch_size and train.eval_batch_size where given (with training's range checks),
// check the model's keys, and leave every other section unread: no dataset is built, no data file
// is needed. Scope::training reads every section, range-checks it, builds the optimizer and
// schedule, and then refuses any key nobody read (a typo anywhere fails before any work); only
// this scope builds the dataset reader, which may open its files.
//
// Defaults the core does not name: without `backend`, the backend a plugin declared the default
// (Registries::default_backend(): tbb when its plugin is loaded, else reference); without `loss`
// or `optimizer.schedule`, the loss and schedule type a plugin declared the default
// (Registry::declare_default(): softmax_cross_entropy, constant). Errors name the file, the key
// path and its line.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "strata/backend.hpp"
#include "strata/config.hpp"
#include "strata/dataset.hpp"
#include "strata/graph.hpp"
#include "strata/layer.hpp"
#include "strata/optimizer.hpp"
#include "strata/registry.hpp"
#include "strata/training/gradient_clipping.hpp"
#include "strata/training/lr_scaling.hpp"

namespace strata {

// The keys of an experiment's `data` section that training reads beside the dataset reader's own
// (docs/data.md): validation, train_limit, test_limit, the transforms, fit_samples, on_bad_image
// and cache. One reader for the trainer and for every tool that rebuilds a trained run from its
// experiment (TrainedModel, so `strata eval`), so that whatever trains also reloads. Errors
// (a negative limit, a random transform under preprocess or the reverse, both `transforms` and
// the older keys) point at the key.
struct DataSettings {
  int64_t validation = 0, train_limit = 0, test_limit = 0;
  // The per-sample pipeline, in order: data.transforms (any transforms, in the torchvision order),
  // or the older data.preprocess (deterministic) followed by data.augment (random).
  std::vector<std::shared_ptr<Transform>> transforms;
  // How many training images (at most) a transform's statistics are fitted on.
  int64_t fit_samples = 10000;
  bool skip_bad_images = false;  // data.on_bad_image: skip (default error)
  std::optional<Config> cache;   // data.cache (strata/training/data_cache.hpp), when given
};
DataSettings read_data_settings(const Config& data, const Registries& registries);

// train.early_stopping.
struct EarlyStopping {
  std::string metric;  // one of epoch_metrics()
  int64_t patience = 5;
  double min_delta = 0;
};

// The per-epoch metrics early stopping and best.h5 may follow, and which way is better.
const std::vector<std::string>& epoch_metrics();
bool metric_is_maximized(const std::string& metric);

// The `train` section.
struct TrainSettings {
  int64_t epochs = 0;
  int64_t batch_size = 0;
  int64_t eval_batch_size = 500;
  bool shuffle = true;
  int64_t log_every = 10;           // 0: off
  int64_t diagnostics_every = 100;  // 0: off
  int64_t overfit = 0;              // 0: off; else train on that many images, no regularization
  double explode_factor = 3.0;      // 0: only NaN and Inf stop a run
  GradientClipping clipping;
  std::optional<EarlyStopping> early_stopping;
};

// The batch validation and test run at: train.eval_batch_size, but never more than a training
// batch when the model maps samples independently in inference (the usual case): the results are
// the same, so a large eval_batch_size costs no memory beyond training's. A model whose layers mix
// the samples in inference (batch_norm without running statistics) gets eval_batch_size as given,
// since its results depend on it.
int64_t evaluation_batch(const Graph& graph, const TrainSettings& train);

// The `checkpoint` section.
struct CheckpointPolicy {
  int64_t every = 1;                // 0: only at the end
  std::string best_metric = "none";  // best.h5 follows this metric; "none": no best.h5
};

// The `distributed` section: how the ranks of an MPI job train together (docs/distributed.md).
// Read always, used only under a launcher; none of it changes what is computed, so a resume may
// change any of it.
struct DistributedSettings {
  double bucket_mb = 25;   // gradient bucket size (MiB of float32), as PyTorch DDP's 25 MB
  bool overlap = true;     // start each bucket's allreduce while backward runs for earlier layers
  double watchdog_seconds = 300;  // a training collective stuck this long aborts the job; 0: off
  std::string check_replicas = "epoch";  // epoch, step or never: hash-compare the replicas
};

class Experiment {
 public:
  enum class Scope { shapes, model, optimization, training };
  static Experiment read(const Config& experiment, const Registries& registries,
                         Scope scope = Scope::training);

  Config config;  // the experiment as given (with --set overrides)
  Scope scope = Scope::training;

  // ---- Every scope ----
  uint32_t seed = 1;         // `seed`, 0 .. 2^32 - 1
  std::string backend_name;  // `backend`, or the default backend
  int threads = 0;           // `threads`; 0: all cores
  Precision precision = Precision::kFp32;  // `precision` (docs/precision.md)
  bool recompute = false;  // `recompute`: training recomputes outputs (docs/memory.md)
  std::shared_ptr<Backend> backend;
  Config model_config;       // the `model` section
  Rng rng;                   // seeded with `seed`, after it initialized the graph (Scope::model on)
  std::unique_ptr<Graph> graph;
  std::string loss_type;     // `loss.type`, or the default loss type
  std::shared_ptr<Loss> loss;
  // train.batch_size and train.eval_batch_size; outside Scope::training only where given
  // (batch_size 0 and eval_batch_size 500 otherwise).
  TrainSettings train;
  // train.batch_size, or the error of a missing `train.batch_size` (for a scope that needs it).
  int64_t required_batch_size() const;

  // ---- Scope::optimization and Scope::training ----
  std::shared_ptr<Optimizer> optimizer;  // set up on graph->params(), weight decay off under overfit
  // The optimizer.schedule (or the default schedule), wrapped by optimizer.lr_scaling when given.
  std::shared_ptr<Schedule> schedule;
  std::optional<LrScaling> lr_scaling;  // optimizer.lr_scaling (strata/training/lr_scaling.hpp)
  std::string divergence_advice;  // what a divergence message advises (strata/training/checks.hpp)

  // ---- Scope::training ----
  Config data_config;        // the `data` section
  std::shared_ptr<Dataset> dataset;  // its reader, built (files not yet loaded)
  Shape sample_shape;  // what the reader gives: the dataset's sample_shape(), or data.cache's
  DataSettings data;         // limits and transforms
  int64_t validation = 0;    // the validation images to hold out (0 under train.overfit)
  std::string why_no_validation;  // "data.validation is 0" or "train.overfit uses none"
  CheckpointPolicy checkpoint;
  DistributedSettings distributed;
  std::string yaml;               // the experiment with every default filled in, as run
};

}  // namespace strata
