// Shared by the libFuzzer targets (tests/fuzz/README.md): the build's plugins, loaded once, and a
// scratch file per process. A strata::Error is the expected answer to a bad input; anything else
// (a crash, a sanitizer report, another exception type) is a finding.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "strata/error.hpp"
#include "strata/plugin.hpp"
#include "strata/registry.hpp"

namespace strata::fuzz {

// Keeps allocations well under libFuzzer's RSS limit in every target, set before the first input:
// sizes beyond it are errors, as intended (read by physical_memory_bytes()).
inline const bool memory_limited = ::setenv("STRATA_MEMORY_LIMIT_MB", "256", 1) == 0;

inline Registries& registries() {
  static Registries* registries = [] {
    auto* r = new Registries();
    static PluginLoader loader(*r);
    loader.load_dir(STRATA_FUZZ_PLUGIN_DIR);
    return r;
  }();
  return *registries;
}

inline std::filesystem::path scratch(const std::string& name) {
  static const std::filesystem::path dir = [] {
    auto d = std::filesystem::temp_directory_path() / ("strata-fuzz-" + std::to_string(::getpid()));
    std::filesystem::create_directories(d);
    return d;
  }();
  return dir / name;
}

inline void write_file(const std::filesystem::path& path, const uint8_t* data, std::size_t size) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
}

}  // namespace strata::fuzz
