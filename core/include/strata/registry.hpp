// strata/registry.hpp: one registry per kind of plugin object, filled at run time by plugins.
//
// Registry<Base> maps a type name ("conv2d") to a factory taking a Config. create():
//   - reports an unknown type at the config's `type` key, with the closest match and the list of
//     known types of that kind;
//   - after the factory returns, rejects any key the factory did not read (Config::check_unused);
//   - returns a shared_ptr that also keeps the owning plugin's library loaded.
// Registering a type twice is an error naming both plugins.
//
// Registration is transactional per plugin: when a plugin's register_all() throws, or a name it
// registered is refused afterwards, PluginLoader::load_file() removes every entry that plugin
// added (Registries::remove_owned_by) before it reports the error, so a failed load leaves no type
// of that plugin behind, and a later plugin may register the same names.
#pragma once

#include <fmt/format.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "strata/config.hpp"
#include "strata/error.hpp"
#include "strata/plugin.hpp"

namespace strata {

class Layer;
class Block;
class Optimizer;
class Schedule;
class Initializer;
class Dataset;
class Transform;
class Loss;
class Backend;
class Kernel;
class Communicator;

namespace detail {
std::string plugin_label(const PluginRef& plugin);  // "'layers_basic' (/path/libstrata_layers_basic.so)"

// Wraps `object` in a shared_ptr that also owns a reference to `owner` (and so its library).
// The object is destroyed before the reference to the library is released.
template <class T>
std::shared_ptr<T> keep_plugin_alive(std::unique_ptr<T> object, PluginRef owner) {
  auto holder = std::make_shared<std::pair<PluginRef, std::unique_ptr<T>>>(std::move(owner),
                                                                          std::move(object));
  T* raw = holder->second.get();
  return std::shared_ptr<T>(std::move(holder), raw);
}
}  // namespace detail

template <class Base>
class Registry {
 public:
  using Factory = std::function<std::unique_ptr<Base>(const Config&)>;
  // `owner` is declared first so it is destroyed last: the factory's code lives in the plugin.
  struct Entry {
    PluginRef owner;
    Factory factory;
  };

  // `kind` names the registry in messages ("layer"); `current` points at the plugin whose
  // register_all() is running, which becomes the owner of everything added meanwhile.
  Registry(std::string kind, const PluginRef* current) : kind_(std::move(kind)), current_(current) {}

  void add(const std::string& type, Factory factory) {
    if (auto it = entries_.find(type); it != entries_.end()) {
      fail("{} type '{}' is registered twice: by plugin {} and by plugin {}", kind_, type,
           detail::plugin_label(it->second.owner), detail::plugin_label(*current_));
    }
    entries_.emplace(type, Entry{*current_, std::move(factory)});
  }
  // Shorthand for a type constructible from `const Config&`.
  template <class T>
  void add(const std::string& type) {
    add(type, [](const Config& config) -> std::unique_ptr<Base> { return std::make_unique<T>(config); });
  }

  // Declares `type` (already added) the default of this kind: what the core uses where an
  // experiment names none (the default backend, loss, schedule), so the core names no plugin. A
  // plugin declares only its own types; a second declaration by another plugin is an error
  // naming both. default_type() is "" when no loaded plugin declared one.
  void declare_default(const std::string& type) {
    if (!contains(type)) {
      fail("plugin {} declares {} type '{}' the default, but registers no such type",
           detail::plugin_label(*current_), kind_, type);
    }
    if (!default_type_.empty() && default_type_ != type) {
      fail("two default {} types: '{}' by plugin {} and '{}' by plugin {}", kind_, default_type_,
           detail::plugin_label(entries_.at(default_type_).owner), type,
           detail::plugin_label(*current_));
    }
    default_type_ = type;
  }
  const std::string& default_type() const { return default_type_; }

  bool contains(std::string_view type) const { return entries_.find(std::string(type)) != entries_.end(); }
  std::vector<std::string> types() const {
    std::vector<std::string> names;
    for (const auto& [name, entry] : entries_) names.push_back(name);
    return names;
  }
  const std::map<std::string, Entry>& entries() const { return entries_; }
  const std::string& kind() const { return kind_; }
  // Removes every type `owner` registered, and its default declaration; entries of other plugins
  // are untouched.
  void remove_owned_by(const PluginRef& owner) {
    std::erase_if(entries_, [&](const auto& item) { return item.second.owner == owner; });
    if (!default_type_.empty() && !contains(default_type_)) default_type_.clear();
  }

