// strata/recompute_plan.hpp: which layer outputs training keeps, and which it computes again.
//
// Recomputation (Graph::set_recomputation; `recompute: true` in an experiment) trades time for
// memory (Chen et al., "Training Deep Nets with Sublinear Memory Cost", 2016). The nodes are cut
// into segments of consecutive nodes. Of the outputs that backward needs, only those read after
// their segment's end are kept from forward to backward; the others are dropped after forward,
// like the outputs no backward reads, and computed again ("replayed") just before their segment's
// backward, from the kept ones. A replayed output lives only while its segment's backward runs.
// The memory saved is the outputs kept inside segments; the price is running those layers'
// forward a second time.
//
// A segment may end only after a node whose output is the one tensor crossing that point (the
// output of a residual block, of an inception module's concatenation, of any layer of a chain),
// so that no more than that tensor is kept at a cut, and never between a layer and the activation
// fused into it. Only layers that say Layer::recomputable() are replayed; the output a layer that
// does not say so would compute again is kept instead.
//
// The steps of a training step, in the sense of BufferRequest: node i's forward at step i; then,
// from the last segment to the first, the segment's replay (one step), then the backward of its
// nodes, last to first (one step each).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace strata {

// A node as the planner sees it.
struct RecomputeNode {
  std::vector<int> inputs;    // producing nodes, earlier than this one; -1 is the model input
  int64_t floats = 0;         // output size per image (0 for one sharing its producer's buffer)
  bool recomputable = false;  // Layer::recomputable()
  bool backward_reads_inputs = true;
  bool backward_reads_output = true;
  bool cut_after = true;  // may a segment end after this node (false: its activation fuses into it)
};

struct RecomputePlan {
  std::vector<int> segment_end;    // per segment, its last node; segment s is (end[s-1], end[s]]
  std::vector<int> segment_of;     // per node
  std::vector<char> kept;          // per node: the output stays from forward to its node's backward
  std::vector<char> replayed;      // per node: the output is computed again at its segment's replay
  std::vector<int> replay_step;    // per segment
  std::vector<int> backward_step;  // per node
  int steps = 0;                   // of the whole step: the forwards, the replays, the backwards
  int64_t replayed_floats = 0;     // per image, the outputs computed again (the time's price)
};

// The plan whose segments close at the first allowed cut after their outputs reach `budget`
// floats per image (0: at every allowed cut). The model's output is always kept.
// REQUIRES: nodes is not empty; inputs refer to earlier nodes or -1.
RecomputePlan plan_recomputation(std::span<const RecomputeNode> nodes, int64_t budget);

// The budgets worth trying for `nodes`, smallest first: 0 and multiples of the largest output up to
// the whole network. The graph plans each and keeps the one whose arena is smallest.
std::vector<int64_t> recompute_budgets(std::span<const RecomputeNode> nodes);

}  // namespace strata
