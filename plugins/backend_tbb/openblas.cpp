#include "openblas.hpp"

#include <dlfcn.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <memory>
#include <mutex>

#include "strata/error.hpp"
#include "strata/isa.hpp"

namespace strata::tbb_backend::openblas {

namespace {

// The CBLAS standard's enum values (cblas.h), declared here so no header is needed.
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;

using SgemmFn = void (*)(int, int, int, int, int, int, float, const float*, int, const float*, int,
                         float, float*, int);

constexpr const char* kLibrary = "libopenblas.so.0";
constexpr const char* kCoreTypeVariable = "OPENBLAS_CORETYPE";
constexpr const char* kStrataCoreTypeVariable = "STRATA_OPENBLAS_CORETYPE";

struct Library {
  SgemmFn sgemm = nullptr;
  std::string config;     // openblas_get_config(): version and build options
  std::string core;       // openblas_get_corename(): the kernel set in use
  std::string chosen_by;  // who chose it
};

Library* library = nullptr;
std::once_flag loaded;

bool equal_ignoring_case(const std::string& a, const std::string& b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

template <class Fn>
Fn symbol(void* handle, const char* name) {
  void* address = ::dlsym(handle, name);
  if (address == nullptr) {
    fail("backend 'tbb': {} has no symbol {}: is it OpenBLAS? ({})", kLibrary, name, ::dlerror());
  }
  return reinterpret_cast<Fn>(address);
}

// The version, from openblas_get_config(): "OpenBLAS 0.3.21 NO_LAPACKE DYNAMIC_ARCH ...".
std::string version(const std::string& config) {
  const std::size_t first = config.find(' ');
  const std::size_t second = first == std::string::npos ? first : config.find(' ', first + 1);
  return config.substr(0, second);
}

Library* open_library() {
  auto lib = std::make_unique<Library>();
  const char* ours = std::getenv(kStrataCoreTypeVariable);
  const char* theirs = std::getenv(kCoreTypeVariable);
  std::string requested;
  if (ours != nullptr && *ours != '\0') {
    requested = ours;
    lib->chosen_by = fmt::format("{}={} from the environment", kStrataCoreTypeVariable, ours);
  } else if (isa::cpu_runs(isa::Isa::kAvx512)) {  // with the OS saving the 512-bit registers
    requested = "SkylakeX";
    lib->chosen_by = theirs != nullptr && *theirs != '\0'
                         ? fmt::format(
                               "chosen by the tbb backend for this AVX-512 CPU, in place of "
                               "{}={} from the environment",
                               kCoreTypeVariable, theirs)
                         : "chosen by the tbb backend for this AVX-512 CPU";
  } else if (theirs != nullptr && *theirs != '\0') {
    lib->chosen_by = fmt::format("{}={} from the environment", kCoreTypeVariable, theirs);
  } else {
    lib->chosen_by = "detected by OpenBLAS";
  }
  // Only a library not yet in the process reads this; see the header.
  if (!requested.empty()) ::setenv(kCoreTypeVariable, requested.c_str(), 1);
  void* handle = ::dlopen(kLibrary, RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    fail("backend 'tbb': cannot load {}: {} (Debian package libopenblas0; `make deps` installs it)",
         kLibrary, ::dlerror());
  }
  // Never closed: OpenBLAS keeps threads and buffers for the life of the process.
  lib->sgemm = symbol<SgemmFn>(handle, "cblas_sgemm");
  symbol<void (*)(int)>(handle, "openblas_set_num_threads")(1);
  lib->config = symbol<char* (*)()>(handle, "openblas_get_config")();
  lib->core = symbol<char* (*)()>(handle, "openblas_get_corename")();
  if (!requested.empty() && !equal_ignoring_case(lib->core, requested)) {
    // OpenBLAS was in the process before the plugin (another library loaded it), or it did not
    // know the name: say what really runs.
    lib->chosen_by = fmt::format("{} requested, but OpenBLAS runs {}", requested, lib->core);
  }
  return lib.release();
}

}  // namespace

void load() {
  std::call_once(loaded, [] { library = open_library(); });
}

void sgemm(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float* a, int lda,
           const float* b, int ldb, float beta, float* c, int ldc) {
  library->sgemm(kRowMajor, trans_a ? kTrans : kNoTrans, trans_b ? kTrans : kNoTrans, m, n, k,
                 alpha, a, lda, b, ldb, beta, c, ldc);
}

std::string describe() {
  load();
  return fmt::format("{} ({} kernels, {})", version(library->config), library->core,
                     library->chosen_by);
}

}  // namespace strata::tbb_backend::openblas
