#include "strata/config.hpp"

#include <yaml-cpp/depthguard.h>
#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <filesystem>
#include <limits>
#include <set>
#include <sstream>

#include "strata/config_origin.hpp"
#include "strata/error.hpp"
#include "strata/file_check.hpp"
#include "strata/tensor.hpp"

namespace strata {

struct ConfigNode {
  enum class Kind { kNull, kScalar, kMap, kSequence };
  struct Entry {
    std::string key;
    std::shared_ptr<const std::string> key_file;  // differs from the map's for --set keys
    int key_line = 0;
    int key_column = 0;
    std::shared_ptr<ConfigNode> value;
    bool used = false;
  };

  Kind kind = Kind::kNull;
  std::string scalar;
  std::vector<Entry> map;
  std::vector<std::shared_ptr<ConfigNode>> sequence;
  std::shared_ptr<const std::string> file;
  int line = 0;    // 1-based position of the value
  int column = 0;
  std::set<std::string> queried;  // keys someone asked for, for "did you mean"
  // Optional keys that were absent and read with a fallback (get(key, fallback)): dump() writes
  // them, so a checkpoint's /experiment holds every setting the run used.
  std::vector<std::pair<std::string, std::shared_ptr<ConfigNode>>> defaults;

  Entry* find(std::string_view key) {
    for (auto& entry : map) {
      if (entry.key == key) return &entry;
    }
    return nullptr;
  }
  const Entry* find(std::string_view key) const {
    for (const auto& entry : map) {
      if (entry.key == key) return &entry;
    }
    return nullptr;
  }
};

namespace {

using Node = ConfigNode;
using Kind = ConfigNode::Kind;

std::string kind_name(const Node& node) {
  switch (node.kind) {
    case Kind::kNull: return "nothing";
    case Kind::kScalar: return fmt::format("'{}'", node.scalar);
    case Kind::kMap: return "a map";
    case Kind::kSequence: return "a list";
  }
  return "?";
}

// "file:line:col"; a source without a position (line 0, such as a value a search drew) is named
// alone, its text saying where it came from.
std::string position(const std::shared_ptr<const std::string>& file, int line, int column) {
  const std::string name = file ? *file : std::string("<config>");
  if (line <= 0) return name;
  return fmt::format("{}:{}:{}", name, line, column);
}

// The largest experiment file parse_file() reads, checked before yaml-cpp sees a byte: the largest
// experiment in experiments/ is a few kilobytes (docs/experiment-file.md).
constexpr std::uint64_t kMaxExperimentFileBytes = std::uint64_t{16} << 20;

// Aliases make a small file expand into a huge tree ("billion laughs"); no experiment comes near
// this many values.
constexpr std::size_t kMaxNodes = 1'000'000;
// yaml-cpp refuses text nested deeper than this; aliases can nest a tree deeper than its text (an
// alias of a deep list inside another deep list), and convert() recurses once per level.
constexpr int kMaxDepth = 500;

// Where convert() is: the budget of values left, and the chain of YAML nodes from the root to the
// current one (an alias of an enclosing node, `a: &x [*x]`, would make the tree infinite).
struct ConvertState {
  std::size_t budget = kMaxNodes;
  std::vector<YAML::Node> ancestors;
};

std::shared_ptr<Node> convert(const YAML::Node& yaml,
                              const std::shared_ptr<const std::string>& file, int line_offset,
                              int column_offset, ConvertState& state) {
  const YAML::Mark mark = yaml.Mark();
  const auto here = [&] {
    return position(file, mark.line + 1 + line_offset, mark.column + 1 + column_offset);
  };
  if (state.budget == 0) {
    fail(
        "{}: the document expands to more than {} values (through YAML aliases?); an experiment "
        "file is far smaller",
        here(), kMaxNodes);
  }
  --state.budget;
  if (yaml.IsSequence() || yaml.IsMap()) {
    for (const YAML::Node& ancestor : state.ancestors) {
      if (ancestor.is(yaml)) {
        // yaml-cpp gives an alias the position of its anchor: both name the same node.
        fail(
            "{}: malformed YAML: an alias refers to a list or map that contains it (an anchor "
            "used inside its own value, such as `a: &x [*x]`), which would make the value "
            "infinitely deep",
            here());
      }
    }
    if (state.ancestors.size() >= static_cast<std::size_t>(kMaxDepth)) {
      fail(
          "{}: malformed YAML: nested deeper than {} levels of lists or maps (through YAML "
          "aliases?)",
          here(), kMaxDepth);
    }
  }
  auto node = std::make_shared<Node>();
  node->file = file;
  node->line = mark.line + 1 + line_offset;
  node->column = mark.column + 1 + column_offset;
  switch (yaml.Type()) {
    case YAML::NodeType::Undefined:
    case YAML::NodeType::Null:
      node->kind = Kind::kNull;
      break;
    case YAML::NodeType::Scalar:
      node->kind = Kind::kScalar;
      node->scalar = yaml.Scalar();
      break;
    case YAML::NodeType::Sequence:
      node->kind = Kind::kSequence;
      state.ancestors.push_back(yaml);
      for (const auto& item : yaml) {
        node->sequence.push_back(convert(item, file, line_offset, column_offset, state));
      }
      state.ancestors.pop_back();
      break;
    case YAML::NodeType::Map:
      node->kind = Kind::kMap;
      state.ancestors.push_back(yaml);
      for (const auto& item : yaml) {
        const YAML::Mark key_mark = item.first.Mark();
        if (!item.first.IsScalar()) {
          fail("{}: map keys must be plain words",
               position(file, key_mark.line + 1 + line_offset, key_mark.column + 1 + column_offset));
        }
        ConfigNode::Entry entry;
        entry.key = item.first.Scalar();
        entry.key_file = file;
        entry.key_line = key_mark.line + 1 + line_offset;
        entry.key_column = key_mark.column + 1 + column_offset;
        if (node->find(entry.key) != nullptr) {
          fail("{}: duplicate key '{}'", position(file, entry.key_line, entry.key_column), entry.key);
        }
        entry.value = convert(item.second, file, line_offset, column_offset, state);
        node->map.push_back(std::move(entry));
      }
      state.ancestors.pop_back();
      break;
  }
  return node;
}

// YAML forbids tabs in indentation, and yaml-cpp's errors for them ("illegal map value", "end of
// map not found") do not say so: name the first line up to `error_line` indented with a tab.
std::string tab_indent_hint(const std::string& text, int error_line) {
  int line = 1;
  for (std::size_t start = 0; start < text.size() && line <= error_line; ++line) {
    std::size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    for (std::size_t i = start; i < end && (text[i] == ' ' || text[i] == '\t'); ++i) {
      if (text[i] == '\t') {
        return fmt::format(" (line {} is indented with a tab; YAML indentation must be spaces)", line);
      }
    }
    start = end + 1;
  }
  return "";
}

// The documents of a YAML text: where each starts and where its top-level value is. yaml-cpp
// 0.7's LoadAll never returns on a stray flow token after a top-level collection ("[1],",
// "[1]\n, a: 1}"): its parser reports an empty document there without consuming the token, again
// and again, while the list of documents grows until memory runs out. This pass over the events
// stops at a document that does not advance.
class DocumentScan : public YAML::EventHandler {
 public:
  struct Document {
    YAML::Mark start;
    YAML::Mark value;  // of the top-level node
  };

