#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>

#include <algorithm>
#include <cstring>
#include <initializer_list>
#include <type_traits>
#include <utility>

#include "bf16_direct.hpp"
#include "bf16_gemm.hpp"
#include "depthwise.hpp"
#include "direct_conv.hpp"
#include "floats.hpp"
#include "panel_gemm.hpp"
#include "strata/error.hpp"
#include "tbb_kernels.hpp"

namespace strata::tbb_backend {

namespace {

// One thread's col buffer: 256 KiB, half of a core's L2, so im2col output is still cached when
// the kernels read it (small; the direct and polyphase weight gradients' blocks of images too) ...
constexpr int64_t kColumnBudgetFloats = int64_t{1} << 16;
// ... except for blas: 2 MiB. OpenBLAS packs the weights on every call, so a product over few
// columns spends its time copying them (256 -> 512 at 14x14, stride 2: bands of 28 columns, 15 % of
// the time in the copies); the larger budget runs a few hundred columns per call instead (that
// layer 51.2 -> 34.7 ms a training pass; docs/performance.md, section 25).
constexpr int64_t kBlasColumnBudgetFloats = int64_t{1} << 19;
// The direct method keeps one padded image group (and its wide output) in L2 ...
constexpr int64_t kDirectBudgetFloats = int64_t{1} << 15;
// ... unless Winograd cannot run the shape (fewer than kWinogradMinChannels, a kernel other than
// 3x3, a padding the dilation does not divide) or runs it slower (winograd_beats_direct), and it
// is not 1x1 (pointwise runs those): there the alternative is im2col + GEMM or a slow Winograd,
// and the direct kernels run images up to this many floats per buffer, from L3 past L2, still
// 1.5-2.5x faster (16 channels at 64x64: 17.0 -> 7.0 ms a training pass; at 224x224, batch 8:
// 48.8 -> 24.2; docs/performance.md, sections 22 and 23).
constexpr int64_t kDirectLargeBudgetFloats = int64_t{1} << 20;
// Above this many filters or channels per group, OpenBLAS's cache blocking beats re-reading the
// padded image once per 6 filters ...
constexpr int64_t kDirectMaxChannels = 64;
// ... or this many where Winograd cannot run the shape (and for polyphase: Winograd never runs a
// strided one): there the alternative is blas, and up to 128 the direct kernels beat it (a pass of
// 96 -> 32 5x5 at 28x28: 79.6 -> 40.0 ms; 16 -> 128 3x3 at 32x32: 15.2 -> 11.9; 64 -> 128 at 56x56,
// stride 2: 39.8 -> 35.4). At 256 the weight gradient lost (128 -> 256 at 28x28, stride 2: 11.2
// -> 18.1 ms). docs/performance.md, section 26.
constexpr int64_t kDirectLargeMaxChannels = 128;
// ... except for the weight gradient on outputs less than this wide and high: there its dot
// products with more than 64 filters or channels lost to blas (32 -> 128 5x5 at 14x14: 4.9 ->
// 8.4 ms; 16 -> 128 3x3 at 14x14: 1.7 -> 2.2), where from AlexNet's 27x27 up they win or tie.
constexpr int64_t kDirectLargeParamsMinOutput = 27;
// Floats readable past the end of a padded image: the kernels' last column block may overrun.
constexpr int64_t kSlackFloats = 64;
// GEMM width (output pixels) worth batching small images for: below it OpenBLAS spends more time
// packing the weights and in call overhead than multiplying.
constexpr int64_t kTargetColumns = 512;
// The small method's width: enough 16-column register blocks that the last, partial one wastes
// little.
constexpr int64_t kSmallTargetColumns = 256;
// Filters per group up to which the register-blocked kernels beat OpenBLAS on im2col output.
constexpr int64_t kSmallMaxFilters = 64;
// The direct method must do at least this fraction of useful work: the rest is the wide output's
// padding columns (and, for backward_data, dy's zero border).
constexpr double kDirectMinEfficiency = 0.65;
// ... or this fraction for backward_data where only im2col + GEMM (and col2im) would run it
// instead (direct_data_floor): those ran 2x slower than the direct kernels even with 62 % of
// their multiply-adds wasted (a 7x7 kernel, dilation 2, on 32x32: 22.8 -> 11.4 ms;
// docs/performance.md, section 22).
constexpr double kDirectMinEfficiencyOverBlas = 0.3;
// backward_params slices per thread when the weights have at most kSmallWeightFloats elements.
constexpr int64_t kSlicesPerThread = 4;
constexpr int64_t kSmallWeightFloats = int64_t{1} << 16;
// The polyphase backward_data's least wide columns per phase of dx: below, four short products
// and the merge lose to "small" (ResNet-20's 8x8 output, 79 columns a phase, ran 4 % slower;
// its 16x16 one, 287, 1.5x faster: docs/performance.md).
constexpr int64_t kPolyphaseDataMinColumns = 128;
// Images per backward_params block of the direct method.
constexpr int64_t kDirectParamsImages = 8;
// Winograd pays off once the 16 products per tile block are real matrix products: below this
// many channels or filters the direct and small kernels win (measured: docs/performance.md).
constexpr int64_t kWinogradMinChannels = 32;
// ... except for the weight gradient, which wins from 16 (ResNet-20's 16 -> 16 at 32x32, batch 64:
// 1.73-1.78 -> 1.53-1.57 ms; 24 -> 24 at 28x28 3.06 -> 2.15; 32 -> 16 at 32x32 3.35-3.56 ->
// 2.21-2.36) and loses below (12 -> 12 at 32x32: 0.90-0.98 -> 1.47-1.58 ms; docs/performance.md,
// section 31).
constexpr int64_t kWinogradParamsMinChannels = 16;
// Multiply-adds per task of the depthwise method, about 20 us on one core.
constexpr int64_t kDepthwiseTaskMacs = int64_t{1} << 16;
// Multiply-adds per task of the lanes method's groups (for_lanes_groups): a block of 16 images has
// one task per group chunk of about this much work, so that one block of a depthwise layer (512
// groups of 4x4 planes) still spreads over the threads.
constexpr int64_t kLanesTaskMacs = int64_t{1} << 17;
// F(4x4, 3x3) needs blocks of at least ~32 tiles (at most this many channels plus filters, within
// kWinogradBudgetFloats: 128 -> 256 at 32x32, forward 26.1 -> 19.4 ms; 224 -> 224 at 16x16 10.5 ->
// 8.6; 240 -> 240 even; 256 -> 256 at 8x8 and 16x16 5 % slower; docs/performance.md, section 29).
// From outputs of this size it runs whatever its tiles cover; below, only outputs its 4x4 tiles
// cover as closely as F(2x2)'s 2x2 ones (winograd43_output_fits).
constexpr int64_t kWinograd43MaxChannels = 448;
constexpr int64_t kWinograd43MinOutput = 16;
// The fewest channels and filters at which F(2x2, 3x3) beats the direct kernels (both fit).
constexpr int64_t kWinograd23OverDirect = 48;
// The most channels plus filters of the weight gradient's F(4x4) (docs/performance.md, section 19:
// 256 -> 256 at 28x28: 53 -> 45 ms; 512 -> 512 at 16x16 twice as slow as F(2x2)), and on outputs
// under kWinograd43MinOutput (section 27: 128 -> 128 at 8x8 30 % faster, 256 -> 256 6 % slower).
constexpr int64_t kWinograd43MaxParamsChannels = 512;
constexpr int64_t kWinograd43MaxSmallParamsChannels = 256;
// Filter-channel pairs per task of Winograd's weight transforms (about 50 us of F(4x4)'s, in
// double), and floats per task of the weight gradient's reduction over slices.
constexpr int64_t kFilterTaskPairs = 1024;
constexpr int64_t kReduceGrainFloats = int64_t{1} << 14;
// Precision bf16's pointwise layers multiply pairs with vdpbf16ps (bf16_direct.hpp) from this
// many channels and filters, and pixels a plane: 256 -> 64 at 28x28, three passes, 1.48x faster
// than fp32; 32 -> 64 at 32x32 1.4x slower, the conversions costing more than the products save;
// 128 -> 256 at 8x8 2.4x slower in backward (per image, a 64-pixel plane is too short a dot
// product for the sums at its end).
constexpr int64_t kPointwisePairsMinChannels = 64;
constexpr int64_t kPointwisePairsMinPixels = 256;
// Floats per task of precision bf16's rounded copies (64 KiB read, 64 written).
constexpr int64_t kRoundGrainFloats = int64_t{1} << 14;
// The largest dilation Winograd runs as that many squared undilated convolutions
// (polyphase_factor).
constexpr int64_t kMaxPhases = 8;
// Floats of one task's transformed input plus transformed output (its tiles' V and M).
constexpr int64_t kWinogradBudgetFloats = int64_t{1} << 19;
// Tiles per block are rounded down to a multiple of this (or of 8, below it), so that neither the
// products' column panels (panel::multiply: 48 tiles with AVX-512, 24 with AVX2) nor the input
// transforms' groups of 8 and 16 tiles leave a remainder (ResNet-like forward 11.1 -> 8.9 ms,
// docs/performance.md section 19).
constexpr int64_t kWinogradTileRound = 48;
// Forward and backward_data take the largest such block whose tasks leave no thread more than
// this much above an even share (winograd_block(g, total)).
constexpr double kWinogradMaxImbalance = 1.05;

// The lanes method's frames (one group) hold at most this many pixels per image: 512 KiB each for a
// block of 16 images (AVX-512), so a block's input and output frames fit a core's L2 together.
// Counted per image, so every vector width takes the same descriptors.
constexpr int64_t kLanesBudgetPixels = int64_t{1} << 13;
// ... or, strided with at most kLanesStridedMaxOutput output pixels per plane, this many: there
// the polyphase products are a few short rows per image (8x8: 72 wide columns, run as 96) and
// blas packs its weights for a few hundred columns, so lanes, with no column wasted, wins even
// from past L2: 32 -> 64 at 16x16, stride 2, forward 0.67 -> 0.54 ms and the weight gradient
// 1.26 -> 0.69; 64 -> 128 forward 2.67 -> 1.78 (docs/performance.md, section 25). From 14x14
// outputs polyphase is as fast again.
constexpr int64_t kLanesStridedBudgetPixels = int64_t{1} << 15;
constexpr int64_t kLanesStridedMaxOutput = 144;

constexpr std::string_view kName = "tbb conv2d";

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Output columns [lo, hi) whose input column ow * stride + offset lies inside [0, width).
void valid_columns(int64_t offset, int64_t stride, int64_t width, int64_t out_w, int64_t& lo,
                   int64_t& hi) {
  lo = offset >= 0 ? 0 : ceil_div(-offset, stride);
  hi = width - offset <= 0 ? 0 : ceil_div(width - offset, stride);
  lo = std::min(lo, out_w);
  hi = std::clamp(hi, lo, out_w);
}

// One group's col matrix for output rows [oh0, oh1) of one image: row (c * R + r) * S + s,
// column (oh - oh0) * out_w + ow holds xpad[c, oh * sh + r * dh, ow * sw + s * dw] (0 in the
// padding). `x` points at the group's first channel, `ld` is the row stride of `col`.
void im2col(const Conv2dDesc& d, int64_t channels, const float* x, int64_t oh0, int64_t oh1,
            float* col, int64_t ld) {
  const int64_t out_w = d.out_w;
  for (int64_t c = 0; c < channels; ++c) {
    const float* plane = x + c * d.in_h * d.in_w;
    for (int64_t r = 0; r < d.kernel_h; ++r) {
      for (int64_t s = 0; s < d.kernel_w; ++s) {
        float* dst = col + ((c * d.kernel_h + r) * d.kernel_w + s) * ld;
        const int64_t w_offset = s * d.dilation_w - d.pad_w;
        int64_t lo, hi;
        valid_columns(w_offset, d.stride_w, d.in_w, out_w, lo, hi);
        for (int64_t oh = oh0; oh < oh1; ++oh, dst += out_w) {
          const int64_t ih = oh * d.stride_h - d.pad_h + r * d.dilation_h;
          if (ih < 0 || ih >= d.in_h) {
            zero_floats(dst, out_w);
            continue;
          }
          zero_floats(dst, lo);
          const float* src = plane + ih * d.in_w + (lo * d.stride_w + w_offset);
          if (d.stride_w == 1) {
            copy_floats(dst + lo, src, hi - lo);
          } else {
            for (int64_t ow = lo; ow < hi; ++ow) dst[ow] = src[(ow - lo) * d.stride_w];
          }
          zero_floats(dst + hi, out_w - hi);
        }
      }
    }
  }
}

// The transpose of im2col: adds every col entry back onto the input pixel it was read from
// (padding entries are dropped). `dx` points at the group's first channel.
void col2im(const Conv2dDesc& d, int64_t channels, const float* col, int64_t ld, int64_t oh0,
            int64_t oh1, float* dx) {
  const int64_t out_w = d.out_w;
  for (int64_t c = 0; c < channels; ++c) {
    float* plane = dx + c * d.in_h * d.in_w;
    for (int64_t r = 0; r < d.kernel_h; ++r) {
      for (int64_t s = 0; s < d.kernel_w; ++s) {
        const float* src = col + ((c * d.kernel_h + r) * d.kernel_w + s) * ld;
        const int64_t w_offset = s * d.dilation_w - d.pad_w;
        int64_t lo, hi;
        valid_columns(w_offset, d.stride_w, d.in_w, out_w, lo, hi);
        for (int64_t oh = oh0; oh < oh1; ++oh, src += out_w) {
          const int64_t ih = oh * d.stride_h - d.pad_h + r * d.dilation_h;
          if (ih < 0 || ih >= d.in_h) continue;
          float* dst = plane + ih * d.in_w + (lo * d.stride_w + w_offset);
          if (d.stride_w == 1) {
            for (int64_t ow = lo; ow < hi; ++ow) dst[ow - lo] += src[ow];
          } else {
            for (int64_t ow = lo; ow < hi; ++ow) dst[(ow - lo) * d.stride_w] += src[ow];
          }
        }
      }
    }
  }
}

// Sum of n floats with 8 independent accumulators, so the loop vectorizes without -ffast-math.
float sum_floats(const float* p, int64_t n) {
  float acc[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int j = 0; j < 8; ++j) acc[j] += p[i + j];
  }
  float total = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; i < n; ++i) total += p[i];
  return total;
}

int64_t round_up(int64_t a, int64_t multiple) { return ceil_div(a, multiple) * multiple; }

// ---- which implementation fits a descriptor -----------------------------------------------------
// Each implementation of a pass refuses what it cannot run, or would run badly: these are its
// supports(). The thresholds are the constants above (measured: docs/performance.md).

int64_t channels_per_group(const Conv2dDesc& d) { return d.in_channels / d.groups; }
int64_t filters_per_group(const Conv2dDesc& d) { return d.out_channels / d.groups; }

bool depthwise_fits(const Conv2dDesc& d) { return channels_per_group(d) == 1 && d.groups > 1; }

// Precision bf16: layers whose fp32 forward method is one GEMM over the im2col (or image) columns
// (pointwise, blas) with at least this many weights per group (the GEMM's rows x depth) go to
// bf16_gemm, whose vdpbf16ps products run at twice the rate of float FMAs once both operands are
// large enough to repay its packing (1x1 layers, three passes: 512 -> 512 at 4x4 1.65x faster
// than pointwise, 256 -> 512 1.3x, 256 -> 256 and 128 -> 512 even, 256 -> 64 and 64 -> 256 1.3x
// to 1.5x slower). Every other method does fewer multiplications (Winograd) or packs less (direct,
// lanes, polyphase, small, depthwise), and ran 1.1x to 3.5x faster on rounded inputs than
// bf16_gemm (docs/precision.md).
constexpr int64_t kBf16GemmMinWeights = int64_t{1} << 17;
bool bf16_gemm_pays(const Conv2dDesc& d, std::string_view fp32_method) {
  const int64_t weights = channels_per_group(d) * d.kernel_h * d.kernel_w * filters_per_group(d);
  return (fp32_method == "pointwise" || fp32_method == "blas") && weights >= kBf16GemmMinWeights;
}

bool pointwise_fits(const Conv2dDesc& d) {
  return d.kernel_h * d.kernel_w == 1 && d.stride_h == 1 && d.stride_w == 1 && d.pad_h == 0 &&
         d.pad_w == 0 && d.out_h == d.in_h && d.out_w == d.in_w;
}

