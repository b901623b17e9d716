// analyze CKPT.h5 [SPLIT]: reopens a trained model from its checkpoint alone, evaluates it on a
// split of its experiment's dataset (preprocessed as in training) and prints the accuracy, the
// plugins it loaded and where from, and the shape of the first layer's weight.
#include <algorithm>
#include <cstdio>
#include <exception>

#include "strata/tools/analysis.hpp"
#include "strata/error.hpp"

int main(int argc, char** argv) {
  if (argc < 2 || argc > 3) {
    std::fprintf(stderr, "usage: analyze CKPT.h5 [test|val|train]\n");
    return 2;
  }
  try {
    strata::Registries registries;
    strata::PluginLoader loader(registries);
    loader.load_default();  // PREFIX/lib/strata beside libstrata_core, then STRATA_PLUGIN_PATH
    strata::TrainedModel model(argv[1], registries, loader);
    const strata::Split split = model.load_split(argc == 3 ? argv[2] : "test");
    const strata::Tensor logits = model.run(split.images);
    const int64_t n = logits.dim(0), classes = n > 0 ? logits.numel() / n : 0;
    int64_t correct = 0;
    for (int64_t i = 0; i < n; ++i) {
      const float* row = logits.data() + i * classes;
      correct += (std::max_element(row, row + classes) - row) == split.labels[i];
    }
    std::printf("plugin folder: %s\n", strata::PluginLoader::default_dirs().front().c_str());
    for (const strata::PluginRef& plugin : loader.plugins())
      std::printf("loaded %s %s from %s\n", plugin->name.c_str(), plugin->version.c_str(),
                  plugin->path.c_str());
    const strata::NamedTensor first = model.parameters().front();
    std::printf("%s has shape %s\n", first.name.c_str(), first.tensor.shape().str().c_str());
    std::printf("accuracy %.4f on %lld images\n", n > 0 ? static_cast<double>(correct) / n : 0.0,
                static_cast<long long>(n));
  } catch (const std::exception& error) {  // strata::Error: the message says what and where
    std::fprintf(stderr, "error: %s\n", error.what());
    return 1;
  }
  return 0;
}
