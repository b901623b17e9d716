// The search on the ranks of an MPI job: trials as JSON, rank 0's side (meeting the workers, a
// Worker per remote slot, releasing them) and the workers' side (serve_trials). See remote.hpp
// for the design and the protocol.
#include "remote.hpp"

#include <sched.h>
#include <tbb/info.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>
#include <mutex>
#include <optional>
#include <set>

#include "internal.hpp"
#include "strata/error.hpp"
#include "trial_runner.hpp"

namespace strata::search {

namespace fs = std::filesystem;
using json = nlohmann::json;
using namespace std::chrono_literals;

namespace {

// How long a receive waits before looking at the stop flags again.
constexpr auto kPoll = 100ms;

const char* const kDistributionNames[] = {"uniform", "log_uniform", "int", "log_int", "choice"};

// A message body: JSON text; bytes that are not UTF-8 (in an error message) become U+FFFD
// instead of failing the send.
std::string body_of(const json& value) {
  return value.dump(-1, ' ', false, json::error_handler_t::replace);
}

json exact(double value) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  return value;
}

double exact_number(const json& value) {
  if (value.is_number()) return value.get<double>();
  const std::string text = value.get<std::string>();
  if (text == "nan") return kNaN;
  if (text == "inf") return std::numeric_limits<double>::infinity();
  if (text == "-inf") return -std::numeric_limits<double>::infinity();
  throw json::other_error::create(501, "not a number: '" + text + "'", nullptr);
}

json axis_json(const Axis& axis) {
  return {{"path", axis.path},
          {"name", axis.name},
          {"distribution", kDistributionNames[static_cast<int>(axis.distribution)]},
          {"low", exact(axis.low)},
          {"high", exact(axis.high)},
          {"choices", axis.choices},
          {"points", axis.points},
          {"where", axis.where},
          {"key", axis.key}};
}

Axis axis_from_json(const json& j) {
  Axis axis;
  axis.path = j.at("path").get<std::string>();
  axis.name = j.at("name").get<std::string>();
  const std::string distribution = j.at("distribution").get<std::string>();
  const auto* name =
      std::find(std::begin(kDistributionNames), std::end(kDistributionNames), distribution);
  if (name == std::end(kDistributionNames)) {
    throw json::other_error::create(501, "unknown distribution '" + distribution + "'", nullptr);
  }
  axis.distribution = static_cast<Distribution>(name - std::begin(kDistributionNames));
  axis.low = exact_number(j.at("low"));
  axis.high = exact_number(j.at("high"));
  axis.choices = j.at("choices").get<std::vector<std::string>>();
  axis.points = j.at("points").get<int64_t>();
  axis.where = j.at("where").get<std::string>();
  axis.key = j.at("key").get<std::string>();
  return axis;
}

// FNV-1a, 64 bits: the same on every machine and build (std::hash need not be).
std::string fnv1a(const std::string& text) {
  uint64_t hash = 14695981039346656037ull;
  for (unsigned char c : text) {
    hash ^= c;
    hash *= 1099511628211ull;
  }
  return fmt::format("{:016x}", hash);
}

}  // namespace

json trial_json(const Trial& t) {
  json axes = json::array(), values = json::array();
  for (const Axis& axis : t.axes) axes.push_back(axis_json(axis));
  for (const Value& value : t.values) {
    values.push_back({{"number", exact(value.number)}, {"choice", value.choice}});
  }
  json last = json::object(), curves = json::object();
  for (const auto& [name, value] : t.last) last[name] = exact(value);
  for (const auto& [name, curve] : t.curves) {
    json points = json::array();
    for (double value : curve) points.push_back(exact(value));
    curves[name] = std::move(points);
  }
  return {{"stage", t.stage},
          {"index", t.index},
          {"axes", axes},
          {"values", values},
          {"status", t.status},
          {"metric", exact(t.metric)},
          {"last", last},
          {"epochs", t.epochs},
          {"iterations", t.iterations},
          {"rung", t.rung},
          {"seconds", exact(t.seconds)},
          {"initial_loss", exact(t.initial_loss)},
          {"error", t.error},
          {"curves", curves},
          {"rank", t.rank}};
}

