// DataParallel: the collectives of a data-parallel step, the gradient buckets and the replica
// check. See data_parallel.hpp.
#include "data_parallel.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <limits>
#include <set>

#include "strata/error.hpp"
#include "strata/layer.hpp"
#include "strata/training/trainer.hpp"

namespace strata::training_loop {

namespace {

// Adds the seconds from its construction to its destruction to `total`.
class Stopwatch {
 public:
  explicit Stopwatch(double& total) : total_(total), start_(std::chrono::steady_clock::now()) {}
  ~Stopwatch() {
    total_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }
  Stopwatch(const Stopwatch&) = delete;
  Stopwatch& operator=(const Stopwatch&) = delete;

 private:
  double& total_;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace

// A run of parameters, fused into one buffer whose sum over the ranks is one allreduce.
struct DataParallel::Bucket {
  struct Entry {
    Param* param;
    std::size_t node;
    int64_t offset;  // in floats, into `buffer`
  };
  std::vector<Entry> entries;
  std::vector<float> buffer;
  std::size_t first_node = 0;  // the lowest node index: backward finishes with it last
  Communicator::Ticket ticket = -1;
};

DataParallel::DataParallel(Communicator* communicator, Graph& graph,
                           const DistributedSettings& settings)
    : communicator_(communicator), settings_(settings) {
  if (communicator_ == nullptr) return;
  const int64_t bucket_limit =
      std::max<int64_t>(1, static_cast<int64_t>(settings.bucket_mb * 1024 * 1024 / sizeof(float)));
  // Parameters in the order backward finishes with them: the last node first.
  Bucket current;
  int64_t floats = 0;
  bucket_of_node_.assign(graph.size(), -1);
  auto close = [&] {
    if (current.entries.empty()) return;
    current.buffer.assign(static_cast<std::size_t>(floats), 0.0f);
    communication_.gradient_bytes += floats * static_cast<int64_t>(sizeof(float));
    buckets_.push_back(std::move(current));
    current = Bucket{};
    floats = 0;
  };
  for (std::size_t i = graph.size(); i-- > 0;) {
    Layer& layer = graph.layer(i);
    communicating_layers_ = communicating_layers_ || layer.communicates();
    const std::vector<Param*> params = layer.params();
    if (params.empty()) continue;
    for (Param* param : params) {
      current.entries.push_back({param, i, floats});
      floats += param->grad.numel();
    }
    current.first_node = i;
    // A node's parameters stay in one bucket, so a bucket is whole once backward is done with
    // its first (lowest) node.
    if (floats >= bucket_limit) {
      bucket_of_node_[i] = static_cast<int>(buckets_.size());
      close();
    }
  }
  if (!current.entries.empty()) {
    bucket_of_node_[current.first_node] = static_cast<int>(buckets_.size());
    close();
  }
  std::set<std::string> param_keys;
  for (const ParamRef& ref : graph.params()) param_keys.insert(ref.key);
  for (NamedTensor& entry : graph.state_tensors()) {
    if (!param_keys.contains(entry.name)) buffers_.push_back(std::move(entry));
  }
}

DataParallel::~DataParallel() = default;

std::size_t DataParallel::bucket_count() const { return buckets_.size(); }

namespace {

// Every rank stops with the failing rank's message, named by its rank (one rank: unchanged).
[[noreturn]] void fail_everywhere(Communicator& communicator, int failing_rank, std::string message,
                                  std::string_view what) {
  if (communicator.size() > 1) {
    communicator.broadcast(message, failing_rank, what);
    message = fmt::format("rank {} of {}: {}", failing_rank, communicator.size(), message);
  }
  throw JobError(message);
}

}  // namespace

void agree_on_errors(Communicator* communicator, std::string_view what,
                     const std::function<void()>& work) {
  std::optional<std::string> error;
  try {
    work();
  } catch (const Error& e) {
    if (communicator == nullptr) throw;
    error = e.what();
  }
  if (communicator == nullptr) return;
  int64_t first_failing = error ? communicator->rank() : std::numeric_limits<int64_t>::max();
  communicator->allreduce(std::span<int64_t>(&first_failing, 1), ReduceOp::min,
                          fmt::format("agreement after {}", what));
  if (first_failing == std::numeric_limits<int64_t>::max()) return;
  fail_everywhere(*communicator, static_cast<int>(first_failing), error.value_or(""),
                  fmt::format("the error message of {}", what));
}

void DataParallel::agree(std::string_view what, const std::function<void()>& work) {
  agree_on_errors(communicator_, what, work);
}

void DataParallel::broadcast(std::vector<NamedTensor>& tensors, std::string_view what) {
  if (communicator_ == nullptr || communicator_->size() == 1) return;
  for (NamedTensor& entry : tensors) {
    Tensor& t = entry.tensor;
    communicator_->broadcast_values(std::span<float>(t.data(), static_cast<std::size_t>(t.numel())),
                                    0, fmt::format("{}: {}", what, entry.name));
  }
}

void DataParallel::broadcast(std::span<double> values, std::string_view what) {
  if (communicator_ == nullptr || communicator_->size() == 1) return;
  communicator_->broadcast_values(values, 0, what);
}

void DataParallel::broadcast(std::string& text, std::string_view what) {
  if (communicator_ == nullptr || communicator_->size() == 1) return;
  communicator_->broadcast(text, 0, what);
}

void DataParallel::sum(std::span<double> values, std::string_view what) {
  if (communicator_ == nullptr) return;
  communicator_->allreduce(values, ReduceOp::sum, what);
}

namespace {

// FNV-1a over the bytes of every tensor, in order.
uint64_t hash_tensors(const std::vector<NamedTensor>& tensors, uint64_t hash) {
  for (const NamedTensor& entry : tensors) {
    const auto* bytes = reinterpret_cast<const unsigned char*>(entry.tensor.data());
    const std::size_t n = static_cast<std::size_t>(entry.tensor.numel()) * sizeof(float);
    for (std::size_t i = 0; i < n; ++i) hash = (hash ^ bytes[i]) * 1099511628211ull;
  }
  return hash;
}

}  // namespace

void DataParallel::sync_buffers(std::string_view what) { broadcast(buffers_, what); }

void DataParallel::check_replicas(Graph& graph, Optimizer& optimizer, bool with_buffers,
                                  std::string_view where) {
  if (communicator_ == nullptr || communicator_->size() == 1) return;
  std::vector<NamedTensor> values;
  for (const ParamRef& ref : graph.params()) values.push_back({ref.key, ref.param->value});
  uint64_t hash = hash_tensors(values, 14695981039346656037ull);
  hash = hash_tensors(optimizer.state(), hash);
  if (with_buffers) hash = hash_tensors(buffers_, hash);
  // The minimum and maximum over the ranks are equal exactly when every rank's hash is.
  int64_t low = static_cast<int64_t>(hash), high = low;
  communicator_->allreduce(std::span<int64_t>(&low, 1), ReduceOp::min,
                           fmt::format("replica check {}", where));
  communicator_->allreduce(std::span<int64_t>(&high, 1), ReduceOp::max,
                           fmt::format("replica check {}", where));
  if (low != high) {
    fail(
        "the model replicas differ between ranks {} (parameter and optimizer-state hashes "
        "{:016x} on this rank, {:016x} .. {:016x} over the ranks): the ranks no longer train the "
        "same model. This is a bug in Strata or in a plugin whose result depends on the rank; "
        "please report it with the experiment",
        where, hash, static_cast<uint64_t>(low), static_cast<uint64_t>(high));
  }
}

int64_t DataParallel::agree_images(int64_t local_images, const std::optional<std::string>& error,
                                   int64_t iteration) {
  if (communicator_ == nullptr) {
    if (error) throw Error(*error);  // not reached: a single process's loop lets it propagate
    return local_images;
  }
  Stopwatch stopwatch(communication_.seconds);
  ++communication_.steps;
  int64_t images = local_images;
  int64_t first_failing = error ? communicator_->rank() : std::numeric_limits<int64_t>::max();
  communicator_->allreduce(std::span<int64_t>(&images, 1), ReduceOp::sum,
                           fmt::format("the batch sizes of iteration {}", iteration));
  communicator_->allreduce(std::span<int64_t>(&first_failing, 1), ReduceOp::min,
                           fmt::format("the data errors of iteration {}", iteration));
  if (first_failing != std::numeric_limits<int64_t>::max()) {
    fail_everywhere(*communicator_, static_cast<int>(first_failing), error.value_or(""),
                    fmt::format("the data error of iteration {}", iteration));
  }
  return images;
}

DataParallel::Totals DataParallel::agree_totals(const Totals& local, int64_t iteration) {
  if (communicator_ == nullptr) return local;
  Stopwatch stopwatch(communication_.seconds);
  double values[3] = {local.loss_sum, static_cast<double>(local.correct), local.stop ? 1.0 : 0.0};
  communicator_->allreduce(std::span<double>(values, 3), ReduceOp::sum,
                           fmt::format("the loss of iteration {}", iteration));
  return {values[0], static_cast<int64_t>(values[1]), values[2] > 0};
}

void DataParallel::start_bucket(const Graph& graph, Bucket& bucket, int64_t iteration,
                                bool ran_backward) {
  for (const Bucket::Entry& entry : bucket.entries) {
    float* slot = bucket.buffer.data() + entry.offset;
    const Tensor& grad = entry.param->grad;
    if (ran_backward && graph.gradient_flowed(entry.node)) {
      std::memcpy(slot, grad.data(), static_cast<std::size_t>(grad.numel()) * sizeof(float));
    } else {
      std::fill(slot, slot + grad.numel(), 0.0f);
    }
  }
  const std::size_t index = static_cast<std::size_t>(&bucket - buckets_.data());
  bucket.ticket = communicator_->start_allreduce(
      bucket.buffer, fmt::format("gradient bucket {} of {} at iteration {}", index + 1,
                                 buckets_.size(), iteration));
}

void DataParallel::backward(Graph& graph, Context& context, const Tensor& dlogits,
                            bool run_backward, int64_t iteration) {
  if (communicator_ == nullptr) {
    graph.backward(context, dlogits);
    return;
  }
  if (run_backward && settings_.overlap) {
    graph.backward(context, dlogits, [&](std::size_t node) {
      if (const int b = bucket_of_node_[node]; b >= 0)
        start_bucket(graph, buckets_[b], iteration, true);
    });
  } else {
    // Without overlap every bucket starts after backward; with no images here (and nothing
    // communicating inside the passes) there is no backward, and the buckets send zeros, in the
    // same fixed order.
    if (run_backward) graph.backward(context, dlogits);
    for (Bucket& bucket : buckets_) start_bucket(graph, bucket, iteration, run_backward);
  }
  Stopwatch stopwatch(communication_.seconds);
  for (Bucket& bucket : buckets_) {
    communicator_->wait(bucket.ticket);
    for (const Bucket::Entry& entry : bucket.entries) {
      // A node no gradient flows through (frozen, with nothing before it learning) keeps its
      // gradients as a single process would: untouched. The structure, hence this, is the same on
      // every rank.
      if (!graph.gradient_flowed(entry.node) && run_backward) continue;
      Tensor& grad = entry.param->grad;
      std::memcpy(grad.data(), bucket.buffer.data() + entry.offset,
                  static_cast<std::size_t>(grad.numel()) * sizeof(float));
    }
  }
}

}  // namespace strata::training_loop
