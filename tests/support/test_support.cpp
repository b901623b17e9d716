#include "test_support.hpp"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <numeric>

#include "strata/error.hpp"
#include "strata/plugin.hpp"

namespace strata::test {

namespace {

void to_image(const Tensor& images, int64_t n, Image& image) {
  const Shape sample = images.shape().without_batch();
  image.resize(sample[0], sample[1], sample[2]);
  std::copy_n(images.data() + n * sample.numel(), sample.numel(), image.pixels.data());
}

class TensorImages final : public FitImages {
 public:
  explicit TensorImages(const Tensor& images) : images_(images) {}
  int64_t size() const override { return images_.dim(0); }
  bool read(int64_t i, Image& out) const override {
    to_image(images_, i, out);
    return true;
  }

 private:
  const Tensor& images_;
};

}  // namespace

void apply_batch(const Transform& transform, Tensor& images) {
  Image image, scratch;
  Tensor out;
  for (int64_t n = 0; n < images.dim(0); ++n) {
    to_image(images, n, image);
    transform.apply(image, scratch);
    if (n == 0) out = Tensor(image.shape().with_batch(images.dim(0)));
    std::copy(image.pixels.begin(), image.pixels.end(), out.data() + n * image.pixels.size());
  }
  images = std::move(out);
}

void fit_on(Transform& transform, const Tensor& images) { transform.fit(TensorImages(images)); }

void augment_one(const Transform& transform, const Tensor& image, Tensor& out, Rng& rng) {
  Image sample, scratch;
  to_image(image, 0, sample);
  transform.augment(sample, scratch, rng);
  if (sample.shape().with_batch(1) != out.shape())
    fail("augment_one: the transform gave {}, the test expects {}", sample.shape().str(),
         out.shape().str());
  std::copy(sample.pixels.begin(), sample.pixels.end(), out.data());
}

SampleSet samples_of(const Split& split, const std::string& name) {
  SampleSet set;
  set.name = name;
  set.reader = std::make_shared<InMemorySplit>(split);
  set.rows.resize(split.labels.size());
  std::iota(set.rows.begin(), set.rows.end(), int64_t{0});
  return set;
}

Split load_split(Dataset& dataset, std::string_view split) {
  const std::shared_ptr<const SplitReader> reader = dataset.open(split);
  Split out;
  out.labels.assign(reader->labels().begin(), reader->labels().end());
  Image image;
  for (int64_t i = 0; i < reader->size(); ++i) {
    reader->read(i, image);
    if (i == 0) out.images = Tensor(image.shape().with_batch(reader->size()));
    if (image.shape() != out.images.shape().without_batch())
      fail("load_split: sample {} is {}, sample 0 {}", i, image.shape().str(),
           out.images.shape().without_batch().str());
    std::copy(image.pixels.begin(), image.pixels.end(), out.images.data() + i * image.pixels.size());
  }
  return out;
}


Registries& registries() {
  static Registries* instance = [] {
    auto* r = new Registries();
    static PluginLoader loader(*r);
    // The build's own plugins only: whatever STRATA_PLUGIN_PATH holds (a user's own plugins, a
    // half-built one) must not change what the in-tree suite checks.
    loader.load_dir(std::filesystem::path(STRATA_BIN_DIR) / ".." / "lib" / "strata");
    return r;
  }();
  return *instance;
}

const Backend& backend(const std::string& name) {
  static std::map<std::string, std::shared_ptr<Backend>> backends;
  std::shared_ptr<Backend>& entry = backends[name];
  if (!entry) {
    entry = registries().backends.create(name, Config{});
    entry->set_threads(0);
  }
  return *entry;
}

Tensor random_tensor(const Shape& shape, std::mt19937& rng, float low, float high) {
  Tensor t(shape);
  std::uniform_real_distribution<float> dist(low, high);
  for (float& v : t.span()) v = dist(rng);
  return t;
}

Config yaml(const std::string& text) { return Config::parse_string(text, "<test>"); }

TempDir::TempDir() {
  static int counter = 0;
  path_ = std::filesystem::temp_directory_path() /
          fmt::format("strata-test-{}-{}", ::getpid(), counter++);
  std::filesystem::remove_all(path_);
  std::filesystem::create_directories(path_);
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

float max_abs_diff(const Tensor& a, const Tensor& b) {
  if (a.numel() != b.numel()) fail("max_abs_diff: {} vs {}", a.shape().str(), b.shape().str());
  float worst = 0;
  for (int64_t i = 0; i < a.numel(); ++i) worst = std::max(worst, std::abs(a.data()[i] - b.data()[i]));
  return worst;
}

}  // namespace strata::test
