// strata check-plugin LIB.so [--layer TYPE] [--config YAML] [--input C,H,W]: the conformance checks
// of strata/tools/conformance.hpp on every layer a plugin registers, as a pass/fail table.
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <map>

#include "cli.hpp"
#include "strata/tools/conformance.hpp"
#include "strata/error.hpp"
#include "strata/plugin_probe.hpp"

namespace strata::cli {

namespace fs = std::filesystem;

namespace {

// A scratch folder for the checkpoint round trip, removed on exit.
struct ScratchDir {
  fs::path path = fs::temp_directory_path() / fmt::format("strata-check-plugin-{}", ::getpid());
  ScratchDir() { fs::create_directories(path); }
  ~ScratchDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

// The first line of a detail, for the table; the whole text follows the table.
std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

}  // namespace

int run_check_plugin(Session& session, const std::vector<std::string>& args) {
  po::options_description options("options");
  options.add_options()("layer", po::value<std::string>(),
                        "check only this layer type (default: every layer the plugin registers)")(
      "config", po::value<std::string>(),
      "the layer's keys as YAML, e.g. \"{out_channels: 4, kernel: 3}\" (needs --layer when the "
      "plugin registers several layers); replaces the plugin's own cases")(
      "input", po::value<std::string>(),
      "input sample shape C,H,W (several inputs: C,H,W;C,H,W); default: the plugin's own cases, "
      "else 3,8,8");
  const Usage usage{
      "check-plugin", "LIB.so [options]",
      "Load the plugin (after the default plugin folders, which provide the backends) and run the\n"
      "conformance checks on each layer type it registers: shape inference, gradients against\n"
      "central differences, every backend against the reference, batch independence, NaN\n"
      "propagation, what backward reads, fused activations and the checkpoint round trip.\n"
      "Prints a table; exits with status 1 when a check fails.\n"
      "A layer that needs keys gets them from --config, or from cases the plugin exports with\n"
      "STRATA_CONFORMANCE_CASES (docs/writing-a-plugin.md)."};
  auto vm = parse(usage, options, {"LIB.so"}, args);
  if (!vm) return 0;
  const fs::path file = (*vm)["positional-words"].as<std::vector<std::string>>()[0];

  // A broken plugin fails here, with the loader's message; one that crashes while loading is
  // tried in a child process first and reported by file and signal.
  load_plugin_probed(session.loader, file);
  const fs::path canonical = fs::canonical(file);
  PluginRef plugin;
  for (const PluginRef& loaded : session.loader.plugins()) {
    if (loaded->path == canonical) plugin = loaded;
  }
  if (!plugin) fail("plugin {}: not loaded", canonical.string());

  const Registries& registries = session.registries;
  std::vector<std::string> types;
  for (const auto& [type, entry] : registries.layers.entries()) {
    if (entry.owner == plugin) types.push_back(type);
  }
  std::printf("plugin %s %s (%s): %zu layer type(s)%s%s\n", plugin->name.c_str(),
              plugin->version.c_str(), canonical.c_str(), types.size(), types.empty() ? "" : ": ",
              fmt::format("{}", fmt::join(types, ", ")).c_str());
  if (vm->count("layer")) {
    const std::string wanted = (*vm)["layer"].as<std::string>();
    if (std::find(types.begin(), types.end(), wanted) == types.end()) {
      fail("--layer {}: plugin '{}' registers no such layer type\n  {}", wanted, plugin->name,
           suggestion_text(wanted, types, "layer types of this plugin"));
    }
    types = {wanted};
  }
  if (types.empty()) {
    std::printf("nothing to check: the plugin registers no layer type\n");
    return 0;
  }
  if (vm->count("config") && types.size() != 1) {
    fail("--config applies to one layer type, but plugin '{}' registers {}: add --layer TYPE",
         plugin->name, types.size());
  }

  // The cases: --config/--input, else the plugin's exported cases, else the bare type on 3,8,8.
  const std::vector<ConformanceCase> exported = exported_conformance_cases(*plugin);
  std::vector<ConformanceCase> cases;
  const std::vector<Shape> input =
      vm->count("input") ? parse_sample_shapes((*vm)["input"].as<std::string>(), "--input")
                         : std::vector<Shape>{};
  for (const std::string& type : types) {
    if (vm->count("config")) {
      const std::string text = (*vm)["config"].as<std::string>();
      const Config keys = Config::parse_string(text, "--config");
      if (!keys.is_map())
        fail("--config: expected a YAML map of the layer's keys, e.g. \"{{k: 3}}\"");
      std::string yaml = text;
      if (keys.has("type")) {
        if (keys.get<std::string>("type") != type)
          keys.fail_key("type", fmt::format("--layer is '{}'", type));
      } else {
        // Keep the user's flow map as typed, with the type in front: "{type: T, k: 3}".
        const auto open = text.find('{'), close = text.rfind('}');
        const std::string inner =
            open != std::string::npos && close != std::string::npos && close > open
                ? text.substr(open + 1, close - open - 1)
                : std::string();
        const bool empty = inner.find_first_not_of(" \t\n") == std::string::npos;
        yaml = open == std::string::npos
                   ? fmt::format("{{type: {}}}", type)
                   : fmt::format("{{type: {}{}{}}}", type, empty ? "" : ", ", inner);
      }
      cases.push_back({yaml, input.empty() ? std::vector<Shape>{{3, 8, 8}} : input, {}});
      continue;
    }
    std::size_t found = 0;
    for (const ConformanceCase& layer_case : exported) {
      if (Config::parse_string(layer_case.yaml, "<case>").get<std::string>("type") != type)
        continue;
      ConformanceCase copy = layer_case;
      if (!input.empty()) {
        copy.inputs = input;
        copy.output = Shape();
      }
      cases.push_back(copy);
      ++found;
    }
    if (found == 0) {
      cases.push_back({fmt::format("{{type: {}}}", type),
                       input.empty() ? std::vector<Shape>{{3, 8, 8}} : input,
                       {}});
    }
  }

  ScratchDir scratch;
  std::vector<std::pair<std::string, CheckResult>> failures;
  std::printf("\n%-44s %-11s %-6s %s\n", "case", "check", "result", "detail");
  int failed = 0;
  std::size_t checks = 0;
  for (const ConformanceCase& layer_case : cases) {
    std::vector<std::string> shapes;
    for (const Shape& shape : layer_case.inputs) shapes.push_back(shape.str());
    const std::string label = fmt::format("{} on {}", layer_case.yaml, fmt::join(shapes, " "));
    for (const CheckResult& result : run_conformance(registries, layer_case, scratch.path)) {
      ++checks;
      std::printf("%-44s %-11s %-6s %s\n", label.c_str(), result.check.c_str(),
                  result.passed ? "pass" : "FAIL", first_line(result.detail).c_str());
      if (!result.passed) {
        ++failed;
        failures.emplace_back(label, result);
      }
    }
  }
  std::string previous;
  for (const auto& [label, result] : failures) {
    if (label + result.detail == previous) continue;  // the same setup error for every check
    previous = label + result.detail;
    std::printf("\n%s, %s:\n  %s\n", label.c_str(), result.check.c_str(), result.detail.c_str());
    if (result.detail.find("missing required key") != std::string::npos) {
      std::printf(
          "  (give the layer's keys with --layer TYPE --config \"{...}\", or export a case "
          "with STRATA_CONFORMANCE_CASES)\n");
    }
  }
  std::printf("\n%zu case(s), %zu check(s): %d failed\n", cases.size(), checks, failed);
  return failed == 0 ? 0 : 1;
}

}  // namespace strata::cli