  // A yaml-cpp exception for a syntax error, or for a stuck parser one naming the token it cannot
  // get past.
  static std::vector<Document> of(const std::string& text) {
    std::istringstream in(text);
    YAML::Parser parser(in);
    DocumentScan scan;
    while (parser.HandleNextDocument(scan)) {
      const std::vector<Document>& found = scan.documents_;
      if (found.size() >= 2 && found.back().start.pos == found[found.size() - 2].start.pos) {
        const YAML::Mark stuck = found.back().start;
        const auto at = static_cast<std::size_t>(stuck.pos);
        throw YAML::ParserException(
            stuck, fmt::format("unexpected '{}' after the document's top-level value",
                               at < text.size() ? text.substr(at, 1) : std::string()));
      }
    }
    return std::move(scan.documents_);
  }

  void OnDocumentStart(const YAML::Mark& mark) override {
    documents_.push_back({mark, YAML::Mark::null_mark()});
  }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark& mark, YAML::anchor_t) override { node(mark); }
  void OnAlias(const YAML::Mark& mark, YAML::anchor_t) override { node(mark); }
  void OnScalar(const YAML::Mark& mark, const std::string&, YAML::anchor_t,
                const std::string&) override {
    node(mark);
  }
  void OnSequenceStart(const YAML::Mark& mark, const std::string&, YAML::anchor_t,
                       YAML::EmitterStyle::value) override {
    node(mark);
  }
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark& mark, const std::string&, YAML::anchor_t,
                  YAML::EmitterStyle::value) override {
    node(mark);
  }
  void OnMapEnd() override {}

