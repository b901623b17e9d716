#include "strata/plugin.hpp"

#include <dlfcn.h>

#include <boost/dll/runtime_symbol_info.hpp>
#include <boost/dll/shared_library.hpp>
#include <cstdlib>
#include <sstream>

#include "plugin_names.hpp"
#include "strata/error.hpp"
#include "strata/file_check.hpp"
#include "strata/plugin_probe.hpp"
#include "strata/registry.hpp"

namespace strata {

namespace fs = std::filesystem;

std::string plugin_name_problem(std::string_view name) {
  if (name.empty()) return "it is empty";
  if (name.size() > 64) return fmt::format("it is {} characters long", name.size());
  for (const char c : name) {
    const bool allowed = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                         (c >= '0' && c <= '9') || c == '_' || c == '-' || c == '.';
    if (allowed) continue;
    if (c == '/') return "it contains '/'";
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) return "it contains a control character";
    return fmt::format("it contains '{}'", c);
  }
  if (name.front() == '.' || name.front() == '-') {
    return fmt::format("it starts with '{}'", name.front());
  }
  return {};
}

namespace {

// Every type the plugin `owner` registered, with the kind of registry it went to, for the name
// check after register_all().
template <class R>
void check_type_names(const R& registry, const PluginRef& owner, const fs::path& file) {
  for (const auto& [type, entry] : registry.entries()) {
    if (entry.owner != owner) continue;
    if (const std::string problem = plugin_name_problem(type); !problem.empty()) {
      fail(
          "plugin {}: registration failed: it registers a {} type '{}', which is not a valid "
          "type name: {} ({})",
          file.string(), registry.kind(), type, problem, kPluginNameRule);
    }
  }
}

void check_kernel_names(const KernelRegistry& kernels, const PluginRef& owner,
                        const fs::path& file) {
  for (const auto& [key, list] : kernels.entries()) {
    for (const KernelRegistry::Entry& entry : list) {
      if (entry.owner != owner) continue;
      for (const std::string& name : {key.first, key.second, entry.name}) {
        if (const std::string problem = plugin_name_problem(name); !problem.empty()) {
          fail(
              "plugin {}: registration failed: it registers a kernel for op '{}' and backend '{}' "
              "(implementation '{}'), and '{}' is not a valid name: {} ({})",
              file.string(), key.first, key.second, entry.name, name, problem, kPluginNameRule);
        }
      }
    }
  }
}

// Runs the plugin's register_all() with `plugin` as the owner of what it adds, then checks the
// names it registered. Throws the Error to report; the caller removes what was registered.
void register_plugin(Registries& registries, const PluginInfo& info, const PluginRef& plugin,
                     const fs::path& canonical) {
  PluginRef previous = registries.current;
  registries.current = plugin;
  try {
    info.register_all(registries);
  } catch (const Error& error) {
    registries.current = previous;
    fail("plugin {}: registration failed: {}", canonical.string(), error.what());
  } catch (const std::exception& error) {
    registries.current = previous;
    fail("plugin {}: registration failed: register_all() threw an exception: {}",
         canonical.string(), error.what());
  } catch (...) {
    registries.current = previous;
    fail("plugin {}: registration failed: register_all() threw something that is not a "
         "std::exception",
         canonical.string());
  }
  registries.current = previous;
  check_type_names(registries.layers, plugin, canonical);
  check_type_names(registries.blocks, plugin, canonical);
  check_type_names(registries.losses, plugin, canonical);
  check_type_names(registries.optimizers, plugin, canonical);
  check_type_names(registries.schedules, plugin, canonical);
  check_type_names(registries.initializers, plugin, canonical);
  check_type_names(registries.datasets, plugin, canonical);
  check_type_names(registries.transforms, plugin, canonical);
  check_type_names(registries.backends, plugin, canonical);
  check_kernel_names(registries.kernels, plugin, canonical);
}

}  // namespace

