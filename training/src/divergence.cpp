// Divergence checks of the trainer (strata/training/checks.hpp).
#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <optional>

#include "strata/error.hpp"
#include "strata/training/checks.hpp"

namespace strata {

std::string number_text(double value) {
  return std::isnan(value) ? std::string("nan") : fmt::format("{}", value);  // never "-nan"
}

std::string kept_checkpoint_text(const std::filesystem::path& checkpoint, int64_t saved_epoch) {
  if (saved_epoch < 0) return "no checkpoint was written";
  return fmt::format("{} was not overwritten and still holds epoch {}", checkpoint.string(),
                     saved_epoch);
}

std::string divergence_advice(const Config& optimizer) {
  // The optimizer has read its keys already: only numbers it accepted are looked at here.
  const auto number = [&](std::string_view key) -> std::optional<double> {
    if (!optimizer.is_map() || !optimizer.has(key)) return std::nullopt;
    try {
      return optimizer.find(key)->as<double>();
    } catch (const Error&) {
      return std::nullopt;
    }
  };
  std::vector<std::string> causes;
  if (const auto eps = number("eps"); eps && *eps < 1e-12) {
    causes.push_back(fmt::format(
        "optimizer.eps is {}: the update divides by sqrt(v) + eps, which is 0 (0/0 = nan) or "
        "tiny for a weight whose gradients were 0; use eps of about 1e-8 (the default)",
        number_text(*eps)));
  }
  const auto lr = number("lr");
  if (const auto decay = number("weight_decay"); decay && lr && *decay * *lr >= 1) {
    causes.push_back(fmt::format(
        "optimizer.weight_decay is {} with lr {}: weight decay alone multiplies the weights by "
        "1 - lr x weight_decay = {} each step, so they flip sign and grow; lower weight_decay "
        "(typical values are 1e-5 to 1e-2)",
        number_text(*decay), number_text(*lr), number_text(1 - *decay * *lr)));
  }
  if (causes.empty() && optimizer.is_map() && optimizer.has("lr_scaling")) {
    return "lower optimizer.lr (optimizer.lr_scaling multiplies it by the batch over its "
           "reference_batch), lengthen lr_scaling.warmup_epochs, or check the data";
  }
  if (causes.empty()) return "lower optimizer.lr (or its schedule) or check the data";
  return fmt::format("the likely cause is {}", fmt::join(causes, "; and "));
}

void check_not_diverged(int64_t epoch, double train_loss, double val_loss, bool has_validation,
                        std::span<const NamedTensor> model, std::span<const NamedTensor> optimizer,
                        const std::filesystem::path& checkpoint, int64_t saved_epoch,
                        std::string advice) {
  std::string what;
  if (!std::isfinite(train_loss)) {
    what = fmt::format("the training loss is {}", number_text(train_loss));
  } else if (has_validation && !std::isfinite(val_loss)) {
    what = fmt::format("the validation loss is {}", number_text(val_loss));
  } else if (std::string bad = describe_nonfinite(model, "/model/"); !bad.empty()) {
    what = fmt::format("a weight is not finite ({})", bad);
  } else if (std::string bad_state = describe_nonfinite(optimizer, "/optimizer/");
             !bad_state.empty()) {
    what = fmt::format("the optimizer state is not finite ({})", bad_state);
  } else {
    return;
  }
  if (advice.empty()) advice = "lower optimizer.lr (or its schedule) or check the data";
  advice[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(advice[0])));
  fail("training diverged in epoch {}: {}; {}. {}", epoch, what,
       kept_checkpoint_text(checkpoint, saved_epoch), advice);
}

void check_memory(const Graph& graph, int64_t batch_size, int64_t eval_batch, const Config& train) {
  // The graph's own figures per image (outputs and the planned gradient arena), times the
  // largest batch it will see, in long double so that absurd settings cannot overflow; then the
  // parameters with gradients and up to two optimizer slots.
  const int64_t batch = std::max(batch_size, eval_batch);
  const Graph::Memory per_image = graph.memory(1, OutputRetention::kBackward);
  const long double activations =
      static_cast<long double>(per_image.outputs + per_image.gradients) * batch;
  const long double parameters =
      static_cast<long double>(graph.num_parameters()) * 4 * sizeof(float);
  const long double memory = static_cast<long double>(physical_memory_bytes());
  if (activations + parameters > memory) {
    train.fail_key(
        batch_size >= eval_batch ? "batch_size" : "eval_batch_size",
        fmt::format("the model needs about {} for batches of {} images ({} of activations "
                    "and their gradients, {} of parameters with gradients and optimizer "
                    "state), more than this machine's memory ({})",
                    bytes_text(static_cast<double>(activations + parameters)), batch,
                    bytes_text(static_cast<double>(activations)),
                    bytes_text(static_cast<double>(parameters)),
                    bytes_text(static_cast<double>(memory))));
  }
}

}  // namespace strata
