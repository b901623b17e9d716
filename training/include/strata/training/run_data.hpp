// strata/training/run_data.hpp: the samples a run trains, validates and tests on, and the
// transforms between them and the model.
//
// WHAT THIS OBJECT REPRESENTS
//   open_run_data() opens the experiment's dataset splits (SplitReaders: files listed and labels
//   read, no image decoded; through the decoded cache when data.cache is given: the cache is
//   built there, the first time) and chooses the
//   rows a run uses, exactly as the trainer always has:
//     train: the first data.train_limit rows of the dataset's "train" split (all when 0), or under
//            train.overfit its first `overfit` rows; then, with data.validation = V > 0, the V rows
//            split_validation_rows(n, V, seed) picks become `val`, the rest stay `train`;
//     test:  the first data.test_limit rows of the "test" split.
//   Every label is checked against the dataset's classes here, once, naming the sample.
//
//   fit_transforms() fits each transform with statistics (normalize) on a sample of the training
//   rows -- all of them when there are at most data.fit_samples, else fit_samples rows drawn
//   without replacement from (seed) -- each passed through the transforms listed before it.
//
// Errors are reported at the experiment's data section (file, key, line).
#pragma once

#include <memory>
#include <vector>

#include "strata/dataset.hpp"
#include "strata/training/data_loader.hpp"
#include "strata/training/experiment.hpp"

namespace strata {

struct RunData {
  SampleSet train, val, test;  // val reads the train split; empty without data.validation
  std::vector<std::shared_ptr<const Transform>> transforms;  // the experiment's, set up
  Shape sample;  // the model's input: every sample's shape after the transforms
};

// Sets the experiment's transforms up in order, from the samples the reader gives
// (Experiment::sample_shape), and checks that they end at the model's input (an Error at
// model.input otherwise, saying when the images still vary in size). Returns that shape.
Shape set_up_transforms(Experiment& experiment);

// `experiment` must have been read with Scope::training, and its transforms set up.
RunData open_run_data(const Experiment& experiment, const Registries& registries);

// Fits the transforms that need it (Transform::needs_fit) on the training rows, in order.
// Returns the bad images skipped (data.on_bad_image: skip; without it a bad image is an Error).
int64_t fit_transforms(const Experiment& experiment, const RunData& data);

// How the trainer's loader reads the training rows: train.batch_size, seed, augmentation (off under
// train.overfit) and data.on_bad_image. strata bench --data uses the same.
LoaderOptions training_loader_options(const Experiment& experiment);

// The training rows a transform's statistics are fitted on.
std::vector<int64_t> fit_rows(const SampleSet& train, int64_t fit_samples, uint32_t seed);

}  // namespace strata
