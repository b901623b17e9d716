// backend_tbb: the "tbb" backend (oneTBB owns every thread) and its fast kernels.
//
// THREADING
//   TBB is the only source of threads. OpenBLAS is pinned to one thread when the plugin registers
//   and is only ever called from inside TBB tasks (or on the calling thread), so the two never
//   oversubscribe the cores. The thread count is whatever the "tbb" backend's set_threads()
//   allowed (tbb::global_control), read at every call.
//
// CONTRACTS (shared by every kernel here; see strata/ops.hpp)
//   - requires: tensors have the shapes the prepared descriptor implies (N free); checked.
//   - ensures: outputs and gradients are overwritten; an undefined gradient Tensor or a null
//     pointer is skipped before any work is done. Results agree with the "reference" kernels to
//     float rounding (tests/test_kernels.cpp states the tolerance).
//   - no allocation in steady state: workspace is planned in on_prepare() from the descriptor
//     (never from N) and allocated the first time each thread uses it (TbbConv2d's is shared by
//     all its instances and grows to the largest's need, see TbbConv2d): two buffers per thread of
//     at most 256 KiB each (larger only when one output row's col matrix is; the Winograd method
//     uses two of at most 2 MiB together, its transformed tiles), never a copy of the batch per
//     thread (tiny-dnn #151). Weight gradients get up to four partial buffers per thread when they
//     are small (64K floats), one when larger (Winograd: one of (tile + 2)^2 * K * C floats per
//     thread, allocated on first use). LRN keeps one buffer per thread of (channels + 1) x
//     its tile of positions, about 256 KiB (TbbLrn).
#pragma once

#include <tbb/blocked_range.h>
#include <tbb/enumerable_thread_specific.h>
#include <tbb/global_control.h>
#include <tbb/parallel_for.h>

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "depthwise.hpp"
#include "lanes.hpp"
#include "polyphase.hpp"
#include "strata/backend.hpp"
#include "strata/config.hpp"
#include "strata/ops.hpp"
#include "winograd.hpp"

namespace strata::tbb_backend {

// Threads allowed right now (the tbb backend's set_threads(), or all cores).
int allowed_threads();

// Runs body(lo, hi) over [0, items) in TBB tasks of at least `grain` items; serially, in one call,
// when the range is one grain or less.
template <class Body>
void parallel_chunks(int64_t items, int64_t grain, const Body& body) {
  if (items <= grain) {
    if (items > 0) body(int64_t{0}, items);
    return;
  }
  tbb::parallel_for(tbb::blocked_range<int64_t>(0, items, grain),
                    [&](const tbb::blocked_range<int64_t>& r) { body(r.begin(), r.end()); });
}

// parallel_for splits [begin, end) into chunks of at least `grain` elements and runs them as TBB
// tasks. set_threads(n) holds a tbb::global_control for the life of the backend (0 = all cores).
class TbbBackend : public Backend {
 public:
  explicit TbbBackend(const Config&);
  ~TbbBackend() override;
  std::string_view name() const override { return "tbb"; }
  std::string description() const override;
  void set_threads(int threads) override;
  int threads() const override { return threads_; }
  void parallel_for(int64_t begin, int64_t end, int64_t grain,
                    const std::function<void(int64_t, int64_t)>& body) override;

