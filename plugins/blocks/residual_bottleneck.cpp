// residual_bottleneck: ResNet's bottleneck block for ResNet-50/101/152, torchvision's
// Bottleneck, which is "ResNet v1.5": the stride sits on the 3x3 convolution (the paper's v1 put
// it on the first 1x1). Parameter counts are the same; v1.5 costs more multiply-adds and is what
// torchvision's weights use.
//
// WHAT THIS OBJECT REPRESENTS
//   width = out_channels / expansion.
//   y = relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x))))))) + shortcut(x)), where conv1 is
//   1x1 to width, conv2 3x3 width -> width with the block's stride and padding 1, conv3 1x1 to
//   out_channels; no biases. The shortcut is the identity or, when the shape changes, a 1x1
//   convolution with the stride (no bias) and batch norm.
//   Parts, named as torchvision's state_dict keys (layer1.0.conv1, ..., layer1.0.downsample.1):
//     conv1, bn1, relu1, conv2, bn2, relu2, conv3, bn3, [downsample.0, downsample.1], add, relu
//
// KEYS
//   out_channels  required: the block's output channels (256 for ResNet-50's first stage)
//   expansion     4: out_channels / width; out_channels must be divisible by it
//   stride        1; applies to the first copy only
//   shortcut      auto (default), projection or identity: as for residual_basic
//   sync_batch_norm  false; true: the block's batch_norm parts reduce their statistics across
//                    the ranks of an MPI job (batch_norm's `sync`, docs/distributed.md)
//
// REQUIRES
//   - one input of sample shape [C, H, W].
// ENSURES
//   - output [out_channels, ceil(H/stride), ceil(W/stride)].
#include <fmt/format.h>

#include "common.hpp"
#include "strata/registry.hpp"

namespace strata::blocks {

namespace {

class ResidualBottleneck final : public Block {
 public:
  explicit ResidualBottleneck(const Config& config)
      : out_channels_(read_channels(config, "out_channels")),
        expansion_(read_positive(config, "expansion", 4)),
        stride_(read_positive(config, "stride", 1)),
        shortcut_(read_shortcut(config)),
        sync_batch_norm_(read_sync_batch_norm(config)) {
    if (out_channels_ % expansion_ != 0) {
      config.fail_key("out_channels",
                      fmt::format("channels do not fit: out_channels {} is not divisible by "
                                  "expansion {} (the bottleneck width is out_channels / expansion)",
                                  out_channels_, expansion_));
    }
  }

  std::string_view type() const override { return "residual_bottleneck"; }

  std::vector<BlockPart> expand(const BlockContext& context) const override {
    const int64_t in_channels = image_channels(context);
    const int64_t stride = context.index() == 0 ? stride_ : 1;
    const int64_t width = out_channels_ / expansion_;
    std::vector<BlockPart> parts;
    parts.push_back(context.part("conv1", conv_yaml(width, 1, 1, 0, false)));
    parts.push_back(context.part("bn1", batch_norm_yaml(sync_batch_norm_)));
    parts.push_back(context.part("relu1", "{type: relu}"));
    parts.push_back(context.part("conv2", conv_yaml(width, 3, stride, 1, false)));
    parts.push_back(context.part("bn2", batch_norm_yaml(sync_batch_norm_)));
    parts.push_back(context.part("relu2", "{type: relu}"));
    parts.push_back(context.part("conv3", conv_yaml(out_channels_, 1, 1, 0, false)));
    parts.push_back(context.part("bn3", batch_norm_yaml(sync_batch_norm_)));
    append_shortcut_and_join(parts, context, shortcut_, in_channels, out_channels_, stride, "bn3",
                             sync_batch_norm_);
    return parts;
  }

 private:
  int64_t out_channels_;
  int64_t expansion_;
  int64_t stride_;
  Shortcut shortcut_;
  bool sync_batch_norm_;
};

}  // namespace

void register_residual_bottleneck(Registries& registries) {
  registries.blocks.add<ResidualBottleneck>("residual_bottleneck");
}

}  // namespace strata::blocks
