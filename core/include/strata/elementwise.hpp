// strata/elementwise.hpp: element-wise loops for layer plugins, as the in-tree layers write them
// (relu, sigmoid, tanh, add, dropout: plugins/layers).
//
//   void forward(strata::Context& context, std::span<const strata::Tensor> in,
//                strata::Tensor& out) override {
//     const float* x = in[0].data();
//     float* y = out.data();
//     strata::parallel_elementwise(context, in[0].numel(), [=](int64_t lo, int64_t hi) {
//       for (int64_t i = lo; i < hi; ++i) y[i] = gelu(x[i]);   // a plain loop: vectorized
//     });
//   }
//
// WHAT IT DOES
//   parallel_elementwise(context, n, body) calls body(lo, hi) on disjoint chunks covering
//   [0, n), spread over the context's backend (its parallel_for, on the backend's threads) in
//   chunks of kElementwiseGrain elements; serially, in one call, when n is at most one chunk or
//   the context has no backend. parallel_elementwise(context, items, elements_per_item, body)
//   does the same over items (planes, channels, samples) of that many elements each, in tasks of
//   about kElementwiseGrain elements (concat, multiply; the normalizations, softmax and pooling
//   run through kernels, strata/ops.hpp).
// REQUIRES
//   - body may run concurrently on different chunks: it writes only elements lo..hi-1 of its
//     outputs (a reduction over all elements, such as a parameter gradient, needs per-chunk
//     partial sums or a serial loop).
// ENSURES
//   - the result does not depend on the thread count when body is element-wise.
//   - the loop inside body is compiled in the plugin, with the plugin's flags: strata_add_plugin()
//     builds with optimization (Release flags when no build type is set), so a simple loop over
//     floats is vectorized; keep per-element functions inline and branch-light.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>

#include "strata/backend.hpp"
#include "strata/layer.hpp"

namespace strata {

// Element-wise work is split into chunks of this many elements: large enough that a chunk costs
// far more than scheduling it (tiny layers stay on one thread), small enough to spread a
// [64, 32, 28, 28] activation over both cores.
inline constexpr int64_t kElementwiseGrain = 16384;

// The same over `items` items of about `elements_per_item` elements each (planes, channels,
// samples): body(lo, hi) gets item indices, and a task takes max(1, kElementwiseGrain /
// elements_per_item) items, so it still holds about kElementwiseGrain elements. Serial when
// `items` fits in one task or the context has no backend.
inline void parallel_elementwise(Context& context, int64_t items, int64_t elements_per_item,
                                 const std::function<void(int64_t, int64_t)>& body) {
  if (items <= 0) return;
  const int64_t grain =
      std::max<int64_t>(1, kElementwiseGrain / std::max<int64_t>(1, elements_per_item));
  if (context.backend == nullptr || items <= grain) {
    body(0, items);
    return;
  }
  context.backend->parallel_for(0, items, grain, body);
}

inline void parallel_elementwise(Context& context, int64_t n,
                                 const std::function<void(int64_t, int64_t)>& body) {
  parallel_elementwise(context, n, 1, body);
}

}  // namespace strata
