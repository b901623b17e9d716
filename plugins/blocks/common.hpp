// Helpers shared by the blocks of the "blocks" plugin: YAML flow maps for the parts they emit,
// and the checks every block makes on its input and keys.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "strata/block.hpp"
#include "strata/config.hpp"

namespace strata::blocks {

// {type: conv2d, out_channels: C, kernel: K, stride: S, padding: P, dilation: D, bias: B}, with
// `round: floor` when the stride is above 1 (PyTorch's rounding, which torchvision's models
// rely on: a 3x3 stride-2 convolution with padding 1 halves an even extent).
std::string conv_yaml(int64_t out_channels, int64_t kernel, int64_t stride, int64_t padding,
                      bool bias, int64_t dilation = 1);
// {type: batch_norm[, eps: E][, sync: true]}; eps <= 0 keeps the layer's default (PyTorch's
// 1e-5). `sync`: the statistics are reduced across the ranks of an MPI job (docs/distributed.md,
// "Batch norm across ranks").
std::string batch_norm_yaml(bool sync, double eps = 0.0);
// The block's `sync_batch_norm` key (default false): whether its batch_norm parts are `sync`.
// `batch_norm`: whether the block has any (true on a block without them is an error).
bool read_sync_batch_norm(const Config& config, bool batch_norm = true);

// Requires a [C, H, W] input; returns C.
int64_t image_channels(const BlockContext& context);

// Reads a channel count `key` that must be at least 1.
int64_t read_channels(const Config& config, std::string_view key);
// Reads an optional count `key` (default `fallback`) that must be at least 1.
int64_t read_positive(const Config& config, std::string_view key, int64_t fallback);

}  // namespace strata::blocks

namespace strata::blocks {

// The shortcut of a residual block: `auto` projects (1x1 conv with the block's stride, no bias,
// then batch norm: torchvision's `downsample`) exactly when the shape changes, `projection`
// always does, `identity` never does and is an error when the shape changes.
enum class Shortcut { kAuto, kProjection, kIdentity };
Shortcut read_shortcut(const Config& config);
// Whether this copy projects; fails (naming the shapes) for an identity shortcut that cannot fit.
bool needs_projection(const BlockContext& context, Shortcut shortcut, int64_t in_channels,
                      int64_t out_channels, int64_t stride);

// The end of every residual block: the shortcut (the block's input, or torchvision's
// `downsample.0` 1x1 conv with `stride` and `downsample.1` batch norm when needs_projection()),
// then `add` of `residual` (the last part of the main branch) and the shortcut, then `relu`.
void append_shortcut_and_join(std::vector<BlockPart>& parts, const BlockContext& context,
                              Shortcut shortcut, int64_t in_channels, int64_t out_channels,
                              int64_t stride, const std::string& residual, bool sync_batch_norm);

}  // namespace strata::blocks
