// run_search: prepares the output folder (its lock, search.yaml, search.json; the journal on
// --resume), checks the first trial before any runs, then runs each stage: draws its trials on
// its axes, restores the journaled ones, runs the rest through the scheduler and the trial runner,
// journals and prints each result, and finally picks the best trial and writes best.yaml.
// The parts are listed in internal.hpp; the API is strata/search/search.hpp.
#include "strata/search/search.hpp"

#include <algorithm>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>

#include "internal.hpp"
#include "remote.hpp"
#include "report.hpp"
#include "scheduler.hpp"
#include "strata/config_origin.hpp"
#include "strata/error.hpp"
#include "strata/files.hpp"
#include "strata/search/journal.hpp"
#include "trial_runner.hpp"

namespace strata::search {

namespace fs = std::filesystem;
using json = nlohmann::json;

Plan plan_for(const Config& experiment, const SearchOptions& options) {
  const int cores = rank_cores(options.communicator);
  Plan plan = parse_search(experiment, cores);
  if (options.concurrency) {
    if (*options.concurrency < 1) fail("--concurrency must be at least 1");
    plan.concurrency = *options.concurrency;
    if (!options.threads_per_trial) plan.threads_per_trial = std::max(1, cores / plan.concurrency);
  }
  if (options.threads_per_trial) {
    if (*options.threads_per_trial < 1) fail("--threads-per-trial must be at least 1");
    plan.threads_per_trial = *options.threads_per_trial;
  }
  if (options.communicator && plan.concurrency > kMaxSlots) {
    fail("concurrency {}: under MPI a rank runs at most {} trials at once", plan.concurrency,
         kMaxSlots);
  }
  return plan;
}

namespace {

class Search {
 public:
  // `ranks`: under MPI, on rank 0, the other ranks (remote.hpp); null in one process.
  Search(const Config& experiment, TrialRunner& runner, const SearchOptions& options,
         WorkerRanks* ranks)
      : experiment_(experiment),
        runner_(runner),
        options_(options),
        ranks_(ranks),
        communicator_(ranks ? options.communicator : nullptr),
        plan_(plan_for(experiment, options)),
        journal_(options.out_dir, plan_.metric, experiment.source_file()),
        report_(plan_, options.out, options.live, ranks == nullptr) {}

  SearchResult run();

 private:
  void say(const std::string& text) { report_.say(text); }
  // What stops the trials: Ctrl-C, and under MPI also a worker's interrupted trial.
  const std::atomic<bool>* stop() const { return communicator_ ? &stop_ : options_.stop; }
  std::vector<Worker> workers();
  void prepare_folder();
  void validate_first_trial(const std::vector<Trial>& trials);
  void run_stage(int index);
  std::vector<Trial>& draw_stage(int index);
  std::unique_ptr<JobSource> job_source(int index, std::function<void(Trial&&)> finish);
  void finish_stage(int index);
  void finish_trial(std::vector<Trial>& trials, Trial&& result);
  SearchResult result() const;