 private:
  void node(const YAML::Mark& mark) {
    if (!documents_.empty() && documents_.back().value.is_null()) documents_.back().value = mark;
  }

  std::vector<Document> documents_;
};

std::shared_ptr<Node> parse_yaml(const std::string& text, const std::string& source_name) {
  auto file = std::make_shared<const std::string>(source_name);
  std::vector<DocumentScan::Document> documents;
  YAML::Node document;
  try {
    documents = DocumentScan::of(text);
    document = YAML::Load(text);  // the first document (the scan found the text's syntax sound)
  } catch (const YAML::DeepRecursion& error) {
    // yaml-cpp's own message for this is "bad file".
    fail("{}: malformed YAML: nested deeper than {} levels of lists or maps",
         position(file, error.mark.line + 1, error.mark.column + 1), error.depth());
  } catch (const YAML::Exception& error) {
    fail("{}: malformed YAML: {}{}", position(file, error.mark.line + 1, error.mark.column + 1), error.msg,
         tab_indent_hint(text, error.mark.line + 1));
  }
  if (documents.size() > 1) {
    // Reading the first document alone would ignore the rest without a word.
    const YAML::Mark mark = documents[1].value.is_null() ? documents[1].start : documents[1].value;
    fail(
        "{}: the text holds {} YAML documents (separated by '---'); an experiment is one "
        "document: merge them or remove the '---' line",
        position(file, mark.line + 1, mark.column + 1), documents.size());
  }
  ConvertState state;
  return convert(document, file, 0, 0, state);
}

// Typed conversion of a scalar node; `describe` is what the error says was expected.
template <class T>
bool parse_scalar(const std::string& text, T& out);

template <>
bool parse_scalar(const std::string& text, std::string& out) {
  out = text;
  return true;
}
template <>
bool parse_scalar(const std::string& text, bool& out) {
  std::string lower;
  for (char c : text) lower.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(c))));
  if (lower == "true" || lower == "yes" || lower == "on") return out = true, true;
  if (lower == "false" || lower == "no" || lower == "off") return out = false, true;
  return false;
}
template <class Integer>
bool parse_integer(const std::string& text, Integer& out) {
  const char* begin = text.data();
  const char* end = begin + text.size();
  if (begin != end && *begin == '+') ++begin;
  auto [ptr, ec] = std::from_chars(begin, end, out);
  return ec == std::errc() && ptr == end && begin != end;
}
template <>
bool parse_scalar(const std::string& text, int& out) { return parse_integer(text, out); }
template <>
bool parse_scalar(const std::string& text, int64_t& out) { return parse_integer(text, out); }
template <>
bool parse_scalar(const std::string& text, double& out) {
  if (text.empty()) return false;
  char* end = nullptr;
  out = std::strtod(text.c_str(), &end);
  return end == text.c_str() + text.size() && std::isfinite(out);
}
template <>
bool parse_scalar(const std::string& text, float& out) {
  double value = 0;
  if (!parse_scalar(text, value)) return false;
  out = static_cast<float>(value);
  return std::isfinite(out);  // 1e39 would become inf
}

