// The progress display: a bar or lines per step, one line per epoch, then the epoch's notes.
#include <unistd.h>

#include <cmath>
#include <cstdio>

#include "loop.hpp"
#include "strata/error.hpp"

namespace strata::training_loop {

Progress::Progress(const std::string& mode, int64_t epochs, int64_t steps)
    : epochs_(epochs), steps_(steps) {
  const bool tty = ::isatty(::fileno(stdout)) != 0;
  bar_ = mode == "bar" || (mode == "auto" && tty);
  quiet_ = mode == "none";
}

void Progress::step(int64_t epoch, int64_t step, double loss, double accuracy,
                    double images_per_second) {
  if (quiet_) return;
  const auto now = Clock::now();
  const double since = std::chrono::duration<double>(now - last_).count();
  if (bar_) {
    if (since < 0.1 && step != steps_) return;
    constexpr int kWidth = 24;
    const int filled = static_cast<int>(kWidth * step / std::max<int64_t>(steps_, 1));
    std::printf("\r\033[Kepoch %lld/%lld [%s%s] %lld/%lld  loss %.4f  acc %.4f  %.0f img/s",
                static_cast<long long>(epoch), static_cast<long long>(epochs_),
                std::string(filled, '=').c_str(), std::string(kWidth - filled, ' ').c_str(),
                static_cast<long long>(step), static_cast<long long>(steps_), loss, accuracy,
                images_per_second);
    std::fflush(stdout);
  } else {
    if (since < 10.0) return;
    std::printf("epoch %lld/%lld  step %lld/%lld  loss %.4f  acc %.4f  %.0f img/s\n",
                static_cast<long long>(epoch), static_cast<long long>(epochs_),
                static_cast<long long>(step), static_cast<long long>(steps_), loss, accuracy,
                images_per_second);
    std::fflush(stdout);
  }
  last_ = now;
}

void Progress::note(const std::string& text) {
  if (quiet_) return;
  if (bar_) std::printf("\r\033[K");
  std::printf("%s\n", text.c_str());
  std::fflush(stdout);
}

void Progress::epoch_done(const EpochReport& r) {
  if (quiet_) return;
  if (bar_) std::printf("\r\033[K");
  std::string val = std::isnan(r.val_loss)
                        ? std::string()
                        : fmt::format("  val loss {:.4f} acc {:.4f}", r.val_loss, r.val_accuracy);
  const std::string reg = r.train_regularization > 0
                              ? fmt::format(" (+{:.4f} reg)", r.train_regularization)
                              : std::string();
  std::printf("epoch %lld/%lld  train loss %.4f%s acc %.4f%s  lr %.4g  %.1fs  %.0f img/s\n",
              static_cast<long long>(r.epoch), static_cast<long long>(r.epochs), r.train_loss,
              reg.c_str(), r.train_accuracy, val.c_str(), r.lr, r.seconds, r.images_per_second);
  std::fflush(stdout);
  last_ = Clock::now();
}

namespace {

class ProgressHook : public TrainingHook {
 public:
  explicit ProgressHook(Run& run) : run_(run) {}

  void on_step(const StepEvent& e) override {
    run_.progress->step(e.epoch, e.step, e.loss_sum / e.seen,
                        static_cast<double>(e.correct) / e.seen, e.seen / e.seconds);
  }

  // After the checkpoint hook saved: the epoch's line, then what the other hooks noted about it
  // (the diagnostics' warnings, then early stopping's reason).
  void on_epoch_end(const EpochReport& report) override {
    run_.progress->epoch_done(report);
    for (const std::string& line : run_.epoch_notes) run_.progress->note(line);
    run_.epoch_notes.clear();
  }

 private:
  Run& run_;
};

}  // namespace

std::shared_ptr<TrainingHook> progress_hook(Run& run) {
  return std::make_shared<ProgressHook>(run);
}

}  // namespace strata::training_loop
