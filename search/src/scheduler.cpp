// The scheduler: ASHA's rungs, the workers that run a stage's jobs side by side, the job sources
// (every trial once, or ASHA's promotions), rankings, the axes of each stage and the best trial.
// See scheduler.hpp.
#include "scheduler.hpp"

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>

#include "internal.hpp"
#include "strata/error.hpp"

namespace strata::search {

using json = nlohmann::json;

std::vector<int64_t> Asha::rungs() const {
  std::vector<int64_t> result;
  for (int64_t r = min_epochs; r < max_epochs; r *= eta) result.push_back(r);
  result.push_back(max_epochs);
  return result;
}

void drive(JobSource& source, const std::vector<Worker>& workers, const std::atomic<bool>* stop) {
  std::mutex mutex;
  std::condition_variable changed;
  int running = 0;
  std::exception_ptr fatal;
  auto worker = [&](const Worker& run) {
    std::unique_lock lock(mutex);
    for (;;) {
      if (fatal || (stop && stop->load())) break;
      std::optional<Job> job;
      try {
        job = source.next();
      } catch (...) {
        fatal = std::current_exception();
        break;
      }
      if (!job) {
        if (running == 0) break;
        changed.wait(lock);
        continue;
      }
      ++running;
      lock.unlock();
      Trial result;
      std::exception_ptr error;
      try {
        result = run(*job);
      } catch (...) {
        error = std::current_exception();
      }
      lock.lock();
      --running;
      if (error) {
        fatal = error;
      } else {
        try {
          source.finish(std::move(result));
        } catch (...) {
          fatal = std::current_exception();
        }
      }
      changed.notify_all();
    }
    changed.notify_all();
  };
  if (workers.size() == 1) {
    worker(workers[0]);
  } else {
    std::vector<std::thread> threads;
    for (const Worker& run : workers) threads.emplace_back(worker, std::cref(run));
    for (auto& thread : threads) thread.join();
  }
  if (fatal) std::rethrow_exception(fatal);
}

std::optional<Job> AllTrials::next() {
  while (next_ < trials_.size() && trials_[next_].status != "pending") ++next_;
  if (next_ == trials_.size()) return std::nullopt;
  Job job{trials_[next_], 0, false};
  trials_[next_].status = "running";
  ++next_;
  return job;
}

void AshaTrials::replay(const Trial& trial, const std::vector<json>& lines) {
  for (std::size_t i = 0; i < lines.size(); ++i) {
    const json& line = lines[i];
    if (!line.contains("rung")) continue;
    const auto rung = line["rung"].get<int64_t>();
    const std::string status = line.value("status", "");
    if (rung < 0 || rung >= static_cast<int64_t>(rungs_.size())) continue;
    if (status != "paused" && status != "ok") continue;
    table_[rung].emplace_back(trial.index,
                              line["metric"].is_number() ? line["metric"].get<double>() : kNaN);
    if (i + 1 < lines.size()) promoted_[rung].insert(trial.index);
  }
}

// The best paused trial among the top 1/eta of the highest rung that has one not yet promoted.
std::optional<Job> AshaTrials::promotion() {
  for (std::size_t k = rungs_.size() - 1; k-- > 0;) {
    auto& rung = table_[k];
    std::vector<std::pair<int64_t, double>> sorted;
    for (const auto& entry : rung) {
      if (!std::isnan(entry.second)) sorted.push_back(entry);
    }
    std::stable_sort(sorted.begin(), sorted.end(), [&](const auto& a, const auto& b) {
      return better(a.second, b.second, maximize_);
    });
    const std::size_t keep = sorted.size() / static_cast<std::size_t>(eta_);
    for (std::size_t i = 0; i < keep; ++i) {
      const int64_t index = sorted[i].first;
      Trial& trial = trials_[index];
      if (promoted_[k].count(index) || trial.status != "paused") continue;
      promoted_[k].insert(index);
      trial.status = "running";
      return Job{trial, rungs_[k + 1], true};
    }
  }
  return std::nullopt;
}

std::optional<Job> AshaTrials::next() {
  if (auto job = promotion()) return job;
  while (next_ < trials_.size() && trials_[next_].status != "pending") ++next_;
  if (next_ == trials_.size()) return std::nullopt;
  Trial& trial = trials_[next_++];
  trial.status = "running";
  return Job{trial, rungs_[0], false};
}

void AshaTrials::finish(Trial result) {
  if ((result.status == "paused" || result.status == "ok") && result.rung >= 0) {
    table_[result.rung].emplace_back(result.index, result.metric);
  }
  finish_(std::move(result));
}

std::vector<const Trial*> ranked(const std::vector<Trial>& trials, bool maximize) {
  std::vector<const Trial*> result;
  for (const Trial& t : trials) {
    if ((t.status == "ok" || t.status == "stopped_early" || t.status == "paused") &&
        !std::isnan(t.metric)) {
      result.push_back(&t);
    }
  }
  std::stable_sort(result.begin(), result.end(), [&](const Trial* a, const Trial* b) {
    if (a->epochs != b->epochs) return a->epochs > b->epochs;  // ASHA: longer-trained first
    return better(a->metric, b->metric, maximize);
  });
  return result;
}

std::vector<Axis> stage_axes(const Plan& plan, int index,
                             const std::vector<std::vector<Axis>>& axes_before,
                             const std::vector<std::vector<Trial>>& trials_before,
                             std::string& note) {
  const Stage& stage = plan.stages[index];
  std::vector<Axis> axes = index == 0 ? stage.written : axes_before[index - 1];
  if (index > 0 && stage.narrow_top_k > 0) {
    auto best = ranked(trials_before[index - 1], plan.maximize);
    if (best.empty()) {
      fail(
          "stage {} narrows around the best {} trials of stage {}, but no trial of stage {} "
          "finished with a {} (all exploded or failed)",
          index + 1, stage.narrow_top_k, index, index, plan.metric);
    }
    if (static_cast<int64_t>(best.size()) > stage.narrow_top_k) best.resize(stage.narrow_top_k);
    axes = narrow_axes(axes, best, stage.narrow_margin);
    note = fmt::format(" (narrowed around the best {} of stage {})", best.size(), index);
  }
  if (index > 0) merge_axes(axes, stage.written);
  return axes;
}

void pick_best(const std::vector<std::vector<Trial>>& stages, bool maximize, SearchResult& result) {
  for (const Trial& t : result.trials) {
    if (t.status != "ok" || std::isnan(t.metric)) continue;
    if (!result.best || better(t.metric, result.best->metric, maximize)) result.best = &t;
  }
  for (const Trial& t : result.trials) {
    if (result.best && result.best->status == "ok") break;
    if (t.status != "stopped_early" || std::isnan(t.metric)) continue;
    if (!result.best || t.epochs > result.best->epochs ||
        (t.epochs == result.best->epochs && better(t.metric, result.best->metric, maximize))) {
      result.best = &t;
    }
  }
  for (const auto& stage : stages) {
    double best = kNaN;
    for (const Trial& t : stage) {
      if (t.status != "ok" || std::isnan(t.metric)) continue;
      if (std::isnan(best) || better(t.metric, best, maximize)) best = t.metric;
    }
    result.best_per_stage.push_back(best);
  }
}

}  // namespace strata::search
