// strata plugins: every loaded plugin and the types it registers.
#include <cstdio>

#include "cli.hpp"

namespace strata::cli {

namespace {

template <class R>
void list_types(const char* title, const R& registry) {
  std::printf("%s:\n", title);
  for (const auto& [type, entry] : registry.entries()) {
    std::printf("  %-24s %s\n", type.c_str(), entry.owner->name.c_str());
  }
}

}  // namespace

int run_plugins(Session& session, const std::vector<std::string>& args) {
  po::options_description options("options");
  const Usage usage{"plugins", "[EXP.yaml]",
                    "List the loaded plugins (from <this program>/../lib/strata and\n"
                    "STRATA_PLUGIN_PATH) and every type they register. With an experiment file,\n"
                    "also load and list the plugins its `plugins:` key names."};
  auto vm = parse(usage, options, {"EXP.yaml..."}, args);
  if (!vm) return 0;
  const auto words = vm->count("positional-words")
                         ? (*vm)["positional-words"].as<std::vector<std::string>>()
                         : std::vector<std::string>{};
  if (words.size() > 1) fail("plugins: expected at most one experiment file, got {}", words.size());
  if (!words.empty()) {
    const std::size_t before = session.loader.plugins().size();
    const Config experiment = Config::parse_file(words[0]);
    load_experiment_plugins(experiment, session.loader, /*probe=*/true);
    std::printf("plugins the experiment %s loads (its `plugins:` list):\n", words[0].c_str());
    const auto& all = session.loader.plugins();
    if (all.size() == before) std::printf("  (none beyond the default folders)\n");
    for (std::size_t i = before; i < all.size(); ++i) {
      std::printf("  %-20s %-6s %s\n", all[i]->name.c_str(), all[i]->version.c_str(),
                  all[i]->path.c_str());
    }
  }
  const Registries& registries = session.registries;
  std::printf("plugins:\n");
  for (const auto& plugin : session.loader.plugins()) {
    std::printf("  %-20s %-6s %s\n", plugin->name.c_str(), plugin->version.c_str(),
                plugin->path.c_str());
  }
  list_types("layer types", registries.layers);
  list_types("block types", registries.blocks);
  list_types("loss types", registries.losses);
  list_types("optimizer types", registries.optimizers);
  list_types("schedule types", registries.schedules);
  list_types("initializer types", registries.initializers);
  list_types("dataset types", registries.datasets);
  list_types("transform types", registries.transforms);
  list_types("backends", registries.backends);
  std::printf("kernels (op, backend, implementation in the order they are tried, plugin):\n");
  for (const auto& [key, list] : registries.kernels.entries()) {
    for (const KernelRegistry::Entry& entry : list) {
      std::printf("  %-12s %-12s %-16s %s\n", key.first.c_str(), key.second.c_str(),
                  entry.name.c_str(), entry.owner->name.c_str());
    }
  }
  return 0;
}

}  // namespace strata::cli
