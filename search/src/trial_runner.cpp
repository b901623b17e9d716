// One trial of a search: trainer_runner() trains it with train_experiment (quiet, with the
// search's monitor on TrainOptions::on_iteration and the on_epoch callback), and run_trial() runs
// it in its own task arena: the explosion abort, the ASHA pause at a rung and its checkpoint.
// See strata/search/runner.hpp and trial_runner.hpp.
#include "trial_runner.hpp"

#include <tbb/task_arena.h>

#include <algorithm>
#include <cmath>

#include "internal.hpp"
#include "strata/config_origin.hpp"
#include "strata/error.hpp"

namespace strata::search {

namespace fs = std::filesystem;

// ---- the trainer as a trial runner ----

namespace {

class TrainerRunner final : public TrialRunner {
 public:
  explicit TrainerRunner(const Registries& registries) : registries_(registries) {}

  void validate(const Config& experiment) override {
    TrainOptions options;
    options.quiet = true;
    options.validate_only = true;
    train_experiment(experiment, registries_, options);
  }

  void run(const TrialSpec& spec, TrialMonitor& monitor) override {
    TrainOptions options;
    options.out_dir = spec.out_dir;
    options.resume = spec.resume;
    options.progress = "none";
    options.quiet = true;
    options.on_iteration = [&](const IterationReport& report) { monitor.iteration(report.loss); };
    train_experiment(spec.experiment, registries_, options,
                     [&](const EpochReport& report) { monitor.epoch(report); });
  }

 private:
  const Registries& registries_;
};

}  // namespace

std::unique_ptr<TrialRunner> trainer_runner(const Registries& registries) {
  return std::make_unique<TrainerRunner>(registries);
}

// ---- running a trial ----

namespace {

class Monitor final : public TrialMonitor {
 public:
  Monitor(Trial& trial, double factor, int64_t stop_epoch, int64_t max_epochs,
          const std::atomic<bool>* stop)
      : trial_(trial),
        factor_(factor),
        stop_epoch_(stop_epoch),
        max_epochs_(max_epochs),
        stop_(stop) {}

  void iteration(double loss) override {
    ++trial_.iterations;
    trial_.curves["iteration_loss"].push_back(loss);
    if (std::isnan(trial_.initial_loss)) trial_.initial_loss = loss;
    if (stop_ && stop_->load()) throw TrialStop{TrialStop::kInterrupted, "interrupted"};
    if (!std::isfinite(loss)) {
      throw TrialStop{TrialStop::kExploded,
                      fmt::format("loss {} at iteration {}", loss, trial_.iterations)};
    }
    if (factor_ > 0 && loss > factor_ * trial_.initial_loss) {
      throw TrialStop{TrialStop::kExploded,
                      fmt::format("loss {:.4g} > {:g} x the first loss {:.4g} at iteration {}",
                                  loss, factor_, trial_.initial_loss, trial_.iterations)};
    }
  }

  void epoch(const EpochReport& r) override {
    const std::pair<const char*, double> values[] = {{"train_loss", r.train_loss},
                                                     {"train_accuracy", r.train_accuracy},
                                                     {"val_loss", r.val_loss},
                                                     {"val_accuracy", r.val_accuracy},
                                                     {"lr", r.lr},
                                                     {"epoch_seconds", r.seconds}};
    for (const auto& [name, value] : values) {
      auto& curve = trial_.curves[name];
      curve.resize(static_cast<std::size_t>(std::max<int64_t>(r.epoch - 1, 0)), kNaN);
      curve.push_back(value);
      if (std::string_view(name) != "lr" && std::string_view(name) != "epoch_seconds") {
        trial_.last[name] = value;
      }
    }
    trial_.epochs = r.epoch;
    if (stop_ && stop_->load()) throw TrialStop{TrialStop::kInterrupted, "interrupted"};
    if (stop_epoch_ > 0 && r.epoch >= stop_epoch_ && r.epoch < max_epochs_) {
      throw TrialStop{TrialStop::kRungReached, ""};
    }
  }

