// test_rank_skew: out = in * scale, a layer with one learnable parameter `scale` [1] that
// misbehaves under MPI, as a plugin whose behaviour depends on the rank would:
//   mode: drift (default)  in a training forward on a rank other than 0 it nudges its own scale
//                          by 1e-3; the replicas then differ, which the trainer's replica check
//                          (distributed.check_replicas) must catch and name;
//   mode: hang             rank 1's first training forward never returns (it sleeps), so the
//                          other ranks wait in the step's collective until the watchdog aborts.
// In one process (no communicator, or rank 0) it is a plain learnable scale.
#include <chrono>
#include <thread>

#include "strata/communicator.hpp"
#include "strata/layer.hpp"
#include "strata/plugin.hpp"

namespace {
class RankSkew final : public strata::Layer {
 public:
  explicit RankSkew(const strata::Config& config) : hang_(config.get<std::string>("mode", "drift") == "hang") {}
  std::string_view type() const override { return "test_rank_skew"; }
  std::vector<strata::Param*> params() override { return {&scale_}; }
  void forward(strata::Context& context, std::span<const strata::Tensor> in,
               strata::Tensor& out) override {
    if (context.training && context.communicator != nullptr && context.communicator->rank() > 0) {
      if (hang_ && context.communicator->rank() == 1) std::this_thread::sleep_for(std::chrono::hours(1));
      if (!hang_) scale_.value.data()[0] += 1e-3f;
    }
    const float scale = scale_.value.data()[0];
    for (int64_t i = 0; i < out.numel(); ++i) out.data()[i] = in[0].data()[i] * scale;
  }
  void backward(strata::Context&, std::span<const strata::Tensor> in, const strata::Tensor&,
                const strata::Tensor& dout, std::span<strata::Tensor> din) override {
    const float scale = scale_.value.data()[0];
    double grad = 0;
    for (int64_t i = 0; i < dout.numel(); ++i) grad += double(dout.data()[i]) * in[0].data()[i];
    scale_.grad.data()[0] = static_cast<float>(grad);
    if (din[0].defined()) {
      for (int64_t i = 0; i < dout.numel(); ++i) din[0].data()[i] = dout.data()[i] * scale;
    }
  }

 protected:
  strata::Shape infer_shape(const strata::SetupContext&, std::span<const strata::Shape> in) override {
    return in[0];
  }

 private:
  bool hang_;
  strata::Param scale_ = 
      strata::Param::make("scale", strata::Shape{1}, "{type: constant, value: 1}", 1, 1, 0.0f);
};
void register_all(strata::Registries& registries) {
  registries.layers.add<RankSkew>("test_rank_skew");
}
}  // namespace

STRATA_PLUGIN("test_rank_skew", "0.0", register_all)
