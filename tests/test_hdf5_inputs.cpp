// Damaged HDF5 files (issue 20, item 10): a file h5py wrote (no Strata seal) with one flipped bit
// must load or fail with a strata::Error, never crash the process inside libhdf5; and a seal whose
// magic lost a bit is a damaged seal, not an unsealed file handed to HDF5 unchecked.
// The h5py fixture comes from tests/scripts/hdf5_fixtures.py (run with /usr/bin/python3).
#define BOOST_TEST_MODULE hdf5_inputs
#include <fmt/format.h>
#include <hdf5.h>

#include <boost/test/unit_test.hpp>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <random>

#include "strata/checkpoint.hpp"
#include "strata/error.hpp"
#include "test_support.hpp"

namespace fs = std::filesystem;
using strata::Error;
using strata::NamedTensor;
using strata::Shape;
using strata::Tensor;
using strata::test::TempDir;

namespace {

std::string read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_bytes(const fs::path& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

bool have_h5py() { return std::system("/usr/bin/python3 -c 'import h5py' 2>/dev/null") == 0; }

// Every reader Strata has, on one file. Returns "" or the strata::Error's message; any other
// exception fails the test, and a crash ends it.
std::string read_everything(const fs::path& path) {
  std::string first_error;
  const auto attempt = [&](auto&& action) {
    try {
      action();
    } catch (const Error& error) {
      if (first_error.empty()) first_error = error.what();
    }
  };
  attempt([&] { strata::load_checkpoint_experiment(path); });
  attempt([&] { strata::load_checkpoint_plugins(path); });
  attempt([&] { strata::load_checkpoint_training_state(path); });
  attempt([&] { strata::checkpoint_tensor_shapes(path, "model"); });
  attempt([&] {
    std::vector<NamedTensor> model;
    for (int i = 0; i < 12; ++i) {
      model.push_back({fmt::format("layer{}/weight", i), Tensor(Shape{3, 4})});
      model.push_back({fmt::format("layer{}/bias", i), Tensor(Shape{3})});
    }
    strata::load_checkpoint_tensors(path, "model", model);
  });
  attempt([&] { strata::read_hdf5_tensor(path, "data"); });
  attempt([&] { strata::read_hdf5_series(path, "/history"); });
  return first_error;
}

}  // namespace

// 200 single-bit flips drawn from a seeded generator over an h5py-written checkpoint: each file
// loads or is refused with a strata::Error. Without the child-process probe, libhdf5 1.10.8
// crashes the test binary on several of them (SIGSEGV in H5G__dense_iterate, H5HG_read, ...).
BOOST_AUTO_TEST_CASE(bit_flips_in_unsealed_files_never_crash) {
  if (!have_h5py()) {
    BOOST_TEST_MESSAGE("h5py is missing: skipped");
    return;
  }
  TempDir dir;
  const fs::path original = dir / "h5py.h5";
  const std::string command =
      fmt::format("/usr/bin/python3 {}/tests/scripts/hdf5_fixtures.py unsealed {} 7",
                  STRATA_SOURCE_DIR, original.string());
  BOOST_REQUIRE(std::system(command.c_str()) == 0);
  const std::string bytes = read_bytes(original);
  BOOST_REQUIRE(bytes.size() > 1000u);
  BOOST_TEST(read_everything(original) == "");  // intact, it loads

  std::mt19937 rng(20);
  std::uniform_int_distribution<std::size_t> position(0, bytes.size() - 1);
  std::uniform_int_distribution<int> bit(0, 7);
  int loaded = 0, refused = 0, crashed_in_child = 0;
  for (int flip = 0; flip < 200; ++flip) {
    std::string damaged = bytes;
    const std::size_t at = position(rng);
    damaged[at] = static_cast<char>(damaged[at] ^ (1 << bit(rng)));
    // A new name per file: no cached verdict from another one.
    const fs::path path = dir / fmt::format("flip{}.h5", flip);
    write_bytes(path, damaged);
    const std::string error = read_everything(path);
    // Every failure closed what it opened.
    BOOST_TEST(H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL) == 0, "byte " << at << ": " << error);
    if (error.empty()) {
      ++loaded;
    } else {
      ++refused;
      if (error.find("crashed libhdf5") != std::string::npos ||
          error.find("stopped libhdf5") != std::string::npos) {
        ++crashed_in_child;
        BOOST_TEST_MESSAGE("byte " << at << ": " << error);
        BOOST_TEST(error.find(path.string()) != std::string::npos);
      }
    }
    fs::remove(path);
  }
  BOOST_TEST_MESSAGE(
      fmt::format("200 flips: {} loaded, {} refused ({} crashed libhdf5 in the "
                  "probe)",
                  loaded, refused, crashed_in_child));
  BOOST_TEST(loaded + refused == 200);
}

// One flipped bit in the seal's magic ("strata-checksum v1\n"): still a seal, reported damaged,
// never passed to HDF5 as if h5py had written the file.
BOOST_AUTO_TEST_CASE(a_flipped_bit_in_the_seal_magic_is_a_damaged_seal) {
  TempDir dir;
  std::mt19937 rng(21);
  const fs::path path = dir / "sealed.h5";
  strata::write_hdf5_tensors(
      path, std::vector<NamedTensor>{{"data", strata::test::random_tensor(Shape{2, 3}, rng)}});
  const std::string bytes = read_bytes(path);
  BOOST_REQUIRE(bytes.rfind("strata-checksum v1\n", 0) == 0u);
  std::uniform_int_distribution<int> byte(0, 18), bit(0, 7);
  for (int trial = 0; trial < 8; ++trial) {
    std::string damaged = bytes;
    const int at = byte(rng);
    damaged[at] = static_cast<char>(damaged[at] ^ (1 << bit(rng)));
    const fs::path flipped = dir / fmt::format("magic{}.h5", trial);
    write_bytes(flipped, damaged);
    STRATA_CHECK_CONTAINS(
        strata::test::error_of([&] { strata::read_hdf5_tensor(flipped, "data"); }),
        "its checksum header (the first 512 bytes) is damaged");
  }
  // The intact file still loads.
  BOOST_TEST(strata::read_hdf5_tensor(path, "data").numel() == 6);
}