bool small_fits(const Conv2dDesc& d) {
  const int64_t rows = channels_per_group(d) * d.kernel_h * d.kernel_w;
  return filters_per_group(d) <= kSmallMaxFilters &&
         rows * d.out_h * d.out_w <= kColumnBudgetFloats;
}

bool blas_fits(const Conv2dDesc&) { return true; }

// A dilation-D 3x3 convolution is D*D independent dilation-1 ones, on the input's polyphase
// components (rows and columns of one residue mod D; split_phases() pads the shorter ones of an
// extent D does not divide): Winograd runs on those sub-images. D when the descriptor allows that
// split (padding a multiple of D, at most kMaxPhases), else 1.
int64_t polyphase_factor(const Conv2dDesc& d) {
  const int64_t dilation = d.dilation_h;
  const bool polyphase = dilation > 1 && dilation <= kMaxPhases && d.dilation_w == dilation &&
                         d.pad_h % dilation == 0 && d.pad_w % dilation == 0;
  return polyphase ? dilation : 1;
}

// The shapes Winograd computes (3x3, stride 1, one group, padding at most 2 per phase), at any
// channel count; winograd_fits: those with kWinogradMinChannels channels and filters.
bool winograd_geometry_fits(const Conv2dDesc& d) {
  const int64_t p = polyphase_factor(d);
  return d.kernel_h == 3 && d.kernel_w == 3 && d.stride_h == 1 && d.stride_w == 1 &&
         (p > 1 || (d.dilation_h == 1 && d.dilation_w == 1)) && d.groups == 1 && d.pad_h / p <= 2 &&
         d.pad_w / p <= 2;
}
bool winograd_fits(const Conv2dDesc& d) {
  return winograd_geometry_fits(d) && channels_per_group(d) >= kWinogradMinChannels &&
         filters_per_group(d) >= kWinogradMinChannels;
}

// F(4x4, 3x3) where its blocks of tiles are wide enough for good matrix products and its 4x4
// tiles waste little at the edges (measured: docs/performance.md, sections 9 and 27); F(2x2, 3x3)
// otherwise. The edge bound is on the output (of each polyphase component when dilated, staged at
// the largest component's size), for every pass: outputs of kWinograd43MinOutput or more, and
// smaller ones that 4x4 tiles cover with no more positions than 2x2 tiles do (extents of 3, 4, 7,
// 8, 11, 12, 15: ResNet-20's 64 -> 64 at 8x8, batch 64, 1.25 -> 0.79 ms forward). Those that 4x4
// tiles cover with more (6, 10, 14: up to 1.8x the positions) ran as fast or slower in F(4x4).
// winograd_tile_output: the output the tiles cover, a polyphase component's when dilated (staged
// at the largest component's size); winograd43_large_output: at least kWinograd43MinOutput.
Extent winograd_tile_output(const Conv2dDesc& d) {
  const int64_t p = polyphase_factor(d);
  return {ceil_div(d.out_h, p), ceil_div(d.out_w, p)};
}
bool winograd43_large_output(const Conv2dDesc& d) {
  const Extent out = winograd_tile_output(d);
  return std::min(out.h, out.w) >= kWinograd43MinOutput;
}
bool winograd43_output_fits(const Conv2dDesc& d) {
  const Extent out = winograd_tile_output(d);
  return winograd43_large_output(d) ||
         round_up(out.h, 4) * round_up(out.w, 4) <= round_up(out.h, 2) * round_up(out.w, 2);
}
bool winograd43_fits(const Conv2dDesc& d) {
  return winograd_fits(d) && d.in_channels + d.out_channels <= kWinograd43MaxChannels &&
         winograd43_output_fits(d);
}

// Forward and backward_data of the shapes both Winograd and the direct kernels run (32 to 64
// channels and filters, small images): F(4x4) does a quarter of the direct kernels'
// multiplications and wins from 32 channels (ResNet-20's 32 -> 32 at 16x16, batch 64: 0.92 ->
// 0.64 ms forward); F(2x2) saves less (4/9) and needs kWinograd23OverDirect channels and filters
// and whole 2x2 tiles (64 -> 64 at 8x8: 1.24 -> 0.86 ms; 32 -> 32 at 14x14 and 64 -> 64 at 7x7
// ran faster direct). docs/performance.md, section 21. Dilated, Winograd also splits the input
// into phases and merges the output back: there both tile sizes need kWinograd23OverDirect
// channels and filters, and then win at any output (32 -> 32 at 32x32, dilation 3: 9.5 -> 4.1 ms
// forward direct; 64 -> 64 dilation 2 at 30x30, odd phases of 15x15, 18.2 ms a pass with
// F(2x2) against 20.0 direct: section 23).
bool winograd_beats_direct(const Conv2dDesc& d) {
  if (!winograd_fits(d)) return false;
  const bool dilated = polyphase_factor(d) > 1;
  if (!dilated && winograd43_fits(d)) return true;
  const bool wide = std::min(channels_per_group(d), filters_per_group(d)) >= kWinograd23OverDirect;
  return wide && (dilated || (d.out_h % 2 == 0 && d.out_w % 2 == 0));
}

// Extents of the direct method's padded input and of backward_data's padded dy.
Extent padded_extent(const Conv2dDesc& d) { return {d.in_h + 2 * d.pad_h, d.in_w + 2 * d.pad_w}; }
Extent padded_dy_extent(const Conv2dDesc& d) {
  return {d.in_h + (d.kernel_h - 1) * d.dilation_h, d.in_w + (d.kernel_w - 1) * d.dilation_w};
}

// The most channels and filters per group the direct kernels (and polyphase) take: more where
// Winograd cannot run the shape, so that blas is the alternative (strided shapes, kernels other
// than 3x3, few channels); 1x1 has pointwise and small.
int64_t direct_max_channels(const Conv2dDesc& d) {
  return d.kernel_h * d.kernel_w > 1 && !winograd_fits(d) ? kDirectLargeMaxChannels
                                                          : kDirectMaxChannels;
}

bool direct_fits(const Conv2dDesc& d) {
  const Extent padded = padded_extent(d), dy = padded_dy_extent(d);
  const int64_t cg = channels_per_group(d), kg = filters_per_group(d);
  const bool large = d.kernel_h * d.kernel_w > 1 && !winograd_beats_direct(d);
  const int64_t budget = large ? kDirectLargeBudgetFloats : kDirectBudgetFloats;
  const int64_t most = direct_max_channels(d);
  return d.stride_h == 1 && d.stride_w == 1 &&
         d.out_h == padded.h - (d.kernel_h - 1) * d.dilation_h &&
         d.out_w == padded.w - (d.kernel_w - 1) * d.dilation_w && cg <= most && kg <= most &&
         cg * padded.h * padded.w <= budget && kg * dy.h * dy.w <= budget;
}

// The least useful fraction backward_data's direct kernels (and polyphase's) must reach: lower
// where Winograd cannot run the shape (or runs it slower) and "small" does not take it, which
// leaves only blas (or that slower Winograd: 32 -> 32 at 32x32, dilation 4, 51 % useful: 7.3 ->
// 4.3 ms; docs/performance.md, section 23).
double direct_data_floor(const Conv2dDesc& d) {
  return !winograd_beats_direct(d) && !small_fits(d) ? kDirectMinEfficiencyOverBlas
                                                     : kDirectMinEfficiency;
}

// Forward and backward_params compute over the wide output; backward_data over the input's
// wide rows, reading a dy padded to dy.h x dy.w of which only out_h x out_w is real. Both
// refuse what Winograd runs faster (winograd_beats_direct).
bool direct_forward_fits(const Conv2dDesc& d) {
  const double efficiency = static_cast<double>(d.out_w) / static_cast<double>(padded_extent(d).w);
  return direct_fits(d) && efficiency >= kDirectMinEfficiency && !winograd_beats_direct(d);
}

bool direct_data_fits(const Conv2dDesc& d) {
  const Extent dy = padded_dy_extent(d);
  const double efficiency = static_cast<double>(d.in_w) / static_cast<double>(dy.w) *
                            static_cast<double>(d.out_h * d.out_w) /
                            static_cast<double>(dy.h * dy.w);
  return direct_fits(d) && channels_per_group(d) >= direct::kRows &&
         efficiency >= direct_data_floor(d) && !winograd_beats_direct(d);
}

// Stride > 1 (polyphase.hpp), up to polyphase::kMaxStride, and a kernel of more than one tap: a
// 1x1 strided convolution is a subsample and a product, which "small" (im2col is that subsample)
// ran as fast (ResNet-20's downsample, docs/performance.md). Then the direct method's limits on
// the phase planes (one image group's, and the wide output, within kDirectLargeBudgetFloats:
// Winograd never runs a strided shape, so im2col + GEMM is the alternative, twice as slow on
// 16 -> 32 at 64x64, docs/performance.md section 22) and on the wide output's efficiency, out_w
// real columns of each phase plane's row.
bool polyphase_fits(const Conv2dDesc& d) {
  if ((d.stride_h == 1 && d.stride_w == 1) || d.stride_h > polyphase::kMaxStride ||
      d.stride_w > polyphase::kMaxStride || d.kernel_h * d.kernel_w == 1) {
    return false;
  }
  const polyphase::Geometry g = polyphase::make(d);
  const int64_t cg = channels_per_group(d), kg = filters_per_group(d);
  const double efficiency = static_cast<double>(d.out_w) / static_cast<double>(g.plane_w);
  const int64_t most = direct_max_channels(d);
  return polyphase::exact_output(d) && cg <= most && kg <= most &&
         cg * g.channel_floats() <= kDirectLargeBudgetFloats &&
         kg * d.out_h * g.plane_w <= kDirectLargeBudgetFloats && efficiency >= kDirectMinEfficiency;
}

// backward_data as one stride-1 correlation per phase of dx (polyphase::DataGeometry): enough
// channels to fill the kernel's register rows (as direct_data_fits), a tap on every phase
// (merge() reads every phase's product; dilation 2 with stride 2 puts all taps on one), at least
// kPolyphaseDataMinColumns wide columns in each phase's product, the padded dy and the wide
// outputs within the L2 budget, and at most 1 / kDirectMinEfficiency times the exact
// multiply-adds.
bool polyphase_data_fits(const Conv2dDesc& d) {
  if (!polyphase_fits(d) || channels_per_group(d) < direct::kRows) return false;
  const int64_t cg = channels_per_group(d), kg = filters_per_group(d);
  const polyphase::DataGeometry data = polyphase::make_data(d, polyphase::make(d), kg, cg);
  const double efficiency = static_cast<double>(d.kernel_h * d.kernel_w * d.out_h * d.out_w) /
                            static_cast<double>(data.multiply_adds());
  const bool long_enough =
      std::all_of(data.phases.begin(), data.phases.end(), [&](const polyphase::DataPhase& p) {
        return p.row_hi <= p.row_lo || data.columns(p) >= kPolyphaseDataMinColumns;
      });
  return data.every_phase_has_taps() && long_enough &&
         data.dy_floats(kg) <= kDirectLargeBudgetFloats &&
         data.wide_floats <= kDirectLargeBudgetFloats && efficiency >= direct_data_floor(d);
}

// The weight gradient of the direct and polyphase methods: their forward's conditions, and with
// more than kDirectMaxChannels channels or filters an output of at least
// kDirectLargeParamsMinOutput.
bool direct_params_size_fits(const Conv2dDesc& d) {
  return std::max(channels_per_group(d), filters_per_group(d)) <= kDirectMaxChannels ||
         std::min(d.out_h, d.out_w) >= kDirectLargeParamsMinOutput;
}
bool direct_params_fits(const Conv2dDesc& d) {
  return direct_forward_fits(d) && direct_params_size_fits(d);
}
bool polyphase_params_fits(const Conv2dDesc& d) {
  return polyphase_fits(d) && direct_params_size_fits(d);
}

// The weight gradient takes Winograd wherever it runs, except on dilated shapes the direct
// kernels run (as winograd_beats_direct refuses): there the phase split costs more than it saves
// (32 -> 32 at 32x32, dilation 3: 9.3 -> 4.5 ms; docs/performance.md, section 23).
// From kWinogradParamsMinChannels in fp32; in bf16 from kWinogradMinChannels, as forward: under
// it the direct method's vdpbf16ps products win (ResNet-20's 16 -> 16 at 32x32: bf16_direct 1.0-1.3
// ms, bf16_winograd43 2.0-2.1).
bool winograd_params_fits(const Conv2dDesc& d) {
  const int64_t least =
      d.precision == Precision::kFp32 ? kWinogradParamsMinChannels : kWinogradMinChannels;
  return winograd_geometry_fits(d) && channels_per_group(d) >= least &&
         filters_per_group(d) >= least && !(polyphase_factor(d) > 1 && direct_forward_fits(d));
}

// The weight gradient's products are (filters x tiles) * (tiles x channels). It takes F(4x4) on
// the outputs the forward's does (section 27: 32 -> 32 at 20x20, batch 64, 2.22 -> 1.65 ms; 64 ->
// 64 at 16x16 3.21 -> 2.60; 32 -> 32 at 32x32 and 56x56 within the runs' spread of F(2x2)), with
// its own channel bounds: on outputs of kWinograd43MinOutput or more up to
// kWinograd43MaxParamsChannels (section 19), below them up to kWinograd43MaxSmallParamsChannels
// (256 -> 256 at 7x7 and 8x8, batch 32, 6 % slower than F(2x2)).
bool winograd43_params_fits(const Conv2dDesc& d) {
  const int64_t sum = d.in_channels + d.out_channels;
  const int64_t most =
      winograd43_large_output(d) ? kWinograd43MaxParamsChannels : kWinograd43MaxSmallParamsChannels;
  return winograd_params_fits(d) && sum <= most && winograd43_output_fits(d);
}

// The lanes method (lanes.hpp): a block's frames within kLanesBudgetPixels, not 1x1
// (pointwise and small run those faster) and not what Winograd runs (3x3, stride 1, 32 channels
// and more: Winograd keeps those; docs/performance.md, section 14).
bool lanes_fits(const Conv2dDesc& d) {
  if (d.kernel_h * d.kernel_w == 1 || winograd_fits(d)) {
    return false;
  }
  const bool strided_small =
      (d.stride_h > 1 || d.stride_w > 1) && d.out_h * d.out_w <= kLanesStridedMaxOutput;
  const int64_t budget = strided_small ? kLanesStridedBudgetPixels : kLanesBudgetPixels;
  return lanes::forward_frame(d).pixels() <= budget &&
         filters_per_group(d) * d.out_h * d.out_w <= budget;
}

bool lanes_data_fits(const Conv2dDesc& d) {
  if (!lanes_fits(d) || !lanes::data_fits(d)) return false;
  return lanes::data_frame(d).pixels() <= kLanesBudgetPixels &&
         channels_per_group(d) * d.in_h * d.in_w <= kLanesBudgetPixels;
}

}  // namespace

// ---- the ordered lists ------------------------------------------------------------------------
// Each pass takes the first implementation of its list that supports the descriptor (the last,
// blas, supports every one). The conditions ignore the precision, so that a bf16 layer runs the
// methods the fp32 layer would, on rounded inputs (docs/precision.md), but where bf16's own
// products move a crossover: winograd_params_fits.
// Where both apply, Winograd beats the direct kernels at backward_params, and at forward and
// backward_data as winograd_beats_direct() says (measured: docs/performance.md, section 21).

std::span<const TbbConv2d::ForwardImplementation> TbbConv2d::forward_implementations() {
  static const ForwardImplementation list[] = {
      {"lanes", lanes_fits, &TbbConv2d::prepare_lanes_forward, &TbbConv2d::forward_lanes,
       &TbbConv2d::lanes_forward_arithmetic, /*rounds_activations=*/true},
      {"depthwise", depthwise_fits, &TbbConv2d::prepare_depthwise, &TbbConv2d::depthwise_forward,
       &TbbConv2d::depthwise_arithmetic, /*rounds_activations=*/true},
      {"direct", direct_forward_fits, &TbbConv2d::prepare_direct_forward,
       &TbbConv2d::forward_direct, &TbbConv2d::direct_forward_arithmetic,
       /*rounds_activations=*/true},
      {"polyphase", polyphase_fits, &TbbConv2d::prepare_polyphase_forward,
       &TbbConv2d::forward_polyphase, &TbbConv2d::polyphase_forward_arithmetic,
       /*rounds_activations=*/true},
      {"winograd43", winograd43_fits, &TbbConv2d::prepare_winograd_forward<4>,
       &TbbConv2d::forward_winograd, &TbbConv2d::winograd_forward_arithmetic,
       /*rounds_activations=*/true},
      {"winograd23", winograd_fits, &TbbConv2d::prepare_winograd_forward<2>,
       &TbbConv2d::forward_winograd, &TbbConv2d::winograd_forward_arithmetic},
      {"pointwise", pointwise_fits, &TbbConv2d::prepare_pointwise, &TbbConv2d::forward_pointwise,
       &TbbConv2d::exact_arithmetic, /*rounds_activations=*/true},
      {"small", small_fits, &TbbConv2d::prepare_small_forward, &TbbConv2d::forward_small,
       &TbbConv2d::exact_arithmetic, /*rounds_activations=*/true},
      {"blas", blas_fits, &TbbConv2d::prepare_blas, &TbbConv2d::forward_blas,
       &TbbConv2d::exact_arithmetic},
  };
  return list;
}

