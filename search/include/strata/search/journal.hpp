// strata/search/journal.hpp: a search's record on disk, which `strata search --resume` reads
// (docs/search.md, "Output" and "Interrupting and resuming").
//
// WHAT THIS REPRESENTS
//   DIR/trials.jsonl: one JSON line per finished trial (and, under ASHA, one per rung a trial
//   paused at), appended and fsynced as each one ends. DIR/search.h5: the curves of every trial
//   that has run, rewritten atomically before each journal line, so it is at most one write ahead.
//
// ENSURES
//   - a line that record() appended is on disk when it returns; a line cut short by kill -9 is the
//     last one, and load() drops it (the trial runs again).
//   - restore() gives a trial the results and curves it was journaled with, or fails when the
//     search now draws other values for it (the search section or its seed changed).
#pragma once

#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "strata/search/space.hpp"

namespace strata::search {

class Journal {
 public:
  // The journal of the search in `dir`. `metric` goes into every line ("metric_name") and, with
  // `experiment_file`, into search.h5's attributes.
  Journal(const std::filesystem::path& dir, std::string metric, std::string experiment_file);

  const std::filesystem::path& path() const { return path_; }      // DIR/trials.jsonl
  const std::filesystem::path& curves() const { return curves_; }  // DIR/search.h5
  // Whether trials.jsonl exists and is not empty.
  bool started() const;

  // Reads trials.jsonl, if it exists. A last line that is not JSON (cut short while appended) is
  // dropped and the file rewritten without it: returns true then. Any other line that is not a
  // trial record is an Error naming the file and line.
  bool load();
  // Reads search.h5's curves, if trials.jsonl and search.h5 exist (for restore()).
  void load_curves();

  // The lines of trial `id` ("0_3"), oldest first; nullptr if it has none.
  const std::vector<nlohmann::json>* lines(const std::string& id) const;
  // Fills `trial`'s results (and its curves, cut to the journaled epochs) from its last line;
  // false if it has none. An Error if the line holds other values than the trial drew.
  bool restore(Trial& trial) const;

  // `trial` as a journal line.
  nlohmann::json line(const Trial& trial) const;
  // Rewrites search.h5 with every trial of `stages` that has run, then appends `trial`'s line to
  // trials.jsonl and fsyncs it.
  void record(const std::vector<std::vector<Trial>>& stages, const Trial& trial);

 private:
  std::filesystem::path path_, curves_;
  std::string metric_, experiment_file_;
  std::map<std::string, std::vector<nlohmann::json>> lines_;  // trial id -> its lines, in order
  std::map<std::string, std::map<std::string, std::vector<double>>> stored_curves_;
};

}  // namespace strata::search
