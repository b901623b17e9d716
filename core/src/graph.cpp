#include "strata/graph.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <charconv>
#include <map>

#include "strata/backend.hpp"
#include "strata/block.hpp"
#include "strata/registry.hpp"

namespace strata {

namespace {

using ProfileClock = std::chrono::steady_clock;

double seconds_since(ProfileClock::time_point start) {
  return std::chrono::duration<double>(ProfileClock::now() - start).count();
}

// The names a layer reads, from `inputs: name` or `inputs: [a, b]`; empty when not given.
std::vector<std::string> read_input_names(const Config& item) {
  auto inputs = item.find("inputs");
  if (!inputs) return {};
  if (inputs->is_scalar()) return {inputs->as<std::string>()};
  std::vector<std::string> names = inputs->as<std::vector<std::string>>();
  if (names.empty()) {
    inputs->fail(
        "an empty list: name the layers (or 'input') this layer reads, or leave out "
        "`inputs:` to read the layer before it");
  }
  return names;
}

// A layer's `lr_mult` or `decay_mult`: a number for every parameter of the layer, or a map from
// parameter name to number. Read before the layer is built (they are the graph's keys, not the
// layer's); applied, and the names checked, after setup().
struct Multiplier {
  std::optional<Config> config;
  std::optional<float> all;
  std::map<std::string, float> per_param;
};

float read_multiplier_value(const Config& parent, std::string_view key, double value) {
  if (!(value >= 0.0) || !std::isfinite(value)) {
    parent.fail_key(key, fmt::format("must be a finite number >= 0, found {}", value));
  }
  return static_cast<float>(value);
}

Multiplier read_multiplier(const Config& item, std::string_view key) {
  Multiplier m;
  m.config = item.find(key);
  if (!m.config) return m;
  if (m.config->is_scalar()) {
    m.all = read_multiplier_value(item, key, item.get<double>(key));
  } else if (m.config->is_map()) {
    for (const std::string& name : m.config->keys()) {
      m.per_param[name] = read_multiplier_value(*m.config, name, m.config->get<double>(name));
    }
  } else {
    item.fail_key(key, "expected a number (every parameter of the layer) or a map from parameter "
                       "name to number, e.g. {weight: 1, bias: 2}");
  }
  return m;
}

// Applies `m` to `field` of each parameter; a name in the map that the layer lacks is an error.
void apply_multiplier(const Multiplier& m, std::string_view key, const std::string& layer_name,
                      const std::vector<Param*>& params, float Param::*field) {
  std::vector<std::string> names;
  for (Param* param : params) {
    names.push_back(param->name);
    if (m.all) param->*field = *m.all;
    if (auto it = m.per_param.find(param->name); it != m.per_param.end()) param->*field = it->second;
  }
  for (const auto& [name, value] : m.per_param) {
    if (std::find(names.begin(), names.end(), name) == names.end()) {
      m.config->fail_key(name, fmt::format("layer '{}' has no parameter '{}' ({})\n  {}", layer_name,
                                           name, key, suggestion_text(name, names, "parameters")));
    }
  }
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
  if (name.find(',') != std::string::npos) {
    return "it contains ',' (which separates the names of a --layers list)";
  }
  for (char c : name) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) return "it contains a control character";
  }
  if (!valid_utf8(name)) return "it is not valid UTF-8";
  return "";
}

}  // namespace

// The rules of invalid_layer_name() and of Graph::check_new_name()'s '@', applied.
std::string sanitized_layer_name(std::string name) {
  const bool utf8 = valid_utf8(name);
  for (char& c : name) {
    const auto byte = static_cast<unsigned char>(c);
    if (c == '/' || c == ',' || c == '@' || byte < 0x20 || byte == 0x7f || (!utf8 && byte >= 0x80))
      c = '_';
  }
  if (name == "input") return "input_";
  if (name.empty() || name == "." || name == "..") return "_";
  return name;
}