  const Config& experiment_;
  TrialRunner& runner_;
  const SearchOptions& options_;
  WorkerRanks* ranks_;
  Communicator* communicator_;  // the MPI job, if it has more than this rank (remote.hpp)
  std::atomic<bool> stop_{false};
  std::map<int, int64_t> jobs_per_rank_;
  Plan plan_;
  Journal journal_;
  Report report_;
  std::vector<std::vector<Trial>> stages_;  // stable once a stage is drawn
  std::vector<std::vector<Axis>> stage_axes_;
  int64_t done_in_stage_ = 0, running_ = 0;
  bool interrupted_ = false;
  std::optional<OutputLock> lock_;  // on the search folder, from prepare_folder() on
};

void Search::prepare_folder() {
  const fs::path& dir = options_.out_dir;
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) fail("{}: cannot create the search folder: {}", dir.string(), ec.message());
  // The lock `strata train` takes: two searches, or a search and a run, never share a folder.
  lock_.emplace(dir, std::vector<std::string>{"trials.jsonl", "search.h5", "search.yaml",
                                              "search.json", "best.yaml"});
  const fs::path stored = dir / "search.yaml";
  const std::string text = experiment_.dump();
  const bool has_journal = journal_.started();
  if (options_.resume) {
    if (!has_journal && !fs::exists(stored)) {
      fail(
          "{}: there is no search to resume here (no trials.jsonl); run without --resume to "
          "start one",
          dir.string());
    }
    if (fs::exists(stored)) {
      std::ifstream in(stored);
      std::stringstream buffer;
      buffer << in.rdbuf();
      if (buffer.str() != text) {
        fail(
            "{}: the experiment differs from the one this search started with ({}); resuming "
            "would mix two searches. Restore the experiment, or start a new search in another "
            "--out folder",
            dir.string(), stored.string());
      }
    }
  } else if (has_journal) {
    fail(
        "{}: already holds a search (trials.jsonl); continue it with --resume, or choose another "
        "--out folder",
        dir.string());
  }
  write_file_atomically(stored, text);
  // How each key path is distributed, for tools that read the search without a YAML parser
  // (strata-plot draws log-distributed parameters on log axes).
  json space = json::object();
  for (const Stage& stage : plan_.stages) {
    for (const Axis& axis : stage.written) {
      space[axis.path] = {{"log", axis.is_log()}, {"name", axis.name}, {"distribution", axis.describe()}};
    }
  }
  write_file_atomically(dir / "search.json", json{{"space", space}}.dump(2) + "\n");
}

void Search::validate_first_trial(const std::vector<Trial>& trials) {
  if (trials.empty()) return;
  Trial probe = trials.front();
  auto check = [&](const Trial& trial, const std::string& what) {
    Config config = trial_experiment(plan_, trial, true);
    {
      const SetOrigin origin(fmt::format("the search's stage 1 ({})", plan_.stages[0].where));
      config.set("train.epochs", std::to_string(plan_.stages[0].epochs));
      config.set("threads", std::to_string(plan_.threads_per_trial));
    }
    try {
      runner_.validate(config);
    } catch (const Error& error) {
      fail("{}\n  (checking {} before any trial starts: {})", error.what(), what,
           fmt::format("{}", fmt::join(
                                 [&] {
                                   std::vector<std::string> parts;
                                   for (std::size_t a = 0; a < trial.axes.size(); ++a) {
                                     parts.push_back(trial.axes[a].path + "=" +
                                                     value_yaml(trial.axes[a], trial.values[a]));
                                   }
                                   return parts;
                                 }(),
                                 ", ")));
    }
  };
  check(probe, "the first trial");
  // Every value of a choice goes into the experiment as written: check each one.
  for (std::size_t a = 0; a < probe.axes.size(); ++a) {
    if (probe.axes[a].distribution != Distribution::kChoice) continue;
    for (std::size_t c = 0; c < probe.axes[a].choices.size(); ++c) {
      Trial variant = probe;
      variant.values[a].choice = static_cast<int>(c);
      check(variant, fmt::format("choice {} of {}", probe.axes[a].choices[c], probe.axes[a].path));
    }
  }
}

// Draws stage `index`'s trials on its axes, announces them and restores the journaled ones.
std::vector<Trial>& Search::draw_stage(int index) {
  const Stage& stage = plan_.stages[index];
  std::string narrowed_note;
  const std::vector<Axis> axes = stage_axes(plan_, index, stage_axes_, stages_, narrowed_note);
  stage_axes_.push_back(axes);
  stages_.push_back(draw_trials(stage, axes, index, plan_.seed));
  auto& trials = stages_.back();
  if (index == 0) validate_first_trial(trials);

  std::vector<std::string> ranges;
  for (const Axis& axis : axes)
    ranges.push_back(fmt::format("{} ({}) {}", axis.path, axis.name, axis.describe()));
  say(fmt::format("stage {}/{}: {} {} trials x {} epochs{}{}", index + 1, plan_.stages.size(),
                  trials.size(), stage.mode, stage.epochs,
                  stage.asha ? fmt::format(" (ASHA: rungs at {} epochs, keep 1/{})",
                                           fmt::join(stage.asha->rungs(), ", "), stage.asha->eta)
                             : std::string(),
                  narrowed_note));
  for (const auto& range : ranges) say("  " + range);

  // Resume: trials the journal holds are done (or, under ASHA, paused at a rung).
  int64_t restored = 0;
  for (Trial& trial : trials) restored += journal_.restore(trial);
  if (restored > 0) {
    say(fmt::format("  resuming: {} trials of this stage are in {}", restored,
                    journal_.path().string()));
  }
  return trials;
}

// A job's result: journaled and printed, or (interrupted) the trial set back as it was.
void Search::finish_trial(std::vector<Trial>& trials, Trial&& result) {
  const Stage& stage = plan_.stages[result.stage];
  --running_;
  if (result.status == "interrupted") {
    Trial& slot = trials[result.index];
    slot.status = slot.rung >= 0 ? "paused" : "pending";  // as it was before this job
    interrupted_ = true;
    return;
  }
  Trial& slot = trials[result.index];
  slot = std::move(result);
  ++done_in_stage_;
  if (communicator_) ++jobs_per_rank_[slot.rank];
  journal_.record(stages_, slot);
  int64_t finished = 0;
  for (const Trial& t : trials) finished += t.status != "pending" && t.status != "running";
  const auto total = static_cast<int64_t>(trials.size());
  std::string counter = fmt::format("({} / {})", finished, total);
  if (stage.asha) {
    counter = fmt::format("(trial {} of {}, {} epochs{})", slot.index, total, slot.epochs,
                          slot.status == "paused" ? ", paused at a rung" : "");
  }
  if (communicator_) counter.insert(counter.size() - 1, fmt::format(", rank {}", slot.rank));
  report_.trial(slot, counter);
  report_.progress(trials, running_, done_in_stage_, false);
}

// Every trial once, or ASHA (its rung tables rebuilt from the journal).
std::unique_ptr<JobSource> Search::job_source(int index, std::function<void(Trial&&)> finish) {
  const Stage& stage = plan_.stages[index];
  auto& trials = stages_[index];
  if (!stage.asha) return std::make_unique<AllTrials>(trials, std::move(finish));
  auto asha = std::make_unique<AshaTrials>(trials, *stage.asha, plan_.maximize, std::move(finish));
  for (Trial& trial : trials) {
    if (const auto* lines = journal_.lines(trial.id())) asha->replay(trial, *lines);
  }
  return asha;
}

void Search::run_stage(int index) {
  report_.begin_stage(index);
  done_in_stage_ = 0;
  running_ = 0;
  auto& trials = draw_stage(index);
  auto source = job_source(index, [&](Trial&& result) { finish_trial(trials, std::move(result)); });
  Counting counting(*source, running_);
  drive(counting, workers(), stop());
  if (stop() && stop()->load()) interrupted_ = true;
  for (Trial& trial : trials) {
    if (trial.status == "running") trial.status = "pending";
  }
  if (interrupted_) return;
  finish_stage(index);
}

// This process's `concurrency` trial slots, and under MPI those of every other rank (remote.hpp).
std::vector<Worker> Search::workers() {
  std::vector<Worker> result;
  const int rank = communicator_ ? 0 : -1;
  for (int slot = 0; slot < plan_.concurrency; ++slot) {
    result.push_back([this, rank](Job& job) {
      Trial trial = run_trial(job, plan_, runner_, options_.out_dir, stop());
      trial.rank = rank;
      return trial;
    });
  }
  for (int other = 1; communicator_ && other < communicator_->size(); ++other) {
    for (int slot = 0; slot < plan_.concurrency; ++slot) {
      result.push_back(ranks_->slot(other, slot, options_.out_dir, stop_));
    }
  }
  return result;
}

// ASHA: trials left at a rung below the top were stopped early; that is their final line.
void Search::finish_stage(int index) {
  for (Trial& trial : stages_[index]) {
    if (trial.status != "paused") continue;
    trial.status = "stopped_early";
    journal_.record(stages_, trial);
    std::error_code ec;
    fs::remove_all(options_.out_dir / "trials" / trial.id(), ec);
  }
  report_.progress(stages_[index], running_, done_in_stage_, true);
  report_.ranking(index, stages_[index], stage_axes_[index]);
}

SearchResult Search::result() const {
  SearchResult result;
  result.interrupted = interrupted_;
  result.journal = journal_.path();
  result.curves = journal_.curves();
  result.seconds = report_.seconds();
  for (auto& stage : stages_) {
    for (const Trial& trial : stage) result.trials.push_back(trial);
  }
  return result;
}

SearchResult Search::run() {
  prepare_folder();
  int machines = 1;
  if (ranks_) machines = ranks_->meet();
  const StopRelay relay(communicator_ ? options_.stop : nullptr, stop_);
  if (options_.resume) {
    if (journal_.load()) {
      say(fmt::format("note: dropped an incomplete last line of {}", journal_.path().string()));
    }
    journal_.load_curves();
  }
  const std::string ranks = communicator_ ? fmt::format("{} ranks on {} machine(s), each ",
                                                        communicator_->size(), machines)
                                          : std::string();
  say(
      fmt::format("search: {} stage(s), metric {} ({}), seed {}; {}{} trial(s) at a time x {} "
                  "thread(s) each; results in {}",
                  plan_.stages.size(), plan_.metric, plan_.maximize ? "max" : "min", plan_.seed,
                  ranks, plan_.concurrency, plan_.threads_per_trial, options_.out_dir.string()));
  if (communicator_) {
    const std::string warning =
        binding_warning(*communicator_, plan_.concurrency * plan_.threads_per_trial);
    if (!warning.empty()) say(warning);
  }
  for (int s = 0; s < static_cast<int>(plan_.stages.size()); ++s) {
    run_stage(s);
    if (interrupted_) break;
  }
  if (communicator_) {
    std::vector<std::string> counts;
    for (int rank = 0; rank < communicator_->size(); ++rank) {
      counts.push_back(fmt::format("rank {} {}", rank, jobs_per_rank_[rank]));
    }
    say(fmt::format("trials run (ASHA: rungs) per rank: {}", fmt::join(counts, ", ")));
  }

  SearchResult result = this->result();
  pick_best(stages_, plan_.maximize, result);
  std::error_code ec;
  if (fs::is_empty(options_.out_dir / "trials", ec)) fs::remove(options_.out_dir / "trials", ec);
  if (interrupted_) {
    report_.interrupted(result);
    return result;
  }
  if (!result.best) {
    say("no trial has a result: every trial exploded or failed, so there is no best.yaml");
    return result;
  }
  result.best_stage = result.best->stage;
  result.best_index = result.best->index;
  result.best_yaml = write_best_yaml(plan_, experiment_, *result.best, options_.out_dir);
  report_.summary(result);
  return result;
}

}  // namespace

SearchResult run_search(const Config& experiment, TrialRunner& runner,
                        const SearchOptions& options) {
  Communicator* communicator = options.communicator;
  const bool distributed = communicator && communicator->size() > 1;
  if (distributed && communicator->rank() != 0) return serve_trials(experiment, runner, options);
  std::optional<WorkerRanks> ranks;
  if (distributed) ranks.emplace(*communicator, search_fingerprint(experiment, options));
  SearchResult result;
  try {
    Search search(experiment, runner, options, ranks ? &*ranks : nullptr);
    result = search.run();
  } catch (...) {
    // Rank 0: whatever ends the search, the workers are told to leave (remote.hpp).
    if (ranks) ranks->release(false, true);
    throw;
  }
  if (ranks) ranks->release(result.interrupted, false);
  // `best` pointed into a vector that may have moved since: find it again.
  if (result.best) {
    const int stage = result.best_stage;
    const int64_t index = result.best_index;
    result.best = nullptr;
    for (const Trial& t : result.trials) {
      if (t.stage == stage && t.index == index) result.best = &t;
    }
  }
  return result;
}

}  // namespace strata::search