std::span<const TbbConv2d::DataImplementation> TbbConv2d::data_implementations() {
  static const DataImplementation list[] = {
      {"lanes", lanes_data_fits, &TbbConv2d::prepare_lanes_data, &TbbConv2d::data_lanes,
       &TbbConv2d::lanes_data_arithmetic, /*rounds_activations=*/true},
      {"depthwise", depthwise_fits, &TbbConv2d::prepare_depthwise,
       &TbbConv2d::depthwise_backward_data, &TbbConv2d::depthwise_arithmetic,
       /*rounds_activations=*/true},
      {"direct", direct_data_fits, &TbbConv2d::prepare_direct_data, &TbbConv2d::data_direct,
       &TbbConv2d::direct_data_arithmetic, /*rounds_activations=*/true},
      {"polyphase", polyphase_data_fits, &TbbConv2d::prepare_polyphase_data,
       &TbbConv2d::data_polyphase, &TbbConv2d::polyphase_data_arithmetic,
       /*rounds_activations=*/true},
      {"winograd43", winograd43_fits, &TbbConv2d::prepare_winograd_data<4>,
       &TbbConv2d::data_winograd, &TbbConv2d::winograd_data_arithmetic,
       /*rounds_activations=*/true},
      {"winograd23", winograd_fits, &TbbConv2d::prepare_winograd_data<2>, &TbbConv2d::data_winograd,
       &TbbConv2d::winograd_data_arithmetic},
      {"pointwise", pointwise_fits, &TbbConv2d::prepare_pointwise, &TbbConv2d::data_pointwise,
       &TbbConv2d::exact_arithmetic, /*rounds_activations=*/true},
      {"small", small_fits, &TbbConv2d::prepare_small_data, &TbbConv2d::data_small,
       &TbbConv2d::with_col2im_arithmetic, /*rounds_activations=*/true},
      {"blas", blas_fits, &TbbConv2d::prepare_blas, &TbbConv2d::data_blas,
       &TbbConv2d::with_col2im_arithmetic},
  };
  return list;
}

std::span<const TbbConv2d::ParamsImplementation> TbbConv2d::params_implementations() {
  static const ParamsImplementation list[] = {
      {"lanes", lanes_fits, &TbbConv2d::prepare_lanes_params, &TbbConv2d::params_lanes,
       &TbbConv2d::lanes_params_arithmetic, /*rounds_activations=*/true},
      {"depthwise", depthwise_fits, &TbbConv2d::prepare_depthwise,
       &TbbConv2d::depthwise_backward_params, &TbbConv2d::depthwise_arithmetic,
       /*rounds_activations=*/true},
      {"winograd43", winograd43_params_fits, &TbbConv2d::prepare_winograd_params<4>,
       &TbbConv2d::params_winograd, &TbbConv2d::winograd_params_arithmetic,
       /*rounds_activations=*/true},
      {"winograd23", winograd_params_fits, &TbbConv2d::prepare_winograd_params<2>,
       &TbbConv2d::params_winograd, &TbbConv2d::winograd_params_arithmetic},
      {"direct", direct_params_fits, &TbbConv2d::prepare_direct_params, &TbbConv2d::params_direct,
       &TbbConv2d::direct_params_arithmetic, /*rounds_activations=*/true},
      {"polyphase", polyphase_params_fits, &TbbConv2d::prepare_polyphase_params,
       &TbbConv2d::params_polyphase, &TbbConv2d::polyphase_params_arithmetic,
       /*rounds_activations=*/true},
      {"pointwise", pointwise_fits, &TbbConv2d::prepare_pointwise, &TbbConv2d::params_pointwise,
       &TbbConv2d::exact_arithmetic, /*rounds_activations=*/true},
      {"small", small_fits, &TbbConv2d::prepare_small_params, &TbbConv2d::params_small,
       &TbbConv2d::exact_arithmetic, /*rounds_activations=*/true},
      {"blas", blas_fits, &TbbConv2d::prepare_blas, &TbbConv2d::params_blas,
       &TbbConv2d::exact_arithmetic},
  };
  return list;
}

bool TbbConv2d::supports(const Conv2dDesc& desc) const {
  if (desc.precision == Precision::kFp32) return true;
  if (desc.precision != Precision::kBf16 || !desc.symmetric_padding()) return false;
  for (const ForwardImplementation& implementation : forward_implementations()) {
    if (implementation.supports(desc)) return !bf16_gemm_pays(desc, implementation.name);
  }
  return false;
}

std::string TbbConv2d::implementation() const {
  if (forward_ == nullptr) return Conv2dKernel::implementation();  // not prepared yet
  const std::string_view prefix = bf16() ? "bf16_" : "";
  return fmt::format("fwd={}{} bwd_data={}{} bwd_weights={}{}", prefix, forward_->name, prefix,
                     data_->name, prefix, params_->name);
}

Conv2dArithmetic TbbConv2d::arithmetic() const {
  if (forward_ == nullptr) return Conv2dKernel::arithmetic();  // not prepared yet
  return {(this->*forward_->arithmetic)(), (this->*data_->arithmetic)(),
          (this->*params_->arithmetic)()};
}

void TbbConv2d::on_prepare() {
  const Conv2dDesc& d = desc_;
  validate(d, kName);
  // The methods run bf16 with float FMAs on rounded inputs, but precision bf16 means the same on
  // every tbb convolution: without AVX512-BF16 it is refused, as bf16_gemm refuses it
  // (docs/precision.md).
  if (d.precision == Precision::kBf16) bf16::require_cpu(kName);
  if (!d.symmetric_padding()) {
    // Every method below assumes pad_h/pad_w zeros on both sides (padded_h_, the Winograd and
    // direct geometries): refuse rather than compute with the wrong output extent. The conv2d layer
    // never asks for this: it pads asymmetric inputs explicitly (plugins/layers/conv2d.cpp).
    fail(
        "tbb conv2d: asymmetric padding (top {}, bottom {}, left {}, right {}) is not supported; "
        "pad explicitly and pass symmetric padding",
        d.pad_h, d.pad_bottom(), d.pad_w, d.pad_right());
  }
  cg_ = channels_per_group(d);
  kg_ = filters_per_group(d);
  rows_ = cg_ * d.kernel_h * d.kernel_w;
  in_plane_ = d.in_h * d.in_w;
  out_plane_ = d.out_h * d.out_w;

  const Extent padded = padded_extent(d), dy = padded_dy_extent(d);
  padded_h_ = padded.h;
  padded_w_ = padded.w;
  dy_h_ = dy.h;
  dy_w_ = dy.w;
  dy_top_ = (d.kernel_h - 1) * d.dilation_h - d.pad_h;
  dy_left_ = (d.kernel_w - 1) * d.dilation_w - d.pad_w;
  dy_wide_stride_ = round_up(d.out_h * padded_w_, direct::kVector);
  padded_stride_ =
      round_up(cg_ * padded_h_ * padded_w_ + kSlackFloats + d.kernel_w * d.dilation_w, 16);
  small_images_ =
      std::clamp<int64_t>(ceil_div(kSmallTargetColumns, out_plane_), 1,
                          kColumnBudgetFloats / std::max<int64_t>(1, rows_ * out_plane_));
  small_stride_ = round_up(small_images_ * out_plane_, direct::kVector);
  phases_ = winograd_geometry_fits(d) ? polyphase_factor(d) : 1;
  polyphase_ = polyphase::make(d);
  polyphase_stride_ = round_up(polyphase_.floats(cg_), 16);
  polyphase_dy_stride_ = round_up(d.out_h * polyphase_.plane_w, direct::kVector);

  col_floats_ = 0;
  gathered_floats_ = 0;
  packed_forward_floats_ = 0;
  packed_backward_floats_ = 0;
  winograd_u_forward_floats_ = 0;
  winograd_u_data_floats_ = 0;
  forward_offsets_.clear();
  backward_offsets_.clear();
  depthwise_plan_ = {};
  small_offsets_.clear();
  polyphase_offsets_.clear();
  pointwise_offsets_.clear();
  forward_ = choose(forward_implementations(), forward_plan_);
  data_ = choose(data_implementations(), data_plan_);
  params_ = choose(params_implementations(), params_plan_);
}

template <class I>
const I* TbbConv2d::choose(std::span<const I> list, Plan& plan) {
  for (const I& implementation : list) {
    if (!implementation.supports(desc_)) continue;
    plan = Plan{};
    plan.band_rows = desc_.out_h;
    (this->*implementation.prepare)(plan);
    plan.bands = ceil_div(desc_.out_h, plan.band_rows);
    return &implementation;
  }
  fail("tbb conv2d: no implementation supports this descriptor");  // (blas supports every one)
}

// ---- the arithmetic of each implementation, per image -----------------------------------------

int64_t col2im_additions(const Conv2dDesc& d) {
  // Along one axis: the (tap, output) pairs whose input index lies inside the input.
  const auto inside = [](int64_t kernel, int64_t dilation, int64_t stride, int64_t pad, int64_t in,
                         int64_t out) {
    int64_t pairs = 0;
    for (int64_t r = 0; r < kernel; ++r) {
      for (int64_t o = 0; o < out; ++o) {
        const int64_t i = o * stride - pad + r * dilation;
        pairs += i >= 0 && i < in ? 1 : 0;
      }
    }
    return pairs;
  };
  return d.in_channels * inside(d.kernel_h, d.dilation_h, d.stride_h, d.pad_h, d.in_h, d.out_h) *
         inside(d.kernel_w, d.dilation_w, d.stride_w, d.pad_w, d.in_w, d.out_w);
}

Conv2dPassArithmetic TbbConv2d::exact_arithmetic() const {
  return {conv2d_direct_multiply_adds(desc_), 0};
}

Conv2dPassArithmetic TbbConv2d::with_col2im_arithmetic() const {
  return {conv2d_direct_multiply_adds(desc_), col2im_additions(desc_)};
}

// The direct kernels' products run over the wide output: (out_h - 1) rows as wide as the padded
// input plus the last row's out_w columns (forward), every wide row (the weight gradient's
// zero-filled dy), or the input's wide rows as wide as the padded dy (backward_data); or, where
// direct::by_rows says so, over the real rows alone.
Conv2dPassArithmetic TbbConv2d::direct_forward_arithmetic() const {
  const Conv2dDesc& d = desc_;
  return {d.groups * kg_ * rows_ * direct::gemm_columns(d.out_h, d.out_w, padded_w_), 0};
}

Conv2dPassArithmetic TbbConv2d::direct_data_arithmetic() const {
  const Conv2dDesc& d = desc_;
  return {
      d.groups * cg_ * kg_ * d.kernel_h * d.kernel_w * direct::gemm_columns(d.in_h, d.in_w, dy_w_),
      0};
}

Conv2dPassArithmetic TbbConv2d::direct_params_arithmetic() const {
  const Conv2dDesc& d = desc_;
  const int64_t columns = direct::by_rows(d.out_h, d.out_w, padded_w_, direct::kVector)
                              ? d.out_h * d.out_w
                              : d.out_h * padded_w_;
  return {d.groups * kg_ * rows_ * columns, 0};
}

Conv2dPassArithmetic TbbConv2d::depthwise_arithmetic() const {
  return {desc_.out_channels * depthwise::multiply_adds(depthwise_plan_), 0};
}

Conv2dPassArithmetic TbbConv2d::winograd_forward_arithmetic() const {
  return winograd::pass_arithmetic(winograd_forward_, phases_, false);
}

Conv2dPassArithmetic TbbConv2d::winograd_data_arithmetic() const {
  return winograd::pass_arithmetic(winograd_data_, phases_, false);
}

Conv2dPassArithmetic TbbConv2d::winograd_params_arithmetic() const {
  return winograd::pass_arithmetic(winograd_params_, phases_, true);
}

Conv2dPassArithmetic TbbConv2d::lanes_forward_arithmetic() const {
  return {desc_.groups * lanes_forward_.multiply_adds(), 0};
}

Conv2dPassArithmetic TbbConv2d::lanes_data_arithmetic() const {
  return {desc_.groups * lanes_data_.multiply_adds(), 0};
}

Conv2dPassArithmetic TbbConv2d::lanes_params_arithmetic() const {
  return {desc_.groups * lanes_params_.multiply_adds(), 0};
}

// ---- preparing: each implementation's plan, workspace and tables -------------------------------

void TbbConv2d::reserve_workspace(int64_t col, int64_t gathered) {
  col_floats_ = std::max(col_floats_, static_cast<std::size_t>(col));
  gathered_floats_ = std::max(gathered_floats_, static_cast<std::size_t>(gathered));
}

// fp32: the image is the col matrix, no workspace. bf16 with pointwise_pairs(): one image's x, or
// dy, as pair planes (forward, backward_data), or both as bf16 rows (the weight gradient), and the
// weights packed in pairs; bf16 with fewer channels or filters: the image rounded into the
// workspace, float products.
void TbbConv2d::prepare_pointwise(Plan&) {
  if (!bf16()) return;
  if (!pointwise_pairs()) {  // float products on the image's rounded copy (x in col, dy in
                             // gathered)
    reserve_workspace(cg_ * in_plane_, kg_ * out_plane_);
    return;
  }
  // col: the pair planes (words); gathered: the weight gradient's bf16 rows (two to a float).
  const int64_t stride = pointwise_stride();
  reserve_workspace(ceil_div(std::max(cg_, kg_), 2) * stride + kSlackFloats,
                    (cg_ + kg_) * stride / 2 + kSlackFloats);
  packed_forward_floats_ = desc_.groups * direct::packed_size(kg_, cg_);
  packed_backward_floats_ = desc_.groups * direct::packed_size(cg_, kg_);
  if (pointwise_offsets_.empty()) {  // plane i of the pair planes or of the bf16 rows
    for (int64_t i = 0; i < std::max(cg_, kg_); ++i) {
      pointwise_offsets_.push_back(static_cast<int32_t>(i * stride));
    }
  }
}

bool TbbConv2d::pointwise_pairs() const {
  return bf16() && std::min(cg_, kg_) >= kPointwisePairsMinChannels &&
         out_plane_ >= kPointwisePairsMinPixels;
}

int64_t TbbConv2d::pointwise_stride() const { return round_up(out_plane_, 32); }

void TbbConv2d::prepare_blas(Plan& plan) {
  const Conv2dDesc& d = desc_;
  if (rows_ * out_plane_ <= kBlasColumnBudgetFloats) {
    plan.images = std::clamp<int64_t>(ceil_div(kTargetColumns, out_plane_), 1,
                                      kBlasColumnBudgetFloats / (rows_ * out_plane_));
  } else {  // one image's col matrix does not fit: cut the output into equal bands of whole rows
    const int64_t most =
        std::clamp<int64_t>(kBlasColumnBudgetFloats / (rows_ * d.out_w), 1, d.out_h);
    plan.band_rows = ceil_div(d.out_h, ceil_div(d.out_h, most));
  }
  const int64_t columns = plan.images * plan.band_rows * d.out_w;
  reserve_workspace(rows_ * columns, plan.images > 1 ? kg_ * columns : 0);
}

void TbbConv2d::prepare_small(Plan& plan) {
  plan.images = small_images_;
  // Rows of the col matrix and of the gathered dy are small_stride_ apart; the kernels may read
  // one register block past the last column.
  reserve_workspace(rows_ * small_stride_ + direct::kColumns,
                    kg_ * small_stride_ + direct::kColumns);
  if (small_offsets_.empty()) {
    for (int64_t p = 0; p < std::max(rows_, kg_); ++p) {
      small_offsets_.push_back(static_cast<int32_t>(p * small_stride_));
    }
  }
}

