// The journal: trials.jsonl (one line per finished trial, appended and fsynced; replayed by
// --resume, which drops a last line cut short by kill -9) and search.h5 (every trial's curves,
// rewritten before each line). See strata/search/journal.hpp.
#include "strata/search/journal.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>

#include "internal.hpp"
#include "strata/checkpoint.hpp"
#include "strata/error.hpp"
#include "strata/files.hpp"

namespace strata::search {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

void append_and_sync(const fs::path& path, const std::string& line) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0666);
  if (fd < 0) fail("{}: cannot open for appending: {}", path.string(), std::strerror(errno));
  const char* bytes = line.data();
  std::size_t size = line.size();
  while (size > 0) {
    const ssize_t written = ::write(fd, bytes, size);
    if (written < 0 && errno == EINTR) continue;
    if (written < 0) {
      const int error = errno;
      ::close(fd);
      fail("{}: cannot append: {}", path.string(), std::strerror(error));
    }
    bytes += written;
    size -= static_cast<std::size_t>(written);
  }
  const bool synced = ::fsync(fd) == 0;
  ::close(fd);
  if (!synced) fail("{}: cannot sync: {}", path.string(), std::strerror(errno));
}

}  // namespace

Journal::Journal(const fs::path& dir, std::string metric, std::string experiment_file)
    : path_(dir / "trials.jsonl"),
      curves_(dir / "search.h5"),
      metric_(std::move(metric)),
      experiment_file_(std::move(experiment_file)) {}

bool Journal::started() const { return fs::exists(path_) && fs::file_size(path_) > 0; }

bool Journal::load() {
  if (!fs::exists(path_)) return false;
  std::ifstream in(path_, std::ios::binary);
  std::string line;
  std::vector<std::string> good;
  std::size_t number = 0;
  bool truncated = false;
  while (std::getline(in, line)) {
    ++number;
    if (line.empty()) continue;
    json record;
    try {
      record = json::parse(line);
    } catch (const json::exception& error) {
      if (in.peek() == EOF) {  // a line cut short by kill -9: drop it, the trial runs again
        truncated = true;
        break;
      }
      fail("{}:{}: not a JSON object ({}); the journal is damaged", path_.string(), number,
           error.what());
    }
    if (!record.is_object() || !record.contains("stage") || !record.contains("index")) {
      fail("{}:{}: expected a trial record with stage and index", path_.string(), number);
    }
    lines_[fmt::format("{}_{}", record["stage"].get<int>(), record["index"].get<int64_t>())]
        .push_back(record);
    good.push_back(line);
  }
  if (truncated) {
    std::string text;
    for (const auto& kept : good) text += kept + "\n";
    write_file_atomically(path_, text);
  }
  return truncated;
}

void Journal::load_curves() {
  if (fs::exists(path_) && fs::exists(curves_))
    stored_curves_ = read_hdf5_series(curves_, "/trials");
}

const std::vector<json>* Journal::lines(const std::string& id) const {
  auto it = lines_.find(id);
  return it == lines_.end() ? nullptr : &it->second;
}

json Journal::line(const Trial& trial) const {
  json record;
  record["stage"] = trial.stage;
  record["index"] = trial.index;
  json params = json::object();
  for (std::size_t a = 0; a < trial.axes.size(); ++a) {
    params[trial.axes[a].path] = value_json(trial.axes[a], trial.values[a]);
  }
  record["params"] = params;
  record["metric_name"] = metric_;
  record["metric"] = number_json(trial.metric);
  record["status"] = trial.status;
  record["epochs"] = trial.epochs;
  record["iterations"] = trial.iterations;
  record["seconds"] = trial.seconds;
  record["initial_loss"] = number_json(trial.initial_loss);
  json last = json::object();
  for (const auto& [name, value] : trial.last) last[name] = number_json(value);
  record["last"] = last;
  if (trial.rung >= 0) record["rung"] = trial.rung;
  if (!trial.error.empty()) record["error"] = trial.error;
  if (trial.rank >= 0) record["rank"] = trial.rank;
  return record;
}

