// inception: GoogLeNet's Inception module (Szegedy et al. 2015, "inception (3a)" ... "(5b)"),
// configured by the columns of the paper's Table 1.
//
// WHAT THIS OBJECT REPRESENTS
//   Four branches on the same input, concatenated along channels:
//     branch1: 1x1 conv to ch1x1
//     branch2: 1x1 conv to ch3x3red, then 3x3 conv (padding 1) to ch3x3
//     branch3: 1x1 conv to ch5x5red, then 5x5 conv (padding 2) to ch5x5
//     branch4: 3x3 max pool (stride 1, padding 1), then 1x1 conv to pool_proj
//   Every convolution is followed by a ReLU. By default this is the paper's v1: convolutions
//   with bias, no batch norm. With `batch_norm: true` every convolution is torchvision's
//   BasicConv2d instead: conv without bias, then batch norm (eps 0.001), then ReLU.
//   (torchvision's GoogLeNet also uses a 3x3 convolution in its "5x5" branch, a known deviation
//   kept there for its weights; this block follows the paper: 5x5.)
//   Parts, named after torchvision's module names:
//     branch1.conv, [branch1.bn], branch1.relu,
//     branch2.0.conv, [branch2.0.bn], branch2.0.relu, branch2.1.conv, [branch2.1.bn], branch2.1.relu,
//     branch3.0.conv, ..., branch3.1.relu,
//     branch4.0 (max pool), branch4.1.conv, [branch4.1.bn], branch4.1.relu,
//     concat (the output)
//
// KEYS (the paper's columns #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj; each >= 1)
//   ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj   required
//   batch_norm   false
//   sync_batch_norm  false; true: the block's batch_norm parts (batch_norm: true) reduce their
//                    statistics across the ranks of an MPI job (batch_norm's `sync`,
//                    docs/distributed.md)
//
// REQUIRES
//   - one input of sample shape [C, H, W].
// ENSURES
//   - output [ch1x1 + ch3x3 + ch5x5 + pool_proj, H, W] (256 for inception (3a)).
#include <fmt/format.h>

#include "common.hpp"
#include "strata/registry.hpp"

namespace strata::blocks {

namespace {

class Inception final : public Block {
 public:
  explicit Inception(const Config& config)
      : ch1x1_(read_channels(config, "ch1x1")),
        ch3x3red_(read_channels(config, "ch3x3red")),
        ch3x3_(read_channels(config, "ch3x3")),
        ch5x5red_(read_channels(config, "ch5x5red")),
        ch5x5_(read_channels(config, "ch5x5")),
        pool_proj_(read_channels(config, "pool_proj")),
        batch_norm_(config.get<bool>("batch_norm", false)),
        sync_batch_norm_(read_sync_batch_norm(config, batch_norm_)) {}

  std::string_view type() const override { return "inception"; }

  std::vector<BlockPart> expand(const BlockContext& context) const override {
    image_channels(context);
    std::vector<BlockPart> parts;
    // A torchvision BasicConv2d (or the paper's conv + ReLU) named `prefix`, reading `input`.
    auto conv = [&](const std::string& prefix, int64_t out, int64_t kernel, const std::string& input) {
      parts.push_back(context.part(prefix + ".conv", conv_yaml(out, kernel, 1, kernel / 2, !batch_norm_),
                                   {input}));
      if (batch_norm_) parts.push_back(context.part(prefix + ".bn", batch_norm_yaml(sync_batch_norm_, 0.001)));
      parts.push_back(context.part(prefix + ".relu", "{type: relu}"));
      return prefix + ".relu";
    };
    const std::string in = BlockContext::input();
    const std::string out1 = conv("branch1", ch1x1_, 1, in);
    const std::string out2 = conv("branch2.1", ch3x3_, 3, conv("branch2.0", ch3x3red_, 1, in));
    const std::string out3 = conv("branch3.1", ch5x5_, 5, conv("branch3.0", ch5x5red_, 1, in));
    parts.push_back(
        context.part("branch4.0", "{type: max_pool, kernel: 3, stride: 1, padding: 1}", {in}));
    const std::string out4 = conv("branch4.1", pool_proj_, 1, "branch4.0");
    parts.push_back(context.part("concat", "{type: concat}", {out1, out2, out3, out4}));
    return parts;
  }

 private:
  int64_t ch1x1_, ch3x3red_, ch3x3_, ch5x5red_, ch5x5_, pool_proj_;
  bool batch_norm_;
  bool sync_batch_norm_;
};

}  // namespace

void register_inception(Registries& registries) { registries.blocks.add<Inception>("inception"); }

}  // namespace strata::blocks
