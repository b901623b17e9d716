// strata/config.hpp: the typed, position-aware view of an experiment file.
//
// The core is the only code that parses YAML. It turns the file into a tree of ConfigNodes that
// remember where every key and value came from, and hands plugins a Config: a view of one node plus
// its key path ("model.layers[3]"). Every error raised through a Config names the file, line,
// column and key path:
//
//   experiments/lenet.yaml:14:11: model.layers[3].stride: expected an integer, found 'two'
//
// Reading a key marks it used. After a plugin has built its object from a Config, the registry
// calls check_unused(), so a typo such as `stirde: 2` is an error ("unknown key 'stirde', did you
// mean 'stride'?") rather than a silently ignored setting.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace strata {

struct ConfigNode;

class Config {
 public:
  Config() = default;

  // Parse a YAML file or string. Malformed YAML is an Error naming file, line and column.
  // A file may start from others: a top-level `include: base.yaml` (or a list of files, merged in
  // order), relative to the including file's folder, is deep-merged under the file's own keys
  // (maps merged key by key, lists and scalars replaced); included files may include others, a
  // cycle is an Error, and every key keeps the file and line it came from.
  static Config parse_file(const std::string& path);
  static Config parse_string(const std::string& text, const std::string& source_name);
  // A Config written by code rather than by the user, such as a sub-layer a block plugin emits:
  // `yaml` is a YAML map, usually a flow map ("{type: conv2d, out_channels: 64, kernel: 3}").
  // Every node and key reports the position of `origin` (the block's entry in the user's file),
  // and key paths read "<origin path>/<label>.<key>", so an error in a generated sub-layer points
  // at the line that asked for it. Malformed YAML or a non-map is an Error at `origin`.
  static Config synthesize(const std::string& yaml, const Config& origin, std::string_view label);

  // Override or add a value: `path` is dotted with optional indices ("model.layers[0].stride"),
  // `yaml_value` is parsed as YAML (so "3", "[1, 28, 28]" and "tbb" all work). Missing maps on
  // the way are created; an index past the end of a sequence is an error.
  void set(std::string_view path, std::string_view yaml_value);

  // A deep copy of this tree (positions kept, every key unread), to change with set() or erase()
  // without touching the original: `strata search` builds one per trial.
  Config clone() const;
  // Removes `key` from this map; returns whether it was there.
  bool erase(std::string_view key);

  bool valid() const { return node_ != nullptr; }
  bool is_map() const;
  bool is_sequence() const;
  bool is_scalar() const;
  bool is_null() const;

  bool has(std::string_view key) const;  // does not mark the key used
  std::vector<std::string> keys() const;

  // Typed access. T is one of: bool, int, int64_t, float, double, std::string,
  // std::vector<int64_t>, std::vector<double>, std::vector<std::string>.
  template <class T>
  T get(std::string_view key) const;  // required: a missing key is an error
  template <class T>
  T get(std::string_view key, const T& fallback) const;  // optional
  template <class T>
  T as() const;  // this node's own value

  // A window extent pair: `key` as an integer (used for both) or a list [height, width].
  //   requires: each value is in [minimum, kMaxExtent] (2^31 - 1, strata/tensor.hpp), else an
  //             Error at the value: "expected an integer or a list [height, width], found a list
  //             of 3", "must be at least 1, found 0" or "must be at most 2147483647 (2^31 - 1),
  //             found ...".
  //   ensures:  nullopt when the key is absent (the caller picks the default or requires it).
  std::optional<std::array<int64_t, 2>> get_pair(std::string_view key, int64_t minimum) const;

  Config at(std::string_view key) const;                  // required child node
  std::optional<Config> find(std::string_view key) const;  // optional child node
  std::vector<Config> items() const;                      // elements of a sequence

  std::string path() const { return path_; }  // "model.layers[3]" ("" for the root)
  std::string where() const;                  // "file:line:col"
  std::string source_file() const;

  [[noreturn]] void fail(const std::string& message) const;  // at this node
  [[noreturn]] void fail_key(std::string_view key, const std::string& message) const;

  // Raise an Error for the first key below this node that nothing read.
  void check_unused() const;
  // Mark this whole subtree as read (for sections a command deliberately ignores).
  void mark_used() const;

  // The (possibly overridden) tree written back as YAML, e.g. to store in a checkpoint.
  std::string dump() const;

 private:
  Config(std::shared_ptr<ConfigNode> node, std::string path)
      : node_(std::move(node)), path_(std::move(path)) {}
  // parse_file() of one file, its `include:` key left as it is.
  static Config parse_one_file(const std::string& path);
  // Replaces the `include:` key of `config` (a file's root) by the included files' contents;
  // `chain` holds the files being included, outermost first, to detect cycles.
  static void resolve_includes(Config& config, std::vector<std::string>& chain);
  std::string child_path(std::string_view key) const;

  std::shared_ptr<ConfigNode> node_;
  std::string path_;
};

}  // namespace strata
