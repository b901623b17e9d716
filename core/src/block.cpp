#include "strata/block.hpp"

#include <fmt/format.h>

namespace strata {

std::string BlockContext::fmt_input(std::size_t i) { return fmt::format("@in{}", i); }

BlockPart BlockContext::part(std::string name, const std::string& yaml,
                             std::vector<std::string> inputs) const {
  Config config = Config::synthesize(yaml, config_, fmt::format("{}.{}", prefix_, name));
  return BlockPart{std::move(name), std::move(config), std::move(inputs)};
}

void BlockContext::fail(const std::string& message) const {
  std::vector<std::string> shapes;
  for (const Shape& shape : inputs_) shapes.push_back(shape.str());
  config_.fail(fmt::format("block '{}' ({}, input {}): {}", prefix_,
                           config_.has("type") ? config_.get<std::string>("type") : "?",
                           fmt::join(shapes, ", "), message));
}

}  // namespace strata
