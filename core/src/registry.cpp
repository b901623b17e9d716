#include "strata/registry.hpp"

#include <cstdio>
#include <mutex>
#include <set>

namespace strata {

namespace detail {
std::string plugin_label(const PluginRef& plugin) {
  if (!plugin) return "'<unknown>'";
  if (plugin->path.empty()) return fmt::format("'{}'", plugin->name);
  return fmt::format("'{}' ({})", plugin->name, plugin->path.string());
}
}  // namespace detail

Registries::Registries()
    : current(std::make_shared<const Plugin>(Plugin{"host", "", {}, nullptr})) {}

void Registries::remove_owned_by(const PluginRef& owner) {
  layers.remove_owned_by(owner);
  blocks.remove_owned_by(owner);
  losses.remove_owned_by(owner);
  optimizers.remove_owned_by(owner);
  schedules.remove_owned_by(owner);
  initializers.remove_owned_by(owner);
  datasets.remove_owned_by(owner);
  transforms.remove_owned_by(owner);
  backends.remove_owned_by(owner);
  communicators.remove_owned_by(owner);
  kernels.remove_owned_by(owner);
}

std::string Registries::default_backend() const {
  return backends.default_type().empty() ? std::string("reference") : backends.default_type();
}

void KernelRegistry::add(const std::string& op, const std::string& backend, Factory factory) {
  auto key = std::make_pair(op, backend);
  if (auto it = entries_.find(key); it != entries_.end()) {
    fail("kernel '{}' for backend '{}' is registered twice: by plugin {} and by plugin {}", op,
         backend, detail::plugin_label(it->second.owner), detail::plugin_label(*current_));
  }
  entries_.emplace(std::move(key), Entry{*current_, std::move(factory)});
}

bool KernelRegistry::contains(std::string_view op, std::string_view backend) const {
  return entries_.find({std::string(op), std::string(backend)}) != entries_.end();
}

void KernelRegistry::note_fallback(std::string_view op, std::string_view backend,
                                   std::string_view who, const std::string& reason) const {
  // Reported once per (op, backend): a fallback is never silent, but need not flood the log.
  static std::mutex mutex;
  static std::set<std::string> reported;
  std::lock_guard lock(mutex);
  std::string key = fmt::format("{}/{}", op, backend);
  if (reported.insert(key).second) {
    std::fprintf(stderr, "note: %s: %s; using the reference kernel\n", std::string(who).c_str(),
                 reason.c_str());
  }
}

}  // namespace strata