void TbbConv2d::prepare_small_forward(Plan& plan) {
  prepare_small(plan);
  packed_forward_floats_ = desc_.groups * direct::packed_size(kg_, rows_);
}

void TbbConv2d::prepare_small_data(Plan& plan) {
  prepare_small(plan);
  packed_backward_floats_ = desc_.groups * direct::packed_size(rows_, kg_);
}

void TbbConv2d::prepare_small_params(Plan& plan) { prepare_small(plan); }

void TbbConv2d::prepare_direct(const Plan& plan) {
  const Conv2dDesc& d = desc_;
  const int64_t slack = kSlackFloats + d.kernel_w * d.dilation_w;
  reserve_workspace(std::max(plan.images * padded_stride_, kg_ * dy_h_ * dy_w_ + slack),
                    std::max({kg_ * d.out_h * padded_w_, cg_ * d.in_h * dy_w_,
                              plan.images * kg_ * dy_wide_stride_}) +
                        direct::kColumns);
  if (forward_offsets_.empty()) {  // the taps in the padded input (forward and backward_params)
    for (int64_t c = 0; c < cg_; ++c) {
      for (int64_t r = 0; r < d.kernel_h; ++r) {
        for (int64_t s = 0; s < d.kernel_w; ++s) {
          forward_offsets_.push_back(static_cast<int32_t>(
              (c * padded_h_ + r * d.dilation_h) * padded_w_ + s * d.dilation_w));
        }
      }
    }
  }
}

void TbbConv2d::prepare_direct_forward(Plan& plan) {
  prepare_direct(plan);
  packed_forward_floats_ = desc_.groups * direct::packed_size(kg_, rows_);
}

void TbbConv2d::prepare_direct_data(Plan& plan) {
  const Conv2dDesc& d = desc_;
  const int64_t taps = d.kernel_h * d.kernel_w;
  prepare_direct(plan);
  for (int64_t k = 0; k < kg_; ++k) {
    for (int64_t r = 0; r < d.kernel_h; ++r) {
      for (int64_t s = 0; s < d.kernel_w; ++s) {
        backward_offsets_.push_back(
            static_cast<int32_t>((k * dy_h_ + r * d.dilation_h) * dy_w_ + s * d.dilation_w));
      }
    }
  }
  packed_backward_floats_ = d.groups * direct::packed_size(cg_, kg_ * taps);
}

void TbbConv2d::prepare_direct_params(Plan& plan) {
  // Several images per block, so each block's accumulators are reduced once.
  plan.images = std::clamp<int64_t>(kColumnBudgetFloats / (padded_stride_ + kg_ * dy_wide_stride_),
                                    1, kDirectParamsImages);
  prepare_direct(plan);
}

void TbbConv2d::prepare_polyphase(const Plan& plan) {
  const Conv2dDesc& d = desc_;
  reserve_workspace(
      plan.images * polyphase_stride_,
      std::max(kg_ * d.out_h * polyphase_.plane_w, plan.images * kg_ * polyphase_dy_stride_) +
          direct::kColumns);
  if (polyphase_offsets_.empty()) polyphase_offsets_ = polyphase::tap_offsets(d, polyphase_, cg_);
}

void TbbConv2d::prepare_polyphase_forward(Plan& plan) {
  prepare_polyphase(plan);
  packed_forward_floats_ = desc_.groups * direct::packed_size(kg_, rows_);
}

void TbbConv2d::prepare_polyphase_params(Plan& plan) {
  // Several images per block, so each block's accumulators are reduced once.
  plan.images =
      std::clamp<int64_t>(kColumnBudgetFloats / (polyphase_stride_ + kg_ * polyphase_dy_stride_), 1,
                          kDirectParamsImages);
  prepare_polyphase(plan);
}

void TbbConv2d::prepare_polyphase_data(Plan&) {
  const Conv2dDesc& d = desc_;
  polyphase_data_ = polyphase::make_data(d, polyphase_, kg_, cg_);
  reserve_workspace(polyphase_data_.dy_floats(kg_) + polyphase_.slack + polyphase_.row_floats(),
                    polyphase_data_.wide_floats);
  packed_backward_floats_ = d.groups * polyphase_data_.packed_floats;
}

void TbbConv2d::prepare_depthwise(Plan&) {
  const Conv2dDesc& d = desc_;
  if (depthwise_plan_.offsets.empty()) depthwise_plan_ = depthwise::make_plan(d);
  // gathered: a block's padded input planes (forward), dx's padded planes or the tap sums, then
  // at depthwise_wide_offset() the wide output or the dy buffer, then (bf16) the rounded dy
  // planes; col: backward_params' padded input planes.
  reserve_workspace(depthwise::padded_floats(depthwise_plan_),
                    depthwise_dy_offset() +
                        (d.precision == Precision::kBf16 ? depthwise_plan_.stack * out_plane_ : 0));
}

// lanes: blocks of lanes::kLanes images; the frames in the workspace (col: the input frame,
// gathered: the output frame, or backward_params' dy frame).
void TbbConv2d::prepare_lanes_forward(Plan& plan) {
  plan.images = lanes::kLanes;
  lanes_forward_ = lanes::forward_pass(desc_);
  reserve_workspace(lanes_forward_.in_floats(), lanes_forward_.out.floats());
  packed_forward_floats_ = desc_.groups * rows_ * lanes_forward_.lda;
}

void TbbConv2d::prepare_lanes_data(Plan& plan) {
  plan.images = lanes::kLanes;
  lanes_data_ = lanes::data_pass(desc_);
  reserve_workspace(lanes_data_.in_floats(), lanes_data_.out.floats());
  packed_backward_floats_ = desc_.groups * kg_ * desc_.kernel_h * desc_.kernel_w * lanes_data_.lda;
}

void TbbConv2d::prepare_lanes_params(Plan& plan) {
  plan.images = lanes::kLanes;
  lanes_params_ = lanes::weight_pass(desc_);
  reserve_workspace(lanes_params_.x.floats(), lanes_params_.dy.floats());
}

// Each thread's V and M (or dy's W) for geometry g.
void TbbConv2d::reserve_winograd(const winograd::Geometry& g) {
  const int64_t floats =
      g.elements() * winograd::plane_stride(std::max(cg_, kg_), winograd_block(g));
  reserve_workspace(floats, floats);
}

template <int Tile>
void TbbConv2d::prepare_winograd_forward(Plan&) {
  const Conv2dDesc& d = desc_;
  const int64_t p = phases_;
  winograd_forward_ = winograd::Geometry::make(cg_, kg_, ceil_div(d.in_h, p), ceil_div(d.in_w, p),
                                               d.pad_h / p, d.pad_w / p, Tile);
  winograd_u_forward_floats_ = winograd_forward_.elements() * cg_ * kg_;
  winograd_forward_.bf16 = Tile == 4 && bf16();  // rounds_activations
  reserve_winograd(winograd_forward_);
}

template <int Tile>
void TbbConv2d::prepare_winograd_data(Plan&) {
  const Conv2dDesc& d = desc_;
  const int64_t p = phases_;
  winograd_data_ = winograd::Geometry::make(kg_, cg_, ceil_div(d.out_h, p), ceil_div(d.out_w, p),
                                            2 - d.pad_h / p, 2 - d.pad_w / p, Tile);
  winograd_u_data_floats_ = winograd_data_.elements() * cg_ * kg_;
  winograd_data_.bf16 = Tile == 4 && bf16();  // rounds_activations
  reserve_winograd(winograd_data_);
}

template <int Tile>
void TbbConv2d::prepare_winograd_params(Plan&) {
  const Conv2dDesc& d = desc_;
  const int64_t p = phases_;
  winograd_params_ = winograd::Geometry::make(cg_, kg_, ceil_div(d.in_h, p), ceil_div(d.in_w, p),
                                              d.pad_h / p, d.pad_w / p, Tile);
  winograd_params_.bf16 = Tile == 4 && bf16();  // rounds_activations
  reserve_winograd(winograd_params_);
}

std::shared_ptr<TbbConv2d::Scratch> TbbConv2d::shared_scratch() {
  static std::mutex mutex;  // guards `pool` (kernels are created on any thread)
  static std::weak_ptr<Scratch> pool;
  const std::lock_guard<std::mutex> lock(mutex);
  std::shared_ptr<Scratch> scratch = pool.lock();
  if (scratch == nullptr) {
    scratch = std::make_shared<Scratch>();
    pool = scratch;
  }
  return scratch;
}

template <class Pass>
void TbbConv2d::run_pass(int64_t packed, int64_t u, const Pass& pass) {
  const std::lock_guard<std::mutex> lock(scratch_->mutex);
  // Every shared buffer a task reads through a pointer is sized here, before any task starts
  // (those sized on demand inside the pass, too, grow before its parallel loops).
  grow(scratch_->packed, packed);
  grow(scratch_->winograd_u, u);
  // Isolated: while this thread waits for the pass's tasks it runs none but theirs, never an outer
  // task that could call a conv pass and wait on the mutex this thread holds.
  tbb::this_task_arena::isolate(pass);
}

TbbConv2d::Workspace& TbbConv2d::local_workspace() {
  Workspace& ws = scratch_->workspace.local();
  // Only a thread's first call, and a larger layer's, allocate: the sizes depend on the
  // descriptors alone. The buffers are this thread's: no other thread touches them.
  if (ws.col.size() < col_floats_) ws.col.resize(col_floats_);
  if (ws.gathered.size() < gathered_floats_) ws.gathered.resize(gathered_floats_);
  return ws;
}

// Slices of backward_params: a few per thread, so a thread that loses its core for a while (to a
// data loader, say) leaves work for the others to take, unless the weights are big enough that
// a partial copy per slice would cost real memory (tiny-dnn #151): then one per thread.
int64_t TbbConv2d::max_slices() const {
  const int64_t weight_floats = desc_.out_channels * rows_;
  return int64_t{allowed_threads()} * (weight_floats <= kSmallWeightFloats ? kSlicesPerThread : 1);
}

int64_t TbbConv2d::block_count(const Plan& plan, int64_t n_batch) const {
  return ceil_div(n_batch, plan.images) * plan.bands;
}

TbbConv2d::Block TbbConv2d::block(const Plan& plan, int64_t index, int64_t n_batch) const {
  const int64_t unit = index / plan.bands, band = index % plan.bands;
  Block b;
  b.n0 = unit * plan.images;
  b.images = std::min(plan.images, n_batch - b.n0);
  b.oh0 = band * plan.band_rows;
  b.oh1 = std::min(desc_.out_h, b.oh0 + plan.band_rows);
  return b;
}

// dy of group g for the block's images, side by side: row k holds image i at column
// i * out_plane_, rows small_stride_ apart, zero up to the next multiple of 8 columns.
void TbbConv2d::gather_dy(const Block& b, int64_t g, const float* dy, float* gathered) const {
  const Conv2dDesc& d = desc_;
  const int64_t columns = b.columns(d.out_w);
  for (int64_t k = 0; k < kg_; ++k) {
    float* row = gathered + k * small_stride_;
    for (int64_t i = 0; i < b.images; ++i) {
      std::memcpy(row + i * out_plane_,
                  dy + ((b.n0 + i) * d.out_channels + g * kg_ + k) * out_plane_,
                  static_cast<std::size_t>(out_plane_) * sizeof(float));
    }
    std::fill(row + columns, row + round_up(columns, direct::kVector), 0.0f);
  }
  round_in_place(gathered, kg_ * small_stride_);
}

// Runs body(block, workspace) over the blocks of `plan`, in parallel.
template <class Body>
void TbbConv2d::for_each_block(const Plan& plan, int64_t n_batch, const Body& body) {
  tbb::parallel_for(tbb::blocked_range<int64_t>(0, block_count(plan, n_batch), 1),
                    [&](const tbb::blocked_range<int64_t>& range) {
                      Workspace& ws = local_workspace();
                      for (int64_t i = range.begin(); i != range.end(); ++i) {
                        body(block(plan, i, n_batch), ws);
                      }
                    });
}

// ---- forward ----------------------------------------------------------------------------------

void scatter_planes(const float* product, int64_t stride, int64_t images, int64_t plane,
                    int64_t first, int64_t count, int64_t filters, const float* bias, float* y) {
  for (int64_t i = 0; i < images; ++i) {
    for (int64_t k = 0; k < count; ++k) {
      const float* src = product + k * stride + i * plane;
      float* dst = y + (i * filters + first + k) * plane;
      const float beta = bias != nullptr ? bias[first + k] : 0.0f;
      for (int64_t p = 0; p < plane; ++p) dst[p] = src[p] + beta;
    }
  }
}

void TbbConv2d::forward(const Tensor& x, const Tensor& weight, const Tensor* bias, Tensor& y) {
  const Conv2dDesc& d = desc_;
  const int64_t n_batch = conv2d_forward_batch(d, x, weight, bias, y, kName);
  const bool has_bias = bias != nullptr && bias->defined();
  run_pass(packed_forward_floats_, winograd_u_forward_floats_, [&] {
    (this->*forward_->run)(pass_input(*forward_, x, scratch_->rounded_a), pass_weights(weight),
                           has_bias ? bias->data() : nullptr, y.data(), n_batch);
  });
}

// The weights in the direct::pack_rows layout of the direct and small forward kernels.
void TbbConv2d::pack_forward_weights(const float* w) {
  const int64_t stride = direct::packed_size(kg_, rows_);
  for (int64_t g = 0; g < desc_.groups; ++g) {
    const float* wg = w + g * kg_ * rows_;
    direct::pack_rows(
        kg_, rows_, [&](int64_t k, int64_t p) { return wg[k * rows_ + p]; }, packed() + g * stride);
  }
}

void TbbConv2d::forward_direct(const float* x, const float* w, const float* bias, float* y,
                               int64_t n_batch) {
  if (bf16()) {
    // Pair tap q = (channel pair, kernel tap t): channels 2 (q / taps) and the next, tap t.
    const int64_t taps = desc_.kernel_h * desc_.kernel_w;
    for (int64_t g = 0; g < desc_.groups; ++g) {
      const float* wg = w + g * kg_ * rows_;
      bf16::pack_pair_rows(
          kg_, ceil_div(cg_, 2) * taps,
          [&](int64_t k, int64_t q, int64_t h) {
            const int64_t c = 2 * (q / taps) + h;
            return c < cg_ ? wg[k * rows_ + c * taps + q % taps] : 0.0f;
          },
          reinterpret_cast<uint32_t*>(packed() + g * direct::packed_size(kg_, rows_)));
    }
  } else {
    pack_forward_weights(w);
  }
  for_each_block(forward_plan_, n_batch,
                 [&](const Block& b, Workspace& ws) { direct_forward(b.n0, x, bias, y, ws); });
}

void TbbConv2d::forward_polyphase(const float* x, const float* w, const float* bias, float* y,
                                  int64_t n_batch) {
  pack_forward_weights(w);
  for_each_block(forward_plan_, n_batch,
                 [&](const Block& b, Workspace& ws) { polyphase_forward(b.n0, x, bias, y, ws); });
}

void TbbConv2d::forward_small(const float* x, const float* w, const float* bias, float* y,
                              int64_t n_batch) {
  pack_forward_weights(w);
  for_each_block(forward_plan_, n_batch,
                 [&](const Block& b, Workspace& ws) { small_forward(b, x, bias, y, ws); });
}

void TbbConv2d::forward_pointwise(const float* x, const float* w, const float* bias, float* y,
                                  int64_t n_batch) {
  if (pointwise_pairs()) {
    for (int64_t g = 0; g < desc_.groups; ++g) {
      const float* wg = w + g * kg_ * cg_;
      bf16::pack_pair_rows(
          kg_, ceil_div(cg_, 2),
          [&](int64_t k, int64_t q, int64_t h) {
            return 2 * q + h < cg_ ? wg[k * cg_ + 2 * q + h] : 0.0f;
          },
          reinterpret_cast<uint32_t*>(packed() + g * direct::packed_size(kg_, cg_)));
    }
  }
  for_each_block(forward_plan_, n_batch, [&](const Block& b, Workspace& ws) {
    blas_forward(b, x, w, bias, y, ws, /*pointwise=*/true);
  });
}

void TbbConv2d::forward_blas(const float* x, const float* w, const float* bias, float* y,
                             int64_t n_batch) {
  for_each_block(forward_plan_, n_batch, [&](const Block& b, Workspace& ws) {
    blas_forward(b, x, w, bias, y, ws, /*pointwise=*/false);
  });
}

