// The plugins a checkpoint records (/plugins), and reloading them by name (strata/plugin_records.hpp).
#include "strata/plugin_records.hpp"

#include <algorithm>
#include <cstdio>
#include <functional>
#include <set>

#include "plugin_names.hpp"
#include "strata/backend.hpp"
#include "strata/error.hpp"
#include "strata/graph.hpp"

namespace strata {

namespace fs = std::filesystem;

namespace {

template <class R>
void note_owner(const R& registry, const std::string& type, std::vector<PluginRecord>& out) {
  auto it = registry.entries().find(type);
  if (it == registry.entries().end()) return;
  const PluginRef& owner = it->second.owner;
  if (!owner || owner->path.empty()) return;  // registered by the host program
  for (const PluginRecord& record : out) {
    if (record.name == owner->name) return;
  }
  out.push_back({owner->name, owner->version, owner->path.string()});
}

}  // namespace

std::vector<PluginRecord> plugins_needed(
    const Registries& registries, const Graph& graph, const std::string& backend,
    const std::string& dataset, const std::string& loss,
    const std::vector<std::shared_ptr<Transform>>& transforms) {
  std::vector<PluginRecord> records;
  for (std::size_t i = 0; i < graph.size(); ++i) {
    note_owner(registries.layers, std::string(graph.layer(i).type()), records);
  }
  note_owner(registries.backends, backend, records);
  note_owner(registries.backends, "reference", records);  // the fallback for every kernel
  for (const auto& [key, list] : registries.kernels.entries()) {
    if (key.second != backend && key.second != "reference") continue;
    for (const KernelRegistry::Entry& entry : list) {
      if (entry.owner && !entry.owner->path.empty() &&
          std::none_of(
              records.begin(), records.end(),
              [&owner = entry.owner](const PluginRecord& r) { return r.name == owner->name; })) {
        records.push_back({entry.owner->name, entry.owner->version, entry.owner->path.string()});
      }
    }
  }
  // Building a graph runs its parameters' initializers (before the weights are loaded), so every
  // initializer plugin is needed.
  for (const auto& [type, entry] : registries.initializers.entries())
    note_owner(registries.initializers, type, records);
  note_owner(registries.datasets, dataset, records);
  note_owner(registries.losses, loss, records);
  for (const auto& transform : transforms)
    note_owner(registries.transforms, std::string(transform->type()), records);
  std::sort(records.begin(), records.end(),
            [](const PluginRecord& a, const PluginRecord& b) { return a.name < b.name; });
  return records;
}

namespace {

PluginRef loaded_plugin(const PluginLoader& loader, const std::string& name) {
  for (const PluginRef& plugin : loader.plugins()) {
    if (plugin->name == name) return plugin;
  }
  return nullptr;
}

}  // namespace

void ensure_plugins_loaded(const std::vector<PluginRecord>& plugins, PluginLoader& loader,
                           const fs::path& checkpoint) {
  // A checkpoint is data: it names the plugins it needs, but never chooses the code that runs.
  // The path it records is where the plugin was at training time, shown by `strata inspect` and
  // in errors, and never loaded. Plugins come from what is loaded already (the tool's folder,
  // STRATA_PLUGIN_PATH, an experiment file the user passed) or from the trusted folders.
  bool scanned = false;
  for (const PluginRecord& record : plugins) {
    if (const std::string problem = plugin_name_problem(record.name); !problem.empty()) {
      fail("checkpoint {}: /plugins names a plugin '{}', which is not a valid plugin name: {}",
           checkpoint.string(), record.name, problem);
    }
    PluginRef plugin = loaded_plugin(loader, record.name);
    std::vector<fs::path> folders;
    std::error_code ec;
    for (const fs::path& folder : PluginLoader::default_dirs()) {
      if (fs::is_directory(folder, ec)) folders.push_back(folder);
    }
    if (!plugin) {
      // By name first (libstrata_<name>.so), then every plugin of the trusted folders (a file
      // named otherwise): both load only what these folders hold.
      for (const fs::path& folder : folders) {
        const fs::path file = folder / ("libstrata_" + record.name + ".so");
        if (fs::is_regular_file(file, ec)) {
          loader.load_file(file);
          if ((plugin = loaded_plugin(loader, record.name))) break;
        }
      }
      if (!plugin && !scanned) {
        for (const fs::path& folder : folders) loader.load_dir(folder);
        scanned = true;
        plugin = loaded_plugin(loader, record.name);
      }
    }
    if (!plugin) {
      std::vector<std::string> searched;
      for (const fs::path& folder : PluginLoader::default_dirs())
        searched.push_back(folder.string());
      fail(
          "checkpoint {}: needs plugin '{}' version {}, which is not loaded and is in none of the "
          "trusted plugin folders ({}); the checkpoint says it was loaded from {}, but a path "
          "recorded in a file is never loaded: put the folder of libstrata_{}.so in "
          "STRATA_PLUGIN_PATH",
          checkpoint.string(), record.name, record.version, fmt::join(searched, ", "),
          record.path.empty() ? std::string("(no path recorded)") : record.path, record.name);
    }
    if (plugin->version != record.version) {
      std::fprintf(stderr,
                   "warning: checkpoint %s was saved with plugin '%s' version %s; using version "
                   "%s (%s)\n",
                   checkpoint.c_str(), record.name.c_str(), record.version.c_str(),
                   plugin->version.c_str(), plugin->path.c_str());
    }
  }
}

}  // namespace strata
