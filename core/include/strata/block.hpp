// strata/block.hpp: the Block interface: a plugin type that expands into a sub-graph of layers.
//
// A block is written in the experiment like a layer:
//
//   - {name: layer2, type: residual_basic, out_channels: 128, stride: 2, repeat: 2}
//
// Lifecycle:
//   1. construction from the block's Config (its own keys only: the graph has already read
//      `name`, `type`, `inputs` and `repeat`). Validate values here; after the factory returns
//      the registry rejects any key nobody read, so `stirde: 2` is an error as for layers;
//   2. expand(), once per copy (`repeat: N` gives N copies, chained: copy i+1 reads copy i's
//      output), with the sample shapes of that copy's inputs. It returns the copy's sub-layers as
//      BlockParts: a name suffix, the layer's configuration and its inputs.
//
// Naming: a part `conv1` of block `layer1` is the layer `layer1.conv1`; with a `repeat` key it
// is `layer1.<i>.conv1` (i from 0), so names (and checkpoint paths) can equal torchvision's
// state_dict keys. The copy's output is its last part's output; the tensor name `layer1` (and,
// with repeat, `layer1.<i>`) refers to it, so later layers may write `inputs: [layer1]`.
//
// A block never touches YAML: it builds each part's configuration with BlockContext::part() from
// a YAML flow map, which keeps the block's file:line for every error the part raises.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "strata/config.hpp"
#include "strata/tensor.hpp"

namespace strata {

// One sub-layer of a block copy.
struct BlockPart {
  std::string name;                 // suffix within the copy: "conv1", "downsample.0"
  Config config;                    // the layer's keys, `type` included
  std::vector<std::string> inputs;  // see BlockContext::part()
};

// What expand() sees of the copy it builds.
class BlockContext {
 public:
  // The name of the copy's i-th input, for BlockPart::inputs.
  static std::string input(std::size_t i = 0) { return i == 0 ? "@in" : fmt_input(i); }

  BlockContext(const Config& config, std::string prefix, std::span<const Shape> inputs,
               int64_t index, int64_t repeat)
      : config_(config), prefix_(std::move(prefix)), inputs_(inputs), index_(index), repeat_(repeat) {}

  std::span<const Shape> inputs() const { return inputs_; }  // sample shapes, [C, H, W] for images
  int64_t index() const { return index_; }    // which copy: 0 .. repeat-1
  int64_t repeat() const { return repeat_; }  // 1 without a `repeat` key
  const std::string& prefix() const { return prefix_; }  // "layer1.0" or "layer1"

  // A part named `name` whose layer is described by the YAML map `yaml` (with `type`). `inputs`
  // lists earlier parts of this copy by suffix, or BlockContext::input(i) for the copy's inputs;
  // empty means the previous part (the copy's first input for the first part).
  BlockPart part(std::string name, const std::string& yaml,
                 std::vector<std::string> inputs = {}) const;

  // Raises an Error at the block's entry in the experiment file, naming the block and copy:
  //   exp.yaml:12:7: model.layers[4]: block 'layer2.0' (residual_basic): <message>
  [[noreturn]] void fail(const std::string& message) const;

  const Config& config() const { return config_; }

 private:
  static std::string fmt_input(std::size_t i);
  const Config& config_;
  std::string prefix_;
  std::span<const Shape> inputs_;
  int64_t index_;
  int64_t repeat_;
};

class Block {
 public:
  virtual ~Block() = default;
  virtual std::string_view type() const = 0;
  // How many inputs a copy accepts (inclusive bounds); copies after the first get one.
  virtual int min_inputs() const { return 1; }
  virtual int max_inputs() const { return 1; }
  // The parts of one copy, in execution order (each may read only earlier parts or the inputs).
  // Checks the input shapes (a block whose channels do not fit is an error via context.fail()).
  virtual std::vector<BlockPart> expand(const BlockContext& context) const = 0;
};

}  // namespace strata
