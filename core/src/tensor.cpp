#include "strata/tensor.hpp"

#include <fmt/format.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <new>
#include <ostream>

#include "strata/error.hpp"

namespace strata {

int64_t Shape::numel() const {
  int64_t n = 1;
  for (int64_t d : dims_) {
    if (__builtin_mul_overflow(n, d, &n)) {
      fail("shape {} has too many elements: their count overflows a 64-bit integer", str());
    }
  }
  return n;
}

int64_t resident_bytes() {
  std::ifstream statm("/proc/self/statm");
  int64_t size = 0, resident = 0;
  if (!(statm >> size >> resident)) return 0;
  return resident * ::sysconf(_SC_PAGE_SIZE);
}

int64_t peak_resident_bytes() {
  rusage usage{};
  if (::getrusage(RUSAGE_SELF, &usage) != 0) return 0;
  return static_cast<int64_t>(usage.ru_maxrss) * 1024;  // KiB on Linux
}

uint64_t physical_memory_bytes() {
  const long pages = ::sysconf(_SC_PHYS_PAGES);
  const long page_size = ::sysconf(_SC_PAGE_SIZE);
  uint64_t bytes = pages <= 0 || page_size <= 0
                       ? std::numeric_limits<uint64_t>::max()
                       : static_cast<uint64_t>(pages) * static_cast<uint64_t>(page_size);
  // STRATA_MEMORY_LIMIT_MB lowers the ceiling (fuzzers, shared machines, tests).
  if (const char* limit = std::getenv("STRATA_MEMORY_LIMIT_MB")) {
    char* end = nullptr;
    const unsigned long long mb = std::strtoull(limit, &end, 10);
    if (end != limit && *end == '\0' && mb > 0 && mb < (uint64_t{1} << 40)) {
      bytes = std::min<uint64_t>(bytes, mb * 1000 * 1000);
    }
  }
  return bytes;
}

std::string bytes_text(double bytes) {
  const char* units[] = {"bytes", "KB", "MB", "GB", "TB", "PB", "EB"};
  int unit = 0;
  while (bytes >= 1000.0 && unit < 6) {
    bytes /= 1000.0;
    ++unit;
  }
  return unit == 0 ? fmt::format("{:.0f} bytes", bytes) : fmt::format("{:.1f} {}", bytes, units[unit]);
}

Shape Shape::with_batch(int64_t n) const {
  std::vector<int64_t> dims{n};
  dims.insert(dims.end(), dims_.begin(), dims_.end());
  return Shape(std::move(dims));
}

Shape Shape::without_batch() const {
  if (dims_.empty()) fail("cannot drop the batch dimension of a rank-0 shape");
  return Shape(std::vector<int64_t>(dims_.begin() + 1, dims_.end()));
}

std::string Shape::str() const { return fmt::format("[{}]", fmt::join(dims_, ", ")); }

std::ostream& operator<<(std::ostream& out, const Shape& shape) { return out << shape.str(); }

Tensor::Tensor(Shape shape) : shape_(std::move(shape)) {
  for (int64_t d : shape_.dims()) {
    if (d < 0) fail("tensor shape {} has a negative extent", shape_.str());
  }
  const std::size_t count = static_cast<std::size_t>(shape_.numel());
  // More than the machine's memory cannot succeed: say so with the figure, instead of letting the
  // allocation throw std::bad_alloc (or succeed lazily and be killed later).
  const uint64_t memory = physical_memory_bytes();
  if (count > memory / sizeof(float)) {
    fail("a tensor of shape {} needs {}, more than this machine's memory ({})", shape_.str(),
         bytes_text(static_cast<double>(count) * sizeof(float)), bytes_text(static_cast<double>(memory)));
  }
  const std::size_t bytes = std::max<std::size_t>(
      kAlignment, (count * sizeof(float) + kAlignment - 1) / kAlignment * kAlignment);
  float* raw = nullptr;
  try {
    raw = static_cast<float*>(::operator new[](bytes, std::align_val_t(kAlignment)));
  } catch (const std::bad_alloc&) {
    fail("cannot allocate {} for a tensor of shape {}: out of memory", bytes_text(static_cast<double>(bytes)),
         shape_.str());
  }
  std::memset(raw, 0, bytes);
  storage_ = std::shared_ptr<float[]>(
      raw, [](float* p) { ::operator delete[](p, std::align_val_t(kAlignment)); });
  data_ = raw;
}

Tensor Tensor::view(Shape shape) const {
  if (shape.numel() != numel()) {
    fail("cannot view a tensor of shape {} as {}: element counts differ", shape_.str(), shape.str());
  }
  Tensor result = *this;
  result.shape_ = std::move(shape);
  return result;
}

Tensor Tensor::batch_slice(int64_t begin, int64_t end) const {
  if (rank() == 0 || begin < 0 || end < begin || end > shape_[0]) {
    fail("batch slice [{}, {}) is out of range for shape {}", begin, end, shape_.str());
  }
  Tensor result = *this;
  const int64_t row = shape_[0] == 0 ? 0 : numel() / shape_[0];
  result.data_ = data_ + begin * row;
  result.shape_[0] = end - begin;
  return result;
}

Tensor Tensor::region(int64_t offset, Shape shape) const {
  const int64_t count = shape.numel();
  if (offset < 0 || count > numel() || offset > numel() - count) {
    fail("region of {} elements at {} is out of range for shape {}", count, offset, shape_.str());
  }
  Tensor result = *this;
  result.data_ = data_ + offset;
  result.shape_ = std::move(shape);
  return result;
}

Tensor Tensor::clone() const {
  Tensor copy(shape_);
  copy.copy_from(*this);
  return copy;
}

void Tensor::fill(float value) { std::fill(data_, data_ + numel(), value); }

void Tensor::copy_from(const Tensor& other) {
  if (other.numel() != numel()) {
    fail("cannot copy a tensor of shape {} into one of shape {}", other.shape_.str(), shape_.str());
  }
  if (numel() > 0 && other.data_ != data_) std::memmove(data_, other.data_, numel() * sizeof(float));
}

int64_t first_nonfinite(const Tensor& tensor) {
  const float* data = tensor.data();
  const int64_t n = tensor.numel();
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(data[i])) return i;
  }
  return -1;
}

std::string describe_nonfinite(std::span<const NamedTensor> tensors, std::string_view prefix) {
  for (const NamedTensor& entry : tensors) {
    if (!entry.tensor.defined()) continue;
    const int64_t index = first_nonfinite(entry.tensor);
    if (index >= 0) {
      const float value = entry.tensor.data()[index];
      return fmt::format("{}{}[{}] = {}", prefix, entry.name, index,
                         std::isnan(value) ? std::string("nan") : fmt::format("{}", value));
    }
  }
  return "";
}

}  // namespace strata
