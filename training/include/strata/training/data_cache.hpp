// strata/training/data_cache.hpp: the decoded cache, a split's images decoded and resized once
// into an HDF5 file that later epochs and runs read instead of the source.
//
// WHAT THIS OBJECT REPRESENTS
//   `data.cache` of an experiment:
//     path: the cache file of each split; "{split}" in it is replaced by the split's name
//           ("cache/imagenet-{split}.h5"). Without "{split}", "-<split>" is inserted before the
//           extension (cache/imagenet.h5 -> cache/imagenet-train.h5, cache/imagenet-test.h5).
//     size: S or [H, W]. [H, W]: each image is stretched to H x W; S: the shorter side is resized
//           to S, then the centre S x S is cut out (the transforms `resize` and `center_crop`,
//           created through the registry). Optional when the dataset's images have one size
//           (stored as they are); required when they vary.
//     compression: gzip level of the file's chunks, 0 (none) to 9; default 4.
//     memory_budget: the `hdf5` reader's budget for reading the cache back (default "1GB").
//   The file: images [N, C, H, W] uint8 (round(v * 255), clamped), one sample per chunk; labels
//   [N] int32; root attributes format ("strata-decoded-cache"), format_version, source (the data
//   section's YAML that defines the samples: cache_source_yaml()), split, size, samples, classes.
//   It is an ordinary `hdf5` dataset file: `{type: hdf5, train: <file>, train_group: /, ...}`.
//
// ENSURES
//   cached_split() is what the trainer calls right after Dataset::open(split):
//   - No file at the path: reads every sample of `source` in parallel (tbb::parallel_for; each
//     sample's bytes depend only on its index, whatever the thread count), resizes and converts
//     it, and writes the file in blocks of samples (never the whole array in memory) to
//     "<path>.tmp-<pid>", renamed to `path` once complete: an exception or a signal mid-write
//     leaves no file at `path` and removes the temporary one. Progress goes to stdout: a line
//     about every 10 s, and a final line with the images, the bytes and the seconds. A BadSample
//     from the source stops the build with an Error naming the cache and the bad sample (the
//     cache needs every sample: fix or remove it). The folder of `path` is created if missing.
//   - A file at the path: its attributes must match this run (format, source, split, size,
//     sample count, classes) and its labels the source's; otherwise an Error says which differs
//     and to delete the file. No source sample is read.
//   - Either way the result reads the cache file through the `hdf5` dataset plugin
//     (registries.datasets, type hdf5), which must be loaded: one reader of HDF5 arrays in the
//     tree, and training stays on the runtime's interfaces (a plugin may not include training's
//     headers, nor training link a plugin).
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "strata/config.hpp"
#include "strata/dataset.hpp"
#include "strata/registry.hpp"

namespace strata {

// `cache` is the data section's `cache` map; `source_yaml` identifies the samples
// (cache_source_yaml(data section)) and is recorded in the file and compared when it exists.
std::shared_ptr<const SplitReader> cached_split(const Config& cache, const Dataset& dataset,
                                                std::shared_ptr<const SplitReader> source,
                                                std::string_view split,
                                                const Registries& registries,
                                                std::string_view source_yaml);

// The data section as YAML without the keys that do not change what the reader gives (the
// pipeline's transforms, preprocess, augment, fit_samples, the split limits, validation,
// on_bad_image, cache): a cache stays valid when only those change.
std::string cache_source_yaml(const Config& data);

}  // namespace strata
