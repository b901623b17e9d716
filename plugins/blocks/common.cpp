#include "common.hpp"

#include <fmt/format.h>

namespace strata::blocks {

std::string conv_yaml(int64_t out_channels, int64_t kernel, int64_t stride, int64_t padding,
                      bool bias, int64_t dilation) {
  return fmt::format(
      "{{type: conv2d, out_channels: {}, kernel: {}, stride: {}, padding: {}, dilation: {}, "
      "bias: {}{}}}",
      out_channels, kernel, stride, padding, dilation, bias ? "true" : "false",
      stride > 1 ? ", round: floor" : "");
}

std::string batch_norm_yaml(bool sync, double eps) {
  return fmt::format("{{type: batch_norm{}{}}}", eps > 0.0 ? fmt::format(", eps: {}", eps) : "",
                     sync ? ", sync: true" : "");
}

bool read_sync_batch_norm(const Config& config, bool batch_norm) {
  const bool sync = config.get<bool>("sync_batch_norm", false);
  if (sync && !batch_norm) {
    config.fail_key("sync_batch_norm", "is true, but the block has no batch norm: set batch_norm: true");
  }
  return sync;
}

int64_t image_channels(const BlockContext& context) {
  const Shape& in = context.inputs()[0];
  if (in.rank() != 3) context.fail(fmt::format("expects an image input [C, H, W], got {}", in.str()));
  return in[0];
}

int64_t read_channels(const Config& config, std::string_view key) {
  const int64_t value = config.get<int64_t>(key);
  if (value < 1) config.fail_key(key, fmt::format("must be at least 1, found {}", value));
  return value;
}

int64_t read_positive(const Config& config, std::string_view key, int64_t fallback) {
  const int64_t value = config.get<int64_t>(key, fallback);
  if (value < 1) config.fail_key(key, fmt::format("must be at least 1, found {}", value));
  return value;
}

}  // namespace strata::blocks

namespace strata::blocks {

Shortcut read_shortcut(const Config& config) {
  const std::string text = config.get<std::string>("shortcut", "auto");
  if (text == "auto") return Shortcut::kAuto;
  if (text == "projection") return Shortcut::kProjection;
  if (text == "identity") return Shortcut::kIdentity;
  config.fail_key("shortcut", fmt::format("expected auto, projection or identity, found '{}'", text));
}

bool needs_projection(const BlockContext& context, Shortcut shortcut, int64_t in_channels,
                      int64_t out_channels, int64_t stride) {
  const bool changes = in_channels != out_channels || stride != 1;
  if (shortcut == Shortcut::kIdentity && changes) {
    context.fail(fmt::format(
        "channels do not fit: an identity shortcut adds the input ({} channels) to the output "
        "({} channels, stride {}), which needs equal channels and stride 1; use `shortcut: auto`",
        in_channels, out_channels, stride));
  }
  return shortcut == Shortcut::kProjection || (shortcut == Shortcut::kAuto && changes);
}

void append_shortcut_and_join(std::vector<BlockPart>& parts, const BlockContext& context,
                              Shortcut shortcut, int64_t in_channels, int64_t out_channels,
                              int64_t stride, const std::string& residual, bool sync_batch_norm) {
  std::string input = BlockContext::input();
  if (needs_projection(context, shortcut, in_channels, out_channels, stride)) {
    parts.push_back(context.part("downsample.0", conv_yaml(out_channels, 1, stride, 0, false),
                                 {BlockContext::input()}));
    parts.push_back(context.part("downsample.1", batch_norm_yaml(sync_batch_norm)));
    input = "downsample.1";
  }
  parts.push_back(context.part("add", "{type: add}", {residual, input}));
  parts.push_back(context.part("relu", "{type: relu}"));
}

}  // namespace strata::blocks
