// Fuzz target: the input reader of `strata forward` (read_hdf5_tensor of /data).
#include "fuzz_support.hpp"
#include "strata/checkpoint.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  using namespace strata;
  // A new name for every input: the crash probe of unsealed files is cached by path, size, inode
  // and modification time (see fuzz_checkpoint.cpp).
  static uint64_t count = 0;
  const auto path = fuzz::scratch("input-" + std::to_string(count++) + ".h5");
  fuzz::write_file(path, data, size);
  try {
    read_hdf5_tensor(path, "data");
  } catch (const Error&) {
  }
  std::filesystem::remove(path);
  return 0;
}