 private:
  int threads_;
  std::unique_ptr<tbb::global_control> control_;
};

// Convolution, parallel over blocks of images. Each pass (forward, backward_data, backward_params)
// has its own ordered list of named implementations (tbb_conv2d.cpp: forward_implementations()
// and the two after it), in the style of oneDNN's implementation lists: on_prepare() takes, per
// pass, the first whose supports(desc) holds, so forward may be direct while backward_data is
// not. implementation() names the three: "fwd=direct bwd_data=small bwd_weights=winograd23".
//   forward:         lanes, depthwise, direct, polyphase, winograd43, winograd23, pointwise,
//                    small, blas
//   backward_data:   lanes, depthwise, direct, polyphase, winograd43, winograd23, pointwise,
//                    small, blas
//   backward_params: lanes, depthwise, winograd43, winograd23, direct, polyphase, pointwise,
//                    small, blas
// Precision bf16 (docs/precision.md): supports() takes the bf16 descriptors (symmetric padding)
// but those whose forward method is a GEMM (pointwise, blas) over at least kBf16GemmMinWeights
// weights per group: those go to TbbBf16Conv2d (bf16_conv2d.hpp). Each pass runs the method the
// fp32 layer would (but the weight gradient of 16 to 31 channels: direct, not Winograd,
// winograd_params_fits), on inputs rounded to bf16, so every product multiplies bf16
// values exactly and every sum stays in float, as the reference's emulation computes (up to the
// order of the sums); implementation() names them "bf16_<method>". The pass rounds the weights
// into a copy; methods that copy x and dy anyway round them there (Implementation::
// rounds_activations: the padded, split, interleaved or im2col copies of depthwise, direct,
// polyphase, lanes and small, pointwise's pair planes, F(4x4)'s transforms), for the others
// (F(2x2) Winograd, blas) the pass rounds them into copies (pass_input). The direct and pointwise
// methods multiply with vdpbf16ps (bf16_direct.hpp). On a CPU without AVX512-BF16 on_prepare()
// refuses bf16 like TbbBf16Conv2d does. The methods:
//   - lanes: small images (a block's frames within kLanesBudgetPixels per image, or
//     kLanesStridedBudgetPixels for a strided layer of at most kLanesStridedMaxOutput output
//     pixels a plane), kernels larger than 1x1, and not what Winograd takes: blocks of
//     lanes::kLanes images interleaved so that one vector holds one pixel of every image
//     (lanes.hpp). Forward and backward_data are register tiles of (filters or channels) x output
//     columns over the taps that read real rows (with a single filter or channel per group, as
//     in depthwise layers: tiles of output pixels across the rows); the weight gradient a tile of
//     filters x taps over the output pixels. backward_data needs stride 1 and padding within the
//     kernel's reach. A block's groups run in parallel chunks (for_lanes_groups). LeNet's layers
//     and the depthwise layers of small planes (MobileNet's from 32x32 down) run here.
//   - depthwise: one input channel per group (depthwise convolution, or a channel multiplier),
//     any geometry: register-blocked tap loops over one padded plane (depthwise.hpp), for planes
//     past lanes' frames, and the backward_data lanes refuses (strided). forward and backward_data
//     are parallel over planes; backward_params over groups, each filter's sum in a fixed order.
//   - direct: stride 1, small padded image, little waste, and at most kDirectMaxChannels channels
//     and filters per group (kDirectLargeMaxChannels where Winograd cannot run the shape, and
//     polyphase; the weight gradient past kDirectMaxChannels only on outputs of at least
//     kDirectLargeParamsMinOutput). Register-blocked AVX-512 or AVX2
//     kernels (direct_conv.hpp) read the zero-padded image in place: no im2col, no GEMM packing.
//     backward_data runs the same kernel on the padded dy with flipped, transposed weights.
//     Preferred to winograd for forward and backward_data where both apply.
//   - polyphase: stride 2 to 4 and more than one tap, within the direct method's limits (channels
//     and filters, the L2 budget, the wide rows' efficiency), any dilation and groups; strided
//     images small enough for lanes' frames run lanes first (forward and weight gradient). Each
//     image group's padded input is split into its stride_h x stride_w phase planes
//     (polyphase.hpp), on which every (channel, tap) is one shifted row: forward and
//     backward_params run the direct kernels over them, with wide rows as wide as a phase plane.
//     backward_data splits dx's padded image the same way: each phase plane is a stride-1 full
//     correlation of the padded dy with that phase's taps (one shifted_gemm per phase, no col2im),
//     where there are at least direct::kRows channels per group, a tap on every phase and long
//     enough products.
//   - winograd43, winograd23: F(4x4, 3x3) (winograd43.cpp) or F(2x2, 3x3) (winograd.hpp) over
//     blocks of tiles of the whole batch, for 3x3, stride 1, one group, padding at most 2, at
//     least kWinogradMinChannels channels and filters. F(4x4) where channels plus filters are at
//     most kWinograd43MaxChannels and the output is at least kWinograd43MinOutput wide and high,
//     or smaller but covered by 4x4 tiles with no more positions than by 2x2 ones; the weight
//     gradient on the same outputs, up to kWinograd43MaxParamsChannels channels plus filters (on
//     outputs of kWinograd43MinOutput or more) or kWinograd43MaxSmallParamsChannels, else F(2x2).
//     The products of forward and backward_data run on panel::multiply. Each thread owns a
//     contiguous range of tile blocks and a transformed-gradient buffer of (tile + 2)^2 * K * C
//     floats (16 or 36 per filter and channel), reduced in order (deterministic for a given thread
//     count). Dilation D > 1 too, when D divides the padding and the input size (and padding / D <=
//     2): the D*D polyphase components of the input are a batch D*D times larger of dilation-1
//     convolutions.
//   - small: at most kSmallMaxFilters filters per group and a small image. im2col of several
//     images side by side, then the direct method's register-blocked kernels (OpenBLAS spends as
//     long packing such thin matrices as multiplying them).
//   - pointwise: 1x1, stride 1, pad 0. The image itself is the col matrix, one image per block:
//     forward and backward_data by panel::multiply straight from the image (no packing), the
//     weight gradient by panel::multiply_nt from panel::kDotMinDepth pixels, OpenBLAS sgemm
//     below.
//   - blas: everything else. im2col + single-threaded OpenBLAS sgemm per group; a block is several
//     whole images, or equal bands of output rows of one image when its col matrix would exceed
//     the budget (kBlasColumnBudgetFloats: OpenBLAS packs the weights on every call, so the
//     columns per call must be many).
// Padding must be symmetric (Conv2dDesc::symmetric_padding()): on_prepare() refuses end padding
// that differs from the begin padding; the conv2d layer pads such inputs explicitly.
// backward_params splits the batch into contiguous slices (a few per thread, for load balance);
// slice 0 accumulates straight into dweight, the others into partial buffers added in slice
// order, so results are deterministic for a given thread count.
// SHARED SCRATCH: everything a pass rewrites on every call (the per-thread Workspace, the packed
// and Winograd-transformed weights, the weight gradient's partial sums, the split phases of a
// dilated convolution, bf16's rounded weights) lives in one Scratch shared by every TbbConv2d of
// the process, so it costs the largest layer's need, not the sum over layers (docs/memory.md,
// "The convolution kernel's shared scratch"). Contract: the passes (forward, backward_data,
// backward_params) of all TbbConv2d instances are serialized process-wide: each pass holds the
// scratch's mutex from start to end, and runs its TBB tasks in an isolated region (so a thread
// waiting on them never picks up an outer task that would wait on that mutex). Two graphs run from
// two threads stay correct; their convolutions take turns. A pass sizes the shared buffers before
// its tasks start (they only grow), and a per-thread Workspace is touched by its own thread only.
// Each instance keeps what is not per call: its plans, geometries and offset tables.
struct Extent {  // of an image plane
  int64_t h, w;
};

// The additions col2im does for one image: one per tap and output pixel whose input pixel is real
// (not padding), over every input channel.
int64_t col2im_additions(const Conv2dDesc& d);

class TbbConv2d : public Conv2dKernel {
 public:
  // fp32, and precision bf16 for descriptors with symmetric padding but large GEMMs (above);
  // every other bf16 descriptor is TbbBf16Conv2d's
  // (bf16_conv2d.hpp), registered after this one.
  bool supports(const Conv2dDesc& desc) const override;
  void forward(const Tensor& x, const Tensor& weight, const Tensor* bias, Tensor& y) override;
  void backward_data(const Tensor& dy, const Tensor& weight, Tensor& dx) override;
  void backward_params(const Tensor& x, const Tensor& dy, Tensor& dweight, Tensor* dbias) override;
  // "fwd=<name> bwd_data=<name> bwd_weights=<name>", once prepared.
  std::string implementation() const override;
  // Each pass's arithmetic per image, as its chosen implementation performs it (its
  // Implementation::arithmetic), once prepared.
  Conv2dArithmetic arithmetic() const override;

