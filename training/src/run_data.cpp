#include "strata/training/run_data.hpp"

#include <algorithm>
#include <atomic>
#include <numeric>
#include <span>

#include "strata/error.hpp"
#include "strata/files.hpp"
#include "strata/random.hpp"
#include "strata/training/data_cache.hpp"

namespace strata {

namespace {

// Opens a split of the dataset (its files listed and labels read, no image decoded yet); an error
// is reported at the data section.
std::shared_ptr<const SplitReader> open_split(const Experiment& run, const Registries& registries,
                                              const char* split) {
  const Config& data_cfg = run.data_config;
  std::shared_ptr<const SplitReader> reader;
  try {
    reader = open_dataset_split(data_cfg, *run.dataset, split, registries, run.yaml);
  } catch (const Error& error) {
    data_cfg.fail(error.what());
  } catch (const std::bad_alloc&) {
    data_cfg.fail(fmt::format("not enough memory to load the {} split (this machine has {})", split,
                              bytes_text(static_cast<double>(physical_memory_bytes()))));
  }
  if (reader == nullptr) data_cfg.fail(fmt::format("the dataset opened no {} split", split));
  const int classes = run.dataset->num_classes();
  const std::span<const int32_t> labels = reader->labels();
  if (static_cast<int64_t>(labels.size()) != reader->size()) {
    data_cfg.fail(fmt::format("the {} split has {} samples but {} labels", split, reader->size(),
                              labels.size()));
  }
  for (std::size_t i = 0; i < labels.size(); ++i) {
    if (labels[i] < 0 || labels[i] >= classes) {
      data_cfg.fail(fmt::format("{} {}: label {} is outside [0, {}) (the dataset has {} classes)",
                                split, reader->describe(static_cast<int64_t>(i)), labels[i],
                                classes, classes));
    }
  }
  return reader;
}

std::vector<int64_t> first_positions(int64_t available, int64_t limit) {
  std::vector<int64_t> rows(static_cast<std::size_t>(limit <= 0 ? available : std::min(available, limit)));
  std::iota(rows.begin(), rows.end(), 0);
  return rows;
}

// The images a transform is fitted on: `rows` of the training split, through the transforms
// before it (their apply()).
class FitSample final : public FitImages {
 public:
  FitSample(const SampleSet& train, std::vector<int64_t> rows,
            std::span<const std::shared_ptr<const Transform>> before, bool skip_bad)
      : train_(train), rows_(std::move(rows)), before_(before), skip_bad_(skip_bad) {}
  int64_t size() const override { return static_cast<int64_t>(rows_.size()); }
  bool read(int64_t i, Image& out) const override {
    thread_local Image scratch;
    try {
      train_.reader->read(rows_.at(static_cast<std::size_t>(i)), out);
    } catch (const BadSample&) {
      if (!skip_bad_) throw;
      skipped_.fetch_add(1);
      return false;
    }
    for (const auto& transform : before_) transform->apply(out, scratch);
    return true;
  }
  int64_t skipped() const { return skipped_.load(); }

 private:
  const SampleSet& train_;
  std::vector<int64_t> rows_;
  std::span<const std::shared_ptr<const Transform>> before_;
  bool skip_bad_;
  mutable std::atomic<int64_t> skipped_{0};
};

}  // namespace

Shape set_up_transforms(Experiment& run) {
  const Shape& from_dataset = run.sample_shape;
  Shape sample = from_dataset;
  for (auto& transform : run.data.transforms) {
    transform->setup(sample);
    sample = transform->output_shape(sample);
  }
  const Shape& input = run.graph->input_shape();
  if (input == sample) return sample;
  if (sample.rank() == 3 && (sample[1] == 0 || sample[2] == 0)) {
    run.config.at("model").fail_key(
        "input", fmt::format("the model input is {} but the dataset's images vary in size ({}); "
                             "give them one size with a transform (resize: [H, W], center_crop "
                             "or random_resized_crop)",
                             input.str(), sample.str()));
  }
  const std::string through =
      sample == from_dataset
          ? std::string()
          : fmt::format(" ({} from the dataset, through the data transforms)", from_dataset.str());
  run.config.at("model").fail_key(
      "input", fmt::format("the model input is {} but the dataset's images are {}{}", input.str(),
                           sample.str(), through));
}

RunData open_run_data(const Experiment& run, const Registries& registries) {
  const Config& data_cfg = run.data_config;
  RunData data;
  data.transforms.assign(run.data.transforms.begin(), run.data.transforms.end());
  data.sample = run.graph->input_shape();
  data.train.name = "train";
  data.train.reader = open_split(run, registries, "train");
  data.train.rows = first_positions(data.train.reader->size(), run.data.train_limit);
  data.test.name = "test";
  data.test.reader = open_split(run, registries, "test");
  data.test.rows = first_positions(data.test.reader->size(), run.data.test_limit);
  const int64_t available = data.train.size();
  const int64_t validation_key = run.data.validation, overfit = run.train.overfit;
  if (validation_key < 0 || (overfit == 0 && validation_key >= available)) {
    data_cfg.fail_key("validation", fmt::format("must be between 0 and {} (the training images), found {}",
                                                available - 1, validation_key));
  }
  if (overfit > 0) {
    if (overfit > available) {
      run.config.at("train").fail_key(
          "overfit",
          fmt::format("asks for {} images, but the training split holds {}", overfit, available));
    }
    data.train.rows.resize(static_cast<std::size_t>(overfit));
  }
  data.val.name = "validation";
  data.val.reader = data.train.reader;
  if (run.validation > 0) {
    const TrainValRows parts = split_validation_rows(data.train.size(), run.validation, run.seed);
    for (int64_t position : parts.val) data.val.rows.push_back(data.train.rows[position]);
    std::vector<int64_t> train_rows;
    for (int64_t position : parts.train) train_rows.push_back(data.train.rows[position]);
    data.train.rows = std::move(train_rows);
  }
  return data;
}

std::vector<int64_t> fit_rows(const SampleSet& train, int64_t fit_samples, uint32_t seed) {
  constexpr uint64_t kFitStream = 0x6669740000000000ull;  // "fit"
  std::vector<int64_t> rows = train.rows;
  if (static_cast<int64_t>(rows.size()) > fit_samples) {
    Stream stream(seed, kFitStream);
    stream.shuffle(rows.begin(), rows.end());
    rows.resize(static_cast<std::size_t>(fit_samples));
    std::sort(rows.begin(), rows.end());
  }
  return rows;
}

LoaderOptions training_loader_options(const Experiment& experiment) {
  LoaderOptions options;
  options.batch_size = experiment.train.batch_size;
  options.seed = experiment.seed;
  options.augment = experiment.train.overfit == 0;  // overfit: no augmentation
  options.skip_bad = experiment.data.skip_bad_images;
  return options;
}

int64_t fit_transforms(const Experiment& experiment, const RunData& data) {
  int64_t skipped = 0;
  const auto& transforms = experiment.data.transforms;
  for (std::size_t i = 0; i < transforms.size(); ++i) {
    if (!transforms[i]->needs_fit()) continue;
    if (data.train.size() == 0) {
      fail("transform {}: there are no training images to fit it on", transforms[i]->type());
    }
    const FitSample sample(
        data.train, fit_rows(data.train, experiment.data.fit_samples, experiment.seed),
        std::span<const std::shared_ptr<const Transform>>(data.transforms.data(), i),
        experiment.data.skip_bad_images);
    transforms[i]->fit(sample);
    skipped += sample.skipped();
  }
  return skipped;
}

}  // namespace strata
