#include "strata/graph.hpp"

#include <algorithm>
#include <charconv>
#include <map>

#include "strata/block.hpp"
#include "strata/registry.hpp"

namespace strata {

namespace {

// The names a layer reads, from `inputs: name` or `inputs: [a, b]`; empty when not given.
std::vector<std::string> read_input_names(const Config& item) {
  auto inputs = item.find("inputs");
  if (!inputs) return {};
  if (inputs->is_scalar()) return {inputs->as<std::string>()};
  return inputs->as<std::vector<std::string>>();
}

// The initializer a layer asks for in Param::default_init: a type name ("he_normal") or a flow
// map with settings ("{type: constant, value: 1}"). Parsed as the value of a key, so both forms
// go through the same Config checks (unknown type, unknown or ill-typed settings).
std::shared_ptr<Initializer> default_initializer(const Registries& registries,
                                                 const std::string& layer, const Param& param) {
  const std::string source =
      fmt::format("layer '{}', default initializer of parameter '{}'", layer, param.name);
  if (param.default_init.empty()) fail("{}: the layer gave no initializer", source);
  const Config spec = Config::parse_string("init: " + param.default_init, source).at("init");
  if (spec.is_scalar()) {
    try {
      return registries.initializers.create(spec.as<std::string>(), Config{});
    } catch (const Error& error) {
      fail("{}: {}", source, error.what());
    }
  }
  if (!spec.is_map()) spec.fail("expected an initializer type or a map {type: ..., ...}");
  return registries.initializers.create(spec);
}

bool valid_utf8(std::string_view text) {
  std::size_t i = 0;
  while (i < text.size()) {
    const auto byte = static_cast<unsigned char>(text[i]);
    std::size_t length = byte < 0x80 ? 1 : (byte >> 5) == 0x6 ? 2 : (byte >> 4) == 0xE ? 3
                                     : (byte >> 3) == 0x1E ? 4 : 0;
    if (length == 0 || i + length > text.size()) return false;
    for (std::size_t k = 1; k < length; ++k) {
      if ((static_cast<unsigned char>(text[i + k]) >> 6) != 0x2) return false;
    }
    i += length;
  }
  return true;
}

// Why `name` cannot name a layer, or "" when it can. A layer name becomes an HDF5 path component
// in the checkpoint (/model/<layer>/weight), so it is checked here, at graph build, rather than at
// the first save after an epoch of training.
std::string invalid_layer_name(const std::string& name) {
  if (name.empty()) return "it is empty";
  if (name == "input") return "'input' is reserved for the model input";
  if (name == "." || name == "..") return "'.' and '..' are not valid HDF5 path components";
  if (name.find('/') != std::string::npos) return "it contains '/' (the checkpoint's path separator)";
  for (char c : name) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) return "it contains a control character";
  }
  if (!valid_utf8(name)) return "it is not valid UTF-8";
  return "";
}

}  // namespace

Graph::Graph(const Config& model, const Registries& registries, std::string backend, Rng& init_rng)
    : registries_(registries), backend_(std::move(backend)) {
  build(model, &init_rng);
}

Graph::Graph(const Config& model, const Registries& registries, std::string backend)
    : registries_(registries), backend_(std::move(backend)) {
  build(model, nullptr);
}

void Graph::check_new_name(const std::string& name, const Config& where) const {
  std::string why = invalid_layer_name(name);
  if (why.empty() && name.find('@') != std::string::npos) why = "it contains '@' (block inputs are named with it)";
  if (!why.empty()) {
    // Quote the name only when printing it cannot garble the terminal.
    const bool printable = why.find("UTF-8") == std::string::npos && why.find("control") == std::string::npos;
    where.fail_key("name", fmt::format("{} cannot name a layer: {}",
                                       printable ? "'" + name + "'" : std::string("this name"), why));
  }
  if (index_of(name) >= 0) where.fail_key("name", fmt::format("duplicate layer name '{}'", name));
}