  // Creates the type named by the config's `type` key.
  std::shared_ptr<Base> create(const Config& config) const {
    return create_impl(config.get<std::string>("type"), config, "type");
  }
  // Creates `type` from `config` (which may be empty); errors point at `config`.
  std::shared_ptr<Base> create(std::string_view type, const Config& config) const {
    return create_impl(std::string(type), config, "");
  }

 private:
  std::shared_ptr<Base> create_impl(const std::string& type, const Config& config,
                                    std::string_view type_key) const {
    auto it = entries_.find(type);
    if (it == entries_.end()) {
      std::string message = fmt::format("unknown {} type '{}'\n  {}", kind_, type,
                                        suggestion_text(type, types(), kind_ + " types"));
      if (!config.valid()) fail("{}", message);
      if (type_key.empty()) config.fail(message);
      config.fail_key(type_key, message);
    }
    std::unique_ptr<Base> object = it->second.factory(config);
    if (config.valid()) config.check_unused();
    return detail::keep_plugin_alive(std::move(object), it->second.owner);
  }

  std::string kind_;
  const PluginRef* current_;
  std::map<std::string, Entry> entries_;
  std::string default_type_;
};

// Compute kernels are keyed by (op, backend), and each key holds an ORDERED list of named
// implementations (oneDNN's implementation list): pick() tries them in registration order and
// takes the first that supports the descriptor, so a backend registers its specialised
// implementations first and its general one last.
//   - add<K>(op, backend, name) appends implementation `name`; a second (op, backend, name) is an
//     Error naming both plugins. Names follow the plugin name rule (plugin.cpp).
//   - add<K>(op, backend) and add(op, backend, factory), the forms older plugins use, register
//     one implementation named after the backend.
//   - The created kernel's implementation() defaults to its registered name (Kernel, backend.hpp).
class KernelRegistry {
 public:
  using Factory = std::function<std::unique_ptr<Kernel>()>;
  struct Entry {
    PluginRef owner;   // destroyed after the factory, whose code lives in the plugin
    std::string name;  // the implementation's name, unique within its (op, backend) list
    Factory factory;
  };
  using Key = std::pair<std::string, std::string>;  // (op, backend)
  explicit KernelRegistry(const PluginRef* current) : current_(current) {}

  void add(const std::string& op, const std::string& backend, const std::string& name,
           Factory factory);
  void add(const std::string& op, const std::string& backend, Factory factory) {
    add(op, backend, backend, std::move(factory));
  }
  template <class K>
  void add(const std::string& op, const std::string& backend, const std::string& name) {
    add(op, backend, name, []() -> std::unique_ptr<Kernel> { return std::make_unique<K>(); });
  }
  template <class K>
  void add(const std::string& op, const std::string& backend) {
    add<K>(op, backend, backend);
  }

  bool contains(std::string_view op, std::string_view backend) const;
  // The implementations of `op` on `backend`, in the order pick() tries them (empty if none).
  std::vector<std::string> implementations(std::string_view op, std::string_view backend) const;
  // Every (op, backend) list, sorted by key; each list in registration order.
  const std::map<Key, std::vector<Entry>>& entries() const { return entries_; }
  // Removes every kernel `owner` registered.
  void remove_owned_by(const PluginRef& owner) {
    for (auto& [key, list] : entries_) {
      std::erase_if(list, [&](const Entry& entry) { return entry.owner == owner; });
    }
    std::erase_if(entries_, [](const auto& item) { return item.second.empty(); });
  }

  // Creates the kernel for `op` on `backend`: the first implementation of the backend's list that
  // supports `desc`, else the first of the reference's. A fallback is reported once per
  // (op, backend) on stderr, naming `who` (the layer); no kernel at all is an Error. The kernel is
  // prepare()d for `desc` before it is returned.
  template <class K>
  std::shared_ptr<K> pick(std::string_view op, std::string_view backend,
                          const typename K::Desc& desc, std::string_view who) const {
    std::string reason;
    if (auto kernel = try_create<K>(op, backend, desc, reason)) return kernel;
    if (backend != "reference") {
      if (auto kernel = try_create<K>(op, "reference", desc, reason)) {
        note_fallback(op, backend, who, reason);
        return kernel;
      }
    }
    fail("{}: no kernel for op '{}' on backend '{}' or 'reference' ({})", who, op, backend, reason);
  }