void PluginLoader::load_file(const fs::path& file) {
  if (const std::string problem = regular_file_problem(file); !problem.empty()) {
    fail("plugin {}: {}", file.string(), problem == "does not exist" ? "no such file" : problem);
  }
  const fs::path canonical = fs::canonical(file);
  for (const auto& plugin : plugins_) {
    if (plugin->path == canonical) return;  // already loaded
  }

  auto library = std::make_shared<boost::dll::shared_library>();
  boost::dll::fs::error_code load_error;
  library->load(canonical, boost::dll::load_mode::rtld_now | boost::dll::load_mode::rtld_local,
                load_error);
  if (load_error) {
    // Boost.DLL reports errno, which hides the useful part ("undefined symbol: ..."): ask the
    // dynamic loader itself for its message.
    std::string reason = load_error.message();
    if (void* handle = ::dlopen(canonical.c_str(), RTLD_NOW | RTLD_LOCAL)) {
      ::dlclose(handle);
    } else if (const char* text = ::dlerror()) {
      reason = text;
    }
    fail("plugin {}: cannot load the library: {}", canonical.string(), reason);
  }
  if (!library->has("strata_plugin")) {
    fail("plugin {}: not a Strata plugin (it exports no 'strata_plugin' entry point)",
         canonical.string());
  }
  using EntryPoint = const PluginInfo*();
  const PluginInfo* info = library->get<EntryPoint>("strata_plugin")();
  if (info == nullptr) fail("plugin {}: strata_plugin() returned null", canonical.string());
  // Only `api` may be read before the version check: the rest of the struct may differ.
  if (info->api != kPluginApi) {
    // What changed since the plugin's version, so its author knows what to port.
    std::string changes;
    if (info->api <= 2) {
      changes += " (API 3: a dataset reads samples on demand through Dataset::open and a "
                 "SplitReader, or derives from InMemoryDataset to keep its load(); a transform "
                 "works on one Image at a time; see docs/data.md)";
    }
    if (info->api <= 3) {
      changes += " (API 4: Context carries the run's Communicator and Registries holds "
                 "communicators, so every plugin must be rebuilt; no source change is needed "
                 "unless it builds a Context; see docs/distributed.md)";
    }
    if (info->api <= 4) {
      changes +=
          " (API 5: Layer and Transform gain the optional export_to() hook of "
          "`strata export`, which changes their vtables, so every plugin must be rebuilt; "
          "no source change is needed, and a layer may implement it to be exportable; see "
          "docs/writing-a-plugin.md, \"Export\")";
    }
    if (info->api <= 5) {
      changes +=
          " (API 6: Kernel and Layer gain implementation(), the name `strata bench` prints, and "
          "the kernel registry keeps an ordered list of named implementations per op and "
          "backend, which changes their layout, so every plugin must be rebuilt; no source "
          "change is needed; see docs/writing-a-plugin.md, \"Kernels\")";
    }
    if (info->api <= 6) {
      changes +=
          " (API 7: BatchNormKernel::affine(x, scale, shift, y) became normalize(x, center, "
          "scale, shift, y), which subtracts the center before scaling, and the conv2d and gemm "
          "descriptors gained a precision (bf16); a backend with a batch_norm kernel must port "
          "it, every other plugin only needs a rebuild; see docs/writing-a-plugin.md, \"Plugin "
          "API version\")";
    }
    if (info->api <= 7) {
      changes +=
          " (API 8: Layer gains backward_reads_inputs() and backward_reads_output(), which let "
          "training reuse the memory of outputs no backward reads, and Conv2dKernel gains "
          "arithmetic(), the multiply-adds each pass performs; the defaults keep the old "
          "behaviour, so a plugin only needs a rebuild; see docs/writing-a-plugin.md, \"Layer "
          "traits\" and \"Plugin API version\")";
    }
    if (info->api <= 8) {
      changes +=
          " (API 9: Layer gains fusable_activation(), fuses() and set_fused_activation(), with "
          "which the graph runs an activation inside the forward of the layer before it, and "
          "BatchNormKernel::normalize takes a last const ActivationDesc* (null: none) to apply; "
          "a backend with a batch_norm kernel must port it, every other plugin only needs a "
          "rebuild; see docs/writing-a-plugin.md, \"Fusion\" and \"Plugin API version\")";
    }
    if (info->api <= 9) {
      changes +=
          " (API 10: Layer gains recomputable(), with which training may run a layer's forward "
          "again in backward instead of keeping its output, and Context gains recomputing; the "
          "default recomputes nothing, so a plugin only needs a rebuild; see "
          "docs/writing-a-plugin.md, \"Recomputation\" and \"Plugin API version\")";
    }
    fail("plugin {}: built for plugin API version {}, but this Strata supports version {}{}; "
         "rebuild the plugin against this Strata",
         canonical.string(), info->api, kPluginApi, changes);
  }
  const std::string name = info->name ? info->name : "";
  if (name.empty() || info->register_all == nullptr) {
    fail("plugin {}: the entry point gives no name or no register function", canonical.string());
  }
  // The name ends up in checkpoints (/plugins/<name>) and is looked up as libstrata_<name>.so:
  // checked now, before the plugin registers anything, rather than at the first save.
  if (const std::string problem = plugin_name_problem(name); !problem.empty()) {
    fail("plugin {}: its name '{}' is not a valid plugin name: {} ({})", canonical.string(), name,
         problem, kPluginNameRule);
  }
  const std::string version = info->version ? info->version : "";
  for (const char c : version) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
      fail("plugin {}: its version string contains a control character", canonical.string());
    }
  }
  if (version.size() > 64) {
    fail("plugin {}: its version string is {} characters long (at most 64)", canonical.string(),
         version.size());
  }
  for (const auto& plugin : plugins_) {
    if (plugin->name == name) {
      fail("plugin name '{}' is used by two files: {} and {}", name, plugin->path.string(),
           canonical.string());
    }
  }

  auto plugin = std::make_shared<const Plugin>(Plugin{name, version, canonical, library});
  try {
    register_plugin(registries_, *info, plugin, canonical);
  } catch (...) {
    // Transactional: whatever the plugin registered before it failed goes, before its library is
    // released (the factories' code lives in it), so no half-registered plugin stays behind.
    registries_.remove_owned_by(plugin);
    throw;
  }
  plugins_.push_back(std::move(plugin));
}

