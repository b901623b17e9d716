#include "strata/training/data_loader.hpp"

#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>
#include <tbb/task_group.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <optional>

#include "strata/error.hpp"
#include "strata/random.hpp"

namespace strata {

namespace {

// Samples per task: enough to amortize a task, few enough to spread a batch over the cores.
constexpr std::size_t kSamplesPerTask = 4;
// The skip messages kept per epoch (the count covers all of them).
constexpr std::size_t kSkipExamples = 3;

}  // namespace

std::vector<int64_t> epoch_order(uint32_t seed, int64_t epoch, int64_t rows, bool shuffle) {
  std::vector<int64_t> order(static_cast<std::size_t>(rows));
  std::iota(order.begin(), order.end(), 0);
  if (shuffle) {
    Stream stream(seed, kEpochOrderStream + static_cast<uint64_t>(epoch));
    stream.shuffle(order.begin(), order.end());
  }
  return order;
}

Rng sample_rng(uint32_t seed, int64_t epoch, int64_t position) {
  uint64_t h = splitmix64(seed);
  h = splitmix64(h ^ static_cast<uint64_t>(epoch));
  h = splitmix64(h ^ static_cast<uint64_t>(position));
  return Rng(static_cast<uint32_t>(h ^ (h >> 32)));
}

struct BatchLoader::Impl {
  struct Buffer {
    Tensor images;
    std::vector<int32_t> labels;
    int64_t count = 0;
    std::vector<std::string> skips;
  };
  Buffer buffers[2];
  tbb::task_group tasks;
  std::optional<int64_t> pending;  // the batch a background task is assembling, if any