  // Creates implementation `name` of `op` on `backend` and prepares it for `desc`, for tests and
  // benchmarks that must run one particular implementation. An Error if there is no such
  // implementation or it does not support `desc`.
  template <class K>
  std::shared_ptr<K> create(std::string_view op, std::string_view backend, std::string_view name,
                            const typename K::Desc& desc) const {
    const Entry& entry = find(op, backend, name);
    std::unique_ptr<K> kernel = make<K>(op, backend, entry);
    if (!kernel->supports(desc)) {
      fail("implementation '{}' of op '{}' on backend '{}' does not support this configuration",
           name, op, backend);
    }
    return finish(std::move(kernel), entry, desc);
  }

 private:
  template <class K>
  std::shared_ptr<K> try_create(std::string_view op, std::string_view backend,
                                const typename K::Desc& desc, std::string& reason) const {
    auto it = entries_.find({std::string(op), std::string(backend)});
    if (it == entries_.end()) {
      reason = fmt::format("backend '{}' has no '{}' kernel", backend, op);
      return nullptr;
    }
    for (const Entry& entry : it->second) {
      std::unique_ptr<K> kernel = make<K>(op, backend, entry);
      if (kernel->supports(desc)) return finish(std::move(kernel), entry, desc);
    }
    reason = refusal(op, backend, it->second);
    return nullptr;
  }
  template <class K>
  static std::unique_ptr<K> make(std::string_view op, std::string_view backend,
                                 const Entry& entry) {
    std::unique_ptr<Kernel> base = entry.factory();
    auto* typed = dynamic_cast<K*>(base.get());
    if (typed == nullptr) {
      fail(
          "kernel '{}' of backend '{}' (implementation '{}') does not implement the op's interface",
          op, backend, entry.name);
    }
    base.release();
    return std::unique_ptr<K>(typed);
  }
  template <class K>
  static std::shared_ptr<K> finish(std::unique_ptr<K> kernel, const Entry& entry,
                                   const typename K::Desc& desc) {
    kernel->registered_name_ = entry.name;
    auto shared = detail::keep_plugin_alive(std::move(kernel), entry.owner);
    shared->prepare(desc);
    return shared;
  }
  const Entry& find(std::string_view op, std::string_view backend, std::string_view name) const;
  static std::string refusal(std::string_view op, std::string_view backend,
                             const std::vector<Entry>& list);
  void note_fallback(std::string_view op, std::string_view backend, std::string_view who,
                     const std::string& reason) const;

  const PluginRef* current_;
  std::map<Key, std::vector<Entry>> entries_;
};

// Every registry, plus the plugin currently registering (set by the PluginLoader).
class Registries {
 public:
  Registries();
  Registries(const Registries&) = delete;
  Registries& operator=(const Registries&) = delete;

  // Removes everything `owner` registered, from every registry (the rollback of a failed load).
  void remove_owned_by(const PluginRef& owner);

  PluginRef current;  // owner attributed to add() calls; "host" outside plugin loading

  Registry<Layer> layers{"layer", &current};
  Registry<Block> blocks{"block", &current};  // plugins that expand into sub-graphs of layers
  Registry<Loss> losses{"loss", &current};
  Registry<Optimizer> optimizers{"optimizer", &current};
  Registry<Schedule> schedules{"schedule", &current};
  Registry<Initializer> initializers{"initializer", &current};
  Registry<Dataset> datasets{"dataset", &current};
  Registry<Transform> transforms{"transform", &current};
  Registry<Backend> backends{"backend", &current};
  // The processes of a job (strata/communicator.hpp): "mpi" from plugins/comm_mpi. Only a
  // launcher's process (mpirun, srun) creates one; a plain run has none.
  Registry<Communicator> communicators{"communicator", &current};
  KernelRegistry kernels{&current};

  // The backend of an experiment that names none: the one a loaded plugin declared the default
  // (backends.declare_default(): the tbb plugin does), else "reference", the fallback and ground
  // truth every kernel falls back to.
  std::string default_backend() const;
};

}  // namespace strata