void Graph::build(const Config& model, Rng* init_rng) {
  auto input = model.get<std::vector<int64_t>>("input");
  for (int64_t d : input) {
    if (d <= 0) model.fail_key("input", fmt::format("extents must be positive, found {}", Shape(input).str()));
  }
  input_shape_ = Shape(input);

  const std::vector<Config> items = model.at("layers").items();
  if (items.empty()) model.fail_key("layers", "the model has no layers");

  for (std::size_t index = 0; index < items.size(); ++index) {
    const Config& item = items[index];
    if (!item.is_map()) item.fail("expected a map describing a layer");
    const std::string type = item.get<std::string>("type");
    std::string name = item.has("name") ? item.get<std::string>("name") : fmt::format("{}{}", type, index);
    check_new_name(name, item);
    std::vector<std::string> input_names = read_input_names(item);
    if (input_names.empty()) input_names.push_back(index == 0 ? "input" : nodes_.back().layer->name());

    if (!registries_.blocks.contains(type)) {
      if (!registries_.layers.contains(type)) {
        // The closest match is sought among both kinds; each kind is then listed on its own.
        std::vector<std::string> known = registries_.layers.types();
        for (const std::string& block : registries_.blocks.types()) known.push_back(block);
        const std::string match = closest_match(type, known);
        item.fail_key("type", fmt::format("unknown layer or block type '{}'\n  {}known layer types: {}\n  "
                                          "known block types: {}",
                                          type, match.empty() ? "" : fmt::format("did you mean '{}'? ", match),
                                          fmt::join(registries_.layers.types(), ", "),
                                          fmt::join(registries_.blocks.types(), ", ")));
      }
      // `init` belongs to the graph, not the layer: it is read before the registry checks keys.
      // Its initializers are built first, so the registry's check sees their keys as read.
      std::optional<Config> init = item.find("init");
      std::map<std::string, std::shared_ptr<Initializer>> initializers;
      if (init) {
        if (!init->is_map()) {
          init->fail("expected a map from parameter name to initializer, such as {weight: {type: "
                     "normal, std: 0.01}}");
        }
        for (const std::string& key : init->keys()) {
          initializers.emplace(key, registries_.initializers.create(*init->find(key)));
        }
      }
      auto layer = registries_.layers.create(item);
      add_node(name, std::move(layer), input_names, item, init, initializers, init_rng, -1);
      continue;
    }

    // A block: read the graph's keys, let the plugin read (and the registry check) the rest,
    // then expand each copy in place.
    const bool repeated = item.has("repeat");
    const int64_t repeat = item.get<int64_t>("repeat", 1);
    if (repeat < 1) {
      item.fail_key("repeat", fmt::format("must be at least 1 (the number of copies of the block), found {}", repeat));
    }
    if (item.has("init")) {
      item.fail_key("init", "blocks take no `init`: their sub-layers use their default initializers");
    }
    std::shared_ptr<Block> block = registries_.blocks.create(item);
    const int block_index = static_cast<int>(blocks_.size());
    blocks_.push_back(BlockInfo{name, type, repeat, static_cast<int>(nodes_.size()), 0});
    for (int64_t copy = 0; copy < repeat; ++copy) {
      const std::string prefix = repeated ? fmt::format("{}.{}", name, copy) : name;
      if (repeated) check_new_name(prefix, item);
      const int count = static_cast<int>(input_names.size());
      if (count < block->min_inputs() || count > block->max_inputs()) {
        item.fail(fmt::format("block '{}' ({}) takes {} to {} input(s), got {}{}", prefix, type,
                              block->min_inputs(), block->max_inputs(), count,
                              copy > 0 ? " (copies after the first read the previous copy's output)" : ""));
      }
      std::vector<Shape> shapes;
      for (const std::string& input_name : input_names) {
        const int producer = input_name == "input" ? -1 : index_of(input_name);
        if (producer < 0 && input_name != "input") {
          std::vector<std::string> known{"input"};
          for (const auto& earlier : nodes_) known.push_back(earlier.layer->name());
          item.fail_key("inputs", fmt::format("unknown input '{}' (a block may only read the model "
                                              "input or earlier layers)\n  {}",
                                              input_name, suggestion_text(input_name, known, "tensors")));
        }
        shapes.push_back(producer < 0 ? input_shape_ : nodes_[producer].layer->output_shape());
      }
      const BlockContext context(item, prefix, shapes, copy, repeat);
      const std::vector<BlockPart> parts = block->expand(context);
      if (parts.empty()) context.fail("the block expanded into no layers");

      std::vector<std::string> part_names;
      for (std::size_t p = 0; p < parts.size(); ++p) {
        const BlockPart& part = parts[p];
        const std::string full = fmt::format("{}.{}", prefix, part.name);
        if (std::find(part_names.begin(), part_names.end(), part.name) != part_names.end()) {
          context.fail(fmt::format("the block plugin emitted the part '{}' twice", part.name));
        }
        std::vector<std::string> part_inputs;
        for (const std::string& ref : part.inputs) {
          if (ref.starts_with("@in")) {
            std::size_t which = 0;
            const char* digits = ref.data() + 3;
            if (ref.size() > 3 && (std::from_chars(digits, ref.data() + ref.size(), which).ptr !=
                                   ref.data() + ref.size())) {
              context.fail(fmt::format("part '{}' reads '{}': not a block input", part.name, ref));
            }
            if (which >= input_names.size()) {
              context.fail(fmt::format("part '{}' reads block input {}, but the block has {} input(s)",
                                       part.name, which, input_names.size()));
            }
            part_inputs.push_back(input_names[which]);
          } else if (std::find(part_names.begin(), part_names.end(), ref) != part_names.end()) {
            part_inputs.push_back(fmt::format("{}.{}", prefix, ref));
          } else {
            context.fail(fmt::format("part '{}' reads '{}', which is not an earlier part of the "
                                     "block (known: {})",
                                     part.name, ref, fmt::join(part_names, ", ")));
          }
        }
        if (part_inputs.empty()) {
          part_inputs.push_back(p == 0 ? input_names[0] : fmt::format("{}.{}", prefix, parts[p - 1].name));
        }
        if (index_of(full) >= 0) context.fail(fmt::format("layer name '{}' is already taken", full));
        const std::string part_type = part.config.get<std::string>("type");
        if (!registries_.layers.contains(part_type)) {
          context.fail(fmt::format("part '{}' needs layer type '{}', which no loaded plugin "
                                   "registers\n  {}",
                                   part.name, part_type,
                                   suggestion_text(part_type, registries_.layers.types(), "layer types")));
        }
        auto layer = registries_.layers.create(part.config);
        add_node(full, std::move(layer), part_inputs, item, std::nullopt, {}, init_rng, block_index);
        part_names.push_back(part.name);
      }
      const int output = static_cast<int>(nodes_.size()) - 1;
      if (repeated) aliases_.emplace_back(prefix, output);
      input_names = {nodes_.back().layer->name()};
    }
    blocks_.back().end = static_cast<int>(nodes_.size());
    aliases_.emplace_back(name, static_cast<int>(nodes_.size()) - 1);
  }
}

