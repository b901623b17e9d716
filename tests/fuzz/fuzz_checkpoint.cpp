// Fuzz target: the checkpoint loader. The input is written as a file and read as a checkpoint:
// root attributes, /experiment, /training and /history, and the tensors of a small model.
#include "fuzz_support.hpp"
#include "strata/checkpoint.hpp"

// Every input reaches the loader, sealed or not. A file without Strata's checksum header is first
// read in a child process (core/src/hdf5_probe.hpp), so the libhdf5 crashes on damaged global heaps
// (corpus/checkpoint/crash-hdf5-*: a SEGV and a memcpy of a negative length in H5HG_read) end the
// child, and the loader reports a damaged file: a strata::Error, as for any other bad input.
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  using namespace strata;
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