template <class T>
constexpr const char* expected_name() {
  if constexpr (std::is_same_v<T, bool>) return "true or false";
  else if constexpr (std::is_same_v<T, int> || std::is_same_v<T, int64_t>) return "an integer";
  else if constexpr (std::is_same_v<T, float>) return "a number within float range (|x| < 3.4e38)";
  else if constexpr (std::is_floating_point_v<T>) return "a number";
  else return "a string";
}

template <class T>
struct IsVector : std::false_type {};
template <class T>
struct IsVector<std::vector<T>> : std::true_type {};

void mark_all(Node& node) {
  for (auto& entry : node.map) {
    entry.used = true;
    mark_all(*entry.value);
  }
  for (auto& item : node.sequence) mark_all(*item);
}

void check_unused_at(const Node& node, const std::string& path) {
  for (const auto& entry : node.map) {
    const std::string child = path.empty() ? entry.key : path + "." + entry.key;
    if (!entry.used) {
      std::vector<std::string> known(node.queried.begin(), node.queried.end());
      std::string hint = known.empty() ? std::string("nothing reads this key here")
                                       : suggestion_text(entry.key, known, "keys here");
      fail("{}: {}: unknown key '{}'\n  {}", position(entry.key_file, entry.key_line, entry.key_column),
           child, entry.key, hint);
    }
    check_unused_at(*entry.value, child);
  }
  for (std::size_t i = 0; i < node.sequence.size(); ++i) {
    check_unused_at(*node.sequence[i], fmt::format("{}[{}]", path, i));
  }
}

void emit(YAML::Emitter& out, const Node& node) {
  switch (node.kind) {
    case Kind::kNull: out << YAML::Null; break;
    case Kind::kScalar: out << node.scalar; break;
    case Kind::kSequence:
      out << YAML::BeginSeq;
      for (const auto& item : node.sequence) emit(out, *item);
      out << YAML::EndSeq;
      break;
    case Kind::kMap:
      out << YAML::BeginMap;
      for (const auto& entry : node.map) {
        out << YAML::Key << entry.key << YAML::Value;
        emit(out, *entry.value);
      }
      for (const auto& [key, value] : node.defaults) {
        if (node.find(key) != nullptr) continue;  // set after it was read
        out << YAML::Key << key << YAML::Value;
        emit(out, *value);
      }
      out << YAML::EndMap;
      break;
  }
}

}  // namespace

Config Config::parse_file(const std::string& path) {
  Config config = parse_one_file(path);
  std::vector<std::string> chain;
  resolve_includes(config, chain);
  return config;
}

Config Config::parse_one_file(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    strata::fail("{}: is a folder, not an experiment file", path);
  }
  // A regular file of bounded size, checked before yaml-cpp reads it: /dev/zero or a FIFO would
  // otherwise be read forever (or hang waiting for a writer).
  return parse_string(read_regular_file(path, kMaxExperimentFileBytes, "experiment file"), path);
}

Config Config::parse_string(const std::string& text, const std::string& source_name) {
  auto root = parse_yaml(text, source_name);
  if (root->kind == Kind::kNull) {
    root->kind = Kind::kMap;  // an empty document is an empty map
  }
  if (root->kind != Kind::kMap) {
    strata::fail("{}: the top level must be a map of sections, found {}",
         position(root->file, root->line, root->column), kind_name(*root));
  }
  return Config(root, "");
}

