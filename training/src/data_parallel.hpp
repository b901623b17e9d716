// training/src/data_parallel.hpp (private): what the training loop does as one rank of N.
//
// WHAT THIS OBJECT REPRESENTS
//   The data-parallel side of one run (docs/distributed.md). Every rank holds a replica of the
//   model; train.batch_size is the global batch, and each rank computes the gradient of its shard
//   of it (BatchLoader with rank/ranks). Each step takes two small collectives and the gradient
//   buckets, always in this order, on every rank whatever happened to it:
//     agree_images   before forward: the step's images over all ranks, and whether a rank failed
//                    to read its batch (then every rank throws that rank's message);
//     agree_totals   after the loss: the summed loss and correct predictions (so every rank's
//                    guards see the same global loss, and a NaN on one rank stops all of them),
//                    and whether any rank was asked to stop (Ctrl-C reaches ranks at different
//                    steps; they stop together);
//     backward       the model's backward, with its parameter gradients summed over the ranks in
//                    buckets: the parameters in reverse graph order, fused up to
//                    distributed.bucket_mb each, fixed when the model is built (frozen ones
//                    included), each bucket's allreduce started as soon as backward is done with
//                    its layers (distributed.overlap) so that it runs on the communication thread
//                    while backward goes on with earlier layers.
//   The loop scales each rank's loss gradient by (its images / the step's images) before
//   backward, so the summed gradient is exactly the gradient of the global batch's mean loss.
//
//   Without a communicator every call does what one process always did, at no cost, so the same
//   loop serves both. With a communicator of one rank, the collectives leave every value bit for
//   bit as it was: `mpirun -np 1` trains exactly as a plain run.
//
// ENSURES
//   - The replicas stay bitwise identical (the sums are identical on every rank and every rank
//     applies the same update); check_replicas() verifies it with a hash of every parameter and
//     optimizer state, at every epoch end or every step (distributed.check_replicas).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "strata/communicator.hpp"
#include "strata/graph.hpp"
#include "strata/optimizer.hpp"
#include "strata/tensor.hpp"
#include "strata/training/experiment.hpp"

namespace strata::training_loop {

// Runs `work` on every rank of `communicator` (or just runs it, without one) and agrees
// afterwards: when it threw an Error on any rank, every rank throws a JobError with the first
// failing rank's message. `work` must make no collective call after it may have thrown.
void agree_on_errors(Communicator* communicator, std::string_view what,
                     const std::function<void()>& work);

class DataParallel {
 public:
  DataParallel(Communicator* communicator, Graph& graph, const DistributedSettings& settings);
  ~DataParallel();
  DataParallel(const DataParallel&) = delete;
  DataParallel& operator=(const DataParallel&) = delete;

  bool distributed() const { return communicator_ != nullptr; }
  int rank() const { return communicator_ ? communicator_->rank() : 0; }
  int ranks() const { return communicator_ ? communicator_->size() : 1; }
  Communicator* communicator() const { return communicator_; }
  // A layer reduces across ranks in its passes (Layer::communicates): every rank runs forward and
  // backward at every step, on 0 images when it has none.
  bool every_rank_runs_every_pass() const { return communicating_layers_; }
  std::size_t bucket_count() const;  // the gradient buckets, each one allreduce per step
  // What the training loop spent waiting for the other ranks: the step's two agreements and the
  // gradient sums not yet done when backward finished (the part the overlap did not hide), over
  // `steps` steps; the bytes summed per step.
  struct CommunicationTime {
    double seconds = 0;
    int64_t steps = 0;
    int64_t gradient_bytes = 0;
  };
  const CommunicationTime& communication() const { return communication_; }

  // ---- Setup and epochs (collectives too: every rank, same order) ----
  // Runs `work` on every rank and agrees afterwards: when it threw an Error on any rank, every
  // rank throws the first failing rank's message. `work` may itself make collective calls only
  // if it cannot throw before them.
  void agree(std::string_view what, const std::function<void()>& work);
  // Rank 0's values to every rank.
  void broadcast(std::vector<NamedTensor>& tensors, std::string_view what);
  void broadcast(std::span<double> values, std::string_view what);
  void broadcast(std::string& text, std::string_view what);
  // Sums over the ranks, in place.
  void sum(std::span<double> values, std::string_view what);
  // Rank 0's buffers (state tensors that are not parameters: batch norm's running statistics)
  // to every rank, as PyTorch DDP's broadcast_buffers: a rank's running statistics follow its own
  // batches (unless batch_norm has `sync: true`), so before an evaluation or a save rank 0's are
  // taken, and the replicas are whole copies of one model again.
  void sync_buffers(std::string_view what);
  // Fails (on every rank) unless every rank's parameters and optimizer state (with
  // `with_buffers`, also the buffers) are bitwise equal.
  void check_replicas(Graph& graph, Optimizer& optimizer, bool with_buffers, std::string_view where);

  // ---- One step ----
  // The step's images over all ranks. `error`: this rank could not read its batch.
  int64_t agree_images(int64_t local_images, const std::optional<std::string>& error,
                       int64_t iteration);
  struct Totals {
    double loss_sum = 0;  // sum over the step's images of their loss
    int64_t correct = 0;
    bool stop = false;    // some rank was asked to stop
  };
  Totals agree_totals(const Totals& local, int64_t iteration);
  // graph.backward(context, dlogits), then the gradients summed over the ranks. `run_backward`
  // false: this rank has no images and no layer communicates, so it sends zeros.
  void backward(Graph& graph, Context& context, const Tensor& dlogits, bool run_backward,
                int64_t iteration);

 private:
  struct Bucket;
  // Copies the bucket's gradients in (zeros for a parameter no gradient reached, or for all of
  // them when `ran_backward` is false: a rank with no images) and starts its allreduce.
  void start_bucket(const Graph& graph, Bucket& bucket, int64_t iteration, bool ran_backward);

  Communicator* communicator_;
  DistributedSettings settings_;
  bool communicating_layers_ = false;
  std::vector<Bucket> buckets_;
  std::vector<int> bucket_of_node_;  // the bucket that closes when backward is done with node i
  std::vector<NamedTensor> buffers_;   // views of the graph's non-parameter state tensors
  CommunicationTime communication_;
};

}  // namespace strata::training_loop
