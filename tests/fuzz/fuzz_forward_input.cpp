// Fuzz target: the input reader of `strata forward` (read_hdf5_tensor of /data).
#include "fuzz_support.hpp"
#include "strata/checkpoint.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  using namespace strata;
  const auto path = fuzz::scratch("input.h5");
  fuzz::write_file(path, data, size);
  try {
    read_hdf5_tensor(path, "data");
  } catch (const Error&) {
  }
  return 0;
}
