// strata/tools/analysis.hpp: reopen a trained model from its checkpoint alone, for analysis.
//
//   strata::Registries registries;
//   strata::PluginLoader loader(registries);
//   loader.load_default();
//   strata::TrainedModel model("runs/lenet5_fashion/model.h5", registries, loader);
//   strata::Split test = model.load_split("test");           // preprocessed as in training
//   strata::Tensor logits = model.run(test.images);          // [N, classes]
//   auto acts = model.run(test.images, {"conv1", "fc2"});     // any layers' activations
//   strata::Tensor w = model.parameter("conv1/weight");     // [6, 1, 5, 5]
//
// A checkpoint holds everything needed: the experiment (/experiment), the weights (/model), the
// fitted preprocessing (/preprocess) and the plugins it needs by name and version (/plugins). The
// constructor makes sure every recorded plugin is loaded: one already loaded under that name is
// used (a different version is a warning on stderr), otherwise it is looked for by name in the
// trusted plugin folders only (PluginLoader::default_dirs(): the tool's folder and
// STRATA_PLUGIN_PATH); else it is an Error naming the plugin, its version and the folders
// searched. A checkpoint is data and never chooses code: the path it records for a plugin is
// shown, never loaded, and neither are the `plugins:` of the experiment stored inside it. To use
// a plugin from elsewhere, load it into `loader` first. Nothing depends on the current folder.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "strata/checkpoint.hpp"
#include "strata/config.hpp"
#include "strata/dataset.hpp"
#include "strata/graph.hpp"
#include "strata/layer.hpp"
#include "strata/plugin.hpp"
#include "strata/plugin_records.hpp"
#include "strata/registry.hpp"

namespace strata {

struct TrainedModelOptions {
  std::string backend;  // empty: the experiment's backend
  int threads = 0;      // 0: all cores (or the `threads` a --set gave)
  // Overrides of the stored experiment, "key.path=value" as `--set` takes them (value in YAML),
  // applied before anything is built. Only keys that leave the trained model as it is may change
  // (evaluation_may_change()); any other key is an Error that says why.
  std::vector<std::string> set;
};

// Whether `key` (a --set key path) may be changed when a trained model is reloaded: backend,
// threads, train.eval_batch_size (the inference batch) and data.* (which dataset files and rows
// to evaluate on) except data.preprocess, whose fitted statistics are stored in the checkpoint.
// Everything else (model.*, optimizer.*, seed, ...) describes the training that made the weights.
bool evaluation_may_change(std::string_view key);

class TrainedModel {
 public:
  TrainedModel(const std::filesystem::path& checkpoint, Registries& registries,
               PluginLoader& loader, const TrainedModelOptions& options = {});

  const std::filesystem::path& path() const { return path_; }
  const Config& experiment() const { return experiment_; }
  const std::string& experiment_yaml() const { return experiment_yaml_; }
  const std::vector<PluginRecord>& plugins() const { return plugins_; }
  const std::optional<TrainingState>& training() const { return training_; }

  Graph& graph() { return *graph_; }
  // Parameters and buffers, "<layer>/<name>" as in /model; parameter() throws for an unknown name,
  // listing the known ones.
  std::vector<NamedTensor> parameters() { return graph_->state_tensors(); }
  Tensor parameter(const std::string& name);

  // The fitted preprocessing (/preprocess), applied in place to raw images [N, C, H, W], then
  // the deterministic counterpart of data.augment (a centre crop), as for evaluation images.
  void preprocess(Tensor& images) const;
  bool has_preprocessing() const { return !transforms_.empty(); }

  // Inference mode, in batches: the model output [N, ...] for images [N, C, H, W] (already
  // preprocessed), or the activations of the named layers, each [N, ...]. The graph then keeps
  // only the model's output between passes (OutputRetention::kOutput: the memory of a few layer
  // outputs per image, whatever the depth); set OutputRetention::kAll on graph() before running
  // it yourself to read every activation.
  Tensor run(const Tensor& images);
  std::vector<NamedTensor> run(const Tensor& images, const std::vector<std::string>& layers);

  // The experiment's dataset, built from its `data` section.
  Dataset& dataset();
  // The existing files and folders that strings of the experiment's `data` section name (the
  // dataset's files), read from the stored experiment without building the dataset.
  std::vector<std::filesystem::path> dataset_paths() const;
  std::vector<std::string> class_names() { return dataset().class_names(); }
  // "train", "val" or "test": exactly the rows the trainer used (train_limit, test_limit, the
  // seed's validation split), with the checkpoint's preprocessing applied.
  Split load_split(const std::string& split);
  // The same, and in `dataset_rows` the row of the dataset's file (its "train" file for the train
  // and val splits, its "test" file for test) that each row of the result came from.
  Split load_split(const std::string& split, std::vector<int64_t>& dataset_rows);
  // The rows of "train", "val" or "test" the trainer used, read on demand (for a split too large
  // to hold: feed it to a BatchLoader with evaluation_transforms()).
  SampleSet samples(const std::string& split);
  // The model's input [C, H, W], and the batch run() uses (train.eval_batch_size when --set).
  const Shape& input_shape() const { return graph_->input_shape(); }
  int64_t batch_size() const { return batch_; }
  // The data transforms, set up for the dataset's samples with the checkpoint's statistics; their
  // apply() is what evaluation images get.
  std::vector<std::shared_ptr<const Transform>> evaluation_transforms();
  // The experiment's loss (the default loss type when it names none).
  Loss& loss();
  // The data transforms set up for raw images of the model's input shape, with the checkpoint's
  // statistics loaded (no dataset is built), for describing them (`strata export --preprocess`).
  std::vector<std::shared_ptr<const Transform>> model_input_transforms();

 private:
  std::filesystem::path path_;
  std::string experiment_yaml_;
  Config experiment_;
  std::vector<PluginRecord> plugins_;
  std::optional<TrainingState> training_;
  Registries& registries_;
  std::shared_ptr<Backend> backend_;
  std::unique_ptr<Rng> rng_;
  std::unique_ptr<Graph> graph_;
  std::vector<std::shared_ptr<Transform>> transforms_;  // only their deterministic apply()
  // Sets the transforms up for raw samples of `sample` and loads /preprocess into them (again
  // only when the shape changes).
  void set_up_preprocessing(const Shape& sample) const;
  mutable Shape prepared_for_;
  std::shared_ptr<Dataset> dataset_;
  std::shared_ptr<Loss> loss_;
  uint32_t seed_ = 1;
  int64_t batch_ = 256;  // inference batch of run(): train.eval_batch_size when --set
  int64_t validation_ = 0, train_limit_ = 0, test_limit_ = 0;
};

}  // namespace strata
