// dropout: inverted dropout (Srivastava et al. 2014; the CS231n formulation).
//
// WHAT THIS OBJECT REPRESENTS
//   Training (Context::training): each element is kept with probability keep_prob and scaled by
//   1/keep_prob, or set to 0; the expected value of every output equals its input, so inference
//   needs no rescaling. Inference: the identity.
//   No parameters.
//
// KEYS
//   keep_prob  0.5; the probability of KEEPING a unit (not PyTorch's drop probability p, which
//              is 1 - keep_prob); must be in (0, 1]. 1 makes the layer the identity.
//
// REQUIRES
//   - one input of any sample shape; in training, Context::rng is set.
// ENSURES
//   - output sample shape == input sample shape.
//   - the mask is drawn serially from *Context::rng (so a run is reproducible from its seed),
//     kept until the next forward, and backward() applies the same mask: dx = dy * mask.
#include <fmt/format.h>

#include <vector>

#include "common.hpp"
#include "strata/error.hpp"
#include "strata/export.hpp"

namespace strata::layers {

namespace {

class Dropout final : public Layer {
 public:
  explicit Dropout(const Config& config) : keep_prob_(config.get<double>("keep_prob", 0.5)) {
    if (!(keep_prob_ > 0.0 && keep_prob_ <= 1.0)) {
      config.fail_key("keep_prob",
                      fmt::format("must be in (0, 1], found {}; keep_prob is the probability of "
                                  "keeping a unit (1 - PyTorch's p)",
                                  keep_prob_));
    }
  }

  std::string_view type() const override { return "dropout"; }
  // backward applies the saved mask to dout: it reads neither tensor's values.
  bool backward_reads_inputs() const override { return false; }
  bool backward_reads_output() const override { return false; }
  bool recomputable() const override { return true; }

  // Inference is the identity: no node, later layers read the input.
  bool export_to(ExportContext& context) const override {
    context.pass_through();
    return true;
  }

  void forward(Context& context, std::span<const Tensor> in, Tensor& out) override {
    prepare_output(out, in[0].shape());
    const int64_t n = in[0].numel();
    // Run again for backward (Context::recomputing): what the forward it repeats did, with the
    // mask it drew.
    if (!context.recomputing) masked_ = context.training && keep_prob_ < 1.0;
    if (!masked_) {
      out.copy_from(in[0]);
      return;
    }
    if (context.recomputing) {
      if (static_cast<std::size_t>(n) != mask_.size()) {
        fail("dropout: recomputing a forward of {} values, but the forward before it masked {}", n,
             mask_.size());
      }
      apply_mask(context, in[0], out);
      return;
    }
    if (context.rng == nullptr) fail("dropout: training needs a random generator in the Context");
    // Uniform 24-bit draws: u = k / 2^24 with k uniform in [0, 2^24), keep when u < keep_prob.
    // The threshold is exact for any keep_prob representable in 24 bits.
    const auto threshold = static_cast<uint32_t>(keep_prob_ * 16777216.0);
    const auto scale = static_cast<float>(1.0 / keep_prob_);
    mask_.resize(static_cast<std::size_t>(n));  // keeps its capacity across batches
    Rng& rng = *context.rng;
    for (float& m : mask_) m = (rng() >> 8) < threshold ? scale : 0.0f;
    apply_mask(context, in[0], out);
  }

  void backward(Context& context, std::span<const Tensor>, const Tensor&, const Tensor& dout,
                std::span<Tensor> din) override {
    if (!din[0].defined()) return;
    if (!masked_) {
      din[0].copy_from(dout);
      return;
    }
    if (static_cast<std::size_t>(dout.numel()) != mask_.size()) {
      fail("dropout: backward got {} gradient values but the last forward masked {}", dout.numel(),
           mask_.size());
    }
    apply_mask(context, dout, din[0]);
  }

 protected:
  Shape infer_shape(const SetupContext&, std::span<const Shape> inputs) override {
    return inputs[0];
  }

 private:
  void apply_mask(Context& context, const Tensor& from, Tensor& to) const {
    const float* a = from.data();
    const float* m = mask_.data();
    float* b = to.data();
    parallel_elementwise(context, from.numel(), [=](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) b[i] = a[i] * m[i];
    });
  }

  double keep_prob_;
  bool masked_ = false;
  std::vector<float> mask_;  // 0 or 1/keep_prob per element of the last training forward
};

}  // namespace

void register_dropout(Registries& registries) { registries.layers.add<Dropout>("dropout"); }

}  // namespace strata::layers
