#include "strata/file_check.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "file_descriptor.hpp"
#include "strata/error.hpp"

namespace strata {

namespace fs = std::filesystem;

namespace {

// What a non-regular file is, from its mode; "" for a regular file.
std::string kind_problem(mode_t mode) {
  if (S_ISREG(mode)) return "";
  if (S_ISDIR(mode)) return "is a folder, not a file";
  if (S_ISFIFO(mode)) return "is a named pipe (FIFO), not a regular file";
  if (S_ISCHR(mode)) return "is a character device, not a regular file";
  if (S_ISBLK(mode)) return "is a block device, not a regular file";
  if (S_ISSOCK(mode)) return "is a socket, not a regular file";
  return "is not a regular file";
}

std::string errno_problem(int error, const fs::path& path) {
  switch (error) {
    case ENOENT: {
      struct stat link {};
      if (::lstat(path.c_str(), &link) == 0 && S_ISLNK(link.st_mode)) {
        std::error_code ec;
        const fs::path target = fs::read_symlink(path, ec);
        return fmt::format("is a symbolic link to {}, which does not exist",
                           ec ? std::string("a path") : target.string());
      }
      return "does not exist";
    }
    case ELOOP:
      return "is a symbolic link loop (too many levels of symbolic links)";
    case ENOTDIR:
      return "does not exist (a part of the path is not a folder)";
    case EACCES:
      return "cannot be read: permission denied";
    case ENAMETOOLONG:
      return "cannot be read: the name is too long";
    default:
      return fmt::format("cannot be read: {}", std::strerror(error));
  }
}

}  // namespace

std::string regular_file_problem(const fs::path& path) {
  if (path.empty()) return "is an empty path";
  struct stat status {};
  if (::stat(path.c_str(), &status) != 0) return errno_problem(errno, path);
  if (std::string kind = kind_problem(status.st_mode); !kind.empty()) return kind;
  if (::access(path.c_str(), R_OK) != 0) return errno_problem(errno, path);
  return "";
}

void require_regular_file(const fs::path& path, std::string_view what) {
  if (const std::string problem = regular_file_problem(path); !problem.empty()) {
    fail("{} {}: {}", what, path.string(), problem);
  }
}

std::string read_regular_file(const fs::path& path, std::uint64_t max_bytes,
                              std::string_view what) {
  const auto bad = [&](const std::string& problem) {
    fail("{} {}: {}", what, path.string(), problem);
  };
  if (path.empty()) bad("is an empty path");
  // O_NONBLOCK: opening a FIFO without a writer returns at once instead of waiting for one.
  FileDescriptor fd(::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC));
  if (fd.get() < 0) {
    const int error = errno;
    if (error == EISDIR) bad("is a folder, not a file");
    bad(errno_problem(error, path));
  }
  struct stat status {};
  if (::fstat(fd.get(), &status) != 0) bad(fmt::format("cannot be read: {}", std::strerror(errno)));
  if (std::string kind = kind_problem(status.st_mode); !kind.empty()) bad(kind);
  const auto size = static_cast<std::uint64_t>(status.st_size);
  if (size > max_bytes) {
    bad(fmt::format("is {} bytes long, more than the limit of {} bytes ({:g} MiB)", size, max_bytes,
                    static_cast<double>(max_bytes) / (1 << 20)));
  }
  std::string content(size, '\0');
  std::size_t done = 0;
  while (done < content.size()) {
    const ssize_t got = ::read(fd.get(), content.data() + done, content.size() - done);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) bad(fmt::format("cannot be read: {}", std::strerror(errno)));
    if (got == 0) break;  // shrank while reading: take what is there
    done += static_cast<std::size_t>(got);
  }
  content.resize(done);
  // Grown while reading: one more byte means the size limit may no longer hold.
  char extra = 0;
  if (done == size && ::read(fd.get(), &extra, 1) > 0) {
    bad(
        fmt::format("grew while it was read (it was {} bytes); read it again when it is "
                    "complete",
                    size));
  }
  return content;
}

}  // namespace strata
