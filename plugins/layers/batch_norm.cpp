// batch_norm: batch normalization per channel, as torch.nn.BatchNorm2d (and BatchNorm1d on [C]).
//
// WHAT THIS OBJECT REPRESENTS
//   For each channel c, over the m = N*H*W values of that channel in the batch:
//     training:   mean_c = sum x / m,  var_c = sum (x - mean_c)^2 / m       (biased)
//                 y = (x - mean_c) / sqrt(var_c + eps) * weight[c] + bias[c]
//                 running_mean = (1 - momentum) * running_mean + momentum * mean_c
//                 running_var  = (1 - momentum) * running_var  + momentum * var_c * m/(m - 1)
//                 num_batches_tracked += 1                                   (unbiased update)
//     evaluation: y = (x - running_mean[c]) / sqrt(running_var[c] + eps) * weight[c] + bias[c]
//   The running statistics change only in a training forward. With `momentum: null` (PyTorch's
//   momentum=None) the running statistics are the cumulative average of the batches' statistics:
//   momentum above is 1/num_batches_tracked (after its increment), so each batch weighs the same.
//   With `track_running_stats: false` there are no running statistics at all: training and
//   evaluation both normalize with the batch's statistics (and backward, in both modes, is the
//   batch-statistics gradient), and the checkpoint holds no buffers (as PyTorch's state_dict).
//   Without `affine`, weight is 1 and bias 0 and the layer has no parameters.
//   Synchronized (`sync: true`, in a training pass whose Context::communicator is set): the batch
//   is the union of every rank's batch, m = the sum of N_r*H*W over the ranks, and the formulas
//   above hold for that batch, so N ranks with B/N images each compute what one process computes
//   with B (up to the order of the sums). Per training forward, two blocking allreduces of doubles
//   (the per-channel sums with the count: C + 1 values, then the per-channel squared deviations
//   from the global mean: C values): the same two passes as one process makes, so no
//   cancellation (a one-pass sum of squares would lose digits when |mean| >> std). Per training
//   backward, one allreduce of 2C values (sum dy and sum dy * x_hat, in the units the trainer
//   scaled dy to: each rank's loss gradient times n_rank / n_global, so plain sums are right). A
//   rank with no images still takes part, with zero contributions. Without a communicator (a single
//   process), in evaluation, and with `sync: false` (the default, PyTorch DDP's per-rank
//   statistics) nothing is reduced and each rank normalizes with its own batch.
//   Parameters (PyTorch names): weight [C] (default init constant 1) and bias [C] (constant 0),
//   both with decay_mult 0 (no weight decay, as is usual for normalization parameters).
//   Buffers, saved in checkpoints under PyTorch's state_dict names: running_mean [C] (starts 0),
//   running_var [C] (starts 1), num_batches_tracked (scalar, shape [], stored as float32 where
//   PyTorch uses int64; a converter casts it).
//
// KEYS
//   momentum  0.1, in [0, 1]: weight of the new batch in the running statistics (PyTorch's
//             convention, the opposite of Keras' and Caffe's "moving average fraction"); null:
//             the cumulative average (weight 1/num_batches_tracked)
//   track_running_stats  true: false keeps no running statistics and normalizes with the batch's
//             statistics in evaluation too (PyTorch's track_running_stats=False)
//   eps       1e-5, > 0: added to the variance before the square root
//   affine    true: learn weight and bias
//   sync      false: true reduces the batch statistics across the ranks of an MPI job (above);
//             no effect in a single process. Not saved: a checkpoint does not depend on it.
//
// REQUIRES
//   - one input of sample shape [C, H, W] (BatchNorm2d) or [C] (BatchNorm1d on features).
//   - in training, more than one value per channel (N*H*W > 1), as PyTorch requires; synchronized,
//     over all ranks together (a rank's own batch may then be empty, N = 0).
//   - synchronized: every rank runs the same training forwards and backwards in the same order
//     (the collectives' contract, strata/communicator.hpp), and each backward follows the
//     forward it belongs to with the same communicator.
// ENSURES
//   - output sample shape == input sample shape.
//   - backward matches the forward's mode (Context::training): in training (and always without
//     running statistics) the full batch-statistics gradient, through the mean and variance of
//     the last forward that computed them (which backward must follow, as in every training
//     step); in evaluation the affine map with the running statistics. Parameter gradients:
//     dweight = sum dy * x_hat, dbias = sum dy, over this rank's values (synchronized too, with
//     x_hat from the global statistics): the trainer sums parameter gradients across ranks, as
//     for every other layer.
//   - the passes over the data run on the backend's "batch_norm" kernel (strata/ops.hpp:
//     per-channel sums and squared deviations, the per-channel affine map, the gradient sums and
//     the input gradient); the layer keeps the statistics, the reductions across ranks and the
//     running statistics. Every sum runs in double, in an order fixed by the kernel and the shape,
//     so a backend gives the same bits for the same input whatever its thread count; backends
//     differ only in that order ("reference": 8 partial sums per channel; "tbb": blocks of images
//     per channel, 16 partial sums each), which the conformance check bounds (1e-4 relative).
//     Synchronized, the reduced sums are the same bits on every rank (the communicator's
//     guarantee), so are the running statistics; with one rank they equal the unsynchronized ones
//     bit for bit (the same kernel passes, without the reductions).
//   - batch independence holds in evaluation only, and only with track_running_stats: in training
//     (and always without running statistics) each sample's output depends on the whole batch
//     through the batch statistics.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <optional>
#include <span>
#include <string_view>
#include <utility>
#include <vector>

