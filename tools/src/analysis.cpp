#include "strata/tools/analysis.hpp"

#include <algorithm>
#include <cstdio>
#include <functional>
#include <numeric>
#include <set>

#include "strata/backend.hpp"
#include "strata/error.hpp"
#include "strata/training/data_cache.hpp"
#include "strata/training/data_loader.hpp"
#include "strata/training/experiment.hpp"
#include "strata/training/trainer.hpp"

namespace strata {

namespace fs = std::filesystem;

bool evaluation_may_change(std::string_view key) {
  auto under = [&](std::string_view prefix) {
    return key == prefix ||
           (key.starts_with(prefix) && (key[prefix.size()] == '.' || key[prefix.size()] == '['));
  };
  // The fitted statistics belong to the listed transforms, position by position.
  if (under("data.preprocess") || under("data.transforms")) return false;
  return key == "backend" || key == "threads" || key == "train.eval_batch_size" ||
         key.starts_with("data.");
}

TrainedModel::TrainedModel(const fs::path& checkpoint, Registries& registries, PluginLoader& loader,
                           const TrainedModelOptions& options)
    : path_(checkpoint), registries_(registries) {
  experiment_yaml_ = load_checkpoint_experiment(checkpoint);
  plugins_ = load_checkpoint_plugins(checkpoint);
  training_ = load_checkpoint_training_state(checkpoint);
  ensure_plugins_loaded(plugins_, loader, checkpoint);
  experiment_ = Config::parse_string(experiment_yaml_, checkpoint.string() + ":/experiment");
  bool set_threads = false, set_batch = false;
  for (const std::string& set : options.set) {
    const auto eq = set.find('=');
    if (eq == std::string::npos || eq == 0) fail("--set {}: expected key.path=value", set);
    const std::string key = set.substr(0, eq);
    if (!evaluation_may_change(key)) {
      const bool model = key == "model" || key.starts_with("model.");
      fail(
          "--set {}: '{}' cannot change when checkpoint {} is reloaded: {}\n  keys that may "
          "change: backend, threads, train.eval_batch_size and data.* (except data.preprocess and data.transforms)",
          set, key, checkpoint.string(),
          model ? "its weights were trained for the stored model (to train a changed model from "
                  "them: strata train EXP.yaml --weights CKPT --weights-partial)"
                : "it describes the training that made the weights, not the evaluation");
    }
    experiment_.set(key, set.substr(eq + 1));
    set_threads = set_threads || key == "threads";
    set_batch = set_batch || key == "train.eval_batch_size";
  }

  // The model as every command builds it (strata/training/experiment.hpp), read from a copy that
  // also takes the options: options.backend, and options.threads unless a --set gave `threads`
  // (the stored `threads` describes the training machine, not this one). No dataset is built.
  Config effective = experiment_.clone();
  if (!options.backend.empty()) effective.set("backend", options.backend);
  if (!set_threads || options.threads != 0) effective.set("threads", std::to_string(options.threads));
  Experiment run = Experiment::read(effective, registries, Experiment::Scope::model);
  seed_ = run.seed;
  backend_ = run.backend;
  if (set_batch) batch_ = run.train.eval_batch_size;
  rng_ = std::make_unique<Rng>(run.rng);
  graph_ = std::move(run.graph);
  loss_ = run.loss;
  std::vector<NamedTensor> state = graph_->state_tensors();
  load_checkpoint_tensors(checkpoint, "model", state);

  // The data section as the trainer reads it (the same function), so every key a training run
  // accepts is accepted here: augment is checked but not used (evaluation is not augmented).
  DataSettings data = read_data_settings(experiment_.at("data"), registries);
  validation_ = data.validation;
  train_limit_ = data.train_limit;
  test_limit_ = data.test_limit;
  transforms_ = std::move(data.transforms);
  // When no transform changes the size, the raw images have the model's input shape; otherwise
  // (a crop, a resize) the transforms are set up on the first images they see.
  bool keeps_size = true;
  for (const auto& transform : transforms_) {
    keeps_size = keeps_size && transform->output_shape(graph_->input_shape()) == graph_->input_shape();
  }
  if (keeps_size) set_up_preprocessing(graph_->input_shape());
}

void TrainedModel::set_up_preprocessing(const Shape& sample) const {
  if (prepared_for_ == sample) return;
  Shape shape = sample;
  std::vector<NamedTensor> preprocess_state;
  for (std::size_t i = 0; i < transforms_.size(); ++i) {
    transforms_[i]->setup(shape);
    shape = transforms_[i]->output_shape(shape);
    for (NamedTensor& t : transforms_[i]->state()) {
      preprocess_state.push_back(
          {fmt::format("{}.{}/{}", i, transforms_[i]->type(), t.name), t.tensor});
    }
  }
  load_checkpoint_tensors(path_, "preprocess", preprocess_state);
  prepared_for_ = sample;
}

Tensor TrainedModel::parameter(const std::string& name) {
  std::vector<std::string> known;
  for (NamedTensor& entry : graph_->state_tensors()) {
    if (entry.name == name) return entry.tensor;
    known.push_back(entry.name);
  }
  fail("checkpoint {}: the model has no parameter or buffer '{}'\n  {}", path_.string(), name,
       suggestion_text(name, known, "parameters"));
}

void TrainedModel::preprocess(Tensor& images) const {
  if (images.rank() != 4) {
    fail("images of shape {} cannot be preprocessed: expected [N, C, H, W] for a model whose input "
         "is [N, {}]",
         images.shape().str(), fmt::join(graph_->input_shape().dims(), ", "));
  }
  const Shape raw = images.shape().without_batch();
  set_up_preprocessing(raw);
  // The deterministic version of every transform, as the trainer gives evaluation images (a
  // centre crop for random_crop, nothing for hflip).
  Tensor out(graph_->input_shape().with_batch(images.dim(0)));
  const int64_t in_size = raw.numel(), out_size = graph_->input_shape().numel();
  Image image, scratch;
  for (int64_t n = 0; n < images.dim(0); ++n) {
    image.resize(raw[0], raw[1], raw[2]);
    std::copy_n(images.data() + n * in_size, in_size, image.pixels.data());
    for (const auto& transform : transforms_) transform->apply(image, scratch);
    if (image.shape() != graph_->input_shape()) {
      fail("images of shape [N, {}] become [N, {}] through the data transforms, but the model's "
           "input is [N, {}]",
           fmt::join(raw.dims(), ", "), fmt::join(image.shape().dims(), ", "),
           fmt::join(graph_->input_shape().dims(), ", "));
    }
    std::copy_n(image.pixels.data(), out_size, out.data() + n * out_size);
  }
  images = std::move(out);
}

std::vector<NamedTensor> TrainedModel::run(const Tensor& images,
                                           const std::vector<std::string>& layers) {
  if (images.rank() != graph_->input_shape().rank() + 1 ||
      images.shape().without_batch() != graph_->input_shape()) {
    fail("input of shape {}, but the model expects [N, {}]", images.shape().str(),
         fmt::join(graph_->input_shape().dims(), ", "));
  }
  std::vector<std::string> known;
  for (std::size_t i = 0; i < graph_->size(); ++i) known.push_back(graph_->name(i));
  std::vector<NamedTensor> outputs;
  std::vector<int> nodes;  // of `outputs`
  for (const std::string& name : layers) {
    const int index = graph_->index_of(name);
    if (index < 0)
      fail("the model has no layer '{}'\n  {}", name, suggestion_text(name, known, "layers"));
    outputs.push_back(
        {name, Tensor(graph_->layer(index).output_shape().with_batch(images.dim(0)))});
    nodes.push_back(index);
  }
  // The graph keeps only the model's output (kOutput): the layers asked for are copied as the
  // forward writes them. A layer whose activation fuses into it never writes its own output, so
  // fusion stays on only when no layer but the last is asked for.
  const int last = static_cast<int>(graph_->size()) - 1;
  graph_->set_output_retention(OutputRetention::kOutput);
  graph_->set_fusion(std::all_of(nodes.begin(), nodes.end(), [&](int i) { return i == last; }));
  Context context{false, rng_.get(), backend_.get()};
  const int64_t n = images.dim(0);
  int64_t begin = 0, end = 0;
  graph_->set_forward_observer([&](std::size_t i, const Tensor& out, const Context&) {
    for (std::size_t k = 0; k < nodes.size(); ++k) {
      if (nodes[k] != static_cast<int>(i)) continue;
      Tensor rows = outputs[k].tensor.batch_slice(begin, end);
      rows.copy_from(out);
    }
  });
  struct Detach {  // the observer refers to this frame: gone with it, also on an error
    Graph& graph;
    ~Detach() { graph.set_forward_observer({}); }
  } detach{*graph_};
  for (begin = 0; begin < n; begin += batch_) {
    end = std::min(n, begin + batch_);
    graph_->forward(context, images.batch_slice(begin, end));
  }
  return outputs;
}

Tensor TrainedModel::run(const Tensor& images) {
  return run(images, {graph_->name(graph_->size() - 1)}).at(0).tensor;
}

Dataset& TrainedModel::dataset() {
  if (!dataset_) {
    // The constructor's read_data_settings() has read (marked used) the keys that are not the
    // reader's, so the reader's unknown-key check sees only its own.
    dataset_ = registries_.datasets.create(experiment_.at("data"));
  }
  return *dataset_;
}

std::vector<fs::path> TrainedModel::dataset_paths() const {
  std::vector<fs::path> paths;
  // A fresh parse: reading the stored experiment's own tree would mark its keys used.
  const Config copy = Config::parse_string(experiment_yaml_, path_.string() + ":/experiment");
  const std::function<void(const Config&)> walk = [&](const Config& node) {
    if (node.is_map()) {
      for (const std::string& key : node.keys()) walk(node.at(key));
    } else if (node.is_sequence()) {
      for (const Config& item : node.items()) walk(item);
    } else if (node.is_scalar()) {
      const std::string text = node.as<std::string>();
      std::error_code ec;
      if (!text.empty() && fs::exists(text, ec)) paths.emplace_back(text);
    }
  };
  if (auto data = copy.find("data")) walk(*data);
  return paths;
}

Split TrainedModel::load_split(const std::string& split) {
  std::vector<int64_t> rows;
  return load_split(split, rows);
}

SampleSet TrainedModel::samples(const std::string& split) {
  if (split != "train" && split != "val" && split != "test") {
    fail("split '{}': expected train, val or test", split);
  }
  SampleSet samples;
  samples.name = split == "val" ? "validation" : split;
  samples.reader = open_dataset_split(experiment_.at("data"), dataset(),
                                      split == "test" ? "test" : "train", registries_,
                                      experiment_.dump());
  const int64_t limit = split == "test" ? test_limit_ : train_limit_;
  const int64_t available = samples.reader->size();
  samples.rows.resize(static_cast<std::size_t>(limit <= 0 ? available : std::min(available, limit)));
  std::iota(samples.rows.begin(), samples.rows.end(), int64_t{0});
  if (split == "test") return samples;
  if (split == "val" && validation_ <= 0) {
    fail("checkpoint {}: the experiment held out no validation split (data.validation is 0)",
         path_.string());
  }
  const TrainValRows rows = split_validation_rows(samples.size(), validation_, seed_);
  samples.rows = split == "val" ? rows.val : rows.train;
  return samples;
}

std::vector<std::shared_ptr<const Transform>> TrainedModel::evaluation_transforms() {
  const Config data = experiment_.at("data");
  set_up_preprocessing(data.find("cache") ? cached_sample_shape(*data.find("cache"), dataset())
                                          : dataset().sample_shape());
  return {transforms_.begin(), transforms_.end()};
}

Split TrainedModel::load_split(const std::string& split, std::vector<int64_t>& dataset_rows) {
  const SampleSet set = samples(split);
  dataset_rows = set.rows;
  return read_all(set, evaluation_transforms(), graph_->input_shape(), batch_);
}

Loss& TrainedModel::loss() { return *loss_; }

std::vector<std::shared_ptr<const Transform>> TrainedModel::model_input_transforms() {
  set_up_preprocessing(graph_->input_shape());
  return {transforms_.begin(), transforms_.end()};
}

}  // namespace strata
