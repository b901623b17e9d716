// residual_basic: ResNet's basic block (He et al. 2016; torchvision's BasicBlock, ResNet-18/34).
//
// WHAT THIS OBJECT REPRESENTS
//   y = relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)), where conv1 is 3x3 with the block's
//   stride and conv2 3x3 with stride 1, both out_channels wide, padding 1 and no bias. The
//   shortcut is the identity, or (when the shape changes) a projection: a 1x1 convolution with
//   the stride, no bias, then batch norm.
//   Parts, named as torchvision's state_dict keys (block `layer2`, `repeat: 2` gives
//   layer2.0.conv1, ..., layer2.1.bn2):
//     conv1, bn1, relu1, conv2, bn2, [downsample.0 (conv), downsample.1 (bn)], add, relu
//   Strided convolutions round down as PyTorch does (an even extent halves).
//
// KEYS
//   out_channels  required, >= 1
//   stride        1, >= 1; applies to the first copy only (later copies use 1), as in a ResNet stage
//   shortcut      auto (default: project when the channels or the stride change), projection,
//                 or identity (an error when the shape changes)
//   sync_batch_norm  false; true: the block's batch_norm parts reduce their statistics across
//                    the ranks of an MPI job (batch_norm's `sync`, docs/distributed.md)
//   (and the graph's: name, type, inputs, repeat)
//
// REQUIRES
//   - one input of sample shape [C, H, W].
// ENSURES
//   - output [out_channels, ceil(H/stride), ceil(W/stride)] for 3x3 windows with padding 1.
#include <fmt/format.h>

#include "common.hpp"
#include "strata/registry.hpp"

namespace strata::blocks {

namespace {

class ResidualBasic final : public Block {
 public:
  explicit ResidualBasic(const Config& config)
      : out_channels_(read_channels(config, "out_channels")),
        stride_(read_positive(config, "stride", 1)),
        shortcut_(read_shortcut(config)),
        sync_batch_norm_(read_sync_batch_norm(config)) {}

  std::string_view type() const override { return "residual_basic"; }

  std::vector<BlockPart> expand(const BlockContext& context) const override {
    const int64_t in_channels = image_channels(context);
    const int64_t stride = context.index() == 0 ? stride_ : 1;
    std::vector<BlockPart> parts;
    parts.push_back(context.part("conv1", conv_yaml(out_channels_, 3, stride, 1, false)));
    parts.push_back(context.part("bn1", batch_norm_yaml(sync_batch_norm_)));
    parts.push_back(context.part("relu1", "{type: relu}"));
    parts.push_back(context.part("conv2", conv_yaml(out_channels_, 3, 1, 1, false)));
    parts.push_back(context.part("bn2", batch_norm_yaml(sync_batch_norm_)));
    append_shortcut_and_join(parts, context, shortcut_, in_channels, out_channels_, stride, "bn2",
                             sync_batch_norm_);
    return parts;
  }

 private:
  int64_t out_channels_;
  int64_t stride_;
  Shortcut shortcut_;
  bool sync_batch_norm_;
};

}  // namespace

void register_residual_basic(Registries& registries) {
  registries.blocks.add<ResidualBasic>("residual_basic");
}

}  // namespace strata::blocks