#include "common.hpp"
#include "strata/communicator.hpp"
#include "strata/error.hpp"
#include "strata/export.hpp"
#include "strata/ops.hpp"

namespace strata::layers {

namespace {

class BatchNorm final : public Layer {
 public:
  explicit BatchNorm(const Config& config)
      : momentum_(config.find("momentum") && config.at("momentum").is_null()
                      ? std::nullopt
                      : std::optional<double>(config.get<double>("momentum", 0.1))),
        eps_(config.get<double>("eps", 1e-5)),
        affine_(config.get<bool>("affine", true)),
        sync_(config.get<bool>("sync", false)),
        track_running_stats_(config.get<bool>("track_running_stats", true)) {
    if (momentum_ && !(*momentum_ >= 0.0 && *momentum_ <= 1.0)) {
      config.fail_key("momentum", fmt::format("must be in [0, 1], found {}", *momentum_));
    }
    if (!(eps_ > 0.0)) config.fail_key("eps", fmt::format("must be positive, found {}", eps_));
  }

  std::string_view type() const override { return "batch_norm"; }
  // backward reads its input (x, for x_hat), never its output.
  bool backward_reads_output() const override { return false; }
  bool recomputable() const override { return true; }
  // Synchronized, its training passes are collectives: the trainer runs them on every rank at
  // every step, with 0 images on a rank that has none.
  bool communicates() const override { return sync_; }
  // The kernel's name, and "+<activation>" while one is fused.
  std::string implementation() const override {
    if (!kernel_) return "";
    if (!fused_) return kernel_->implementation();
    return fmt::format("{}+{}", kernel_->implementation(), activation_name(*fused_));
  }
  bool mixes_samples_in_inference() const override { return !track_running_stats_; }
  // Fusion (Layer): the kernel's normalize applies the activation.
  bool fuses(const ActivationDesc&) const override { return true; }
  void set_fused_activation(const std::optional<ActivationDesc>& activation) override {
    fused_ = activation;
  }

  std::vector<Param*> params() override {
    if (affine_) return {&weight_, &bias_};
    return {};
  }

  std::vector<NamedTensor> buffers() override {
    if (!track_running_stats_) return {};
    return {{"running_mean", running_mean_},
            {"running_var", running_var_},
            {"num_batches_tracked", num_batches_tracked_}};
  }

