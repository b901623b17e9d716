#include "strata/tensor.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <new>
#include <ostream>

#include "strata/error.hpp"

namespace strata {

int64_t Shape::numel() const {
  int64_t n = 1;
  for (int64_t d : dims_) n *= d;
  return n;
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
  const std::size_t bytes = std::max<std::size_t>(
      kAlignment, (count * sizeof(float) + kAlignment - 1) / kAlignment * kAlignment);
  auto* raw = static_cast<float*>(::operator new[](bytes, std::align_val_t(kAlignment)));
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
