#include "strata/recompute_plan.hpp"

#include <algorithm>
#include <cmath>

namespace strata {

namespace {

// Per node, the highest index of a node reading it (-1: none).
std::vector<int> last_consumers(std::span<const RecomputeNode> nodes) {
  std::vector<int> last(nodes.size(), -1);
  for (std::size_t c = 0; c < nodes.size(); ++c) {
    for (int producer : nodes[c].inputs) {
      if (producer >= 0) last[static_cast<std::size_t>(producer)] = static_cast<int>(c);
    }
  }
  return last;
}

// Per node p: may a segment end after p? When p allows it and p's output is the only tensor made
// at or before p and read after it (the model input does not count: the caller holds it).
std::vector<char> allowed_cuts(std::span<const RecomputeNode> nodes,
                               const std::vector<int>& last_consumer) {
  const std::size_t n = nodes.size();
  std::vector<int> crossing(n + 1, 0);  // difference array over cut positions
  for (std::size_t i = 0; i < n; ++i) {
    if (last_consumer[i] > static_cast<int>(i)) {
      ++crossing[i];
      --crossing[static_cast<std::size_t>(last_consumer[i])];
    }
  }
  std::vector<char> allowed(n, 0);
  int live = 0;
  for (std::size_t p = 0; p < n; ++p) {
    live += crossing[p];
    const bool only_own = live == 1 && last_consumer[p] > static_cast<int>(p);
    allowed[p] = nodes[p].cut_after && (only_own || live == 0);
  }
  return allowed;
}

}  // namespace

RecomputePlan plan_recomputation(std::span<const RecomputeNode> nodes, int64_t budget) {
  const std::size_t n = nodes.size();
  const std::vector<int> last_consumer = last_consumers(nodes);
  const std::vector<char> allowed = allowed_cuts(nodes, last_consumer);
  RecomputePlan plan;
  plan.segment_of.assign(n, 0);
  int64_t accumulated = 0;
  for (std::size_t p = 0; p < n; ++p) {
    plan.segment_of[p] = static_cast<int>(plan.segment_end.size());
    accumulated += nodes[p].floats;
    if (p + 1 == n || (allowed[p] && accumulated >= budget)) {
      plan.segment_end.push_back(static_cast<int>(p));
      accumulated = 0;
    }
  }

  // What backward reads: an output its own backward or a consumer's backward reads, and the
  // model's output (the loss reads it).
  std::vector<char> needed(n, 0);
  needed[n - 1] = 1;
  for (std::size_t c = 0; c < n; ++c) {
    if (nodes[c].backward_reads_output) needed[c] = 1;
    if (!nodes[c].backward_reads_inputs) continue;
    for (int producer : nodes[c].inputs) {
      if (producer >= 0) needed[static_cast<std::size_t>(producer)] = 1;
    }
  }
  // From the last node back, so that a node's consumers are decided first: an output is wanted
  // in backward when backward reads it or a replayed layer reads it; wanted, it is replayed when
  // its layer can be run again, it is read only inside its segment and it is not the model's
  // output, and kept otherwise.
  plan.kept.assign(n, 0);
  plan.replayed.assign(n, 0);
  std::vector<char> read_by_replay(n, 0);
  for (std::size_t i = n; i-- > 0;) {
    const bool wanted = needed[i] || read_by_replay[i];
    const int end = plan.segment_end[static_cast<std::size_t>(plan.segment_of[i])];
    const bool inside = last_consumer[i] <= end;
    plan.replayed[i] = wanted && inside && i + 1 != n && nodes[i].recomputable;
    plan.kept[i] = wanted && !plan.replayed[i];
    if (!plan.replayed[i]) continue;
    plan.replayed_floats += nodes[i].floats;
    for (int producer : nodes[i].inputs) {
      if (producer >= 0) read_by_replay[static_cast<std::size_t>(producer)] = 1;
    }
  }

  // The timeline: forwards, then per segment from the last its replay and its backwards.
  plan.backward_step.assign(n, 0);
  plan.replay_step.assign(plan.segment_end.size(), 0);
  int step = static_cast<int>(n);
  for (std::size_t s = plan.segment_end.size(); s-- > 0;) {
    plan.replay_step[s] = step++;
    const int first = s == 0 ? 0 : plan.segment_end[s - 1] + 1;
    for (int i = plan.segment_end[s]; i >= first; --i) {
      plan.backward_step[static_cast<std::size_t>(i)] = step++;
    }
  }
  plan.steps = step;
  return plan;
}

std::vector<int64_t> recompute_budgets(std::span<const RecomputeNode> nodes) {
  int64_t largest = 1, total = 0;
  for (const RecomputeNode& node : nodes) {
    largest = std::max(largest, node.floats);
    total += node.floats;
  }
  std::vector<int64_t> budgets{0};
  for (int64_t budget = largest; budget < total; budget *= 2) budgets.push_back(budget);
  // Chen et al.'s sqrt(n) segments: about sqrt(total * largest) per segment.
  budgets.push_back(
      static_cast<int64_t>(std::sqrt(static_cast<double>(total) * static_cast<double>(largest))));
  std::sort(budgets.begin(), budgets.end());
  budgets.erase(std::unique(budgets.begin(), budgets.end()), budgets.end());
  return budgets;
}

}  // namespace strata
