// strata/tools/data_bench.hpp: `strata bench --data`, timing an experiment's training input
// pipeline alone, the way the trainer runs it.
//
// WHAT IT MEASURES
//   The experiment is read as `strata train` reads it (Experiment::read, Scope::training); the
//   transforms are set up in order from the dataset's sample_shape() and their output must be the
//   model's input, as the trainer checks. Then, timed separately:
//     open:  open_run_data() -- the splits opened (files listed, labels read), the rows chosen
//            (train_limit, validation hold-out, overfit);
//     fit:   fit_transforms() -- the statistics of the transforms that fit them (normalize without
//            given mean/std), on data.fit_samples training images;
//     load:  a BatchLoader over the training rows with the trainer's options (train.batch_size,
//            seed, augment, data.on_bad_image), epochs ordered by epoch_order(seed, epoch, n,
//            train.shuffle). `warmup` batches are taken and discarded, then `batches` batches are
//            timed back to back (an epoch that ends starts the next, as training would). The
//            caller does nothing with a batch but read one value per image, so the figure is the
//            loader's throughput: images/s = images delivered / the time of the timed next()s.
//   No model step is run (the model is built, as Experiment::read builds it, but not used).
//   Everything runs inside a tbb::task_arena of `threads` threads (the experiment's `threads`
//   unless overridden; 0 = all cores), which also caps the backend's threads.
//
//   Peak resident memory is getrusage(RUSAGE_SELF).ru_maxrss of the whole process at the end (the
//   model's parameters included), raised to the largest resident size sampled (the kernel's two
//   counters are folded at different times, so ru_maxrss alone can read a few pages under a
//   sample); rss_before_loader is the resident size (/proc/self/statm) after
//   open and fit, before the loader exists. Buffer bytes are the loader's two batch buffers,
//   2 x batch x sample x 4 bytes.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "strata/config.hpp"
#include "strata/registry.hpp"

namespace strata {

struct DataBenchOptions {
  int64_t batches = 20;  // timed batches, at least 1
  int64_t warmup = 3;    // untimed batches first
  int threads = -1;      // -1: the experiment's `threads`; 0: all cores
};

struct DataBenchReport {
  std::string experiment;  // the file
  std::string dataset;     // data.type
  std::vector<std::string> transforms;  // their types, in order
  std::vector<int64_t> sample_shape;    // the model's input: [C, H, W]
  int threads = 0;
  int64_t batch = 0, batches = 0, warmup = 0;
  int64_t train_rows = 0;   // the training rows the loader reads
  int64_t images = 0;       // images in the timed batches
  int64_t skipped = 0;      // samples skipped in the timed batches (on_bad_image: skip)
  int64_t epochs = 0;       // epochs started (1 unless the split is shorter than the run)
  double open_seconds = 0, fit_seconds = 0;
  double load_seconds = 0;  // the timed batches, in all
  double batch_seconds = 0;            // mean per timed batch
  double min_batch_seconds = 0, max_batch_seconds = 0;
  double images_per_second = 0;
  int64_t buffer_bytes = 0;
  int64_t rss_before_loader_bytes = 0;
  int64_t peak_rss_bytes = 0;
};

// Runs the benchmark. Errors in the experiment and its data are reported as for `strata train`.
DataBenchReport bench_data(const Config& experiment, const Registries& registries,
                           const DataBenchOptions& options);

// The human-readable lines: what ran, images/s, ms per batch, open and fit times, memory.
std::string format_data_bench_report(const DataBenchReport& report);

}  // namespace strata
