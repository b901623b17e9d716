#include "strata/files.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstring>

#include "strata/error.hpp"

namespace strata {

namespace fs = std::filesystem;

// ---- atomic text files ----

void write_file_atomically(const fs::path& path, std::string_view text) {
  const fs::path temporary = path.string() + temporary_suffix();
  const TemporaryFile registered(temporary);
  const int fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail("{}: cannot write: {}", path.string(), std::strerror(errno));
  std::size_t written = 0;
  int error = 0;
  while (written < text.size()) {
    const ssize_t n = ::write(fd, text.data() + written, text.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      error = n < 0 ? errno : EIO;
      break;
    }
    written += static_cast<std::size_t>(n);
  }
  if (error == 0 && ::fsync(fd) != 0) error = errno;
  if (::close(fd) != 0 && error == 0) error = errno;
  if (error != 0) {
    ::unlink(temporary.c_str());
    fail("{}: cannot write: {}", path.string(), std::strerror(error));
  }
  if (::rename(temporary.c_str(), path.c_str()) != 0) {
    const int rename_error = errno;  // before unlink() can change it
    ::unlink(temporary.c_str());
    fail("{}: cannot replace: {}", path.string(), std::strerror(rename_error));
  }
  // The rename is durable once the folder is synced.
  const fs::path folder = path.has_parent_path() ? path.parent_path() : fs::path(".");
  const int folder_fd = ::open(folder.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (folder_fd < 0 || ::fsync(folder_fd) != 0) {
    const int sync_error = errno;
    if (folder_fd >= 0) ::close(folder_fd);
    fail("{}: written, but cannot sync the folder {}: {}", path.string(), folder.string(),
         std::strerror(sync_error));
  }
  ::close(folder_fd);
}

// ---- the output folder's lock ----

std::string temporary_suffix() { return fmt::format(".tmp-{}", ::getpid()); }

bool is_own_temporary(const std::string& filename, const std::vector<std::string>& names) {
  const auto mark = filename.rfind(".tmp-");
  if (mark == std::string::npos || mark + 5 == filename.size() ||
      filename.find_first_not_of("0123456789", mark + 5) != std::string::npos) {
    return false;
  }
  const std::string_view base = std::string_view(filename).substr(0, mark);
  for (const std::string& name : names) {
    if (base == name) return true;
  }
  return false;
}

OutputLock::OutputLock(const fs::path& dir, const std::vector<std::string>& own_outputs) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) fail("{}: cannot create the output folder: {}", dir.string(), ec.message());
  const fs::path lock = dir / ".lock";
  fd_ = ::open(lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) {
    fail("{}: the output folder is not writable: cannot create {}: {}", dir.string(),
         lock.filename().string(), std::strerror(errno));
  }
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int error = errno;
    ::close(fd_);
    if (error == EWOULDBLOCK) {
      fail(
          "{}: another strata run is writing to this output folder (it holds {}); wait for it "
          "or choose another --out",
          dir.string(), lock.string());
    }
    fail("{}: cannot lock {}: {}", dir.string(), lock.string(), std::strerror(error));
  }
  // A process killed while saving leaves its half-written "<file>.tmp-<pid>" behind (the rename
  // that would have replaced the file never happened, so nothing is lost). With the lock held, no
  // other Strata process writes this folder's outputs: delete those of our own names, and say so.
  // Any other file, however it is named, is not ours to delete.
  for (fs::directory_iterator it(dir, ec); !ec && it != fs::directory_iterator();
       it.increment(ec)) {
    if (!is_own_temporary(it->path().filename().string(), own_outputs)) continue;
    std::error_code removed;
    if (!it->is_regular_file(removed)) continue;
    if (fs::remove(it->path(), removed)) {
      fmt::print("removed {}, a partial file left by an interrupted run\n", it->path().string());
    }
  }
}

OutputLock::~OutputLock() { ::close(fd_); }

// ---- output files ----

namespace {

const char* file_kind(mode_t mode) {
  if (S_ISDIR(mode)) return "a folder";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISSOCK(mode)) return "a socket";
  if (S_ISLNK(mode)) return "a symbolic link";
  return "not a regular file";
}

bool same_file(const struct stat& a, const struct stat& b) {
  return a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

}  // namespace

