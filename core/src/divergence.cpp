// Divergence checks of the trainer (trainer_checks.hpp).
#include <fmt/format.h>

#include <cmath>

#include "strata/error.hpp"
#include "trainer_checks.hpp"

namespace strata {

std::string number_text(double value) {
  return std::isnan(value) ? std::string("nan") : fmt::format("{}", value);  // never "-nan"
}

std::string kept_checkpoint_text(const std::filesystem::path& checkpoint, int64_t saved_epoch) {
  if (saved_epoch < 0) return "no checkpoint was written";
  return fmt::format("{} was not overwritten and still holds epoch {}", checkpoint.string(),
                     saved_epoch);
}

void check_not_diverged(int64_t epoch, double train_loss, double val_loss, bool has_validation,
                        std::span<const NamedTensor> model, std::span<const NamedTensor> optimizer,
                        const std::filesystem::path& checkpoint, int64_t saved_epoch) {
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
  fail(
      "training diverged in epoch {}: {}; {}. Lower optimizer.lr (or its schedule) or check the "
      "data",
      epoch, what, kept_checkpoint_text(checkpoint, saved_epoch));
}

}  // namespace strata
