// The names a plugin may give itself and the types it registers. They become HDF5 group names
// (/plugins/<name>), parts of tensor paths ("0.<transform type>/mean") and file names
// (libstrata_<name>.so), so a name is 1 to 64 characters among letters, digits, '_', '-' and '.',
// and starts with a letter, a digit or '_': never empty, never '/' or "..". plugin.cpp checks a
// plugin's name and types when it loads; analysis.cpp checks the names a checkpoint records
// before it looks for them.
#pragma once

#include <string>
#include <string_view>

namespace strata {

// Empty when `name` is valid, else what is wrong with it ("contains '/'").
std::string plugin_name_problem(std::string_view name);

// The rule, for messages.
inline constexpr const char* kPluginNameRule =
    "a name is 1 to 64 letters, digits, '_', '-' or '.', starting with a letter, digit or '_'";

}  // namespace strata