Trial trial_from_json(const json& j) {
  Trial t;
  t.stage = j.at("stage").get<int>();
  t.index = j.at("index").get<int64_t>();
  for (const json& axis : j.at("axes")) t.axes.push_back(axis_from_json(axis));
  for (const json& value : j.at("values")) {
    t.values.push_back({exact_number(value.at("number")), value.at("choice").get<int>()});
  }
  if (t.values.size() != t.axes.size()) {
    throw json::other_error::create(501, "a trial with more or fewer values than axes", nullptr);
  }
  t.status = j.at("status").get<std::string>();
  t.metric = exact_number(j.at("metric"));
  for (const auto& [name, value] : j.at("last").items()) t.last[name] = exact_number(value);
  t.epochs = j.at("epochs").get<int64_t>();
  t.iterations = j.at("iterations").get<int64_t>();
  t.rung = j.at("rung").get<int64_t>();
  t.seconds = exact_number(j.at("seconds"));
  t.initial_loss = exact_number(j.at("initial_loss"));
  t.error = j.at("error").get<std::string>();
  for (const auto& [name, points] : j.at("curves").items()) {
    auto& curve = t.curves[name];
    for (const json& value : points) curve.push_back(exact_number(value));
  }
  t.rank = j.at("rank").get<int>();
  return t;
}

int rank_cores(const Communicator* communicator) {
  if (!communicator) return static_cast<int>(tbb::info::default_concurrency());
  // The machine's cores, not the ones this rank is bound to (as `strata train` counts them): a
  // launcher's binding is warned about (binding_warning), not silently divided again.
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  return std::max(1, cores / std::max(1, communicator->local_size()));
}

std::string binding_warning(const Communicator& communicator, int threads) {
  cpu_set_t allowed;
  if (sched_getaffinity(0, sizeof(allowed), &allowed) != 0) return "";
  const int usable = CPU_COUNT(&allowed);
  if (usable >= threads) return "";
  return fmt::format(
      "warning: rank {} may run on {} core(s) only (the launcher bound it), so its {} trial "
      "thread(s) share them; run mpirun with --bind-to none (srun: --cpu-bind=none)",
      communicator.rank(), usable, threads);
}

std::string search_fingerprint(const Config& experiment, const SearchOptions& options) {
  return fnv1a(
      fmt::format("{}\n--concurrency {}\n--threads-per-trial {}\n", experiment.dump(),
                  options.concurrency ? std::to_string(*options.concurrency) : "-",
                  options.threads_per_trial ? std::to_string(*options.threads_per_trial) : "-"));
}

// ---- rank 0 ----

WorkerRanks::WorkerRanks(Communicator& communicator, std::string fingerprint)
    : communicator_(communicator),
      fingerprint_(std::move(fingerprint)),
      thread_([this] { receive_messages(); }) {}

WorkerRanks::~WorkerRanks() {
  done_.store(true);
  thread_.join();
}

void WorkerRanks::receive_messages() {
  try {
    while (!done_.load()) {
      auto message = communicator_.receive(Communicator::kAnySource, Communicator::kAnyTag, kPoll);
      if (!message) continue;
      std::lock_guard lock(mutex_);
      if (message->tag == kTagReady) {
        ready_.push_back(std::move(*message));
      } else if (message->tag >= kTagResult && message->tag < kTagResult + kMaxSlots) {
        results_[{message->source, message->tag - kTagResult}] = std::move(message->body);
      } else {
        fail(
            "rank {} sent rank 0 a message with tag {}, which the search does not know (rank 0 "
            "takes 7101 and 7200 + slot)",
            message->source, message->tag);
      }
      arrived_.notify_all();
    }
  } catch (...) {
    std::lock_guard lock(mutex_);
    receiver_failure_ = std::current_exception();
    arrived_.notify_all();
  }
}

void WorkerRanks::check_receiver() const {
  if (receiver_failure_) std::rethrow_exception(receiver_failure_);
}

int WorkerRanks::meet() {
  std::set<std::string> hosts{communicator_.host()};
  std::vector<bool> met(static_cast<std::size_t>(communicator_.size()), false);
  for (int count = 1; count < communicator_.size(); ++count) {
    Message message;
    {
      std::unique_lock lock(mutex_);
      arrived_.wait(lock, [&] { return !ready_.empty() || receiver_failure_; });
      check_receiver();
      message = std::move(ready_.front());
      ready_.erase(ready_.begin());
    }
    json body;
    try {
      body = json::parse(message.body);
      hosts.insert(body.at("host").get<std::string>());
      if (body.at("experiment").get<std::string>() != fingerprint_) {
        fail(
            "rank {} ({}) runs another search than rank 0: its experiment, with --set, "
            "--concurrency and --threads-per-trial, differs from rank 0's (every rank must run "
            "the same `strata search` command on the same file)",
            message.source, body.at("host").get<std::string>());
      }
    } catch (const json::exception& error) {
      fail("rank {} said it was ready in a message rank 0 cannot read: {}", message.source,
           error.what());
    }
    if (met[message.source]) fail("rank {} said it was ready twice", message.source);
    met[message.source] = true;
  }
  return static_cast<int>(hosts.size());
}

