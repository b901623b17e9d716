// Fuzz target: the checkpoint loader. The input is written as a file and read as a checkpoint:
// root attributes, /experiment, /training and /history, and the tensors of a small model.
#include "fuzz_support.hpp"
#include "strata/checkpoint.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  using namespace strata;
  // A new name for every input: the checksum verification is cached by path, size, inode and
  // modification time, and two inputs of one size written within one timestamp tick would share
  // the rest.
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
