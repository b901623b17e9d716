#include "strata/tools/data_bench.hpp"

#include <sys/resource.h>
#include <unistd.h>
#include <tbb/task_arena.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <limits>

#include "strata/dataset.hpp"
#include "strata/error.hpp"
#include "strata/graph.hpp"
#include "strata/training/data_loader.hpp"
#include "strata/training/experiment.hpp"
#include "strata/training/run_data.hpp"

namespace strata {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

int64_t peak_rss_bytes() {
  rusage usage{};
  if (::getrusage(RUSAGE_SELF, &usage) != 0) return 0;
  return static_cast<int64_t>(usage.ru_maxrss) * 1024;  // Linux reports KiB
}

int64_t current_rss_bytes() {
  std::ifstream statm("/proc/self/statm");
  int64_t size = 0, resident = 0;
  if (!(statm >> size >> resident)) return 0;
  return resident * static_cast<int64_t>(::sysconf(_SC_PAGESIZE));
}

// Takes `warmup` batches, then times `batches` more; an epoch that runs out starts the next.
void time_batches(const Experiment& run, const RunData& data, const DataBenchOptions& options,
                  DataBenchReport& report) {
  const LoaderOptions loader_options = training_loader_options(run);
  const int64_t n = data.train.size();
  BatchLoader loader(data.train, data.transforms, data.sample, loader_options);
  int64_t epoch = 0;
  loader.start_epoch(epoch, epoch_order(run.seed, epoch, n, run.train.shuffle));
  report.epochs = 1;
  int64_t in_epoch = 0;
  double touched = 0;  // one value per image, so that the batch is read
  const int64_t total = options.warmup + options.batches;
  Clock::time_point start = Clock::now();
  double min_batch = std::numeric_limits<double>::infinity(), max_batch = 0;
  for (int64_t i = 0; i < total; ++i) {
    if (i == options.warmup) start = Clock::now();
    if (in_epoch == loader.batches_per_epoch()) {
      ++epoch;
      ++report.epochs;
      loader.start_epoch(epoch, epoch_order(run.seed, epoch, n, run.train.shuffle));
      in_epoch = 0;
    }
    const Clock::time_point before = Clock::now();
    const Batch batch = loader.next();
    ++in_epoch;
    const int64_t per_image = batch.images.numel() / std::max<int64_t>(batch.images.dim(0), 1);
    for (int64_t k = 0; k < batch.size(); ++k) touched += batch.images.data()[k * per_image];
    if (i >= options.warmup) {
      const double took = seconds_since(before);
      min_batch = std::min(min_batch, took);
      max_batch = std::max(max_batch, took);
      report.images += batch.size();
      report.skipped += batch.skipped;
    }
  }
  report.load_seconds = seconds_since(start);
  report.min_batch_seconds = min_batch;
  report.max_batch_seconds = max_batch;
  volatile double sink = touched;  // keeps the reads
  (void)sink;
}

}  // namespace

DataBenchReport bench_data(const Config& experiment, const Registries& registries,
                           const DataBenchOptions& options) {
  if (options.batches < 1) fail("bench --data: --batches must be at least 1, found {}", options.batches);
  if (options.warmup < 0) fail("bench --data: --warmup must be 0 or more, found {}", options.warmup);
  if (options.threads < -1) fail("bench --data: --threads must be 0 (all cores) or positive");

  DataBenchReport report;
  report.experiment = experiment.source_file();
  report.batches = options.batches;
  report.warmup = options.warmup;
  // --threads overrides the experiment's `threads` as `--set threads=N` would (the backend's
  // thread limit included).
  Config overridden = experiment;
  if (options.threads >= 0) {
    overridden = experiment.clone();
    overridden.set("threads", std::to_string(options.threads));
  }
  Experiment run = Experiment::read(overridden, registries, Experiment::Scope::training);
  report.dataset = run.data_config.get<std::string>("type");
  for (const auto& transform : run.data.transforms) report.transforms.emplace_back(transform->type());
  report.batch = run.required_batch_size();

  tbb::task_arena arena(run.threads > 0 ? run.threads : tbb::task_arena::automatic);
  arena.execute([&] {
    report.threads = tbb::this_task_arena::max_concurrency();
    const Shape sample = set_up_transforms(run);
    report.sample_shape = sample.dims();
    Clock::time_point t = Clock::now();
    const RunData data = open_run_data(run, registries);
    report.open_seconds = seconds_since(t);
    t = Clock::now();
    fit_transforms(run, data);
    report.fit_seconds = seconds_since(t);
    report.train_rows = data.train.size();
    if (report.train_rows == 0) {
      run.data_config.fail("bench --data: the training split has no rows to read");
    }
    report.rss_before_loader_bytes = current_rss_bytes();
    time_batches(run, data, options, report);
  });
  report.batch_seconds = report.load_seconds / static_cast<double>(options.batches);
  report.images_per_second = static_cast<double>(report.images) / report.load_seconds;
  report.buffer_bytes =
      2 * report.batch * Shape(report.sample_shape).numel() * static_cast<int64_t>(sizeof(float));
  // The kernel folds each thread's resident-page count into the process's lazily, so ru_maxrss can
  // read a few pages under a /proc/self/statm sample taken earlier: the peak is at least both.
  report.peak_rss_bytes =
      std::max({peak_rss_bytes(), report.rss_before_loader_bytes, current_rss_bytes()});
  return report;
}

std::string format_data_bench_report(const DataBenchReport& r) {
  const auto mib = [](int64_t bytes) { return static_cast<double>(bytes) / (1024.0 * 1024.0); };
  std::string transforms;
  for (const std::string& t : r.transforms) transforms += (transforms.empty() ? "" : ", ") + t;
  std::string out = fmt::format(
      "{}: the training input pipeline, {} -> [{}] -> {}; batch {}, {} thread(s); {} batches "
      "timed after {} warm-up, {} training rows\n\n",
      r.experiment, r.dataset, transforms, Shape(r.sample_shape).str(), r.batch, r.threads,
      r.batches, r.warmup, r.train_rows);
  out += fmt::format("images/s        {:.1f}  ({} images in {:.3f} s{})\n", r.images_per_second,
                     r.images, r.load_seconds,
                     r.skipped > 0 ? fmt::format(", {} bad samples skipped", r.skipped) : "");
  out += fmt::format("ms per batch    {:.2f}  (min {:.2f}, max {:.2f})\n", r.batch_seconds * 1e3,
                     r.min_batch_seconds * 1e3, r.max_batch_seconds * 1e3);
  if (r.epochs > 1) out += fmt::format("epochs          {} (the split is shorter than the run)\n", r.epochs);
  out += fmt::format("open            {:.3f} s  (splits listed, rows chosen)\n", r.open_seconds);
  out += fmt::format("fit             {:.3f} s  (transform statistics)\n", r.fit_seconds);
  out += fmt::format("loader buffers  {:.1f} MiB  (2 x batch {} x {})\n", mib(r.buffer_bytes),
                     r.batch, Shape(r.sample_shape).str());
  out += fmt::format("memory          {:.1f} MiB resident before the loader, peak {:.1f} MiB\n",
                     mib(r.rss_before_loader_bytes), mib(r.peak_rss_bytes));
  return out;
}

}  // namespace strata