  struct Workspace {
    std::vector<float> col;       // col matrix, or the padded image (direct)
    std::vector<float> gathered;  // GEMM output or gathered dy, or the wide output (direct)
  };

 protected:
  void on_prepare() override;

 private:
  // How a blocked implementation walks the batch: blocks of `images` whole images, or bands of
  // `band_rows` output rows of one image (blas only, when one image's col matrix is too big).
  struct Plan {
    int64_t images = 1, band_rows = 0, bands = 1;
  };
  // One implementation of one pass: its name, whether it can run a descriptor, prepare (sets
  // the plan's images and band_rows, sizes the workspace, builds tables; called once, from
  // on_prepare()), the pass's entry point (null gradient pointers are skipped) and the arithmetic
  // it performs per image once prepared (Conv2dPassArithmetic).
  template <class Run>
  struct Implementation {
    std::string_view name;
    bool (*supports)(const Conv2dDesc&);
    void (TbbConv2d::*prepare)(Plan& plan);
    Run run;
    Conv2dPassArithmetic (TbbConv2d::*arithmetic)() const;
    // Precision bf16: the method rounds x and dy to bf16 itself, in the copies it makes anyway
    // (depthwise's and direct's padded planes); for the others the pass rounds them into copies
    // of their own (pass_input). The pass rounds the weights for every method (pass_weights).
    bool rounds_activations = false;
  };
  using ForwardImplementation = Implementation<void (TbbConv2d::*)(
      const float* x, const float* w, const float* bias, float* y, int64_t n_batch)>;
  using DataImplementation = Implementation<void (TbbConv2d::*)(const float* dy, const float* w,
                                                                float* dx, int64_t n_batch)>;
  using ParamsImplementation = Implementation<void (TbbConv2d::*)(
      const float* x, const float* dy, float* dweight, float* dbias, int64_t n_batch)>;
  // The ordered lists, tried first to last.
  static std::span<const ForwardImplementation> forward_implementations();
  static std::span<const DataImplementation> data_implementations();
  static std::span<const ParamsImplementation> params_implementations();
  // A pass's x or dy, and its weights: as given in fp32; in bf16 rounded into `buffer` (but for
  // methods that round their own activations) and into the scratch's rounded_weights.
  const float* pass_input(const auto& implementation, const Tensor& t, std::vector<float>& buffer);
  const float* pass_weights(const Tensor& w);
  // in[0, n) rounded to bf16 (round_floats_to_bf16) into `buffer`, grown to fit; in parallel.
  const float* rounded(const float* in, int64_t n, std::vector<float>& buffer);
  // Precision bf16: p[0, n) rounded to bf16 in place (a method's own copy of x or dy); fp32: none.
  void round_in_place(float* p, int64_t n) const;
  // db[k] = the sum of dy over the batch's images and filter k's plane, one task per few filters.
  void bias_gradient(const float* dy, float* db, int64_t n_batch) const;
  // The first of `list` whose supports() holds for desc_'s fp32 twin, prepared, with its plan.
  template <class I>
  const I* choose(std::span<const I> list, Plan& plan);

  // A unit of work: images [n0, n0 + images) x output rows [oh0, oh1).
  struct Block {
    int64_t n0, images, oh0, oh1;
    int64_t columns(int64_t out_w) const { return images * (oh1 - oh0) * out_w; }
  };
  int64_t block_count(const Plan& plan, int64_t n_batch) const;
  Block block(const Plan& plan, int64_t index, int64_t n_batch) const;
  template <class Body>
  void for_each_block(const Plan& plan, int64_t n_batch, const Body& body);
  template <class Body>
  void for_each_data_unit(float* dx, int64_t n_batch, bool zero, const Body& body);
  template <class WeightBlock>
  void params_by_slices(const float* dy, float* dweight, float* dbias, int64_t n_batch,
                        const WeightBlock& weight_block);
  Workspace& local_workspace();
  int64_t max_slices() const;  // of backward_params

  // prepare: per implementation (and pass, where they differ).
  void reserve_workspace(int64_t col, int64_t gathered);  // per thread, at least
  void prepare_pointwise(Plan& plan);
  void prepare_blas(Plan& plan);
  void prepare_small(Plan& plan);
  void prepare_small_forward(Plan& plan);
  void prepare_small_data(Plan& plan);
  void prepare_small_params(Plan& plan);
  void prepare_direct(const Plan& plan);
  void prepare_direct_forward(Plan& plan);
  void prepare_direct_data(Plan& plan);
  void prepare_direct_params(Plan& plan);
  void prepare_depthwise(Plan& plan);
  void prepare_lanes_forward(Plan& plan);
  void prepare_lanes_data(Plan& plan);
  void prepare_lanes_params(Plan& plan);
  void reserve_winograd(const winograd::Geometry& g);
  template <int Tile>
  void prepare_winograd_forward(Plan& plan);
  template <int Tile>
  void prepare_winograd_data(Plan& plan);
  template <int Tile>
  void prepare_winograd_params(Plan& plan);