namespace {

// The scalar `type:` of a map ("" when it has none).
std::string type_of(const Node& node) {
  const ConfigNode::Entry* type = node.find("type");
  return type != nullptr && type->value->kind == Kind::kScalar ? type->value->scalar : "";
}

// `over` deep-merged onto `base` (both maps), in place: a key in both whose values are both maps
// is merged recursively, unless they name different `type:`s (another optimizer or schedule: the
// old one's keys would not apply), then, like any other value, `over`'s replaces `base`'s. Keys
// keep the file and position they came from; the merged map takes `over`'s position.
void merge_map(Node& base, const Node& over) {
  base.file = over.file;
  base.line = over.line;
  base.column = over.column;
  for (const ConfigNode::Entry& entry : over.map) {
    ConfigNode::Entry* existing = base.find(entry.key);
    if (existing == nullptr) {
      base.map.push_back(entry);
    } else if (existing->value->kind == Kind::kMap && entry.value->kind == Kind::kMap &&
               (type_of(*entry.value).empty() ||
                type_of(*entry.value) == type_of(*existing->value))) {
      merge_map(*existing->value, *entry.value);
      existing->key_file = entry.key_file;
      existing->key_line = entry.key_line;
      existing->key_column = entry.key_column;
    } else {
      *existing = entry;
    }
  }
}

}  // namespace

void Config::resolve_includes(Config& config, std::vector<std::string>& chain) {
  const std::string file = config.source_file();
  namespace fs = std::filesystem;
  std::error_code ec;
  chain.push_back(fs::weakly_canonical(fs::absolute(file), ec).string());
  if (!config.is_map() || config.node_->find("include") == nullptr) {
    chain.pop_back();
    return;
  }
  const Config include = config.at("include");
  std::vector<Config> items;
  if (include.is_scalar()) {
    items.push_back(include);
  } else if (include.is_sequence()) {
    items = include.items();
  } else {
    include.fail("expected a file name or a list of file names (relative to this file's folder)");
  }
  std::shared_ptr<Node> merged;
  for (const Config& item : items) {
    const std::string name = item.as<std::string>();
    fs::path target = name;
    if (target.is_relative()) target = fs::path(file).parent_path() / target;
    const std::string canonical = fs::weakly_canonical(fs::absolute(target), ec).string();
    if (std::find(chain.begin(), chain.end(), canonical) != chain.end()) {
      std::vector<std::string> cycle;
      for (auto it = std::find(chain.begin(), chain.end(), canonical); it != chain.end(); ++it) {
        cycle.push_back(fs::path(*it).filename().string());
      }
      cycle.push_back(fs::path(canonical).filename().string());
      item.fail(fmt::format("'{}' is already being included: a cycle ({})", name,
                            fmt::join(cycle, " -> ")));
    }
    if (!fs::is_regular_file(target, ec)) {
      item.fail(
          fmt::format("cannot include '{}': {} is not a file (include paths are relative to "
                      "the including file's folder)",
                      name, target.string()));
    }
    Config included = parse_one_file(target.string());
    resolve_includes(included, chain);
    if (!merged) {
      merged = included.node_;
    } else {
      merge_map(*merged, *included.node_);
    }
  }
  // The file's own keys, without `include`, override what it included.
  config.erase("include");
  if (!merged) {  // include: []
    chain.pop_back();
    return;
  }
  merge_map(*merged, *config.node_);
  config.node_ = merged;
  chain.pop_back();
}

namespace {
// Gives every node and key of a synthesized tree the position of its origin.
void relocate(Node& node, const std::shared_ptr<const std::string>& file, int line, int column) {
  node.file = file;
  node.line = line;
  node.column = column;
  for (auto& entry : node.map) {
    entry.key_file = file;
    entry.key_line = line;
    entry.key_column = column;
    relocate(*entry.value, file, line, column);
  }
  for (auto& item : node.sequence) relocate(*item, file, line, column);
}
}  // namespace

Config Config::synthesize(const std::string& yaml, const Config& origin, std::string_view label) {
  const std::string path =
      origin.path_.empty() ? std::string(label) : fmt::format("{}/{}", origin.path_, label);
  std::shared_ptr<Node> root;
  try {
    root = parse_yaml(yaml, "<generated>");
  } catch (const Error& error) {
    origin.fail(fmt::format("{}: generated configuration is not valid YAML ({}): {}", label,
                            error.what(), yaml));
  }
  if (root->kind != Kind::kMap) {
    origin.fail(fmt::format("{}: generated configuration must be a map, found {}: {}", label,
                            kind_name(*root), yaml));
  }
  if (origin.node_) {
    relocate(*root, origin.node_->file, origin.node_->line, origin.node_->column);
  }
  return Config(root, path);
}

