// Hyperparameter search (strata/search/search.hpp): sampling, grids, stage narrowing, the explosion
// abort, ASHA promotions, reproducibility, resume, best.yaml, search.h5, the journal on its own
// (strata/search/journal.hpp) and every bad input.
// Most cases use fake trial runners whose metric is a known function of the parameters and the
// epoch; a few run the real trainer on a tiny synthetic dataset.
#define BOOST_TEST_MODULE search
#include <algorithm>
#include <atomic>
#include <boost/test/unit_test.hpp>
#include <cmath>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include "strata/checkpoint.hpp"
#include "strata/search/journal.hpp"
#include "strata/search/search.hpp"
#include "test_support.hpp"
#include "thread_communicator.hpp"

using namespace strata;
using namespace strata::search;
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// An experiment the fake runners read: only the searched keys and train.epochs matter to them.
std::string fake_experiment(const std::string& search) {
  return "seed: 1\n"
         "data: {type: synthetic, validation: 100}\n"
         "model: {input: [1, 8, 8], layers: [{name: fc, type: linear, out_features: 10}]}\n"
         "optimizer: {type: sgd, lr: 0.01, weight_decay: 0.001, momentum: 0.9}\n"
         "train: {epochs: 4, batch_size: 32}\n"
         "search:\n" +
         search;
}

// Reports `iterations_per_epoch` losses and one EpochReport per epoch; val_accuracy is
// metric(lr, weight_decay, epoch). Keeps "model.h5" as a text file holding the epoch, so that
// ASHA's pause/resume (paused.h5 copied back to model.h5) is exercised.
class FakeRunner : public TrialRunner {
 public:
  std::function<double(double, double, int64_t)> metric = [](double lr, double wd, int64_t epoch) {
    // Best near lr = 1e-2, improving with epochs.
    return 1.0 / (1.0 + std::pow(std::log10(lr) + 2.0, 2)) * (1.0 - 0.5 / epoch) - 0.01 * wd;
  };
  std::function<double(double lr, int64_t iteration)> loss = [](double, int64_t iteration) {
    return 2.3 - 0.001 * iteration;
  };
  int iterations_per_epoch = 3;
  int epoch_milliseconds = 0;       // sleeps this long per epoch (trials that take time)
  bool nan_train_accuracy = false;  // reports train_accuracy NaN (as a trainer without it)
  std::atomic<bool>* stop_flag = nullptr;
  int stop_after_runs = -1;  // sets *stop_flag when this many runs have finished

  std::mutex mutex;
  int runs = 0, validations = 0;
  std::vector<std::pair<std::string, int64_t>> starts;  // (trial id, first epoch trained)

  void validate(const Config& experiment) override {
    Config copy = experiment.clone();
    copy.at("optimizer").get<double>("lr");
    std::lock_guard lock(mutex);
    ++validations;
  }

  void run(const TrialSpec& spec, TrialMonitor& monitor) override {
    Config e = spec.experiment.clone();
    const double lr = e.at("optimizer").get<double>("lr");
    const double wd = e.at("optimizer").get<double>("weight_decay");
    const int64_t epochs = e.at("train").get<int64_t>("epochs");
    const fs::path model = spec.out_dir / "model.h5";
    int64_t start = 0;
    if (spec.resume) {
      std::ifstream in(model);
      in >> start;
      BOOST_REQUIRE(in);
    }
    {
      std::lock_guard lock(mutex);
      starts.emplace_back(spec.trial->id(), start + 1);
    }
    int64_t iteration = start * iterations_per_epoch;
    for (int64_t epoch = start + 1; epoch <= epochs; ++epoch) {
      for (int i = 0; i < iterations_per_epoch; ++i) monitor.iteration(loss(lr, ++iteration));
      std::ofstream(model) << epoch;
      EpochReport report;
      report.epoch = epoch;
      report.epochs = epochs;
      report.val_accuracy = metric(lr, wd, epoch);
      report.val_loss = 1 - report.val_accuracy;
      report.train_accuracy = nan_train_accuracy ? std::nan("") : report.val_accuracy;
      report.train_loss = report.val_loss;
      report.lr = lr;
      if (epoch_milliseconds > 0) {
        std::this_thread::sleep_for(std::chrono::milliseconds(epoch_milliseconds));
      }
      monitor.epoch(report);
    }
    std::lock_guard lock(mutex);
    ++runs;
    if (stop_flag && runs == stop_after_runs) stop_flag->store(true);
  }
};

SearchOptions quiet_options(const fs::path& out) {
  SearchOptions options;
  options.out_dir = out;
  options.live = false;
  return options;
}

std::vector<json> journal_lines(const fs::path& path) {
  std::ifstream in(path);
  std::vector<json> lines;
  std::string line;
  while (std::getline(in, line)) lines.push_back(json::parse(line));
  return lines;
}

// Kolmogorov-Smirnov distance between a sample in [0, 1] and the uniform distribution.
double ks_uniform(std::vector<double> u) {
  std::sort(u.begin(), u.end());
  const double n = static_cast<double>(u.size());
  double d = 0;
  for (std::size_t i = 0; i < u.size(); ++i) {
    d = std::max({d, (i + 1) / n - u[i], u[i] - i / n});
  }
  return d;
}

Plan plan_of(const std::string& search) {
  return parse_search(test::yaml(fake_experiment(search)), 2);
}

std::string search_error(const std::string& search) {
  return test::error_of([&] { plan_of(search); });
}

}  // namespace

BOOST_AUTO_TEST_SUITE(sampling)

BOOST_AUTO_TEST_CASE(log_uniform_is_uniform_in_log_space) {
  const Plan plan = plan_of(
      "  trials: 4000\n  space:\n    optimizer.lr: {log_uniform: [1e-6, 1e-3]}\n"
      "    optimizer.weight_decay: {uniform: [1e-6, 1e-3]}\n");
  const auto trials = draw_trials(plan.stages[0], plan.stages[0].written, 0, 12345);
  BOOST_REQUIRE_EQUAL(trials.size(), 4000u);
  std::vector<double> log_position, uniform_log_position, uniform_position;
  for (const Trial& t : trials) {
    const double lr = t.values[0].number, wd = t.values[1].number;
    BOOST_REQUIRE(lr >= 1e-6 && lr <= 1e-3);
    log_position.push_back((std::log(lr) - std::log(1e-6)) / (std::log(1e-3) - std::log(1e-6)));
    uniform_log_position.push_back((std::log(wd) - std::log(1e-6)) /
                                   (std::log(1e-3) - std::log(1e-6)));
    uniform_position.push_back((wd - 1e-6) / (1e-3 - 1e-6));
  }
  // KS critical value at the 1% level: 1.63 / sqrt(n) = 0.0258 for n = 4000.
  const double critical = 1.63 / std::sqrt(4000.0);
  BOOST_TEST_MESSAGE("KS distance of log10(lr): " << ks_uniform(log_position));
  BOOST_TEST(ks_uniform(log_position) < critical);
  BOOST_TEST(ks_uniform(uniform_position) < critical);
  // The test has power: uniform draws are far from uniform in log space (most mass near 1e-3).
  BOOST_TEST(ks_uniform(uniform_log_position) > 10 * critical);
  // Each decade of [1e-6, 1e-3] gets about a third of the log-uniform draws.
  for (int decade = 0; decade < 3; ++decade) {
    const auto in_decade = std::count_if(log_position.begin(), log_position.end(), [&](double u) {
      return u >= decade / 3.0 && u < (decade + 1) / 3.0;
    });
    BOOST_TEST(std::abs(in_decade / 4000.0 - 1.0 / 3.0) < 0.03);
  }
}

