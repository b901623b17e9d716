// strata/training/checks.hpp: the trainer's safety checks, kept out of the training
// loop so that they can be read, tested and extended in one place.
//
//   - divergence: a non-finite loss, validation loss, weight or optimizer state stops the run
//     before anything is saved, so a diverged model never replaces the last good checkpoint;
//   - resume: everything a resume reads from a checkpoint is validated against the experiment
//     (see resume.cpp and docs/checkpoint-format.md).
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "strata/checkpoint.hpp"
#include "strata/config.hpp"
#include "strata/graph.hpp"
#include "strata/tensor.hpp"

namespace strata {

// "nan" for any NaN (fmt prints "-nan" for a negative one), the shortest round trip otherwise.
std::string number_text(double value);

// What the output folder's checkpoint holds for the user: "runs/a/model.h5 was not overwritten
// and still holds epoch 3" or "no checkpoint was written".
std::string kept_checkpoint_text(const std::filesystem::path& checkpoint, int64_t saved_epoch);

// What to do about a divergence, from the optimizer's settings: "lower optimizer.lr (or its
// schedule) or check the data", unless a setting explains it better: an `eps` of 0 (or below
// 1e-12: adam, rmsprop, adagrad divide by sqrt(v) + eps) or a weight_decay with
// lr x weight_decay >= 1 ("the likely cause is optimizer.eps is 0: ...").
std::string divergence_advice(const Config& optimizer);

// Throws "training diverged in epoch N: ..." when the epoch's validation loss (if there is a
// validation split), its training loss, or any tensor in `model` or `optimizer` is not finite;
// the message ends with `advice` (divergence_advice(); empty: lower the learning rate).
void check_not_diverged(int64_t epoch, double train_loss, double val_loss, bool has_validation,
                        std::span<const NamedTensor> model, std::span<const NamedTensor> optimizer,
                        const std::filesystem::path& checkpoint, int64_t saved_epoch,
                        std::string advice = {});

// Before any data is loaded or activation allocated: the activations of batches of
// max(batch_size, eval_batch), their gradients (Graph::memory), and the parameters with gradients
// and optimizer state must fit in the machine's memory, else an Error at train.batch_size with the
// figures.
void check_memory(const Graph& graph, int64_t batch_size, int64_t eval_batch, const Config& train);

// Keys whose value may change between a run and its resume: they change neither the data, the
// model nor the optimization done so far.
bool resume_may_change(const std::string& key_path);
// Those keys, for messages: "train.epochs, threads, ... and train.early_stopping.patience".
std::string resume_may_change_text();

// "key: old -> new" for each leaf that differs between the checkpoint's experiment (`saved`, with
// defaults filled in) and the current one, both as YAML text.
std::vector<std::string> experiment_differences(const std::string& saved,
                                                const std::string& current);

// Throws unless `saved` fits the experiment being resumed: epoch in [0, epochs], iteration equal to
// epoch * steps per epoch (plus the steps of an interrupted epoch, which must lie inside one of
// the run's epochs), every /history metric present with exactly `saved.epoch` values.
void validate_training_state(const TrainingState& saved, const std::filesystem::path& checkpoint,
                             int64_t epochs, int64_t steps_per_epoch,
                             std::span<const std::string> metrics);

}  // namespace strata