  // The passes' entry points (Implementation::run).
  void forward_direct(const float* x, const float* w, const float* bias, float* y, int64_t n_batch);
  void forward_small(const float* x, const float* w, const float* bias, float* y, int64_t n_batch);
  void forward_pointwise(const float* x, const float* w, const float* bias, float* y,
                         int64_t n_batch);
  void forward_blas(const float* x, const float* w, const float* bias, float* y, int64_t n_batch);
  void forward_winograd(const float* x, const float* w, const float* bias, float* y,
                        int64_t n_batch);
  void depthwise_forward(const float* x, const float* w, const float* bias, float* y,
                         int64_t n_batch);
  void forward_lanes(const float* x, const float* w, const float* bias, float* y, int64_t n_batch);
  void data_direct(const float* dy, const float* w, float* dx, int64_t n_batch);
  void data_small(const float* dy, const float* w, float* dx, int64_t n_batch);
  void data_pointwise(const float* dy, const float* w, float* dx, int64_t n_batch);
  void data_blas(const float* dy, const float* w, float* dx, int64_t n_batch);
  void data_winograd(const float* dy, const float* w, float* dx, int64_t n_batch);
  void depthwise_backward_data(const float* dy, const float* w, float* dx, int64_t n_batch);
  void data_lanes(const float* dy, const float* w, float* dx, int64_t n_batch);
  void params_direct(const float* x, const float* dy, float* dweight, float* dbias,
                     int64_t n_batch);
  void params_small(const float* x, const float* dy, float* dweight, float* dbias, int64_t n_batch);
  void params_pointwise(const float* x, const float* dy, float* dweight, float* dbias,
                        int64_t n_batch);
  void params_blas(const float* x, const float* dy, float* dweight, float* dbias, int64_t n_batch);
  void params_winograd(const float* x, const float* dy, float* dweight, float* dbias,
                       int64_t n_batch);
  void depthwise_backward_params(const float* x, const float* dy, float* dw, float* db,
                                 int64_t n_batch);
  void params_lanes(const float* x, const float* dy, float* dweight, float* dbias, int64_t n_batch);

  // The implementations' arithmetic per image (Implementation::arithmetic). exact: direct
  // convolution's count (pointwise, blas and small multiply the im2col matrix, nothing more);
  // with_col2im: that plus col2im's additions (blas and small backward_data). The direct methods
  // multiply their wide outputs' padding columns (and backward_data dy's zero border) too;
  // depthwise and Winograd count their own (depthwise.hpp, winograd::pass_arithmetic).
  Conv2dPassArithmetic exact_arithmetic() const;
  Conv2dPassArithmetic with_col2im_arithmetic() const;
  Conv2dPassArithmetic direct_forward_arithmetic() const;
  Conv2dPassArithmetic direct_data_arithmetic() const;
  Conv2dPassArithmetic direct_params_arithmetic() const;
  Conv2dPassArithmetic depthwise_arithmetic() const;  // the same in the three passes
  Conv2dPassArithmetic winograd_forward_arithmetic() const;
  Conv2dPassArithmetic winograd_data_arithmetic() const;
  Conv2dPassArithmetic winograd_params_arithmetic() const;
  Conv2dPassArithmetic lanes_forward_arithmetic() const;
  Conv2dPassArithmetic lanes_data_arithmetic() const;
  Conv2dPassArithmetic lanes_params_arithmetic() const;

