// strata/plugin_records.hpp: which plugins a run needs, as a checkpoint records them (/plugins),
// and loading them again by name when the checkpoint is reopened. A checkpoint is data and never
// chooses code: a recorded plugin is looked for by name in the trusted folders only
// (PluginLoader::default_dirs()), never at the path it records.
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "strata/checkpoint.hpp"
#include "strata/dataset.hpp"
#include "strata/plugin.hpp"
#include "strata/registry.hpp"

namespace strata {

class Graph;

// The plugins a run needs to rebuild and evaluate its model: the owners of the graph's layer
// types, of the backend and of the kernels it and the reference fallback provide, of every
// initializer (building the graph runs them), of the dataset, loss and transform types. Types the
// host registered itself are not plugins and are left out.
std::vector<PluginRecord> plugins_needed(const Registries& registries, const Graph& graph,
                                         const std::string& backend, const std::string& dataset,
                                         const std::string& loss,
                                         const std::vector<std::shared_ptr<Transform>>& transforms);

// Makes sure every recorded plugin is loaded, from the trusted folders only (see above);
// `checkpoint` names the file in errors.
void ensure_plugins_loaded(const std::vector<PluginRecord>& plugins, PluginLoader& loader,
                           const std::filesystem::path& checkpoint);

}  // namespace strata
