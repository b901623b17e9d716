// Fuzz target: the experiment parser and the model builder. The input is an experiment file; it is
// parsed, written back (dump), and its model section, if any, is built on the reference backend.
#include "fuzz_support.hpp"
#include "strata/backend.hpp"
#include "strata/config.hpp"
#include "strata/graph.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  using namespace strata;
  Registries& registries = fuzz::registries();
  try {
    Config config =
        Config::parse_string(std::string(reinterpret_cast<const char*>(data), size), "fuzz.yaml");
    Config::parse_string(config.dump(), "dump");
    if (auto model = config.find("model")) {
      Rng rng(1);
      static const std::shared_ptr<Backend> reference =
          registries.backends.create("reference", Config{});
      Graph graph(*model, registries, *reference, rng);
      Config::parse_string(config.dump(), "dump");
    }
  } catch (const Error&) {
  }
  return 0;
}
