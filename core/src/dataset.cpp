#include "strata/dataset.hpp"

#include <algorithm>
#include <cstring>
#include <numeric>
#include <random>

#include "strata/error.hpp"

namespace strata {

BadSample::~BadSample() = default;

std::string SplitReader::describe(int64_t index) const { return fmt::format("sample {}", index); }

InMemorySplit::InMemorySplit(Split split) : split_(std::move(split)) {
  const Tensor& images = split_.images;
  if (images.rank() != 4 || images.dim(0) != static_cast<int64_t>(split_.labels.size())) {
    fail("in-memory split: expected images [N, C, H, W] for {} labels, got {}",
         split_.labels.size(), images.shape().str());
  }
}

void InMemorySplit::read(int64_t index, Image& out) const {
  if (index < 0 || index >= size()) {
    fail("in-memory split: sample {} requested, but the split has {}", index, size());
  }
  const Tensor& images = split_.images;
  out.resize(images.dim(1), images.dim(2), images.dim(3));
  const int64_t row = out.channels * out.plane_size();
  std::memcpy(out.pixels.data(), images.data() + index * row, row * sizeof(float));
}

std::shared_ptr<const SplitReader> InMemoryDataset::open(std::string_view split) {
  return std::make_shared<InMemorySplit>(load(split));
}

void Transform::augment(Image& image, Image& scratch, Rng&) const { apply(image, scratch); }

void Transform::fit(const FitImages&) {
  fail("transform {} has no statistics to fit", type());
}

std::vector<int64_t> shard(std::span<const int64_t> order, int rank, int ranks) {
  if (ranks < 1 || rank < 0 || rank >= ranks) {
    fail("shard: rank {} of {} does not exist (expected 0 <= rank < ranks)", rank, ranks);
  }
  std::vector<int64_t> part;
  part.reserve(order.size() / ranks + 1);
  for (std::size_t i = static_cast<std::size_t>(rank); i < order.size();
       i += static_cast<std::size_t>(ranks)) {
    part.push_back(order[i]);
  }
  return part;
}

TrainValRows split_validation_rows(int64_t available, int64_t validation, uint32_t seed) {
  std::vector<int64_t> order(available);
  std::iota(order.begin(), order.end(), 0);
  if (validation <= 0) return {order, {}};
  std::mt19937 split_rng(seed ^ 0x9e3779b9u);
  std::shuffle(order.begin(), order.end(), split_rng);
  std::vector<int64_t> val_rows(order.begin(), order.begin() + validation);
  std::vector<int64_t> train_rows(order.begin() + validation, order.end());
  std::sort(val_rows.begin(), val_rows.end());
  std::sort(train_rows.begin(), train_rows.end());
  return {std::move(train_rows), std::move(val_rows)};
}

}  // namespace strata
