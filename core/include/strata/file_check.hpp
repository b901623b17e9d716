// strata/file_check.hpp: what a path the user gave really is, before anything reads it.
//
// A user may hand Strata a folder, a named pipe, a device such as /dev/zero, a symbolic link loop
// or an unreadable file where a regular file belongs. Each is reported as what it is ("is a named
// pipe (FIFO)"), never as "does not exist", and nothing opened here blocks: a FIFO without a
// writer must not hang the tool.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

namespace strata {

// Why `path` cannot be read as a regular file, or "" when it can: "does not exist", "is a folder",
// "is a named pipe (FIFO), not a regular file", "is a character device, not a regular file",
// "is a block device, ...", "is a socket, ...", "is a symbolic link loop (...)",
// "is a symbolic link to X, which does not exist", "cannot be read: permission denied", ...
// Symbolic links to regular files are fine.
std::string regular_file_problem(const std::filesystem::path& path);

// Throws "<what> <path>: <problem>" unless `path` is a readable regular file.
void require_regular_file(const std::filesystem::path& path, std::string_view what);

// The whole content of the regular file at `path`, at most `max_bytes` long. Opened without
// blocking (O_NONBLOCK) and checked with fstat on the open descriptor, so a FIFO, a device or a
// file swapped in between the check and the read is refused, not read forever. Errors read
// "<what> <path>: ...".
std::string read_regular_file(const std::filesystem::path& path, std::uint64_t max_bytes,
                              std::string_view what);

}  // namespace strata
