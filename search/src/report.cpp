// What a search prints (the line per trial, the progress line, each stage's ranking, the summary)
// and its best.yaml. See report.hpp.
#include "report.hpp"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <optional>

#include "scheduler.hpp"
#include "strata/files.hpp"

namespace strata::search {

namespace fs = std::filesystem;

namespace {

std::string format_seconds(double seconds) {
  const auto s = static_cast<int64_t>(std::llround(seconds));
  if (s < 60) return fmt::format("{}s", s);
  if (s < 3600) return fmt::format("{}m{:02}s", s / 60, s % 60);
  return fmt::format("{}h{:02}m", s / 3600, (s % 3600) / 60);
}

// "optimizer.lr = 0.01" for each axis of `trial`.
std::vector<std::string> assignments(const Trial& trial) {
  std::vector<std::string> values;
  for (std::size_t a = 0; a < trial.axes.size(); ++a) {
    values.push_back(
        fmt::format("{} = {}", trial.axes[a].path, value_yaml(trial.axes[a], trial.values[a])));
  }
  return values;
}

// best.yaml is written to the search's output folder, not beside the experiment. A relative entry
// of `plugins:` is relative to the experiment file's folder (apps/strata/cli.cpp,
// load_experiment_plugins), so it is rewritten relative to best.yaml's folder: `strata train
// best.yaml` then loads the same file, and moving the project with its runs keeps it working.
// Absolute entries stay as they are.
void rebase_plugin_paths(Config& experiment, const fs::path& experiment_dir,
                         const fs::path& out_dir) {
  std::optional<Config> plugins = experiment.find("plugins");
  if (!plugins || !plugins->is_sequence()) return;
  const std::vector<Config> items = plugins->items();
  const fs::path from = fs::weakly_canonical(fs::absolute(out_dir));
  for (std::size_t i = 0; i < items.size(); ++i) {
    if (!items[i].is_scalar()) continue;
    const fs::path file = items[i].as<std::string>();
    if (file.empty() || file.is_absolute()) continue;
    const fs::path target = fs::weakly_canonical(fs::absolute(experiment_dir / file));
    fs::path rebased = target.lexically_relative(from);
    if (rebased.empty()) rebased = target;
    std::string quoted = "\"";
    for (const char c : rebased.string()) {
      if (c == '"' || c == '\\') quoted += '\\';
      quoted += c;
    }
    experiment.set(fmt::format("plugins[{}]", i), quoted + "\"");
  }
}

}  // namespace

Report::Report(const Plan& plan, std::FILE* out, bool live, bool redraw)
    : plan_(plan), out_(out), live_(live), tty_(live && redraw && ::isatty(::fileno(out)) != 0) {}

void Report::say(const std::string& text) {
  if (!live_) return;
  if (tty_ && progress_shown_) std::fputs("\r\033[K", out_);
  std::fputs(text.c_str(), out_);
  std::fputc('\n', out_);
  progress_shown_ = false;
  std::fflush(out_);
}

double Report::seconds() const {
  return std::chrono::duration<double>(Clock::now() - start_).count();
}

void Report::begin_stage(int stage) {
  stage_ = stage;
  stage_start_ = Clock::now();
  last_progress_ = -1;
}

void Report::trial(const Trial& trial, const std::string& counter) {
  std::vector<std::string> parts;
  const std::string metric = short_metric(plan_.metric);
  if (trial.status == "ok" || trial.status == "paused" || trial.status == "stopped_early") {
    parts.push_back(fmt::format("{}: {:.6f}", metric, trial.metric));
  } else {
    parts.push_back(fmt::format("{}: {}", metric, trial.status));
  }
  for (std::size_t a = 0; a < trial.axes.size(); ++a) {
    parts.push_back(
        fmt::format("{}: {}", trial.axes[a].name, value_display(trial.axes[a], trial.values[a])));
  }
  std::string line = fmt::format("{}, {}", fmt::join(parts, ", "), counter);
  if (trial.status == "exploded") line += "  exploded: " + trial.error;
  if (trial.status == "failed") line += "  failed: " + trial.error;
  say(line);
}

void Report::progress(const std::vector<Trial>& trials, int64_t running, int64_t done, bool force) {
  if (!live_) return;
  int64_t exploded = 0, failed = 0, finished = 0;
  const Trial* best = nullptr;
  for (const Trial& t : trials) {
    if (t.status == "exploded") ++exploded;
    if (t.status == "failed") ++failed;
    if (t.status != "pending" && t.status != "running") ++finished;
    if (!std::isnan(t.metric) && (!best || better(t.metric, best->metric, plan_.maximize)))
      best = &t;
  }
  const int64_t total = static_cast<int64_t>(trials.size());
  const double elapsed = std::chrono::duration<double>(Clock::now() - start_).count();
  const double stage_elapsed = std::chrono::duration<double>(Clock::now() - stage_start_).count();
  std::string left;
  if (done > 0 && !plan_.stages[stage_].asha && finished < total) {
    left = fmt::format(", about {} left in this stage",
                       format_seconds(stage_elapsed / static_cast<double>(done) *
                                      static_cast<double>(total - finished)));
  }
  const std::string text = fmt::format(
      "[search] stage {}/{}: {}/{} trials done ({} running), {} exploded, {} failed; best {} {}; "
      "{} elapsed{}",
      stage_ + 1, plan_.stages.size(), finished, total, running, exploded, failed,
      short_metric(plan_.metric),
      best ? fmt::format("{:.6f} (trial {})", best->metric, best->index) : "-",
      format_seconds(elapsed), left);
  if (tty_) {
    std::fprintf(out_, "\r\033[K%s", text.c_str());
    progress_shown_ = true;
    std::fflush(out_);
  } else {
    const int64_t every = std::max<int64_t>(1, total / 10);
    if ((force || finished % every == 0) && finished != last_progress_) say(text);
    last_progress_ = finished;
  }
}

void Report::ranking(int stage, const std::vector<Trial>& trials, const std::vector<Axis>& axes) {
  if (!live_) return;
  const Stage& spec = plan_.stages[stage];
  const auto best = ranked(trials, plan_.maximize);
  std::map<std::string, int> counts;
  for (const Trial& t : trials) ++counts[t.status];
  std::vector<std::string> statuses;
  for (const auto& [status, count] : counts)
    statuses.push_back(fmt::format("{} {}", count, status));
  say(fmt::format("stage {}/{} ({}{}, {} trials, {} epochs): {}; best {} by {}:", stage + 1,
                  plan_.stages.size(), spec.mode, spec.asha ? " + ASHA" : "", trials.size(),
                  spec.epochs, fmt::join(statuses, ", "),
                  std::min<int64_t>(plan_.top, static_cast<int64_t>(best.size())), plan_.metric));
  std::string header =
      fmt::format("  {:>4}  {:>5}  {:>10}", "rank", "trial", short_metric(plan_.metric));
  for (const Axis& axis : axes) header += fmt::format("  {:>13}", axis.name);
  header += "  epochs";
  say(header);
  for (std::size_t r = 0; r < best.size() && static_cast<int64_t>(r) < plan_.top; ++r) {
    const Trial& t = *best[r];
    std::string row = fmt::format("  {:>4}  {:>5}  {:>10.6f}", r + 1, t.index, t.metric);
    for (std::size_t a = 0; a < t.axes.size(); ++a) {
      row += fmt::format("  {:>13}", value_display(t.axes[a], t.values[a]));
    }
    row += fmt::format("  {:>6}", t.epochs);
    say(row);
  }
}

void Report::interrupted(const SearchResult& result) {
  say(fmt::format("interrupted after {}: finished trials are in {}; continue with --resume",
                  format_seconds(result.seconds), result.journal.string()));
}

void Report::summary(const SearchResult& result) {
  const Trial& best = *result.best;
  std::vector<std::string> per_stage;
  for (std::size_t s = 0; s < result.best_per_stage.size(); ++s) {
    per_stage.push_back(fmt::format("stage {} {:.6f}", s + 1, result.best_per_stage[s]));
  }
  say(fmt::format(
      "best {}: {}; {} in {}", short_metric(plan_.metric), fmt::join(per_stage, ", "),
      result.trials.size() == 1 ? "1 trial" : fmt::format("{} trials", result.trials.size()),
      format_seconds(result.seconds)));
  say(fmt::format("best trial: stage {}, trial {}: {}", best.stage + 1, best.index,
                  fmt::join(assignments(best), ", ")));
  say(fmt::format("wrote {}, {} and {}", result.best_yaml.string(), result.journal.string(),
                  result.curves.string()));
}

fs::path write_best_yaml(const Plan& plan, const Config& experiment, const Trial& best,
                         const fs::path& out_dir) {
  Config winner = trial_experiment(plan, best, false);
  rebase_plugin_paths(winner, fs::path(experiment.source_file()).parent_path(), out_dir);
  const std::string header = fmt::format(
      "# The best trial of `strata search {}`: stage {}, trial {}, {} {:.6f} after {} epochs.\n"
      "# {}\n# The search section is removed; train it with: strata train <this file>\n",
      experiment.source_file(), best.stage + 1, best.index, plan.metric, best.metric, best.epochs,
      fmt::join(assignments(best), ", "));
  const fs::path path = out_dir / "best.yaml";
  write_file_atomically(path, header + winner.dump());
  return path;
}

}  // namespace strata::search
