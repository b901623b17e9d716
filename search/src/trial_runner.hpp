// search/src/trial_runner.hpp: running one job of a search (private to libstrata_search).
#pragma once

#include <atomic>
#include <filesystem>

#include "scheduler.hpp"
#include "strata/search/runner.hpp"
#include "strata/search/space.hpp"

namespace strata::search {

// Trains `job` with `runner` in its own tbb::task_arena of plan.threads_per_trial threads, in
// `out_dir`/trials/<id>, to the stage's epochs (or, under ASHA, to the job's rung). Returns the
// trial with its status (ok, exploded, failed, paused at a rung, or interrupted by `stop`),
// metric, curves and time. A paused trial keeps its checkpoint as paused.h5 for its promotion;
// a finished one's folder is removed.
Trial run_trial(Job& job, const Plan& plan, TrialRunner& runner,
                const std::filesystem::path& out_dir, const std::atomic<bool>* stop);

}  // namespace strata::search
