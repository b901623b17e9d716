#include "strata/memory_plan.hpp"

#include <algorithm>
#include <numeric>

#include "strata/error.hpp"

namespace strata {

ArenaPlan plan_arena(std::span<const BufferRequest> requests, int64_t alignment) {
  for (const BufferRequest& request : requests) {
    if (request.floats < 0 || request.first > request.last) {
      fail("plan_arena: a buffer of {} floats live over steps [{}, {}]", request.floats,
           request.first, request.last);
    }
  }
  const auto aligned = [alignment](int64_t floats) {
    return (floats + alignment - 1) / alignment * alignment;
  };
  std::vector<std::size_t> order(requests.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    return requests[a].floats > requests[b].floats;
  });
  ArenaPlan plan;
  plan.offsets.assign(requests.size(), 0);
  std::vector<std::size_t> placed;
  std::vector<std::pair<int64_t, int64_t>> busy;  // [begin, end) of placed buffers live with it
  for (const std::size_t i : order) {
    const BufferRequest& request = requests[i];
    if (request.floats == 0) continue;
    busy.clear();
    for (const std::size_t j : placed) {
      if (requests[j].first <= request.last && request.first <= requests[j].last) {
        busy.emplace_back(plan.offsets[j], plan.offsets[j] + requests[j].floats);
      }
    }
    std::sort(busy.begin(), busy.end());
    int64_t offset = 0;
    for (const auto& [begin, end] : busy) {
      if (begin - offset >= request.floats) break;  // the gap before this one fits
      offset = std::max(offset, aligned(end));
    }
    plan.offsets[i] = offset;
    plan.floats = std::max(plan.floats, offset + request.floats);
    placed.push_back(i);
  }
  plan.floats = aligned(plan.floats);
  return plan;
}

int64_t peak_live_floats(std::span<const BufferRequest> requests) {
  int64_t peak = 0;
  for (const BufferRequest& at : requests) {  // the peak is reached at some buffer's first step
    int64_t live = 0;
    for (const BufferRequest& other : requests) {
      if (other.first <= at.first && at.first <= other.last) live += other.floats;
    }
    peak = std::max(peak, live);
  }
  return peak;
}

}  // namespace strata