bool Journal::restore(Trial& trial) const {
  const std::vector<json>* journaled = lines(trial.id());
  if (!journaled) return false;
  const json& record = journaled->back();
  const json& params = record.at("params");
  for (std::size_t a = 0; a < trial.axes.size(); ++a) {
    const json expected = value_json(trial.axes[a], trial.values[a]);
    const json* found =
        params.contains(trial.axes[a].path) ? &params.at(trial.axes[a].path) : nullptr;
    bool same = found != nullptr;
    if (same && expected.is_number() && found->is_number()) {
      const double x = expected.get<double>(), y = found->get<double>();
      same = std::abs(x - y) <= 1e-9 * std::max(std::abs(x), std::abs(y));
    } else if (same) {
      same = expected == *found;
    }
    if (!same) {
      fail(
          "{}: trial {} of stage {} was run with {} = {}, but the search now draws {}: the search "
          "section or its seed changed. Start a new search in another --out folder",
          path_.string(), trial.index, trial.stage + 1, trial.axes[a].path,
          found ? found->dump() : "nothing", expected.dump());
    }
  }
  auto number = [](const json& j) { return j.is_number() ? j.get<double>() : kNaN; };
  trial.status = record.at("status").get<std::string>();
  trial.metric = number(record.value("metric", json()));
  trial.epochs = record.value("epochs", int64_t{0});
  trial.iterations = record.value("iterations", int64_t{0});
  trial.seconds = record.value("seconds", 0.0);
  trial.initial_loss = number(record.value("initial_loss", json()));
  trial.rung = record.value("rung", int64_t{-1});
  trial.error = record.value("error", std::string());
  trial.rank = record.value("rank", -1);
  trial.last.clear();
  if (record.contains("last")) {
    for (const auto& [name, value] : record["last"].items()) trial.last[name] = number(value);
  }
  trial.curves.clear();
  if (auto stored = stored_curves_.find("/trials/" + trial.id()); stored != stored_curves_.end()) {
    trial.curves = stored->second;
    // search.h5 may be one write ahead of the journal (written first): cut back to the line.
    for (auto& [name, values] : trial.curves) {
      const auto keep =
          static_cast<std::size_t>(name == "iteration_loss" ? trial.iterations : trial.epochs);
      if (values.size() > keep) values.resize(keep);
    }
  }
  return true;
}

void Journal::record(const std::vector<std::vector<Trial>>& stages, const Trial& trial) {
  std::vector<SeriesGroup> groups;
  for (const auto& stage : stages) {
    for (const Trial& t : stage) {
      if (t.status == "pending" || (t.status == "running" && t.rung < 0)) continue;
      SeriesGroup group;
      group.path = "/trials/" + t.id();
      group.series = t.curves;
      group.numbers["stage"] = t.stage;
      group.numbers["index"] = static_cast<double>(t.index);
      group.numbers["metric"] = t.metric;
      group.numbers["epochs"] = static_cast<double>(t.epochs);
      group.numbers["seconds"] = t.seconds;
      group.numbers["initial_loss"] = t.initial_loss;
      group.texts["status"] = t.status == "running" ? "paused" : t.status;
      if (!t.error.empty()) group.texts["error"] = t.error;
      for (std::size_t a = 0; a < t.axes.size(); ++a) {
        if (t.axes[a].distribution == Distribution::kChoice) {
          group.texts[t.axes[a].path] = t.axes[a].choices[t.values[a].choice];
        } else {
          group.numbers[t.axes[a].path] = t.values[a].number;
        }
      }
      groups.push_back(std::move(group));
    }
  }
  write_hdf5_series(curves_, groups, {{"metric", metric_}, {"experiment", experiment_file_}});
  append_and_sync(path_, line(trial).dump() + "\n");
}

}  // namespace strata::search