  // Inference: ONNX BatchNormalization with the running statistics (without `affine`, a scale of
  // ones and a shift of zeros, which are no checkpoint tensors).
  bool export_to(ExportContext& context) const override {
    if (!track_running_stats_) {
      fail(
          "track_running_stats: false normalizes with each batch's own statistics in evaluation "
          "too, which ONNX BatchNormalization (running statistics) does not compute");
    }
    std::string scale, shift;
    if (affine_) {
      scale = context.parameter("weight", weight_.value);
      shift = context.parameter("bias", bias_.value);
    } else {
      Tensor ones(Shape{channels_}), zeros(Shape{channels_});
      ones.fill(1.0f);
      scale = context.parameter("unit_scale", ones);
      shift = context.parameter("zero_shift", zeros);
    }
    context
        .node("BatchNormalization",
              {context.input(), scale, shift, context.parameter("running_mean", running_mean_),
               context.parameter("running_var", running_var_)},
              {context.output()})
        .set("epsilon", static_cast<float>(eps_));
    return true;
  }

  void forward(Context& context, std::span<const Tensor> in, Tensor& out) override {
    const Tensor& x = in[0];
    prepare_output(out, x.shape());
    const ActivationDesc* fused = fused_ ? &*fused_ : nullptr;
    const int64_t batch = x.dim(0);
    const int64_t count = batch * spatial_;
    const auto channels = static_cast<std::size_t>(channels_);
    center_.resize(channels);
    scale_.resize(channels);
    shift_.resize(channels);

    // Run again for backward (Context::recomputing): the affine map of the forward it repeats,
    // which normalize() keeps in center_, scale_ and shift_; no statistics, no update.
    if (context.recomputing) {
      if (saved_batch_ != batch) {
        fail(
            "recomputing a forward needs the one before it on the same batch (that forward had "
            "batch {}, this one {})",
            saved_batch_, batch);
      }
      kernel_->normalize(x, center_.data(), scale_.data(), shift_.data(), out, fused);
      return;
    }
    // Without running statistics, evaluation normalizes with the batch's, as training does.
    if (!batch_statistics(context)) {
      for (std::size_t c = 0; c < channels; ++c) {
        const double inv_std = 1.0 / std::sqrt(static_cast<double>(running_var_.data()[c]) + eps_);
        set_affine(c, running_mean_.data()[c], inv_std);
      }
      kernel_->normalize(x, center_.data(), scale_.data(), shift_.data(), out, fused);
      return;
    }

    auto too_few_values = [&](double m, std::string_view over) {
      fail(
          "training needs more than one value per channel to compute batch statistics, got {} "
          "per channel{} (input {}; PyTorch refuses this too)",
          m, over, x.shape().str());
    };
    // The passes are the kernel's; synchronized, the sums are reduced across the ranks in
    // between. Unsynchronized, the same passes without the reductions: one rank gives the same
    // bits as none.
    Communicator* ranks = sync_ && context.training ? context.communicator : nullptr;
    if (ranks == nullptr && count < 2) too_few_values(static_cast<double>(count), "");
    reduced_.assign(channels + 1, 0.0);
    kernel_->channel_sums(x, reduced_.data());
    reduced_[channels] = static_cast<double>(count);
    if (ranks) {
      ranks->allreduce(std::span<double>(reduced_), ReduceOp::sum,
                       "batch_norm (sync) forward: per-channel sums and count");
    }
    const double m = reduced_[channels];  // the same on every rank: all fail, or none
    if (ranks && m < 2) too_few_values(m, fmt::format(" over the {} ranks", ranks->size()));
    saved_mean_.resize(channels);
    saved_inv_std_.resize(channels);
    for (std::size_t c = 0; c < channels; ++c) saved_mean_[c] = reduced_[c] / m;
    reduced_.resize(channels);
    kernel_->channel_squares(x, saved_mean_.data(), reduced_.data());
    if (ranks) {
      ranks->allreduce(std::span<double>(reduced_), ReduceOp::sum,
                       "batch_norm (sync) forward: per-channel squared deviations");
    }

    const bool update_running = context.training && track_running_stats_;
    const double momentum = !update_running ? 0.0
                            : momentum_
                                ? *momentum_
                                : 1.0 / (static_cast<double>(num_batches_tracked_.data()[0]) + 1.0);
    for (std::size_t c = 0; c < channels; ++c) {
      const double mean = saved_mean_[c], squares = reduced_[c];
      saved_inv_std_[c] = 1.0 / std::sqrt(squares / m + eps_);
      set_affine(c, mean, saved_inv_std_[c]);
      if (!update_running) continue;
      float& running_mean = running_mean_.data()[c];
      float& running_var = running_var_.data()[c];
      const double unbiased = squares / (m - 1.0);
      running_mean = static_cast<float>((1.0 - momentum) * running_mean + momentum * mean);
      running_var = static_cast<float>((1.0 - momentum) * running_var + momentum * unbiased);
    }
    kernel_->normalize(x, center_.data(), scale_.data(), shift_.data(), out, fused);
    saved_count_ = m;
    saved_batch_ = batch;
    saved_synchronized_ = ranks != nullptr;
    if (update_running) num_batches_tracked_.data()[0] += 1.0f;
  }

