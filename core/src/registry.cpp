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

void KernelRegistry::add(const std::string& op, const std::string& backend, const std::string& name,
                         Factory factory) {
  std::vector<Entry>& list = entries_[{op, backend}];
  for (const Entry& entry : list) {
    if (entry.name == name) {
      fail(
          "kernel '{}' for backend '{}' is registered twice under the implementation name '{}': "
          "by plugin {} and by plugin {}",
          op, backend, name, detail::plugin_label(entry.owner), detail::plugin_label(*current_));
    }
  }
  list.push_back(Entry{*current_, name, std::move(factory)});
}

bool KernelRegistry::contains(std::string_view op, std::string_view backend) const {
  return entries_.find({std::string(op), std::string(backend)}) != entries_.end();
}

std::vector<std::string> KernelRegistry::implementations(std::string_view op,
                                                         std::string_view backend) const {
  std::vector<std::string> names;
  auto it = entries_.find({std::string(op), std::string(backend)});
  if (it != entries_.end()) {
    for (const Entry& entry : it->second) names.push_back(entry.name);
  }
  return names;
}

const KernelRegistry::Entry& KernelRegistry::find(std::string_view op, std::string_view backend,
                                                  std::string_view name) const {
  const std::vector<std::string> names = implementations(op, backend);
  if (names.empty()) fail("backend '{}' has no '{}' kernel", backend, op);
  for (const Entry& entry : entries_.at({std::string(op), std::string(backend)})) {
    if (entry.name == name) return entry;
  }
  fail("backend '{}' has no implementation '{}' of op '{}'; it has: {}", backend, name, op,
       fmt::join(names, ", "));
}

std::string KernelRegistry::refusal(std::string_view op, std::string_view backend,
                                    const std::vector<Entry>& list) {
  if (list.size() == 1 && list.front().name == backend) {
    return fmt::format("the '{}' kernel of backend '{}' does not support this configuration", op,
                       backend);
  }
  std::vector<std::string> names;
  for (const Entry& entry : list) names.push_back(entry.name);
  return fmt::format(
      "no '{}' implementation of backend '{}' supports this configuration (tried {})", op, backend,
      fmt::join(names, ", "));
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