void TbbConv2d::forward_winograd(const float* x, const float* w, const float* bias, float* y,
                                 int64_t n_batch) {
  const Conv2dDesc& d = desc_;
  winograd_convolve(winograd_forward_, false, w, x, {d.in_h, d.in_w}, bias, y, {d.out_h, d.out_w},
                    n_batch);
}

void TbbConv2d::blas_forward(const Block& b, const float* x, const float* w, const float* bias,
                             float* y, Workspace& ws, bool pointwise) const {
  const Conv2dDesc& d = desc_;
  const int64_t cols = b.columns(d.out_w);
  for (int64_t g = 0; g < d.groups; ++g) {
    const float* wg = w + g * kg_ * rows_;
    if (b.images == 1) {
      // The GEMM writes the band of y in place; the bias is put there first and accumulated onto.
      const int64_t n = b.n0;
      float* yg = y + (n * d.out_channels + g * kg_) * out_plane_ + b.oh0 * d.out_w;
      if (bias != nullptr) {
        for (int64_t k = 0; k < kg_; ++k) std::fill_n(yg + k * out_plane_, cols, bias[g * kg_ + k]);
      }
      const float* xg = x + (n * d.in_channels + g * cg_) * in_plane_;
      const float* col = xg;
      int64_t ld = in_plane_;
      if (!pointwise) {
        im2col(d, cg_, xg, b.oh0, b.oh1, ws.col.data(), cols);
        col = ws.col.data();
        ld = cols;
      }
      if (pointwise && pointwise_pairs()) {
        pointwise_pairs(packed() + g * direct::packed_size(kg_, cg_), kg_, xg, cg_, in_plane_,
                        b.oh0 * d.out_w, cols, yg, out_plane_, ws, bias != nullptr);
        continue;
      }
      if (pointwise && bf16()) col = rounded_image(xg, cg_ * in_plane_, ws.col);
      if (pointwise) {  // the image is B: no packing at all (OpenBLAS packs it per call)
        panel::multiply({wg, rows_, 1}, col, ld, kg_, rows_, cols, yg, out_plane_, bias != nullptr);
        continue;
      }
      sgemm(false, false, kg_, cols, rows_, 1.0f, wg, rows_, col, ld, bias ? 1.0f : 0.0f, yg,
            out_plane_);
      continue;
    }
    // Several small images side by side: one wide GEMM, then scatter rows back to NCHW.
    for (int64_t i = 0; i < b.images; ++i) {
      im2col(d, cg_, x + ((b.n0 + i) * d.in_channels + g * cg_) * in_plane_, 0, d.out_h,
             ws.col.data() + i * out_plane_, cols);
    }
    float* product = ws.gathered.data();
    sgemm(false, false, kg_, cols, rows_, 1.0f, wg, rows_, ws.col.data(), cols, 0.0f, product,
          cols);
    scatter_planes(product, cols, b.images, out_plane_, g * kg_, kg_, d.out_channels, bias,
                   y + b.n0 * d.out_channels * out_plane_);
  }
}

void TbbConv2d::small_forward(const Block& b, const float* x, const float* bias, float* y,
                              Workspace& ws) const {
  const Conv2dDesc& d = desc_;
  const int64_t cols = b.columns(d.out_w);
  const int64_t packed_stride = direct::packed_size(kg_, rows_);
  for (int64_t g = 0; g < d.groups; ++g) {
    for (int64_t i = 0; i < b.images; ++i) {
      im2col(d, cg_, x + ((b.n0 + i) * d.in_channels + g * cg_) * in_plane_, 0, d.out_h,
             ws.col.data() + i * out_plane_, small_stride_);
    }
    round_in_place(ws.col.data(), rows_ * small_stride_);
    float* product = ws.gathered.data();
    direct::shifted_gemm(packed() + g * packed_stride, kg_, ws.col.data(), small_offsets_.data(),
                         rows_, cols, product, small_stride_);
    scatter_planes(product, small_stride_, b.images, out_plane_, g * kg_, kg_, d.out_channels, bias,
                   y + b.n0 * d.out_channels * out_plane_);
  }
}

// ---- backward_data ----------------------------------------------------------------------------

void TbbConv2d::backward_data(const Tensor& dy, const Tensor& weight, Tensor& dx) {
  if (!dx.defined()) return;
  const Conv2dDesc& d = desc_;
  const int64_t n_batch = conv2d_data_batch(d, dy, weight, dx, kName);
  run_pass(packed_backward_floats_, winograd_u_data_floats_, [&] {
    (this->*data_->run)(pass_input(*data_, dy, scratch_->rounded_a), pass_weights(weight),
                        dx.data(), n_batch);
  });
}

// Runs body(block, workspace) over data_plan_'s blocks. Bands of one image overlap in dx, so one
// task owns each unit of whole images; `zero`: clear the unit's dx first (col2im adds).
template <class Body>
void TbbConv2d::for_each_data_unit(float* dx, int64_t n_batch, bool zero, const Body& body) {
  const Plan& plan = data_plan_;
  const int64_t image_floats = desc_.in_channels * in_plane_;
  tbb::parallel_for(tbb::blocked_range<int64_t>(0, ceil_div(n_batch, plan.images), 1),
                    [&](const tbb::blocked_range<int64_t>& range) {
                      Workspace& ws = local_workspace();
                      for (int64_t unit = range.begin(); unit != range.end(); ++unit) {
                        const Block first = block(plan, unit * plan.bands, n_batch);
                        if (zero) {
                          std::fill_n(dx + first.n0 * image_floats, first.images * image_floats,
                                      0.0f);
                        }
                        for (int64_t band = 0; band < plan.bands; ++band) {
                          body(block(plan, unit * plan.bands + band, n_batch), ws);
                        }
                      }
                    });
}

void TbbConv2d::data_direct(const float* dy, const float* w, float* dx, int64_t n_batch) {
  // dx = full correlation of dy with the flipped kernel, channels and filters swapped:
  // A[c][(k, t)] = w[k][c][taps - 1 - t] over the kernel's taps t.
  // bf16 (bf16()): pair tap q = (filter pair, tap t), filters 2 (q / taps) and the next.
  const int64_t taps = desc_.kernel_h * desc_.kernel_w;
  const int64_t stride = direct::packed_size(cg_, kg_ * taps);
  for (int64_t g = 0; g < desc_.groups; ++g) {
    const float* wg = w + g * kg_ * rows_;
    const auto tap = [&](int64_t c, int64_t k, int64_t t) {
      return wg[k * rows_ + c * taps + (taps - 1 - t)];
    };
    if (bf16()) {
      bf16::pack_pair_rows(
          cg_, ceil_div(kg_, 2) * taps,
          [&](int64_t c, int64_t q, int64_t h) {
            const int64_t k = 2 * (q / taps) + h;
            return k < kg_ ? tap(c, k, q % taps) : 0.0f;
          },
          reinterpret_cast<uint32_t*>(packed() + g * stride));
    } else {
      direct::pack_rows(
          cg_, kg_ * taps, [&](int64_t c, int64_t p) { return tap(c, p / taps, p % taps); },
          packed() + g * stride);
    }
  }
  for_each_data_unit(dx, n_batch, false, [&](const Block& b, Workspace& ws) {
    direct_backward_data(b.n0, dy, dx, ws);
  });
}

void TbbConv2d::data_polyphase(const float* dy, const float* w, float* dx, int64_t n_batch) {
  pack_polyphase_data_weights(w);
  for_each_data_unit(dx, n_batch, false, [&](const Block& b, Workspace& ws) {
    polyphase_backward_data(b.n0, dy, dx, ws);
  });
}

void TbbConv2d::data_small(const float* dy, const float* w, float* dx, int64_t n_batch) {
  // dcol = W^T dy: A[p][k] = w[k][p].
  const int64_t stride = direct::packed_size(rows_, kg_);
  for (int64_t g = 0; g < desc_.groups; ++g) {
    const float* wg = w + g * kg_ * rows_;
    direct::pack_rows(
        rows_, kg_, [&](int64_t p, int64_t k) { return wg[k * rows_ + p]; }, packed() + g * stride);
  }
  for_each_data_unit(dx, n_batch, true,
                     [&](const Block& b, Workspace& ws) { small_backward_data(b, dy, dx, ws); });
}

void TbbConv2d::data_pointwise(const float* dy, const float* w, float* dx, int64_t n_batch) {
  if (pointwise_pairs()) {  // A[c][filter pair q] = (w[2q][c], w[2q + 1][c])
    for (int64_t g = 0; g < desc_.groups; ++g) {
      const float* wg = w + g * kg_ * cg_;
      bf16::pack_pair_rows(
          cg_, ceil_div(kg_, 2),
          [&](int64_t c, int64_t q, int64_t h) {
            return 2 * q + h < kg_ ? wg[(2 * q + h) * cg_ + c] : 0.0f;
          },
          reinterpret_cast<uint32_t*>(packed() + g * direct::packed_size(cg_, kg_)));
    }
  }
  for_each_data_unit(dx, n_batch, false, [&](const Block& b, Workspace& ws) {
    blas_backward_data(b, dy, w, dx, ws, /*pointwise=*/true);
  });
}

void TbbConv2d::data_blas(const float* dy, const float* w, float* dx, int64_t n_batch) {
  for_each_data_unit(dx, n_batch, true, [&](const Block& b, Workspace& ws) {
    blas_backward_data(b, dy, w, dx, ws, /*pointwise=*/false);
  });
}

void TbbConv2d::data_winograd(const float* dy, const float* w, float* dx, int64_t n_batch) {
  const Conv2dDesc& d = desc_;
  winograd_convolve(winograd_data_, true, w, dy, {d.out_h, d.out_w}, nullptr, dx, {d.in_h, d.in_w},
                    n_batch);
}

void TbbConv2d::blas_backward_data(const Block& b, const float* dy, const float* w, float* dx,
                                   Workspace& ws, bool pointwise) const {
  const Conv2dDesc& d = desc_;
  const int64_t cols = b.columns(d.out_w);
  for (int64_t g = 0; g < d.groups; ++g) {
    const float* wg = w + g * kg_ * rows_;
    if (b.images == 1) {
      const int64_t n = b.n0;
      const float* dyg = dy + (n * d.out_channels + g * kg_) * out_plane_ + b.oh0 * d.out_w;
      float* dxg = dx + (n * d.in_channels + g * cg_) * in_plane_;
      if (pointwise && pointwise_pairs()) {
        pointwise_pairs(packed() + g * direct::packed_size(cg_, kg_), cg_,
                        dy + (n * d.out_channels + g * kg_) * out_plane_, kg_, out_plane_,
                        b.oh0 * d.out_w, cols, dxg + b.oh0 * d.out_w, in_plane_, ws, false);
        continue;
      }
      if (pointwise) {  // dx is the col matrix: write it directly
        const float* a = dyg;
        if (bf16()) {
          a = rounded_image(dy + (n * d.out_channels + g * kg_) * out_plane_, kg_ * out_plane_,
                            ws.gathered) +
              b.oh0 * d.out_w;
        }
        panel::multiply({wg, 1, rows_}, a, out_plane_, cg_, kg_, cols, dxg, in_plane_);
        continue;
      }
      sgemm(true, false, rows_, cols, kg_, 1.0f, wg, rows_, dyg, out_plane_, 0.0f, ws.col.data(),
            cols);
      col2im(d, cg_, ws.col.data(), cols, b.oh0, b.oh1, dxg);
      continue;
    }
    float* gathered = ws.gathered.data();
    for (int64_t i = 0; i < b.images; ++i) {
      for (int64_t k = 0; k < kg_; ++k) {
        std::memcpy(gathered + k * cols + i * out_plane_,
                    dy + ((b.n0 + i) * d.out_channels + g * kg_ + k) * out_plane_,
                    static_cast<std::size_t>(out_plane_) * sizeof(float));
      }
    }
    sgemm(true, false, rows_, cols, kg_, 1.0f, wg, rows_, gathered, cols, 0.0f, ws.col.data(),
          cols);
    for (int64_t i = 0; i < b.images; ++i) {
      col2im(d, cg_, ws.col.data() + i * out_plane_, cols, 0, d.out_h,
             dx + ((b.n0 + i) * d.in_channels + g * cg_) * in_plane_);
    }
  }
}

void TbbConv2d::small_backward_data(const Block& b, const float* dy, float* dx,
                                    Workspace& ws) const {
  const Conv2dDesc& d = desc_;
  const int64_t cols = b.columns(d.out_w);
  const int64_t packed_stride = direct::packed_size(rows_, kg_);
  for (int64_t g = 0; g < d.groups; ++g) {
    gather_dy(b, g, dy, ws.gathered.data());
    direct::shifted_gemm(packed() + g * packed_stride, rows_, ws.gathered.data(),
                         small_offsets_.data(), kg_, cols, ws.col.data(), small_stride_);
    for (int64_t i = 0; i < b.images; ++i) {
      col2im(d, cg_, ws.col.data() + i * out_plane_, small_stride_, 0, d.out_h,
             dx + ((b.n0 + i) * d.in_channels + g * cg_) * in_plane_);
    }
  }
}

// ---- backward_params --------------------------------------------------------------------------

void TbbConv2d::backward_params(const Tensor& x, const Tensor& dy, Tensor& dweight, Tensor* dbias) {
  const bool want_weight = dweight.defined();
  const bool want_bias = dbias != nullptr && dbias->defined();
  if (!want_weight && !want_bias) return;
  const Conv2dDesc& d = desc_;
  const int64_t n_batch = conv2d_params_batch(d, x, dy, dweight, dbias, kName);
  run_pass(0, 0, [&] {
    // bf16 with rounded copies of x and dy: the method's weight gradient from them, the bias
    // gradient here from the float dy (the methods that round their own copies sum the float dy).
    const float* dy_in = want_weight ? pass_input(*params_, dy, scratch_->rounded_b) : dy.data();
    const bool bias_here = want_bias && dy_in != dy.data();
    (this->*params_->run)(want_weight ? pass_input(*params_, x, scratch_->rounded_a) : nullptr,
                          dy_in, want_weight ? dweight.data() : nullptr,
                          want_bias && !bias_here ? dbias->data() : nullptr, n_batch);
    if (bias_here) bias_gradient(dy.data(), dbias->data(), n_batch);
  });
}

const float* TbbConv2d::pass_input(const auto& implementation, const Tensor& t,
                                   std::vector<float>& buffer) {
  if (!bf16() || implementation.rounds_activations) return t.data();
  return rounded(t.data(), t.numel(), buffer);
}

const float* TbbConv2d::pass_weights(const Tensor& w) {
  if (!bf16()) return w.data();
  return rounded(w.data(), w.numel(), scratch_->rounded_weights);
}

const float* TbbConv2d::rounded(const float* in, int64_t n, std::vector<float>& buffer) {
  float* out = grow(buffer, n);
  tbb::parallel_for(tbb::blocked_range<int64_t>(0, ceil_div(n, kRoundGrainFloats)),
                    [&](const tbb::blocked_range<int64_t>& range) {
                      const int64_t first = range.begin() * kRoundGrainFloats;
                      const int64_t end = std::min(n, range.end() * kRoundGrainFloats);
                      round_floats_to_bf16(in + first, end - first, out + first);
                    });
  return out;
}

void TbbConv2d::round_in_place(float* p, int64_t n) const {
  if (bf16()) round_floats_to_bf16(p, n, p);
}

void TbbConv2d::bias_gradient(const float* dy, float* db, int64_t n_batch) const {
  const Conv2dDesc& d = desc_;
  // One task per filter: each sum runs in a fixed order.
  tbb::parallel_for(tbb::blocked_range<int64_t>(0, d.out_channels, 8),
                    [&](const tbb::blocked_range<int64_t>& range) {
                      for (int64_t k = range.begin(); k != range.end(); ++k) {
                        float total = 0.0f;
                        for (int64_t n = 0; n < n_batch; ++n) {
                          total +=
                              sum_floats(dy + (n * d.out_channels + k) * out_plane_, out_plane_);
                        }
                        db[k] = total;
                      }
                    });
}

