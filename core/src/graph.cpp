#include "strata/graph.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>

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
  return inputs->as<std::vector<std::string>>();
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
  for (char c : name) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) return "it contains a control character";
  }
  if (!valid_utf8(name)) return "it is not valid UTF-8";
  return "";
}

}  // namespace

Graph::Graph(const Config& model, const Registries& registries, std::string backend, Rng& init_rng)
    : registries_(registries), backend_(std::move(backend)) {
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

  const std::vector<Config> items = model.at("layers").items();
  if (items.empty()) model.fail_key("layers", "the model has no layers");

  std::vector<Shape> shapes;  // output sample shape of each node
  for (std::size_t index = 0; index < items.size(); ++index) {
    const Config& item = items[index];
    if (!item.is_map()) item.fail("expected a map describing a layer");
    std::string name = item.has("name") ? item.get<std::string>("name")
                                        : fmt::format("{}{}", item.get<std::string>("type"), index);
    if (const std::string why = invalid_layer_name(name); !why.empty()) {
      // Quote the name only when printing it cannot garble the terminal.
      const bool printable = why.find("UTF-8") == std::string::npos && why.find("control") == std::string::npos;
      item.fail_key("name", fmt::format("{} cannot name a layer: {}",
                                        printable ? "'" + name + "'" : std::string("this name"), why));
    }
    if (index_of(name) >= 0) {
      item.fail_key("name", fmt::format("duplicate layer name '{}'", name));
    }

    Node node;
    std::vector<std::string> input_names = read_input_names(item);
    if (input_names.empty()) input_names.push_back(index == 0 ? "input" : nodes_.back().layer->name());
    std::vector<Shape> input_shapes;
    for (const std::string& input_name : input_names) {
      int producer = input_name == "input" ? -1 : index_of(input_name);
      if (producer < 0 && input_name != "input") {
        std::vector<std::string> known{"input"};
        for (const auto& earlier : nodes_) known.push_back(earlier.layer->name());
        item.fail_key("inputs", fmt::format("unknown input '{}' (a layer may only read the model "
                                            "input or earlier layers)\n  {}",
                                            input_name, suggestion_text(input_name, known, "tensors")));
      }
      node.inputs.push_back(producer);
      input_shapes.push_back(producer < 0 ? input_shape_ : shapes[producer]);
      if (producer >= 0) ++nodes_[producer].consumers;
    }

    // `init` belongs to the graph, not the layer: build its initializers before the registry
    // checks the layer's keys. Their names are checked against the parameters after setup.
    std::optional<Config> init = item.find("init");
    std::map<std::string, std::shared_ptr<Initializer>> custom_initializers;
    if (init) {
      if (!init->is_map()) {
        init->fail("expected a map from parameter name to initializer, such as {weight: {type: "
                   "normal, std: 0.01}}");
      }
      for (const std::string& key : init->keys()) {
        custom_initializers.emplace(key, registries.initializers.create(*init->find(key)));
      }
    }
    // lr_mult, decay_mult and freeze are the graph's keys too (training settings of the layer).
    const Multiplier lr_mult = read_multiplier(item, "lr_mult");
    const Multiplier decay_mult = read_multiplier(item, "decay_mult");
    const bool freeze = item.get<bool>("freeze", false);
    node.layer = registries.layers.create(item);
    node.layer->set_name(name);
    try {
      shapes.push_back(node.layer->setup(SetupContext(registries.kernels, backend_, name), input_shapes));
    } catch (const Error& error) {
      // Name the producers too, so a mismatch reads as "A gives X, B wanted Y".
      std::vector<std::string> sources;
      for (std::size_t j = 0; j < input_names.size(); ++j) {
        sources.push_back(fmt::format("'{}' gives {}", input_names[j], input_shapes[j].str()));
      }
      item.fail(fmt::format("{}\n  (input {})", error.what(), fmt::join(sources, ", ")));
    }

    // Initialize parameters: the layer's default initializer unless `init` names one.
    std::vector<std::string> param_names;
    for (Param* param : node.layer->params()) {
      param_names.push_back(param->name);
      auto custom = custom_initializers.find(param->name);
      auto initializer = custom != custom_initializers.end()
                             ? custom->second
                             : default_initializer(registries, name, *param);
      initializer->fill(param->value, param->fan_in, param->fan_out, init_rng);
    }
    const std::vector<Param*> layer_params = node.layer->params();
    apply_multiplier(lr_mult, "lr_mult", name, layer_params, &Param::lr_mult);
    apply_multiplier(decay_mult, "decay_mult", name, layer_params, &Param::decay_mult);
    for (Param* param : layer_params) param->frozen = freeze;
    if (init) {
      for (const auto& [key, initializer] : custom_initializers) {
        if (std::find(param_names.begin(), param_names.end(), key) == param_names.end()) {
          init->fail_key(key, fmt::format("layer '{}' has no parameter '{}'\n  {}", name, key,
                                          suggestion_text(key, param_names, "parameters")));
        }
      }
    }
    nodes_.push_back(std::move(node));
  }
}

