// test_crashing: register_all() kills the process, as a plugin with a memory bug might. It aborts
// (SIGABRT), or raises SIGSEGV when STRATA_TEST_CRASH=segv. `strata plugins` and `check-plugin`
// must survive it and name the file and the signal (tests/scripts/test_hostile_inputs.sh).
#include <csignal>
#include <cstdlib>
#include <string_view>

#include "strata/plugin.hpp"

namespace {
void register_all(strata::Registries&) {
  const char* how = std::getenv("STRATA_TEST_CRASH");
  if (how != nullptr && std::string_view(how) == "segv") std::raise(SIGSEGV);
  std::abort();
}
}  // namespace

STRATA_PLUGIN("test_crashing", "0.0", register_all)
