#include "strata/plugin.hpp"

#include <dlfcn.h>

#include <boost/dll/runtime_symbol_info.hpp>
#include <boost/dll/shared_library.hpp>
#include <cstdlib>
#include <sstream>

#include "strata/error.hpp"
#include "strata/registry.hpp"

namespace strata {

namespace fs = std::filesystem;

void PluginLoader::load_file(const fs::path& file) {
  std::error_code ec;
  if (!fs::is_regular_file(file, ec)) fail("plugin {}: no such file", file.string());
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
    fail("plugin {}: built for plugin API version {}, but this Strata supports version {}; "
         "rebuild the plugin against this Strata",
         canonical.string(), info->api, kPluginApi);
  }
  const std::string name = info->name ? info->name : "";
  if (name.empty() || info->register_all == nullptr) {
    fail("plugin {}: the entry point gives no name or no register function", canonical.string());
  }
  for (const auto& plugin : plugins_) {
    if (plugin->name == name) {
      fail("plugin name '{}' is used by two files: {} and {}", name, plugin->path.string(),
           canonical.string());
    }
  }

  auto plugin = std::make_shared<const Plugin>(
      Plugin{name, info->version ? info->version : "", canonical, library});
  PluginRef previous = registries_.current;
  registries_.current = plugin;
  try {
    info->register_all(registries_);
  } catch (const Error& error) {
    registries_.current = previous;
    fail("plugin {}: registration failed: {}", canonical.string(), error.what());
  } catch (const std::exception& error) {
    registries_.current = previous;
    fail("plugin {}: registration failed: register_all() threw an exception: {}",
         canonical.string(), error.what());
  } catch (...) {
    registries_.current = previous;
    fail("plugin {}: registration failed: register_all() threw something that is not a "
         "std::exception",
         canonical.string());
  }
  registries_.current = previous;
  plugins_.push_back(std::move(plugin));
}

void PluginLoader::load_dir(const fs::path& dir) {
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
  for (const auto& file : files) load_file(file);
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