BOOST_AUTO_TEST_CASE(int_log_int_and_choice_stay_in_range_and_cover_it) {
  const Plan plan = plan_of(
      "  trials: 3000\n  space:\n    train.batch_size: {choice: [16, 32, 64]}\n"
      "    train.epochs: {int: [2, 5]}\n    optimizer.momentum: {uniform: [0.5, 0.99]}\n"
      "    data.validation: {log_int: [1, 1000]}\n");
  const auto trials = draw_trials(plan.stages[0], plan.stages[0].written, 0, 7);
  std::map<int, int> choices, ints;
  int small = 0;
  for (const Trial& t : trials) {
    ++choices[t.values[0].choice];
    const double epochs = t.values[1].number;
    BOOST_REQUIRE(epochs >= 2 && epochs <= 5 && epochs == std::floor(epochs));
    ++ints[static_cast<int>(epochs)];
    const double v = t.values[3].number;
    BOOST_REQUIRE(v >= 1 && v <= 1000 && v == std::floor(v));
    small += v < 32;  // log_int: about half the mass below sqrt(1000)
  }
  BOOST_TEST(choices.size() == 3u);
  for (const auto& [c, n] : choices) BOOST_TEST(std::abs(n / 3000.0 - 1 / 3.0) < 0.04);
  BOOST_TEST(ints.size() == 4u);
  for (const auto& [i, n] : ints) BOOST_TEST(std::abs(n / 3000.0 - 0.25) < 0.04);
  BOOST_TEST(std::abs(small / 3000.0 - 0.5) < 0.05);
}

BOOST_AUTO_TEST_CASE(same_seed_same_trials_other_seed_other_trials) {
  const Plan plan =
      plan_of("  trials: 20\n  space:\n    optimizer.lr: {log_uniform: [1e-6, 1e-3]}\n");
  const auto a = draw_trials(plan.stages[0], plan.stages[0].written, 0, 5);
  const auto b = draw_trials(plan.stages[0], plan.stages[0].written, 0, 5);
  const auto c = draw_trials(plan.stages[0], plan.stages[0].written, 0, 6);
  const auto d = draw_trials(plan.stages[0], plan.stages[0].written, 1, 5);  // another stage
  int differ_seed = 0, differ_stage = 0;
  for (int i = 0; i < 20; ++i) {
    BOOST_TEST(a[i].values[0].number == b[i].values[0].number);
    differ_seed += a[i].values[0].number != c[i].values[0].number;
    differ_stage += a[i].values[0].number != d[i].values[0].number;
  }
  BOOST_TEST(differ_seed == 20);
  BOOST_TEST(differ_stage == 20);
}

