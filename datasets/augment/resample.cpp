// datasets/augment/resample.cpp: resize_region(), antialiased bilinear resizing through
// stb_image_resize (libstb-dev), matching PIL's BILINEAR (torchvision's antialiased resize).
//
// HOW IT MATCHES PIL
//   PIL's BILINEAR resize is separable: each output pixel is a weighted mean of the input pixels
//   under a triangle ("tent") filter centred on it, the tent stretched by the scale factor when
//   shrinking (that is the antialiasing) and one input pixel wide when enlarging; weights are
//   taken at input pixel centres, and where the tent reaches past the image border the weights of
//   the missing pixels are dropped and the rest renormalized to sum to 1.
//   stb_image_resize's STBIR_FILTER_TRIANGLE computes the same weights (the same tent, the same
//   pixel-centre sampling, in both directions), but every one of its edge modes fills the missing
//   pixels (clamp, reflect, wrap) or counts them as zero while keeping their weight (EDGE_ZERO).
//   With EDGE_ZERO the result is sum(w * x over the pixels inside) / sum(w over all pixels), so
//   dividing it by the same resize of an image of ones, which is sum(w inside) / sum(w all),
//   gives exactly PIL's renormalized value. Both passes being separable, the image of ones is the
//   outer product of the 1-D resizes of a row of ones and a column of ones (two tiny stb calls).
//
// SPEED AND MEMORY
//   Planar channels are interleaved into groups of up to 4 (one copy of the region), because stb's
//   loops specialized for 1 to 4 interleaved channels are about 2.5 times faster on an RGB image
//   than three 1-channel calls. stb allocates one working block per call through STBIR_MALLOC;
//   here that, and the interleaved buffers, are per-thread buffers that only grow, so a loader
//   thread allocates nothing once it has seen its largest image.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "augment_common.hpp"
#include "strata/error.hpp"

namespace {

// A growing per-thread block for stb's working memory (stb frees it before returning).
void* arena_allocate(std::size_t size, void* context) {
  auto& arena = *static_cast<std::vector<unsigned char>*>(context);
  if (arena.size() < size) arena.resize(size);
  return arena.data();
}

}  // namespace

#define STBIR_MALLOC(size, context) arena_allocate((size), (context))
#define STBIR_FREE(pointer, context) ((void)(pointer), (void)(context))
// stb checks with assert() that the filter weights of each output pixel sum to within 10 % of 1
// before it rescales them to 1; that check fails for about one in ten downscaling ratios
// (7 -> 5, 9 -> 7, ...) although the result is right (tests/scripts/transforms_vs_torchvision.py
// sweeps the sizes). Left on, it would abort builds without NDEBUG.
#define STBIR_ASSERT(condition) ((void)0)
#define STB_IMAGE_RESIZE_IMPLEMENTATION
#define STB_IMAGE_RESIZE_STATIC
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wunused-but-set-variable"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wimplicit-fallthrough"
#pragma GCC diagnostic ignored "-Wpedantic"
#include <stb/stb_image_resize.h>
#pragma GCC diagnostic pop