namespace {

// After copy `copy` (made of `copy_layers`; `layers` in the model so far) of a block with `repeat`
// copies: an Error at the block's `repeat` when the copies to come would pass kMaxLayers layers
// or, by this copy's parameters and activations, the machine's memory.
void check_repeat(const Config& item, const std::string& name, const std::string& type,
                  int64_t repeat, int64_t copy, const std::vector<Layer*>& copy_layers,
                  std::size_t layers_so_far) {
  // A model this deep is a typo: ResNet-1001 has about 3000 layers.
  constexpr long double kMaxLayers = 100000;
  const std::size_t per_copy = copy_layers.size();
  const long double remaining = static_cast<long double>(repeat - copy - 1);
  const long double layers = static_cast<long double>(layers_so_far) + remaining * per_copy;
  if (layers > kMaxLayers) {
    item.fail_key("repeat", fmt::format("{} copies of block '{}' ({}, {} layers each) make a model "
                                        "of {:.0f} layers, more than {:.0f}",
                                        repeat, name, type, per_copy, static_cast<double>(layers),
                                        static_cast<double>(kMaxLayers)));
  }
  // Each further copy holds at least this copy's parameters (with gradients and two optimizer
  // slots) and the activations of one image (with their gradients): a lower bound.
  long double floats = 0;
  for (Layer* layer : copy_layers) {
    for (Param* param : layer->params()) floats += 4.0L * param->value.numel();
    floats += 2.0L * layer->output_shape().numel();
  }
  const long double needed = floats * sizeof(float) * static_cast<long double>(repeat);
  const long double memory = static_cast<long double>(physical_memory_bytes());
  if (needed > memory) {
    item.fail_key("repeat",
                  fmt::format("{} copies of block '{}' ({}) need at least {} ({} per copy "
                              "for its parameters, their gradients and optimizer state "
                              "and one image's activations), more than this machine's "
                              "memory ({})",
                              repeat, name, type, bytes_text(static_cast<double>(needed)),
                              bytes_text(static_cast<double>(floats * sizeof(float))),
                              bytes_text(static_cast<double>(memory))));
  }
}

}  // namespace

Graph::Graph(const Config& model, const Registries& registries, const Backend& backend,
             Rng& init_rng, Precision precision)
    : registries_(registries), backend_(backend.name()), precision_(precision) {
  build(model, &init_rng);
}

Graph::Graph(const Config& model, const Registries& registries, const Backend& backend,
             Precision precision)
    : registries_(registries), backend_(backend.name()), precision_(precision) {
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

// The training settings a layer (or a whole block) carries besides its own keys.
struct Graph::TrainingKeys {
  Multiplier lr_mult, decay_mult;
  bool freeze = false;

  static TrainingKeys read(const Config& item) {
    return {read_multiplier(item, "lr_mult"), read_multiplier(item, "decay_mult"),
            item.get<bool>("freeze", false)};
  }
};

// lr_mult, decay_mult and freeze apply to the parameters of the nodes from `first` on: one
// layer's, or every sub-layer of a block.
void Graph::apply_training_keys(const TrainingKeys& keys, std::size_t first) {
  for (std::size_t i = first; i < nodes_.size(); ++i) {
    const std::vector<Param*> params = nodes_[i].layer->params();
    apply_multiplier(keys.lr_mult, "lr_mult", nodes_[i].layer->name(), params, &Param::lr_mult);
    apply_multiplier(keys.decay_mult, "decay_mult", nodes_[i].layer->name(), params, &Param::decay_mult);
    for (Param* param : params) param->frozen = keys.freeze;
  }
}

void Graph::read_input_shape(const Config& model) {
  auto input = model.get<std::vector<int64_t>>("input");
  for (int64_t d : input) {
    if (d <= 0) model.fail_key("input", fmt::format("extents must be positive, found {}", Shape(input).str()));
    if (d > kMaxExtent) {
      model.fail_key("input", fmt::format("extents must be at most {} (2^31 - 1), found {}",
                                          kMaxExtent, Shape(input).str()));
    }
  }
  try {
    Shape(input).numel();
  } catch (const Error& error) {
    model.fail_key("input", error.what());
  }
  input_shape_ = Shape(input);
}

void Graph::build(const Config& model, Rng* init_rng) {
  read_input_shape(model);
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
    if (registries_.blocks.contains(type)) {
      add_block_entry(item, name, type, std::move(input_names), init_rng);
    } else {
      add_layer_entry(item, name, type, input_names, init_rng);
    }
  }
  find_fusions();
}

void Graph::find_fusions() {
  const int n = static_cast<int>(nodes_.size());
  for (int a = 0; a < n; ++a) {
    Node& activation = nodes_[a];
    const std::optional<ActivationDesc> desc = activation.layer->fusable_activation();
    if (!desc || !activation::derivative_reads_output(*desc) || activation.inputs.size() != 1) {
      continue;
    }
    const int p = activation.inputs[0];
    // The producer's output must go to the activation alone, and the activation's somewhere
    // (an output nobody reads gets no gradient buffer for the pair to share).
    if (p < 0 || nodes_[p].consumers != 1 || (a + 1 != n && activation.consumers == 0)) continue;
    // The two share their buffers (shares_output): the producer's backward must not read its
    // output, which the activation overwrites in place.
    if (!nodes_[p].layer->fuses(*desc) || nodes_[p].layer->backward_reads_output() ||
        nodes_[p].layer->output_shape() != activation.layer->output_shape()) {
      continue;
    }
    nodes_[p].fusable = a;
    activation.fused_producer = p;
  }
}

void Graph::add_layer_entry(const Config& item, const std::string& name, const std::string& type,
                            const std::vector<std::string>& input_names, Rng* init_rng) {
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
  const TrainingKeys keys = TrainingKeys::read(item);
  auto layer = registries_.layers.create(item);
  add_node(name, std::move(layer), input_names, item, init, initializers, init_rng, -1);
  apply_training_keys(keys, nodes_.size() - 1);
}