 private:
  Trial& trial_;
  double factor_;
  int64_t stop_epoch_, max_epochs_;
  const std::atomic<bool>* stop_;
};

// The trial's experiment and folder for `job`: a promotion continues from the checkpoint its rung
// kept (paused.h5); a new trial starts from nothing.
TrialSpec prepare(Trial& trial, const Job& job, const Plan& plan, const fs::path& out_dir) {
  const Stage& stage = plan.stages[trial.stage];
  TrialSpec spec;
  spec.trial = &trial;
  spec.experiment = trial_experiment(plan, trial, true);
  {
    const SetOrigin origin(fmt::format("the search's stage {} ({})", trial.stage + 1, stage.where));
    spec.experiment.set("train.epochs", std::to_string(stage.epochs));
    spec.experiment.set("threads", std::to_string(plan.threads_per_trial));
    spec.experiment.set("checkpoint.every", stage.asha ? "1" : "0");
  }
  spec.out_dir = out_dir / "trials" / trial.id();
  spec.resume = job.resume;
  std::error_code ec;
  const fs::path paused = spec.out_dir / "paused.h5", model = spec.out_dir / "model.h5";
  if (job.resume) {
    // Continue from the state journaled at the rung, not from a later epoch an interrupted
    // promotion may have saved.
    if (!fs::exists(paused))
      fail("{}: missing; cannot continue trial {}", paused.string(), trial.id());
    fs::copy_file(paused, model, fs::copy_options::overwrite_existing, ec);
    if (ec) fail("{}: cannot copy to {}: {}", paused.string(), model.string(), ec.message());
  } else {
    fs::remove_all(spec.out_dir, ec);
    trial.curves.clear();
    trial.iterations = 0;
    trial.epochs = 0;
    trial.initial_loss = kNaN;
    trial.seconds = 0;
  }
  fs::create_directories(spec.out_dir, ec);
  if (ec) fail("{}: cannot create: {}", spec.out_dir.string(), ec.message());
  return spec;
}

// Runs the trial in a task arena of `threads`; sets its status (and error) from how it ended.
void train(Trial& trial, const TrialSpec& spec, TrialRunner& runner, Monitor& monitor,
           int threads) {
  const auto start = Clock::now();
  trial.error.clear();
  try {
    tbb::task_arena arena(threads);
    arena.execute([&] { runner.run(spec, monitor); });
    trial.status = "ok";
  } catch (const TrialStop& stop) {
    trial.status = stop.reason == TrialStop::kExploded      ? "exploded"
                   : stop.reason == TrialStop::kRungReached ? "paused"
                                                            : "interrupted";
    trial.error = stop.message;
  } catch (const Error& error) {
    trial.status = "failed";
    trial.error = error.what();
  } catch (const std::exception& error) {
    trial.status = "failed";
    trial.error = fmt::format("internal: {}", error.what());
  }
  trial.seconds += std::chrono::duration<double>(Clock::now() - start).count();
}

}  // namespace

Trial run_trial(Job& job, const Plan& plan, TrialRunner& runner, const fs::path& out_dir,
                const std::atomic<bool>* stop) {
  Trial trial = std::move(job.trial);
  const Stage& stage = plan.stages[trial.stage];
  const TrialSpec spec = prepare(trial, job, plan, out_dir);
  Monitor monitor(trial, plan.explode_factor, stage.asha ? job.target : 0, stage.epochs, stop);
  train(trial, spec, runner, monitor, plan.threads_per_trial);
  trial.metric = kNaN;
  if (trial.status == "ok" || trial.status == "paused") {
    auto it = trial.last.find(plan.metric);
    trial.metric = it != trial.last.end() ? it->second : kNaN;
  }
  if (stage.asha && (trial.status == "ok" || trial.status == "paused")) {
    const auto rungs = stage.asha->rungs();
    trial.rung = std::find(rungs.begin(), rungs.end(), trial.epochs) - rungs.begin();
  }
  std::error_code ec;
  const fs::path paused = spec.out_dir / "paused.h5", model = spec.out_dir / "model.h5";
  if (trial.status == "paused") {
    fs::rename(model, paused, ec);
    if (ec) fail("{}: cannot keep the paused trial's checkpoint: {}", model.string(), ec.message());
  } else if (trial.status != "interrupted") {
    fs::remove_all(spec.out_dir, ec);
  }
  return trial;
}

}  // namespace strata::search
