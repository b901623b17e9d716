// search/src/report.hpp: what a search prints and its best.yaml (private to libstrata_search).
//
// The live lines: a line per finished trial ("val_acc: 0.912000, lr: 1.2e-03, ... (3 / 20)"), a
// progress line (redrawn in place on a terminal, every tenth trial otherwise), each stage's
// ranking and the final summary. Nothing is printed unless SearchOptions::live.
#pragma once

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "internal.hpp"
#include "strata/search/search.hpp"

namespace strata::search {

class Report {
 public:
  // `redraw`: redraw the progress line in place when `out` is a terminal. Under MPI it is not:
  // the launcher gives ranks a pseudo-terminal whatever its own output goes to (a file, for a
  // batch job), which would fill with escape codes.
  Report(const Plan& plan, std::FILE* out, bool live, bool redraw);

  // Prints a line (over the progress line on a terminal).
  void say(const std::string& text);
  // Seconds since the search started (since this Report was made).
  double seconds() const;

  // Starts the clock of stage `stage` (for the time left in it).
  void begin_stage(int stage);
  // The line of a finished (or paused) trial; `counter` ends it: "(3 / 20)".
  void trial(const Trial& trial, const std::string& counter);
  // The progress line of the current stage: `running` jobs in flight, `done` of them finished in
  // this session. `force`: print it even off a terminal (at the end of the stage).
  void progress(const std::vector<Trial>& trials, int64_t running, int64_t done, bool force);
  // The ranking of stage `stage`'s trials (the best plan.top), searched on `axes`.
  void ranking(int stage, const std::vector<Trial>& trials, const std::vector<Axis>& axes);

  // After Ctrl-C: where the finished trials are and how to continue.
  void interrupted(const SearchResult& result);
  // The best per stage, the best trial and the files written.
  void summary(const SearchResult& result);

 private:
  const Plan& plan_;
  std::FILE* out_;
  bool live_, tty_ = false, progress_shown_ = false;
  Clock::time_point start_ = Clock::now(), stage_start_ = Clock::now();
  int stage_ = 0;
  int64_t last_progress_ = -1;
};

// Writes DIR/best.yaml: the best trial's experiment (without the search section and the
// overrides) under a comment that says where it came from; relative `plugins:` entries are
// rebased onto DIR. Returns its path.
std::filesystem::path write_best_yaml(const Plan& plan, const Config& experiment, const Trial& best,
                                      const std::filesystem::path& out_dir);

}  // namespace strata::search
