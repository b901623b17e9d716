#include "cli.hpp"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <sstream>

#include "strata/error.hpp"
#include "strata/plugin_probe.hpp"

namespace strata::cli {

namespace fs = std::filesystem;

namespace {

// The one-line reminder appended to every command-line error.
std::string usage_hint(const Usage& usage) {
  return fmt::format("  usage: strata {} {}   (strata {} --help lists the options)", usage.command,
                     usage.synopsis, usage.command);
}

std::string usage_text(const Usage& usage, const po::options_description& options) {
  std::ostringstream text;
  text << "usage: strata " << usage.command << ' ' << usage.synopsis << "\n\n"
       << usage.description << "\n\n"
       << options;
  return text.str();
}

}  // namespace

std::optional<po::variables_map> parse(const Usage& usage, const po::options_description& options,
                                       const std::vector<std::string>& positional_names,
                                       const std::vector<std::string>& args) {
  po::options_description all(options);
  all.add_options()("help,h", "show this help");
  // Positional words are collected under one hidden name and checked here, so that the message
  // for a missing or extra word can name it.
  po::options_description hidden;
  hidden.add_options()("positional-words", po::value<std::vector<std::string>>(), "");
  po::options_description parsed_options(all);
  parsed_options.add(hidden);
  po::positional_options_description positional;
  positional.add("positional-words", -1);

  po::variables_map vm;
  try {
    po::store(
        po::command_line_parser(args)
            .options(parsed_options)
            .positional(positional)
            .style(po::command_line_style::default_style & ~po::command_line_style::allow_guessing)
            .run(),
        vm);
    // --help wins over missing required options, so notify() (which checks them) comes after.
    if (!vm.count("help")) po::notify(vm);
  } catch (const po::unknown_option& error) {
    fail("{}: unknown option '{}'\n{}", usage.command, error.get_option_name(), usage_hint(usage));
  } catch (const po::error& error) {
    fail("{}: {}\n{}", usage.command, error.what(), usage_hint(usage));
  }
  if (vm.count("help")) {
    std::fputs(usage_text(usage, all).c_str(), stdout);
    return std::nullopt;
  }

  const std::vector<std::string> words = vm.count("positional-words")
                                             ? vm["positional-words"].as<std::vector<std::string>>()
                                             : std::vector<std::string>{};
  const bool takes_rest = !positional_names.empty() && positional_names.back().ends_with("...");
  const std::size_t required = takes_rest ? positional_names.size() - 1 : positional_names.size();
  if (words.size() < required) {
    fail("{}: expected {} (missing {})\n{}", usage.command, usage.synopsis,
         positional_names[words.size()], usage_hint(usage));
  }
  if (!takes_rest && words.size() > required) {
    fail("{}: unexpected argument '{}'\n{}", usage.command, words[required], usage_hint(usage));
  }
  return vm;
}

void add_set_option(po::options_description& options) {
  options.add_options()("set", po::value<std::vector<std::string>>()->composing(),
                        "override a key of the experiment: --set key.path=value (value in YAML, "
                        "e.g. --set train.epochs=2 --set 'model.input=[1, 28, 28]'); repeatable");
}

Config load_experiment(const std::string& path, const po::variables_map& vm) {
  Config config = Config::parse_file(path);
  if (vm.count("set")) {
    for (const std::string& set : vm["set"].as<std::vector<std::string>>()) {
      const auto eq = set.find('=');
      if (eq == std::string::npos || eq == 0) fail("--set {}: expected key.path=value", set);
      config.set(set.substr(0, eq), set.substr(eq + 1));
    }
  }
  return config;
}

void load_experiment_plugins(const Config& experiment, PluginLoader& loader, bool probe) {
  auto plugins = experiment.find("plugins");
  if (!plugins) return;
  const fs::path base = fs::path(experiment.source_file()).parent_path();
  for (const Config& item : plugins->items()) {
    fs::path file = item.as<std::string>();
    if (file.is_relative()) file = base / file;
    try {
      if (probe) {
        load_plugin_probed(loader, file);
      } else {
        loader.load_file(file);
      }
    } catch (const Error& error) {
      item.fail(error.what());
    }
  }
}

std::string option_or(const po::variables_map& vm, const std::string& name,
                      const std::string& fallback) {
  return vm.count(name) ? vm[name].as<std::string>() : fallback;
}

std::vector<std::string> layers_option(const po::variables_map& vm) {
  if (!vm.count("layers")) return {};
  const std::string list = vm["layers"].as<std::string>();
  if (list.empty()) {
    fail(
        "--layers: empty; give layer names separated by commas (e.g. --layers conv1,fc1), or "
        "leave the option out for the last layer");
  }
  std::vector<std::string> names;
  for (std::size_t start = 0; start <= list.size();) {
    const std::size_t comma = std::min(list.find(',', start), list.size());
    if (comma == start) {
      fail("--layers {}: an empty layer name at character {}; separate names with single commas",
           list, start + 1);
    }
    names.push_back(list.substr(start, comma - start));
    start = comma + 1;
  }
  return names;
}

fs::path output_folder(const po::variables_map& vm, const std::string& experiment,
                       const std::string& suffix) {
  if (vm.count("out")) {
    const std::string out = vm["out"].as<std::string>();
    if (out.empty()) fail("--out: empty; give the output folder (e.g. --out runs/my_run)");
    return out;
  }
  // The file name without its .yaml (or .yml): "", "." and ".." are not folders of their own
  // (std::filesystem's stem() of ".yaml" is ".yaml", a hidden folder, so strip by hand).
  std::string stem = fs::path(experiment).filename().string();
  if (stem.ends_with(".yaml")) {
    stem.resize(stem.size() - 5);
  } else if (stem.ends_with(".yml")) {
    stem.resize(stem.size() - 4);
  } else {
    stem = fs::path(stem).stem().string();
  }
  if (stem.empty() || stem == "." || stem == "..") {
    fail(
        "{}: the file name gives no name for the default output folder (runs/{}{} would not be "
        "a folder of its own); give one with --out",
        experiment, stem, suffix);
  }
  return fs::path("runs") / (stem + suffix);
}

}  // namespace strata::cli
