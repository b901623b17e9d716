#include "cli.hpp"

#include <cstdio>
#include <filesystem>
#include <sstream>

#include "strata/error.hpp"

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

void load_experiment_plugins(const Config& experiment, PluginLoader& loader) {
  auto plugins = experiment.find("plugins");
  if (!plugins) return;
  const fs::path base = fs::path(experiment.source_file()).parent_path();
  for (const Config& item : plugins->items()) {
    fs::path file = item.as<std::string>();
    if (file.is_relative()) file = base / file;
    try {
      loader.load_file(file);
    } catch (const Error& error) {
      item.fail(error.what());
    }
  }
}

std::string option_or(const po::variables_map& vm, const std::string& name,
                      const std::string& fallback) {
  return vm.count(name) ? vm[name].as<std::string>() : fallback;
}

}  // namespace strata::cli