void Graph::add_node(const std::string& name, std::shared_ptr<Layer> layer,
                     const std::vector<std::string>& input_names, const Config& where,
                     const std::optional<Config>& init,
                     const std::map<std::string, std::shared_ptr<Initializer>>& custom_initializers,
                     Rng* init_rng, int block) {
  Node node;
  node.block = block;
  std::vector<Shape> input_shapes;
  for (const std::string& input_name : input_names) {
    int producer = input_name == "input" ? -1 : index_of(input_name);
    if (producer < 0 && input_name != "input") {
      std::vector<std::string> known{"input"};
      for (const auto& earlier : nodes_) known.push_back(earlier.layer->name());
      for (const auto& [alias, target] : aliases_) known.push_back(alias);
      where.fail_key("inputs", fmt::format("unknown input '{}' (a layer may only read the model "
                                           "input or earlier layers)\n  {}",
                                           input_name, suggestion_text(input_name, known, "tensors")));
    }
    node.inputs.push_back(producer);
    input_shapes.push_back(producer < 0 ? input_shape_ : nodes_[producer].layer->output_shape());
  }

  node.layer = std::move(layer);
  node.layer->set_name(name);
  try {
    node.layer->setup(SetupContext(registries_.kernels, backend_, name), input_shapes);
  } catch (const Error& error) {
    // Name the producers too, so a mismatch reads as "A gives X, B wanted Y".
    std::vector<std::string> sources;
    for (std::size_t j = 0; j < input_names.size(); ++j) {
      sources.push_back(fmt::format("'{}' gives {}", input_names[j], input_shapes[j].str()));
    }
    where.fail(fmt::format("{}\n  (input {})", error.what(), fmt::join(sources, ", ")));
  }

  // Initialize parameters: the layer's default initializer unless `init` names one.
  std::vector<std::string> param_names;
  for (Param* param : node.layer->params()) {
    param_names.push_back(param->name);
    if (init_rng == nullptr) continue;
    auto custom = custom_initializers.find(param->name);
    auto initializer = custom != custom_initializers.end()
                           ? custom->second
                           : default_initializer(registries_, name, *param);
    initializer->fill(param->value, param->fan_in, param->fan_out, *init_rng);
  }
  if (init) {
    for (const auto& [key, initializer] : custom_initializers) {
      if (std::find(param_names.begin(), param_names.end(), key) == param_names.end()) {
        init->fail_key(key, fmt::format("layer '{}' has no parameter '{}'\n  {}", name, key,
                                        suggestion_text(key, param_names, "parameters")));
      }
    }
  }
  for (int producer : node.inputs) {
    if (producer >= 0) ++nodes_[producer].consumers;
  }
  nodes_.push_back(std::move(node));
}