  // One block's work (pointwise: the image itself is the col matrix).
  void pack_forward_weights(const float* w);
  void blas_forward(const Block& b, const float* x, const float* w, const float* bias, float* y,
                    Workspace& ws, bool pointwise) const;
  void blas_backward_data(const Block& b, const float* dy, const float* w, float* dx, Workspace& ws,
                          bool pointwise) const;
  void blas_backward_params(const Block& b, const float* x, const float* dy, float* dw,
                            Workspace& ws, bool pointwise) const;
  void small_forward(const Block& b, const float* x, const float* bias, float* y,
                     Workspace& ws) const;
  void small_backward_data(const Block& b, const float* dy, float* dx, Workspace& ws) const;
  void small_backward_params(const Block& b, const float* x, const float* dy, float* dw,
                             Workspace& ws) const;
  void direct_forward(int64_t n, const float* x, const float* bias, float* y, Workspace& ws) const;
  void direct_backward_data(int64_t n, const float* dy, float* dx, Workspace& ws) const;
  void direct_backward_params(const Block& b, const float* x, const float* dy, float* dw,
                              Workspace& ws) const;
  void pad_input(const float* x, float* padded) const;  // one group of one image
  // bf16: `planes` planes of rows x width floats (`plane` apart) into pair planes
  // of size.h x size.w words (bf16_direct.hpp), `words` zeroed first (the slack included): source
  // row i lands at row top + i (rows outside the plane dropped), and destination columns [lo, hi)
  // hold source columns [lo - left, hi - left). pad_input's and pad_dy's layouts, in pairs.
  void pad_pairs(const float* src, int64_t planes, int64_t plane, int64_t rows, int64_t width,
                 Extent size, int64_t top, int64_t left, int64_t lo, int64_t hi, int64_t words,
                 float* out) const;
  // direct_forward's and direct_backward_data's product: direct::shifted_gemm, or in bf16
  // bf16::shifted_gemm_pairs on pair planes (a reinterpreted as packed words, b as words); whole,
  // or a row of `width` columns at a time (by_rows, rows `b_stride` apart in b, compact in c).
  void direct_product(bool forward, const float* a, int64_t rows, const float* b, int64_t columns,
                      float* c, int64_t ldc) const;
  // bf16 pointwise: C (rows x columns, ldc) = (or with accumulate +=) the packed pair rows times
  // `planes` planes of src (`plane` apart) from element `first`, those made pair planes first.
  void pointwise_pairs(const float* packed_pairs, int64_t rows, const float* src, int64_t planes,
                       int64_t plane, int64_t first, int64_t columns, float* c, int64_t ldc,
                       Workspace& ws, bool accumulate) const;
  // bf16 pointwise multiplies pairs (kPointwisePairsMin*); the words between its pair planes,
  // and the bf16 values between its weight gradient's rows.
  bool pointwise_pairs() const;
  int64_t pointwise_stride() const;
  bool bf16() const { return desc_.precision == Precision::kBf16; }
  // bf16 pointwise below kPointwisePairsMinChannels: src[0, n) rounded into `buffer` (a
  // workspace buffer prepare_pointwise sized).
  const float* rounded_image(const float* src, int64_t n, std::vector<float>& buffer) const;
  void direct_product_rows(bool forward, const float* a, int64_t rows, const float* b,
                           int64_t b_stride, int64_t out_rows, int64_t width, float* c,
                           int64_t ldc) const;
  // Group g's dy of image n into `padded` (size.h x size.w per filter, zero elsewhere; `floats`
  // zeroed first), its rows at `top`, its columns at `left` (negative: cropped). backward_data's
  // full correlation reads it (direct, polyphase).
  void pad_dy(int64_t n, int64_t g, const float* dy, Extent size, int64_t top, int64_t left,
              int64_t floats, float* padded) const;
  // The direct and polyphase methods' wide rows (`row` floats apart, k's rows `wide_stride` apart)
  // of image n's group g: cropped to out_w into y, plus the bias (null: none); and dy laid out
  // like them into `wide` (k's rows `row_stride` apart), zero in the discarded columns, so the
  // weight gradient's dot products over every wide column equal the sums over real pixels.
  void crop_wide(int64_t n, int64_t g, const float* wide, int64_t wide_stride, int64_t row,
                 const float* bias, float* y) const;
  void widen_dy(int64_t n, int64_t g, const float* dy, int64_t row, int64_t row_stride,
                float* wide) const;
  // The lanes method's work on one block of at most lanes::kLanes images, every group: the groups
  // in parallel chunks (for_lanes_groups), each chunk in its thread's workspace. The groups are
  // independent and each writes its own outputs (or its own rows of dw), so the result does not
  // depend on the chunks.
  void lanes_forward_block(const Block& b, const float* x, const float* bias, float* y);
  void lanes_data_block(const Block& b, const float* dy, float* dx);
  // A tensor's planes as the lanes passes read or write them: `channels` per image, `per_group`
  // of them per group.
  template <class T>
  struct LanesPlanes {
    T* data;
    int64_t channels, per_group;
  };
  // Forward or backward_data of one block: per group, in's planes (in_extent each) interleaved
  // into p.in, multiplied by the packed weights (packed_stride floats per group) and deinterleaved
  // into out's planes (p.out's extent), plus bias per output plane when bias is not null.
  void lanes_product_block(const lanes::ProductPass& p, int64_t packed_stride, const Block& b,
                           LanesPlanes<const float> in, Extent in_extent, const float* bias,
                           LanesPlanes<float> out);
  void lanes_params_block(const Block& b, const float* x, const float* dy, float* dw);
  // body(first group, end group, ws) over chunks of groups of about kLanesTaskMacs multiply-adds,
  // given one group's multiply-adds per image (group_macs).
  template <class Body>
  void for_lanes_groups(int64_t group_macs, const Body& body);
  // The per-call scratch of every TbbConv2d of the process (the SHARED SCRATCH contract above).
  // One pool reached through shared_scratch(): every instance holds a reference, so the pool lives
  // while any TbbConv2d does and is freed with the last one (a function-local static object would
  // keep the largest layer's scratch until exit, and be destroyed in static-destruction order,
  // after TBB's runtime may be gone; the backend object is not reachable from a kernel).
  struct Scratch {
    std::mutex mutex;  // held for the whole of each pass (run_pass)
    tbb::enumerable_thread_specific<Workspace> workspace;  // grown by local_workspace()
    // Weights in a pass's layout (direct::pack_rows, lanes or polyphase; forward and
    // backward_data never run at once), and Winograd's transformed weights U (in
    // backward_params, F(4x4)'s summed dU transposed back to filters x channels).
    std::vector<float> packed, winograd_u;
    std::vector<std::vector<float>> winograd_du;     // per slice of backward_params
    std::vector<std::vector<float>> partial_weight;  // slices 1.. of params_by_slices
    std::vector<std::vector<float>> partial_bias;    // every slice of params_by_slices
    std::vector<float> phase_a, phase_b;             // dilated Winograd's split input and output
    // Precision bf16: the weights rounded (every method), and x and dy (pass_input).
    std::vector<float> rounded_weights, rounded_a, rounded_b;
  };
  static std::shared_ptr<Scratch> shared_scratch();
  // Holds the scratch's mutex, grows its packed weights and Winograd U to this pass's floats
  // (packed, u), then runs pass() in an isolated TBB region.
  template <class Pass>
  void run_pass(int64_t packed, int64_t u, const Pass& pass);
  float* packed() const { return scratch_->packed.data(); }
  // Runs the Winograd convolution described by `g` with transformed weights `u` over the batch.
  void winograd_run(const winograd::Geometry& g, const float* u, const float* x, const float* bias,
                    float* y, int64_t n_batch);
  void winograd_backward_weight(const winograd::Geometry& g, const float* x, const float* dy,
                                float* dweight, int64_t n_batch);
  // run(range) over blocks of the filters, in parallel (the weight transforms).
  template <class Run>
  static void for_each_filter_block(int64_t filters, int64_t channels, const Run& run);
  // The Winograd convolution of geometry g over the batch: transforms the weights into the
  // scratch's U (flipped, for backward_data), then runs the tiles, on the polyphase components
  // when dilated.
  void winograd_convolve(const winograd::Geometry& g, bool flip, const float* weight,
                         const float* in, Extent in_size, const float* bias, float* out,
                         Extent out_size, int64_t n_batch);
  // Whether the Winograd passes of geometry g run on a staged copy of their input: split into
  // its polyphase components when dilated, and zero-padded, so that every tile reads inside its
  // plane (the transforms' border paths copy element by element; docs/performance.md).
  bool winograd_staged(const winograd::Geometry& g) const;
  // The batch's input `in` (extent in_size) staged for geometry g into the scratch's phase_a:
  // split_phases with g's padding as the border; g.padded() runs on it.
  const float* stage_input(const winograd::Geometry& g, const float* in, Extent in_size,
                           int64_t n_batch);
  // The batch's P*P polyphase components (P = phases_, 1 when not dilated) as a batch of
  // n_batch * P * P images, each plane with a border of `pad` zeros (split), and back without a
  // border (merge).
  void split_phases(const float* src, int64_t n_batch, int64_t channels, Extent size, Extent pad,
                    float* dst) const;
  void merge_phases(const float* src, int64_t n_batch, int64_t channels, Extent size,
                    float* dst) const;
  static float* grow(std::vector<float>& buffer, int64_t floats);
  // At least `count` buffers of at least `floats` floats each.
  static void grow_each(std::vector<std::vector<float>>& buffers, int64_t count, int64_t floats);
  // Tiles per task for geometry g: its V and M within kWinogradBudgetFloats.
  int64_t winograd_block(const winograd::Geometry& g) const;  // to at least `floats`
  // ... and of those sizes (multiples of the same rounding) the largest that spreads `total`
  // tiles over the threads evenly: ResNet-20's 1,024 tiles of a 16x16 layer in blocks of 192
  // left one of two threads idle a sixth of the pass.
  int64_t winograd_block(const winograd::Geometry& g, int64_t total) const;
  void gather_dy(const Block& b, int64_t g, const float* dy, float* gathered) const;
  int64_t depthwise_grain() const;        // (channel, block of images) tasks per chunk
  int64_t depthwise_wide_offset() const;  // of the wide scratch in Workspace::gathered
  int64_t depthwise_dy_offset() const;    // of bf16's rounded dy planes in Workspace::gathered
  // body(ws, first image, images, group) for every block of the depthwise plan's stack of images
  // and every group, in parallel.
  template <class Body>
  void for_depthwise_blocks(int64_t n_batch, const Body& body);
  // Planes `stride` floats apart.
  struct Planes {
    const float* data;
    int64_t stride;
  };
  // The depthwise methods' activations: as given in fp32; in bf16 rounded (round_floats_to_bf16)
  // into ws's dy planes (depthwise_dy_offset()), and in place in the padded planes (the pass
  // rounds the weights). dy and x: `count` images of one channel.
  Planes depthwise_dy(const float* dy, int64_t count, Workspace& ws) const;
  void depthwise_pad(const float* x, int64_t count, float* padded) const;

