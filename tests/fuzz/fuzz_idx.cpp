// Fuzz target: the IDX reader. The input becomes train-images-idx3-ubyte; the other three files
// are small valid ones, so the reader gets past the labels to the images (and the reverse when the
// first byte is odd: the input becomes the training labels).
#include "fuzz_support.hpp"
#include "strata/config.hpp"
#include "strata/dataset.hpp"

namespace {
void write_bytes(const std::filesystem::path& path, const std::vector<uint8_t>& bytes) {
  strata::fuzz::write_file(path, bytes.data(), bytes.size());
}
std::vector<uint8_t> images(uint8_t n) {
  std::vector<uint8_t> b{0, 0, 8, 3, 0, 0, 0, n, 0, 0, 0, 4, 0, 0, 0, 4};
  for (int i = 0; i < n * 16; ++i) b.push_back(static_cast<uint8_t>(i * 37));
  return b;
}
std::vector<uint8_t> labels(uint8_t n) {
  std::vector<uint8_t> b{0, 0, 8, 1, 0, 0, 0, n};
  for (int i = 0; i < n; ++i) b.push_back(static_cast<uint8_t>(i % 10));
  return b;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  using namespace strata;
  Registries& registries = fuzz::registries();
  const auto dir = fuzz::scratch("idx");
  std::filesystem::create_directories(dir);
  const bool fuzz_labels = size > 0 && (data[0] & 1) != 0;
  write_bytes(dir / "train-images-idx3-ubyte", images(3));
  write_bytes(dir / "train-labels-idx1-ubyte", labels(3));
  write_bytes(dir / "t10k-images-idx3-ubyte", images(2));
  write_bytes(dir / "t10k-labels-idx1-ubyte", labels(2));
  fuzz::write_file(dir / (fuzz_labels ? "train-labels-idx1-ubyte" : "train-images-idx3-ubyte"),
                   data, size);
  try {
    Config config = Config::parse_string("{type: idx, dir: '" + dir.string() + "'}", "fuzz");
    auto dataset = registries.datasets.create(config);
    dataset->sample_shape();
    dataset->num_classes();
    dataset->open("train");
  } catch (const Error&) {
  }
  return 0;
}