namespace strata::augment {
namespace {

// stb has loops specialized for 1 to 4 interleaved channels, about 2.5 times faster on 3
// channels than three 1-channel calls; planar images are resized in groups of up to 4 channels.
constexpr int64_t kGroup = 4;

// One stb resize of an image of `channels` interleaved float channels (rows `in_stride` floats
// apart) with the triangle filter and zero edges.
void stb_resize(const float* in, int64_t in_h, int64_t in_w, int64_t in_stride, float* out,
                int64_t out_h, int64_t out_w, int64_t channels, std::vector<unsigned char>& arena) {
  const int ok = stbir_resize(
      in, static_cast<int>(in_w), static_cast<int>(in_h), static_cast<int>(in_stride * 4), out,
      static_cast<int>(out_w), static_cast<int>(out_h), static_cast<int>(out_w * channels * 4),
      STBIR_TYPE_FLOAT, static_cast<int>(channels), STBIR_ALPHA_CHANNEL_NONE, 0, STBIR_EDGE_ZERO,
      STBIR_EDGE_ZERO, STBIR_FILTER_TRIANGLE, STBIR_FILTER_TRIANGLE, STBIR_COLORSPACE_LINEAR,
      &arena);
  if (!ok) {
    fail("resize: stb_image_resize refused to resize {}x{} to {}x{}", in_h, in_w, out_h, out_w);
  }
}

}  // namespace

void resize_region(const Image& in, int64_t top, int64_t left, int64_t height, int64_t width,
                   int64_t out_height, int64_t out_width, Image& out) {
  if (top < 0 || left < 0 || height <= 0 || width <= 0 || top + height > in.height ||
      left + width > in.width || out_height <= 0 || out_width <= 0) {
    fail("resize: region {}x{} at ({}, {}) of a {}x{} image to {}x{} is not valid", height, width,
         top, left, in.height, in.width, out_height, out_width);
  }
  // stb takes int sizes and byte strides.
  const int64_t limit = kMaxExtent / (4 * kGroup);
  if (in.width > limit || out_width > limit || out_height > kMaxExtent ||
      out_height * out_width > limit) {
    fail("resize: {}x{} to {}x{} is larger than stb_image_resize can take", in.height, in.width,
         out_height, out_width);
  }
  thread_local std::vector<unsigned char> arena;
  // The weight that falls inside the image, per output column and per output row.
  thread_local std::vector<float> ones, column_weight, row_weight;
  // A group of channels, interleaved, before and after resizing.
  thread_local std::vector<float> group_in, group_out;
  out.resize(in.channels, out_height, out_width);
  if (ones.size() < static_cast<std::size_t>(std::max(height, width))) {
    ones.assign(static_cast<std::size_t>(std::max(height, width)), 1.0f);
  }
  column_weight.resize(static_cast<std::size_t>(out_width));
  row_weight.resize(static_cast<std::size_t>(out_height));
  stb_resize(ones.data(), 1, width, width, column_weight.data(), 1, out_width, 1, arena);
  stb_resize(ones.data(), height, 1, 1, row_weight.data(), out_height, 1, 1, arena);

  // Multiplying by reciprocals: within a few float ulps of dividing, and no division per pixel.
  for (float& weight : column_weight) weight = 1.0f / weight;
  for (float& weight : row_weight) weight = 1.0f / weight;

  for (int64_t first = 0; first < in.channels; first += kGroup) {
    const int64_t channels = std::min(kGroup, in.channels - first);
    group_in.resize(static_cast<std::size_t>(channels * height * width));
    group_out.resize(static_cast<std::size_t>(channels * out_height * out_width));
    for (int64_t c = 0; c < channels; ++c) {
      const float* source = in.plane(first + c) + top * in.width + left;
      for (int64_t y = 0; y < height; ++y) {
        const float* row = source + y * in.width;
        float* target = group_in.data() + y * width * channels + c;
        for (int64_t x = 0; x < width; ++x) target[x * channels] = row[x];
      }
    }
    stb_resize(group_in.data(), height, width, width * channels, group_out.data(), out_height,
               out_width, channels, arena);
    for (int64_t c = 0; c < channels; ++c) {
      float* target = out.plane(first + c);
      for (int64_t y = 0; y < out_height; ++y) {
        const float* row = group_out.data() + y * out_width * channels + c;
        const float row_scale = row_weight[static_cast<std::size_t>(y)];
        const float* column_scale = column_weight.data();
        float* out_row = target + y * out_width;
        for (int64_t x = 0; x < out_width; ++x) {
          out_row[x] = row[x * channels] * (row_scale * column_scale[x]);
        }
      }
    }
  }
}

}  // namespace strata::augment