  int64_t cg_ = 0, kg_ = 0;  // channels and filters per group
  int64_t rows_ = 0;         // cg * R * S: taps of one group
  int64_t in_plane_ = 0, out_plane_ = 0;
  // The implementation each pass runs, and how it walks the batch.
  const ForwardImplementation* forward_ = nullptr;
  const DataImplementation* data_ = nullptr;
  const ParamsImplementation* params_ = nullptr;
  Plan forward_plan_, data_plan_, params_plan_;
  std::size_t col_floats_ = 0, gathered_floats_ = 0;  // of each thread's Workspace
  // Floats of the weights repacked on every call (they change every step) into the scratch's
  // `packed`, per group, in the layout of the method that runs the pass (direct::pack_rows; lanes:
  // ProductPass::lda floats per tap); and of the Winograd U of forward and backward_data.
  int64_t packed_forward_floats_ = 0, packed_backward_floats_ = 0;
  int64_t winograd_u_forward_floats_ = 0, winograd_u_data_floats_ = 0;
  std::shared_ptr<Scratch> scratch_ = shared_scratch();

  // small: images side by side in the col matrix, whose rows are small_stride_ apart.
  int64_t small_images_ = 1, small_stride_ = 0;
  std::vector<int32_t> small_offsets_;  // p * small_stride_
  // direct: forward and backward_params read the input padded to padded_h_ x padded_w_;
  // backward_data reads dy padded to dy_h_ x dy_w_ (a "full" correlation). Offsets are the taps'
  // positions in those padded images.
  int64_t padded_h_ = 0, padded_w_ = 0, dy_h_ = 0, dy_w_ = 0, dy_top_ = 0, dy_left_ = 0;
  int64_t padded_stride_ = 0;   // floats between padded images in the workspace
  int64_t dy_wide_stride_ = 0;  // row stride of the zero-filled wide dy in backward_params
  std::vector<int32_t> forward_offsets_, backward_offsets_;
  // Precision bf16: the direct and pointwise methods multiply pairs of channels, filters or
  // positions with vdpbf16ps (bf16_direct.hpp); direct's pair taps' offsets in its pair images.
  std::vector<int32_t> pointwise_offsets_;  // bf16 pointwise: i * pointwise_stride()
  // depthwise: its geometry and taps (depthwise.hpp).
  depthwise::Plan depthwise_plan_;
  // winograd: the geometries of forward, backward_data and backward_params.
  winograd::Geometry winograd_forward_, winograd_data_, winograd_params_;
  int64_t phases_ = 1;  // dilation run as phases_ x phases_ dilation-1 convolutions
  // lanes: each pass's geometry over interleaved frames of lanes::kLanes images (lanes.hpp).
  lanes::ProductPass lanes_forward_, lanes_data_;
  lanes::WeightPass lanes_params_;

