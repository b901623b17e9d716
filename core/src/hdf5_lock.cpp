#include "strata/hdf5_lock.hpp"

#include <string_view>

namespace strata {

std::recursive_mutex& hdf5_mutex() {
  static std::recursive_mutex mutex;
  return mutex;
}

namespace {

herr_t keep_innermost_error(unsigned n, const H5E_error2_t* error, void* reason) {
  if (n == 0 && error->desc != nullptr) *static_cast<std::string*>(reason) = error->desc;
  return 0;
}

}  // namespace

std::string hdf5_error_reason() {
  std::string reason;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, keep_innermost_error, &reason);
  H5Eclear2(H5E_DEFAULT);
  if (reason.empty()) return "";
  // System call failures read "file write failed: time = ..., filename = ..., errno = 27, error
  // message = 'File too large', buf = ...": keep the summary and the system's message.
  const std::string_view marker = "error message = '";
  const std::size_t start = reason.find(marker);
  if (start != std::string::npos) {
    const std::size_t text = start + marker.size();
    const std::size_t end = reason.find('\'', text);
    const std::size_t colon = reason.find(':');
    if (end != std::string::npos && colon < start) {
      reason = reason.substr(0, colon) + ": " + reason.substr(text, end - text);
    }
  }
  return " (HDF5: " + reason + ")";
}

}  // namespace strata
