// strata/training/data_loader.hpp: batches read on demand, assembled in parallel and one batch
// ahead.
//
// WHAT THIS OBJECT REPRESENTS
//   The source of one split's mini-batches: training, validation, test, or the images a transform
//   is fitted on. A SampleSet names the dataset rows the split uses (after train_limit, the
//   validation hold-out, train.overfit). An epoch is an order of those rows (a permutation of
//   their positions 0..n-1, epoch_order()); with `ranks` > 1 this loader reads only its rank's
//   shard of it (strata::shard: positions rank, rank + ranks, ...). Batch k holds the shard's
//   positions [k*B, min((k+1)*B, n)).
//
//   Each sample is read from the dataset (SplitReader::read), passed through the transforms in
//   order -- augment() with its own generator sample_rng(seed, epoch, position) for training,
//   apply() for evaluation -- and copied into the batch. Samples of a batch are assembled in
//   parallel (tbb::parallel_for); while the caller works on batch k, batch k+1 is assembled in a
//   background TBB task (two buffers, used in turn). So memory is two batches and a few decoded
//   images per thread, whatever the dataset's size.
//
//   A sample the reader cannot decode (BadSample) stops the run with the reader's message (which
//   names the file and index), or, with skip_bad, is left out of its batch (the batch is smaller)
//   and counted: skipped() and skip_examples() report them for the current epoch.
//
// ENSURES
//   - Determinism: a batch depends only on (samples, transforms, seed, epoch, order, rank,
//     ranks), never on the thread count or on timing.
//   - next() returns views that stay valid until the following next() or start_epoch().
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "strata/dataset.hpp"

namespace strata {

// The generator of one training sample in one epoch: a function of (seed, epoch, position) only
// (a SplitMix64 hash of the three seeds std::mt19937).
Rng sample_rng(uint32_t seed, int64_t epoch, int64_t position);

// The order of `rows` positions in epoch `epoch` (0-based): with `shuffle`, a Fisher-Yates
// permutation drawn by strata::Stream(seed, kEpochOrderStream + epoch) (strata/random.hpp), the
// same with every standard library; without, 0, 1, ..., rows - 1. A function of its arguments
// only, so a resumed run (even one stopped mid-epoch) orders every epoch as an uninterrupted one.
inline constexpr uint64_t kEpochOrderStream = 0x6F72646572000000ull;  // "order"
std::vector<int64_t> epoch_order(uint32_t seed, int64_t epoch, int64_t rows, bool shuffle = true);

struct Batch {
  Tensor images;                    // [n, C, H, W]: the model's input shape
  std::span<const int32_t> labels;  // n labels
  int64_t skipped = 0;              // samples of this batch left out (on_bad_image: skip)
  int64_t size() const { return static_cast<int64_t>(labels.size()); }
};

struct LoaderOptions {
  int64_t batch_size = 1;
  uint32_t seed = 1;
  bool augment = false;    // training: augment() with per-sample generators; else apply()
  bool skip_bad = false;   // data.on_bad_image: skip
  int rank = 0, ranks = 1;  // the shard of every epoch this loader reads
};

class BatchLoader {
 public:
  // `transforms` are set up (Transform::setup) and fitted; the last one's output (or the
  // dataset's sample) must be `sample_shape`, the model's input, for every sample.
  BatchLoader(SampleSet samples, std::vector<std::shared_ptr<const Transform>> transforms,
              const Shape& sample_shape, LoaderOptions options);
  ~BatchLoader();
  BatchLoader(const BatchLoader&) = delete;
  BatchLoader& operator=(const BatchLoader&) = delete;

  int64_t batches_per_epoch() const;  // over this rank's shard
  const Shape& sample_shape() const { return sample_shape_; }
  const SampleSet& samples() const { return samples_; }

  // Begins epoch `epoch` (0-based) over `order` (a permutation of the positions 0..n-1; empty:
  // 0..n-1 in order), and starts assembling its batch `first_batch` (0, or where an interrupted
  // epoch resumes; the batches are the same as those of an epoch started at 0).
  void start_epoch(int64_t epoch, std::vector<int64_t> order = {}, int64_t first_batch = 0);
  // The epoch's next batch (waits for it if needed), and starts assembling the one after.
  // Calling it more than batches_per_epoch() times in an epoch is an Error.
  Batch next();

  // Samples skipped since start_epoch(), and the messages of the first few.
  int64_t skipped() const { return skipped_; }
  const std::vector<std::string>& skip_examples() const { return skip_examples_; }

  // Assembles batch `index` of the current epoch into `images`/`labels` on the calling thread
  // (parallel over samples); returns how many samples it holds (fewer than the batch's positions
  // when samples were skipped). next() uses it; exposed for tests.
  int64_t assemble(int64_t index, Tensor& images, std::vector<int32_t>& labels,
                   std::vector<std::string>* skips = nullptr) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  SampleSet samples_;
  std::vector<std::shared_ptr<const Transform>> transforms_;
  Shape sample_shape_;
  LoaderOptions options_;
  int64_t epoch_ = 0;
  std::vector<int64_t> positions_;  // this rank's shard of the epoch's order
  int64_t next_batch_ = 0;          // index of the batch next() returns
  int64_t skipped_ = 0;
  std::vector<std::string> skip_examples_;
};

// Reads positions [0, n) of `samples` through `transforms` (apply()) into one tensor
// [n, sample_shape]: a whole (small) split in memory, for tools and tests.
Split read_all(const SampleSet& samples, const std::vector<std::shared_ptr<const Transform>>& transforms,
               const Shape& sample_shape, int64_t batch_size = 256);

}  // namespace strata
