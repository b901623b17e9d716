// Checkpoints: round trips, the layout other tools rely on, every error message, atomic saves.
#define BOOST_TEST_MODULE checkpoint
#include <hdf5.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <boost/test/unit_test.hpp>
#include <csignal>
#include <fstream>
#include <iterator>
#include <sstream>

#include <fmt/format.h>

#include "strata/checkpoint.hpp"
#include "strata/error.hpp"
#include "test_support.hpp"

namespace fs = std::filesystem;
using strata::Checkpoint;
using strata::Error;
using strata::NamedTensor;
using strata::Shape;
using strata::Tensor;
using strata::TrainingState;
using strata::test::max_abs_diff;
using strata::test::random_tensor;
using strata::test::TempDir;

namespace {

// HDF5 files, groups, datasets and attributes open anywhere in the process.
ssize_t open_hdf5_objects() { return H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL); }

// test::error_of, plus: every error path must have closed what it opened.
template <class Action>
std::string error_message(Action&& action) {
  std::string message = strata::test::error_of(std::forward<Action>(action));
  BOOST_TEST(open_hdf5_objects() == 0);
  return message;
}

std::vector<NamedTensor> random_tensors(const std::vector<std::pair<std::string, Shape>>& specs,
                                        std::mt19937& rng) {
  std::vector<NamedTensor> tensors;
  for (const auto& [name, shape] : specs) tensors.push_back({name, random_tensor(shape, rng)});
  return tensors;
}

// Zero-filled tensors with the same names and shapes: what a freshly built model hands to load.
std::vector<NamedTensor> empty_like(const std::vector<NamedTensor>& tensors) {
  std::vector<NamedTensor> result;
  for (const NamedTensor& entry : tensors)
    result.push_back({entry.name, Tensor(entry.tensor.shape())});
  return result;
}

// A LeNet-like model with dotted (ResNet-style) names and ranks 0 to 4.
Checkpoint sample_checkpoint(std::mt19937& rng) {
  Checkpoint checkpoint;
  checkpoint.model = random_tensors({{"conv1/weight", {6, 1, 5, 5}},
                                     {"conv1/bias", {6}},
                                     {"layer1.0.conv1/weight", {16, 6, 3, 3}},
                                     {"layer1.0.bn1/running_mean", {16}},
                                     {"embed/table", {3, 4, 5}},
                                     {"fc1/weight", {120, 400}},
                                     {"fc1/bias", {120}}},
                                    rng);
  checkpoint.optimizer = random_tensors({{"conv1/weight/momentum", {6, 1, 5, 5}},
                                         {"conv1/bias/momentum", {6}},
                                         {"fc1/weight/momentum", {120, 400}}},
                                        rng);
  checkpoint.preprocess = random_tensors(
      {{"0.normalize/mean", {1}}, {"0.normalize/std", {1}}, {"1.scale/factor", Shape{}}}, rng);
  checkpoint.experiment_yaml =
      "name: lenet5\nmodel:\n  layers:\n    - {type: conv2d, name: conv1, out: 6, kernel: 5}\n"
      "notes: \"µ ≠ σ — UTF-8 survives\"\n";
  return checkpoint;
}

std::string file_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// Entries of `folder` whose names contain ".tmp-": debris of a save that did not clean up.
std::vector<fs::path> leftovers(const fs::path& folder) {
  std::vector<fs::path> found;
  for (const auto& entry : fs::directory_iterator(folder)) {
    if (entry.path().filename().string().find(".tmp-") != std::string::npos) {
      found.push_back(entry.path());
    }
  }
  return found;
}

// A file written with the raw HDF5 API: root attributes as given, plus an optional dataset.
struct RawFile {
  hid_t file;
  explicit RawFile(const fs::path& path)
      : file(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT)) {
    BOOST_REQUIRE(file >= 0);
  }
  ~RawFile() { H5Fclose(file); }

  void string_attribute(const char* name, const char* value) {
    const hid_t type = H5Tcopy(H5T_C_S1);
    H5Tset_size(type, H5T_VARIABLE);
    const hid_t space = H5Screate(H5S_SCALAR);
    const hid_t attribute = H5Acreate2(file, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
    BOOST_REQUIRE(H5Awrite(attribute, type, &value) >= 0);
    H5Aclose(attribute);
    H5Sclose(space);
    H5Tclose(type);
  }
  void int_attribute(const char* name, int64_t value) {
    const hid_t space = H5Screate(H5S_SCALAR);
    const hid_t attribute = H5Acreate2(file, name, H5T_STD_I64LE, space, H5P_DEFAULT, H5P_DEFAULT);
    BOOST_REQUIRE(H5Awrite(attribute, H5T_NATIVE_INT64, &value) >= 0);
    H5Aclose(attribute);
    H5Sclose(space);
  }
  // A 1-D dataset of `values`, stored as `file_type` (created with its parent groups).
  template <class T>
  void dataset(const char* path, hid_t file_type, hid_t memory_type, const std::vector<T>& values) {
    const hid_t links = H5Pcreate(H5P_LINK_CREATE);
    H5Pset_create_intermediate_group(links, 1);
    const hsize_t dims[1] = {values.size()};
    const hid_t space = H5Screate_simple(1, dims, nullptr);
    const hid_t dataset = H5Dcreate2(file, path, file_type, space, links, H5P_DEFAULT, H5P_DEFAULT);
    BOOST_REQUIRE(dataset >= 0);
    BOOST_REQUIRE(H5Dwrite(dataset, memory_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()) >=
                  0);
    H5Dclose(dataset);
    H5Sclose(space);
    H5Pclose(links);
  }
  void checkpoint_attributes(int64_t version = strata::kCheckpointFormatVersion) {
    string_attribute("format", "strata-checkpoint");
    int_attribute("format_version", version);
  }
};