  // ---- polyphase (polyphase.hpp): stride > 1 as one stride-1 direct convolution over the
  // input's phase planes. Its members are defined in polyphase.cpp, besides the passes' entry
  // points (in tbb_conv2d.cpp, which owns the block loops).
  void prepare_polyphase(const Plan& plan);
  void prepare_polyphase_forward(Plan& plan);
  void prepare_polyphase_params(Plan& plan);
  void prepare_polyphase_data(Plan& plan);
  void forward_polyphase(const float* x, const float* w, const float* bias, float* y,
                         int64_t n_batch);
  void params_polyphase(const float* x, const float* dy, float* dweight, float* dbias,
                        int64_t n_batch);
  void data_polyphase(const float* dy, const float* w, float* dx, int64_t n_batch);
  void pack_polyphase_data_weights(const float* w);  // per group and phase, into packed()
  void polyphase_backward_data(int64_t n, const float* dy, float* dx, Workspace& ws) const;
  void polyphase_forward(int64_t n, const float* x, const float* bias, float* y,
                         Workspace& ws) const;
  void polyphase_backward_params(const Block& b, const float* x, const float* dy, float* dw,
                                 Workspace& ws) const;
  Conv2dPassArithmetic polyphase_forward_arithmetic() const;
  Conv2dPassArithmetic polyphase_params_arithmetic() const;
  Conv2dPassArithmetic polyphase_data_arithmetic() const;
  polyphase::Geometry polyphase_;
  polyphase::DataGeometry polyphase_data_;
  std::vector<int32_t> polyphase_offsets_;  // tap p's offset in one image group's phase planes
  // Floats between images' phase planes, and the row stride of backward_params' wide dy (out_h
  // plane rows, rounded up to direct::kVector).
  int64_t polyphase_stride_ = 0, polyphase_dy_stride_ = 0;
};

// Pooling, parallel over the N*C planes with a grain of about kPoolWorkPerTask window reads.
// Window bounds are tabulated in on_prepare(); the window rules are exactly the reference's
// (first maximum in row-major order, NaN wins; PyTorch's divisors, with the end padding and the
// windows of ceil rounding clipped as PyTorch clips them). Dilated max pooling takes a plain
// scalar loop over the taps (dilated_forward_plane); undilated pooling keeps its fast paths.
// implementation(), once prepared, names the path: "dilated"; "pairs2x2" (2x2 windows, stride 2:
// a vectorized loop over the windows that lie fully inside the input, the tabulated loop at the
// edges); or "windows" (the tabulated window loop, every other undilated window).
class TbbPool2d : public Pool2dKernel {
 public:
  void forward(const Tensor& x, Tensor& y) override;
  void backward(const Tensor& x, const Tensor& y, const Tensor& dy, Tensor& dx) override;
  std::string implementation() const override;

 protected:
  void on_prepare() override;

 private:
  int64_t planes_per_task() const;
  int64_t divisor(int64_t oh, int64_t ow) const;  // of an average window with real elements
  void forward_plane(const float* in, float* out) const;
  void backward_plane(const float* in, const float* grad_out, float* grad_in) const;
  void dilated_forward_plane(const float* in, float* out) const;
  void dilated_backward_plane(const float* in, const float* grad_out, float* grad_in) const;
  // Index (in the plane) of the first maximum of dilated window (oh, ow), or -1 if it is empty.
  int64_t dilated_argmax(const float* in, int64_t oh, int64_t ow) const;
  // Per output row / column (pool_taps): the window reads the input rows [h_lo_[oh], h_hi_[oh])
  // dilation_h apart from the first (undilated: every row), and h_span_[oh] is the extent the
  // count_include_pad divisor uses (columns likewise). A window with no row inside the input has
  // h_lo_ == h_hi_, not necessarily in [0, in_h): test for that before indexing with them.
  std::vector<int64_t> h_lo_, h_hi_, h_span_, w_lo_, w_hi_, w_span_;
  bool dilated_ = false;
  // 2x2 stride-2 pooling (the common case) has a vectorizable loop over output columns
  // [pair_lo_, pair_hi_), whose windows lie fully inside the input.
  bool pairs_ = false;
  int64_t pair_lo_ = 0, pair_hi_ = 0;
};

// Batch normalization's passes. The sums run parallel over blocks of whole images (about
// kBlockValues values each, all channels; with fewer images than that makes blocks, also over
// groups of channels; the counts depend on the shape only): a task reads its images in memory
// order, one run of planes per image, summing each channel's values into 16 double lanes, and
// the blocks' sums are added per channel in block order afterwards. So the bits depend on the
// shape alone, never on the thread count or on which thread ran what (a synchronized batch norm
// with one rank equals the unsynchronized one, bit for bit). (Tasks of one channel each, reading
// planes a whole image apart, made cifar_resnet20's batch norms 1.6x as slow: docs/performance.md,
// section 28.)
// The element-wise passes run parallel over planes: normalize computes the reference's
// per-element arithmetic; input_gradient the same formula in float with double coefficients
// (within kernel tolerance of the reference, not bit for bit).
class TbbBatchNorm : public BatchNormKernel {
 public:
  // Values per block: 64 KiB of floats, a task that costs far more than scheduling it.
  static constexpr int64_t kBlockValues = 16384;

  void channel_sums(const Tensor& x, double* sum) override;
  void channel_squares(const Tensor& x, const double* mean, double* squares) override;
  void normalize(const Tensor& x, const float* center, const float* scale, const float* shift,
                 Tensor& y, const ActivationDesc* fused) override;
  void gradient_sums(const Tensor& x, const Tensor& dy, const double* mean, const double* inv_std,
                     double* sum_dy, double* sum_dy_xhat) override;
  void input_gradient(const Tensor& x, const Tensor& dy, const double* mean, const double* inv_std,
                      const double* scale, const double* mean_dy, const double* mean_dy_xhat,
                      Tensor& dx) override;

 protected:
  void on_prepare() override;

 private:
  // The sums' tasks: the images of a batch cut into `image_blocks` blocks (block b holds images
  // [first_image(b), first_image(b + 1))), and the channels into `channel_groups` groups where
  // there are fewer image blocks than tasks of kBlockValues values (small batches). Both counts
  // depend on the shape only.
  struct Blocks {
    int64_t batch = 0, channels = 0, image_blocks = 1, channel_groups = 1;
    int64_t first_image(int64_t block) const { return block * batch / image_blocks; }
    int64_t first_channel(int64_t group) const { return group * channels / channel_groups; }
  };
  Blocks blocks(int64_t batch) const;
  // out[k][c] = the sum over channel c's image blocks, in block order, of the kLanes-lane sums
  // plane_sums(c, offset of a plane, double lanes[kSums][kLanes]) accumulated over the block's
  // planes of channel c, each block's lanes added pairwise (lane_total).
  template <int kSums, class PlaneSums>
  void reduce(int64_t batch, const PlaneSums& plane_sums, const std::array<double*, kSums>& out);
  // out[c] = the sum over channel c's values v of term(c)(v), a double.
  template <class Term>
  void sum_channels(const Tensor& x, double* out, const Term& term);
  // body(channel, offset of the plane's first value) for every plane (image, channel).
  template <class PlaneBody>
  void for_planes(int64_t batch, const PlaneBody& body) const;

