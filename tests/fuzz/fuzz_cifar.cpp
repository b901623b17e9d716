// Fuzz target: the CIFAR-10 reader. The input is the only training batch file; the test batch is
// one valid record.
#include "fuzz_support.hpp"
#include "strata/config.hpp"
#include "strata/dataset.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  using namespace strata;
  Registries& registries = fuzz::registries();
  const auto dir = fuzz::scratch("cifar");
  std::filesystem::create_directories(dir);
  fuzz::write_file(dir / "train.bin", data, size);
  std::vector<uint8_t> record(3073, 7);
  record[0] = 3;
  fuzz::write_file(dir / "test.bin", record.data(), record.size());
  try {
    Config config = Config::parse_string("{type: cifar10, dir: '" + dir.string() +
                                             "', train_files: [train.bin], test_files: [test.bin]}",
                                         "fuzz");
    auto dataset = registries.datasets.create(config);
    dataset->open("train");
  } catch (const Error&) {
  }
  return 0;
}
