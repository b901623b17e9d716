// Helpers of strata/communicator.hpp that every communicator shares.
#include "strata/communicator.hpp"

#include <fmt/format.h>

namespace strata {

void Communicator::broadcast(std::string& text, int root, std::string_view what) {
  int64_t length = static_cast<int64_t>(text.size());
  broadcast_values(std::span<int64_t>(&length, 1), root, what);
  text.resize(static_cast<std::size_t>(length));
  broadcast(std::as_writable_bytes(std::span<char>(text.data(), text.size())), root, what);
}

std::string rank_label(const Communicator& communicator) {
  return fmt::format("rank {} of {} ({})", communicator.rank(), communicator.size(),
                     communicator.host());
}

}  // namespace strata