  void backward(Context& context, std::span<const Tensor> in, const Tensor&, const Tensor& dout,
                std::span<Tensor> din) override {
    const Tensor& x = in[0];
    const int64_t batch = x.dim(0);
    const bool batch_stats = batch_statistics(context);
    Communicator* ranks = context.training && sync_ ? context.communicator : nullptr;
    if (batch_stats && saved_batch_ != batch) {
      fail(
          "backward with batch statistics (in training, or track_running_stats: false) needs "
          "those of a forward on the same batch (the last such forward had batch {}, backward got "
          "{})",
          saved_batch_, batch);
    }
    if (batch_stats && saved_synchronized_ != (ranks != nullptr)) {
      fail(
          "sync: backward {} across ranks, but the training forward it follows {} (both must run "
          "with the same Context::communicator)",
          ranks ? "reduces" : "does not reduce", saved_synchronized_ ? "did" : "did not");
    }
    const auto channels = static_cast<std::size_t>(channels_);
    // The statistics the forward normalized with: the batch's (saved), or the running ones.
    const double* mean = saved_mean_.data();
    const double* inv_std = saved_inv_std_.data();
    if (!batch_stats) {
      running_.resize(2 * channels);
      for (std::size_t c = 0; c < channels; ++c) {
        running_[c] = running_mean_.data()[c];
        running_[channels + c] =
            1.0 / std::sqrt(static_cast<double>(running_var_.data()[c]) + eps_);
      }
      mean = running_.data();
      inv_std = running_.data() + channels;
    }
    // sum dy and sum dy * x_hat over this rank's values of each channel: the parameter gradients.
    reduced_.assign(2 * channels, 0.0);
    double* sum_dy = reduced_.data();
    double* sum_dy_xhat = reduced_.data() + channels;
    kernel_->gradient_sums(x, dout, mean, inv_std, sum_dy, sum_dy_xhat);
    if (affine_) {
      for (std::size_t c = 0; c < channels; ++c) {
        weight_.grad.data()[c] = static_cast<float>(sum_dy_xhat[c]);
        bias_.grad.data()[c] = static_cast<float>(sum_dy[c]);
      }
    }
    // Synchronized training: reduced even when no input gradient is wanted, so that every
    // training backward makes the same collective on every rank.
    if (ranks) {
      ranks->allreduce(std::span<double>(reduced_), ReduceOp::sum,
                       "batch_norm (sync) backward: per-channel sums of dy and dy * x_hat");
    }
    if (!din[0].defined()) return;
    // Batch statistics: dx = gamma * inv_std * (dy - mean(dy) - x_hat * mean(dy * x_hat)), the
    // means over the whole (synchronized: global) batch. Running statistics (evaluation): the
    // statistics are constants, dx = gamma * inv_std * dy.
    coefficients_.resize(3 * channels);
    double* scale = coefficients_.data();
    double* mean_dy = scale + channels;
    double* mean_dy_xhat = mean_dy + channels;
    for (std::size_t c = 0; c < channels; ++c) {
      const double gamma = affine_ ? weight_.value.data()[c] : 1.0f;
      scale[c] = gamma * inv_std[c];
      mean_dy[c] = batch_stats ? sum_dy[c] / saved_count_ : 0.0;
      mean_dy_xhat[c] = batch_stats ? sum_dy_xhat[c] / saved_count_ : 0.0;
    }
    kernel_->input_gradient(x, dout, mean, inv_std, scale, mean_dy, mean_dy_xhat, din[0]);
  }

