#include "strata/analysis.hpp"

#include <algorithm>
#include <cstdio>
#include <set>

#include "strata/backend.hpp"
#include "strata/error.hpp"
#include "strata/trainer.hpp"

namespace strata {

namespace fs = std::filesystem;

namespace {

template <class R>
void note_owner(const R& registry, const std::string& type, std::vector<PluginRecord>& out) {
  auto it = registry.entries().find(type);
  if (it == registry.entries().end()) return;
  const PluginRef& owner = it->second.owner;
  if (!owner || owner->path.empty()) return;  // registered by the host program
  for (const PluginRecord& record : out) {
    if (record.name == owner->name) return;
  }
  out.push_back({owner->name, owner->version, owner->path.string()});
}

}  // namespace

std::vector<PluginRecord> plugins_needed(
    const Registries& registries, const Graph& graph, const std::string& backend,
    const std::string& dataset, const std::string& loss,
    const std::vector<std::shared_ptr<Transform>>& transforms) {
  std::vector<PluginRecord> records;
  for (std::size_t i = 0; i < graph.size(); ++i) {
    note_owner(registries.layers, std::string(graph.layer(i).type()), records);
  }
  note_owner(registries.backends, backend, records);
  note_owner(registries.backends, "reference", records);  // the fallback for every kernel
  for (const auto& [key, entry] : registries.kernels.entries()) {
    if ((key.second == backend || key.second == "reference") && entry.owner &&
        !entry.owner->path.empty() &&
        std::none_of(records.begin(), records.end(),
                     [&owner = entry.owner](const PluginRecord& r) { return r.name == owner->name; })) {
      records.push_back({entry.owner->name, entry.owner->version, entry.owner->path.string()});
    }
  }
  // Building a graph runs its parameters' initializers (before the weights are loaded), so every
  // initializer plugin is needed.
  for (const auto& [type, entry] : registries.initializers.entries())
    note_owner(registries.initializers, type, records);
  note_owner(registries.datasets, dataset, records);
  note_owner(registries.losses, loss, records);
  for (const auto& transform : transforms)
    note_owner(registries.transforms, std::string(transform->type()), records);
  std::sort(records.begin(), records.end(),
            [](const PluginRecord& a, const PluginRecord& b) { return a.name < b.name; });
  return records;
}

void ensure_plugins_loaded(const std::vector<PluginRecord>& plugins, PluginLoader& loader,
                           const fs::path& checkpoint) {
  for (const PluginRecord& record : plugins) {
    auto loaded = [&]() -> PluginRef {
      for (const PluginRef& plugin : loader.plugins()) {
        if (plugin->name == record.name) return plugin;
      }
      return nullptr;
    };
    PluginRef plugin = loaded();
    std::error_code ec;
    if (!plugin && !record.path.empty() && fs::is_regular_file(record.path, ec)) {
      loader.load_file(record.path);
      plugin = loaded();
      if (!plugin) {
        fail("checkpoint {}: needs plugin '{}' version {}, but {} holds another plugin",
             checkpoint.string(), record.name, record.version, record.path);
      }
    }
    if (!plugin) {
      fail(
          "checkpoint {}: needs plugin '{}' version {}, which is not loaded and is no longer at "
          "{}; "
          "put the folder of libstrata_{}.so in STRATA_PLUGIN_PATH",
          checkpoint.string(), record.name, record.version,
          record.path.empty() ? std::string("(no path recorded)") : record.path, record.name);
    }
    if (plugin->version != record.version) {
      std::fprintf(
          stderr,
          "note: checkpoint %s was saved with plugin '%s' version %s; using version %s (%s)\n",
          checkpoint.c_str(), record.name.c_str(), record.version.c_str(), plugin->version.c_str(),
          plugin->path.c_str());
    }
  }
}

TrainedModel::TrainedModel(const fs::path& checkpoint, Registries& registries, PluginLoader& loader,
                           const TrainedModelOptions& options)
    : path_(checkpoint), registries_(registries) {
  experiment_yaml_ = load_checkpoint_experiment(checkpoint);
  plugins_ = load_checkpoint_plugins(checkpoint);
  training_ = load_checkpoint_training_state(checkpoint);
  ensure_plugins_loaded(plugins_, loader, checkpoint);
  experiment_ = Config::parse_string(experiment_yaml_, checkpoint.string() + ":/experiment");

  seed_ = static_cast<uint32_t>(experiment_.get<int64_t>("seed", 1));
  const std::string backend_name =
      options.backend.empty() ? experiment_.get<std::string>("backend", "tbb") : options.backend;
  backend_ = registries.backends.create(backend_name, Config{});
  backend_->set_threads(options.threads);
  rng_ = std::make_unique<Rng>(seed_);
  const Config model = experiment_.at("model");
  graph_ = std::make_unique<Graph>(model, registries, backend_name, *rng_);
  std::vector<NamedTensor> state = graph_->state_tensors();
  load_checkpoint_tensors(checkpoint, "model", state);

  // The data section as the trainer reads it (the same function), so every key a training run
  // accepts is accepted here: augment is checked but not used (evaluation is not augmented).
  DataSettings data = read_data_settings(experiment_.at("data"), registries);
  validation_ = data.validation;
  train_limit_ = data.train_limit;
  test_limit_ = data.test_limit;
  transforms_ = std::move(data.preprocess);
  augment_ = std::move(data.augment);
  // Without augmentation the raw images have the model's input shape; with it (a crop may shrink
  // them) the preprocessing is set up on the first images it sees.
  if (augment_.empty()) set_up_preprocessing(graph_->input_shape());
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
  for (const auto& transform : augment_) {
    transform->setup(shape);
    shape = transform->output_shape(shape);
  }
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
  if (images.rank() != graph_->input_shape().rank() + 1 ||
      (augment_.empty() && images.shape().without_batch() != graph_->input_shape())) {
    fail("images of shape {} cannot be preprocessed for a model whose input is [N, {}]",
         images.shape().str(), fmt::join(graph_->input_shape().dims(), ", "));
  }
  const Shape raw = images.shape().without_batch();
  set_up_preprocessing(raw);
  for (const auto& transform : transforms_) transform->apply(images);
  // Then, as the trainer does for evaluation images, the deterministic counterpart of each
  // data.augment transform (a centre crop for random_crop, nothing for hflip).
  for (const auto& transform : augment_) transform->apply(images);
  if (images.shape().without_batch() != graph_->input_shape()) {
    fail(
        "images of shape [N, {}] become [N, {}] through data.preprocess and data.augment, but the "
        "model's input is [N, {}]",
        fmt::join(raw.dims(), ", "), fmt::join(images.shape().without_batch().dims(), ", "),
        fmt::join(graph_->input_shape().dims(), ", "));
  }
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
  for (const std::string& name : layers) {
    const int index = graph_->index_of(name);
    if (index < 0)
      fail("the model has no layer '{}'\n  {}", name, suggestion_text(name, known, "layers"));
    outputs.push_back(
        {name, Tensor(graph_->layer(index).output_shape().with_batch(images.dim(0)))});
  }
  Context context{false, rng_.get(), backend_.get()};
  constexpr int64_t kBatch = 256;
  const int64_t n = images.dim(0);
  for (int64_t begin = 0; begin < n; begin += kBatch) {
    const int64_t end = std::min(n, begin + kBatch);
    graph_->forward(context, images.batch_slice(begin, end));
    for (NamedTensor& output : outputs) {
      Tensor rows = output.tensor.batch_slice(begin, end);
      rows.copy_from(graph_->activation(output.name));
    }
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

Split TrainedModel::load_split(const std::string& split) {
  if (split != "train" && split != "val" && split != "test") {
    fail("split '{}': expected train, val or test", split);
  }
  Split result;
  if (split == "test") {
    result = first_rows(dataset().load("test"), test_limit_);
  } else {
    TrainValSplit parts =
        split_validation(first_rows(dataset().load("train"), train_limit_), validation_, seed_);
    if (split == "val" && validation_ <= 0) {
      fail("checkpoint {}: the experiment held out no validation split (data.validation is 0)",
           path_.string());
    }
    result = split == "val" ? std::move(parts.val) : std::move(parts.train);
  }
  preprocess(result.images);
  return result;
}

Loss& TrainedModel::loss() {
  if (!loss_) {
    std::optional<Config> loss_cfg = experiment_.find("loss");
    loss_ = loss_cfg ? registries_.losses.create(*loss_cfg)
                     : registries_.losses.create("softmax_cross_entropy", Config{});
  }
  return *loss_;
}

}  // namespace strata
