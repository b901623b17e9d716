// softmax_cross_entropy: the mean negative log-likelihood of the labels under softmax(logits)
// (PyTorch's nn.CrossEntropyLoss with reduction 'mean').
//
// WHAT THIS OBJECT REPRESENTS
//   loss = 1/N sum_n [ logsumexp(z[n, :]) - z[n, label[n]] ]
//   d loss / d z[n, c] = (softmax(z[n])[c] - [c == label[n]]) / N
//   logsumexp is computed as m + log(sum exp(z - m)) with m the row maximum, so large logits
//   neither overflow nor lose the loss to cancellation.
//   Key `label_smoothing` (eps, default 0, in [0, 1]): PyTorch's
//   CrossEntropyLoss(label_smoothing=eps). The target is (1 - eps) one-hot + eps/classes uniform:
//     loss = 1/N sum_n [ (1 - eps) (-log p[n, label]) + eps/classes sum_c (-log p[n, c]) ]
//          = 1/N sum_n [ logsumexp(z[n, :]) - (1 - eps) z[n, label] - eps/classes sum_c z[n, c] ]
//     d loss / d z[n, c] = (p[n, c] - (1 - eps)[c == label[n]] - eps/classes) / N
//   The same loss is used for the validation and test figures, as a PyTorch script that
//   evaluates with its training criterion reports them.
//   chance_loss(classes) = ln(classes): the loss of uniform predictions, with or without smoothing.
//
// REQUIRES
//   - logits [N, classes] with N >= 1, N labels, each in [0, classes).
// ENSURES
//   - returns the mean loss; when dlogits is given (shape [N, classes]) it is overwritten with the
//     gradient.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "strata/error.hpp"
#include "strata/layer.hpp"

namespace strata::layers {

namespace {

class SoftmaxCrossEntropy final : public Loss {
 public:
  explicit SoftmaxCrossEntropy(const Config& config)
      : smoothing_(config.get<double>("label_smoothing", 0.0)) {
    if (!(smoothing_ >= 0.0 && smoothing_ <= 1.0)) {
      config.fail_key(
          "label_smoothing",
          fmt::format("must be between 0 and 1 (PyTorch's range), found {}", smoothing_));
    }
  }

  std::optional<double> chance_loss(int64_t classes) const override {
    return std::log(static_cast<double>(classes));
  }

  float forward_backward(const Tensor& logits, std::span<const int32_t> labels,
                         Tensor* dlogits) override {
    if (logits.rank() != 2 || logits.dim(0) < 1 || logits.dim(1) < 1) {
      fail("softmax_cross_entropy expects logits [batch, classes], got {}", logits.shape().str());
    }
    const int64_t batch = logits.dim(0);
    const int64_t classes = logits.dim(1);
    if (static_cast<int64_t>(labels.size()) != batch) {
      fail("softmax_cross_entropy: {} labels for a batch of {} logits", labels.size(), batch);
    }
    if (dlogits != nullptr && dlogits->shape() != logits.shape()) {
      fail("softmax_cross_entropy: gradient tensor {} does not match the logits {}",
           dlogits->shape().str(), logits.shape().str());
    }
    double total = 0.0;
    const double inv_batch = 1.0 / static_cast<double>(batch);
    const double on_label = 1.0 - smoothing_;                          // weight of z[label]
    const double uniform = smoothing_ / static_cast<double>(classes);  // weight of every z[c]
    for (int64_t n = 0; n < batch; ++n) {
      const int32_t label = labels[static_cast<std::size_t>(n)];
      if (label < 0 || label >= classes) {
        fail(
            "softmax_cross_entropy: label {} (sample {}) is out of range for {} classes "
            "(expected 0 to {})",
            label, n, classes, classes - 1);
      }
      const float* z = logits.data() + n * classes;
      float max = z[0];
      for (int64_t c = 1; c < classes; ++c) max = std::max(max, z[c]);
      double sum = 0.0;
      for (int64_t c = 0; c < classes; ++c) sum += std::exp(static_cast<double>(z[c] - max));
      const double log_sum = std::log(sum);
      total += log_sum - on_label * static_cast<double>(z[label] - max);
      if (uniform != 0.0) {
        double shifted_sum = 0.0;
        for (int64_t c = 0; c < classes; ++c) shifted_sum += static_cast<double>(z[c] - max);
        total -= uniform * shifted_sum;
      }
      if (dlogits != nullptr) {
        float* g = dlogits->data() + n * classes;
        for (int64_t c = 0; c < classes; ++c) {
          const double p = std::exp(static_cast<double>(z[c] - max) - log_sum);
          g[c] = static_cast<float>((p - (c == label ? on_label : 0.0) - uniform) * inv_batch);
        }
      }
    }
    return static_cast<float>(total * inv_batch);
  }

 private:
  double smoothing_;
};

}  // namespace

void register_losses(Registries& registries) {
  registries.losses.add<SoftmaxCrossEntropy>("softmax_cross_entropy");
  registries.losses.declare_default("softmax_cross_entropy");  // an experiment without `loss`
}

}  // namespace strata::layers
