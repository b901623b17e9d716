// strata/memory_plan.hpp: placing buffers of known lifetimes in one arena.
//
// A pass over a graph runs in steps (backward: one step per layer, last layer first). Each buffer
// it needs is live over a closed range of steps [first, last]: written at `first`, read for the
// last time at `last`. Two buffers whose ranges do not intersect may share memory. plan_arena
// gives every buffer an offset in one arena so that buffers live at a common step never overlap.
//
// The placement is greedy by size (TensorFlow Lite's "greedy by size" planner): the largest
// buffer first, each at the lowest offset that clears every buffer already placed whose range
// intersects its own. It is not always optimal (the problem is NP-hard) but never worse than the
// peak of the sum of live sizes by more than fragmentation, and it is deterministic.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace strata {

struct BufferRequest {
  int64_t floats = 0;  // size; 0 is allowed (the buffer then gets offset 0 and no memory)
  int first = 0;       // live from step `first` to step `last`, inclusive
  int last = 0;
};

struct ArenaPlan {
  std::vector<int64_t> offsets;  // per request, in floats, each a multiple of the alignment
  int64_t floats = 0;            // the arena's size
};

// Offsets in floats are multiples of `alignment` floats (16: 64 bytes, Tensor's alignment).
// REQUIRES: first <= last and floats >= 0 for every request.
// ENSURES: requests whose step ranges intersect occupy disjoint [offset, offset + floats).
ArenaPlan plan_arena(std::span<const BufferRequest> requests, int64_t alignment = 16);

// The largest sum of the sizes of the buffers live at one step: no placement can use less.
int64_t peak_live_floats(std::span<const BufferRequest> requests);

}  // namespace strata