 protected:
  Shape infer_shape(const SetupContext& context, std::span<const Shape> inputs) override {
    const Shape& in = inputs[0];
    if (in.rank() != 3 && in.rank() != 1) {
      fail(
          "batch_norm expects an image sample [channels, height, width] or features [channels], "
          "got {} (rank {})",
          in.str(), in.rank());
    }
    for (int64_t d : in.dims()) {
      if (d < 1) fail("batch_norm expects a non-empty sample, got {}", in.str());
    }
    channels_ = in[0];
    spatial_ = in.numel() / channels_;
    kernel_ = context.kernel<BatchNormKernel>("batch_norm", BatchNormDesc{channels_, spatial_});
    if (affine_) {
      weight_ = Param::make("weight", Shape{channels_}, "{type: constant, value: 1}", channels_,
                            channels_, 0.0f);
      bias_ = Param::make("bias", Shape{channels_}, "constant", channels_, channels_, 0.0f);
    }
    if (track_running_stats_) {
      running_mean_ = Tensor(Shape{channels_});
      running_var_ = Tensor(Shape{channels_});
      running_var_.fill(1.0f);
      num_batches_tracked_ = Tensor(Shape{});
    }
    return in;
  }

 private:
  // Whether this pass normalizes with the batch's statistics: in training, and in evaluation
  // without running statistics (track_running_stats: false); otherwise with the running ones.
  bool batch_statistics(const Context& context) const {
    return context.training || !track_running_stats_;
  }

  // The per-channel float center, scale and shift of y = (x - center) * scale + shift: the
  // normalization with mean and inv_std, then the affine map (weight 1 and bias 0 without
  // `affine`).
  void set_affine(std::size_t c, double mean, double inv_std) {
    center_[c] = static_cast<float>(mean);
    scale_[c] = static_cast<float>(inv_std * (affine_ ? weight_.value.data()[c] : 1.0f));
    shift_[c] = affine_ ? bias_.value.data()[c] : 0.0f;
  }

  std::optional<double> momentum_;  // empty: momentum: null, the cumulative average
  double eps_;
  bool affine_;
  bool sync_;
  bool track_running_stats_;
  int64_t channels_ = 0;
  int64_t spatial_ = 1;
  Param weight_, bias_;
  Tensor running_mean_, running_var_, num_batches_tracked_;
  // Statistics of the last training forward, for backward.
  std::vector<double> saved_mean_, saved_inv_std_;
  int64_t saved_batch_ = -1;
  double saved_count_ = 0;  // m: the values per channel it normalized over (all ranks' when synced)
  bool saved_synchronized_ = false;
  std::shared_ptr<BatchNormKernel> kernel_;
  // Per-channel workspace, kept so that a step allocates nothing: the sums a pass computes (and a
  // synchronized one reduces across the ranks), the forward's float scale and shift, evaluation's
  // running mean and inv_std, and the input gradient's coefficients.
  std::vector<double> reduced_, running_, coefficients_;
  std::vector<float> center_, scale_, shift_;
  // The activation the graph fused into this layer's forward, or none.
  std::optional<ActivationDesc> fused_;
};

}  // namespace

void register_batch_norm(Registries& registries) { registries.layers.add<BatchNorm>("batch_norm"); }

}  // namespace strata::layers