const Shape& Graph::output_shape() const { return nodes_.back().layer->output_shape(); }

int Graph::index_of(std::string_view layer_name) const {
  for (std::size_t i = 0; i < nodes_.size(); ++i) {
    if (nodes_[i].layer->name() == layer_name) return static_cast<int>(i);
  }
  for (const auto& [alias, target] : aliases_) {
    if (alias == layer_name) return target;
  }
  return -1;
}

std::vector<std::string> Graph::input_names(std::size_t i) const {
  std::vector<std::string> names;
  for (int producer : nodes_[i].inputs) names.push_back(producer < 0 ? "input" : name(producer));
  return names;
}

void Graph::allocate(int64_t batch) {
  if (batch > allocated_batch_) {
    outputs_storage_.clear();
    grads_storage_.clear();
    edge_scratch_.clear();
    for (const Node& node : nodes_) {
      const Shape shape = node.layer->output_shape().with_batch(batch);
      outputs_storage_.emplace_back(shape);
      // The last node's gradient comes from the loss; a node nobody reads needs none.
      const bool needs_grad = &node != &nodes_.back() && node.consumers > 0;
      grads_storage_.push_back(needs_grad ? Tensor(shape) : Tensor());
      edge_scratch_.push_back(node.consumers > 1 ? Tensor(shape) : Tensor());
    }
    allocated_batch_ = batch;
  }
  outputs_.resize(nodes_.size());
  grads_.resize(nodes_.size());
  scratch_.resize(nodes_.size());
  for (std::size_t i = 0; i < nodes_.size(); ++i) {
    outputs_[i] = outputs_storage_[i].batch_slice(0, batch);
    grads_[i] = grads_storage_[i].defined() && grads_storage_[i].numel() > 0
                    ? grads_storage_[i].batch_slice(0, batch)
                    : Tensor();
    scratch_[i] = edge_scratch_[i].defined() && edge_scratch_[i].numel() > 0
                      ? edge_scratch_[i].batch_slice(0, batch)
                      : Tensor();
    nodes_[i].in.resize(nodes_[i].inputs.size());
    nodes_[i].din.resize(nodes_[i].inputs.size());
  }
  batch_ = batch;
}