namespace {
thread_local const SetOrigin* innermost_origin = nullptr;
}  // namespace

SetOrigin::SetOrigin(std::string origin) : origin_(std::move(origin)), previous_(innermost_origin) {
  innermost_origin = this;
}
SetOrigin::~SetOrigin() { innermost_origin = previous_; }
const std::string* SetOrigin::current() {
  return innermost_origin ? &innermost_origin->origin_ : nullptr;
}

void Config::set(std::string_view path, std::string_view yaml_value) {
  if (!node_) strata::fail("--set {}: no configuration to override", path);
  const std::string* origin = SetOrigin::current();
  const std::string source = origin ? *origin : fmt::format("--set {}={}", path, yaml_value);
  auto value = parse_yaml(std::string(yaml_value), source);
  // A value the program chose names its origin only: its text has no line the user wrote.
  if (origin) relocate(*value, value->file, 0, 0);

  // Split "a.b[2].c" into steps: a key, optionally followed by indices.
  std::shared_ptr<Node> node = node_;
  std::string walked;
  std::size_t i = 0;
  auto bad = [&](const std::string& why) { strata::fail("{}: {}", source, why); };
  while (i < path.size()) {
    std::size_t end = path.find_first_of(".[", i);
    if (end == std::string_view::npos) end = path.size();
    std::string key(path.substr(i, end - i));
    if (key.empty()) bad("empty key in the path");
    if (node->kind == Kind::kNull) node->kind = Kind::kMap;
    if (node->kind != Kind::kMap) bad(fmt::format("'{}' is not a map", walked));
    walked += (walked.empty() ? "" : ".") + key;
    ConfigNode::Entry* entry = node->find(key);
    const bool last_key = end == path.size();
    if (entry == nullptr) {
      ConfigNode::Entry created;
      created.key = key;
      created.key_file = value->file;
      created.key_line = value->line;
      created.key_column = value->column;
      created.value = std::make_shared<Node>();
      created.value->file = value->file;
      created.value->line = value->line;
      created.value->column = value->column;
      node->map.push_back(std::move(created));
      entry = &node->map.back();
    }
    i = end;
    std::shared_ptr<Node>* slot = &entry->value;
    while (i < path.size() && path[i] == '[') {
      std::size_t close = path.find(']', i);
      if (close == std::string_view::npos) bad("unclosed '['");
      std::size_t index = 0;
      auto digits = path.substr(i + 1, close - i - 1);
      auto [ptr, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), index);
      if (ec != std::errc() || ptr != digits.data() + digits.size()) bad("bad index");
      if ((*slot)->kind != Kind::kSequence || index >= (*slot)->sequence.size()) {
        bad(fmt::format("{}[{}] does not exist", walked, index));
      }
      walked += fmt::format("[{}]", index);
      slot = &(*slot)->sequence[index];
      i = close + 1;
    }
    if (i == path.size()) {
      *slot = value;
      return;
    }
    if (path[i] != '.') bad("expected '.' after an index");
    ++i;
    (void)last_key;
    node = *slot;
  }
  bad("empty path");
}

namespace {
std::shared_ptr<Node> deep_copy(const Node& node) {
  auto copy = std::make_shared<Node>();
  copy->kind = node.kind;
  copy->scalar = node.scalar;
  copy->file = node.file;
  copy->line = node.line;
  copy->column = node.column;
  for (const auto& entry : node.map) {
    ConfigNode::Entry copied = entry;
    copied.used = false;
    copied.value = deep_copy(*entry.value);
    copy->map.push_back(std::move(copied));
  }
  for (const auto& item : node.sequence) copy->sequence.push_back(deep_copy(*item));
  return copy;
}
}  // namespace

