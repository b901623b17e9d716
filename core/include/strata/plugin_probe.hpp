// strata/plugin_probe.hpp: loading plugins that may crash, without crashing.
//
// A plugin runs its own code when it is loaded (static constructors, strata_plugin(),
// register_all()). If that code crashes (SIGSEGV, abort), it takes the loading process with it.
// The functions below first load each plugin in a forked child process, in the same state as the
// caller (the plugins loaded so far), and only then in the caller. A crash in the child becomes an
// Error naming the file and the signal:
//
//   plugin /x/libstrata_bad.so: crashed while loading or registering its types (killed by SIGSEGV)
//
// Other failures (not a plugin, API mismatch, a registration error) are reported by the caller's
// own load, with the usual messages. `strata plugins` and `strata check-plugin` use these: they
// are the tools for looking at plugins that may be broken. The cost is one fork per plugin.
#pragma once

#include <filesystem>
#include <vector>

#include "strata/plugin.hpp"

namespace strata {

// The plugin files of a folder, as PluginLoader::load_dir() loads them: regular files named
// libstrata_*.so, sorted by name. A missing or unreadable folder is an Error.
std::vector<std::filesystem::path> plugin_files_in(const std::filesystem::path& dir);

// loader.load_file(file), tried in a child process first.
void load_plugin_probed(PluginLoader& loader, const std::filesystem::path& file);

// loader.load_default(), each plugin tried in a child process first.
void load_default_plugins_probed(PluginLoader& loader);

}  // namespace strata