  void wait() {
    if (!pending) return;
    pending.reset();
    tasks.wait();  // rethrows an error from the task
  }
};

BatchLoader::BatchLoader(SampleSet samples, std::vector<std::shared_ptr<const Transform>> transforms,
                         const Shape& sample_shape, LoaderOptions options)
    : impl_(std::make_unique<Impl>()),
      samples_(std::move(samples)),
      transforms_(std::move(transforms)),
      sample_shape_(sample_shape),
      options_(options) {
  if (options_.batch_size < 1)
    fail("{} loader: the batch size must be at least 1, got {}", samples_.name, options_.batch_size);
  if (options_.ranks < 1 || options_.rank < 0 || options_.rank >= options_.ranks)
    fail("{} loader: rank {} of {} does not exist", samples_.name, options_.rank, options_.ranks);
  if (sample_shape_.rank() != 3 || sample_shape_.numel() <= 0)
    fail("{} loader: the sample shape must be [C, H, W], got {}", samples_.name, sample_shape_.str());
  for (auto& buffer : impl_->buffers) {
    buffer.images = Tensor(sample_shape_.with_batch(options_.batch_size));
    buffer.labels.resize(options_.batch_size);
  }
  positions_ = shard(epoch_order(0, 0, samples_.size(), false), options_.rank, options_.ranks);
}

BatchLoader::~BatchLoader() {
  try {
    impl_->wait();
  } catch (...) {
    // The batch is no longer wanted; its error was never going to be seen.
  }
}

int64_t BatchLoader::batches_per_epoch() const {
  const auto n = static_cast<int64_t>(positions_.size());
  return (n + options_.batch_size - 1) / options_.batch_size;
}

void BatchLoader::start_epoch(int64_t epoch, std::vector<int64_t> order, int64_t first_batch) {
  impl_->wait();
  if (order.empty()) order = epoch_order(0, 0, samples_.size(), false);
  if (static_cast<int64_t>(order.size()) != samples_.size()) {
    fail("{} loader: the epoch order has {} positions for {} samples", samples_.name, order.size(),
         samples_.size());
  }
  positions_ = shard(order, options_.rank, options_.ranks);
  if (first_batch < 0 || (first_batch > 0 && first_batch >= batches_per_epoch())) {
    fail("{} loader: cannot start an epoch of {} batches at batch {}", samples_.name,
         batches_per_epoch(), first_batch + 1);
  }
  epoch_ = epoch;
  next_batch_ = first_batch;
  skipped_ = 0;
  skip_examples_.clear();
  if (batches_per_epoch() > 0) {
    impl_->pending = first_batch;
    Impl::Buffer& target = impl_->buffers[first_batch % 2];
    impl_->tasks.run([this, first_batch, &target] {
      target.count = assemble(first_batch, target.images, target.labels, &target.skips);
    });
  }
}

Batch BatchLoader::next() {
  const int64_t index = next_batch_;
  if (index >= batches_per_epoch()) {
    fail("{} loader: batch {} requested, but an epoch has {}", samples_.name, index + 1,
         batches_per_epoch());
  }
  Impl::Buffer& buffer = impl_->buffers[index % 2];
  if (impl_->pending == index) {
    impl_->wait();
  } else {
    impl_->wait();
    buffer.count = assemble(index, buffer.images, buffer.labels, &buffer.skips);
  }
  ++next_batch_;
  if (next_batch_ < batches_per_epoch()) {
    const int64_t following = next_batch_;
    Impl::Buffer& target = impl_->buffers[following % 2];
    impl_->pending = following;
    impl_->tasks.run([this, following, &target] {
      target.count = assemble(following, target.images, target.labels, &target.skips);
    });
  }
  const auto total = static_cast<int64_t>(positions_.size());
  const int64_t planned = std::min(options_.batch_size, total - index * options_.batch_size);
  const int64_t n = buffer.count;
  skipped_ += planned - n;
  for (std::string& message : buffer.skips) {
    if (skip_examples_.size() < kSkipExamples) skip_examples_.push_back(std::move(message));
  }
  Batch batch;
  batch.images = n == options_.batch_size ? buffer.images : buffer.images.batch_slice(0, n);
  batch.labels = std::span<const int32_t>(buffer.labels.data(), static_cast<std::size_t>(n));
  batch.skipped = planned - n;
  return batch;
}

int64_t BatchLoader::assemble(int64_t index, Tensor& images, std::vector<int32_t>& labels,
                              std::vector<std::string>* skips) const {
  const auto total = static_cast<int64_t>(positions_.size());
  const int64_t begin = index * options_.batch_size;
  const int64_t n = std::min(options_.batch_size, total - begin);
  if (n <= 0 || images.dim(0) < n || static_cast<int64_t>(labels.size()) < n) {
    fail("{} loader: batch {} does not fit (positions {} of {}, buffer of {})", samples_.name,
         index, begin, total, images.dim(0));
  }
  const int64_t sample_size = sample_shape_.numel();
  // Per slot, only when skipping: the message of a skipped sample (empty: read). Without
  // skip_bad a bad sample throws, so a training step allocates nothing here.
  std::vector<std::string> bad(options_.skip_bad ? static_cast<std::size_t>(n) : 0);
  auto body = [&](const tbb::blocked_range<int64_t>& range) {
    // Per thread and kept: a decoded photo is megabytes, so its buffers are reused, not remade.
    thread_local Image image, scratch;
    for (int64_t i = range.begin(); i != range.end(); ++i) {
      const int64_t position = positions_[begin + i];
      const int64_t row = samples_.rows[position];
      labels[i] = samples_.reader->labels()[row];
      try {
        samples_.reader->read(row, image);
      } catch (const BadSample& error) {
        if (!options_.skip_bad) throw;
        bad[i] = error.what();
        continue;
      }
      if (options_.augment) {
        Rng rng = sample_rng(options_.seed, epoch_, position);
        for (const auto& transform : transforms_) transform->augment(image, scratch, rng);
      } else {
        for (const auto& transform : transforms_) transform->apply(image, scratch);
      }
      if (image.shape() != sample_shape_) {
        fail("{} {}: is {} after the transforms, but the model takes {}", samples_.name,
             samples_.reader->describe(row), image.shape().str(), sample_shape_.str());
      }
      std::memcpy(images.data() + i * sample_size, image.pixels.data(), sample_size * sizeof(float));
    }
  };
  tbb::parallel_for(tbb::blocked_range<int64_t>(0, n, kSamplesPerTask), body);
  if (skips) skips->clear();
  if (bad.empty()) return n;
  // Close the gaps that skipped samples left, in order.
  int64_t kept = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (!bad[i].empty()) {
      if (skips && skips->size() < kSkipExamples) skips->push_back(std::move(bad[i]));
      continue;
    }
    if (kept != i) {
      std::memmove(images.data() + kept * sample_size, images.data() + i * sample_size,
                   sample_size * sizeof(float));
      labels[kept] = labels[i];
    }
    ++kept;
  }
  return kept;
}

Split read_all(const SampleSet& samples, const std::vector<std::shared_ptr<const Transform>>& transforms,
               const Shape& sample_shape, int64_t batch_size) {
  Split split;
  split.images = Tensor(sample_shape.with_batch(samples.size()));
  split.labels.reserve(samples.rows.size());
  if (samples.size() == 0) return split;
  LoaderOptions options;
  options.batch_size = std::min(batch_size, samples.size());
  BatchLoader loader(samples, transforms, sample_shape, options);
  loader.start_epoch(0);
  int64_t filled = 0;
  for (int64_t b = 0; b < loader.batches_per_epoch(); ++b) {
    const Batch batch = loader.next();
    std::memcpy(split.images.data() + filled * sample_shape.numel(), batch.images.data(),
                batch.images.numel() * sizeof(float));
    split.labels.insert(split.labels.end(), batch.labels.begin(), batch.labels.end());
    filled += batch.size();
  }
  return split;
}

}  // namespace strata