void check_output_file(const std::string& option, const fs::path& output,
                       const std::vector<CommandInput>& inputs) {
  const auto refuse_same = [&](const std::string& what) {
    fail("{} {} is the same file as {}: choose another output file", option, output.string(), what);
  };
  struct stat target {};
  const bool exists = ::stat(output.c_str(), &target) == 0;
  std::error_code ec;
  const fs::path normalized = fs::weakly_canonical(output, ec);
  const bool has_normalized = !ec;
  for (const CommandInput& input : inputs) {
    struct stat other {};
    if (::stat(input.path.c_str(), &other) != 0) {
      // An input that does not exist (yet) fails when it is read; the same spelling is still the
      // same file.
      const fs::path input_normalized = fs::weakly_canonical(input.path, ec);
      if (has_normalized && !ec && normalized == input_normalized) {
        refuse_same(fmt::format("{} {}", input.option, input.path.string()));
      }
      continue;
    }
    if (exists && same_file(target, other)) {
      refuse_same(fmt::format("{} {}", input.option, input.path.string()));
    }
    if (exists && S_ISDIR(other.st_mode)) {
      // A folder input (a dataset folder): every file directly inside it is an input.
      for (fs::directory_iterator it(input.path, ec); !ec && it != fs::directory_iterator();
           it.increment(ec)) {
        struct stat entry {};
        if (::stat(it->path().c_str(), &entry) == 0 && same_file(target, entry)) {
          refuse_same(fmt::format("{}, a file of {} {}", it->path().string(), input.option,
                                  input.path.string()));
        }
      }
    }
  }
  // The output is written to a temporary file renamed over `output`, which would replace a device
  // node, a FIFO or a symbolic link (not what it points to) by a regular file.
  struct stat link {};
  if (::lstat(output.c_str(), &link) == 0 && !S_ISREG(link.st_mode)) {
    fail(
        "{} {} exists and is {}, not a regular file: the output would replace it; choose a "
        "regular file or a new name",
        option, output.string(), file_kind(link.st_mode));
  }
}

// ---- temporary files and signals ----

namespace {

constexpr int kSlots = 16;
constexpr std::size_t kPathBytes = 4096;
enum SlotState : int { kFree = 0, kFilling = 1, kArmed = 2 };
static_assert(std::atomic<int>::is_always_lock_free, "the signal handler reads the slots");

struct Slot {
  std::atomic<int> state{kFree};
  char path[kPathBytes];
};
Slot temporary_slots[kSlots];

// Only async-signal-safe calls: unlink() and raise().
extern "C" void remove_temporaries_and_reraise(int signal_number) {
  for (Slot& slot : temporary_slots) {
    if (slot.state.load() == kArmed) ::unlink(slot.path);
  }
  // SA_RESETHAND has restored the default action and SA_NODEFER lets it act now: the process
  // ends by this signal, as it would have without the handler.
  ::raise(signal_number);
}

}  // namespace

TemporaryFile::TemporaryFile(const fs::path& path) {
  const std::string& text = path.native();
  if (text.size() >= kPathBytes) return;
  for (int i = 0; i < kSlots; ++i) {
    int expected = kFree;
    if (!temporary_slots[i].state.compare_exchange_strong(expected, kFilling)) continue;
    std::memcpy(temporary_slots[i].path, text.c_str(), text.size() + 1);
    temporary_slots[i].state.store(kArmed);
    slot_ = i;
    return;
  }
}

TemporaryFile::~TemporaryFile() {
  if (slot_ >= 0) temporary_slots[slot_].state.store(kFree);
}

void remove_temporary_files_on_signal() {
  struct sigaction action {};
  action.sa_handler = remove_temporaries_and_reraise;
  action.sa_flags = SA_RESETHAND | SA_NODEFER;
  sigemptyset(&action.sa_mask);
  for (int signal_number : {SIGINT, SIGTERM, SIGHUP}) {
    struct sigaction previous {};
    sigaction(signal_number, &action, &previous);
    // A signal the parent set to be ignored (a background job's SIGINT, nohup's SIGHUP) stays so.
    if (previous.sa_handler == SIG_IGN) sigaction(signal_number, &previous, nullptr);
  }
}

}  // namespace strata
