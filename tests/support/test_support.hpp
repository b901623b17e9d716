// Shared helpers for the Boost.Test suites.
#pragma once

#include <unistd.h>

#include <boost/test/unit_test.hpp>
#include <cstdio>
#include <filesystem>
#include <random>
#include <string>

#include "strata/backend.hpp"
#include "strata/config.hpp"
#include "strata/dataset.hpp"
#include "strata/error.hpp"
#include "strata/registry.hpp"
#include "strata/tensor.hpp"

namespace strata::test {

// Registries filled from the build's plugin folder (bin/../lib/strata), loaded once per process;
// STRATA_PLUGIN_PATH is ignored.
Registries& registries();

// A backend of registries() (built once per name and process, all cores): what a Graph is built
// for. "reference" unless a test needs another.
const Backend& backend(const std::string& name = "reference");

// Uniform random values in [low, high): tests never run on zeros or constants.
Tensor random_tensor(const Shape& shape, std::mt19937& rng, float low = -1.0f, float high = 1.0f);

// Every sample of `dataset`'s split `split` ("train" or "test"), read through Dataset::open and
// SplitReader::read into one tensor (the samples must share one shape).
Split load_split(Dataset& dataset, std::string_view split);

// Batch helpers over the per-sample Transform API, for tests written on tensors [N, C, H, W]:
// apply() to every sample (the tensor takes the output shape); fit() on the images of a tensor;
// augment() of one image [1, C, H, W] into `out` [1, output shape].
void apply_batch(const Transform& transform, Tensor& images);
void fit_on(Transform& transform, const Tensor& images);
void augment_one(const Transform& transform, const Tensor& image, Tensor& out, Rng& rng);
// An in-memory split as the SampleSet of all its rows.
SampleSet samples_of(const Split& split, const std::string& name = "train");

// A YAML snippet as a Config (source name "<test>").
Config yaml(const std::string& text);

// Redirects stderr (the file descriptor, as KernelRegistry writes with fprintf) into a string
// until finish().
class StderrCapture {
 public:
  StderrCapture() : file_(std::tmpfile()) {
    std::fflush(stderr);
    saved_ = ::dup(2);
    ::dup2(::fileno(file_), 2);
  }
  ~StderrCapture() {
    if (file_ != nullptr) finish();
  }
  std::string finish() {
    std::fflush(stderr);
    ::dup2(saved_, 2);
    ::close(saved_);
    std::string text;
    std::rewind(file_);
    for (int ch = std::fgetc(file_); ch != EOF; ch = std::fgetc(file_))
      text.push_back(static_cast<char>(ch));
    std::fclose(file_);
    file_ = nullptr;
    return text;
  }

 private:
  std::FILE* file_;
  int saved_ = -1;
};

// A fresh, empty temporary folder, removed when the object goes out of scope.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

// The message of the strata::Error that `action` throws ("" and a failed check when none).
// Shown with --log_level=message, so the wording of every expected error can be reviewed.
template <class Action>
std::string error_of(Action&& action) {
  try {
    action();
  } catch (const Error& error) {
    BOOST_TEST_MESSAGE("expected error: " << error.what());
    return error.what();
  }
  BOOST_ERROR("expected a strata::Error, but nothing was thrown");
  return "";
}

// The message of the strata::Error that `action` throws, or "" when it throws none. Unlike
// error_of it logs and checks nothing, so a rank's thread in a test::ThreadJob may call it
// (Boost.Test's log and checks are not thread-safe; check the result on the main thread).
template <class Action>
std::string thrown_message(Action&& action) {
  try {
    action();
  } catch (const Error& error) {
    return error.what();
  }
  return "";
}

// Largest |a - b| over all elements (shapes must have equal element counts).
float max_abs_diff(const Tensor& a, const Tensor& b);

}  // namespace strata::test

// Evaluates `text` once (often an error_of(...) call), then checks that it contains `part`.
#define STRATA_CHECK_CONTAINS(text, part)                                    \
  do {                                                                       \
    const std::string checked_message = (text);                              \
    BOOST_CHECK_MESSAGE(checked_message.find(part) != std::string::npos,     \
                        "message lacks \"" << (part) << "\"; message was:\n" \
                                           << checked_message);              \
  } while (false)
