// context_module: the basic context module of Yu and Koltun, "Multi-Scale Context Aggregation by
// Dilated Convolutions" (ICLR 2016), usable on any feature map.
//
// WHAT THIS OBJECT REPRESENTS
//   A stack of 3x3 convolutions with the given dilations (default 1, 1, 2, 4, 8, 16, 1), each
//   with padding equal to its dilation (the spatial size is kept) and C -> C channels, each
//   followed by a ReLU, then a final 1x1 convolution C -> C. As in the paper's Table 1, the final
//   layer has no ReLU ("truncation") unless `final_relu: true`. The receptive field of the
//   default module grows 3, 5, 9, 17, 33, 65, 67 (and 67 after the 1x1).
//   With `batch_norm: true` each convolution (bias-free) is followed by batch norm before its
//   ReLU, which makes the module trainable from the default initialization; the paper instead
//   uses identity initialization and no normalization.
//   Parts: conv1, [bn1], relu1, ..., conv7, [bn7], relu7, conv8, [bn8], [relu8]; conv<k> for
//   k <= number of dilations are the 3x3 layers, the last conv is the 1x1.
//
// KEYS
//   dilations    [1, 1, 2, 4, 8, 16, 1]: one 3x3 layer per entry, each >= 1, at least one
//   channels     the input's C. The module keeps C channels throughout: a value other than the
//                input's channel count is an error
//   batch_norm   false
//   sync_batch_norm  false; true: the block's batch_norm parts (batch_norm: true) reduce their
//                    statistics across the ranks of an MPI job (batch_norm's `sync`,
//                    docs/distributed.md)
//   final_relu   false
//
// REQUIRES
//   - one input [C, H, W] (any H, W: padding keeps the size).
// ENSURES
//   - output [C, H, W].
#include <fmt/format.h>

#include <optional>

#include "common.hpp"
#include "strata/registry.hpp"

namespace strata::blocks {

namespace {

class ContextModule final : public Block {
 public:
  explicit ContextModule(const Config& config)
      : dilations_(config.get<std::vector<int64_t>>("dilations", {1, 1, 2, 4, 8, 16, 1})),
        batch_norm_(config.get<bool>("batch_norm", false)),
        sync_batch_norm_(read_sync_batch_norm(config, batch_norm_)),
        final_relu_(config.get<bool>("final_relu", false)) {
    if (dilations_.empty()) config.fail_key("dilations", "needs at least one dilation");
    for (int64_t dilation : dilations_) {
      if (dilation < 1) config.fail_key("dilations", fmt::format("each dilation must be at least 1, found {}", dilation));
    }
    if (config.has("channels")) channels_ = read_channels(config, "channels");
  }

  std::string_view type() const override { return "context_module"; }

  std::vector<BlockPart> expand(const BlockContext& context) const override {
    const int64_t channels = image_channels(context);
    if (channels_ && *channels_ != channels) {
      context.fail(fmt::format("channels do not fit: the context module keeps C channels "
                               "throughout, but the input has {} channels and `channels` is {}",
                               channels, *channels_));
    }
    std::vector<BlockPart> parts;
    auto layer = [&](std::size_t k, int64_t kernel, int64_t dilation, bool relu) {
      parts.push_back(context.part(fmt::format("conv{}", k),
                                   conv_yaml(channels, kernel, 1, dilation * (kernel / 2), !batch_norm_, dilation)));
      if (batch_norm_) parts.push_back(context.part(fmt::format("bn{}", k), batch_norm_yaml(sync_batch_norm_)));
      if (relu) parts.push_back(context.part(fmt::format("relu{}", k), "{type: relu}"));
    };
    for (std::size_t i = 0; i < dilations_.size(); ++i) layer(i + 1, 3, dilations_[i], true);
    layer(dilations_.size() + 1, 1, 1, final_relu_);
    return parts;
  }

 private:
  std::vector<int64_t> dilations_;
  bool batch_norm_;
  bool sync_batch_norm_;
  bool final_relu_;
  std::optional<int64_t> channels_;
};

}  // namespace

void register_context_module(Registries& registries) {
  registries.blocks.add<ContextModule>("context_module");
}

}  // namespace strata::blocks
