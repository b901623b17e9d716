// softmax_cross_entropy: the mean negative log-likelihood of the labels under softmax(logits)
// (PyTorch's nn.CrossEntropyLoss with reduction 'mean').
//
// WHAT THIS OBJECT REPRESENTS
//   loss = 1/N sum_n [ logsumexp(z[n, :]) - z[n, label[n]] ]
//   d loss / d z[n, c] = (softmax(z[n])[c] - [c == label[n]]) / N
//   logsumexp is computed as m + log(sum exp(z - m)) with m the row maximum, so large logits
//   neither overflow nor lose the loss to cancellation. No keys.
//   chance_loss(classes) = ln(classes): the loss of uniform predictions.
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
  explicit SoftmaxCrossEntropy(const Config&) {}

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
      total += log_sum - static_cast<double>(z[label] - max);
      if (dlogits != nullptr) {
        float* g = dlogits->data() + n * classes;
        for (int64_t c = 0; c < classes; ++c) {
          const double p = std::exp(static_cast<double>(z[c] - max) - log_sum);
          g[c] = static_cast<float>((p - (c == label ? 1.0 : 0.0)) * inv_batch);
        }
      }
    }
    return static_cast<float>(total * inv_batch);
  }
};

}  // namespace

void register_losses(Registries& registries) {
  registries.losses.add<SoftmaxCrossEntropy>("softmax_cross_entropy");
}

}  // namespace strata::layers