// A block: read the graph's keys, let the plugin read (and the registry check) the rest, then
// expand each copy in place.
void Graph::add_block_entry(const Config& item, const std::string& name, const std::string& type,
                            std::vector<std::string> input_names, Rng* init_rng) {
  const bool repeated = item.has("repeat");
  // Read only when written: get() with a default would record `repeat: 1` in the experiment a
  // checkpoint stores, which rebuilt would name the layers "<block>.0.<part>".
  const int64_t repeat = repeated ? item.get<int64_t>("repeat") : 1;
  if (repeat < 1) {
    item.fail_key("repeat", fmt::format("must be at least 1 (the number of copies of the block), found {}", repeat));
  }
  if (item.has("init")) {
    item.fail_key("init", "blocks take no `init`: their sub-layers use their default initializers");
  }
  const TrainingKeys keys = TrainingKeys::read(item);
  for (const Multiplier* m : {&keys.lr_mult, &keys.decay_mult}) {
    if (!m->per_param.empty()) {
      item.fail_key(m == &keys.lr_mult ? "lr_mult" : "decay_mult",
                    "on a block, give one number for every parameter of its sub-layers");
    }
  }
  const std::size_t first_node = nodes_.size();
  std::shared_ptr<Block> block = registries_.blocks.create(item);
  const int block_index = static_cast<int>(blocks_.size());
  blocks_.push_back(BlockInfo{name, type, repeat, static_cast<int>(nodes_.size()), 0});
  for (int64_t copy = 0; copy < repeat; ++copy) {
    const std::size_t copy_start = nodes_.size();
    const std::string prefix = repeated ? fmt::format("{}.{}", name, copy) : name;
    if (repeated) check_new_name(prefix, item);
    add_block_copy(item, *block, prefix, copy, repeat, input_names, init_rng, block_index);
    const int output = static_cast<int>(nodes_.size()) - 1;
    if (repeated) aliases_.emplace_back(prefix, output);
    input_names = {nodes_.back().layer->name()};
    // The first two copies (the first may change the shape) measure what the rest will need:
    // `repeat: 1000000000` is an error here, not a billion allocations.
    if (copy < 2 && copy + 1 < repeat) {
      std::vector<Layer*> copy_layers;
      for (std::size_t i = copy_start; i < nodes_.size(); ++i)
        copy_layers.push_back(nodes_[i].layer.get());
      check_repeat(item, name, type, repeat, copy, copy_layers, nodes_.size());
    }
  }
  blocks_.back().end = static_cast<int>(nodes_.size());
  apply_training_keys(keys, first_node);
  aliases_.emplace_back(name, static_cast<int>(nodes_.size()) - 1);
}

