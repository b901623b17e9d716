// Resume validation (strata/training/checks.hpp): a resume must continue the same run, from a checkpoint
// whose training state is whole.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <map>

#include "strata/error.hpp"
#include "strata/training/checks.hpp"

namespace strata {

namespace {

// Every leaf of a parsed experiment as "key.path[i]" -> value text ("null" for an empty value,
// "{}"/"[]" for empty maps and lists, so that they are leaves too).
void flatten(const Config& node, const std::string& path, std::map<std::string, std::string>& out) {
  if (node.is_map()) {
    const std::vector<std::string> keys = node.keys();
    if (keys.empty()) out[path] = "{}";
    for (const std::string& key : keys) {
      flatten(node.at(key), path.empty() ? key : path + "." + key, out);
    }
  } else if (node.is_sequence()) {
    const std::vector<Config> items = node.items();
    if (items.empty()) out[path] = "[]";
    for (std::size_t i = 0; i < items.size(); ++i)
      flatten(items[i], fmt::format("{}[{}]", path, i), out);
  } else if (node.is_scalar()) {
    out[path] = node.as<std::string>();
  } else {
    out[path] = "null";
  }
}

bool parse_number(const std::string& text, double& value) {
  if (text.empty()) return false;
  char* end = nullptr;
  value = std::strtod(text.c_str(), &end);
  return end == text.c_str() + text.size();
}

// "0.9" and "0.90", or "1e-3" and "0.001", are the same setting.
bool same_value(const std::string& a, const std::string& b) {
  if (a == b) return true;
  double x = 0, y = 0;
  return parse_number(a, x) && parse_number(b, y) && x == y;
}

// "model.layers[3].kernel" -> "model.layers[].kernel", for matching against the allowed keys.
std::string without_indices(const std::string& path) {
  std::string result;
  for (std::size_t i = 0; i < path.size(); ++i) {
    if (path[i] == '[') {
      const std::size_t close = path.find(']', i);
      result += "[]";
      i = close == std::string::npos ? path.size() : close;
    } else {
      result += path[i];
    }
  }
  return result;
}

}  // namespace

namespace {

// The one list (docs_lint.py checks the docs' <!-- resume-keys --> lists against it).
const std::vector<std::string>& resume_keys() {
  // More (or, down to the epochs already done, fewer) epochs; how many threads and which backend
  // compute the same model; how often to save; how large the evaluation batches are; how much of
  // the test split the final evaluation uses; where plugins are loaded from.
  static const std::vector<std::string> kAllowed{
      "train.epochs",     "train.eval_batch_size", "threads", "backend",
      "checkpoint.every", "data.test_limit",       "plugins", "plugins[]",
      // What the run records and how watchfully, not what it computes (docs/training.md).
      "train.log_every", "train.diagnostics_every", "train.explode_factor",
      "train.early_stopping.patience",
      // How the ranks of an MPI job communicate, not what they compute (docs/distributed.md).
      "distributed.bucket_mb", "distributed.overlap", "distributed.watchdog_seconds",
      "distributed.check_replicas"};
  return kAllowed;
}

}  // namespace

bool resume_may_change(const std::string& key_path) {
  const std::vector<std::string>& keys = resume_keys();
  return std::find(keys.begin(), keys.end(), without_indices(key_path)) != keys.end();
}

std::string resume_may_change_text() {
  std::vector<std::string> keys;
  for (const std::string& key : resume_keys()) {
    if (!key.ends_with("[]")) keys.push_back(key);
  }
  const std::string last = keys.back();
  keys.pop_back();
  return fmt::format("{} and {}", fmt::join(keys, ", "), last);
}

std::vector<std::string> experiment_differences(const std::string& saved,
                                                const std::string& current) {
  std::map<std::string, std::string> before, after;
  flatten(Config::parse_string(saved, "/experiment"), "", before);
  flatten(Config::parse_string(current, "experiment"), "", after);
  std::vector<std::string> differences;
  for (const auto& [key, value] : before) {
    auto it = after.find(key);
    if (it == after.end()) {
      differences.push_back(fmt::format("{}: {} in the checkpoint, absent now", key, value));
    } else if (!same_value(value, it->second)) {
      differences.push_back(
          fmt::format("{}: {} in the checkpoint, {} now", key, value, it->second));
    }
  }
  for (const auto& [key, value] : after) {
    if (!before.count(key)) {
      differences.push_back(fmt::format("{}: absent in the checkpoint, {} now", key, value));
    }
  }
  return differences;
}

void validate_training_state(const TrainingState& saved, const std::filesystem::path& checkpoint,
                             int64_t epochs, int64_t steps_per_epoch,
                             std::span<const std::string> metrics) {
  const std::string file = checkpoint.string();
  if (saved.epoch < 0) {
    fail("checkpoint {}: /training epoch is {}, expected a count of completed epochs (0 or more)",
         file, saved.epoch);
  }
  if (saved.epoch > epochs) {
    fail(
        "checkpoint {}: /training epoch is {} but train.epochs is {}: nothing is left to resume "
        "(raise train.epochs to train further)",
        file, saved.epoch, epochs);
  }
  // The trainer saves at the end of an epoch, or (interrupted) after step `partial->step` of the
  // next one, so the optimizer has taken exactly this many steps; anything else is a hand-edited
  // or foreign file.
  const int64_t step = saved.partial ? saved.partial->step : 0;
  if (saved.partial && (step < 1 || step >= steps_per_epoch || saved.epoch >= epochs)) {
    fail("checkpoint {}: /training epoch_step is {}, expected 1 to {} (steps into epoch {} of {})",
         file, step, steps_per_epoch - 1, saved.epoch + 1, epochs);
  }
  if (saved.partial && (saved.partial->seen < 1 || saved.partial->correct < 0 ||
                        saved.partial->correct > saved.partial->seen)) {
    fail("checkpoint {}: /training epoch_correct {} and epoch_seen {} are not counts of images",
         file, saved.partial->correct, saved.partial->seen);
  }
  if (saved.iteration != saved.epoch * steps_per_epoch + step) {
    fail("checkpoint {}: /training iteration is {} but {} epochs of {} steps{} make {}", file,
         saved.iteration, saved.epoch, steps_per_epoch,
         step ? fmt::format(" and {} more", step) : std::string(),
         saved.epoch * steps_per_epoch + step);
  }
  for (const std::string& metric : metrics) {
    auto it = saved.history.find(metric);
    if (it == saved.history.end() && saved.epoch == 0) continue;  // stopped inside epoch 1
    if (it == saved.history.end()) {
      fail("checkpoint {}: /history/{} is missing (the trainer records it every epoch)", file,
           metric);
    }
    if (static_cast<int64_t>(it->second.size()) != saved.epoch) {
      fail("checkpoint {}: /history/{} holds {} values but /training says {} epochs are done", file,
           metric, it->second.size(), saved.epoch);
    }
  }
}

}  // namespace strata
