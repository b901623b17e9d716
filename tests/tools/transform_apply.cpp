// transform_apply: runs Strata transforms on given images, for the comparison with torchvision
// (tests/scripts/transforms_vs_torchvision.py).
//
//   transform_apply IN.h5 OUT.h5 CASE...      each CASE is four arguments:
//       NAME INPUT MODE '<transform YAML>'
//
// IN.h5 holds images [C, H, W] (float32) under their names. For each case, image INPUT goes
// through the transform (set up for the image's own shape, or [C, 0, 0] with MODE suffix
// "-varying"), and the result is written to OUT.h5 under NAME. MODE:
//   apply          the deterministic apply()
//   augment        augment() with std::mt19937(0) (for random transforms whose parameters the
//                  configuration fixes, such as color_jitter with brightness: [f, f])
//   crop:T,L,H,W   the window of H x W at (T, L) is cut out first, then apply(): with a `resize`
//                  to [h, w] this is torchvision's resized_crop(img, T, L, H, W, [h, w]).
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "strata/checkpoint.hpp"
#include "strata/config.hpp"
#include "strata/dataset.hpp"
#include "strata/error.hpp"
#include "strata/plugin.hpp"
#include "strata/registry.hpp"

using namespace strata;

namespace {

Image to_image(const Tensor& tensor) {
  if (tensor.rank() != 3)
    fail("transform_apply: expected an image [C, H, W], got {}", tensor.shape().str());
  Image image;
  image.resize(tensor.dim(0), tensor.dim(1), tensor.dim(2));
  std::memcpy(image.pixels.data(), tensor.data(), image.pixels.size() * sizeof(float));
  return image;
}

Tensor to_tensor(const Image& image) {
  Tensor tensor(image.shape());
  std::memcpy(tensor.data(), image.pixels.data(), image.pixels.size() * sizeof(float));
  return tensor;
}

// The window of height x width at (top, left), which must lie inside the image.
Image crop(const Image& image, int64_t top, int64_t left, int64_t height, int64_t width) {
  if (top < 0 || left < 0 || top + height > image.height || left + width > image.width) {
    fail("transform_apply: crop {}x{} at ({}, {}) leaves the {}x{} image", height, width, top, left,
         image.height, image.width);
  }
  Image out;
  out.resize(image.channels, height, width);
  for (int64_t c = 0; c < image.channels; ++c) {
    for (int64_t y = 0; y < height; ++y) {
      std::memcpy(out.plane(c) + y * width, image.plane(c) + (top + y) * image.width + left,
                  width * sizeof(float));
    }
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 7 || (argc - 3) % 4 != 0) {
    std::fprintf(stderr, "usage: transform_apply IN.h5 OUT.h5 (NAME INPUT MODE YAML)...\n");
    return 2;
  }
  try {
    Registries registries;
    PluginLoader loader(registries);
    loader.load_default();
    std::vector<NamedTensor> out;
    for (int arg = 3; arg < argc; arg += 4) {
      const std::string name = argv[arg], input = argv[arg + 1];
      std::string mode = argv[arg + 2];
      const Config config = Config::parse_string(argv[arg + 3], name);
      auto transform = registries.transforms.create(config);
      config.check_unused();
      Image image = to_image(read_hdf5_tensor(argv[1], input)), scratch;
      bool varying = false;
      if (const auto suffix = mode.find("-varying"); suffix != std::string::npos) {
        varying = true;
        mode.erase(suffix);
      }
      if (mode.rfind("crop:", 0) == 0) {
        long long top = 0, left = 0, height = 0, width = 0;
        if (std::sscanf(mode.c_str() + 5, "%lld,%lld,%lld,%lld", &top, &left, &height, &width) !=
            4) {
          fail("transform_apply: bad mode '{}' (expected crop:T,L,H,W)", mode);
        }
        image = crop(image, top, left, height, width);
        mode = "apply";
      }
      transform->setup(varying ? Shape{image.channels, 0, 0} : image.shape());
      if (mode == "apply") {
        transform->apply(image, scratch);
      } else if (mode == "augment") {
        Rng rng(0);
        transform->augment(image, scratch, rng);
      } else {
        fail("transform_apply: unknown mode '{}'", mode);
      }
      out.push_back({name, to_tensor(image)});
    }
    write_hdf5_tensors(argv[2], out);
    return 0;
  } catch (const Error& error) {
    std::fprintf(stderr, "error: %s\n", error.what());
    return 1;
  }
}