Worker WorkerRanks::slot(int rank, int slot, const fs::path& out_dir, std::atomic<bool>& stop) {
  return [this, rank, slot, out = fs::absolute(out_dir).string(), &stop](Job& job) {
    const std::string id = job.trial.id();
    communicator_.send(rank, kTagJob,
                       body_of({{"slot", slot},
                                {"target", job.target},
                                {"resume", job.resume},
                                {"out", out},
                                {"trial", trial_json(job.trial)}}));
    std::string reply;
    bool interrupt_sent = false;
    {
      std::unique_lock lock(mutex_);
      for (;;) {
        check_receiver();
        if (auto it = results_.find({rank, slot}); it != results_.end()) {
          reply = std::move(it->second);
          results_.erase(it);
          break;
        }
        if (!interrupt_sent && stop.load()) {
          lock.unlock();
          communicator_.send(rank, kTagInterrupt, body_of({{"slot", slot}}));
          lock.lock();
          interrupt_sent = true;
          continue;
        }
        arrived_.wait_for(lock, kPoll);
      }
    }
    Trial trial;
    try {
      trial = trial_from_json(json::parse(reply));
    } catch (const json::exception& error) {
      fail("rank {} sent the result of trial {} in a message rank 0 cannot read: {}", rank, id,
           error.what());
    }
    if (trial.id() != id) {
      fail("rank {} (slot {}) sent the result of trial {} for trial {}", rank, slot, trial.id(),
           id);
    }
    // A signal that reached that rank alone: stop handing out jobs, as after Ctrl-C here.
    if (trial.status == "interrupted") stop.store(true);
    return trial;
  };
}

void WorkerRanks::release(bool interrupted, bool failed) {
  for (int rank = 1; rank < communicator_.size(); ++rank) {
    communicator_.send(rank, kTagStop, body_of({{"interrupted", interrupted}, {"failed", failed}}));
  }
}

StopRelay::StopRelay(const std::atomic<bool>* from, std::atomic<bool>& to) {
  if (!from) return;
  thread_ = std::thread([this, from, &to] {
    while (!done_.load()) {
      if (from->load()) to.store(true);
      std::this_thread::sleep_for(50ms);
    }
  });
}

StopRelay::~StopRelay() {
  done_.store(true);
  if (thread_.joinable()) thread_.join();
}

// ---- the other ranks ----

namespace {

class TrialServer {
 public:
  TrialServer(const Config& experiment, TrialRunner& runner, const SearchOptions& options)
      : experiment_(experiment),
        runner_(runner),
        options_(options),
        communicator_(*options.communicator) {}
  // Interrupts the slots still running and waits for them (after an abort in tests, where the
  // abort is an exception; under MPI an abort ends the process).
  ~TrialServer() {
    for (auto& slot : slots_) slot->stop.store(true);
    for (auto& slot : slots_) {
      if (slot->thread.joinable()) slot->thread.join();
    }
  }

  SearchResult serve();

 private:
  struct Slot {
    std::thread thread;
    std::atomic<bool> stop{false}, busy{false};
  };

  void start(const json& message);
  void run(Slot& slot, int index, Job job, const fs::path& out);
  Slot& slot(const json& message);
  void abort(const std::string& message) { communicator_.abort(message, 1); }