// One copy of a block (`prefix`: its name) reading `input_names`: the plugin expands it into
// parts, and each part becomes a node named "<prefix>.<part>".
void Graph::add_block_copy(const Config& item, Block& block, const std::string& prefix,
                           int64_t copy, int64_t repeat, const std::vector<std::string>& input_names,
                           Rng* init_rng, int block_index) {
  const std::string& type = blocks_[block_index].type;
  const int count = static_cast<int>(input_names.size());
  if (count < block.min_inputs() || count > block.max_inputs()) {
    item.fail(fmt::format("block '{}' ({}) takes {} to {} input(s), got {}{}", prefix, type,
                          block.min_inputs(), block.max_inputs(), count,
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
    shapes.push_back(produced_shape(producer));
  }
  const BlockContext context(item, prefix, shapes, copy, repeat);
  const std::vector<BlockPart> parts = block.expand(context);
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
    input_shapes.push_back(produced_shape(producer));
  }

  node.layer = std::move(layer);
  node.layer->set_name(name);
  try {
    node.layer->setup(SetupContext(registries_.kernels, backend_, name, precision_), input_shapes);
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
    if (producer < 0) continue;
    ++nodes_[producer].consumers;
    nodes_[producer].last_consumer = static_cast<int>(nodes_.size());
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

std::vector<Shape> Graph::input_shapes(std::size_t i) const {
  std::vector<Shape> shapes;
  for (int producer : nodes_[i].inputs) shapes.push_back(produced_shape(producer));
  return shapes;
}

bool Graph::keeps_output(std::size_t i) const { return keeps_output(i, retention_); }

namespace {

// Per node: does its output survive the forward pass under `retention`? Under kBackward when its
// own backward reads it, a consumer's backward reads its input, or it is the model's output. One
// pass over the consumers' inputs. (A template so that it can take Graph's private Node type.)
template <class Nodes>
std::vector<char> kept_outputs(const Nodes& nodes, OutputRetention retention) {
  std::vector<char> kept(nodes.size(), retention == OutputRetention::kAll);
  if (!kept.empty()) kept.back() = 1;
  if (retention == OutputRetention::kOutput) return kept;  // no backward runs
  for (std::size_t c = 0; c < nodes.size(); ++c) {
    kept[c] = kept[c] || nodes[c].layer->backward_reads_output();
    if (!nodes[c].layer->backward_reads_inputs()) continue;
    for (int producer : nodes[c].inputs) {
      if (producer >= 0) kept[static_cast<std::size_t>(producer)] = 1;
    }
  }
  return kept;
}

}  // namespace

bool Graph::keeps_output(std::size_t i, OutputRetention retention) const {
  if (!recomputing(retention)) return kept_outputs(nodes_, retention).at(i) != 0;
  // The plan allocated, or the one a batch of 32 would get.
  if (recomputing(retention_) && allocated_batch_ >= 0) return kept_.at(i) != 0;
  return plan_step(32).recompute.kept.at(i) != 0;
}

bool Graph::recomputes(std::size_t i) const {
  return recomputing(retention_) && allocated_batch_ >= 0 && recompute_plan_.replayed.at(i) != 0;
}

void Graph::set_output_retention(OutputRetention retention) {
  if (retention == retention_) return;
  retention_ = retention;
  replan();
}

void Graph::set_recomputation(bool on) {
  if (on == recompute_) return;
  recompute_ = on;
  replan();
}

void Graph::replan() {
  allocated_batch_ = -1;  // re-plan at the next forward
  batch_ = -1;
  gradient_batch_ = -1;  // (recomputing, the gradients are in the outputs' arena)
  gradient_views_batch_ = -1;
}

std::vector<BufferRequest> Graph::output_requests(int64_t batch, OutputRetention retention) const {
  const int n = static_cast<int>(nodes_.size());
  const std::vector<char> kept = kept_outputs(nodes_, retention);
  std::vector<BufferRequest> requests;
  const auto last_read = [&](int i) {
    return kept[i] ? n - 1 : std::max(i, nodes_[i].last_consumer);
  };
  for (int i = 0; i < n; ++i) {
    const int producer = nodes_[i].fused_producer;
    if (producer >= 0 && shares_output(producer, kept)) {
      requests.push_back({0, i, i});  // its producer's buffer
      continue;
    }
    const int last = shares_output(i, kept) ? last_read(nodes_[i].fusable) : last_read(i);
    requests.push_back({nodes_[i].layer->output_shape().with_batch(batch).numel(), i, last});
  }
  return requests;
}

void Graph::allocate(int64_t batch) {
  if (batch > allocated_batch_) {
    // Every view of the old arena goes first, so that it is freed before the new one is made.
    outputs_storage_.clear();
    replay_storage_.clear();
    outputs_.clear();
    for (Node& node : nodes_) node.in.clear();
    if (recomputing(retention_)) {
      allocate_step(batch);
    } else {
      kept_ = kept_outputs(nodes_, retention_);
      const ArenaPlan plan = plan_arena(output_requests(batch, retention_));
      output_arena_ = Tensor(Shape{plan.floats});
      place_outputs(plan, 0, outputs_storage_, batch);
    }
    allocated_batch_ = batch;
  }
  outputs_.resize(nodes_.size());
  for (std::size_t i = 0; i < nodes_.size(); ++i) {
    // (A Tensor of no elements, [0, ...] when the first batch was empty, is defined.)
    outputs_[i] = outputs_storage_[i].batch_slice(0, batch);
    nodes_[i].in.resize(nodes_[i].inputs.size());
    nodes_[i].din.resize(nodes_[i].inputs.size());
  }
  batch_ = batch;
}

void Graph::place_outputs(const ArenaPlan& plan, std::size_t first, std::vector<Tensor>& storage,
                          int64_t batch, const std::vector<char>* only) {
  storage.assign(nodes_.size(), Tensor());
  for (std::size_t i = 0; i < nodes_.size(); ++i) {
    if (only != nullptr && (*only)[i] == 0) continue;
    const int producer = nodes_[i].fused_producer;
    storage[i] = producer >= 0 && shares_output(producer, kept_)
                     ? storage[static_cast<std::size_t>(producer)]
                     : output_arena_.region(plan.offsets[first + i],
                                            nodes_[i].layer->output_shape().with_batch(batch));
  }
}

void Graph::allocate_step(int64_t batch) {
  StepPlan plan = plan_step(batch);
  // The gradients' views of an earlier arena go first, too.
  grads_storage_.clear();
  scratch_storage_.clear();
  grads_.clear();
  scratch_.clear();
  for (Node& node : nodes_) node.din.clear();
  gradient_arena_ = Tensor();
  output_arena_ = Tensor();
  output_arena_ = Tensor(Shape{plan.arena.floats});
  kept_ = plan.recompute.kept;
  const std::size_t n = nodes_.size();
  place_outputs(plan.arena, 0, outputs_storage_, batch);
  place_outputs(plan.arena, n, replay_storage_, batch, &plan.recompute.replayed);
  place_gradients(plan.gradient_slots, plan.arena, 2 * n, output_arena_, batch);
  recompute_plan_ = std::move(plan.recompute);
}

std::vector<BufferRequest> Graph::step_requests(const RecomputePlan& plan, int64_t batch,
                                                std::vector<std::pair<int, int>>* slots) const {
  const int n = static_cast<int>(nodes_.size());
  const std::vector<char>& kept = plan.kept;
  const auto floats = [&](int i) {
    return nodes_[i].layer->output_shape().with_batch(batch).numel();
  };
  // At forward, a kept output lives to its node's backward (the model's output to the end of
  // the step: the caller reads it), the others to their last reader's forward.
  const auto forward_last = [&](int i) {
    if (!kept[i]) return std::max(i, nodes_[i].last_consumer);
    return i + 1 == n ? plan.steps - 1 : plan.backward_step[i];
  };
  // Recomputed, an output lives from its segment's replay to the last backward reading it.
  const auto replay_last = [&](int i) {
    int last = plan.replay_step[plan.segment_of[i]];
    if (nodes_[i].layer->backward_reads_output()) last = std::max(last, plan.backward_step[i]);
    for (int c = i + 1; c <= nodes_[i].last_consumer; ++c) {
      const Node& consumer = nodes_[c];
      if (!consumer.layer->backward_reads_inputs()) continue;
      if (std::find(consumer.inputs.begin(), consumer.inputs.end(), i) != consumer.inputs.end()) {
        last = std::max(last, plan.backward_step[c]);
      }
    }
    return last;
  };
  std::vector<BufferRequest> requests;
  const auto add = [&](bool replay) {
    for (int i = 0; i < n; ++i) {
      const int first = replay ? plan.replay_step[plan.segment_of[i]] : i;
      const int producer = nodes_[i].fused_producer;
      if ((replay && !plan.replayed[i]) || (producer >= 0 && shares_output(producer, kept))) {
        requests.push_back({0, first, first});  // none, or its producer's buffer
        continue;
      }
      const auto last = [&](int node) { return replay ? replay_last(node) : forward_last(node); };
      const int activation = nodes_[i].fusable;
      requests.push_back({floats(i), first,
                          shares_output(i, kept) ? std::max(last(i), last(activation)) : last(i)});
    }
  };
  add(false);
  add(true);
  std::vector<BufferRequest> gradients = gradient_requests(batch, slots, &plan.backward_step);
  requests.insert(requests.end(), gradients.begin(), gradients.end());
  return requests;
}

Graph::StepPlan Graph::plan_step(int64_t batch) const {
  std::vector<RecomputeNode> view(nodes_.size());
  for (std::size_t i = 0; i < nodes_.size(); ++i) {
    const Layer& layer = *nodes_[i].layer;
    view[i].inputs = nodes_[i].inputs;
    view[i].floats = nodes_[i].fused_producer >= 0 ? 0 : layer.output_shape().numel();
    view[i].recomputable = layer.recomputable();
    view[i].backward_reads_inputs = layer.backward_reads_inputs();
    view[i].backward_reads_output = layer.backward_reads_output();
    view[i].cut_after = nodes_[i].fusable < 0;
  }
  std::optional<StepPlan> best;
  for (int64_t budget : recompute_budgets(view)) {
    StepPlan plan;
    plan.recompute = plan_recomputation(view, budget);
    plan.requests = step_requests(plan.recompute, batch, &plan.gradient_slots);
    plan.arena = plan_arena(plan.requests);
    // The smallest arena; of equal ones, the least recomputation.
    if (!best || plan.arena.floats < best->arena.floats ||
        (plan.arena.floats == best->arena.floats &&
         plan.recompute.replayed_floats < best->recompute.replayed_floats)) {
      best = std::move(plan);
    }
  }
  return std::move(*best);
}

std::vector<BufferRequest> Graph::gradient_requests(int64_t batch,
                                                    std::vector<std::pair<int, int>>* slots,
                                                    const std::vector<int>* backward_step) const {
  // Backward runs node n-1 at step 0, ..., node 0 at step n-1 (unless backward_step says).
  const int n = static_cast<int>(nodes_.size());
  const auto step = [n, backward_step](int node) {
    return backward_step ? (*backward_step)[static_cast<std::size_t>(node)] : n - 1 - node;
  };
  const auto floats = [&](int node) {
    return nodes_[node].layer->output_shape().with_batch(batch).numel();
  };
  std::vector<BufferRequest> requests;
  // An output gradient: written first by the backward of the last layer reading the tensor, read
  // last by the backward of the layer producing it. The last node's comes from the loss.
  // A fusable activation and its producer share one (shares_gradient): the activation's
  // backward writes the producer's in place.
  for (int i = 0; i + 1 < n; ++i) {
    if (nodes_[i].consumers == 0) continue;
    const bool shared = shares_gradient(i);
    const int producer = nodes_[i].fused_producer;
    const bool into_producer = producer >= 0 && shares_gradient(producer);
    requests.push_back({shared ? 0 : floats(i), step(nodes_[i].last_consumer),
                        step(into_producer ? producer : i)});
    if (slots) slots->emplace_back(i, -1);
  }
  // A consumer's share of the gradient of a tensor several layers read: written and summed in
  // the consumer's backward step.
  for (int c = 0; c < n; ++c) {
    for (std::size_t j = 0; j < nodes_[c].inputs.size(); ++j) {
      const int producer = nodes_[c].inputs[j];
      if (producer < 0 || nodes_[producer].consumers < 2) continue;
      requests.push_back({floats(producer), step(c), step(c)});
      if (slots) slots->emplace_back(c, static_cast<int>(j));
    }
  }
  return requests;
}

void Graph::place_gradients(const std::vector<std::pair<int, int>>& slots, const ArenaPlan& plan,
                            std::size_t first, const Tensor& arena, int64_t batch) {
  grads_storage_.assign(nodes_.size(), Tensor());
  scratch_storage_.assign(nodes_.size(), {});
  for (std::size_t k = 0; k < slots.size(); ++k) {
    const auto [node, input] = slots[k];
    if (input < 0 && shares_gradient(node)) continue;  // its activation's (below)
    const int producer = input < 0 ? node : nodes_[node].inputs[input];
    Tensor region = arena.region(plan.offsets[first + k],
                                 nodes_[producer].layer->output_shape().with_batch(batch));
    if (input < 0) {
      grads_storage_[node] = std::move(region);
    } else {
      scratch_storage_[node].resize(nodes_[node].inputs.size());
      scratch_storage_[node][input] = std::move(region);
    }
  }
  for (std::size_t i = 0; i < nodes_.size(); ++i) {
    if (shares_gradient(static_cast<int>(i))) {
      grads_storage_[i] = grads_storage_[static_cast<std::size_t>(nodes_[i].fusable)];
    }
  }
  gradient_batch_ = batch;
}

void Graph::allocate_gradients() {
  if (batch_ > gradient_batch_) {
    const int64_t batch = allocated_batch_;  // plan for what the outputs hold: grows at most once
    std::vector<std::pair<int, int>> slots;
    const std::vector<BufferRequest> requests = gradient_requests(batch, &slots);
    const ArenaPlan plan = plan_arena(requests);
    gradient_arena_ = Tensor(Shape{plan.floats});
    place_gradients(slots, plan, 0, gradient_arena_, batch);
  }
  gradient_views_batch_ = batch_;
  const auto slice = [this](const Tensor& storage) {
    return storage.defined() ? storage.batch_slice(0, batch_) : Tensor();
  };
  grads_.resize(nodes_.size());
  scratch_.resize(nodes_.size());
  for (std::size_t i = 0; i < nodes_.size(); ++i) {
    grads_[i] = slice(grads_storage_[i]);
    scratch_[i].resize(scratch_storage_[i].size());
    for (std::size_t j = 0; j < scratch_storage_[i].size(); ++j) {
      scratch_[i][j] = slice(scratch_storage_[i][j]);
    }
  }
}

namespace {

// Element counts to bytes; the parameters count twice (values and gradients).
Graph::Memory memory_in_bytes(int64_t outputs, int64_t gradients, int64_t parameters) {
  constexpr auto kFloat = static_cast<int64_t>(sizeof(float));
  return {outputs * kFloat, gradients * kFloat, 2 * parameters * kFloat};
}

}  // namespace

Graph::Memory Graph::memory(int64_t batch, OutputRetention retention) const {
  if (recomputing(retention)) {
    return memory_in_bytes(plan_step(batch).arena.floats, 0, num_parameters());
  }
  return memory_in_bytes(plan_arena(output_requests(batch, retention)).floats,
                         plan_arena(gradient_requests(batch, nullptr)).floats, num_parameters());
}

Graph::Memory Graph::held() const {
  const auto floats = [](const Tensor& arena) { return arena.defined() ? arena.numel() : 0; };
  return memory_in_bytes(floats(output_arena_), floats(gradient_arena_), num_parameters());
}

bool Graph::samples_independent_in_inference() const {
  return std::none_of(nodes_.begin(), nodes_.end(),
                      [](const Node& node) { return node.layer->mixes_samples_in_inference(); });
}

const Tensor& Graph::forward(Context& context, const Tensor& input) {
  if (input.rank() != input_shape_.rank() + 1 || input.shape().without_batch() != input_shape_) {
    fail("the model expects input of shape {} (batch first), got {}",
         input_shape_.with_batch(input.rank() > 0 ? input.dim(0) : 0).str(), input.shape().str());
  }
  if (input.dim(0) != batch_) allocate(input.dim(0));
  if (recomputing(retention_)) {
    // The last backward left the recomputed outputs' views in place of the forward's.
    for (std::size_t i = 0; i < nodes_.size(); ++i) {
      if (recompute_plan_.replayed[i]) outputs_[i] = outputs_storage_[i].batch_slice(0, batch_);
    }
  }
  input_ = input;
  plan_fusion(context);
  for (std::size_t i = 0; i < nodes_.size(); ++i) {
    Node& node = nodes_[i];
    bind_inputs(node);
    if (runs_fused(i)) {
      // Its producer wrote its output (its backward runs as usual).
      if (observer_) observer_(i, outputs_[i], context);
      continue;
    }
    // Fused, it writes into the buffer it shares with its activation (shares_output).
    if (profile_ == nullptr) {
      node.layer->forward(context, node.in, outputs_[i]);
    } else {
      const auto start = ProfileClock::now();
      node.layer->forward(context, node.in, outputs_[i]);
      profile_->forward_seconds[i] += seconds_since(start);
    }
    if (observer_ && !fused_[i]) observer_(i, outputs_[i], context);
  }
  return outputs_.back();
}

void Graph::plan_fusion(const Context& context) {
  // Not when the producer's output is kept (kAll: activation() returns it), nor under gradient
  // checking, whose frozen branches the activation layers hold (FrozenBranches).
  const bool on = fusion_ && context.frozen == nullptr;
  fused_.assign(nodes_.size(), 0);
  for (std::size_t p = 0; p < nodes_.size(); ++p) {
    Node& node = nodes_[p];
    if (node.fusable < 0) continue;
    fused_[p] = on && !kept_[p];
    node.layer->set_fused_activation(fused_[p] ? nodes_[node.fusable].layer->fusable_activation()
                                               : std::nullopt);
  }
}

bool Graph::shares_output(int producer, const std::vector<char>& kept) const {
  return nodes_[producer].fusable >= 0 && kept[producer] == 0;
}

bool Graph::shares_gradient(int producer) const {
  const int activation = nodes_[producer].fusable;
  return activation >= 0 && activation + 1 != static_cast<int>(nodes_.size());
}

bool Graph::runs_fused(std::size_t i) const {
  const int producer = nodes_[i].fused_producer;
  return producer >= 0 && fused_[producer] != 0;
}

int Graph::fused_into(std::size_t i) const {
  return i < nodes_.size() && i < fused_.size() && runs_fused(i) ? nodes_[i].fused_producer : -1;
}

void Graph::backward(Context& context, const Tensor& doutput,
                     const std::function<void(std::size_t)>& node_done) {
  if (retention_ == OutputRetention::kOutput) {
    fail(
        "backward: this graph keeps only the model's output (OutputRetention::kOutput, for "
        "inference), not what a backward reads; set OutputRetention::kBackward to train");
  }
  if (doutput.shape() != outputs_.back().shape()) {
    fail("backward: the output gradient has shape {} but the output is {}", doutput.shape().str(),
         outputs_.back().shape().str());
  }
  // A node's backward runs only when a gradient must flow through it: it has a parameter that
  // is not frozen, or one of its inputs does (or is the model input and its gradient is wanted).
  // A frozen front of the network thus costs no backward at all.
  flows_.assign(nodes_.size(), 0);
  int input_consumers = 0;
  for (std::size_t i = 0; i < nodes_.size(); ++i) {
    bool flows = false;
    for (const Param* param : nodes_[i].layer->params()) flows = flows || !param->frozen;
    for (int producer : nodes_[i].inputs) {
      flows = flows || (producer < 0 ? input_gradient_ : flows_[producer] != 0);
      input_consumers += producer < 0;
    }
    flows_[i] = flows;
  }
  Tensor input_scratch;
  if (input_gradient_) {
    const Shape shape = input_.shape();
    if (input_gradient_storage_.shape() != shape) input_gradient_storage_ = Tensor(shape);
    input_gradient_storage_.fill(0.0f);
    if (input_consumers > 1) input_scratch = Tensor(shape);
  }
  if (gradient_views_batch_ != batch_) allocate_gradients();
  written_.assign(nodes_.size(), 0);
  const bool recomputing_outputs = recomputing(retention_);
  for (std::size_t i = nodes_.size(); i-- > 0;) {
    if (recomputing_outputs) {
      const int segment = recompute_plan_.segment_of[i];
      if (recompute_plan_.segment_end[segment] == static_cast<int>(i)) {
        replay_segment(context, segment);
      }
    }
    backward_node(context, doutput, i, input_consumers, input_scratch);
    if (node_done) node_done(i);
  }
}

// One node of backward(): its layer's backward, then its share summed into tensors that several
// layers read.
void Graph::backward_node(Context& context, const Tensor& doutput, std::size_t i,
                          int input_consumers, Tensor& input_scratch) {
  if (!flows_[i]) return;
  Node& node = nodes_[i];
  if (i + 1 != nodes_.size() && node.consumers == 0) {
    // Nothing reads this layer's output (a side branch kept for `strata forward --layers`):
    // it adds nothing to the loss, so its parameters get zero gradients and its inputs no
    // share. A producer read only by it gets a zero gradient.
    // (Its producers' gradients get no share: see below.)
    for (Param* param : node.layer->params()) param->grad.fill(0.0f);
    return;
  }
  // The first consumer to run backward writes a tensor's gradient, the others write a scratch
  // and add it in. A tensor whose readers all add nothing to the loss (side branches) has
  // received nothing: its gradient is zero.
  if (i + 1 != nodes_.size() && !written_[i]) grads_[i].fill(0.0f);
  const Tensor& dout = i + 1 == nodes_.size() ? doutput : grads_[i];
  into_scratch_.assign(node.inputs.size(), 0);
  bind_inputs(node);  // (a replay since forward may have moved them)
  const auto start = profile_ != nullptr ? ProfileClock::now() : ProfileClock::time_point{};
  for (std::size_t j = 0; j < node.inputs.size(); ++j) {
    const int producer = node.inputs[j];
    if (producer < 0) {
      // The gradient of the model input is computed only on request (gradient checking).
      node.din[j] = !input_gradient_        ? Tensor()
                    : input_consumers > 1 ? input_scratch
                                          : input_gradient_storage_;
    } else if (!flows_[producer]) {
      node.din[j] = Tensor();  // nothing before it learns: skip that work
    } else if (!written_[producer]) {
      node.din[j] = grads_[producer];
      written_[producer] = 1;
    } else {
      node.din[j] = scratch_[i][j];
      into_scratch_[j] = 1;
    }
  }
  node.layer->backward(context, node.in, outputs_[i], dout, node.din);
  for (std::size_t j = 0; j < node.inputs.size(); ++j) {
    const int producer = node.inputs[j];
    Tensor* sum = nullptr;
    const Tensor* part = nullptr;
    if (producer >= 0 && into_scratch_[j]) {
      sum = &grads_[producer];
      part = &scratch_[i][j];
    } else if (producer < 0 && input_gradient_ && input_consumers > 1) {
      sum = &input_gradient_storage_;
      part = &input_scratch;
    }
    if (sum != nullptr) {
      float* total = sum->data();
      const float* share = part->data();
      const int64_t n = sum->numel();
      for (int64_t k = 0; k < n; ++k) total[k] += share[k];
    }
  }
  if (profile_ != nullptr) profile_->backward_seconds[i] += seconds_since(start);
}

void Graph::bind_inputs(Node& node) const {
  for (std::size_t j = 0; j < node.inputs.size(); ++j) {
    node.in[j] = node.inputs[j] < 0 ? input_ : outputs_[node.inputs[j]];
  }
}

void Graph::replay_segment(Context& context, int segment) {
  const RecomputePlan& plan = recompute_plan_;
  const int last = plan.segment_end[segment];
  const int first = segment == 0 ? 0 : plan.segment_end[segment - 1] + 1;
  bool flows = false;  // no backward runs in the segment: nothing to recompute
  for (int i = first; i <= last; ++i) flows = flows || flows_[i] != 0;
  if (!flows) return;
  Context again = context;
  again.recomputing = true;
  for (int i = first; i <= last; ++i) {
    if (!plan.replayed[i]) continue;
    Node& node = nodes_[i];
    outputs_[i] = replay_storage_[i].batch_slice(0, batch_);
    bind_inputs(node);
    if (runs_fused(i)) continue;  // its producer wrote it, as in forward
    const auto start = profile_ != nullptr ? ProfileClock::now() : ProfileClock::time_point{};
    node.layer->forward(again, node.in, outputs_[i]);
    // The time a step spends recomputing is backward's.
    if (profile_ != nullptr) profile_->backward_seconds[i] += seconds_since(start);
  }
}

void Graph::set_profile(GraphProfile* profile) {
  profile_ = profile;
  if (profile_ != nullptr) profile_->reset(nodes_.size());
}

const Tensor& Graph::input_gradient() const {
  if (!input_gradient_ || !input_gradient_storage_.defined()) {  // (defined with 0 images too)
    fail("no input gradient: call set_input_gradient(true), then forward() and backward()");
  }
  return input_gradient_storage_;
}

const Tensor& Graph::activation(std::string_view layer_name) const {
  const int index = index_of(layer_name);
  if (index < 0) fail("the model has no layer '{}'", layer_name);
  if (batch_ < 0) fail("no activations yet: run forward() first");
  if (!keeps_output(static_cast<std::size_t>(index))) {
    fail(
        "the output of layer '{}' is not kept after forward: this graph keeps only the outputs "
        "a backward reads (OutputRetention::kBackward, as training does) and reused its memory; "
        "set OutputRetention::kAll, or read it during forward with a forward observer",
        layer_name);
  }
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