void TbbConv2d::params_winograd(const float* x, const float* dy, float* dweight, float* dbias,
                                int64_t n_batch) {
  const Conv2dDesc& d = desc_;
  const winograd::Geometry& g = winograd_params_;
  if (dweight != nullptr && winograd_staged(g)) {
    const int64_t images = n_batch * phases_ * phases_;
    const float* x_staged = stage_input(g, x, {d.in_h, d.in_w}, n_batch);
    const float* dy_phases = dy;
    if (phases_ > 1) {
      float* split = grow(scratch_->phase_b, images * g.filters * g.out_h * g.out_w);
      split_phases(dy, n_batch, d.out_channels, {d.out_h, d.out_w}, {0, 0}, split);
      dy_phases = split;
    }
    winograd_backward_weight(g.padded(), x_staged, dy_phases, dweight, images);
  } else if (dweight != nullptr) {
    winograd_backward_weight(g, x, dy, dweight, n_batch);
  }
  if (dbias != nullptr) bias_gradient(dy, dbias, n_batch);
}

void TbbConv2d::params_direct(const float* x, const float* dy, float* dweight, float* dbias,
                              int64_t n_batch) {
  params_by_slices(dy, dweight, dbias, n_batch, [&](const Block& b, float* dw, Workspace& ws) {
    direct_backward_params(b, x, dy, dw, ws);
  });
}

void TbbConv2d::params_polyphase(const float* x, const float* dy, float* dweight, float* dbias,
                                 int64_t n_batch) {
  params_by_slices(dy, dweight, dbias, n_batch, [&](const Block& b, float* dw, Workspace& ws) {
    polyphase_backward_params(b, x, dy, dw, ws);
  });
}

void TbbConv2d::params_small(const float* x, const float* dy, float* dweight, float* dbias,
                             int64_t n_batch) {
  params_by_slices(dy, dweight, dbias, n_batch, [&](const Block& b, float* dw, Workspace& ws) {
    small_backward_params(b, x, dy, dw, ws);
  });
}

void TbbConv2d::params_pointwise(const float* x, const float* dy, float* dweight, float* dbias,
                                 int64_t n_batch) {
  params_by_slices(dy, dweight, dbias, n_batch, [&](const Block& b, float* dw, Workspace& ws) {
    blas_backward_params(b, x, dy, dw, ws, /*pointwise=*/true);
  });
}

void TbbConv2d::params_blas(const float* x, const float* dy, float* dweight, float* dbias,
                            int64_t n_batch) {
  params_by_slices(dy, dweight, dbias, n_batch, [&](const Block& b, float* dw, Workspace& ws) {
    blas_backward_params(b, x, dy, dw, ws, /*pointwise=*/false);
  });
}

// params_plan_'s blocks in contiguous slices, each with its own partial sums; slice 0 accumulates
// into dweight itself. weight_block(block, dw, workspace) adds one block's weight gradient to dw.
// Either gradient may be null (not wanted).
template <class WeightBlock>
void TbbConv2d::params_by_slices(const float* dy, float* dweight, float* dbias, int64_t n_batch,
                                 const WeightBlock& weight_block) {
  const Conv2dDesc& d = desc_;
  const Plan& plan = params_plan_;
  const bool want_weight = dweight != nullptr, want_bias = dbias != nullptr;
  const int64_t blocks = block_count(plan, n_batch);
  const int64_t slices = std::max<int64_t>(1, std::min<int64_t>(blocks, max_slices()));
  const int64_t weight_floats = d.out_channels * rows_;
  std::vector<std::vector<float>>& partial_weight = scratch_->partial_weight;
  std::vector<std::vector<float>>& partial_bias = scratch_->partial_bias;
  grow_each(partial_weight, slices - 1, weight_floats);
  grow_each(partial_bias, slices, d.out_channels);

  tbb::parallel_for(
      tbb::blocked_range<int64_t>(0, slices, 1),
      [&](const tbb::blocked_range<int64_t>& range) {
        Workspace& ws = local_workspace();
        for (int64_t slice = range.begin(); slice != range.end(); ++slice) {
          float* dw = slice == 0 ? dweight : partial_weight[slice - 1].data();
          float* db = partial_bias[slice].data();
          if (want_weight) std::fill_n(dw, weight_floats, 0.0f);
          std::fill_n(db, d.out_channels, 0.0f);
          const int64_t first = slice * blocks / slices, last = (slice + 1) * blocks / slices;
          for (int64_t i = first; i < last; ++i) {
            const Block b = block(plan, i, n_batch);
            if (want_weight) weight_block(b, dw, ws);
            if (want_bias) {
              for (int64_t n = b.n0; n < b.n0 + b.images; ++n) {
                for (int64_t k = 0; k < d.out_channels; ++k) {
                  db[k] += sum_floats(dy + (n * d.out_channels + k) * out_plane_ + b.oh0 * d.out_w,
                                      (b.oh1 - b.oh0) * d.out_w);
                }
              }
            }
          }
        }
      },
      tbb::simple_partitioner());

  // Reduce in slice order, so the result does not depend on which thread ran which slice.
  if (want_weight && slices > 1) {
    tbb::parallel_for(tbb::blocked_range<int64_t>(0, weight_floats, 4096),
                      [&](const tbb::blocked_range<int64_t>& range) {
                        for (int64_t s = 1; s < slices; ++s) {
                          const float* part = partial_weight[s - 1].data();
                          for (int64_t i = range.begin(); i != range.end(); ++i) {
                            dweight[i] += part[i];
                          }
                        }
                      });
  }
  if (want_bias) {
    for (int64_t k = 0; k < d.out_channels; ++k) {
      float total = 0.0f;
      for (int64_t s = 0; s < slices; ++s) total += partial_bias[s][k];
      dbias[k] = total;
    }
  }
}

void TbbConv2d::blas_backward_params(const Block& b, const float* x, const float* dy, float* dw,
                                     Workspace& ws, bool pointwise) const {
  const Conv2dDesc& d = desc_;
  const int64_t cols = b.columns(d.out_w);
  for (int64_t g = 0; g < d.groups; ++g) {
    float* dwg = dw + g * kg_ * rows_;
    if (b.images == 1) {
      const int64_t n = b.n0;
      const float* dyg = dy + (n * d.out_channels + g * kg_) * out_plane_ + b.oh0 * d.out_w;
      const float* xg = x + (n * d.in_channels + g * cg_) * in_plane_;
      const float* col = xg;
      int64_t ld = in_plane_;
      if (!pointwise) {
        im2col(d, cg_, xg, b.oh0, b.oh1, ws.col.data(), cols);
        col = ws.col.data();
        ld = cols;
      }
      if (pointwise && bf16() && !pointwise_pairs()) {
        col = rounded_image(xg, cg_ * in_plane_, ws.col);
        dyg = rounded_image(dy + (n * d.out_channels + g * kg_) * out_plane_, kg_ * out_plane_,
                            ws.gathered) +
              b.oh0 * d.out_w;
      }
      if (pointwise && pointwise_pairs()) {         // dot products of bf16 rows, 32 pixels a step
        const int64_t length = pointwise_stride();  // (cols: the whole plane, one image a block)
        auto* xs = reinterpret_cast<uint16_t*>(ws.gathered.data());
        uint16_t* dys = xs + cg_ * length;
        std::fill_n(xs, (cg_ + kg_) * length, uint16_t{0});
        bf16::convert_rows(col, cg_, cols, ld, xs, length);
        bf16::convert_rows(dyg, kg_, cols, out_plane_, dys, length);
        bf16::shifted_dot_pairs(dys, kg_, length, xs, pointwise_offsets_.data(), cg_,
                                {.length = length}, dwg, rows_);
        continue;
      }
      if (pointwise && cols >= panel::kDotMinDepth) {  // dot products along the image's pixels
        panel::multiply_nt(dyg, out_plane_, col, ld, kg_, rows_, cols, dwg, rows_);
        continue;
      }
      sgemm(false, true, kg_, rows_, cols, 1.0f, dyg, out_plane_, col, ld, 1.0f, dwg, rows_);
      continue;
    }
    float* gathered = ws.gathered.data();
    for (int64_t i = 0; i < b.images; ++i) {
      im2col(d, cg_, x + ((b.n0 + i) * d.in_channels + g * cg_) * in_plane_, 0, d.out_h,
             ws.col.data() + i * out_plane_, cols);
      for (int64_t k = 0; k < kg_; ++k) {
        std::memcpy(gathered + k * cols + i * out_plane_,
                    dy + ((b.n0 + i) * d.out_channels + g * kg_ + k) * out_plane_,
                    static_cast<std::size_t>(out_plane_) * sizeof(float));
      }
    }
    sgemm(false, true, kg_, rows_, cols, 1.0f, gathered, cols, ws.col.data(), cols, 1.0f, dwg,
          rows_);
  }
}

void TbbConv2d::small_backward_params(const Block& b, const float* x, const float* dy, float* dw,
                                      Workspace& ws) const {
  const Conv2dDesc& d = desc_;
  const int64_t cols = b.columns(d.out_w);
  for (int64_t g = 0; g < d.groups; ++g) {
    float* col = ws.col.data();
    for (int64_t i = 0; i < b.images; ++i) {
      im2col(d, cg_, x + ((b.n0 + i) * d.in_channels + g * cg_) * in_plane_, 0, d.out_h,
             col + i * out_plane_, small_stride_);
    }
    // The dot products run to a multiple of kVector columns: zero the tail (0 * garbage may be
    // NaN).
    for (int64_t p = 0; p < rows_; ++p) {
      std::fill(col + p * small_stride_ + cols,
                col + p * small_stride_ + round_up(cols, direct::kVector), 0.0f);
    }
    round_in_place(col, rows_ * small_stride_);
    gather_dy(b, g, dy, ws.gathered.data());
    direct::shifted_dot(ws.gathered.data(), kg_, small_stride_, col, small_offsets_.data(), rows_,
                        {.length = cols}, dw + g * kg_ * rows_, rows_);
  }
}

// ---- winograd ---------------------------------------------------------------------------------

int64_t TbbConv2d::winograd_block(const winograd::Geometry& g) const {
  const int64_t tiles = std::max<int64_t>(8, kWinogradBudgetFloats / (g.elements() * (cg_ + kg_)));
  const int64_t round = tiles >= kWinogradTileRound ? kWinogradTileRound : 8;
  return tiles / round * round;
}

int64_t TbbConv2d::winograd_block(const winograd::Geometry& g, int64_t total) const {
  const int64_t most = winograd_block(g);
  const int64_t threads = allowed_threads();
  const int64_t round = most >= kWinogradTileRound ? kWinogradTileRound : 8;
  // The busiest thread's tiles when the blocks are dealt out one at a time, the last (`rest`
  // tiles) to a thread with the fewest full blocks.
  const auto busiest = [&](int64_t tiles) {
    const int64_t full = (total - 1) / tiles, rest = total - full * tiles;
    return std::max(ceil_div(full, threads) * tiles, full / threads * tiles + rest);
  };
  const double even = static_cast<double>(total) / static_cast<double>(threads);
  int64_t best = most;
  for (int64_t tiles = most; tiles >= round; tiles -= round) {
    if (static_cast<double>(busiest(tiles)) <= kWinogradMaxImbalance * even) return tiles;
    if (busiest(tiles) < busiest(best)) best = tiles;
  }
  return best;
}

float* TbbConv2d::grow(std::vector<float>& buffer, int64_t floats) {
  if (buffer.size() < static_cast<std::size_t>(floats)) {
    buffer.resize(static_cast<std::size_t>(floats));
  }
  return buffer.data();
}

void TbbConv2d::grow_each(std::vector<std::vector<float>>& buffers, int64_t count, int64_t floats) {
  if (buffers.size() < static_cast<std::size_t>(count)) {
    buffers.resize(static_cast<std::size_t>(count));
  }
  for (std::vector<float>& buffer : buffers) grow(buffer, floats);
}

void TbbConv2d::winograd_convolve(const winograd::Geometry& g, bool flip, const float* weight,
                                  const float* in, Extent in_size, const float* bias, float* out,
                                  Extent out_size, int64_t n_batch) {
  float* u = scratch_->winograd_u.data();  // sized by run_pass
  for_each_filter_block(g.filters, g.channels, [&](winograd::Filters range) {
    if (g.tile == 4) {
      winograd::f43::transform_weights(weight, g.filters, g.channels, flip, u, range);
    } else {
      winograd::transform_weights(weight, g.filters, g.channels, flip, u, range);
    }
  });
  if (!winograd_staged(g)) {
    winograd_run(g, u, in, bias, out, n_batch);
    return;
  }
  const winograd::Geometry staged = g.padded();
  const int64_t images = n_batch * phases_ * phases_;
  const float* in_staged = stage_input(g, in, in_size, n_batch);
  if (phases_ == 1) {
    winograd_run(staged, u, in_staged, bias, out, n_batch);
    return;
  }
  float* out_phases = grow(scratch_->phase_b, images * g.filters * g.out_h * g.out_w);
  winograd_run(staged, u, in_staged, bias, out_phases, images);
  merge_phases(out_phases, n_batch, g.filters, out_size, out);
}

const float* TbbConv2d::stage_input(const winograd::Geometry& g, const float* in, Extent in_size,
                                    int64_t n_batch) {
  const winograd::Geometry staged = g.padded();
  const int64_t images = n_batch * phases_ * phases_;
  float* out = grow(scratch_->phase_a, images * g.channels * staged.in_h * staged.in_w);
  split_phases(in, n_batch, g.channels, in_size, {g.pad_h, g.pad_w}, out);
  return out;
}

// Dilated: always (the split is the polyphase method). Undilated: F(2x2) on tile rows shorter than
// its vector run, whose every border tile its input transform would copy element by element (a
// padded copy made 14x14 outputs 8 % faster). F(4x4)'s transform handles the border a patch row
// at a time, and lost 3-5 % to the copy at 28x28 and 56x56 (docs/performance.md).
bool TbbConv2d::winograd_staged(const winograd::Geometry& g) const {
  const bool padded = g.pad_h > 0 || g.pad_w > 0;
  return phases_ > 1 || (padded && g.tile == 2 && g.tiles_w < winograd::kRunTiles);
}

// Image n, channel c, phase (a, b) is plane ((n * P + a) * P + b) * channels + c of the split
// batch: ceil(h / P) x ceil(w / P) pixels, pixel (i, j) being pixel (i * P + a, j * P + b) of the
// image's plane c, or zero where that lies past the plane's end (phases of an extent that P does
// not divide are shorter), inside a border of pad.h rows and pad.w columns of zeros.

namespace {

// Row `a` of every phase (a, b), b < p, from one source row: dst[b][j] = src[j * p + b] for the
// j with j * p + b < width, zero up to `columns`.
void split_row(int64_t p, const float* src, int64_t width, int64_t columns, float* const* dst) {
  if (p == 1) {
    copy_floats(dst[0], src, width);
    zero_floats(dst[0] + width, columns - width);
    return;
  }
  if (p == 2) {
    split_pairs(src, width, dst[0], dst[1]);
    zero_floats(dst[0] + (width + 1) / 2, columns - (width + 1) / 2);
    zero_floats(dst[1] + width / 2, columns - width / 2);
    return;
  }
  for (int64_t b = 0; b < p; ++b) {
    for (int64_t j = 0; j < columns; ++j) dst[b][j] = j * p + b < width ? src[j * p + b] : 0.0f;
  }
}

// The inverse for the merge: dst[j * p + b] = src[b][j] where j * p + b < width.
void merge_row(int64_t p, const float* const* src, int64_t width, float* dst) {
  if (p == 1) return copy_floats(dst, src[0], width);
  if (p == 2) return merge_pairs(src[0], src[1], width, dst);
  for (int64_t k = 0; k < width; ++k) dst[k] = src[k % p][k / p];
}

}  // namespace

