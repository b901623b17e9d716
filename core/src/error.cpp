#include "strata/error.hpp"

#include <algorithm>

namespace strata {

Error::~Error() = default;

std::size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diagonal = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      std::size_t above = row[j];
      const bool same = std::tolower(static_cast<unsigned char>(a[i - 1])) ==
                        std::tolower(static_cast<unsigned char>(b[j - 1]));
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (same ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

namespace {
// Like edit_distance, but swapping two adjacent letters also costs a single edit (optimal string
// alignment distance). That is the most common typo, and for short words it decides whether a
// suggestion is made at all: "dri" is one typo away from "dir", not two.
std::size_t typo_distance(std::string_view a, std::string_view b) {
  auto same = [](char x, char y) {
    return std::tolower(static_cast<unsigned char>(x)) ==
           std::tolower(static_cast<unsigned char>(y));
  };
  std::vector<std::size_t> before(b.size() + 1), previous(b.size() + 1), current(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) previous[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    current[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      current[j] = std::min({previous[j] + 1, current[j - 1] + 1,
                             previous[j - 1] + (same(a[i - 1], b[j - 1]) ? 0 : 1)});
      if (i > 1 && j > 1 && same(a[i - 1], b[j - 2]) && same(a[i - 2], b[j - 1])) {
        current[j] = std::min(current[j], before[j - 2] + 1);
      }
    }
    std::swap(before, previous);
    std::swap(previous, current);
  }
  return previous[b.size()];
}
}  // namespace

std::string closest_match(std::string_view word, const std::vector<std::string>& candidates) {
  std::string best;
  std::size_t best_distance = 0;
  for (const auto& candidate : candidates) {
    std::size_t distance = typo_distance(word, candidate);
    if (best.empty() || distance < best_distance) {
      best = candidate;
      best_distance = distance;
    }
  }
  // Plausible typo: at most a third of the word differs (and at least one edit is allowed).
  const std::size_t limit = std::max<std::size_t>(1, (word.size() + 2) / 3);
  return (!best.empty() && best_distance <= limit) ? best : std::string();
}

std::string suggestion_text(std::string_view word, const std::vector<std::string>& candidates,
                            std::string_view what) {
  std::string text;
  if (std::string match = closest_match(word, candidates); !match.empty()) {
    text = fmt::format("did you mean '{}'? ", match);
  }
  if (candidates.empty()) return text + fmt::format("no {} are registered (is the plugin folder missing?)", what);
  return text + fmt::format("known {}: {}", what, fmt::join(candidates, ", "));
}

}  // namespace strata