const Tensor& Graph::forward(Context& context, const Tensor& input) {
  if (input.rank() != input_shape_.rank() + 1 || input.shape().without_batch() != input_shape_) {
    fail("the model expects input of shape {} (batch first), got {}",
         input_shape_.with_batch(input.rank() > 0 ? input.dim(0) : 0).str(), input.shape().str());
  }
  if (input.dim(0) != batch_) allocate(input.dim(0));
  input_ = input;
  for (std::size_t i = 0; i < nodes_.size(); ++i) {
    Node& node = nodes_[i];
    for (std::size_t j = 0; j < node.inputs.size(); ++j) {
      node.in[j] = node.inputs[j] < 0 ? input_ : outputs_[node.inputs[j]];
    }
    node.layer->forward(context, node.in, outputs_[i]);
  }
  return outputs_.back();
}

void Graph::backward(Context& context, const Tensor& doutput) {
  if (doutput.shape() != outputs_.back().shape()) {
    fail("backward: the output gradient has shape {} but the output is {}", doutput.shape().str(),
         outputs_.back().shape().str());
  }
  // Tensors read by several layers accumulate their gradient: start those at zero.
  for (std::size_t i = 0; i < nodes_.size(); ++i) {
    if (nodes_[i].consumers > 1) grads_[i].fill(0.0f);
  }
  for (std::size_t i = nodes_.size(); i-- > 0;) {
    Node& node = nodes_[i];
    const Tensor& dout = i + 1 == nodes_.size() ? doutput : grads_[i];
    for (std::size_t j = 0; j < node.inputs.size(); ++j) {
      const int producer = node.inputs[j];
      if (producer < 0) {
        node.din[j] = Tensor();  // nobody needs the gradient of the model input
      } else {
        node.din[j] = nodes_[producer].consumers > 1 ? scratch_[producer] : grads_[producer];
      }
    }
    node.layer->backward(context, node.in, outputs_[i], dout, node.din);
    for (std::size_t j = 0; j < node.inputs.size(); ++j) {
      const int producer = node.inputs[j];
      if (producer >= 0 && nodes_[producer].consumers > 1) {
        float* sum = grads_[producer].data();
        const float* part = scratch_[producer].data();
        const int64_t n = grads_[producer].numel();
        for (int64_t k = 0; k < n; ++k) sum[k] += part[k];
      }
    }
  }
}

const Tensor& Graph::activation(std::string_view layer_name) const {
  const int index = index_of(layer_name);
  if (index < 0) fail("the model has no layer '{}'", layer_name);
  if (batch_ == 0) fail("no activations yet: run forward() first");
  return outputs_[index];
}

std::vector<ParamRef> Graph::params() {
  std::vector<ParamRef> refs;
  for (Node& node : nodes_) {
    for (Param* param : node.layer->params()) {
      refs.push_back({fmt::format("{}/{}", node.layer->name(), param->name), param});
    }
  }
  return refs;
}

std::vector<NamedTensor> Graph::state_tensors() {
  std::vector<NamedTensor> tensors;
  for (Node& node : nodes_) {
    for (Param* param : node.layer->params()) {
      tensors.push_back({fmt::format("{}/{}", node.layer->name(), param->name), param->value});
    }
    for (NamedTensor& buffer : node.layer->buffers()) {
      tensors.push_back({fmt::format("{}/{}", node.layer->name(), buffer.name), buffer.tensor});
    }
  }
  return tensors;
}

int64_t Graph::num_parameters() const {
  int64_t total = 0;
  for (const Node& node : nodes_) {
    for (Param* param : node.layer->params()) total += param->value.numel();
  }
  return total;
}

}  // namespace strata
