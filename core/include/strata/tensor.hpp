// strata/tensor.hpp: the float32 NCHW tensor.
//
// Shape: a list of extents, outermost first. Layers describe one *sample* ([C, H, W] or [F]);
// tensors that flow through the graph carry the batch as their first dimension ([N, C, H, W]).
//
// Tensor: a cheap handle (shared, reference-counted storage, 64-byte aligned) plus a shape and an
// offset. Copying a Tensor copies the handle, not the data: view() and batch_slice() alias the same
// memory. Use clone() for a deep copy. A default-constructed Tensor is "undefined" (no storage);
// layers receive undefined gradient tensors for inputs whose gradient nobody needs.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <iosfwd>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace strata {

// The largest extent a configuration may ask for (2^31 - 1): beyond any image or layer width, and
// small enough that sums and small products of extents stay within 64 bits.
inline constexpr int64_t kMaxExtent = (int64_t{1} << 31) - 1;

class Shape {
 public:
  Shape() = default;
  Shape(std::initializer_list<int64_t> dims) : dims_(dims) {}
  explicit Shape(std::vector<int64_t> dims) : dims_(std::move(dims)) {}

  std::size_t rank() const { return dims_.size(); }
  int64_t operator[](std::size_t i) const { return dims_[i]; }
  int64_t& operator[](std::size_t i) { return dims_[i]; }
  const std::vector<int64_t>& dims() const { return dims_; }
  int64_t numel() const;  // product of the extents; 1 for rank 0; an Error when it overflows

  Shape with_batch(int64_t n) const;  // [n, dims...]
  Shape without_batch() const;        // drops the first extent
  std::string str() const;            // "[6, 1, 5, 5]"

  bool operator==(const Shape&) const = default;

 private:
  std::vector<int64_t> dims_;
};

class Tensor {
 public:
  static constexpr std::size_t kAlignment = 64;

  Tensor() = default;
  // Allocates, zero-filled. More elements than the machine's memory holds is an Error with the
  // figure, as is an allocation failure.
  explicit Tensor(Shape shape);

  bool defined() const { return data_ != nullptr || shape_.numel() == 0; }
  const Shape& shape() const { return shape_; }
  int64_t dim(std::size_t i) const { return shape_[i]; }
  std::size_t rank() const { return shape_.rank(); }
  int64_t numel() const { return shape_.numel(); }

  float* data() { return data_; }
  const float* data() const { return data_; }
  std::span<float> span() { return {data_, static_cast<std::size_t>(numel())}; }
  std::span<const float> span() const { return {data_, static_cast<std::size_t>(numel())}; }

  Tensor view(Shape shape) const;                        // same data, numel must match
  Tensor batch_slice(int64_t begin, int64_t end) const;  // rows [begin, end) of dimension 0
  // Elements [offset, offset + shape.numel()) of this tensor, viewed as `shape` (the graph's
  // buffers in an arena); the range must lie inside this tensor.
  Tensor region(int64_t offset, Shape shape) const;
  Tensor clone() const;                                  // deep copy

  void fill(float value);
  void copy_from(const Tensor& other);  // element counts must match
  bool same_storage(const Tensor& other) const { return storage_ == other.storage_; }

 private:
  std::shared_ptr<float[]> storage_;
  float* data_ = nullptr;
  Shape shape_;
};

std::ostream& operator<<(std::ostream& out, const Shape& shape);  // prints shape.str()

struct NamedTensor {
  std::string name;
  Tensor tensor;
};

// The machine's physical memory (or STRATA_MEMORY_LIMIT_MB megabytes when that environment
// variable is set and lower), the ceiling every size estimate is checked against.
uint64_t physical_memory_bytes();
// This process's resident set now, and its peak so far (0 where the system does not say).
int64_t resident_bytes();
int64_t peak_resident_bytes();
// 1234567 -> "1.2 MB" (decimal units).
std::string bytes_text(double bytes);

// Index of the first NaN or infinite element, or -1 when every element is finite.
int64_t first_nonfinite(const Tensor& tensor);

// "conv1/weight[3] = nan" for the first tensor holding a non-finite element, "" when all are
// finite. `prefix` goes before each name ("/model/").
std::string describe_nonfinite(std::span<const NamedTensor> tensors, std::string_view prefix = "");

}  // namespace strata
