// strata/checkpoint.hpp: HDF5 checkpoints (layout: docs/checkpoint-format.md).
//
//   /                      attrs: format = "strata-checkpoint", format_version = 2
//   /experiment            string dataset: the experiment YAML that produced the file
//   /plugins/<name>        attrs: version, path: each plugin the model needs (version 2; a
//                          version-1 file has no /plugins and still loads)
//   /model/<layer>/<name>  float32 parameters and buffers, PyTorch names and shapes
//   /optimizer/<layer>/<param>/<slot>   optimizer state (momentum buffers, ...)
//   /preprocess/<index>.<type>/<name>   fitted preprocessing statistics
//   /schedule/<name>       learning-rate schedule state (plateau's best value, ...)
//   /training              attrs: epoch, iteration, rng_state; present when saved by the trainer
//   /history/<metric>      float64 [epochs], per-epoch metrics
//
// Saving writes "<path>.tmp-<pid>" and renames it over <path>, so a crash never leaves a truncated
// file under the final name. Loading checks every name and shape and says which one differs.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "strata/tensor.hpp"

namespace strata {

inline constexpr int kCheckpointFormatVersion = 2;
// Oldest format_version this Strata still reads (1: the same layout without /plugins).
inline constexpr int kCheckpointOldestFormatVersion = 1;

// A plugin a checkpoint needs, by name and version, and the file it was loaded from when saved.
struct PluginRecord {
  std::string name;
  std::string version;
  std::string path;
};

// An epoch stopped between two of its steps (`strata train` interrupted by Ctrl-C or SIGTERM):
// what resuming it exactly needs beside the weights. Stored as /training attributes epoch_step,
// epoch_rng_state, epoch_loss_sum, epoch_correct, epoch_seen and epoch_seconds.
struct PartialEpoch {
  int64_t step = 0;               // steps of epoch `epoch + 1` already taken (>= 1)
  std::string rng_state;          // how the epoch's order was drawn (docs/checkpoint-format.md)
  double loss_sum = 0;            // sum over those steps of batch loss x batch size
  int64_t correct = 0, seen = 0;  // training predictions right, and images seen, in them
  double seconds = 0;             // time spent in them
};

struct TrainingState {
  int64_t epoch = 0;      // epochs completed
  int64_t iteration = 0;  // optimizer steps taken
  std::string rng_state;  // the trainer's Rng, as written by operator<<
  std::map<std::string, std::vector<double>> history;  // metric name -> one value per epoch
  std::optional<PartialEpoch> partial = std::nullopt;  // saved inside epoch `epoch + 1`
};

struct Checkpoint {
  std::vector<NamedTensor> model;       // "<layer>/<name>"
  std::vector<NamedTensor> optimizer;   // "<layer>/<param>/<slot>"
  std::vector<NamedTensor> preprocess;  // "<index>.<type>/<name>"
  std::vector<NamedTensor> schedule;    // "<name>", e.g. "best" or "then/best" (nested schedule)
  std::string experiment_yaml;
  std::optional<TrainingState> training;
  std::vector<PluginRecord> plugins;  // written under /plugins
};

// Atomic save (see above). Errors name the path.
void save_checkpoint(const std::filesystem::path& path, const Checkpoint& checkpoint);

// Reads the datasets of group `group` ("model", "optimizer", "preprocess" or "schedule") into `into`:
// every name must exist with exactly the tensor's shape, else an Error such as
//   checkpoint runs/a/model.h5: /model/fc1/weight has shape [120, 256] but the model expects [120, 400]
// Datasets in the file that `into` does not name are an error too (a different model), unless
// `allow_extra` is set. A NaN or infinite value is an error naming the tensor and the element
//   checkpoint runs/a/model.h5: /model/conv1/weight[7] is nan: ...
// unless `allow_nonfinite` is set (then the values are loaded as they are).
void load_checkpoint_tensors(const std::filesystem::path& path, const std::string& group,
                             std::span<NamedTensor> into, bool allow_extra = false,
                             bool allow_nonfinite = false);

// The name ("<layer>/<name>", relative to the group) and shape of every dataset below `group`;
// empty when the file has no such group. Used to fine-tune from a checkpoint of another model.
std::map<std::string, Shape> checkpoint_tensor_shapes(const std::filesystem::path& path,
                                                      const std::string& group);

// Checks the root attributes (format, supported format_version) and returns the stored YAML.
std::string load_checkpoint_experiment(const std::filesystem::path& path);
// The plugins recorded under /plugins, sorted by name (empty for a format_version 1 file).
std::vector<PluginRecord> load_checkpoint_plugins(const std::filesystem::path& path);
// The training state, or nullopt when the file has no /training group.
std::optional<TrainingState> load_checkpoint_training_state(const std::filesystem::path& path);

// Every HDF5 file Strata writes starts with a checksum header in HDF5's user block, verified
// before the file is read (docs/checkpoint-format.md, "Integrity"). After editing such a file on
// purpose (h5py "r+"), reseal it, or Strata refuses it as damaged. An Error for a file that has
// no header.
void reseal_hdf5_file(const std::filesystem::path& path);

// Reads a float32 dataset of any rank (used by `strata forward` for /data).
Tensor read_hdf5_tensor(const std::filesystem::path& path, const std::string& dataset);
// Writes float32 datasets into a new file, atomically (temporary file, then rename).
void write_hdf5_tensors(const std::filesystem::path& path, std::span<const NamedTensor> tensors);
// A rank-1 int64 dataset (class labels, dataset row indices).
struct NamedIntegers {
  std::string name;
  std::vector<int64_t> values;
};
// The same, with int64 datasets beside the float32 ones and UTF-8 string attributes on "/"
// (`strata eval --output`).
void write_hdf5_tensors(const std::filesystem::path& path, std::span<const NamedTensor> tensors,
                        std::span<const NamedIntegers> integers,
                        const std::map<std::string, std::string>& root_texts);

// One HDF5 group of float64 series with scalar attributes (`strata search` writes one per trial).
struct SeriesGroup {
  std::string path;                                   // "/trials/0_3"
  std::map<std::string, std::vector<double>> series;  // rank-1 float64 datasets
  std::map<std::string, double> numbers;              // float64 attributes of the group
  std::map<std::string, std::string> texts;           // UTF-8 string attributes of the group
};
// Writes a new file holding `groups` (and string attributes on "/"), atomically.
void write_hdf5_series(const std::filesystem::path& path, std::span<const SeriesGroup> groups,
                       const std::map<std::string, std::string>& root_texts = {});
// Every rank-1 floating-point dataset below `root`, as {group path: {name: values}}; attributes
// are not read back. A missing `root` gives an empty map.
std::map<std::string, std::map<std::string, std::vector<double>>> read_hdf5_series(
    const std::filesystem::path& path, const std::string& root);

}  // namespace strata