Config Config::clone() const {
  if (!node_) return {};
  return Config(deep_copy(*node_), path_);
}

bool Config::erase(std::string_view key) {
  if (!is_map()) return false;
  auto& map = node_->map;
  for (auto it = map.begin(); it != map.end(); ++it) {
    if (it->key == key) {
      map.erase(it);
      return true;
    }
  }
  return false;
}

bool Config::is_map() const { return node_ && node_->kind == Kind::kMap; }
bool Config::is_sequence() const { return node_ && node_->kind == Kind::kSequence; }
bool Config::is_scalar() const { return node_ && node_->kind == Kind::kScalar; }
bool Config::is_null() const { return !node_ || node_->kind == Kind::kNull; }

bool Config::has(std::string_view key) const {
  if (!is_map()) return false;
  node_->queried.insert(std::string(key));
  return node_->find(key) != nullptr;
}

std::vector<std::string> Config::keys() const {
  std::vector<std::string> result;
  if (is_map()) {
    for (const auto& entry : node_->map) result.push_back(entry.key);
  }
  return result;
}

std::string Config::child_path(std::string_view key) const {
  return path_.empty() ? std::string(key) : fmt::format("{}.{}", path_, key);
}

std::string Config::where() const {
  if (!node_) return "<no config>";
  return position(node_->file, node_->line, node_->column);
}

std::string Config::source_file() const { return node_ && node_->file ? *node_->file : std::string(); }

void Config::fail(const std::string& message) const {
  if (path_.empty()) strata::fail("{}: {}", where(), message);
  strata::fail("{}: {}: {}", where(), path_, message);
}

void Config::fail_key(std::string_view key, const std::string& message) const {
  if (auto child = find(key)) child->fail(message);
  fail(message);
}

std::optional<Config> Config::find(std::string_view key) const {
  if (!node_) return std::nullopt;
  if (node_->kind != Kind::kMap) {
    if (node_->kind == Kind::kNull) return std::nullopt;
    fail(fmt::format("expected a map (with key '{}'), found {}", key, kind_name(*node_)));
  }
  node_->queried.insert(std::string(key));
  ConfigNode::Entry* entry = node_->find(key);
  if (entry == nullptr) return std::nullopt;
  entry->used = true;
  return Config(entry->value, child_path(key));
}

std::optional<std::array<int64_t, 2>> Config::get_pair(std::string_view key,
                                                       int64_t minimum) const {
  std::optional<Config> node = find(key);
  if (!node) return std::nullopt;
  std::array<int64_t, 2> pair{};
  if (node->is_sequence()) {
    const auto values = node->as<std::vector<int64_t>>();
    if (values.size() != 2) {
      node->fail(fmt::format("expected an integer or a list [height, width], found a list of {}",
                             values.size()));
    }
    pair = {values[0], values[1]};
  } else {
    const auto value = node->as<int64_t>();
    pair = {value, value};
  }
  for (int64_t value : pair) {
    if (value < minimum) node->fail(fmt::format("must be at least {}, found {}", minimum, value));
    // Beyond any image; the bound also keeps dilation * (kernel - 1) + 2 * padding in 64 bits.
    if (value > kMaxExtent) {
      node->fail(fmt::format("must be at most {} (2^31 - 1), found {}", kMaxExtent, value));
    }
  }
  return pair;
}

Config Config::at(std::string_view key) const {
  if (auto child = find(key)) return *child;
  fail(fmt::format("missing required key '{}'", key));
}

std::vector<Config> Config::items() const {
  if (!node_ || node_->kind != Kind::kSequence) fail(fmt::format("expected a list, found {}", node_ ? kind_name(*node_) : "nothing"));
  std::vector<Config> result;
  for (std::size_t i = 0; i < node_->sequence.size(); ++i) {
    result.push_back(Config(node_->sequence[i], fmt::format("{}[{}]", path_, i)));
  }
  return result;
}