// Saves with the file size limited to `bytes`, as a full disk would (SIGXFSZ ignored so that the
// write fails with EFBIG instead of killing the process).
class FileSizeLimit {
 public:
  explicit FileSizeLimit(rlim_t bytes) {
    previous_handler_ = std::signal(SIGXFSZ, SIG_IGN);
    BOOST_REQUIRE(getrlimit(RLIMIT_FSIZE, &previous_) == 0);
    rlimit limited = previous_;
    limited.rlim_cur = bytes;
    BOOST_REQUIRE(setrlimit(RLIMIT_FSIZE, &limited) == 0);
  }
  ~FileSizeLimit() {
    setrlimit(RLIMIT_FSIZE, &previous_);
    std::signal(SIGXFSZ, previous_handler_);
  }

 private:
  rlimit previous_{};
  void (*previous_handler_)(int) = nullptr;
};

void check_same_tensors(const std::vector<NamedTensor>& loaded,
                        const std::vector<NamedTensor>& saved) {
  BOOST_REQUIRE_EQUAL(loaded.size(), saved.size());
  for (std::size_t i = 0; i < saved.size(); ++i) {
    BOOST_TEST_CONTEXT(saved[i].name) {
      BOOST_TEST(loaded[i].tensor.shape().str() == saved[i].tensor.shape().str());
      BOOST_TEST(max_abs_diff(loaded[i].tensor, saved[i].tensor) == 0.0f);  // float32 both ways
    }
  }
}

}  // namespace

BOOST_AUTO_TEST_SUITE(round_trip)

BOOST_AUTO_TEST_CASE(every_group_comes_back_bit_for_bit) {
  std::mt19937 rng(11);
  const Checkpoint saved = sample_checkpoint(rng);
  TempDir dir;
  const fs::path path = dir / "model.h5";
  strata::save_checkpoint(path, saved);

  std::vector<NamedTensor> model = empty_like(saved.model);
  std::vector<NamedTensor> optimizer = empty_like(saved.optimizer);
  std::vector<NamedTensor> preprocess = empty_like(saved.preprocess);
  strata::load_checkpoint_tensors(path, "model", model);
  strata::load_checkpoint_tensors(path, "optimizer", optimizer);
  strata::load_checkpoint_tensors(path, "preprocess", preprocess);
  check_same_tensors(model, saved.model);
  check_same_tensors(optimizer, saved.optimizer);
  check_same_tensors(preprocess, saved.preprocess);

  BOOST_TEST(strata::load_checkpoint_experiment(path) == saved.experiment_yaml);
  BOOST_TEST(!strata::load_checkpoint_training_state(path).has_value());
  BOOST_TEST(leftovers(dir.path()).empty());
  BOOST_TEST(open_hdf5_objects() == 0);  // no file is held open between calls
}

BOOST_AUTO_TEST_CASE(load_order_does_not_matter) {
  std::mt19937 rng(12);
  const Checkpoint saved = sample_checkpoint(rng);
  TempDir dir;
  strata::save_checkpoint(dir / "model.h5", saved);
  std::vector<NamedTensor> model = empty_like(saved.model);
  std::reverse(model.begin(), model.end());
  strata::load_checkpoint_tensors(dir / "model.h5", "model", model);
  std::vector<NamedTensor> expected = saved.model;
  std::reverse(expected.begin(), expected.end());
  check_same_tensors(model, expected);
}

