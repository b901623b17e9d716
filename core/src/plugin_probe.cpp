#include "strata/plugin_probe.hpp"

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <string>

#include "strata/error.hpp"
#include "strata/file_check.hpp"

namespace strata {

namespace fs = std::filesystem;

namespace {

// "SIGSEGV" for SIGSEGV; the number for a signal without a name.
std::string signal_name(int signal) {
  if (const char* abbreviation = ::sigabbrev_np(signal)) return fmt::format("SIG{}", abbreviation);
  return fmt::format("signal {}", signal);
}

// The child's exit status when the load failed with an exception: the caller then loads the
// plugin itself, which reports that failure with its full message.
constexpr int kChildLoadFailed = 3;

void probe_in_child(PluginLoader& loader, const fs::path& file) {
  std::fflush(nullptr);  // nothing buffered may be written twice
  const pid_t child = ::fork();
  if (child < 0) {
    fail("plugin {}: cannot start a process to try it in: {}", file.string(), std::strerror(errno));
  }
  if (child == 0) {
    // Load exactly as the parent would, then leave without running any destructor or atexit
    // handler of the parent's state. No core file: the crash is the parent's to report.
    const rlimit no_core{0, 0};
    ::setrlimit(RLIMIT_CORE, &no_core);
    int code = 0;
    try {
      loader.load_file(file);
    } catch (...) {
      code = kChildLoadFailed;
    }
    ::_exit(code);
  }
  int status = 0;
  while (::waitpid(child, &status, 0) < 0) {
    if (errno != EINTR) {
      fail("plugin {}: cannot wait for the process that tries it: {}", file.string(),
           std::strerror(errno));
    }
  }
  if (WIFSIGNALED(status)) {
    fail(
        "plugin {}: crashed while loading or registering its types (killed by {}); it was tried "
        "in a separate process first, so nothing else was affected: fix it or remove it from the "
        "plugin folder",
        file.string(), signal_name(WTERMSIG(status)));
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) != 0 && WEXITSTATUS(status) != kChildLoadFailed) {
    fail("plugin {}: ended the process while loading or registering its types (exit status {})",
         file.string(), WEXITSTATUS(status));
  }
}

}  // namespace

void load_plugin_probed(PluginLoader& loader, const fs::path& file) {
  // The checks of load_file() that need no plugin code come first, in this process.
  if (const std::string problem = regular_file_problem(file); !problem.empty()) {
    fail("plugin {}: {}", file.string(), problem == "does not exist" ? "no such file" : problem);
  }
  const fs::path canonical = fs::canonical(file);
  for (const auto& plugin : loader.plugins()) {
    if (plugin->path == canonical) return;  // already loaded
  }
  probe_in_child(loader, canonical);
  loader.load_file(canonical);
}

void load_default_plugins_probed(PluginLoader& loader) {
  // The same folders, in the same order, with the same errors as PluginLoader::load_default().
  const auto dirs = PluginLoader::default_dirs();
  std::error_code ec;
  for (std::size_t i = 0; i < dirs.size(); ++i) {
    if (!fs::is_directory(dirs[i], ec)) {
      if (i == 0) continue;  // the folder beside the executable is optional
      fail("STRATA_PLUGIN_PATH names {}, which is not a directory", dirs[i].string());
    }
    for (const fs::path& file : plugin_files_in(dirs[i])) load_plugin_probed(loader, file);
  }
}

}  // namespace strata