template <class T>
T Config::as() const {
  if constexpr (IsVector<T>::value) {
    using Item = typename T::value_type;
    if (!node_ || node_->kind != Kind::kSequence) {
      fail(fmt::format("expected a list of {}, found {}", expected_name<Item>(), node_ ? kind_name(*node_) : "nothing"));
    }
    T result;
    for (const Config& item : items()) result.push_back(item.as<Item>());
    return result;
  } else {
    if (!node_ || node_->kind != Kind::kScalar) {
      fail(fmt::format("expected {}, found {}", expected_name<T>(), node_ ? kind_name(*node_) : "nothing"));
    }
    T value{};
    if (!parse_scalar(node_->scalar, value)) {
      fail(fmt::format("expected {}, found '{}'", expected_name<T>(), node_->scalar));
    }
    if constexpr (std::is_floating_point_v<T>) {
      // Every number ends up in 32-bit float arithmetic (weights, learning rates, epsilons): a
      // nonzero value below the smallest float would silently become 0 there.
      double exact = 0;
      parse_scalar(node_->scalar, exact);
      if (exact != 0 && static_cast<float>(exact) == 0.0f) {
        fail(fmt::format(
            "{} is 0 as a 32-bit float: expected 0 or a magnitude of at least {:g} "
            "(the smallest nonzero float)",
            node_->scalar, static_cast<double>(std::numeric_limits<float>::denorm_min())));
      }
    }
    return value;
  }
}

template <class T>
T Config::get(std::string_view key) const {
  return at(key).as<T>();
}

namespace {

template <class T>
std::string default_text(const T& value) {
  if constexpr (std::is_same_v<T, bool>) {
    return value ? "true" : "false";
  } else if constexpr (IsVector<T>::value) {
    std::vector<std::string> items;
    for (const auto& item : value) items.push_back(default_text(item));
    return fmt::format("[{}]", fmt::join(items, ", "));
  } else if constexpr (std::is_same_v<T, std::string>) {
    return value;
  } else {
    return fmt::format("{}", value);
  }
}

template <class T>
std::shared_ptr<Node> default_node(const T& value) {
  auto node = std::make_shared<Node>();
  if constexpr (IsVector<T>::value) {
    node->kind = Kind::kSequence;
    for (const auto& item : value) node->sequence.push_back(default_node(item));
  } else {
    node->kind = Kind::kScalar;
    node->scalar = default_text(value);
  }
  return node;
}

}  // namespace

template <class T>
T Config::get(std::string_view key, const T& fallback) const {
  if (auto child = find(key)) return child->as<T>();
  if (is_map()) {
    auto& defaults = node_->defaults;
    const bool recorded = std::any_of(defaults.begin(), defaults.end(),
                                      [&](const auto& item) { return item.first == key; });
    if (!recorded) defaults.emplace_back(std::string(key), default_node(fallback));
  }
  return fallback;
}

void Config::check_unused() const {
  if (node_) check_unused_at(*node_, path_);
}

void Config::mark_used() const {
  if (node_) mark_all(*node_);
}

std::string Config::dump() const {
  if (!node_) return "";
  YAML::Emitter out;
  emit(out, *node_);
  return std::string(out.c_str()) + "\n";
}

#define STRATA_CONFIG_INSTANTIATE(T)                              \
  template T Config::as<T>() const;                               \
  template T Config::get<T>(std::string_view) const;              \
  template T Config::get<T>(std::string_view, const T&) const;
STRATA_CONFIG_INSTANTIATE(bool)
STRATA_CONFIG_INSTANTIATE(int)
STRATA_CONFIG_INSTANTIATE(int64_t)
STRATA_CONFIG_INSTANTIATE(float)
STRATA_CONFIG_INSTANTIATE(double)
STRATA_CONFIG_INSTANTIATE(std::string)
STRATA_CONFIG_INSTANTIATE(std::vector<int64_t>)
STRATA_CONFIG_INSTANTIATE(std::vector<double>)
STRATA_CONFIG_INSTANTIATE(std::vector<std::string>)
#undef STRATA_CONFIG_INSTANTIATE

}  // namespace strata
