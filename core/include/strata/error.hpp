// strata/error.hpp: the one exception type users see.
//
// Every error that reaches the command line is a strata::Error whose what() is the complete,
// human-readable message (file, key path, line, expected and found). The CLI prints it and exits
// non-zero; nothing else should need a stack trace to be understood.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace strata {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
  ~Error() override;
};

template <class... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
  throw Error(fmt::format(format, std::forward<Args>(args)...));
}

// Levenshtein distance, for "did you mean" suggestions.
std::size_t edit_distance(std::string_view a, std::string_view b);

// The candidate closest to `word`, or "" when nothing is close enough to be a plausible typo.
std::string closest_match(std::string_view word, const std::vector<std::string>& candidates);

// "did you mean 'x'? known <what>: a, b, c" (the first part only when a close match exists).
std::string suggestion_text(std::string_view word, const std::vector<std::string>& candidates,
                            std::string_view what);

}  // namespace strata