void TbbConv2d::split_phases(const float* src, int64_t n_batch, int64_t channels, Extent size,
                             Extent pad, float* dst) const {
  const int64_t p = phases_;
  const int64_t sh = ceil_div(size.h, p), sw = ceil_div(size.w, p);
  const int64_t ph = sh + 2 * pad.h, pw = sw + 2 * pad.w;  // a split plane with its border
  tbb::parallel_for(tbb::blocked_range<int64_t>(0, n_batch * channels, 4),
                    [&](const tbb::blocked_range<int64_t>& range) {
                      float* rows[kMaxPhases];
                      for (int64_t plane = range.begin(); plane != range.end(); ++plane) {
                        const int64_t n = plane / channels, c = plane % channels;
                        const float* whole = src + plane * size.h * size.w;
                        for (int64_t a = 0; a < p; ++a) {
                          float* part[kMaxPhases];
                          for (int64_t b = 0; b < p; ++b) {
                            part[b] = dst + (((n * p + a) * p + b) * channels + c) * ph * pw;
                            zero_floats(part[b], pad.h * pw);
                            zero_floats(part[b] + (pad.h + sh) * pw, pad.h * pw);
                          }
                          for (int64_t i = 0; i < sh; ++i) {
                            for (int64_t b = 0; b < p; ++b) {
                              float* row = part[b] + (pad.h + i) * pw;
                              zero_floats(row, pad.w);
                              zero_floats(row + pad.w + sw, pad.w);
                              rows[b] = row + pad.w;
                            }
                            const int64_t h = i * p + a;
                            if (h < size.h) {
                              split_row(p, whole + h * size.w, size.w, sw, rows);
                            } else {
                              for (int64_t b = 0; b < p; ++b) zero_floats(rows[b], sw);
                            }
                          }
                        }
                      }
                    });
}

void TbbConv2d::merge_phases(const float* src, int64_t n_batch, int64_t channels, Extent size,
                             float* dst) const {
  const int64_t p = phases_;
  const int64_t sh = ceil_div(size.h, p), sw = ceil_div(size.w, p);
  tbb::parallel_for(tbb::blocked_range<int64_t>(0, n_batch * channels, 4),
                    [&](const tbb::blocked_range<int64_t>& range) {
                      const float* rows[kMaxPhases];
                      for (int64_t plane = range.begin(); plane != range.end(); ++plane) {
                        const int64_t n = plane / channels, c = plane % channels;
                        float* whole = dst + plane * size.h * size.w;
                        for (int64_t h = 0; h < size.h; ++h) {
                          const int64_t a = h % p, i = h / p;
                          for (int64_t b = 0; b < p; ++b) {
                            rows[b] = src + ((((n * p + a) * p + b) * channels + c) * sh + i) * sw;
                          }
                          merge_row(p, rows, size.w, whole + h * size.w);
                        }
                      }
                    });
}

void TbbConv2d::winograd_run(const winograd::Geometry& g, const float* u, const float* x,
                             const float* bias, float* y, int64_t n_batch) {
  const int64_t total = n_batch * g.tiles_per_image();
  const int64_t tiles = winograd_block(g, total);
  const int64_t blocks = ceil_div(total, tiles);
  tbb::parallel_for(tbb::blocked_range<int64_t>(0, blocks, 1),
                    [&](const tbb::blocked_range<int64_t>& range) {
                      Workspace& ws = local_workspace();
                      for (int64_t block = range.begin(); block != range.end(); ++block) {
                        const int64_t first = block * tiles;
                        const int64_t count = std::min(tiles, total - first);
                        if (g.tile == 4) {
                          winograd::f43::convolve_tiles(g, u, x, bias, y, first, count,
                                                        ws.col.data(), ws.gathered.data());
                        } else {
                          winograd::convolve_tiles(g, u, x, bias, y, first, count, ws.col.data(),
                                                   ws.gathered.data());
                        }
                      }
                    });
}

void TbbConv2d::winograd_backward_weight(const winograd::Geometry& g, const float* x,
                                         const float* dy, float* dweight, int64_t n_batch) {
  const int64_t total = n_batch * g.tiles_per_image();
  const int64_t tiles = winograd_block(g);
  const int64_t blocks = ceil_div(total, tiles);
  const int64_t slices = std::max<int64_t>(1, std::min<int64_t>(blocks, allowed_threads()));
  // Each slice's transformed gradient: the first `floats` of a shared buffer (it may be longer).
  const int64_t floats = g.elements() * cg_ * kg_;
  std::vector<std::vector<float>>& du = scratch_->winograd_du;
  grow_each(du, slices, floats);
  tbb::parallel_for(
      tbb::blocked_range<int64_t>(0, slices, 1),
      [&](const tbb::blocked_range<int64_t>& range) {
        Workspace& ws = local_workspace();
        for (int64_t slice = range.begin(); slice != range.end(); ++slice) {
          float* part = du[slice].data();
          std::fill_n(part, floats, 0.0f);
          for (int64_t block = slice * blocks / slices; block < (slice + 1) * blocks / slices;
               ++block) {
            const int64_t first = block * tiles;
            const int64_t count = std::min(tiles, total - first);
            if (g.tile == 4) {
              winograd::f43::accumulate_weight_gradient(g, x, dy, first, count, ws.col.data(),
                                                        ws.gathered.data(), part);
            } else {
              winograd::accumulate_weight_gradient(g, x, dy, first, count, ws.col.data(),
                                                   ws.gathered.data(), part);
            }
          }
        }
      },
      tbb::simple_partitioner());
  // Reduce in slice order (each element's sum in the same order on any thread count), then
  // transform back to 3x3 filters.
  float* sum = du[0].data();
  tbb::parallel_for(tbb::blocked_range<int64_t>(0, floats, kReduceGrainFloats),
                    [&](const tbb::blocked_range<int64_t>& range) {
                      for (int64_t slice = 1; slice < slices; ++slice) {
                        const float* part = du[slice].data();
                        for (int64_t i = range.begin(); i != range.end(); ++i) sum[i] += part[i];
                      }
                    });
  if (g.tile == 4) {
    // F(4x4) summed dU transposed (winograd.hpp): back to filters x channels, then to 3x3 filters.
    float* summed = grow(scratch_->winograd_u, floats);
    const int64_t plane = cg_ * kg_;
    tbb::parallel_for(tbb::blocked_range<int64_t>(0, g.elements()),
                      [&](const tbb::blocked_range<int64_t>& range) {
                        for (int64_t xi = range.begin(); xi != range.end(); ++xi) {
                          winograd::f43::transpose_plane(sum + xi * plane, kg_, cg_,
                                                         summed + xi * plane);
                        }
                      });
    for_each_filter_block(kg_, cg_, [&](winograd::Filters range) {
      winograd::f43::weight_gradient(summed, kg_, cg_, dweight, range);
    });
  } else {
    for_each_filter_block(kg_, cg_, [&](winograd::Filters range) {
      winograd::weight_gradient(sum, kg_, cg_, dweight, range);
    });
  }
}

// The per-filter transforms between 3x3 filters and Winograd's U (each filter's independent of
// the others'), split over tasks of about kFilterTaskPairs filter-channel pairs.
template <class Run>
void TbbConv2d::for_each_filter_block(int64_t filters, int64_t channels, const Run& run) {
  const int64_t grain = std::max<int64_t>(1, kFilterTaskPairs / channels);
  tbb::parallel_for(tbb::blocked_range<int64_t>(0, filters, grain),
                    [&](const tbb::blocked_range<int64_t>& range) {
                      run(winograd::Filters{range.begin(), range.end()});
                    });
}

// ---- depthwise --------------------------------------------------------------------------------

// Half a page (mod 4 KiB) past the first region's end. The tap loops load from one of the two
// regions and store to the other a little behind: at a distance near a multiple of 4 KiB the
// loads wait on those stores (4K aliasing; backward_data lost a fifth of its time to it at 28x28).
int64_t TbbConv2d::depthwise_wide_offset() const {
  constexpr int64_t kPageFloats = 1024;
  return round_up(std::max(depthwise::padded_floats(depthwise_plan_),
                           kg_ * depthwise::weight_scratch_floats(depthwise_plan_)),
                  kPageFloats) +
         kPageFloats / 2;
}

int64_t TbbConv2d::depthwise_dy_offset() const {
  return depthwise_wide_offset() + round_up(std::max(depthwise::wide_floats(depthwise_plan_),
                                                     depthwise::grad_floats(depthwise_plan_)),
                                            16);
}

TbbConv2d::Planes TbbConv2d::depthwise_dy(const float* dy, int64_t count, Workspace& ws) const {
  const int64_t stride = desc_.out_channels * out_plane_;
  if (!bf16()) return {dy, stride};
  float* rounded = ws.gathered.data() + depthwise_dy_offset();
  for (int64_t i = 0; i < count; ++i) {
    round_floats_to_bf16(dy + i * stride, out_plane_, rounded + i * out_plane_);
  }
  return {rounded, out_plane_};
}

void TbbConv2d::depthwise_pad(const float* x, int64_t count, float* padded) const {
  depthwise::pad_planes(desc_, depthwise_plan_, x, desc_.in_channels * in_plane_, count, padded);
  round_in_place(padded, depthwise::padded_floats(depthwise_plan_));
}

int64_t TbbConv2d::depthwise_grain() const {
  const Conv2dDesc& d = desc_;
  const int64_t macs =
      std::max<int64_t>(1, kg_ * depthwise_plan_.stack * out_plane_ * d.kernel_h * d.kernel_w);
  return std::max<int64_t>(1, kDepthwiseTaskMacs / macs);
}

template <class Body>
void TbbConv2d::for_depthwise_blocks(int64_t n_batch, const Body& body) {
  const int64_t stack = depthwise_plan_.stack, blocks = (n_batch + stack - 1) / stack;
  const int64_t groups = desc_.groups;
  tbb::parallel_for(tbb::blocked_range<int64_t>(0, blocks * groups, depthwise_grain()),
                    [&](const tbb::blocked_range<int64_t>& range) {
                      Workspace& ws = local_workspace();
                      for (int64_t task = range.begin(); task != range.end(); ++task) {
                        const int64_t n = task / groups * stack;
                        body(ws, n, std::min(stack, n_batch - n), task % groups);
                      }
                    });
}

void TbbConv2d::depthwise_forward(const float* x, const float* w, const float* bias, float* y,
                                  int64_t n_batch) {
  const Conv2dDesc& d = desc_;
  const int64_t taps = d.kernel_h * d.kernel_w;
  for_depthwise_blocks(n_batch, [&](Workspace& ws, int64_t n, int64_t count, int64_t g) {
    float* padded = ws.gathered.data();
    depthwise_pad(x + (n * d.in_channels + g) * in_plane_, count, padded);
    for (int64_t k = g * kg_; k < (g + 1) * kg_; ++k) {
      depthwise::forward_planes(d, depthwise_plan_, padded, count, w + k * taps,
                                bias != nullptr ? bias[k] : 0.0f,
                                y + (n * d.out_channels + k) * out_plane_,
                                d.out_channels * out_plane_, padded + depthwise_wide_offset());
    }
  });
}

void TbbConv2d::depthwise_backward_data(const float* dy, const float* w, float* dx,
                                        int64_t n_batch) {
  const Conv2dDesc& d = desc_;
  const int64_t taps = d.kernel_h * d.kernel_w;
  for_depthwise_blocks(n_batch, [&](Workspace& ws, int64_t n, int64_t count, int64_t g) {
    float* padded = ws.gathered.data();
    for (int64_t k = g * kg_; k < (g + 1) * kg_; ++k) {
      const Planes planes = depthwise_dy(dy + (n * d.out_channels + k) * out_plane_, count, ws);
      depthwise::backward_data_planes(d, depthwise_plan_, planes.data, planes.stride, count,
                                      w + k * taps, k > g * kg_, padded,
                                      padded + depthwise_wide_offset());
    }
    depthwise::crop_planes(d, depthwise_plan_, padded, count,
                           dx + (n * d.in_channels + g) * in_plane_, d.in_channels * in_plane_);
  });
}

void TbbConv2d::depthwise_backward_params(const float* x, const float* dy, float* dw, float* db,
                                          int64_t n_batch) {
  const Conv2dDesc& d = desc_;
  const int64_t taps = d.kernel_h * d.kernel_w, stack = depthwise_plan_.stack;
  // fp32: the bias gradient's sums ride along in the weight gradient's pass over dy. bf16: that
  // pass reads dy rounded to bf16, and the bias gradient sums the float dy (docs/precision.md),
  // in a pass of its own; as it does without a weight gradient (and maybe without x).
  const bool fused_bias = db != nullptr && dw != nullptr && d.precision == Precision::kFp32;
  // One task per group: each filter's sums over the batch run in a fixed order.
  tbb::parallel_for(
      tbb::blocked_range<int64_t>(0, d.groups, 1), [&](const tbb::blocked_range<int64_t>& range) {
        Workspace& ws = local_workspace();
        float* acc = ws.gathered.data();  // the group's filters' tap sums, one after another
        const int64_t scratch = depthwise::weight_scratch_floats(depthwise_plan_);
        for (int64_t g = range.begin(); g != range.end(); ++g) {
          if (db != nullptr && !fused_bias) {
            for (int64_t k = g * kg_; k < (g + 1) * kg_; ++k) {
              float total = 0.0f;
              for (int64_t n = 0; n < n_batch; ++n) {
                total += sum_floats(dy + (n * d.out_channels + k) * out_plane_, out_plane_);
              }
              db[k] = total;
            }
          }
          if (dw == nullptr) continue;
          std::fill_n(acc, kg_ * scratch, 0.0f);
          for (int64_t n = 0; n < n_batch; n += stack) {
            const int64_t count = std::min(stack, n_batch - n);
            // The next block's planes: runs of a plane or two, a whole image apart.
            for (int64_t i = n + stack; i < std::min(n_batch, n + 2 * stack); ++i) {
              prefetch_floats(x + (i * d.in_channels + g) * in_plane_, in_plane_);
              prefetch_floats(dy + (i * d.out_channels + g * kg_) * out_plane_, kg_ * out_plane_);
            }
            // Padded once for all the group's filters.
            depthwise_pad(x + (n * d.in_channels + g) * in_plane_, count, ws.col.data());
            for (int64_t j = 0; j < kg_; ++j) {
              const Planes planes =
                  depthwise_dy(dy + (n * d.out_channels + g * kg_ + j) * out_plane_, count, ws);
              depthwise::accumulate_weight_planes(
                  d, depthwise_plan_, ws.col.data(), planes.data, planes.stride, count, fused_bias,
                  acc + j * scratch, ws.gathered.data() + depthwise_wide_offset());
            }
          }
          for (int64_t j = 0; j < kg_; ++j) {
            const int64_t k = g * kg_ + j;
            depthwise::reduce_weight(depthwise_plan_, acc + j * scratch, dw + k * taps,
                                     fused_bias ? db + k : nullptr);
          }
        }
      });
}

// ---- direct -----------------------------------------------------------------------------------

void TbbConv2d::pad_input(const float* x, float* padded) const {
  const Conv2dDesc& d = desc_;
  std::fill_n(padded, cg_ * padded_h_ * padded_w_ + kSlackFloats + d.kernel_w * d.dilation_w, 0.0f);
  for (int64_t c = 0; c < cg_; ++c) {
    for (int64_t h = 0; h < d.in_h; ++h) {
      std::copy_n(x + (c * d.in_h + h) * d.in_w, d.in_w,
                  padded + (c * padded_h_ + h + d.pad_h) * padded_w_ + d.pad_w);
    }
  }
}

void TbbConv2d::direct_forward(int64_t n, const float* x, const float* bias, float* y,
                               Workspace& ws) const {
  const Conv2dDesc& d = desc_;
  // Output pixel (oh, ow) is column oh * padded_w_ + ow of the wide output.
  const int64_t wide_stride = d.out_h * padded_w_;
  const int64_t columns = direct::wide_columns(d.out_h, d.out_w, padded_w_);
  const int64_t packed_stride = direct::packed_size(kg_, rows_);
  const bool by_rows = direct::by_rows(d.out_h, d.out_w, padded_w_);
  for (int64_t g = 0; g < d.groups; ++g) {
    const float* xg = x + (n * d.in_channels + g * cg_) * in_plane_;
    if (bf16()) {
      pad_pairs(xg, cg_, in_plane_, d.in_h, d.in_w, {padded_h_, padded_w_}, d.pad_h, d.pad_w,
                d.pad_w, d.pad_w + d.in_w,
                ceil_div(cg_, 2) * padded_h_ * padded_w_ + kSlackFloats + d.kernel_w * d.dilation_w,
                ws.col.data());
    } else {
      pad_input(xg, ws.col.data());
    }
    const float* w = packed() + g * packed_stride;
    if (by_rows) {
      float* out = y + (n * d.out_channels + g * kg_) * out_plane_;
      direct_product_rows(true, w, kg_, ws.col.data(), padded_w_, d.out_h, d.out_w, out,
                          out_plane_);
      for (int64_t k = 0; bias != nullptr && k < kg_; ++k) {
        float* plane = out + k * out_plane_;
        for (int64_t i = 0; i < out_plane_; ++i) plane[i] += bias[g * kg_ + k];
      }
      continue;
    }
    float* wide = ws.gathered.data();
    direct_product(true, w, kg_, ws.col.data(), columns, wide, wide_stride);
    crop_wide(n, g, wide, wide_stride, padded_w_, bias, y);
  }
}