std::vector<fs::path> plugin_files_in(const fs::path& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) fail("plugin folder {}: not a directory", dir.string());
  std::vector<fs::path> files;
  // An unreadable folder (no read or search permission, an I/O error) is the user's to fix: say
  // which folder and why, rather than letting std::filesystem's exception surface as "internal".
  const auto unreadable = [&](const std::error_code& error) {
    fail("plugin folder {}: cannot list its files: {}", dir.string(), error.message());
  };
  fs::directory_iterator it(dir, ec);
  if (ec) unreadable(ec);
  for (; it != fs::directory_iterator(); it.increment(ec)) {
    if (ec) unreadable(ec);
    const fs::directory_entry& entry = *it;
    const std::string filename = entry.path().filename().string();
    if (entry.is_regular_file(ec) && filename.starts_with("libstrata_") &&
        entry.path().extension() == ".so") {
      files.push_back(entry.path());
    }
  }
  if (ec) unreadable(ec);
  std::sort(files.begin(), files.end());
  return files;
}

void PluginLoader::load_dir(const fs::path& dir) {
  for (const auto& file : plugin_files_in(dir)) load_file(file);
}

namespace {

// The plugins installed with this libstrata_core: <folder of the library>/strata. dladdr() on an
// object of the library names the file the process loaded, so the tool (PREFIX/bin/strata), the
// tests (build/bin) and any other program linked against the library find the same folder,
// PREFIX/lib/strata, wherever the prefix now is. (Should dladdr fail: <program>/../lib/strata.)
fs::path installed_plugin_dir() {
  static const char anchor = 0;
  Dl_info info{};
  if (::dladdr(&anchor, &info) != 0 && info.dli_fname != nullptr && *info.dli_fname != '\0') {
    std::error_code ec;
    const fs::path library = fs::absolute(info.dli_fname, ec);
    if (!ec) return (library.parent_path() / "strata").lexically_normal();
  }
  return boost::dll::program_location().parent_path().parent_path() / "lib" / "strata";
}

}  // namespace

std::vector<fs::path> PluginLoader::default_dirs() {
  std::vector<fs::path> dirs;
  dirs.push_back(installed_plugin_dir());
  if (const char* extra = std::getenv("STRATA_PLUGIN_PATH"); extra != nullptr) {
    std::stringstream stream(extra);
    std::string item;
    while (std::getline(stream, item, ':')) {
      if (!item.empty()) dirs.emplace_back(item);
    }
  }
  return dirs;
}

void PluginLoader::load_default() {
  const auto dirs = default_dirs();
  // The installed folder is optional (a library copied alone may rely on STRATA_PLUGIN_PATH);
  // folders named in STRATA_PLUGIN_PATH must exist.
  std::error_code ec;
  if (fs::is_directory(dirs.front(), ec)) load_dir(dirs.front());
  for (std::size_t i = 1; i < dirs.size(); ++i) {
    if (!fs::is_directory(dirs[i], ec)) {
      fail("STRATA_PLUGIN_PATH names {}, which is not a directory", dirs[i].string());
    }
    load_dir(dirs[i]);
  }
}

}  // namespace strata
