// The crash probe for unsealed HDF5 files: hdf5_probe.hpp.
#include "hdf5_probe.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <sys/prctl.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <map>
#include <mutex>
#include <tuple>

namespace strata::hdf5_probe {
namespace {

// ---- the child's walk: libhdf5 calls and malloc only, every failure ignored ----

// Element counts and buffers the walk allocates at most at once; larger reads go in blocks.
constexpr hssize_t kMaxPoints = hssize_t{1} << 20;
constexpr std::size_t kBlockBytes = std::size_t{64} << 20;

// Reads a string (fixed or variable length) or number attribute the way checkpoint.cpp does.
herr_t read_attribute(hid_t object, const char* name, const H5A_info_t*, void*) {
  const hid_t attribute = H5Aopen(object, name, H5P_DEFAULT);
  if (attribute < 0) return 0;
  const hid_t type = H5Aget_type(attribute);
  const hid_t space = H5Aget_space(attribute);
  const hssize_t points = space >= 0 ? H5Sget_simple_extent_npoints(space) : -1;
  if (type >= 0 && points > 0 && points <= kMaxPoints) {
    const H5T_class_t type_class = H5Tget_class(type);
    if (type_class == H5T_STRING && H5Tis_variable_str(type) > 0) {
      const hid_t memory = H5Tcopy(H5T_C_S1);
      H5Tset_size(memory, H5T_VARIABLE);
      H5Tset_cset(memory, H5Tget_cset(type));
      auto* texts = static_cast<char**>(calloc(static_cast<std::size_t>(points), sizeof(char*)));
      if (texts != nullptr && H5Aread(attribute, memory, texts) >= 0) {
        for (hssize_t i = 0; i < points; ++i) H5free_memory(texts[i]);
      }
      free(texts);
      H5Tclose(memory);
    } else if (type_class == H5T_STRING || type_class == H5T_INTEGER || type_class == H5T_FLOAT) {
      const hid_t memory = type_class == H5T_STRING    ? H5Tcopy(type)
                           : type_class == H5T_INTEGER ? H5Tcopy(H5T_NATIVE_INT64)
                                                       : H5Tcopy(H5T_NATIVE_DOUBLE);
      const std::size_t size = H5Tget_size(memory);
      // A string can claim up to 4 GB per element; its bytes must fit in the attribute's storage.
      if (size > 0 && size * static_cast<std::size_t>(points) <=
                          std::max<hsize_t>(H5Aget_storage_size(attribute), 64) * 8) {
        void* buffer = malloc(size * static_cast<std::size_t>(points));
        if (buffer != nullptr) H5Aread(attribute, memory, buffer);
        free(buffer);
      }
      H5Tclose(memory);
    }
  }
  if (space >= 0) H5Sclose(space);
  if (type >= 0) H5Tclose(type);
  H5Aclose(attribute);
  return 0;
}

// The names Strata looks up in every object that has them (checkpoint.cpp).
constexpr const char* kAttributeNames[] = {"format",    "format_version", "epoch", "iteration",
                                           "rng_state", "version",        "path"};

void read_dataset(hid_t dataset) {
  const hid_t properties = H5Dget_create_plist(dataset);
  if (properties < 0) return;
  const H5D_layout_t layout = H5Pget_layout(properties);
  const int external = H5Pget_external_count(properties);
  H5Pclose(properties);
  // Strata refuses these before reading them (their data lives in other files).
  if (layout == H5D_VIRTUAL || layout < 0 || external != 0) return;
  const hid_t type = H5Dget_type(dataset);
  const hid_t space = H5Dget_space(dataset);
  if (type >= 0 && space >= 0) {
    const H5T_class_t type_class = H5Tget_class(type);
    const int rank = H5Sget_simple_extent_ndims(space);
    const hssize_t points = H5Sget_simple_extent_npoints(space);
    const std::size_t file_size = H5Tget_size(type);
    uint64_t stored = 0;
    bool chunked = false;
    const bool plausible =
        points >= 0 && rank >= 0 && rank <= H5S_MAX_RANK &&
        storage_plausible(dataset,
                          static_cast<long double>(points) * static_cast<long double>(file_size),
                          stored, chunked);
    if (plausible && type_class == H5T_STRING && points > 0 && points <= kMaxPoints) {
      if (H5Tis_variable_str(type) > 0) {
        const hid_t memory = H5Tcopy(H5T_C_S1);
        H5Tset_size(memory, H5T_VARIABLE);
        H5Tset_cset(memory, H5Tget_cset(type));
        auto* texts = static_cast<char**>(calloc(static_cast<std::size_t>(points), sizeof(char*)));
        if (texts != nullptr &&
            H5Dread(dataset, memory, H5S_ALL, H5S_ALL, H5P_DEFAULT, texts) >= 0) {
          for (hssize_t i = 0; i < points; ++i) H5free_memory(texts[i]);
        }
        free(texts);
        H5Tclose(memory);
      } else if (file_size * static_cast<std::size_t>(points) <= kBlockBytes) {
        void* buffer = malloc(file_size * static_cast<std::size_t>(points));
        if (buffer != nullptr) H5Dread(dataset, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, buffer);
        free(buffer);
      }
    } else if (plausible && type_class == H5T_FLOAT && points > 0) {
      // As Strata reads it (converted to float), in blocks of whole rows along the first axis.
      hsize_t dims[H5S_MAX_RANK] = {};
      H5Sget_simple_extent_dims(space, dims, nullptr);
      const hsize_t rows = rank == 0 ? 1 : dims[0];
      const hsize_t row_points = rows == 0 ? 0 : static_cast<hsize_t>(points) / rows;
      const hsize_t row_bytes = row_points * sizeof(float);
      const hsize_t block_rows =
          rank == 0 ? 1 : std::max<hsize_t>(1, std::min<hsize_t>(rows, kBlockBytes / row_bytes));
      void* buffer = malloc(block_rows * row_bytes);
      for (hsize_t start = 0; buffer != nullptr && start < rows; start += block_rows) {
        const hsize_t count_rows = std::min(block_rows, rows - start);
        if (rank == 0) {
          H5Dread(dataset, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, buffer);
          break;
        }
        hsize_t offset[H5S_MAX_RANK] = {};
        hsize_t count[H5S_MAX_RANK] = {};
        offset[0] = start;
        count[0] = count_rows;
        for (int d = 1; d < rank; ++d) count[d] = dims[d];
        const hid_t selection = H5Scopy(space);
        const hid_t memory_space = H5Screate_simple(rank, count, nullptr);
        if (selection >= 0 && memory_space >= 0 &&
            H5Sselect_hyperslab(selection, H5S_SELECT_SET, offset, nullptr, count, nullptr) >= 0 &&
            H5Dread(dataset, H5T_NATIVE_FLOAT, memory_space, selection, H5P_DEFAULT, buffer) < 0) {
          start = rows;  // a failed read ends this dataset: Strata reports it as an error
        }
        if (memory_space >= 0) H5Sclose(memory_space);
        if (selection >= 0) H5Sclose(selection);
      }
      free(buffer);
    }
  }
  if (space >= 0) H5Sclose(space);
  if (type >= 0) H5Tclose(type);
}

void read_object(hid_t object) {
  H5Aiterate2(object, H5_INDEX_NAME, H5_ITER_INC, nullptr, read_attribute, nullptr);
  for (const char* name : kAttributeNames) {
    if (H5Aexists(object, name) > 0) read_attribute(object, name, nullptr, nullptr);
  }
  if (H5Iget_type(object) == H5I_DATASET) read_dataset(object);
}

// Every link below the root, looked up by name as Strata does, and every object behind a hard
// link read in full. Soft links are resolved by name; external links are never followed.
herr_t visit_link(hid_t root, const char* name, const H5L_info_t* info, void*) {
  if (H5Lexists(root, name, H5P_DEFAULT) <= 0) return 0;
  if (info->type == H5L_TYPE_SOFT) {
    char target[4096];
    if (info->u.val_size < sizeof target)
      H5Lget_val(root, name, target, sizeof target, H5P_DEFAULT);
    return 0;
  }
  if (info->type != H5L_TYPE_HARD) return 0;
  const hid_t object = H5Oopen(root, name, H5P_DEFAULT);
  if (object < 0) return 0;
  read_object(object);
  H5Oclose(object);
  return 0;
}

// The groups and datasets Strata looks up in every file (they may be absent).
constexpr const char* kKnownPaths[] = {"/experiment", "/plugins",   "/training",   "/history",
                                       "/model",      "/optimizer", "/preprocess", "/schedule",
                                       "/data",       "/trials"};

void walk(const char* path, hid_t access) {
  if (H5Fis_hdf5(path) <= 0) return;
  const hid_t file = H5Fopen(path, H5F_ACC_RDONLY, access);
  if (file < 0) return;
  read_object(file);
  // By name first, as Strata opens them: a damaged link table can end the iteration below early
  // while a lookup by name still reaches (and crashes on) what lies behind it.
  for (const char* known : kKnownPaths) {
    if (H5Lexists(file, known, H5P_DEFAULT) <= 0) continue;
    H5L_info_t info{};
    if (H5Lget_info(file, known, &info, H5P_DEFAULT) < 0 || info.type != H5L_TYPE_HARD) continue;
    const hid_t object = H5Oopen(file, known, H5P_DEFAULT);
    if (object < 0) continue;
    read_object(object);
    if (H5Iget_type(object) == H5I_GROUP) {
      H5Lvisit(object, H5_INDEX_NAME, H5_ITER_INC, visit_link, nullptr);
    }
    H5Oclose(object);
  }
  H5Lvisit(file, H5_INDEX_NAME, H5_ITER_INC, visit_link, nullptr);
  H5Fclose(file);
}

[[noreturn]] void child(const char* path, hid_t access, unsigned timeout_seconds, pid_t parent) {
  // The parent's crash handlers (Boost.Test's, a sanitizer's) must not catch a crash here: a
  // crash has to end this process so that the parent sees it.
  struct sigaction default_action {};
  default_action.sa_handler = SIG_DFL;
  sigemptyset(&default_action.sa_mask);
  for (int signal : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT, SIGSYS, SIGTRAP, SIGALRM}) {
    sigaction(signal, &default_action, nullptr);
  }
  sigset_t unblock;
  sigemptyset(&unblock);
  for (int signal : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT, SIGALRM})
    sigaddset(&unblock, signal);
  sigprocmask(SIG_UNBLOCK, &unblock, nullptr);
  // Ctrl-C reaches the whole process group: the parent decides what it means. The child ends
  // with the parent in any case.
  struct sigaction ignore {};
  ignore.sa_handler = SIG_IGN;
  sigemptyset(&ignore.sa_mask);
  for (int signal : {SIGINT, SIGQUIT, SIGTSTP}) sigaction(signal, &ignore, nullptr);
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != parent) _exit(0);  // the parent ended before prctl took effect
  // What libhdf5 (or a sanitizer) prints about a damaged file is not the user's business: the
  // parent reports the outcome.
  const int null = open("/dev/null", O_WRONLY | O_CLOEXEC);
  if (null >= 0) {
    dup2(null, STDOUT_FILENO);
    dup2(null, STDERR_FILENO);
  }
  alarm(timeout_seconds + 1);  // the parent kills a hung child too; this is the backstop
  walk(path, access);
  _exit(0);
}

