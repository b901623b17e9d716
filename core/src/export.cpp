// The neutral export description (strata/export.hpp): the ExportContext a hook writes into, and
// export_graph(), which asks every transform of --preprocess and every layer of a Graph in turn.
#include "strata/export.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <random>
#include <set>

#include "strata/dataset.hpp"
#include "strata/error.hpp"
#include "strata/graph.hpp"
#include "strata/registry.hpp"

namespace strata {

ExportNode& ExportNode::set(const std::string& attribute, ExportAttributeValue value) {
  for (ExportAttribute& existing : attributes) {
    if (existing.name == attribute) {
      existing.value = std::move(value);
      return *this;
    }
  }
  attributes.push_back({attribute, std::move(value)});
  return *this;
}

const ExportAttributeValue* ExportNode::find(std::string_view attribute) const {
  for (const ExportAttribute& existing : attributes) {
    if (existing.name == attribute) return &existing.value;
  }
  return nullptr;
}

std::string ExportContext::value(std::string_view suffix) const {
  return fmt::format("{}/{}", layer_, suffix);
}

std::string ExportContext::parameter(std::string_view name, const Tensor& tensor) {
  std::string full = fmt::format("{}.{}", layer_, name);
  for (const ExportInitializer& existing : initializers_) {
    if (existing.name == full)
      fail("export: layer '{}' adds the initializer '{}' twice", layer_, full);
  }
  initializers_.push_back({full, tensor, std::nullopt});
  return full;
}

std::string ExportContext::int64_constant(std::string_view name, std::vector<int64_t> values) {
  std::string full = parameter(name, Tensor());
  initializers_.back().int64_values = std::move(values);
  return full;
}

ExportNode& ExportContext::node(std::string op, std::vector<std::string> inputs,
                                std::vector<std::string> outputs) {
  ExportNode node;
  node.op = std::move(op);
  const std::size_t k = nodes_.size() - first_node_;
  node.name = k == 0 ? layer_ : fmt::format("{}/{}", layer_, k);
  node.inputs = std::move(inputs);
  node.outputs = std::move(outputs);
  nodes_.push_back(std::move(node));
  return nodes_.back();
}

void ExportContext::pass_through(std::size_t i) {
  if (i >= inputs_.size()) {
    fail("export: layer '{}' passes through input {}, but it has {}", layer_, i, inputs_.size());
  }
  passed_through_ = static_cast<int>(i);
}

void ExportContext::begin(std::string layer, std::vector<std::string> inputs,
                          std::vector<Shape> input_shapes, std::string output, Shape output_shape) {
  layer_ = std::move(layer);
  inputs_ = std::move(inputs);
  input_shapes_ = std::move(input_shapes);
  output_ = std::move(output);
  output_shape_ = std::move(output_shape);
  first_node_ = nodes_.size();
  passed_through_ = -1;
}

std::string ExportContext::end() {
  if (passed_through_ >= 0) {
    if (nodes_.size() != first_node_) {
      fail("export: layer '{}' both passes its input through and adds nodes", layer_);
    }
    return inputs_[static_cast<std::size_t>(passed_through_)];
  }
  for (std::size_t k = first_node_; k < nodes_.size(); ++k) {
    for (const std::string& produced : nodes_[k].outputs) {
      if (produced == output_) return output_;
    }
  }
  fail("export: layer '{}' described itself without producing its output value '{}'", layer_,
       output_);
}

namespace {

// Whether `transform` leaves a random image of `shape` unchanged (bit for bit).
bool leaves_unchanged(const Transform& transform, const Shape& shape) {
  Image image, scratch;
  image.resize(shape[0], shape[1], shape[2]);
  std::mt19937 rng(19);
  std::uniform_real_distribution<float> uniform(0.0f, 1.0f);
  for (float& pixel : image.pixels) pixel = uniform(rng);
  const std::vector<float> before(image.pixels.begin(), image.pixels.end());
  transform.apply(image, scratch);
  return image.shape() == shape && std::equal(before.begin(), before.end(), image.pixels.begin());
}

// The preprocessing transforms, each described or left out; returns the value they produce.
std::string export_preprocess(ExportContext& context, const Shape& shape, std::string value,
                              std::span<const std::shared_ptr<const Transform>> preprocess,
                              std::vector<std::pair<std::string, Shape>>& shapes) {
  if (!preprocess.empty() && shape.rank() != 3) {
    fail(
        "export --preprocess: the data transforms take images [C, H, W], but the model's input is "
        "{}",
        shape.str());
  }
  for (std::size_t i = 0; i < preprocess.size(); ++i) {
    const Transform& transform = *preprocess[i];
    const std::string name = fmt::format("preprocess.{}.{}", i, transform.type());
    context.begin(name, {value}, {shape}, name, shape);
    bool described = false;
    try {
      described = transform.export_to(context);
    } catch (const Error& error) {
      fail("export --preprocess: transform {} ({}): {}", i, transform.type(), error.what());
    }
    if (!described) {
      if (!leaves_unchanged(transform, shape)) {
        fail(
            "export --preprocess: transform {} ({}) of the data pipeline changes images of the "
            "model's input shape {} and has no export mapping; export without --preprocess and "
            "apply it before the exported model",
            i, transform.type(), shape.str());
      }
      context.pass_through();
    }
    value = context.end();
    if (value != name) continue;
    shapes.emplace_back(value, shape);
  }
  return value;
}

}  // namespace

ExportedModel export_graph(const Graph& graph, const Registries& registries,
                           const ExportOptions& options,
                           std::span<const std::shared_ptr<const Transform>> preprocess) {
  if (graph.size() == 0) fail("export: the model has no layers");
  ExportContext context(options.opset);
  std::set<std::string> layer_names;
  for (std::size_t i = 0; i < graph.size(); ++i) layer_names.insert(graph.name(i));
  for (const std::string& reserved : {options.input_name, options.output_name}) {
    if (layer_names.count(reserved) != 0 && reserved != graph.name(graph.size() - 1)) {
      fail("export: a layer is named '{}', the name of the exported model's input or output",
           reserved);
    }
  }
  // value name of each layer's output (a layer passing its input through has its input's)
  std::map<std::string, std::string> value_of;
  std::vector<std::pair<std::string, Shape>> value_shapes;
  value_of["input"] =
      export_preprocess(context, graph.input_shape(), options.input_name, preprocess, value_shapes);
  for (std::size_t i = 0; i < graph.size(); ++i) {
    const Layer& layer = graph.layer(i);
    std::vector<std::string> inputs;
    for (const std::string& producer : graph.input_names(i))
      inputs.push_back(value_of.at(producer));
    const bool last = i + 1 == graph.size();
    context.begin(graph.name(i), std::move(inputs), graph.input_shapes(i),
                  last ? options.output_name : graph.name(i), layer.output_shape());
    bool described = false;
    try {
      described = layer.export_to(context);
    } catch (const Error& error) {
      fail("export: layer '{}' ({}): {}", graph.name(i), layer.type(), error.what());
    }
    if (!described) {
      const std::string type(layer.type());
      const auto& entries = registries.layers.entries();
      const auto entry = entries.find(type);
      const std::string plugin = entry == entries.end()
                                     ? "an unknown plugin"
                                     : fmt::format("plugin '{}'", entry->second.owner->name);
      fail(
          "export: layer '{}' (type '{}' from {}) has no export mapping: its plugin does not "
          "implement Layer::export_to() (docs/writing-a-plugin.md, \"Export\")",
          graph.name(i), type, plugin);
    }
    std::string produced = context.end();
    if (last && produced != options.output_name) {
      // The last layer passed its input through: the output still needs a value of its name.
      context.begin(graph.name(i), {produced}, {layer.output_shape()}, options.output_name,
                    layer.output_shape());
      context.node("Identity", {produced}, {options.output_name});
      produced = context.end();
    }
    if (produced == graph.name(i) || produced == options.output_name) {
      value_shapes.emplace_back(produced, layer.output_shape());
    }
    value_of[graph.name(i)] = produced;
  }
  ExportedModel model;
  model.opset = options.opset;
  model.input_name = options.input_name;
  model.output_name = options.output_name;
  model.input_shape = graph.input_shape();
  model.output_shape = graph.output_shape();
  model.nodes = context.nodes();
  model.initializers = context.initializers();
  model.value_shapes = std::move(value_shapes);
  return model;
}

}  // namespace strata