void TbbConv2d::crop_wide(int64_t n, int64_t g, const float* wide, int64_t wide_stride, int64_t row,
                          const float* bias, float* y) const {
  const Conv2dDesc& d = desc_;
  for (int64_t k = 0; k < kg_; ++k) {
    const float beta = bias != nullptr ? bias[g * kg_ + k] : 0.0f;
    float* out = y + (n * d.out_channels + g * kg_ + k) * out_plane_;
    for (int64_t oh = 0; oh < d.out_h; ++oh) {
      const float* src = wide + k * wide_stride + oh * row;
      float* dst = out + oh * d.out_w;
      for (int64_t ow = 0; ow < d.out_w; ++ow) dst[ow] = src[ow] + beta;
    }
  }
}

void TbbConv2d::pad_dy(int64_t n, int64_t g, const float* dy, Extent size, int64_t top,
                       int64_t left, int64_t floats, float* padded) const {
  const Conv2dDesc& d = desc_;
  std::fill_n(padded, floats, 0.0f);
  // dy rows land at top + oh (top < 0 crops: padding wider than the kernel's reach means some dy
  // rows are never read), columns likewise.
  int64_t ow_lo, ow_hi;
  valid_columns(-left, 1, d.out_w, size.w, ow_lo, ow_hi);  // padded columns that hold dy
  for (int64_t k = 0; k < kg_; ++k) {
    const float* plane = dy + (n * d.out_channels + g * kg_ + k) * out_plane_;
    for (int64_t a = std::max<int64_t>(0, top); a < std::min(size.h, top + d.out_h); ++a) {
      const float* src = plane + (a - top) * d.out_w;
      float* dst = padded + (k * size.h + a) * size.w;
      for (int64_t b = ow_lo; b < ow_hi; ++b) dst[b] = src[b - left];
    }
  }
  round_in_place(padded, floats);
}

void TbbConv2d::widen_dy(int64_t n, int64_t g, const float* dy, int64_t row, int64_t row_stride,
                         float* wide) const {
  const Conv2dDesc& d = desc_;
  std::fill_n(wide, kg_ * row_stride, 0.0f);
  for (int64_t k = 0; k < kg_; ++k) {
    const float* plane = dy + (n * d.out_channels + g * kg_ + k) * out_plane_;
    for (int64_t oh = 0; oh < d.out_h; ++oh) {
      copy_floats(wide + k * row_stride + oh * row, plane + oh * d.out_w, d.out_w);
    }
  }
  round_in_place(wide, kg_ * row_stride);
}

void TbbConv2d::pad_pairs(const float* src, int64_t planes, int64_t plane, int64_t rows,
                          int64_t width, Extent size, int64_t top, int64_t left, int64_t lo,
                          int64_t hi, int64_t words, float* out) const {
  std::fill_n(out, words, 0.0f);  // (zero bits: zero words)
  auto* pairs = reinterpret_cast<uint32_t*>(out);
  for (int64_t q = 0; 2 * q < planes; ++q) {
    const float* first = src + 2 * q * plane;
    const float* second = 2 * q + 1 < planes ? first + plane : nullptr;
    const int64_t a0 = std::max<int64_t>(0, top), a1 = std::min(size.h, top + rows);
    if (a1 <= a0) continue;
    const int64_t from = (a0 - top) * width + lo - left;
    bf16::interleave_rows(first + from, second != nullptr ? second + from : nullptr, a1 - a0,
                          hi - lo, width, pairs + (q * size.h + a0) * size.w + lo, size.w);
  }
}

const float* TbbConv2d::rounded_image(const float* src, int64_t n,
                                      std::vector<float>& buffer) const {
  round_floats_to_bf16(src, n, buffer.data());  // sized by prepare_pointwise
  return buffer.data();
}

void TbbConv2d::pointwise_pairs(const float* packed_pairs, int64_t rows, const float* src,
                                int64_t planes, int64_t plane, int64_t first, int64_t columns,
                                float* c, int64_t ldc, Workspace& ws, bool accumulate) const {
  const int64_t stride = pointwise_stride(), pairs = ceil_div(planes, 2);
  auto* words = reinterpret_cast<uint32_t*>(ws.col.data());
  std::fill_n(ws.col.data() + pairs * stride, kSlackFloats, 0.0f);  // read past the last plane
  for (int64_t q = 0; q < pairs; ++q) {
    const float* a = src + 2 * q * plane + first;
    bf16::interleave_rows(a, 2 * q + 1 < planes ? a + plane : nullptr, 1, columns, 0,
                          words + q * stride, 0);
  }
  bf16::shifted_gemm_pairs(reinterpret_cast<const uint32_t*>(packed_pairs), rows, words,
                           pointwise_offsets_.data(), pairs, columns, c, ldc, accumulate);
}

void TbbConv2d::direct_product(bool forward, const float* a, int64_t rows, const float* b,
                               int64_t columns, float* c, int64_t ldc) const {
  const int64_t taps = desc_.kernel_h * desc_.kernel_w;
  // The taps' offsets: channel (filter) c's are those of pair plane c too (the pair planes are as
  // large as the planes), so the first half of the table serves the pairs.
  const int32_t* offsets = (forward ? forward_offsets_ : backward_offsets_).data();
  const int64_t planes = forward ? cg_ : kg_;
  if (!bf16()) {
    direct::shifted_gemm(a, rows, b, offsets, planes * taps, columns, c, ldc);
    return;
  }
  bf16::shifted_gemm_pairs(reinterpret_cast<const uint32_t*>(a), rows,
                           reinterpret_cast<const uint32_t*>(b), offsets,
                           ceil_div(planes, 2) * taps, columns, c, ldc, false);
}

void TbbConv2d::direct_product_rows(bool forward, const float* a, int64_t rows, const float* b,
                                    int64_t b_stride, int64_t out_rows, int64_t width, float* c,
                                    int64_t ldc) const {
  for (int64_t i = 0; i < out_rows; ++i) {
    direct_product(forward, a, rows, b + i * b_stride, width, c + i * width, ldc);
  }
}

void TbbConv2d::direct_backward_data(int64_t n, const float* dy, float* dx, Workspace& ws) const {
  const Conv2dDesc& d = desc_;
  const int64_t taps = d.kernel_h * d.kernel_w;
  const int64_t wide_stride = d.in_h * dy_w_;
  const int64_t columns = direct::wide_columns(d.in_h, d.in_w, dy_w_);
  const int64_t packed_stride = direct::packed_size(cg_, kg_ * taps);
  const bool by_rows = direct::by_rows(d.in_h, d.in_w, dy_w_);
  for (int64_t g = 0; g < d.groups; ++g) {
    float* padded = ws.col.data();
    const int64_t slack = kSlackFloats + d.kernel_w * d.dilation_w;
    if (bf16()) {
      int64_t lo, hi;
      valid_columns(-dy_left_, 1, d.out_w, dy_w_, lo, hi);
      pad_pairs(dy + (n * d.out_channels + g * kg_) * out_plane_, kg_, out_plane_, d.out_h, d.out_w,
                {dy_h_, dy_w_}, dy_top_, dy_left_, lo, hi, ceil_div(kg_, 2) * dy_h_ * dy_w_ + slack,
                padded);
    } else {
      pad_dy(n, g, dy, {dy_h_, dy_w_}, dy_top_, dy_left_, kg_ * dy_h_ * dy_w_ + slack, padded);
    }
    const float* w = packed() + g * packed_stride;
    if (by_rows) {
      direct_product_rows(false, w, cg_, padded, dy_w_, d.in_h, d.in_w,
                          dx + (n * d.in_channels + g * cg_) * in_plane_, in_plane_);
      continue;
    }
    float* wide = ws.gathered.data();
    direct_product(false, w, cg_, padded, columns, wide, wide_stride);
    for (int64_t c = 0; c < cg_; ++c) {
      float* out = dx + (n * d.in_channels + g * cg_ + c) * in_plane_;
      for (int64_t h = 0; h < d.in_h; ++h) {
        std::copy_n(wide + c * wide_stride + h * dy_w_, d.in_w, out + h * d.in_w);
      }
    }
  }
}

void TbbConv2d::direct_backward_params(const Block& b, const float* x, const float* dy, float* dw,
                                       Workspace& ws) const {
  const Conv2dDesc& d = desc_;
  // dy's rows `row` floats apart, zero past out_w: a dot product per row (by_rows), or one over
  // the wide output (rows as wide as the padded input). bf16 (bf16()): the dot products
  // run 32 values at a time on bf16 copies (bf16::shifted_dot_pairs).
  const int64_t block = bf16() ? 32 : direct::kVector;
  const bool by_rows = direct::by_rows(d.out_h, d.out_w, padded_w_, block);
  const int64_t row = by_rows ? round_up(d.out_w, block) : padded_w_;
  const int64_t plane = by_rows ? d.out_h * row : round_up(d.out_h * padded_w_, block);
  const direct::DotRuns runs{.length = by_rows ? row : plane,
                             .images = b.images,
                             .a_image_stride = kg_ * plane,
                             .b_image_stride = padded_stride_,
                             .segments = by_rows ? d.out_h : 1,
                             .a_segment_stride = row,
                             .b_segment_stride = padded_w_};
  for (int64_t g = 0; g < d.groups; ++g) {
    for (int64_t i = 0; i < b.images; ++i) {
      const int64_t n = b.n0 + i;
      const float* xg = x + (n * d.in_channels + g * cg_) * in_plane_;
      if (bf16()) {
        auto* padded = reinterpret_cast<uint16_t*>(ws.col.data()) + i * padded_stride_;
        std::fill_n(padded, padded_stride_, uint16_t{0});
        for (int64_t c = 0; c < cg_; ++c) {
          bf16::convert_rows(xg + c * in_plane_, d.in_h, d.in_w, d.in_w,
                             padded + (c * padded_h_ + d.pad_h) * padded_w_ + d.pad_w, padded_w_);
        }
        auto* wide = reinterpret_cast<uint16_t*>(ws.gathered.data()) + i * runs.a_image_stride;
        std::fill_n(wide, runs.a_image_stride, uint16_t{0});
        for (int64_t k = 0; k < kg_; ++k) {
          bf16::convert_rows(dy + (n * d.out_channels + g * kg_ + k) * out_plane_, d.out_h, d.out_w,
                             d.out_w, wide + k * plane, row);
        }
      } else {
        pad_input(xg, ws.col.data() + i * padded_stride_);
        widen_dy(n, g, dy, row, plane, ws.gathered.data() + i * runs.a_image_stride);
      }
    }
    // One pass over all the block's images: the accumulators are reduced once per block.
    if (bf16()) {
      bf16::shifted_dot_pairs(reinterpret_cast<const uint16_t*>(ws.gathered.data()), kg_, plane,
                              reinterpret_cast<const uint16_t*>(ws.col.data()),
                              forward_offsets_.data(), rows_, runs, dw + g * kg_ * rows_, rows_);
    } else {
      direct::shifted_dot(ws.gathered.data(), kg_, plane, ws.col.data(), forward_offsets_.data(),
                          rows_, runs, dw + g * kg_ * rows_, rows_);
    }
  }
}

// ---- lanes: lanes::kLanes images across the vector lanes (lanes.hpp) ---------------------------

void TbbConv2d::forward_lanes(const float* x, const float* w, const float* bias, float* y,
                              int64_t n_batch) {
  const int64_t stride = rows_ * lanes_forward_.lda;
  for (int64_t g = 0; g < desc_.groups; ++g) {
    lanes::pack_forward(desc_, lanes_forward_, w + g * kg_ * rows_, packed() + g * stride);
  }
  for_each_block(forward_plan_, n_batch,
                 [&](const Block& b, Workspace&) { lanes_forward_block(b, x, bias, y); });
}

void TbbConv2d::data_lanes(const float* dy, const float* w, float* dx, int64_t n_batch) {
  const int64_t stride = kg_ * desc_.kernel_h * desc_.kernel_w * lanes_data_.lda;
  for (int64_t g = 0; g < desc_.groups; ++g) {
    lanes::pack_data(desc_, lanes_data_, w + g * kg_ * rows_, packed() + g * stride);
  }
  for_each_data_unit(dx, n_batch, false,
                     [&](const Block& b, Workspace&) { lanes_data_block(b, dy, dx); });
}

void TbbConv2d::params_lanes(const float* x, const float* dy, float* dweight, float* dbias,
                             int64_t n_batch) {
  params_by_slices(dy, dweight, dbias, n_batch, [&](const Block& b, float* dw, Workspace&) {
    lanes_params_block(b, x, dy, dw);
  });
}

template <class Body>
void TbbConv2d::for_lanes_groups(int64_t group_macs, const Body& body) {
  const int64_t groups = desc_.groups;
  const int64_t grain =
      std::max<int64_t>(1, kLanesTaskMacs / std::max<int64_t>(1, group_macs * lanes::kLanes));
  if (groups <= grain) {
    body(int64_t{0}, groups, local_workspace());
    return;
  }
  tbb::parallel_for(tbb::blocked_range<int64_t>(0, groups, grain),
                    [&](const tbb::blocked_range<int64_t>& range) {
                      body(range.begin(), range.end(), local_workspace());
                    });
}

void TbbConv2d::lanes_forward_block(const Block& b, const float* x, const float* bias, float* y) {
  const Conv2dDesc& d = desc_;
  lanes_product_block(lanes_forward_, rows_ * lanes_forward_.lda, b, {x, d.in_channels, cg_},
                      {d.in_h, d.in_w}, bias, {y, d.out_channels, kg_});
}

void TbbConv2d::lanes_data_block(const Block& b, const float* dy, float* dx) {
  const Conv2dDesc& d = desc_;
  lanes_product_block(lanes_data_, kg_ * d.kernel_h * d.kernel_w * lanes_data_.lda, b,
                      {dy, d.out_channels, kg_}, {d.out_h, d.out_w}, nullptr,
                      {dx, d.in_channels, cg_});
}

void TbbConv2d::lanes_product_block(const lanes::ProductPass& p, int64_t packed_stride,
                                    const Block& b, LanesPlanes<const float> in, Extent in_extent,
                                    const float* bias, LanesPlanes<float> out) {
  const int64_t in_plane = in_extent.h * in_extent.w, out_plane = p.out.h * p.out.w;
  for_lanes_groups(p.multiply_adds(), [&](int64_t g0, int64_t g1, Workspace& ws) {
    for (int64_t g = g0; g < g1; ++g) {
      lanes::interleave(in.data + (b.n0 * in.channels + g * in.per_group) * in_plane, b.images,
                        in.channels * in_plane, in_extent.h, in_extent.w, p.in, p.top, p.left,
                        ws.col.data(), g == g0);
      round_in_place(ws.col.data(), p.in.floats());
      lanes::run(p, packed() + g * packed_stride, ws.col.data(), ws.gathered.data());
      lanes::deinterleave(ws.gathered.data(), p.out, b.images, out.channels * out_plane,
                          bias != nullptr ? bias + g * out.per_group : nullptr,
                          out.data + (b.n0 * out.channels + g * out.per_group) * out_plane);
    }
  });
}

void TbbConv2d::lanes_params_block(const Block& b, const float* x, const float* dy, float* dw) {
  const Conv2dDesc& d = desc_;
  const lanes::WeightPass& p = lanes_params_;
  for_lanes_groups(p.multiply_adds(), [&](int64_t g0, int64_t g1, Workspace& ws) {
    for (int64_t g = g0; g < g1; ++g) {
      lanes::interleave(x + (b.n0 * d.in_channels + g * cg_) * in_plane_, b.images,
                        d.in_channels * in_plane_, d.in_h, d.in_w, p.x, p.top, p.left,
                        ws.col.data(), g == g0);
      lanes::interleave(dy + (b.n0 * d.out_channels + g * kg_) * out_plane_, b.images,
                        d.out_channels * out_plane_, d.out_h, d.out_w, p.dy, 0, 0,
                        ws.gathered.data());
      round_in_place(ws.col.data(), p.x.floats());
      round_in_place(ws.gathered.data(), p.dy.floats());
      lanes::run(p, ws.gathered.data(), ws.col.data(), dw + g * kg_ * rows_, rows_);
    }
  });
}

}  // namespace strata::tbb_backend
