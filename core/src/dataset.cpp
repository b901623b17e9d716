#include "strata/dataset.hpp"

#include <algorithm>
#include <cstring>
#include <numeric>
#include <random>

#include "strata/error.hpp"

namespace strata {

void Transform::augment(const float*, float*, Rng&) const {
  fail("transform {} is not a random transform: it has no augment()", type());
}

namespace {

// Rows `rows` of `split`, copied.
Split take_rows(const Split& split, std::span<const int64_t> rows) {
  Split out;
  const Shape sample = split.images.shape().without_batch();
  out.images = Tensor(sample.with_batch(static_cast<int64_t>(rows.size())));
  const int64_t row_size = sample.numel();
  for (std::size_t i = 0; i < rows.size(); ++i) {
    std::memcpy(out.images.data() + i * row_size, split.images.data() + rows[i] * row_size,
                row_size * sizeof(float));
    out.labels.push_back(split.labels[rows[i]]);
  }
  return out;
}

}  // namespace

Split first_rows(const Split& split, int64_t limit) {
  const int64_t n = static_cast<int64_t>(split.labels.size());
  if (limit <= 0 || limit >= n) return split;
  std::vector<int64_t> rows(limit);
  std::iota(rows.begin(), rows.end(), 0);
  return take_rows(split, rows);
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

TrainValSplit split_validation(const Split& train, int64_t validation, uint32_t seed) {
  if (validation <= 0) return {train, {}};
  const TrainValRows rows =
      split_validation_rows(static_cast<int64_t>(train.labels.size()), validation, seed);
  return {take_rows(train, rows.train), take_rows(train, rows.val)};
}

}  // namespace strata