const Shape& Graph::output_shape() const { return nodes_.back().layer->output_shape(); }

int Graph::index_of(std::string_view layer_name) const {
  for (std::size_t i = 0; i < nodes_.size(); ++i) {
    if (nodes_[i].layer->name() == layer_name) return static_cast<int>(i);
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
    if (profile_ == nullptr) {
      node.layer->forward(context, node.in, outputs_[i]);
    } else {
      const auto start = ProfileClock::now();
      node.layer->forward(context, node.in, outputs_[i]);
      profile_->forward_seconds[i] += seconds_since(start);
    }
  }
  return outputs_.back();
}

void Graph::backward(Context& context, const Tensor& doutput) {
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
  // Tensors read by several layers accumulate their gradient: start those at zero.
  for (std::size_t i = 0; i < nodes_.size(); ++i) {
    if (nodes_[i].consumers > 1 && flows_[i]) grads_[i].fill(0.0f);
  }
  for (std::size_t i = nodes_.size(); i-- > 0;) {
    if (!flows_[i]) continue;
    Node& node = nodes_[i];
    if (i + 1 != nodes_.size() && node.consumers == 0) {
      // Nothing reads this layer's output (a side branch kept for `strata forward --layers`):
      // it adds nothing to the loss, so its parameters get zero gradients and its inputs no
      // share. A producer read only by it gets a zero gradient.
      for (Param* param : node.layer->params()) param->grad.fill(0.0f);
      for (const int producer : node.inputs) {
        if (producer >= 0 && nodes_[producer].consumers == 1) grads_[producer].fill(0.0f);
      }
      continue;
    }
    const Tensor& dout = i + 1 == nodes_.size() ? doutput : grads_[i];
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
      } else {
        node.din[j] = nodes_[producer].consumers > 1 ? scratch_[producer] : grads_[producer];
      }
    }
    node.layer->backward(context, node.in, outputs_[i], dout, node.din);
    for (std::size_t j = 0; j < node.inputs.size(); ++j) {
      const int producer = node.inputs[j];
      Tensor* sum = nullptr;
      const Tensor* part = nullptr;
      if (producer >= 0 && flows_[producer] && nodes_[producer].consumers > 1) {
        sum = &grads_[producer];
        part = &scratch_[producer];
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
}

void Graph::set_profile(GraphProfile* profile) {
  profile_ = profile;
  if (profile_ != nullptr) profile_->reset(nodes_.size());
}

const Tensor& Graph::input_gradient() const {
  if (!input_gradient_ || !input_gradient_storage_.defined() || input_gradient_storage_.numel() == 0) {
    fail("no input gradient: call set_input_gradient(true), then forward() and backward()");
  }
  return input_gradient_storage_;
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
