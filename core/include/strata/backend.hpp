// strata/backend.hpp: compute backends and the kernels they provide.
//
// A Backend is a named execution policy ("reference": serial loops, "tbb": oneTBB). It owns the
// thread count and offers parallel_for to layers that do simple element-wise work themselves.
//
// Heavy ops go through kernels, in the describe-pick-run style: a layer fills an op descriptor once
// at setup (ops.hpp), KernelRegistry::pick() finds the backend's kernel for that op: the first of
// the backend's ordered implementations whose supports() accepts the descriptor (falling back to
// "reference", with a note, when the backend has none or none supports the descriptor),
// the kernel prepare()s for the descriptor (plans workspace), and then runs on every step.
// "reference" is the ground truth every other backend is tested against.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

namespace strata {

// The arithmetic of the matrix products of conv2d and linear (the experiment's `precision`
// key, docs/precision.md). kFp32: float inputs, float (or double) sums. kBf16: each input operand
// of a product (activations, weights, and in the backward the output gradients) rounded to
// bfloat16 (round to nearest even), products summed in float. Everything else stays float.
enum class Precision { kFp32, kBf16 };

// "fp32", "bf16"
std::string_view precision_name(Precision precision);
// The precision named `name` ("fp32" or "bf16"), nullopt for any other text.
std::optional<Precision> parse_precision(std::string_view name);

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string_view name() const = 0;
  // One line on what runs underneath (libraries, versions, kernel sets), for `strata bench` and
  // logs; empty when there is nothing to say.
  virtual std::string description() const { return {}; }
  // 0 means "all cores". Called once, before any work.
  virtual void set_threads(int threads) = 0;
  virtual int threads() const = 0;
  // Calls body(lo, hi) over disjoint sub-ranges covering [begin, end). A backend may run the
  // calls concurrently; chunks are at least `grain` long unless the range is shorter.
  virtual void parallel_for(int64_t begin, int64_t end, int64_t grain,
                            const std::function<void(int64_t, int64_t)>& body) = 0;
};

class KernelRegistry;

class Kernel {
 public:
  virtual ~Kernel() = default;
  // Which implementation runs, for `strata bench`, logs and tests. Defaults to the name the
  // kernel was registered under (KernelRegistry::add); a kernel that chooses among several paths
  // itself reports the ones it chose for its descriptor (e.g. tbb conv2d:
  // "fwd=direct bwd_data=small bwd_weights=winograd23"). Meaningful once prepared.
  virtual std::string implementation() const { return registered_name_; }

 private:
  friend class KernelRegistry;  // sets the registered name when it creates the kernel
  std::string registered_name_;
};

// Base of every op-specific kernel interface. Desc is the op's descriptor type.
template <class D>
class OpKernel : public Kernel {
 public:
  using Desc = D;
  // Can this kernel run `desc`? Asked before the kernel is chosen.
  virtual bool supports(const Desc&) const { return true; }
  // Called once with the descriptor the kernel will run; kernels may override on_prepare() to plan
  // workspace or pack constants.
  void prepare(const Desc& desc) {
    desc_ = desc;
    on_prepare();
  }
  const Desc& desc() const { return desc_; }

 protected:
  virtual void on_prepare() {}
  Desc desc_{};
};

}  // namespace strata
