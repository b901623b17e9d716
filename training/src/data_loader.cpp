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


// Samples per task: a sample is a copy and a few cheap passes, so give each task several.
constexpr std::size_t kSamplesPerTask = 16;

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

Rng sample_rng(uint32_t seed, int64_t epoch, int64_t row) {
  uint64_t h = splitmix64(seed);
  h = splitmix64(h ^ static_cast<uint64_t>(epoch));
  h = splitmix64(h ^ static_cast<uint64_t>(row));
  return Rng(static_cast<uint32_t>(h ^ (h >> 32)));
}

struct TrainingLoader::Impl {
  struct Buffer {
    Tensor images;
    std::vector<int32_t> labels;
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

TrainingLoader::TrainingLoader(const Split& train,
                               std::vector<std::shared_ptr<const Transform>> augment,
                               int64_t batch_size, uint32_t seed)
    : impl_(std::make_unique<Impl>()),
      train_(train),
      augment_(std::move(augment)),
      batch_size_(batch_size),
      seed_(seed) {
  if (batch_size_ < 1)
    fail("training loader: the batch size must be at least 1, got {}", batch_size_);
  shapes_.push_back(train_.images.shape().without_batch());
  for (const auto& transform : augment_) {
    if (!transform->random()) {
      fail("training loader: transform {} is not random; it belongs in data.preprocess",
           transform->type());
    }
    shapes_.push_back(transform->output_shape(shapes_.back()));
  }
  output_sample_ = shapes_.back();
  for (auto& buffer : impl_->buffers) {
    buffer.images = Tensor(output_sample_.with_batch(batch_size_));
    buffer.labels.resize(batch_size_);
  }
}

TrainingLoader::~TrainingLoader() {
  try {
    impl_->wait();
  } catch (...) {
    // The batch is no longer wanted; its error was never going to be seen.
  }
}

int64_t TrainingLoader::batches_per_epoch() const {
  const auto n = static_cast<int64_t>(train_.labels.size());
  return (n + batch_size_ - 1) / batch_size_;
}

void TrainingLoader::start_epoch(int64_t epoch, std::vector<int64_t> order, int64_t first_batch) {
  impl_->wait();
  if (order.size() != train_.labels.size()) {
    fail("training loader: the epoch order has {} rows for {} training images", order.size(),
         train_.labels.size());
  }
  if (first_batch < 0 || (first_batch > 0 && first_batch >= batches_per_epoch())) {
    fail("training loader: cannot start an epoch of {} batches at batch {}", batches_per_epoch(),
         first_batch + 1);
  }
  epoch_ = epoch;
  order_ = std::move(order);
  next_batch_ = first_batch;
  if (batches_per_epoch() > 0) {
    impl_->pending = first_batch;
    Impl::Buffer& target = impl_->buffers[first_batch % 2];
    impl_->tasks.run(
        [this, first_batch, &target] { assemble(first_batch, target.images, target.labels); });
  }
}

Batch TrainingLoader::next() {
  const int64_t index = next_batch_;
  if (index >= batches_per_epoch()) {
    fail("training loader: batch {} requested, but an epoch has {}", index + 1,
         batches_per_epoch());
  }
  Impl::Buffer& buffer = impl_->buffers[index % 2];
  if (impl_->pending == index) {
    impl_->wait();
  } else {
    impl_->wait();
    assemble(index, buffer.images, buffer.labels);
  }
  ++next_batch_;
  if (next_batch_ < batches_per_epoch()) {
    const int64_t following = next_batch_;
    Impl::Buffer& target = impl_->buffers[following % 2];
    impl_->pending = following;
    impl_->tasks.run(
        [this, following, &target] { assemble(following, target.images, target.labels); });
  }
  const auto total = static_cast<int64_t>(train_.labels.size());
  const int64_t n = std::min(batch_size_, total - index * batch_size_);
  Batch batch;
  batch.images = n == batch_size_ ? buffer.images : buffer.images.batch_slice(0, n);
  batch.labels = std::span<const int32_t>(buffer.labels.data(), static_cast<std::size_t>(n));
  return batch;
}

void TrainingLoader::assemble(int64_t index, Tensor& images, std::vector<int32_t>& labels) const {
  const auto total = static_cast<int64_t>(order_.size());
  const int64_t begin = index * batch_size_;
  const int64_t n = std::min(batch_size_, total - begin);
  if (n <= 0 || images.dim(0) < n || static_cast<int64_t>(labels.size()) < n) {
    fail("training loader: batch {} does not fit (rows {} of {}, buffer of {})", index, begin,
         total, images.dim(0));
  }
  const int64_t in_size = shapes_.front().numel();
  const int64_t out_size = output_sample_.numel();
  int64_t largest = 0;
  for (const Shape& shape : shapes_) largest = std::max(largest, shape.numel());

  auto body = [&](const tbb::blocked_range<int64_t>& range) {
    std::vector<float> scratch[2];
    if (augment_.size() > 1) {
      scratch[0].resize(largest);
      scratch[1].resize(largest);
    }
    for (int64_t i = range.begin(); i != range.end(); ++i) {
      const int64_t row = order_[begin + i];
      labels[i] = train_.labels[row];
      const float* source = train_.images.data() + row * in_size;
      float* target = images.data() + i * out_size;
      if (augment_.empty()) {
        std::memcpy(target, source, in_size * sizeof(float));
        continue;
      }
      Rng rng = sample_rng(seed_, epoch_, row);
      for (std::size_t t = 0; t < augment_.size(); ++t) {
        const bool last = t + 1 == augment_.size();
        float* out = last ? target : scratch[t % 2].data();
        augment_[t]->augment(source, out, rng);
        source = out;
      }
    }
  };
  tbb::parallel_for(tbb::blocked_range<int64_t>(0, n, kSamplesPerTask), body);
}

}  // namespace strata