  // Per (image block, channel): grows to the largest batch, then stays.
  std::vector<double> partials_;
};

// Element-wise activations (strata::activation's functions), in TBB tasks of kElementwiseGrain
// elements; each task's loop is compiled per kind, so the piecewise-linear ones vectorize.
// Results equal the reference's bit for bit (the same per-element functions).
class TbbActivation : public ActivationKernel {
 public:
  void forward(const Tensor& x, Tensor& y) override;
  void backward(const Tensor& x, const Tensor& y, const Tensor& dy, Tensor& dx) override;
};

// Softmax ("vector_exp"), parallel over groups, each group's arithmetic fixed by the shape alone
// (so the bits do not depend on the thread count), exp from vector_math.hpp so that the loops
// vectorize. inner == 1 (a classifier's features): a group is one contiguous row, its maximum and
// sums taken in kLanes lanes (the sums in double) combined in a fixed order. inner > 1: the
// groups of kTile neighbouring positions run together, every pass a vector loop along the
// positions (contiguous) with one running maximum and one double sum per position.
class TbbSoftmax : public SoftmaxKernel {
 public:
  static constexpr int kLanes = 16;
  static constexpr int64_t kTile = 256;

  void forward(const Tensor& x, Tensor& y) override;
  void backward(const Tensor& y, const Tensor& dy, Tensor& dx) override;

 protected:
  void on_prepare() override;

 private:
  // body(block, first position, end position) over every (block of one sample's outer index) x
  // (tile of inner positions), in TBB tasks of about kElementwiseGrain values; N from `t`.
  template <class Body>
  void for_tiles(const Tensor& t, std::string_view what, const Body& body) const;
};

// Local response normalization ("channel_window"), parallel over (image x tile of positions):
// a task runs the channel windows of its tile, each pass a vector loop along the tile's positions
// (the powers from vector_math.hpp's exp and log). The window sums run in channel order as in the
// reference; backward keeps t = dy x s^(-beta-1) of its tile only, in a buffer per thread of
// channels x tile floats (the tile is chosen in on_prepare() so that this stays near
// kTileValues), never one the size of the input. The bits depend on the shape only.
class TbbLrn : public LrnKernel {
 public:
  // 256 KiB of floats: tiles of whole planes up to 256 channels at 13x13 (AlexNet's norm2; 16384
  // values, 64 positions there, ran its forward 1.6x slower on one thread: short loops).
  static constexpr int64_t kTileValues = 65536;

  void forward(const Tensor& x, Tensor& y) override;
  void backward(const Tensor& x, const Tensor& dy, Tensor& dx) override;

 protected:
  void on_prepare() override;

 private:
  // body(image, first position, end position, scratch) over every (image, tile); scratch holds
  // (channels + 1) * tile_ floats private to the running thread.
  template <class Body>
  void for_tiles(int64_t batch, const Body& body);

  int64_t tile_ = 1;  // positions per task
  tbb::enumerable_thread_specific<std::vector<float>> scratch_;
};

// Global average pooling ("planes"), parallel over (image, channel) planes in TBB tasks of about
// kElementwiseGrain values; a plane's sum runs in kLanes double lanes (element i in lane i mod
// kLanes) added in a fixed order, so the loop vectorizes and the bits depend on the shape only.
class TbbGlobalAvgPool : public GlobalAvgPoolKernel {
 public:
  static constexpr int kLanes = 8;

  void forward(const Tensor& x, Tensor& y) override;
  void backward(const Tensor& dy, Tensor& dx) override;

 protected:
  void on_prepare() override;
};

// cblas_sgemm, split over rows of C (or columns, when C is short and wide) across TBB tasks when
// the product has at least kParallelGemmMacs multiply-adds. Registered as the implementation
// "openblas" (the split is chosen per call, not per descriptor).
class TbbGemm : public GemmKernel {
 public:
  bool supports(const GemmDesc& desc) const override { return desc.precision == Precision::kFp32; }
  void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
            const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
            int64_t ldc) override;
};

// The bf16 product (bf16_gemm.hpp: AVX512-BF16 vdpbf16ps, float sums), packing and multiplying in
// TBB tasks; registered as "bf16" before "openblas", and only for GemmDesc precision kBf16. On a
// CPU without AVX512-BF16, on_prepare() is an Error naming the missing feature (never an fp32 run).
// The packed operands live in the kernel and grow to the largest product it has run.
class TbbBf16Gemm : public GemmKernel {
 public:
  bool supports(const GemmDesc& desc) const override { return desc.precision == Precision::kBf16; }
  void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
            const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
            int64_t ldc) override;

 protected:
  void on_prepare() override;

 private:
  std::vector<uint16_t> packed_a_, packed_b_;
};

// Throws an Error naming `kernel` unless sizes are non-negative and the leading dimensions fit.
void check_gemm_sizes(std::string_view kernel, bool trans_a, bool trans_b, int64_t m, int64_t n,
                      int64_t k, int64_t lda, int64_t ldb, int64_t ldc);

// A conv's product back into NCHW: row k of `product` (row stride `stride`) holds filter
// first + k's output planes of `images` images side by side; y[i, first + k] = that plane +
// bias[first + k] (0 without a bias), for k < count, where y is image 0 of `filters` planes each.
void scatter_planes(const float* product, int64_t stride, int64_t images, int64_t plane,
                    int64_t first, int64_t count, int64_t filters, const float* bias, float* y);

// Single-threaded row-major sgemm with size checks (cblas takes 32-bit ints).
void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
           int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc);

}  // namespace strata::tbb_backend
