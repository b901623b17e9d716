// strata/random.hpp: deterministic random streams that do not depend on the standard library.
//
// std::uniform_real_distribution, std::normal_distribution and std::shuffle are free to differ
// between standard library implementations (and versions); a Strata run must draw the same trials,
// synthetic data and batch order everywhere. Stream uses only std::mt19937_64, whose output the
// standard fixes, and turns it into numbers with its own arithmetic.
//
//   splitmix64(x)              a 64-bit mix (Steele et al.): nearby inputs give unrelated outputs
//   Stream(seed, stream)       an engine seeded from the pair, so that independent streams of one
//                              seed (a dataset's train and test split, each search stage) never meet
//   uniform()                  [0, 1), 53 random bits
//   below(n)                   [0, n) for n >= 1 (modulo bias below 2^-50 for n < 2^14)
//   gaussian()                 N(0, 1) by Box-Muller, both values of each pair used
//   shuffle(first, last)       a Fisher-Yates permutation of a random-access range
#pragma once

#include <cmath>
#include <cstdint>
#include <iterator>
#include <numbers>
#include <random>
#include <utility>

namespace strata {

inline uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

class Stream {
 public:
  Stream(uint64_t seed, uint64_t stream) : engine_(splitmix64(splitmix64(seed) ^ stream)) {}

  double uniform() { return static_cast<double>(engine_() >> 11) * 0x1.0p-53; }
  uint64_t below(uint64_t n) { return engine_() % n; }
  double gaussian() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    const double radius = std::sqrt(-2.0 * std::log(1.0 - uniform()));  // 1 - u is in (0, 1]
    const double angle = 2.0 * std::numbers::pi * uniform();
    spare_ = radius * std::sin(angle);
    has_spare_ = true;
    return radius * std::cos(angle);
  }
  template <class RandomIt>
  void shuffle(RandomIt first, RandomIt last) {
    const auto n = static_cast<uint64_t>(std::distance(first, last));
    for (uint64_t i = n; i > 1; --i) {
      using std::swap;
      swap(first[i - 1], first[below(i)]);
    }
  }

 private:
  std::mt19937_64 engine_;
  double spare_ = 0;
  bool has_spare_ = false;
};

}  // namespace strata