BOOST_AUTO_TEST_CASE(training_state_restores_the_random_generator) {
  std::mt19937 rng(13);
  Checkpoint saved = sample_checkpoint(rng);

  std::mt19937 trainer_rng(2024);
  trainer_rng.discard(12345);  // somewhere in the middle of training
  std::ostringstream rng_text;
  rng_text << trainer_rng;
  TrainingState state;
  state.epoch = 7;
  state.iteration = 3'000'000'000LL;  // beyond 32 bits
  state.rng_state = rng_text.str();
  state.history["train_loss"] = {
      2.302585092994046, 0.5123456789012345, 0.31, 0.29, 0.28, 0.27, 0.26};
  state.history["val_accuracy"] = {0.1, 0.8, 0.85, 0.86, 0.87, 0.875, 0.88};
  state.history["not_measured_yet"] = {};
  saved.training = state;
  BOOST_TEST(state.rng_state.size() > 5000u);  // mt19937 state is 624 words: several KB of text

  TempDir dir;
  strata::save_checkpoint(dir / "model.h5", saved);
  const std::optional<TrainingState> loaded =
      strata::load_checkpoint_training_state(dir / "model.h5");
  BOOST_REQUIRE(loaded.has_value());
  BOOST_TEST(loaded->epoch == 7);
  BOOST_TEST(loaded->iteration == 3'000'000'000LL);
  BOOST_TEST(loaded->rng_state == state.rng_state);
  BOOST_TEST(loaded->history.size() == 3u);
  BOOST_TEST(loaded->history.at("train_loss") == state.history["train_loss"],
             boost::test_tools::per_element());
  BOOST_TEST(loaded->history.at("val_accuracy") == state.history["val_accuracy"],
             boost::test_tools::per_element());
  BOOST_TEST(loaded->history.at("not_measured_yet").empty());

  std::mt19937 restored;
  std::istringstream in(loaded->rng_state);
  in >> restored;
  BOOST_REQUIRE(!in.fail());
  for (int i = 0; i < 1000; ++i) BOOST_REQUIRE_EQUAL(restored(), trainer_rng());
}

// Format version 2 records the plugins a model needs under /plugins/<name> (attributes version
// and path); a version-1 file has no /plugins and still loads, with no records.
BOOST_AUTO_TEST_CASE(plugin_records_round_trip_and_version_1_still_loads) {
  std::mt19937 rng(31);
  Checkpoint saved = sample_checkpoint(rng);
  saved.plugins = {{"layers", "1.0", "/opt/strata/lib/strata/libstrata_layers.so"},
                   {"my_prelu", "0.3", "/home/me/build/libstrata_my_prelu.so"}};
  TempDir dir;
  strata::save_checkpoint(dir / "model.h5", saved);
  const auto loaded = strata::load_checkpoint_plugins(dir / "model.h5");
  BOOST_TEST_REQUIRE(loaded.size() == 2u);
  for (std::size_t i = 0; i < 2; ++i) {
    BOOST_TEST(loaded[i].name == saved.plugins[i].name);
    BOOST_TEST(loaded[i].version == saved.plugins[i].version);
    BOOST_TEST(loaded[i].path == saved.plugins[i].path);
  }
  const fs::path old = dir / "v1.h5";
  {
    RawFile raw(old);
    raw.checkpoint_attributes(1);
  }
  BOOST_TEST(strata::load_checkpoint_plugins(old).empty());
  std::vector<NamedTensor> none;
  strata::load_checkpoint_tensors(old, "model", none);
  // A plugin name that is not a valid group name is refused before the file exists.
  saved.plugins = {{"bad/name", "1", ""}};
  BOOST_TEST(!error_message([&] { strata::save_checkpoint(dir / "bad.h5", saved); }).empty());
  BOOST_TEST(!fs::exists(dir / "bad.h5"));
}

BOOST_AUTO_TEST_CASE(empty_checkpoint_round_trips) {
  TempDir dir;
  strata::save_checkpoint(dir / "empty.h5", Checkpoint{});
  std::vector<NamedTensor> none;
  strata::load_checkpoint_tensors(dir / "empty.h5", "model", none);
  BOOST_TEST(strata::load_checkpoint_experiment(dir / "empty.h5") == "");
  BOOST_TEST(!strata::load_checkpoint_training_state(dir / "empty.h5").has_value());
}

BOOST_AUTO_TEST_CASE(zero_sized_tensors_round_trip) {
  Checkpoint saved;
  saved.model = {{"empty/weight", Tensor(Shape{0, 3})}};
  TempDir dir;
  strata::save_checkpoint(dir / "model.h5", saved);
  std::vector<NamedTensor> model = empty_like(saved.model);
  strata::load_checkpoint_tensors(dir / "model.h5", "model", model);
  BOOST_TEST(model[0].tensor.shape().str() == "[0, 3]");
}

BOOST_AUTO_TEST_SUITE_END()

// What h5py and other tools see: the stored types, checked through the C API.
BOOST_AUTO_TEST_CASE(stored_types_follow_the_documented_layout) {
  std::mt19937 rng(14);
  Checkpoint saved = sample_checkpoint(rng);
  saved.training = TrainingState{1, 10, "state", {{"train_loss", {0.5}}}};
  TempDir dir;
  strata::save_checkpoint(dir / "model.h5", saved);

  const hid_t file = H5Fopen((dir / "model.h5").c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  BOOST_REQUIRE(file >= 0);
  auto check_string_type = [](hid_t type) {
    BOOST_TEST(H5Tget_class(type) == H5T_STRING);
    BOOST_TEST(H5Tis_variable_str(type) > 0);
    BOOST_TEST(H5Tget_cset(type) == H5T_CSET_UTF8);
  };
  auto check_attribute = [&](const char* object, const char* name, hid_t expected_type) {
    BOOST_TEST_CONTEXT(object << " @" << name) {
      const hid_t attribute = H5Aopen_by_name(file, object, name, H5P_DEFAULT, H5P_DEFAULT);
      BOOST_REQUIRE(attribute >= 0);
      const hid_t type = H5Aget_type(attribute);
      const hid_t space = H5Aget_space(attribute);
      BOOST_TEST(H5Sget_simple_extent_type(space) == H5S_SCALAR);
      if (expected_type < 0) {
        check_string_type(type);
      } else {
        BOOST_TEST(H5Tequal(type, expected_type) > 0);
      }
      H5Sclose(space);
      H5Tclose(type);
      H5Aclose(attribute);
    }
  };
  check_attribute("/", "format", -1);
  check_attribute("/", "format_version", H5T_STD_I32LE);
  check_attribute("/training", "epoch", H5T_STD_I64LE);
  check_attribute("/training", "iteration", H5T_STD_I64LE);
  check_attribute("/training", "rng_state", -1);

  auto check_dataset = [&](const char* path, hid_t expected_type, int rank) {
    BOOST_TEST_CONTEXT(path) {
      const hid_t dataset = H5Dopen2(file, path, H5P_DEFAULT);
      BOOST_REQUIRE(dataset >= 0);
      const hid_t type = H5Dget_type(dataset);
      const hid_t space = H5Dget_space(dataset);
      if (expected_type < 0) {
        check_string_type(type);
      } else {
        BOOST_TEST(H5Tequal(type, expected_type) > 0);
      }
      BOOST_TEST(H5Sget_simple_extent_ndims(space) == rank);
      H5Sclose(space);
      H5Tclose(type);
      H5Dclose(dataset);
    }
  };
  check_dataset("/experiment", -1, 0);
  check_dataset("/model/conv1/weight", H5T_IEEE_F32LE, 4);
  check_dataset("/model/layer1.0.conv1/weight", H5T_IEEE_F32LE, 4);
  check_dataset("/optimizer/fc1/weight/momentum", H5T_IEEE_F32LE, 2);
  check_dataset("/preprocess/0.normalize/mean", H5T_IEEE_F32LE, 1);
  check_dataset("/preprocess/1.scale/factor", H5T_IEEE_F32LE, 0);
  check_dataset("/history/train_loss", H5T_IEEE_F64LE, 1);
  H5Fclose(file);
}

BOOST_AUTO_TEST_SUITE(load_errors)

BOOST_AUTO_TEST_CASE(missing_dataset_names_it_and_the_expected_shape) {
  std::mt19937 rng(21);
  Checkpoint saved;
  saved.model = random_tensors({{"fc1/weight", {120, 400}}}, rng);
  TempDir dir;
  const fs::path path = dir / "model.h5";
  strata::save_checkpoint(path, saved);
  std::vector<NamedTensor> model =
      random_tensors({{"fc1/weight", {120, 400}}, {"fc1/bias", {120}}}, rng);
  const Tensor before = model[0].tensor.clone();
  BOOST_TEST(error_message([&] { strata::load_checkpoint_tensors(path, "model", model); }) ==
             "checkpoint " + path.string() +
                 ": /model/fc1/bias is missing (the model expects shape [120])");
  // Nothing was read: a failed load leaves the model as it was.
  BOOST_TEST(max_abs_diff(model[0].tensor, before) == 0.0f);
}

BOOST_AUTO_TEST_CASE(missing_group_is_reported_as_the_first_missing_dataset) {
  TempDir dir;
  const fs::path path = dir / "model.h5";
  {
    RawFile raw(path);
    raw.checkpoint_attributes();
  }
  std::vector<NamedTensor> optimizer = {{"conv1/weight/momentum", Tensor(Shape{6, 1, 5, 5})}};
  BOOST_TEST(error_message([&] {
               strata::load_checkpoint_tensors(path, "optimizer", optimizer);
             }) == "checkpoint " + path.string() +
                       ": /optimizer/conv1/weight/momentum is missing (the optimizer expects shape "
                       "[6, 1, 5, 5])");
  // An absent group is fine when nothing is expected from it.
  std::vector<NamedTensor> none;
  strata::load_checkpoint_tensors(path, "preprocess", none);
}

BOOST_AUTO_TEST_CASE(shape_mismatch_gives_the_exact_message) {
  std::mt19937 rng(22);
  Checkpoint saved;
  saved.model = random_tensors({{"fc1/weight", {120, 256}}, {"fc1/bias", {120}}}, rng);
  TempDir dir;
  const fs::path path = dir / "model.h5";
  strata::save_checkpoint(path, saved);
  std::vector<NamedTensor> model = {{"fc1/weight", Tensor(Shape{120, 400})},
                                    {"fc1/bias", Tensor(Shape{120})}};
  BOOST_TEST(error_message([&] { strata::load_checkpoint_tensors(path, "model", model); }) ==
             "checkpoint " + path.string() +
                 ": /model/fc1/weight has shape [120, 256] but the model expects [120, 400]");
  // Rank differences too, including scalars.
  std::vector<NamedTensor> scalar = {{"fc1/bias", Tensor(Shape{})},
                                     {"fc1/weight", Tensor(Shape{120, 256})}};
  BOOST_TEST(error_message([&] { strata::load_checkpoint_tensors(path, "model", scalar); }) ==
             "checkpoint " + path.string() +
                 ": /model/fc1/bias has shape [120] but the model expects []");
}

BOOST_AUTO_TEST_CASE(extra_datasets_are_errors_unless_allowed) {
  std::mt19937 rng(23);
  Checkpoint saved;
  saved.model = random_tensors({{"fc1/weight", {4, 3}}, {"fc4/weight", {2, 4}}}, rng);
  TempDir dir;
  const fs::path path = dir / "model.h5";
  strata::save_checkpoint(path, saved);
  std::vector<NamedTensor> model = {{"fc1/weight", Tensor(Shape{4, 3})}};
  BOOST_TEST(error_message([&] { strata::load_checkpoint_tensors(path, "model", model); }) ==
             "checkpoint " + path.string() + ": /model/fc4/weight is not part of the model");
  strata::load_checkpoint_tensors(path, "model", model, /*allow_extra=*/true);
  BOOST_TEST(max_abs_diff(model[0].tensor, saved.model[0].tensor) == 0.0f);

  std::vector<NamedTensor> none;
  BOOST_TEST(error_message([&] { strata::load_checkpoint_tensors(path, "model", none); }) ==
             "checkpoint " + path.string() +
                 ": 2 datasets are not part of the model: /model/fc1/weight, /model/fc4/weight");
}

BOOST_AUTO_TEST_CASE(wrong_or_missing_format_attribute) {
  TempDir dir;
  const fs::path other = dir / "other.h5";
  {
    RawFile raw(other);
    raw.string_attribute("format", "keras-weights");
    raw.int_attribute("format_version", 1);
  }
  std::vector<NamedTensor> none;
  BOOST_TEST(error_message([&] { strata::load_checkpoint_tensors(other, "model", none); }) ==
             "checkpoint " + other.string() +
                 ": not a Strata checkpoint (the root attribute 'format' is 'keras-weights', not "
                 "'strata-checkpoint')");
  // A plain HDF5 file (here one that write_hdf5_tensors made) has no format attribute at all.
  const fs::path plain = dir / "plain.h5";
  std::mt19937 rng(24);
  strata::write_hdf5_tensors(plain, random_tensors({{"data", {2, 3}}}, rng));
  BOOST_TEST(error_message([&] { strata::load_checkpoint_experiment(plain); }) ==
             "checkpoint " + plain.string() +
                 ": not a Strata checkpoint (it has no root attribute 'format')");
}

BOOST_AUTO_TEST_CASE(unsupported_format_version) {
  TempDir dir;
  const fs::path path = dir / "future.h5";
  {
    RawFile raw(path);
    raw.checkpoint_attributes(7);
  }
  const std::string expected = "checkpoint " + path.string() +
                               ": format_version 7 is not supported (this Strata reads versions 1 to 2)";
  std::vector<NamedTensor> none;
  BOOST_TEST(error_message([&] { strata::load_checkpoint_tensors(path, "model", none); }) ==
             expected);
  BOOST_TEST(error_message([&] { strata::load_checkpoint_experiment(path); }) == expected);
  BOOST_TEST(error_message([&] { strata::load_checkpoint_training_state(path); }) == expected);
}

BOOST_AUTO_TEST_CASE(not_an_hdf5_file_and_missing_file) {
  TempDir dir;
  const fs::path text = dir / "notes.h5";
  std::ofstream(text) << "this is not HDF5\n";
  std::vector<NamedTensor> none;
  BOOST_TEST(error_message([&] { strata::load_checkpoint_tensors(text, "model", none); }) ==
             "checkpoint " + text.string() + ": not an HDF5 file");
  const fs::path missing = dir / "missing.h5";
  BOOST_TEST(error_message([&] { strata::load_checkpoint_experiment(missing); }) ==
             "checkpoint " + missing.string() + ": no such file");
  BOOST_TEST(error_message([&] { strata::read_hdf5_tensor(missing, "data"); }) ==
             "HDF5 file " + missing.string() + ": no such file");
  BOOST_TEST(error_message([&] { strata::load_checkpoint_training_state(dir.path()); }) ==
             "checkpoint " + dir.path().string() + ": is a folder, not an HDF5 file");
}

// Every file Strata writes carries a CRC-32 of its HDF5 part in the user block, checked before HDF5
// parses anything: damage anywhere (raw weights included, which HDF5 itself never checks) is
// refused with its reason, and an edit on purpose is accepted once resealed.
BOOST_AUTO_TEST_CASE(damaged_files_are_refused_by_their_checksum) {
  TempDir dir;
  std::mt19937 rng(11);
  const Checkpoint saved = sample_checkpoint(rng);
  const fs::path path = dir / "model.h5";
  strata::save_checkpoint(path, saved);
  std::string bytes;
  {
    std::ifstream in(path, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  BOOST_TEST(bytes.rfind("strata-checksum v1\ncrc32 ", 0) == 0u);
  BOOST_TEST(bytes.substr(512, 4) == "\x89HDF");
  const auto write = [&](const fs::path& to, const std::string& content) {
    std::ofstream(to, std::ios::binary | std::ios::trunc) << content;
  };
  const auto load_all = [&](const fs::path& file) {
    strata::load_checkpoint_experiment(file);
    strata::load_checkpoint_training_state(file);
    std::vector<NamedTensor> model = empty_like(saved.model);
    strata::load_checkpoint_tensors(file, "model", model);
  };
  load_all(path);

  // One flipped bit in each eighth of the file: the checksum catches every one.
  for (int part = 0; part < 8; ++part) {
    std::string flipped = bytes;
    flipped[512 + (bytes.size() - 513) * part / 8] ^= 0x10;
    const fs::path damaged = dir / fmt::format("flipped{}.h5", part);
    write(damaged, flipped);
    BOOST_TEST(error_message([&] { load_all(damaged); }) ==
                   "checkpoint " + damaged.string() +
                       ": its contents do not match the CRC-32 checksum it was saved with: the file "
                       "was damaged (or edited without resealing: docs/checkpoint-format.md, "
                       "\"Integrity\")",
               "part " << part);
  }
  const fs::path truncated = dir / "truncated.h5";
  write(truncated, bytes.substr(0, bytes.size() - 100));
  STRATA_CHECK_CONTAINS(error_message([&] { load_all(truncated); }),
                        "bytes after its checksum header, but was saved with");  // and the hint
  const fs::path header = dir / "header.h5";
  std::string bad_header = bytes;
  bad_header[25] = 'z';  // inside the hex digits of the CRC
  write(header, bad_header);
  STRATA_CHECK_CONTAINS(error_message([&] { load_all(header); }),
                        "its checksum header (the first 512 bytes) is damaged");

  // An edit through HDF5 (as with h5py "r+"), then resealed: accepted, with the edit.
  {
    hid_t file = H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    BOOST_REQUIRE(file >= 0);
    BOOST_REQUIRE(H5Adelete(file, "format") >= 0);
    H5Fclose(file);
  }
  STRATA_CHECK_CONTAINS(error_message([&] { load_all(path); }), "(or edited without resealing: ");
  strata::reseal_hdf5_file(path);
  STRATA_CHECK_CONTAINS(error_message([&] { load_all(path); }),
                        "not a Strata checkpoint (it has no root attribute 'format')");
  // Files without the header (h5py's, older Strata's) are read as before; they cannot be resealed.
  const fs::path plain = dir / "plain.h5";
  write(plain, bytes.substr(512));
  load_all(plain);
  STRATA_CHECK_CONTAINS(error_message([&] { strata::reseal_hdf5_file(plain); }),
                        "has no Strata checksum header to reseal");
}

BOOST_AUTO_TEST_CASE(integer_datasets_are_rejected_and_float64_is_converted) {
  TempDir dir;
  const fs::path path = dir / "model.h5";
  {
    RawFile raw(path);
    raw.checkpoint_attributes();
    raw.dataset<int32_t>("/model/fc1/bias", H5T_STD_I32LE, H5T_NATIVE_INT32, {1, 2, 3});
    raw.dataset<double>("/model/fc2/bias", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, {0.25, -1.5});
  }
  std::vector<NamedTensor> ints = {{"fc1/bias", Tensor(Shape{3})}};
  BOOST_TEST(error_message([&] { strata::load_checkpoint_tensors(path, "model", ints, true); }) ==
             "checkpoint " + path.string() +
                 ": /model/fc1/bias holds integer values but the model expects float32");
  std::vector<NamedTensor> doubles = {{"fc2/bias", Tensor(Shape{2})}};
  strata::load_checkpoint_tensors(path, "model", doubles, true);
  BOOST_TEST(doubles[0].tensor.data()[0] == 0.25f);
  BOOST_TEST(doubles[0].tensor.data()[1] == -1.5f);
}

BOOST_AUTO_TEST_CASE(a_group_where_a_dataset_should_be) {
  std::mt19937 rng(25);
  Checkpoint saved;
  saved.model = random_tensors({{"conv1/weight", {2, 2}}}, rng);
  TempDir dir;
  strata::save_checkpoint(dir / "model.h5", saved);
  std::vector<NamedTensor> model = {{"conv1", Tensor(Shape{2, 2})}};
  BOOST_TEST(
      error_message([&] { strata::load_checkpoint_tensors(dir / "model.h5", "model", model); }) ==
      "checkpoint " + (dir / "model.h5").string() + ": /model/conv1 is a group, not a dataset");
}

BOOST_AUTO_TEST_CASE(unknown_group_and_bad_names) {
  TempDir dir;
  strata::save_checkpoint(dir / "model.h5", Checkpoint{});
  std::vector<NamedTensor> none;
  BOOST_TEST(error_message([&] {
               strata::load_checkpoint_tensors(dir / "model.h5", "weights", none);
             }).find("cannot load tensors of group 'weights'") != std::string::npos);
  std::vector<NamedTensor> bad = {{"/conv1/weight", Tensor(Shape{1})}};
  BOOST_TEST(error_message([&] {
               strata::load_checkpoint_tensors(dir / "model.h5", "model", bad);
             }).find("invalid name '/conv1/weight' under /model") != std::string::npos);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(atomic_save)

BOOST_AUTO_TEST_CASE(saving_over_a_checkpoint_replaces_it) {
  std::mt19937 rng(31);
  TempDir dir;
  const fs::path path = dir / "model.h5";
  Checkpoint first;
  first.model = random_tensors({{"fc1/weight", {4, 3}}}, rng);
  strata::save_checkpoint(path, first);
  Checkpoint second;
  second.model = random_tensors({{"fc1/weight", {4, 3}}, {"fc2/weight", {2, 4}}}, rng);
  second.experiment_yaml = "second: true\n";
  strata::save_checkpoint(path, second);

  std::vector<NamedTensor> model = empty_like(second.model);
  strata::load_checkpoint_tensors(path, "model", model);
  check_same_tensors(model, second.model);
  BOOST_TEST(strata::load_checkpoint_experiment(path) == "second: true\n");
  BOOST_TEST(leftovers(dir.path()).empty());
}

// Each failure below must leave the previous checkpoint byte for byte and no temporary file.
struct PreviousCheckpoint {
  TempDir dir;
  fs::path path = dir / "model.h5";
  std::mt19937 rng{32};
  std::string bytes;
  PreviousCheckpoint() {
    strata::save_checkpoint(path, sample_checkpoint(rng));
    bytes = file_bytes(path);
    BOOST_REQUIRE(!bytes.empty());
  }
  void check_untouched() {
    BOOST_TEST((file_bytes(path) == bytes), "the previous checkpoint changed");
    BOOST_TEST(leftovers(dir.path()).empty());
  }
};

BOOST_FIXTURE_TEST_CASE(invalid_tensor_name, PreviousCheckpoint) {
  Checkpoint broken = sample_checkpoint(rng);
  broken.model.push_back({"conv2//weight", random_tensor(Shape{3}, rng)});
  BOOST_TEST(error_message([&] { strata::save_checkpoint(path, broken); }) ==
             "checkpoint " + path.string() +
                 ": invalid name 'conv2//weight' under /model: a name is parts separated by '/', "
                 "none of them empty, '.' or '..'");
  check_untouched();
}

BOOST_FIXTURE_TEST_CASE(duplicate_and_conflicting_names, PreviousCheckpoint) {
  Checkpoint twice = sample_checkpoint(rng);
  twice.model.push_back(twice.model[0]);
  BOOST_TEST(error_message([&] { strata::save_checkpoint(path, twice); }) ==
             "checkpoint " + path.string() + ": /model/conv1/weight is listed twice");
  Checkpoint nested = sample_checkpoint(rng);
  nested.model.push_back({"conv1", random_tensor(Shape{3}, rng)});
  BOOST_TEST(error_message([&] { strata::save_checkpoint(path, nested); }) ==
             "checkpoint " + path.string() +
                 ": /model/conv1 cannot be both a dataset and the group that holds "
                 "/model/conv1/weight");
  check_untouched();
}

BOOST_FIXTURE_TEST_CASE(undefined_tensor_fails_mid_write, PreviousCheckpoint) {
  // Found only while the file is being built, after other datasets were written.
  Checkpoint broken = sample_checkpoint(rng);
  broken.optimizer.push_back({"fc9/weight/momentum", Tensor()});
  BOOST_TEST(error_message([&] { strata::save_checkpoint(path, broken); }) ==
             "checkpoint " + path.string() +
                 ": the tensor for /optimizer/fc9/weight/momentum is undefined");
  check_untouched();
}

// The temporary file exists and is partly written when the disk fills up. This used to leave a
// half-closed HDF5 file behind that crashed the process at exit; the open-object check in
// error_message() and this executable's exit status guard against that.
BOOST_FIXTURE_TEST_CASE(disk_full_mid_write, PreviousCheckpoint) {
  Checkpoint big = sample_checkpoint(rng);
  big.model.push_back({"huge/weight", random_tensor(Shape{512, 1024}, rng)});  // 2 MiB
  std::string message;
  {
    FileSizeLimit limit(256 * 1024);
    message = error_message([&] { strata::save_checkpoint(path, big); });
  }
  BOOST_TEST_MESSAGE("disk full: " << message);
  BOOST_TEST(message == "checkpoint " + path.string() + ": cannot write " + path.string() +
                            ".tmp-" + std::to_string(::getpid()) + ": File too large");
  check_untouched();
  // And the previous checkpoint still loads.
  std::vector<NamedTensor> model = empty_like(sample_checkpoint(rng).model);
  strata::load_checkpoint_tensors(path, "model", model);
}

BOOST_FIXTURE_TEST_CASE(temporary_name_taken_by_a_folder, PreviousCheckpoint) {
  fs::path temporary = path;
  temporary += ".tmp-" + std::to_string(::getpid());
  fs::create_directory(temporary);
  std::ofstream(temporary / "keep.txt") << "not ours\n";
  const std::string message =
      error_message([&] { strata::save_checkpoint(path, sample_checkpoint(rng)); });
  BOOST_TEST(message == "checkpoint " + path.string() + ": cannot save: " + temporary.string() +
                            " exists and is not a regular file");
  BOOST_TEST(fs::exists(temporary / "keep.txt"));  // someone else's folder is left alone
  fs::remove_all(temporary);
  check_untouched();
}

BOOST_FIXTURE_TEST_CASE(stale_temporary_file_is_replaced, PreviousCheckpoint) {
  fs::path temporary = path;
  temporary += ".tmp-" + std::to_string(::getpid());
  std::ofstream(temporary) << "left by a crashed save\n";
  Checkpoint next = sample_checkpoint(rng);
  strata::save_checkpoint(path, next);
  BOOST_TEST(leftovers(dir.path()).empty());
  std::vector<NamedTensor> model = empty_like(next.model);
  strata::load_checkpoint_tensors(path, "model", model);
  check_same_tensors(model, next.model);
}

BOOST_FIXTURE_TEST_CASE(target_is_a_folder, PreviousCheckpoint) {
  // The rename is the last step to fail: the written temporary file must still be removed.
  const fs::path folder = dir / "model_dir.h5";
  fs::create_directory(folder);
  std::ofstream(folder / "inside.txt") << "x\n";
  const std::string message =
      error_message([&] { strata::save_checkpoint(folder, sample_checkpoint(rng)); });
  BOOST_TEST(message.starts_with("checkpoint " + folder.string() + ": cannot rename "));
  BOOST_TEST(fs::exists(folder / "inside.txt"));
  check_untouched();
}

BOOST_AUTO_TEST_CASE(missing_folder_is_an_error_not_created) {
  TempDir dir;
  const fs::path path = dir / "no" / "such" / "model.h5";
  BOOST_TEST(error_message([&] { strata::save_checkpoint(path, Checkpoint{}); }) ==
             "checkpoint " + path.string() + ": cannot save: the folder " +
                 (dir / "no" / "such").string() + " does not exist");
  BOOST_TEST(!fs::exists(dir / "no"));
}

BOOST_AUTO_TEST_CASE(relative_path_in_the_current_folder) {
  TempDir dir;
  const fs::path previous = fs::current_path();
  fs::current_path(dir.path());
  std::mt19937 rng(33);
  Checkpoint saved;
  saved.model = random_tensors({{"fc1/weight", {3, 2}}}, rng);
  std::string message;
  try {
    strata::save_checkpoint("model.h5", saved);
    std::vector<NamedTensor> model = empty_like(saved.model);
    strata::load_checkpoint_tensors("model.h5", "model", model);
    check_same_tensors(model, saved.model);
  } catch (const Error& error) {
    message = error.what();
  }
  fs::current_path(previous);
  BOOST_TEST(message == "");
  BOOST_TEST(fs::exists(dir / "model.h5"));
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(plain_hdf5_tensors)

BOOST_AUTO_TEST_CASE(write_then_read_any_rank) {
  std::mt19937 rng(41);
  const std::vector<NamedTensor> tensors = random_tensors({{"data", {5, 1, 28, 28}},
                                                           {"fc3", {5, 10}},
                                                           {"layer1.0/out", {5, 16, 4, 4}},
                                                           {"scalar", Shape{}}},
                                                          rng);
  TempDir dir;
  const fs::path path = dir / "out.h5";
  strata::write_hdf5_tensors(path, tensors);
  BOOST_TEST(leftovers(dir.path()).empty());
  for (const NamedTensor& entry : tensors) {
    BOOST_TEST_CONTEXT(entry.name) {
      const Tensor loaded = strata::read_hdf5_tensor(path, entry.name);
      BOOST_TEST(loaded.shape().str() == entry.tensor.shape().str());
      BOOST_TEST(max_abs_diff(loaded, entry.tensor) == 0.0f);
    }
  }
  // A leading '/' means the same dataset.
  BOOST_TEST(max_abs_diff(strata::read_hdf5_tensor(path, "/layer1.0/out"), tensors[2].tensor) ==
             0.0f);
}

BOOST_AUTO_TEST_CASE(float64_input_is_converted) {
  TempDir dir;
  const fs::path path = dir / "input.h5";
  {
    RawFile raw(path);
    raw.dataset<double>("/data", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, {0.5, -2.0, 3.25});
  }
  const Tensor loaded = strata::read_hdf5_tensor(path, "data");
  BOOST_TEST(loaded.shape().str() == "[3]");
  BOOST_TEST(loaded.data()[2] == 3.25f);
}

BOOST_AUTO_TEST_CASE(read_errors_name_the_file_and_the_dataset) {
  TempDir dir;
  const fs::path path = dir / "input.h5";
  {
    RawFile raw(path);
    raw.dataset<int32_t>("/labels", H5T_STD_I32LE, H5T_NATIVE_INT32, {1, 2, 3});
    raw.dataset<double>("/images/train", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, {0.5});
  }
  BOOST_TEST(error_message([&] { strata::read_hdf5_tensor(path, "data"); }) ==
             "HDF5 file " + path.string() +
                 ": dataset /data does not exist (the file holds /images/train, /labels)");
  BOOST_TEST(error_message([&] { strata::read_hdf5_tensor(path, "labels"); }) ==
             "HDF5 file " + path.string() +
                 ": dataset /labels holds integer values, expected floating point");
  BOOST_TEST(error_message([&] { strata::read_hdf5_tensor(path, "images"); }) ==
             "HDF5 file " + path.string() + ": /images is a group, not a dataset");
  BOOST_TEST(error_message([&] { strata::read_hdf5_tensor(path, "labels/x"); }) ==
             "HDF5 file " + path.string() +
                 ": dataset /labels/x does not exist (the file holds /images/train, /labels)");
}

BOOST_AUTO_TEST_CASE(write_is_atomic_too) {
  std::mt19937 rng(42);
  TempDir dir;
  const fs::path path = dir / "out.h5";
  strata::write_hdf5_tensors(path, random_tensors({{"fc3", {2, 10}}}, rng));
  const std::string before = file_bytes(path);
  const std::vector<NamedTensor> broken = {{"fc3", random_tensor(Shape{2, 10}, rng)},
                                           {"x", Tensor()}};
  BOOST_TEST(error_message([&] { strata::write_hdf5_tensors(path, broken); }) ==
             "HDF5 file " + path.string() + ": the tensor for /x is undefined");
  BOOST_TEST((file_bytes(path) == before));
  BOOST_TEST(leftovers(dir.path()).empty());
}

BOOST_AUTO_TEST_SUITE_END()

// HDF5's own error printing stays off during our calls and comes back afterwards.
BOOST_AUTO_TEST_CASE(hdf5_error_printing_is_restored) {
  H5E_auto2_t before = nullptr;
  void* before_data = nullptr;
  H5Eget_auto2(H5E_DEFAULT, &before, &before_data);
  TempDir dir;
  error_message([&] { strata::read_hdf5_tensor(dir / "missing.h5", "data"); });
  H5E_auto2_t after = nullptr;
  void* after_data = nullptr;
  H5Eget_auto2(H5E_DEFAULT, &after, &after_data);
  BOOST_TEST((before == after && before_data == after_data));
}