std::string signal_text(int signal) {
  const char* abbreviation = sigabbrev_np(signal);
  return abbreviation != nullptr ? fmt::format("signal {}, SIG{}", signal, abbreviation)
                                 : fmt::format("signal {}", signal);
}

}  // namespace

bool storage_plausible(hid_t dataset, long double claimed, uint64_t& stored, bool& chunked) {
  stored = 0;
  chunked = false;
  const hid_t properties = H5Dget_create_plist(dataset);
  if (properties < 0) return true;
  const H5D_layout_t layout = H5Pget_layout(properties);
  H5Pclose(properties);
  stored = H5Dget_storage_size(dataset);
  if (layout == H5D_CONTIGUOUS || layout == H5D_COMPACT) {
    return static_cast<long double>(stored) >= claimed;
  }
  if (layout == H5D_CHUNKED) {
    chunked = true;
    return claimed <= static_cast<long double>(stored) * kMaxCompressionRatio +
                          static_cast<long double>(kSlackBytes);
  }
  return true;
}

std::string probe(const std::filesystem::path& path, hid_t access) {
  struct stat status {};
  if (::stat(path.c_str(), &status) != 0) return "";  // the open that follows reports it
  using Key = std::tuple<std::string, dev_t, ino_t, off_t, long, long, long, long>;
  static std::mutex mutex;
  static std::map<Key, std::string> probed;
  const Key key{path.string(),         status.st_dev,         status.st_ino,
                status.st_size,        status.st_mtim.tv_sec, status.st_mtim.tv_nsec,
                status.st_ctim.tv_sec, status.st_ctim.tv_nsec};
  {
    std::lock_guard lock(mutex);
    if (const auto found = probed.find(key); found != probed.end()) return found->second;
  }
  // Some damaged files send libhdf5 into an endless loop. Reading a file in the child costs what
  // reading it in the parent will cost: 10 s, plus 1 s per 10 MB, is generous for either.
  const auto timeout_seconds =
      static_cast<unsigned>(10 + static_cast<uint64_t>(status.st_size) / (10u << 20));
  const std::string path_text = path.string();
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) return fmt::format("cannot check the file: fork failed: {}", strerror(errno));
  if (pid == 0) child(path_text.c_str(), access, timeout_seconds, parent);

  int wait_status = 0;
  timespec start{};
  clock_gettime(CLOCK_MONOTONIC, &start);
  long pause_ns = 200'000;
  std::string problem;
  for (;;) {
    const pid_t done = ::waitpid(pid, &wait_status, WNOHANG);
    if (done == pid) break;
    if (done < 0 && errno != EINTR) {
      // SIGCHLD ignored by the application (the child was reaped for us): nothing to learn.
      return errno == ECHILD ? ""
                             : fmt::format("cannot check the file: waitpid failed: {}", strerror(errno));
    }
    timespec now{};
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (now.tv_sec - start.tv_sec > static_cast<time_t>(timeout_seconds)) {
      ::kill(pid, SIGKILL);
      while (::waitpid(pid, &wait_status, 0) < 0 && errno == EINTR) {
      }
      problem = fmt::format("the file is damaged: reading it did not finish within {} s",
                            timeout_seconds);
      break;
    }
    const timespec pause{0, pause_ns};
    nanosleep(&pause, nullptr);
    pause_ns = std::min(pause_ns * 2, 20'000'000L);
  }
  if (problem.empty() && WIFSIGNALED(wait_status)) {
    const int signal = WTERMSIG(wait_status);
    if (signal == SIGALRM) {
      problem = fmt::format("the file is damaged: reading it did not finish within {} s",
                            timeout_seconds);
    } else if (signal == SIGSEGV || signal == SIGBUS || signal == SIGFPE || signal == SIGILL ||
               signal == SIGABRT || signal == SIGSYS || signal == SIGTRAP) {
      problem = fmt::format("the file is damaged: reading it crashed libhdf5 ({})",
                            signal_text(signal));
    } else {
      // Killed from outside (the OOM killer, a signal to the process group): says nothing about
      // the file, so it is not remembered.
      return fmt::format("cannot check the file: the process reading it was stopped by {}",
                         signal_text(signal));
    }
  } else if (problem.empty() && WIFEXITED(wait_status) && WEXITSTATUS(wait_status) != 0) {
    // A sanitizer ends the child with a status of its own when libhdf5 misbehaves.
    problem = fmt::format("the file is damaged: reading it stopped libhdf5 (exit status {})",
                          WEXITSTATUS(wait_status));
  }
  std::lock_guard lock(mutex);
  probed.emplace(key, problem);
  return problem;
}

}  // namespace strata::hdf5_probe