BOOST_AUTO_TEST_CASE(grid_covers_every_point_log_spaced) {
  const Plan plan = plan_of(
      "  mode: grid\n  grid_points: 4\n  space:\n    optimizer.lr: {log_uniform: [1e-6, 1e-3]}\n"
      "    train.batch_size: {choice: [32, 64]}\n    train.epochs: {int: [1, 2], points: 5}\n");
  const auto trials = draw_trials(plan.stages[0], plan.stages[0].written, 0, 1);
  BOOST_REQUIRE_EQUAL(trials.size(), 4u * 2u * 2u);  // the int axis has only two values
  std::set<double> lrs;
  for (const Trial& t : trials) lrs.insert(t.values[0].number);
  std::vector<double> got(lrs.begin(), lrs.end());
  const double expected[] = {1e-6, 1e-5, 1e-4, 1e-3};
  for (int i = 0; i < 4; ++i) BOOST_TEST(std::abs(got[i] / expected[i] - 1) < 1e-9);
  // The last axis varies fastest.
  BOOST_TEST(trials[0].values[2].number == 1);
  BOOST_TEST(trials[1].values[2].number == 2);
  BOOST_TEST(trials[2].values[1].choice == 1);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(narrowing)

BOOST_AUTO_TEST_CASE(narrow_axes_takes_the_hull_of_the_best_in_log_space) {
  const Plan plan = plan_of(
      "  trials: 3\n  space:\n    optimizer.lr: {log_uniform: [1e-6, 1e-3]}\n"
      "    optimizer.momentum: {uniform: [0, 1]}\n    train.batch_size: {choice: [16, 32, 64]}\n");
  auto trials = draw_trials(plan.stages[0], plan.stages[0].written, 0, 1);
  trials[0].values = {{1e-5, -1}, {0.2, -1}, {0, 0}};
  trials[1].values = {{1e-4, -1}, {0.6, -1}, {0, 2}};
  const auto axes = narrow_axes(plan.stages[0].written, {&trials[0], &trials[1]}, 0.5);
  // log10 hull [-5, -4], widened by half its width on each side: [-5.5, -3.5].
  BOOST_TEST(std::abs(std::log10(axes[0].low) + 5.5) < 1e-9);
  BOOST_TEST(std::abs(std::log10(axes[0].high) + 3.5) < 1e-9);
  // Linear hull [0.2, 0.6] widened by 0.2 each side.
  BOOST_TEST(std::abs(axes[1].low - 0.0) < 1e-12);
  BOOST_TEST(std::abs(axes[1].high - 0.8) < 1e-12);
  BOOST_TEST(axes[2].choices == (std::vector<std::string>{"16", "64"}));
  // Never wider than before: clipped at the previous range.
  const auto wide = narrow_axes(plan.stages[0].written, {&trials[0], &trials[1]}, 10);
  BOOST_TEST(wide[0].low == 1e-6);
  BOOST_TEST(wide[0].high == 1e-3);
}

BOOST_AUTO_TEST_CASE(stages_narrow_around_the_best_of_the_previous_stage) {
  test::TempDir dir;
  const Config experiment = test::yaml(fake_experiment(
      "  seed: 4\n  epochs: 2\n  space:\n    optimizer.lr: {log_uniform: [1e-6, 1], name: lr}\n"
      "  stages:\n    - {trials: 30}\n    - {trials: 10, narrow: {top_k: 3}}\n"
      "    - trials: 5\n      space: {optimizer.weight_decay: {uniform: [0.1, 0.2]}}\n"));
  FakeRunner runner;
  const SearchResult result = run_search(experiment, runner, quiet_options(dir.path()));
  BOOST_REQUIRE_EQUAL(result.trials.size(), 45u);
  std::vector<const Trial*> first;
  for (const Trial& t : result.trials)
    if (t.stage == 0) first.push_back(&t);
  std::sort(first.begin(), first.end(),
            [](const Trial* a, const Trial* b) { return a->metric > b->metric; });
  double lo = 1e9, hi = 0;
  for (int i = 0; i < 3; ++i) {
    lo = std::min(lo, first[i]->values[0].number);
    hi = std::max(hi, first[i]->values[0].number);
  }
  // Stage 2's range: the best three's log hull, widened by 25% of its width on each side.
  const double width = std::log(hi) - std::log(lo);
  for (const Trial& t : result.trials) {
    if (t.stage == 0) continue;
    const double lr = t.values[0].number;
    BOOST_TEST(std::log(lr) >= std::log(lo) - 0.25 * width - 1e-9);
    BOOST_TEST(std::log(lr) <= std::log(hi) + 0.25 * width + 1e-9);
    if (t.stage == 2) {  // stage 3 keeps stage 2's lr range and adds weight decay by hand
      BOOST_REQUIRE_EQUAL(t.axes.size(), 2u);
      BOOST_TEST(t.axes[1].path == "optimizer.weight_decay");
      BOOST_TEST(t.values[1].number >= 0.1);
      BOOST_TEST(t.values[1].number <= 0.2);
    }
  }
  BOOST_TEST(result.best_per_stage.size() == 3u);
  // Narrowing towards lr = 1e-2 helps: stage 2's best is at least stage 1's third best.
  BOOST_TEST(result.best_per_stage[1] >= first[2]->metric);
}

BOOST_AUTO_TEST_CASE(narrowing_integer_axes_keeps_whole_numbers_around_the_best) {
  const Plan plan = plan_of(
      "  trials: 3\n  space:\n    data.validation: {log_int: [1, 4096]}\n"
      "    train.batch_size: {int: [2, 300]}\n");
  const auto& axes = plan.stages[0].written;
  std::mt19937 rng(17);
  for (uint64_t seed = 1; seed <= 200; ++seed) {
    const auto trials = draw_trials(plan.stages[0], axes, 0, seed);
    std::vector<const Trial*> best;
    for (const Trial& t : trials) best.push_back(&t);
    best.resize(1 + rng() % 3);
    const double margin = std::uniform_real_distribution<double>(0.05, 1.0)(rng);
    const auto narrowed = narrow_axes(axes, best, margin);
    for (std::size_t a = 0; a < axes.size(); ++a) {
      const Axis& n = narrowed[a];
      BOOST_TEST_CONTEXT("seed " << seed << ", " << axes[a].path << " " << n.describe()) {
        BOOST_TEST(n.low == std::floor(n.low));
        BOOST_TEST(n.high == std::floor(n.high));
        BOOST_TEST(n.low < n.high);
        BOOST_TEST(n.low >= axes[a].low);
        BOOST_TEST(n.high <= axes[a].high);
        for (const Trial* t : best) {
          BOOST_TEST(t->values[a].number >= n.low);
          BOOST_TEST(t->values[a].number <= n.high);
        }
      }
    }
  }
  // The log_int hull [8, 32] widened by half its log width on each side: [4, 64].
  auto trials = draw_trials(plan.stages[0], axes, 0, 3);
  trials[0].values[0].number = 8;
  trials[1].values[0].number = 32;
  const auto narrowed = narrow_axes(axes, {&trials[0], &trials[1]}, 0.5);
  BOOST_TEST(narrowed[0].low == 4);
  BOOST_TEST(narrowed[0].high == 64);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(running)

BOOST_AUTO_TEST_CASE(a_loss_past_three_times_the_first_aborts_the_trial_as_exploded) {
  test::TempDir dir;
  const Config experiment = test::yaml(fake_experiment(
      "  trials: 12\n  epochs: 3\n  space:\n    optimizer.lr: {log_uniform: [1e-4, 10]}\n"));
  FakeRunner runner;
  // The loss grows with the learning rate: above lr = 1 it passes 3x the first loss by iteration 4;
  // above lr = 5 it is NaN from iteration 2 on.
  runner.loss = [](double lr, int64_t iteration) {
    if (lr > 5 && iteration >= 2) return std::nan("");
    return lr > 1 ? 2.0 * std::pow(1.5, iteration - 1) : 2.0 - 0.01 * iteration;
  };
  const SearchResult result = run_search(experiment, runner, quiet_options(dir.path()));
  int exploded = 0;
  for (const Trial& t : result.trials) {
    const double lr = t.values[0].number;
    if (lr > 1) {
      ++exploded;
      BOOST_TEST(t.status == "exploded");
      BOOST_TEST(std::isnan(t.metric));
      BOOST_TEST(t.epochs == (lr > 5 ? 0 : 1));  // 3 iterations per epoch
      if (lr > 5) {
        BOOST_TEST(t.error.find("loss nan at iteration 2") != std::string::npos, t.error);
      } else {
        // 2 * 1.5^3 = 6.75 > 6 at iteration 4.
        BOOST_TEST(t.error.find("at iteration 4") != std::string::npos, t.error);
        BOOST_TEST(t.iterations == 4);
      }
    } else {
      BOOST_TEST(t.status == "ok");
      BOOST_TEST(t.epochs == 3);
    }
  }
  BOOST_TEST(exploded > 0);
  BOOST_TEST(exploded < 12);
  for (const json& line : journal_lines(dir / "trials.jsonl")) {
    if (line["status"] == "exploded") BOOST_TEST(line["metric"].is_null());
  }
}

BOOST_AUTO_TEST_CASE(the_real_trainer_explodes_with_a_huge_learning_rate) {
  test::TempDir dir;
  const Config experiment = test::yaml(
      "seed: 1\nthreads: 1\n"
      "data: {type: synthetic, shape: [1, 8, 8], train_size: 400, test_size: 50, validation: 100,"
      " noise: 0.1}\n"
      "model: {input: [1, 8, 8], layers: [{name: fc1, type: linear, out_features: 16}, "
      "{name: r, type: relu}, {name: fc2, type: linear, out_features: 10}]}\n"
      "optimizer: {type: sgd, lr: 0.1, momentum: 0.9}\n"
      "train: {epochs: 3, batch_size: 20}\n"
      "search:\n  mode: grid\n  space:\n    optimizer.lr: {choice: [0.1, 1000000]}\n");
  auto runner = trainer_runner(test::registries());
  const SearchResult result = run_search(experiment, *runner, quiet_options(dir.path()));
  BOOST_REQUIRE_EQUAL(result.trials.size(), 2u);
  BOOST_TEST(result.trials[0].status == "ok");
  BOOST_TEST(result.trials[0].metric > 0.2);  // synthetic data is easy: far above chance
  BOOST_TEST(result.trials[1].status == "exploded");
  BOOST_TEST(result.trials[1].epochs == 0);
  BOOST_TEST_MESSAGE("exploded: " << result.trials[1].error);
}

BOOST_AUTO_TEST_CASE(asha_promotes_only_the_top_third_and_resumes_promoted_trials) {
  test::TempDir dir;
  const Config experiment =
      test::yaml(fake_experiment("  trials: 27\n  epochs: 9\n  asha: {min_epochs: 1, eta: 3}\n"
                                 "  space:\n    optimizer.lr: {log_uniform: [1e-6, 1]}\n"));
  FakeRunner runner;
  const SearchResult result = run_search(experiment, runner, quiet_options(dir.path()));
  BOOST_REQUIRE_EQUAL(result.trials.size(), 27u);
  int at[10] = {};
  const Trial* truly_best = nullptr;
  for (const Trial& t : result.trials) {
    BOOST_TEST((t.epochs == 1 || t.epochs == 3 || t.epochs == 9));
    ++at[t.epochs];
    BOOST_TEST(t.status == (t.epochs == 9 ? "ok" : "stopped_early"));
    if (!truly_best || std::abs(std::log10(t.values[0].number) + 2) <
                           std::abs(std::log10(truly_best->values[0].number) + 2)) {
      truly_best = &t;
    }
  }
  BOOST_TEST(at[1] > at[3] + at[9]);  // most trials stop at the first rung
  BOOST_TEST(at[3] + at[9] > at[9]);
  BOOST_TEST(at[9] >= 1);
  // Replay the journal (one trial at a time, so its order is the order of the jobs): each
  // promotion took a trial that was then in the top third of its rung, and none was possible
  // when a new trial started instead.
  std::vector<std::vector<std::pair<double, int64_t>>> table(3);
  std::map<int64_t, int64_t> rung_of;
  std::set<std::pair<int64_t, int64_t>> promoted;  // (rung, trial)
  auto top_third = [&](int64_t rung) {
    auto sorted = table[rung];
    std::sort(sorted.rbegin(), sorted.rend());
    sorted.resize(sorted.size() / 3);
    return sorted;
  };
  for (const json& line : journal_lines(dir / "trials.jsonl")) {
    if (line["status"] == "stopped_early") continue;
    const int64_t index = line["index"], rung = line["rung"];
    if (rung == 0) {  // a new trial started: no promotion was possible
      for (int64_t k = 0; k < 2; ++k) {
        for (const auto& [metric, candidate] : top_third(k)) {
          BOOST_TEST(promoted.count({k, candidate}) == 1u,
                     "trial " << candidate << " at rung " << k);
        }
      }
    } else {
      bool eligible = false;
      for (const auto& [metric, candidate] : top_third(rung - 1)) eligible |= candidate == index;
      BOOST_TEST(eligible, "trial " << index << " promoted to rung " << rung);
      BOOST_TEST(rung_of[index] == rung - 1);
      promoted.insert({rung - 1, index});
    }
    rung_of[index] = rung;
    table[rung].emplace_back(line["metric"].get<double>(), index);
  }
  // The metric ranks trials the same at every epoch, so the best lr must reach the top rung.
  BOOST_TEST(truly_best->epochs == 9);
  BOOST_TEST(result.best == truly_best);
  // Promotions continue from the paused epoch instead of training again from the start.
  std::map<std::string, std::vector<int64_t>> starts;
  for (const auto& [id, start] : runner.starts) starts[id].push_back(start);
  for (const Trial& t : result.trials) {
    const auto& s = starts[t.id()];
    if (t.epochs == 1) BOOST_TEST(s == std::vector<int64_t>({1}));
    if (t.epochs == 3) BOOST_TEST(s == std::vector<int64_t>({1, 2}));
    if (t.epochs == 9) BOOST_TEST(s == std::vector<int64_t>({1, 2, 4}));
    BOOST_TEST(t.curves.at("val_accuracy").size() == static_cast<std::size_t>(t.epochs));
    BOOST_TEST(t.curves.at("iteration_loss").size() == static_cast<std::size_t>(3 * t.epochs));
  }
  // Every trial's last journal line carries its final status.
  std::map<std::string, json> last;
  for (const json& line : journal_lines(dir / "trials.jsonl")) {
    last[fmt::format("{}_{}", line["stage"].get<int>(), line["index"].get<int>())] = line;
  }
  BOOST_TEST(last.size() == 27u);
  for (const auto& [id, line] : last) BOOST_TEST(line["status"] != "paused");
  BOOST_TEST(!fs::exists(dir / "trials"));  // paused checkpoints are cleaned up
}

BOOST_AUTO_TEST_CASE(concurrent_trials_give_the_results_of_serial_ones_with_the_real_trainer) {
  const std::string text =
      "seed: 1\nthreads: 1\n"
      "data: {type: synthetic, shape: [1, 8, 8], train_size: 300, test_size: 50, validation: 50}\n"
      "model: {input: [1, 8, 8], layers: [{name: fc1, type: linear, out_features: 16}, "
      "{name: d, type: dropout, keep_prob: 0.9}, {name: r, type: relu}, "
      "{name: fc2, type: linear, out_features: 10}]}\n"
      "optimizer: {type: sgd, lr: 0.1, momentum: 0.9, weight_decay: 0.001}\n"
      "train: {epochs: 2, batch_size: 25}\n"
      "search:\n  seed: 9\n  trials: 4\n  threads_per_trial: 1\n  space:\n"
      "    optimizer.lr: {log_uniform: [1e-3, 1]}\n"
      "    model.layers[1].keep_prob: {uniform: [0.5, 1], name: keep}\n"
      "    train.batch_size: {choice: [20, 25, 50]}\n";
  auto runner = trainer_runner(test::registries());
  test::TempDir serial_dir, parallel_dir;
  SearchOptions serial = quiet_options(serial_dir.path());
  serial.concurrency = 1;
  SearchOptions parallel = quiet_options(parallel_dir.path());
  parallel.concurrency = 2;
  const SearchResult a = run_search(test::yaml(text), *runner, serial);
  const SearchResult b = run_search(test::yaml(text), *runner, parallel);
  BOOST_REQUIRE_EQUAL(a.trials.size(), 4u);
  BOOST_REQUIRE_EQUAL(b.trials.size(), 4u);
  for (int i = 0; i < 4; ++i) {
    BOOST_TEST(a.trials[i].status == "ok");
    BOOST_TEST(a.trials[i].metric == b.trials[i].metric);
    BOOST_TEST(a.trials[i].curves.at("iteration_loss") == b.trials[i].curves.at("iteration_loss"),
               boost::test_tools::per_element());
  }
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(outputs_and_resume)

BOOST_AUTO_TEST_CASE(journal_curves_and_best_yaml) {
  test::TempDir dir;
  const Config experiment = test::yaml(
      fake_experiment("  trials: 6\n  epochs: 3\n  space:\n    optimizer.lr: {log_uniform: [1e-6, "
                      "1e-1], name: lr}\n"
                      "    optimizer.weight_decay: {log_uniform: [1e-5, 1e5], name: reg}\n"
                      "  overrides: {data.validation: 50}\n"));
  FakeRunner runner;
  const SearchResult result = run_search(experiment, runner, quiet_options(dir.path()));
  const auto lines = journal_lines(dir / "trials.jsonl");
  BOOST_REQUIRE_EQUAL(lines.size(), 6u);
  for (const json& line : lines) {
    for (const char* key : {"stage", "index", "params", "metric", "status", "epochs", "seconds"}) {
      BOOST_TEST(line.contains(key), key);
    }
    BOOST_TEST(line["params"].contains("optimizer.lr"));
    BOOST_TEST(line["epochs"] == 3);
  }
  // search.h5: one group per trial with per-epoch and per-iteration curves.
  const auto curves = read_hdf5_series(dir / "search.h5", "/trials");
  BOOST_TEST(curves.size() == 6u);
  BOOST_TEST(curves.at("/trials/0_2").at("val_accuracy").size() == 3u);
  BOOST_TEST(curves.at("/trials/0_2").at("iteration_loss").size() == 9u);
  BOOST_TEST(curves.at("/trials/0_2").at("val_accuracy")[2] == result.trials[2].metric);
  // best.yaml: the best trial's values, the experiment's own epochs, no search section and no
  // overrides (those were for the trials only).
  Config best = Config::parse_file((dir / "best.yaml").string());
  BOOST_TEST(!best.has("search"));
  BOOST_TEST(best.at("optimizer").get<double>("lr") == result.best->values[0].number);
  BOOST_TEST(best.at("optimizer").get<double>("weight_decay") == result.best->values[1].number);
  BOOST_TEST(best.at("train").get<int64_t>("epochs") == 4);
  BOOST_TEST(best.at("data").get<int64_t>("validation") == 100);
  for (const Trial& t : result.trials) BOOST_TEST(t.metric <= result.best->metric);
}

BOOST_AUTO_TEST_CASE(same_seed_gives_the_same_search) {
  const std::string search =
      "  seed: 11\n  epochs: 2\n  space:\n    optimizer.lr: {log_uniform: [1e-6, 1]}\n"
      "  stages: [{trials: 8}, {trials: 4, narrow: {top_k: 2}}]\n";
  test::TempDir a, b;
  FakeRunner runner_a, runner_b;
  run_search(test::yaml(fake_experiment(search)), runner_a, quiet_options(a.path()));
  run_search(test::yaml(fake_experiment(search)), runner_b, quiet_options(b.path()));
  const auto la = journal_lines(a / "trials.jsonl"), lb = journal_lines(b / "trials.jsonl");
  BOOST_REQUIRE_EQUAL(la.size(), 12u);
  BOOST_REQUIRE_EQUAL(lb.size(), 12u);
  for (std::size_t i = 0; i < la.size(); ++i) {
    BOOST_TEST(la[i]["params"] == lb[i]["params"]);
    BOOST_TEST(la[i]["metric"] == lb[i]["metric"]);
  }
}

BOOST_AUTO_TEST_CASE(resume_skips_finished_trials_and_matches_an_uninterrupted_search) {
  const std::string search =
      "  seed: 2\n  epochs: 2\n  space:\n    optimizer.lr: {log_uniform: [1e-6, 1]}\n"
      "  stages: [{trials: 10}, {trials: 6, narrow: {top_k: 3}}]\n";
  test::TempDir whole, pieces;
  FakeRunner reference;
  const SearchResult expected =
      run_search(test::yaml(fake_experiment(search)), reference, quiet_options(whole.path()));

  // Interrupted (as by Ctrl-C) once 4 trials have finished: the 5th aborts mid-way.
  std::atomic<bool> stop{false};
  FakeRunner first;
  first.stop_flag = &stop;
  first.stop_after_runs = 4;
  SearchOptions options = quiet_options(pieces.path());
  options.stop = &stop;
  const SearchResult interrupted = run_search(test::yaml(fake_experiment(search)), first, options);
  BOOST_TEST(interrupted.interrupted);
  BOOST_TEST(journal_lines(pieces / "trials.jsonl").size() == 4u);
  BOOST_TEST(!fs::exists(pieces / "best.yaml"));

  // As after kill -9 in the middle of a journal write: a cut-off last line.
  std::ofstream(pieces / "trials.jsonl", std::ios::app) << "{\"stage\": 0, \"ind";

  // Without --resume the folder is refused; with it, only the 12 other trials run.
  FakeRunner refused;
  STRATA_CHECK_CONTAINS(test::error_of([&] {
                          run_search(test::yaml(fake_experiment(search)), refused,
                                     quiet_options(pieces.path()));
                        }),
                        "--resume");
  FakeRunner second;
  SearchOptions resume = quiet_options(pieces.path());
  resume.resume = true;
  const SearchResult resumed = run_search(test::yaml(fake_experiment(search)), second, resume);
  BOOST_TEST(second.runs == 12);
  std::set<std::string> first_ids, second_ids;
  for (const auto& [id, start] : first.starts) first_ids.insert(id);
  for (const auto& [id, start] : second.starts) second_ids.insert(id);
  for (const auto& id : second_ids) {
    // Only the trial in flight at the interruption runs twice.
    if (first_ids.count(id)) BOOST_TEST(id == "0_4");
  }
  const auto lines = journal_lines(pieces / "trials.jsonl");
  BOOST_TEST(lines.size() == 16u);
  BOOST_REQUIRE_EQUAL(resumed.trials.size(), expected.trials.size());
  for (std::size_t i = 0; i < expected.trials.size(); ++i) {
    BOOST_TEST(resumed.trials[i].values[0].number == expected.trials[i].values[0].number);
    BOOST_TEST(resumed.trials[i].metric == expected.trials[i].metric);
  }
  BOOST_TEST(fs::exists(pieces / "best.yaml"));
  BOOST_TEST(resumed.best->metric == expected.best->metric);
  // Resuming a finished search reruns nothing.
  FakeRunner third;
  run_search(test::yaml(fake_experiment(search)), third, resume);
  BOOST_TEST(third.runs == 0);
}

BOOST_AUTO_TEST_CASE(resume_refuses_a_changed_search_and_an_empty_folder) {
  test::TempDir dir, empty;
  const std::string search = "  trials: 3\n  space:\n    optimizer.lr: {log_uniform: [1e-6, 1]}\n";
  FakeRunner runner;
  run_search(test::yaml(fake_experiment(search)), runner, quiet_options(dir.path()));
  SearchOptions resume = quiet_options(dir.path());
  resume.resume = true;
  const std::string changed = "  trials: 3\n  space:\n    optimizer.lr: {log_uniform: [1e-5, 1]}\n";
  STRATA_CHECK_CONTAINS(
      test::error_of([&] { run_search(test::yaml(fake_experiment(changed)), runner, resume); }),
      "differs from the one this search started with");
  SearchOptions nothing = quiet_options(empty.path());
  nothing.resume = true;
  STRATA_CHECK_CONTAINS(
      test::error_of([&] { run_search(test::yaml(fake_experiment(search)), runner, nothing); }),
      "no search to resume");
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(journal)

// Trials of a two-axis plan with random results, as a finished stage holds them.
std::vector<Trial> finished_trials(uint64_t seed) {
  const Plan plan = plan_of(
      "  trials: 5\n  space:\n    optimizer.lr: {log_uniform: [1e-6, 1]}\n"
      "    train.batch_size: {choice: [16, 32, 64]}\n");
  auto trials = draw_trials(plan.stages[0], plan.stages[0].written, 0, seed);
  std::mt19937 rng(static_cast<unsigned>(seed));
  std::uniform_real_distribution<double> unit(0.05, 0.95);
  for (Trial& t : trials) {
    t.status = t.index == 3 ? "exploded" : "ok";
    t.epochs = 2 + static_cast<int64_t>(rng() % 3);
    t.iterations = 4 * t.epochs;
    t.seconds = unit(rng);
    t.initial_loss = 2 + unit(rng);
    for (int64_t e = 0; e < t.epochs; ++e) t.curves["val_accuracy"].push_back(unit(rng));
    for (int64_t i = 0; i < t.iterations; ++i) t.curves["iteration_loss"].push_back(unit(rng));
    t.last["val_accuracy"] = t.curves["val_accuracy"].back();
    t.last["val_loss"] = unit(rng);
    t.metric = t.status == "ok" ? t.last["val_accuracy"] : std::nan("");
    if (t.status == "exploded") t.error = "loss 9.5 > 3 x the first loss 2.3 at iteration 4";
  }
  return trials;
}

BOOST_AUTO_TEST_CASE(recorded_trials_restore_with_their_results_and_curves) {
  test::TempDir dir;
  std::vector<std::vector<Trial>> stages = {finished_trials(31)};
  Journal writer(dir.path(), "val_accuracy", "exp.yaml");
  BOOST_TEST(!writer.started());
  for (const Trial& t : stages[0]) writer.record(stages, t);
  BOOST_TEST(writer.started());
  BOOST_TEST(journal_lines(writer.path()).size() == 5u);

  Journal reader(dir.path(), "val_accuracy", "exp.yaml");
  BOOST_TEST(!reader.load());
  reader.load_curves();
  for (const Trial& written : stages[0]) {
    Trial fresh = written;  // as drawn again on resume: same values, no results
    fresh.status = "pending";
    fresh.metric = std::nan("");
    fresh.curves.clear();
    fresh.last.clear();
    BOOST_REQUIRE(reader.restore(fresh));
    BOOST_TEST(fresh.status == written.status);
    BOOST_TEST(fresh.epochs == written.epochs);
    BOOST_TEST(fresh.iterations == written.iterations);
    BOOST_TEST(fresh.error == written.error);
    BOOST_TEST(
        (std::isnan(fresh.metric) ? std::isnan(written.metric) : fresh.metric == written.metric));
    BOOST_TEST(fresh.last.at("val_loss") == written.last.at("val_loss"));
    BOOST_TEST(fresh.curves.at("val_accuracy") == written.curves.at("val_accuracy"));
    BOOST_TEST(fresh.curves.at("iteration_loss") == written.curves.at("iteration_loss"));
  }
  Trial other = stages[0][0];
  other.stage = 1;  // never journaled
  BOOST_TEST(!reader.restore(other));
  BOOST_TEST(reader.lines("1_0") == nullptr);
  BOOST_REQUIRE(reader.lines("0_2") != nullptr);
  BOOST_TEST(reader.lines("0_2")->size() == 1u);
}

BOOST_AUTO_TEST_CASE(a_cut_off_last_line_is_dropped_and_the_file_rewritten) {
  test::TempDir dir;
  std::vector<std::vector<Trial>> stages = {finished_trials(32)};
  Journal writer(dir.path(), "val_accuracy", "exp.yaml");
  for (const Trial& t : stages[0]) writer.record(stages, t);
  // As after kill -9 in the middle of an append: part of a sixth line.
  const std::string sixth = writer.line(stages[0][1]).dump();
  std::ofstream(writer.path(), std::ios::app) << sixth.substr(0, sixth.size() / 2);

  Journal reader(dir.path(), "val_accuracy", "exp.yaml");
  BOOST_TEST(reader.load());                        // dropped a line
  const auto lines = journal_lines(reader.path());  // every line parses again
  BOOST_REQUIRE_EQUAL(lines.size(), 5u);
  for (std::size_t i = 0; i < lines.size(); ++i) BOOST_TEST(lines[i]["index"] == i);
  BOOST_TEST(reader.lines("0_1")->size() == 1u);
  // A second load finds nothing to drop.
  Journal again(dir.path(), "val_accuracy", "exp.yaml");
  BOOST_TEST(!again.load());
}

BOOST_AUTO_TEST_CASE(a_damaged_line_before_the_last_is_an_error_naming_the_line) {
  test::TempDir dir;
  std::vector<std::vector<Trial>> stages = {finished_trials(33)};
  Journal writer(dir.path(), "val_accuracy", "exp.yaml");
  const std::string first = writer.line(stages[0][0]).dump(),
                    second = writer.line(stages[0][1]).dump();
  std::ofstream(dir / "trials.jsonl") << first << "\n"
                                      << second.substr(0, 9) << "\n"
                                      << second << "\n";
  Journal reader(dir.path(), "val_accuracy", "exp.yaml");
  STRATA_CHECK_CONTAINS(test::error_of([&] { reader.load(); }),
                        "trials.jsonl:2: not a JSON object");
  std::ofstream(dir / "trials.jsonl") << first << "\n[1, 2]\n" << second << "\n";
  Journal list(dir.path(), "val_accuracy", "exp.yaml");
  STRATA_CHECK_CONTAINS(test::error_of([&] { list.load(); }),
                        "trials.jsonl:2: expected a trial record with stage and index");
}

BOOST_AUTO_TEST_CASE(restore_refuses_a_trial_drawn_with_other_values) {
  test::TempDir dir;
  std::vector<std::vector<Trial>> stages = {finished_trials(34)};
  Journal writer(dir.path(), "val_accuracy", "exp.yaml");
  for (const Trial& t : stages[0]) writer.record(stages, t);
  Journal reader(dir.path(), "val_accuracy", "exp.yaml");
  reader.load();
  Trial changed = stages[0][2];
  changed.values[0].number *= 1.5;
  STRATA_CHECK_CONTAINS(test::error_of([&] { reader.restore(changed); }),
                        "trial 2 of stage 1 was run with optimizer.lr = ");
  Trial other_choice = stages[0][4];
  other_choice.values[1].choice = (other_choice.values[1].choice + 1) % 3;
  STRATA_CHECK_CONTAINS(test::error_of([&] { reader.restore(other_choice); }),
                        "the search section or its seed changed");
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(bad_input)

BOOST_AUTO_TEST_CASE(every_bad_search_section_fails_before_any_trial_with_position_and_path) {
  const std::string lr = "  trials: 3\n  space:\n    optimizer.lr: ";
  struct Case {
    std::string search, expected;
  };
  const Case cases[] = {
      {"  trials: 3\n  space:\n    optimizer.lrr: {log_uniform: [1e-6, 1]}\n",
       "no key path 'optimizer.lrr'"},
      {"  trials: 3\n  space:\n    optimizer.lrr: {log_uniform: [1e-6, 1]}\n",
       "did you mean 'optimizer.lr'?"},
      {"  trials: 3\n  space:\n    model.layers[3].keep_prob: {uniform: [0.5, 1]}\n",
       "model.layers has 1 entries"},
      {"  trials: 3\n  space:\n    model.layers[0].keep_prob: {uniform: [0.5, 1]}\n",
       "model.layers[0] has no key 'keep_prob'"},
      {lr + "{log_uniform: [1e-3, 1e-3]}\n", "empty range"},
      {lr + "{uniform: [1, 0.5]}\n", "inverted range"},
      {lr + "{log_uniform: [0, 1e-3]}\n", "log_uniform needs a positive range"},
      {lr + "{log_int: [-3, 10]}\n", "log_int needs a positive range"},
      {lr + "{loguniform: [1e-6, 1e-3]}\n", "unknown distribution 'loguniform'"},
      {lr + "{loguniform: [1e-6, 1e-3]}\n", "did you mean 'log_uniform'?"},
      {lr + "{log_uniform: [1e-6]}\n", "expected a range [low, high]"},
      {lr + "{int: [1.5, 3]}\n", "expected an integer"},
      {lr + "{choice: [0.1]}\n", "at least two values"},
      {lr + "{uniform: [0, 1], log_uniform: [1, 2]}\n", "two distributions"},
      {lr + "0.1\n", "expected a distribution"},
      {"  trials: 3\n  metric: val_acc\n  space:\n    optimizer.lr: {uniform: [0, 1]}\n",
       "unknown metric 'val_acc'"},
      {"  trials: 3\n  metric: val_acc\n  space:\n    optimizer.lr: {uniform: [0, 1]}\n",
       "did you mean 'val_accuracy'?"},
      {"  trials: 3\n  overrides: {data.validation: 0}\n  space:\n"
       "    optimizer.lr: {uniform: [0, 1]}\n",
       "val_accuracy needs a validation split"},
      {"  trails: 3\n  space:\n    optimizer.lr: {uniform: [0, 1]}\n", "unknown key 'trails'"},
      {"  space:\n    optimizer.lr: {uniform: [0, 1]}\n", "missing `trials:`"},
      {"  trials: 3\n", "nothing to search"},
      {"  mode: grid\n  trials: 3\n  space:\n    optimizer.lr: {uniform: [0, 1]}\n",
       "a grid stage runs every grid point"},
      {"  trials: 3\n  narrow: {top_k: 2}\n  space:\n    optimizer.lr: {uniform: [0, 1]}\n",
       "no earlier stage"},
      {"  trials: 3\n  epochs: 4\n  asha: {min_epochs: 4}\n  space:\n"
       "    optimizer.lr: {uniform: [0, 1]}\n",
       "must be above min_epochs"},
      {"  trials: 3\n  asha: {eta: 1}\n  space:\n    optimizer.lr: {uniform: [0, 1]}\n",
       "eta: must be at least 2"},
      {"  trials: 3\n  explode_factor: 0.5\n  space:\n    optimizer.lr: {uniform: [0, 1]}\n",
       "explode_factor: must be above 1"},
      {"  trials: 3\n  concurrency: 0\n  space:\n    optimizer.lr: {uniform: [0, 1]}\n",
       "concurrency: must be at least 1"},
      {"  trials: 3\n  stages: [{trials: 2}, {trials: 2, narrow: {top: 1}}]\n  space:\n"
       "    optimizer.lr: {uniform: [0, 1]}\n",
       "missing required key 'top_k'"},
      {"  trials: 3\n  space:\n    search.trials: {int: [1, 2]}\n", "no key path 'search.trials'"},
      {"  trials: 3\n  metric: val_acuracy\n  space:\n    optimizer.lr: {uniform: [0, 1]}\n",
       "did you mean 'val_accuracy'?"},
  };
  for (const Case& c : cases) {
    test::TempDir dir;
    FakeRunner runner;
    const std::string message = test::error_of([&] {
      run_search(test::yaml(fake_experiment(c.search)), runner, quiet_options(dir.path()));
    });
    STRATA_CHECK_CONTAINS(message, c.expected);
    STRATA_CHECK_CONTAINS(message, "<test>:");  // file:line:col of the offending entry
    BOOST_TEST(runner.runs == 0);
    BOOST_TEST(runner.starts.empty());
    BOOST_TEST(!fs::exists(dir / "trials.jsonl"));
  }
  STRATA_CHECK_CONTAINS(test::error_of([] { parse_search(test::yaml("seed: 1\n"), 2); }),
                        "no `search:` section");
}

BOOST_AUTO_TEST_CASE(key_paths_with_positions_point_at_the_entry) {
  const std::string message =
      search_error("  trials: 3\n  space:\n    optimizer.lrr: {log_uniform: [1e-6, 1]}\n");
  // The search section starts on line 6 of the fake experiment; the entry is on line 9.
  STRATA_CHECK_CONTAINS(message, "<test>:9:");
  STRATA_CHECK_CONTAINS(message, "search.space.optimizer.lrr");
}

BOOST_AUTO_TEST_CASE(a_trial_experiment_the_trainer_rejects_fails_before_any_trial) {
  test::TempDir dir;
  const Config experiment = test::yaml(
      "seed: 1\nthreads: 1\n"
      "data: {type: synthetic, shape: [1, 8, 8], train_size: 300, test_size: 50, validation: 50}\n"
      "model: {input: [1, 8, 8], layers: [{name: fc1, type: linear, out_featurs: 16}]}\n"
      "optimizer: {type: sgd, lr: 0.1}\ntrain: {epochs: 1, batch_size: 25}\n"
      "search:\n  trials: 2\n  space:\n    optimizer.lr: {log_uniform: [1e-3, 1]}\n");
  auto runner = trainer_runner(test::registries());
  const std::string message =
      test::error_of([&] { run_search(experiment, *runner, quiet_options(dir.path())); });
  STRATA_CHECK_CONTAINS(message, "model.layers[0]: missing required key 'out_features'");
  STRATA_CHECK_CONTAINS(message, "before any trial starts");
  BOOST_TEST(!fs::exists(dir / "trials.jsonl"));
}

BOOST_AUTO_TEST_SUITE_END()

// The search on the ranks of an MPI job (search/src/remote.hpp), each rank a thread of this
// process (test::ThreadJob): rank 0 schedules and journals, every rank trains trials.
BOOST_AUTO_TEST_SUITE(distributed)

namespace {

struct JobRun {
  std::vector<SearchResult> results;  // per rank
  std::vector<test::ThreadJob::Outcome> outcomes;
};

// Runs the search of `text` (fake_experiment's) on `runners.size()` ranks: rank r with runners[r]
// and options[r] (each rank reads its own copy of the experiment, as each process would).
JobRun run_on_ranks(const std::string& text, const std::vector<FakeRunner*>& runners,
                    std::vector<SearchOptions> options) {
  test::ThreadJob job(static_cast<int>(runners.size()));
  JobRun run;
  run.results.resize(runners.size());
  run.outcomes = job.run([&](test::ThreadCommunicator& communicator) {
    const int r = communicator.rank();
    const Config experiment = test::yaml(text);
    options[r].communicator = &communicator;
    run.results[r] = run_search(experiment, *runners[r], options[r]);
  });
  for (std::size_t r = 0; r < run.outcomes.size(); ++r) {
    if (const auto& aborted = run.outcomes[r].aborted) {
      BOOST_TEST_MESSAGE("rank " << r << ": aborted by rank " << aborted->rank << ": "
                                 << aborted->message);
    }
    if (run.outcomes[r].error) {
      try {
        std::rethrow_exception(run.outcomes[r].error);
      } catch (const std::exception& error) {
        BOOST_TEST_MESSAGE("rank " << r << ": " << error.what());
      }
    }
  }
  return run;
}

std::vector<SearchOptions> same_options(const SearchOptions& options, int ranks) {
  return std::vector<SearchOptions>(static_cast<std::size_t>(ranks), options);
}

// The last journal line of each trial, by id.
std::map<std::string, json> last_lines(const fs::path& journal) {
  std::map<std::string, json> last;
  for (const json& line : journal_lines(journal)) {
    last[fmt::format("{}_{}", line["stage"].get<int>(), line["index"].get<int>())] = line;
  }
  return last;
}

bool same_curves(const std::vector<double>& a, const std::vector<double>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (!(a[i] == b[i] || (std::isnan(a[i]) && std::isnan(b[i])))) return false;
  }
  return true;
}

std::string file_text(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

// Two stages (the second narrowed around the first's best), an explosion, NaN in the curves.
const std::string kTwoStages = fake_experiment(
    "  seed: 4\n  epochs: 3\n  space:\n    optimizer.lr: {log_uniform: [1e-3, 10]}\n"
    "    optimizer.weight_decay: {log_uniform: [1e-5, 1]}\n"
    "  stages: [{trials: 12}, {trials: 6, narrow: {top_k: 3}}]\n");

void explode_above_a_tenth(FakeRunner& runner) {
  runner.loss = [](double lr, int64_t iteration) {
    return lr > 0.1 ? 2.0 * std::pow(1.5, iteration - 1) : 2.3 - 0.001 * iteration;
  };
  runner.nan_train_accuracy = true;
  runner.epoch_milliseconds = 5;
}

}  // namespace

BOOST_AUTO_TEST_CASE(three_ranks_journal_what_one_process_does) {
  test::TempDir single_dir, job_dir;
  FakeRunner single;
  explode_above_a_tenth(single);
  const SearchResult expected =
      run_search(test::yaml(kTwoStages), single, quiet_options(single_dir.path()));

  FakeRunner r0, r1, r2;
  for (FakeRunner* r : {&r0, &r1, &r2}) explode_above_a_tenth(*r);
  const JobRun run =
      run_on_ranks(kTwoStages, {&r0, &r1, &r2}, same_options(quiet_options(job_dir.path()), 3));
  for (const auto& outcome : run.outcomes) BOOST_TEST(outcome.returned);
  for (const SearchResult& result : run.results) BOOST_TEST(!result.interrupted);
  // Workers return nothing but how the search ended; rank 0 has the search.
  BOOST_TEST(run.results[1].trials.empty());
  const SearchResult& got = run.results[0];

  // Every trial once, with the values and results of the single-process search.
  const auto lines = journal_lines(job_dir / "trials.jsonl");
  BOOST_TEST(lines.size() == 18u);
  const auto expected_lines = last_lines(single_dir / "trials.jsonl");
  const auto got_lines = last_lines(job_dir / "trials.jsonl");
  BOOST_REQUIRE_EQUAL(got_lines.size(), 18u);
  std::map<int, int> per_rank;
  int exploded = 0;
  for (const auto& [id, line] : got_lines) {
    const json& want = expected_lines.at(id);
    BOOST_TEST(line["params"] == want["params"], id);
    BOOST_TEST(line["metric"] == want["metric"], id);
    BOOST_TEST(line["status"] == want["status"], id);
    BOOST_TEST(line["epochs"] == want["epochs"], id);
    BOOST_TEST(line["last"] == want["last"], id);
    BOOST_TEST(line.value("error", "") == want.value("error", ""), id);
    BOOST_TEST(!want.contains("rank"));  // one process journals no rank
    ++per_rank[line.at("rank").get<int>()];
    exploded += line["status"] == "exploded";
  }
  BOOST_TEST(exploded > 0);
  // Each rank took its first job at once, so each ran trials.
  BOOST_TEST(per_rank.size() == 3u);
  BOOST_TEST(r0.runs + r1.runs + r2.runs + exploded == 18);
  BOOST_TEST(r1.runs > 0);
  BOOST_TEST(r2.runs > 0);
  BOOST_TEST(r1.validations == 0);  // rank 0 checks the first trial; workers only train

  // search.h5 holds the same curves (NaN where one process has NaN), best.yaml the same winner.
  const auto want_curves = read_hdf5_series(single_dir / "search.h5", "/trials");
  const auto got_curves = read_hdf5_series(job_dir / "search.h5", "/trials");
  BOOST_REQUIRE_EQUAL(got_curves.size(), want_curves.size());
  for (const auto& [group, series] : want_curves) {
    for (const auto& [name, values] : series) {
      if (name == "epoch_seconds") continue;
      BOOST_TEST(same_curves(got_curves.at(group).at(name), values), group << "/" << name);
    }
  }
  BOOST_TEST(std::isnan(got_curves.at("/trials/0_0").at("train_accuracy").at(0)));
  BOOST_TEST(file_text(job_dir / "best.yaml") == file_text(single_dir / "best.yaml"));
  BOOST_REQUIRE(got.best);
  BOOST_TEST(got.best->id() == expected.best->id());
  BOOST_TEST(got.best->metric == expected.best->metric);
  BOOST_TEST(!fs::exists(job_dir / "trials"));
}

BOOST_AUTO_TEST_CASE(asha_promotes_across_ranks_from_the_checkpoint_another_rank_paused) {
  test::TempDir dir;
  const std::string text = fake_experiment(
      "  trials: 27\n  epochs: 9\n  asha: {min_epochs: 1, eta: 3}\n"
      "  space:\n    optimizer.lr: {log_uniform: [1e-6, 1]}\n");
  // Each trial is worse than the ones before it, at every epoch: a trial is never promoted by
  // the slot that just paused it, only later, when enough worse trials make it the top third of
  // its rung, by whichever slot is free then (on another rank 2 times in 3).
  struct LaterIsWorse : FakeRunner {
    int64_t index = 0;  // of the trial running (each rank runs one at a time)
    LaterIsWorse() {
      metric = [this](double, double, int64_t epoch) {
        return (1.0 - 0.01 * static_cast<double>(index)) * (1.0 - 0.5 / static_cast<double>(epoch));
      };
      epoch_milliseconds = 2;
    }
    void run(const TrialSpec& spec, TrialMonitor& monitor) override {
      index = spec.trial->index;
      FakeRunner::run(spec, monitor);
    }
  };
  LaterIsWorse r0, r1, r2;
  const JobRun run =
      run_on_ranks(text, {&r0, &r1, &r2}, same_options(quiet_options(dir.path()), 3));
  for (const auto& outcome : run.outcomes) BOOST_TEST(outcome.returned);
  const SearchResult& result = run.results[0];
  BOOST_REQUIRE_EQUAL(result.trials.size(), 27u);
  int at[10] = {};
  for (const Trial& t : result.trials) {
    BOOST_TEST((t.epochs == 1 || t.epochs == 3 || t.epochs == 9));
    ++at[t.epochs];
    BOOST_TEST(t.status == (t.epochs == 9 ? "ok" : "stopped_early"));
  }
  // ASHA's final state: the top third of every rung was promoted (asynchronous promotions may
  // have taken a few more, decided on fewer trials).
  BOOST_TEST(at[3] + at[9] >= 9);
  BOOST_TEST(3 * at[9] >= at[3] + at[9] - 2);
  BOOST_TEST(at[1] > at[3] + at[9]);
  for (int index = 0; index < 9; ++index) BOOST_TEST(result.trials[index].epochs >= 3, index);
  for (int index = 0; index < 3; ++index) BOOST_TEST(result.trials[index].epochs == 9, index);
  BOOST_REQUIRE(result.best);
  BOOST_TEST(result.best->index == 0);

  // Each promotion continued from the epoch its rung paused at, on whichever rank was free: some
  // on another rank than the one that paused it.
  std::map<std::string, std::vector<int64_t>> starts;
  for (FakeRunner* r : {&r0, &r1, &r2}) {
    for (const auto& [id, start] : r->starts) starts[id].push_back(start);
  }
  for (const Trial& t : result.trials) {
    auto s = starts[t.id()];
    std::sort(s.begin(), s.end());
    if (t.epochs == 1) BOOST_TEST(s == std::vector<int64_t>({1}));
    if (t.epochs == 3) BOOST_TEST(s == std::vector<int64_t>({1, 2}));
    if (t.epochs == 9) BOOST_TEST(s == std::vector<int64_t>({1, 2, 4}));
    BOOST_TEST(t.curves.at("iteration_loss").size() == static_cast<std::size_t>(3 * t.epochs));
  }
  std::map<std::string, int> paused_on;
  int moved = 0, promotions = 0;
  for (const json& line : journal_lines(dir / "trials.jsonl")) {
    if (line["status"] == "stopped_early") continue;
    const std::string id = fmt::format("0_{}", line["index"].get<int>());
    if (line["rung"].get<int>() > 0) {
      ++promotions;
      moved += paused_on.at(id) != line["rank"].get<int>();
    }
    paused_on[id] = line["rank"].get<int>();
  }
  BOOST_TEST(promotions == at[3] + 2 * at[9]);
  BOOST_TEST_MESSAGE(moved << " of " << promotions << " promotions continued on another rank");
  BOOST_TEST(moved > 0);
  BOOST_TEST(!fs::exists(dir / "trials"));
}

BOOST_AUTO_TEST_CASE(ctrl_c_on_rank_0_interrupts_every_rank_and_resume_finishes_the_search) {
  test::TempDir whole, pieces;
  FakeRunner reference;
  const SearchResult expected =
      run_search(test::yaml(kTwoStages), reference, quiet_options(whole.path()));

  // Ctrl-C reaches rank 0 alone, while trials run on every rank (rank 1's runner sets rank 0's
  // flag after its second trial, mid-search).
  std::atomic<bool> stop{false};
  FakeRunner r0, r1, r2;
  for (FakeRunner* r : {&r0, &r1, &r2}) r->epoch_milliseconds = 20;
  r1.stop_flag = &stop;
  r1.stop_after_runs = 2;
  auto options = same_options(quiet_options(pieces.path()), 3);
  options[0].stop = &stop;
  const JobRun run = run_on_ranks(kTwoStages, {&r0, &r1, &r2}, options);
  for (const auto& outcome : run.outcomes) BOOST_TEST(outcome.returned);
  for (const SearchResult& result : run.results) BOOST_TEST(result.interrupted);
  const auto journaled = journal_lines(pieces / "trials.jsonl");
  BOOST_TEST(journaled.size() >= 2u);
  BOOST_TEST(journaled.size() < 12u);
  BOOST_TEST(!fs::exists(pieces / "best.yaml"));

  // One process resumes it: only the trials not journaled run, and the search ends as the
  // uninterrupted one did.
  FakeRunner resumer;
  SearchOptions resume = quiet_options(pieces.path());
  resume.resume = true;
  const SearchResult resumed = run_search(test::yaml(kTwoStages), resumer, resume);
  BOOST_TEST(resumer.runs == static_cast<int>(18 - journaled.size()));
  std::set<std::string> journaled_ids;
  for (const json& line : journaled) {
    journaled_ids.insert(fmt::format("0_{}", line["index"].get<int>()));
  }
  for (const auto& [id, start] : resumer.starts) BOOST_TEST(!journaled_ids.count(id), id);
  BOOST_REQUIRE_EQUAL(resumed.trials.size(), expected.trials.size());
  for (std::size_t i = 0; i < expected.trials.size(); ++i) {
    BOOST_TEST(resumed.trials[i].values[0].number == expected.trials[i].values[0].number);
    BOOST_TEST(resumed.trials[i].metric == expected.trials[i].metric);
  }
  BOOST_TEST(file_text(pieces / "best.yaml") == file_text(whole / "best.yaml"));
}

BOOST_AUTO_TEST_CASE(a_signal_on_one_worker_alone_stops_the_whole_search) {
  test::TempDir dir;
  std::atomic<bool> worker_signal{true};  // rank 2 was signalled before its first trial ended
  FakeRunner r0, r1, r2;
  for (FakeRunner* r : {&r0, &r1, &r2}) r->epoch_milliseconds = 10;
  auto options = same_options(quiet_options(dir.path()), 3);
  options[2].stop = &worker_signal;
  const JobRun run = run_on_ranks(kTwoStages, {&r0, &r1, &r2}, options);
  for (const auto& outcome : run.outcomes) BOOST_TEST(outcome.returned);
  BOOST_TEST(run.results[0].interrupted);
  BOOST_TEST(r2.runs == 0);
  // Rank 0 stopped handing out trials: far fewer than the 12 of stage 1 ran.
  BOOST_TEST(journal_lines(dir / "trials.jsonl").size() < 6u);
}

BOOST_AUTO_TEST_CASE(a_failure_outside_training_on_a_worker_aborts_the_job_naming_the_trial) {
  test::TempDir dir;
  struct Crash {};  // escapes the trial runner: no strata::Error, no std::exception
  struct CrashingRunner : FakeRunner {
    void run(const TrialSpec& spec, TrialMonitor& monitor) override {
      if (spec.trial->index >= 4) throw Crash{};
      FakeRunner::run(spec, monitor);
    }
  };
  FakeRunner r0, r1;
  CrashingRunner r2;
  for (FakeRunner* r : {&r0, &r1, static_cast<FakeRunner*>(&r2)}) r->epoch_milliseconds = 10;
  const JobRun run =
      run_on_ranks(kTwoStages, {&r0, &r1, &r2}, same_options(quiet_options(dir.path()), 3));
  // Every rank ended with the abort (MPI_Abort ends every process); rank 0 did not hang.
  for (const auto& outcome : run.outcomes) BOOST_TEST(outcome.aborted.has_value());
  const auto& aborted = *run.outcomes[0].aborted;
  BOOST_TEST(aborted.rank == 2);
  BOOST_TEST(aborted.code != 0);
  STRATA_CHECK_CONTAINS(aborted.message, "stopped the search");
  STRATA_CHECK_CONTAINS(aborted.message, "--resume");
  BOOST_TEST_MESSAGE("abort: " << aborted.message);
  // The journal holds only whole lines of finished trials.
  for (const json& line : journal_lines(dir / "trials.jsonl")) BOOST_TEST(line["status"] == "ok");
}

BOOST_AUTO_TEST_CASE(a_rank_with_another_experiment_stops_the_search_before_any_trial) {
  test::TempDir dir;
  FakeRunner r0, r1;
  test::ThreadJob job(2);
  std::string error;
  const auto outcomes = job.run([&](test::ThreadCommunicator& communicator) {
    const int r = communicator.rank();
    std::string text = kTwoStages;
    if (r == 1) text.replace(text.find("  seed: 4"), 9, "  seed: 5");  // another search
    const Config experiment = test::yaml(text);
    SearchOptions options = quiet_options(dir.path());
    options.communicator = &communicator;
    if (r == 0) {
      error = test::error_of([&] { run_search(experiment, r0, options); });
    } else {
      run_search(experiment, r1, options);
    }
  });
  STRATA_CHECK_CONTAINS(error, "rank 1 (node0) runs another search than rank 0");
  BOOST_TEST(outcomes[0].returned);
  BOOST_TEST(outcomes[1].returned);  // told to stop, it left quietly
  BOOST_TEST(r0.runs + r1.runs == 0);
  BOOST_TEST(!fs::exists(dir / "trials.jsonl"));
}

BOOST_AUTO_TEST_CASE(one_rank_is_one_process) {
  // A job of one rank (mpirun -np 1) searches as a process without MPI does, journal and all.
  test::TempDir a, b;
  FakeRunner plain, ranked;
  run_search(test::yaml(kTwoStages), plain, quiet_options(a.path()));
  test::ThreadJob job(1);
  job.run([&](test::ThreadCommunicator& communicator) {
    SearchOptions options = quiet_options(b.path());
    options.communicator = &communicator;
    run_search(test::yaml(kTwoStages), ranked, options);
  });
  const auto la = journal_lines(a / "trials.jsonl"), lb = journal_lines(b / "trials.jsonl");
  BOOST_REQUIRE_EQUAL(la.size(), lb.size());
  for (std::size_t i = 0; i < la.size(); ++i) {
    json x = la[i], y = lb[i];
    x.erase("seconds");
    y.erase("seconds");
    BOOST_TEST(x == y);
  }
}

BOOST_AUTO_TEST_SUITE_END()
