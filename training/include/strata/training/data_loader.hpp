// strata/training/data_loader.hpp: training batches, assembled in parallel and one batch ahead.
//
// WHAT THIS OBJECT REPRESENTS
//   The trainer's source of training mini-batches. An epoch is a permutation `order` of the
//   training rows; batch k holds rows order[k*B, min((k+1)*B, N)). Each sample is copied from the
//   (preprocessed) training split and passed through the random transforms of `data.augment`, in
//   the order listed, with its own generator sample_rng(seed, epoch, row).
//
//   Samples of a batch are assembled in parallel (tbb::parallel_for), and while the caller trains
//   on batch k, batch k+1 is assembled in a background TBB task (two buffers, used in turn), so
//   the cores do not wait for data. Validation and test images never pass through here.
//
// ENSURES
//   - Determinism: a batch depends only on (split, transforms, seed, epoch, order), never on the
//     thread count or on timing.
//   - next() returns views that stay valid until the following next() or start_epoch().
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "strata/dataset.hpp"

namespace strata {

// The generator of one training sample in one epoch: a function of (seed, epoch, row) only
// (a SplitMix64 hash of the three seeds std::mt19937).
Rng sample_rng(uint32_t seed, int64_t epoch, int64_t row);

// The order of the `rows` training rows in epoch `epoch` (0-based): with `shuffle`, a Fisher-Yates
// permutation drawn by strata::Stream(seed, kEpochOrderStream + epoch) (strata/random.hpp), the
// same with every standard library; without, 0, 1, ..., rows - 1. A function of its arguments
// only, so a resumed run (even one stopped mid-epoch) orders every epoch as an uninterrupted one.
inline constexpr uint64_t kEpochOrderStream = 0x6F72646572000000ull;  // "order"
std::vector<int64_t> epoch_order(uint32_t seed, int64_t epoch, int64_t rows, bool shuffle = true);

struct Batch {
  Tensor images;                    // [n, C, H, W]: the model's input shape
  std::span<const int32_t> labels;  // n labels
  int64_t size() const { return static_cast<int64_t>(labels.size()); }
};

class TrainingLoader {
 public:
  // `augment` are set-up random transforms (may be empty); `train` must outlive the loader.
  TrainingLoader(const Split& train, std::vector<std::shared_ptr<const Transform>> augment,
                 int64_t batch_size, uint32_t seed);
  ~TrainingLoader();
  TrainingLoader(const TrainingLoader&) = delete;
  TrainingLoader& operator=(const TrainingLoader&) = delete;

  int64_t batches_per_epoch() const;
  const Shape& sample_shape() const { return output_sample_; }  // after augmentation

  // Begins epoch `epoch` (0-based) over the rows `order` (a permutation of the training rows),
  // and starts assembling its batch `first_batch` (0, or where an interrupted epoch resumes;
  // the batches are the same as those of an epoch started at 0).
  void start_epoch(int64_t epoch, std::vector<int64_t> order, int64_t first_batch = 0);
  // The epoch's next batch (waits for it if needed), and starts assembling the one after.
  // Calling it more than batches_per_epoch() times in an epoch is an Error.
  Batch next();

  // Assembles batch `index` of the current epoch into `images`/`labels` on the calling thread
  // (parallel over samples). next() uses it; exposed for tests.
  void assemble(int64_t index, Tensor& images, std::vector<int32_t>& labels) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  const Split& train_;
  std::vector<std::shared_ptr<const Transform>> augment_;
  std::vector<Shape> shapes_;  // input shape of each transform, then the output shape
  Shape output_sample_;
  int64_t batch_size_;
  uint32_t seed_;
  int64_t epoch_ = 0;
  std::vector<int64_t> order_;
  int64_t next_batch_ = 0;  // index of the batch next() returns
};

}  // namespace strata