  const Config& experiment_;
  TrialRunner& runner_;
  const SearchOptions& options_;
  Communicator& communicator_;
  std::optional<Plan> plan_;          // parsed at the first job (rank 0 has checked it by then)
  std::atomic<bool> leaving_{false};  // rank 0 said stop
  bool folder_checked_ = false;
  std::vector<std::unique_ptr<Slot>> slots_;
  std::mutex mutex_;
  std::string failure_;  // the first failure of a slot, under mutex_
};

SearchResult TrialServer::serve() {
  communicator_.send(0, kTagReady,
                     body_of({{"host", communicator_.host()},
                              {"experiment", search_fingerprint(experiment_, options_)}}));
  for (;;) {
    {
      std::lock_guard lock(mutex_);
      if (!failure_.empty()) abort(failure_);
    }
    if (options_.stop && options_.stop->load()) {
      for (auto& slot : slots_) slot->stop.store(true);
    }
    auto message = communicator_.receive(0, Communicator::kAnyTag, kPoll);
    if (!message) continue;
    json body;
    try {
      body = json::parse(message->body);
      if (message->tag == kTagJob) {
        start(body);
      } else if (message->tag == kTagInterrupt) {
        slot(body).stop.store(true);
      } else if (message->tag == kTagStop) {
        // Rank 0 has every result it waits for; a trial still running here (rank 0 failed) is
        // interrupted, and its result not sent: nobody would receive it, and a long message
        // undelivered at MPI_Finalize would hold this rank there.
        leaving_.store(true);
        for (auto& slot : slots_) slot->stop.store(true);
        for (auto& slot : slots_) {
          if (slot->thread.joinable()) slot->thread.join();
        }
        SearchResult result;
        result.interrupted = body.at("interrupted").get<bool>();
        return result;
      } else {
        abort(
            fmt::format("the search got a message with tag {} from rank 0, which it does not "
                        "know (its tags are 7101 to 7104 and 7200 + slot)",
                        message->tag));
      }
    } catch (const json::exception& error) {
      abort(fmt::format("the search got a message (tag {}) from rank 0 it cannot read: {}",
                        message->tag, error.what()));
    }
  }
}

TrialServer::Slot& TrialServer::slot(const json& message) {
  const int index = message.at("slot").get<int>();
  if (index < 0 || index >= kMaxSlots) {
    abort(fmt::format("rank 0 named trial slot {}; slots run from 0 to {}", index, kMaxSlots - 1));
  }
  while (static_cast<int>(slots_.size()) <= index) slots_.push_back(std::make_unique<Slot>());
  return *slots_[index];
}

void TrialServer::start(const json& message) {
  const int index = message.at("slot").get<int>();
  Slot& slot = this->slot(message);
  Job job{trial_from_json(message.at("trial")), message.at("target").get<int64_t>(),
          message.at("resume").get<bool>()};
  const fs::path out = message.at("out").get<std::string>();
  if (slot.busy.load()) {
    abort(fmt::format("rank 0 sent trial {} to slot {}, which still runs a trial", job.trial.id(),
                      index));
  }
  if (slot.thread.joinable()) slot.thread.join();  // it has sent its result: only reap it
  if (!plan_) {
    try {
      plan_ = plan_for(experiment_, options_);
    } catch (const Error& error) {
      abort(fmt::format("the search section, which rank 0 accepted, fails here: {}", error.what()));
    }
  }
  if (!folder_checked_) {
    if (!fs::exists(out / "search.yaml")) {
      abort(fmt::format(
          "{}: not found on {}: the search folder must be on a file system that every rank "
          "sees (trials keep their checkpoints there, and an ASHA promotion continues on any "
          "rank)",
          (out / "search.yaml").string(), communicator_.host()));
    }
    folder_checked_ = true;
  }
  slot.stop.store(options_.stop && options_.stop->load());
  slot.busy.store(true);
  slot.thread = std::thread([this, &slot, index, job = std::move(job), out]() mutable {
    run(slot, index, std::move(job), out);
  });
}

// On the slot's thread: trains the job and sends the trial back; a failure outside training is
// left for serve() to abort the job with.
void TrialServer::run(Slot& slot, int index, Job job, const fs::path& out) {
  const std::string id = job.trial.id();
  std::string failure;
  try {
    Trial trial = run_trial(job, *plan_, runner_, out, &slot.stop);
    trial.rank = communicator_.rank();
    std::string body = body_of(trial_json(trial));
    slot.busy.store(false);  // before the send: rank 0 may send the next job at once
    if (!leaving_.load()) communicator_.send(0, kTagResult + index, std::move(body));
    return;
  } catch (const std::exception& error) {
    failure = error.what();
  } catch (...) {
    failure = "an exception that is no std::exception";
  }
  slot.busy.store(false);
  std::lock_guard lock(mutex_);
  if (failure_.empty()) {
    failure_ = fmt::format(
        "trial {} stopped the search: {}\n  (rank 0's trials.jsonl holds every trial that "
        "finished; `strata search ... --resume` runs the others again)",
        id, failure);
  }
}

}  // namespace

SearchResult serve_trials(const Config& experiment, TrialRunner& runner,
                          const SearchOptions& options) {
  TrialServer server(experiment, runner, options);
  return server.serve();
}

}  // namespace strata::search
