// Fuzz target: the checkpoint loader. The input is written as a file and read as a checkpoint:
// root attributes, /experiment, /training and /history, and the tensors of a small model.
#include <cstdlib>
#include <cstring>

#include "fuzz_support.hpp"
#include "strata/checkpoint.hpp"

// Every input reaches the loader, sealed or not (but see below). A file without Strata's checksum
// header is first read in a child process (core/src/hdf5_probe.hpp), so the libhdf5 crashes on
// damaged global heaps (corpus/checkpoint/crash-hdf5-*: a SEGV and a memcpy of a negative length in
// H5HG_read) end the child, and the loader reports a damaged file: a strata::Error.
// With STRATA_FUZZ_SEALED_ONLY set (the brief run under ctest, in CI's make test-asan) only inputs
// that start with Strata's checksum header reach the loader. A file without it is probed in a
// child process first (hdf5_probe), which turns libhdf5's crashes into errors but waits its full
// 10 s timeout on a file that sends libhdf5 into an endless loop; mutations of the corpus reach such
// files often enough that 2000 of them outran ctest's 300 s (2026-12-04). That is work for
// `make fuzz`, which gives the loader everything; the unsealed path stays tested by
// test_hdf5_inputs (200 bit flips through every reader) and by the corpus replay in make test.
const bool sealed_only = std::getenv("STRATA_FUZZ_SEALED_ONLY") != nullptr;
constexpr char kSealMagic[] = "strata-checksum v1\n";

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  using namespace strata;
  if (sealed_only && (size < sizeof kSealMagic - 1 ||
                      std::memcmp(data, kSealMagic, sizeof kSealMagic - 1) != 0)) {
    return 0;
  }
  // A new name for every input: the checksum verification and the crash probe are cached by
  // path, size, inode and modification time, and two inputs of one size written within one
  // timestamp tick would share the rest.
  static uint64_t count = 0;
  const auto path = fuzz::scratch("model-" + std::to_string(count++) + ".h5");
  fuzz::write_file(path, data, size);
  struct Remove {
    std::filesystem::path path;
    ~Remove() { std::filesystem::remove(path); }
  } remove{path};
  try {
    load_checkpoint_experiment(path);
  } catch (const Error&) {
  }
  try {
    load_checkpoint_training_state(path);
  } catch (const Error&) {
  }
  try {
    std::vector<NamedTensor> model{{"fc/weight", Tensor(Shape{3, 4})},
                                   {"fc/bias", Tensor(Shape{3})}};
    load_checkpoint_tensors(path, "model", model);
  } catch (const Error&) {
  }
  return 0;
}
