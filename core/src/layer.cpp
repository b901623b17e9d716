#include "strata/layer.hpp"

#include <limits>

namespace strata {

Param Param::make(std::string name, Shape shape, std::string default_init, int64_t fan_in,
                  int64_t fan_out, float decay_mult) {
  Param param;
  param.name = std::move(name);
  param.value = Tensor(shape);
  param.grad = Tensor(shape);
  param.default_init = std::move(default_init);
  param.fan_in = fan_in;
  param.fan_out = fan_out;
  param.decay_mult = decay_mult;
  return param;
}

Shape Layer::setup(const SetupContext& context, std::span<const Shape> inputs) {
  const int count = static_cast<int>(inputs.size());
  if (count < min_inputs() || count > max_inputs()) {
    if (min_inputs() == max_inputs()) {
      fail("layer '{}' ({}): takes {} input(s), got {}", name_, type(), min_inputs(), count);
    }
    if (max_inputs() == std::numeric_limits<int>::max()) {
      fail("layer '{}' ({}): takes at least {} inputs, got {}", name_, type(), min_inputs(), count);
    }
    fail("layer '{}' ({}): takes {} to {} inputs, got {}", name_, type(), min_inputs(),
         max_inputs(), count);
  }
  try {
    output_shape_ = infer_shape(context, inputs);
  } catch (const Error& error) {
    std::vector<std::string> shapes;
    for (const Shape& shape : inputs) shapes.push_back(shape.str());
    fail("layer '{}' ({}, input {}): {}", name_, type(), fmt::join(shapes, ", "), error.what());
  }
  return output_shape_;
}

}  // namespace strata
