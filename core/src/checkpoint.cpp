// HDF5 checkpoints through the HDF5 C API. The layout is a contract: docs/checkpoint-format.md.
//
// Every HDF5 call goes through FileContext::check(), which turns a failure into a strata::Error
// that names the file and the object, followed by the innermost reason from HDF5's error stack.
// HDF5's own printing of that stack is switched off while a public function runs (Hdf5Lock) and
// restored afterwards, so other HDF5 users in the process keep their settings. Every identifier
// lives in a Handle, so an exception closes whatever was open.
//
// HDF5 is not thread-safe in Debian's serial build, so every public function here holds one
// process-wide lock (taken by Hdf5Lock) while it runs: trials of `strata search` save their
// checkpoints from several threads.
#include "strata/checkpoint.hpp"

#include <fcntl.h>
#include <hdf5.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <set>
#include <string_view>
#include <system_error>
#include <utility>

#include "file_descriptor.hpp"
#include "file_seal.hpp"
#include "hdf5_probe.hpp"
#include "strata/error.hpp"
#include "strata/file_check.hpp"
#include "strata/files.hpp"
#include "strata/hdf5_lock.hpp"

namespace strata {
namespace fs = std::filesystem;


namespace {

constexpr std::string_view kFormatName = "strata-checkpoint";

// ---- HDF5 plumbing ----

using Handle = Hdf5Handle;

// The file an operation works on, for error messages: "checkpoint runs/a/model.h5: ...".
struct FileContext {
  std::string prefix;

  [[noreturn]] void fail(std::string_view what) const {
    throw Error(fmt::format("{}: {}", prefix, what));
  }
  hid_t check(hid_t id, std::string_view what) const {
    if (id < 0) fail(fmt::format("{}{}", what, hdf5_error_reason()));
    return id;
  }
  void check_status(herr_t status, std::string_view what) const {
    if (status < 0) fail(fmt::format("{}{}", what, hdf5_error_reason()));
  }
  bool check_bool(htri_t answer, std::string_view what) const {
    if (answer < 0) fail(fmt::format("{}{}", what, hdf5_error_reason()));
    return answer > 0;
  }
};

FileContext checkpoint_context(const fs::path& path) { return {"checkpoint " + path.string()}; }
FileContext hdf5_file_context(const fs::path& path) { return {"HDF5 file " + path.string()}; }

std::string errno_text(int error) { return std::system_category().message(error); }

// ---- names ----

std::vector<std::string_view> split_path(std::string_view path) {
  std::vector<std::string_view> parts;
  std::size_t start = 0;
  while (start <= path.size()) {
    const std::size_t slash = std::min(path.find('/', start), path.size());
    parts.push_back(path.substr(start, slash - start));
    start = slash + 1;
  }
  return parts;
}

// Names are relative, '/'-separated HDF5 paths; "." and ".." would mean something else to HDF5.
void validate_name(const FileContext& context, std::string_view root, const std::string& name) {
  bool valid = !name.empty();
  if (valid) {
    for (std::string_view part : split_path(name)) {
      if (part.empty() || part == "." || part == "..") valid = false;
    }
  }
  if (!valid) {
    context.fail(fmt::format(
        "invalid name '{}' under {}: a name is parts separated by '/', none of them empty, '.' or "
        "'..'",
        name, root));
  }
}

// The full paths one save writes must differ, and none may be a group that holds another.
void check_paths_distinct(const FileContext& context, const std::vector<std::string>& paths) {
  std::set<std::string> seen;
  for (const std::string& path : paths) {
    if (!seen.insert(path).second) context.fail(fmt::format("{} is listed twice", path));
  }
  for (const std::string& path : paths) {
    for (std::size_t slash = path.find('/', 1); slash != std::string::npos;
         slash = path.find('/', slash + 1)) {
      const std::string parent = path.substr(0, slash);
      if (seen.count(parent)) {
        context.fail(
            fmt::format("{} cannot be both a dataset and the group that holds {}", parent, path));
      }
    }
  }
}

// "/" + name, for the readers that accept "data" and "/data" alike.
std::string absolute_name(const FileContext& context, const std::string& name) {
  const std::string relative = name.starts_with('/') ? name.substr(1) : name;
  validate_name(context, "/", relative);
  return "/" + relative;
}

// ---- objects ----

// Link access properties that refuse to follow external links (H5Pset_elink_cb), for every open:
// the explicit checks in object_exists() name the link; this is the backstop for any path they do
// not see.
herr_t refuse_external_link(const char*, const char*, const char*, const char*, unsigned*, hid_t,
                            void*) {
  return -1;
}

// Dataset access properties are link access properties too, so one list serves H5Oopen and
// H5Dopen2.
Handle local_links_only(const FileContext& context) {
  Handle properties(context.check(H5Pcreate(H5P_DATASET_ACCESS), "cannot create link properties"),
                    H5Pclose);
  context.check_status(H5Pset_elink_cb(properties, refuse_external_link, nullptr),
                       "cannot set link properties");
  return properties;
}

constexpr std::string_view kOnlyLocalData =
    "Strata reads only data stored in the file itself, never through links to or storage in other "
    "files";

// HDF5 follows at most this many soft links in one path (H5L_NUM_LINKS); so does object_exists.
constexpr int kMaxSoftLinks = 16;

// Whether `path` (absolute) names an object, checking each level so that a missing or non-group
// parent answers false instead of failing. An external link anywhere on the way is an error naming
// it and its target; a soft link is followed only to a target that passes the same checks.
bool object_exists(const FileContext& context, hid_t file, const std::string& path,
                   int soft_links = 0) {
  std::string prefix;
  const std::vector<std::string_view> parts = split_path(std::string_view(path).substr(1));
  for (std::size_t i = 0; i < parts.size(); ++i) {
    const std::string parent = prefix.empty() ? "/" : prefix;
    prefix += '/';
    prefix += parts[i];
    if (!context.check_bool(H5Lexists(file, prefix.c_str(), H5P_DEFAULT),
                            fmt::format("cannot look up {}", prefix))) {
      return false;
    }
    H5L_info_t link{};
    context.check_status(H5Lget_info(file, prefix.c_str(), &link, H5P_DEFAULT),
                         fmt::format("cannot look up {}", prefix));
    if (link.type == H5L_TYPE_EXTERNAL || link.type == H5L_TYPE_SOFT) {
      // The value of a link is at most a few KB of names; a damaged size is refused first.
      if (link.u.val_size > 65536) context.fail(fmt::format("the link {} is damaged", prefix));
      std::string value(link.u.val_size, '\0');
      context.check_status(
          H5Lget_val(file, prefix.c_str(), value.data(), value.size(), H5P_DEFAULT),
          fmt::format("cannot read the link {}", prefix));
      if (link.type == H5L_TYPE_EXTERNAL) {
        const char* target_file = nullptr;
        const char* target_path = nullptr;
        unsigned flags = 0;
        const bool unpacked = H5Lunpack_elink_val(value.data(), value.size(), &flags, &target_file,
                                                  &target_path) >= 0;
        H5Eclear2(H5E_DEFAULT);
        context.fail(fmt::format(
            "{} is an external link{}: {}", prefix,
            unpacked ? fmt::format(" to {}:{}", target_file, target_path) : std::string(),
            kOnlyLocalData));
      }
      const std::string target(value.c_str());
      if (soft_links >= kMaxSoftLinks) {
        context.fail(
            fmt::format("{} is a soft link to {}, and soft links follow each other more "
                        "than {} times",
                        prefix, target, kMaxSoftLinks));
      }
      const std::string absolute =
          target.starts_with('/') ? target : (parent == "/" ? "/" : parent + "/") + target;
      if (absolute.size() < 2 || !object_exists(context, file, absolute, soft_links + 1)) {
        return false;
      }
    } else if (link.type != H5L_TYPE_HARD) {
      context.fail(fmt::format("{} is a user-defined link (type {}): {}", prefix,
                               static_cast<int>(link.type), kOnlyLocalData));
    }
    if (i + 1 < parts.size()) {
      Handle links = local_links_only(context);
      Handle object(context.check(H5Oopen(file, prefix.c_str(), links),
                                  fmt::format("cannot open {}", prefix)),
                    H5Oclose);
      if (H5Iget_type(object) != H5I_GROUP) return false;
    }
  }
  return true;
}

// A dataset whose elements live outside the file: a virtual dataset (its mapping names source
// files) or one with external raw storage (a list of files holding its bytes).
void check_local_storage(const FileContext& context, hid_t dataset, const std::string& path) {
  Handle properties(context.check(H5Dget_create_plist(dataset),
                                  fmt::format("cannot read the properties of {}", path)),
                    H5Pclose);
  if (H5Pget_layout(properties) == H5D_VIRTUAL) {
    std::string source;
    size_t count = 0;
    if (H5Pget_virtual_count(properties, &count) >= 0 && count > 0) {
      const ssize_t length = H5Pget_virtual_filename(properties, 0, nullptr, 0);
      if (length > 0 && length < 4096) {
        std::string name(static_cast<std::size_t>(length) + 1, '\0');
        H5Pget_virtual_filename(properties, 0, name.data(), name.size());
        source = fmt::format(" (its first source is in {})", name.c_str());
      }
    }
    H5Eclear2(H5E_DEFAULT);
    context.fail(fmt::format("{} is a virtual dataset{}: {}", path, source, kOnlyLocalData));
  }
  const int external = H5Pget_external_count(properties);
  context.check(external, fmt::format("cannot read the properties of {}", path));
  if (external > 0) {
    char name[1024] = {};
    off_t offset = 0;
    hsize_t size = 0;
    const bool named = H5Pget_external(properties, 0, sizeof name, name, &offset, &size) >= 0;
    H5Eclear2(H5E_DEFAULT);
    context.fail(fmt::format("{} keeps its data in {} external file{}{}: {}", path, external,
                             external == 1 ? "" : "s",
                             named ? fmt::format(" ({})", name) : std::string(), kOnlyLocalData));
  }
}

Handle open_dataset(const FileContext& context, hid_t file, const std::string& path) {
  Handle links = local_links_only(context);
  Handle object(
      context.check(H5Oopen(file, path.c_str(), links), fmt::format("cannot open {}", path)),
      H5Oclose);
  if (H5Iget_type(object) != H5I_DATASET) {
    context.fail(fmt::format("{} is a group, not a dataset", path));
  }
  Handle dataset(context.check(H5Dopen2(file, path.c_str(), links),
                               fmt::format("cannot open dataset {}", path)),
                 H5Dclose);
  check_local_storage(context, dataset, path);
  return dataset;
}

Shape dataset_shape(const FileContext& context, hid_t dataset, const std::string& path) {
  Handle space(
      context.check(H5Dget_space(dataset), fmt::format("cannot read the shape of {}", path)),
      H5Sclose);
  switch (H5Sget_simple_extent_type(space)) {
    case H5S_SCALAR:
      return Shape();
    case H5S_SIMPLE: {
      const int rank = H5Sget_simple_extent_ndims(space);
      context.check(rank, fmt::format("cannot read the rank of {}", path));
      std::vector<hsize_t> dims(static_cast<std::size_t>(rank));
      context.check(H5Sget_simple_extent_dims(space, dims.data(), nullptr),
                    fmt::format("cannot read the shape of {}", path));
      for (hsize_t d : dims) {
        if (d > static_cast<hsize_t>(std::numeric_limits<int64_t>::max())) {
          context.fail(fmt::format("{} claims an extent of {}: the file is damaged", path, d));
        }
      }
      return Shape(std::vector<int64_t>(dims.begin(), dims.end()));
    }
    default:
      context.fail(fmt::format("{} holds no data (its dataspace is empty)", path));
  }
}

std::string_view type_class_name(H5T_class_t type_class) {
  switch (type_class) {
    case H5T_INTEGER:
      return "integer";
    case H5T_FLOAT:
      return "floating-point";
    case H5T_STRING:
      return "string";
    case H5T_BITFIELD:
      return "bitfield";
    case H5T_OPAQUE:
      return "opaque";
    case H5T_COMPOUND:
      return "compound";
    case H5T_REFERENCE:
      return "reference";
    case H5T_ENUM:
      return "enum";
    case H5T_VLEN:
      return "variable-length";
    case H5T_ARRAY:
      return "array";
    default:
      return "unknown";
  }
}

H5T_class_t dataset_type_class(const FileContext& context, hid_t dataset, const std::string& path) {
  Handle type(context.check(H5Dget_type(dataset), fmt::format("cannot read the type of {}", path)),
              H5Tclose);
  return H5Tget_class(type);
}

// Absolute paths of the datasets under `group_path` (recursively, sorted by name). Soft links are
// not listed (what they point to is listed under its own name); an external or user-defined link
// is an error naming it.
struct CollectedLinks {
  std::vector<std::string> datasets;
  std::vector<std::string> foreign;  // external and user-defined links
};

herr_t collect_dataset(hid_t group, const char* name, const H5L_info_t* info, void* collected) {
  auto& links = *static_cast<CollectedLinks*>(collected);
  try {
    if (info->type != H5L_TYPE_HARD) {
      if (info->type != H5L_TYPE_SOFT) links.foreign.emplace_back(name);
      return 0;
    }
    const hid_t object = H5Oopen(group, name, H5P_DEFAULT);
    if (object < 0) return -1;
    const bool is_dataset = H5Iget_type(object) == H5I_DATASET;
    H5Oclose(object);
    if (is_dataset) links.datasets.emplace_back(name);
  } catch (...) {
    return -1;  // never let an exception cross the C library
  }
  return 0;
}

std::vector<std::string> list_datasets(const FileContext& context, hid_t file,
                                       const std::string& group_path) {
  Handle group(context.check(H5Gopen2(file, group_path.c_str(), H5P_DEFAULT),
                             fmt::format("cannot open group {}", group_path)),
               H5Gclose);
  CollectedLinks links;
  context.check_status(H5Lvisit(group, H5_INDEX_NAME, H5_ITER_INC, collect_dataset, &links),
                       fmt::format("cannot list the contents of {}", group_path));
  std::vector<std::string> paths;
  const std::string prefix = group_path == "/" ? "/" : group_path + "/";
  for (const std::string& name : links.foreign) {
    object_exists(context, file, prefix + name);  // fails, naming the link and its target
    context.fail(fmt::format("{}{} is not a link within the file", prefix, name));
  }
  for (const std::string& name : links.datasets) paths.push_back(prefix + name);
  return paths;
}

// ---- reading strings and integers (fixed or variable length; attributes or datasets) ----

using RawRead = std::function<herr_t(hid_t memory_type, void* buffer)>;

std::string read_string(const FileContext& context, hid_t file_type, hid_t space,
                        const std::string& what, const RawRead& read) {
  if (H5Tget_class(file_type) != H5T_STRING) context.fail(fmt::format("{} is not a string", what));
  const hssize_t count = H5Sget_simple_extent_npoints(space);
  if (count != 1) context.fail(fmt::format("{} holds {} strings, expected one", what, count));
  if (context.check_bool(H5Tis_variable_str(file_type), fmt::format("cannot read {}", what))) {
    Handle memory_type(context.check(H5Tcopy(H5T_C_S1), "cannot create a string type"), H5Tclose);
    context.check_status(H5Tset_size(memory_type, H5T_VARIABLE), "cannot create a string type");
    context.check_status(H5Tset_cset(memory_type, H5Tget_cset(file_type)),
                         "cannot create a string type");
    char* text = nullptr;
    context.check_status(read(memory_type, &text), fmt::format("cannot read {}", what));
    std::string result = text != nullptr ? text : "";
    H5free_memory(text);
    return result;
  }
  const std::size_t size = H5Tget_size(file_type);
  std::string result(size, '\0');
  Handle memory_type(context.check(H5Tcopy(file_type), "cannot create a string type"), H5Tclose);
  context.check_status(read(memory_type, result.data()), fmt::format("cannot read {}", what));
  result.resize(std::min(result.find('\0'), result.size()));
  if (H5Tget_strpad(file_type) == H5T_STR_SPACEPAD) {
    result.erase(result.find_last_not_of(' ') + 1);
  }
  return result;
}

Handle open_attribute(const FileContext& context, hid_t object, const std::string& object_path,
                      const char* name) {
  const std::string what = fmt::format("attribute {} of {}", name, object_path);
  if (!context.check_bool(H5Aexists(object, name), fmt::format("cannot look up the {}", what))) {
    context.fail(fmt::format("{} has no attribute '{}'", object_path, name));
  }
  return Handle(context.check(H5Aopen(object, name, H5P_DEFAULT), "cannot open the " + what),
                H5Aclose);
}

std::string read_string_attribute(const FileContext& context, hid_t object,
                                  const std::string& object_path, const char* name) {
  Handle attribute = open_attribute(context, object, object_path, name);
  const std::string what = fmt::format("the attribute {} of {}", name, object_path);
  Handle type(context.check(H5Aget_type(attribute), "cannot read " + what), H5Tclose);
  Handle space(context.check(H5Aget_space(attribute), "cannot read " + what), H5Sclose);
  // A fixed-length string claims its size in its type (up to 4 GB): its bytes must be stored.
  if (H5Tget_class(type) == H5T_STRING && H5Tis_variable_str(type) == 0 &&
      H5Tget_size(type) > H5Aget_storage_size(attribute)) {
    context.fail(fmt::format("{} claims {} bytes but stores {}: the file is damaged", what,
                             H5Tget_size(type), H5Aget_storage_size(attribute)));
  }
  return read_string(context, type, space, what, [&](hid_t memory_type, void* buffer) {
    return H5Aread(attribute, memory_type, buffer);
  });
}

// One scalar attribute, read as T through `memory_type`. Its type class must be `type_class` (or,
// with `or_integer`, an integer); errors name the attribute and the `kind` expected ("integer").
template <class T>
T read_scalar_attribute(const FileContext& context, hid_t object, const std::string& object_path,
                        const char* name, hid_t memory_type, H5T_class_t type_class,
                        bool or_integer, const char* a_kind, const char* kind) {
  Handle attribute = open_attribute(context, object, object_path, name);
  const std::string what = fmt::format("the attribute {} of {}", name, object_path);
  Handle type(context.check(H5Aget_type(attribute), "cannot read " + what), H5Tclose);
  Handle space(context.check(H5Aget_space(attribute), "cannot read " + what), H5Sclose);
  const H5T_class_t found = H5Tget_class(type);
  if (found != type_class && !(or_integer && found == H5T_INTEGER)) {
    context.fail(fmt::format("{} is {}, expected {}", what, type_class_name(found), a_kind));
  }
  if (H5Sget_simple_extent_npoints(space) != 1) {
    context.fail(fmt::format("{} holds several values, expected one {}", what, kind));
  }
  T value = 0;
  context.check_status(H5Aread(attribute, memory_type, &value), "cannot read " + what);
  return value;
}

int64_t read_integer_attribute(const FileContext& context, hid_t object,
                               const std::string& object_path, const char* name) {
  return read_scalar_attribute<int64_t>(context, object, object_path, name, H5T_NATIVE_INT64,
                                        H5T_INTEGER, false, "an integer", "integer");
}

// A dataset must plausibly store what its shape claims before anything of that size is
// allocated (a 2 KB file can claim 20 GB, or [1e9, 1e9]): a contiguous or compact dataset stores
// every byte, and a chunked one, compressed, at least 1/1100 of them (hdf5_probe.hpp).
void check_storage(const FileContext& context, hid_t dataset, const std::string& path,
                   const Shape& shape) {
  Handle type(context.check(H5Dget_type(dataset), "cannot read the dataset's type"), H5Tclose);
  const std::size_t element = H5Tget_size(type);
  const auto needed = static_cast<long double>(shape.numel()) * static_cast<long double>(element);
  uint64_t stored = 0;
  bool chunked = false;
  if (hdf5_probe::storage_plausible(dataset, needed, stored, chunked)) return;
  if (chunked) {
    context.fail(fmt::format(
        "dataset {} has shape {} ({}) but stores only {} bytes, more than {:.0f} times less than "
        "even deflate can compress: the file is damaged, or its chunks were never written",
        path, shape.str(), bytes_text(static_cast<double>(needed)), stored,
        hdf5_probe::kMaxCompressionRatio));
  }
  context.fail(
      fmt::format("dataset {} has shape {} ({}) but stores only {} bytes: the "
                  "file is damaged",
                  path, shape.str(), bytes_text(static_cast<double>(needed)), stored));
}

double read_double_attribute(const FileContext& context, hid_t object,
                             const std::string& object_path, const char* name) {
  return read_scalar_attribute<double>(context, object, object_path, name, H5T_NATIVE_DOUBLE,
                                       H5T_FLOAT, true, "a number", "number");
}

// The values of a rank-1 floating-point dataset of `shape`, as doubles, after check_storage().
std::vector<double> read_double_series(const FileContext& context, hid_t dataset,
                                       const std::string& path, const Shape& shape) {
  check_storage(context, dataset, path, shape);
  std::vector<double> values(static_cast<std::size_t>(shape[0]));
  if (!values.empty()) {
    context.check_status(
        H5Dread(dataset, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()),
        fmt::format("cannot read {}", path));
  }
  return values;
}

std::string read_string_dataset(const FileContext& context, hid_t file, const std::string& path) {
  if (!object_exists(context, file, path)) context.fail(fmt::format("{} is missing", path));
  Handle dataset = open_dataset(context, file, path);
  Handle type(context.check(H5Dget_type(dataset), "cannot read " + path), H5Tclose);
  Handle space(context.check(H5Dget_space(dataset), "cannot read " + path), H5Sclose);
  check_storage(context, dataset, path, dataset_shape(context, dataset, path));
  return read_string(context, type, space, path, [&](hid_t memory_type, void* buffer) {
    return H5Dread(dataset, memory_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, buffer);
  });
}

// ---- opening for reading ----

Handle open_for_reading(const FileContext& context, const fs::path& path) {
  // A folder, FIFO, device or symbolic link loop is named as what it is (and a FIFO is never
  // opened: that would wait for a writer).
  if (const std::string problem = regular_file_problem(path); problem == "does not exist") {
    context.fail("no such file");
  } else if (problem.starts_with("is a folder")) {
    context.fail("is a folder, not an HDF5 file");
  } else if (!problem.empty()) {
    context.fail(problem);
  }
  // A file Strata wrote carries a checksum: verify it before HDF5 parses anything.
  bool sealed = false;
  if (const std::string problem = file_seal::verify(path, &sealed); !problem.empty()) {
    context.fail(problem);
  }
  const htri_t is_hdf5 = H5Fis_hdf5(path.c_str());
  if (is_hdf5 == 0) context.fail("not an HDF5 file");
  context.check_bool(is_hdf5, "cannot read the file");
  Handle access(context.check(H5Pcreate(H5P_FILE_ACCESS), "cannot create file properties"),
                H5Pclose);
  context.check_status(H5Pset_fclose_degree(access, H5F_CLOSE_STRONG),
                       "cannot set file properties");
  // Any other file (h5py's) may be damaged in ways that crash libhdf5: read it in a child first.
  if (!sealed) {
    if (const std::string problem = hdf5_probe::probe(path, access); !problem.empty()) {
      context.fail(problem);
    }
  }
  return Handle(
      context.check(H5Fopen(path.c_str(), H5F_ACC_RDONLY, access), "cannot open the file"),
      H5Fclose);
}

// The root attributes that make a file a checkpoint this code understands.
void check_format(const FileContext& context, hid_t file) {
  if (!context.check_bool(H5Aexists(file, "format"), "cannot read the root attributes")) {
    context.fail("not a Strata checkpoint (it has no root attribute 'format')");
  }
  const std::string format = read_string_attribute(context, file, "/", "format");
  if (format != kFormatName) {
    context.fail(
        fmt::format("not a Strata checkpoint (the root attribute 'format' is '{}', not '{}')",
                    format, kFormatName));
  }
  const int64_t version = read_integer_attribute(context, file, "/", "format_version");
  if (version < kCheckpointOldestFormatVersion || version > kCheckpointFormatVersion) {
    context.fail(fmt::format("format_version {} is not supported (this Strata reads versions {} to {})",
                             version, kCheckpointOldestFormatVersion, kCheckpointFormatVersion));
  }
}

// Who expects the tensors of a group, for messages: "... but the model expects [120, 400]".
std::string expecting_party(const FileContext& context, const std::string& group) {
  if (group == "model") return "the model";
  if (group == "optimizer") return "the optimizer";
  if (group == "preprocess") return "the preprocessing";
  if (group == "schedule") return "the learning-rate schedule";
  context.fail(fmt::format(
      "cannot load tensors of group '{}': a checkpoint has the groups model, optimizer, "
      "preprocess and schedule",
      group));
}

// ---- writing ----

Handle utf8_string_type(const FileContext& context) {
  Handle type(context.check(H5Tcopy(H5T_C_S1), "cannot create a string type"), H5Tclose);
  context.check_status(H5Tset_size(type, H5T_VARIABLE), "cannot create a string type");
  context.check_status(H5Tset_cset(type, H5T_CSET_UTF8), "cannot create a string type");
  return type;
}

Handle scalar_space(const FileContext& context) {
  return Handle(context.check(H5Screate(H5S_SCALAR), "cannot create a dataspace"), H5Sclose);
}

void write_string_attribute(const FileContext& context, hid_t object,
                            const std::string& object_path, const char* name,
                            const std::string& value) {
  const std::string what = fmt::format("attribute {} of {}", name, object_path);
  Handle type = utf8_string_type(context);
  Handle space = scalar_space(context);
  Handle attribute(context.check(H5Acreate2(object, name, type, space, H5P_DEFAULT, H5P_DEFAULT),
                                 "cannot create the " + what),
                   H5Aclose);
  const char* text = value.c_str();
  context.check_status(H5Awrite(attribute, type, &text), "cannot write the " + what);
}

template <class T>
void write_integer_attribute(const FileContext& context, hid_t object,
                             const std::string& object_path, const char* name, hid_t file_type,
                             hid_t memory_type, T value) {
  const std::string what = fmt::format("attribute {} of {}", name, object_path);
  Handle space = scalar_space(context);
  Handle attribute(
      context.check(H5Acreate2(object, name, file_type, space, H5P_DEFAULT, H5P_DEFAULT),
                    "cannot create the " + what),
      H5Aclose);
  context.check_status(H5Awrite(attribute, memory_type, &value), "cannot write the " + what);
}

// Creates missing parent groups of every dataset written with it.
Handle link_properties(const FileContext& context) {
  Handle properties(context.check(H5Pcreate(H5P_LINK_CREATE), "cannot create link properties"),
                    H5Pclose);
  context.check_status(H5Pset_create_intermediate_group(properties, 1),
                       "cannot set link properties");
  context.check_status(H5Pset_char_encoding(properties, H5T_CSET_UTF8),
                       "cannot set link properties");
  return properties;
}

void create_group(const FileContext& context, hid_t file, const std::string& path) {
  Handle group(context.check(H5Gcreate2(file, path.c_str(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
                             fmt::format("cannot create group {}", path)),
               H5Gclose);
}

// A dataset of `dims` (empty: scalar) stored as `file_type`, from `data` laid out as `memory_type`.
void write_dataset(const FileContext& context, hid_t file, const std::string& path,
                   const std::vector<hsize_t>& dims, hid_t file_type, hid_t memory_type,
                   const void* data) {
  Handle links = link_properties(context);
  Handle space =
      dims.empty()
          ? scalar_space(context)
          : Handle(
                context.check(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr),
                              fmt::format("cannot create the dataspace of {}", path)),
                H5Sclose);
  Handle dataset(context.check(H5Dcreate2(file, path.c_str(), file_type, space, links, H5P_DEFAULT,
                                          H5P_DEFAULT),
                               fmt::format("cannot create dataset {}", path)),
                 H5Dclose);
  hsize_t count = 1;
  for (hsize_t d : dims) count *= d;
  if (count > 0) {
    context.check_status(H5Dwrite(dataset, memory_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data),
                         fmt::format("cannot write dataset {}", path));
  }
}

void write_tensor(const FileContext& context, hid_t file, const std::string& path,
                  const Tensor& tensor) {
  if (!tensor.defined()) context.fail(fmt::format("the tensor for {} is undefined", path));
  const std::vector<hsize_t> dims(tensor.shape().dims().begin(), tensor.shape().dims().end());
  write_dataset(context, file, path, dims, H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, tensor.data());
}

void write_string_dataset(const FileContext& context, hid_t file, const std::string& path,
                          const std::string& text) {
  Handle type = utf8_string_type(context);
  const char* data = text.c_str();
  write_dataset(context, file, path, {}, type, type, &data);
}

// Creates `path` (which must not exist), writes `parts` into it one after the other and fsyncs it.
void write_and_sync(const FileContext& context, const fs::path& path,
                    std::initializer_list<std::string_view> parts) {
  FileDescriptor fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666));
  if (fd.get() < 0) {
    context.fail(fmt::format("cannot create {}: {}", path.string(), errno_text(errno)));
  }
  for (std::string_view part : parts) {
    const char* bytes = part.data();
    std::size_t size = part.size();
    while (size > 0) {
      const ssize_t written = ::write(fd.get(), bytes, std::min<std::size_t>(size, 1 << 30));
      if (written < 0 && errno == EINTR) continue;
      if (written < 0) {
        context.fail(fmt::format("cannot write {}: {}", path.string(), errno_text(errno)));
      }
      bytes += written;
      size -= static_cast<std::size_t>(written);
    }
  }
  if (::fsync(fd.get()) != 0) {
    context.fail(fmt::format("cannot sync {}: {}", path.string(), errno_text(errno)));
  }
  if (fd.close() != 0) {
    context.fail(fmt::format("cannot write {}: {}", path.string(), errno_text(errno)));
  }
}

void sync_folder(const FileContext& context, const fs::path& folder) {
  FileDescriptor fd(::open(folder.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (fd.get() < 0 || ::fsync(fd.get()) != 0) {
    context.fail(fmt::format("saved, but cannot sync the folder {}: {}", folder.string(),
                             errno_text(errno)));
  }
}

// Builds an HDF5 file with `fill`, stores it at "<path>.tmp-<pid>", fsyncs it, renames it over
// `path` and fsyncs the folder. On failure the temporary file is removed and `path` is untouched.
//
// The file is assembled in memory (HDF5's core driver, no backing store) and written with plain
// POSIX calls. HDF5 1.10 does not survive a failed write when it closes a file on disk: H5Fclose
// fails, the identifier stays behind half-destroyed, its descriptor keeps the deleted temporary
// file's space allocated, and the library crashes at process exit. In memory, nothing HDF5 does
// can fail for lack of disk space; a full disk is an ordinary write() error here. The price is
// about twice the file size in memory for the duration of the save. `data_bytes` (the size of the
// datasets) sizes the in-memory buffer so that it does not have to grow.
void write_atomically(const FileContext& context, const fs::path& path, std::size_t data_bytes,
                      const std::function<void(hid_t file)>& fill) {
  if (!path.has_filename()) context.fail("the path names a folder, not a file");
  const fs::path folder = path.has_parent_path() ? path.parent_path() : fs::path(".");
  std::error_code error;
  if (!fs::is_directory(folder, error)) {
    context.fail(fmt::format("cannot save: the folder {} does not exist", folder.string()));
  }
  fs::path temporary = path;
  temporary += temporary_suffix();
  // Deleted by the handlers of remove_temporary_files_on_signal() if a signal ends the process.
  const TemporaryFile registered(temporary);

  // A regular file under the temporary name is left over from a crashed save by a process with
  // our pid; anything else there is not ours to replace.
  const fs::file_status existing = fs::symlink_status(temporary, error);
  if (fs::is_regular_file(existing)) {
    fs::remove(temporary, error);
  } else if (fs::exists(existing)) {
    context.fail(
        fmt::format("cannot save: {} exists and is not a regular file", temporary.string()));
  }

  std::unique_ptr<char[]> image;
  std::size_t image_size = 0;
  {
    Handle access(context.check(H5Pcreate(H5P_FILE_ACCESS), "cannot create file properties"),
                  H5Pclose);
    context.check_status(H5Pset_fclose_degree(access, H5F_CLOSE_STRONG),
                         "cannot set file properties");
    constexpr std::size_t kSlack = std::size_t{1} << 20;  // metadata, strings, rounding
    context.check_status(H5Pset_fapl_core(access, data_bytes + kSlack, /*backing_store=*/0),
                         "cannot set file properties");
    // The user block holds the checksum header (file_seal.hpp), written once the image is done.
    Handle creation(context.check(H5Pcreate(H5P_FILE_CREATE), "cannot create file properties"),
                    H5Pclose);
    context.check_status(H5Pset_userblock(creation, file_seal::kUserBlock),
                         "cannot set file properties");
    Handle file(context.check(H5Fcreate(temporary.c_str(), H5F_ACC_TRUNC, creation, access),
                              "cannot create the file in memory"),
                H5Fclose);
    fill(file);
    context.check_status(H5Fflush(file, H5F_SCOPE_GLOBAL), "cannot finish the file in memory");
    const ssize_t size = H5Fget_file_image(file, nullptr, 0);
    context.check(size, "cannot finish the file in memory");
    image_size = static_cast<std::size_t>(size);
    image = std::make_unique_for_overwrite<char[]>(image_size);
    context.check(H5Fget_file_image(file, image.get(), image_size),
                  "cannot finish the file in memory");
    if (!file.close()) {
      context.fail(fmt::format("cannot finish the file in memory{}", hdf5_error_reason()));
    }
  }
  // HDF5's image starts at the superblock; the user block in front of it carries the checksum.
  const std::string header = file_seal::header_for(image.get(), image_size);

  try {
    write_and_sync(context, temporary, {header, std::string_view(image.get(), image_size)});
    image.reset();
    if (::rename(temporary.c_str(), path.c_str()) != 0) {
      context.fail(fmt::format("cannot rename {} to {}: {}", temporary.string(), path.string(),
                               errno_text(errno)));
    }
  } catch (...) {
    if (fs::is_regular_file(fs::symlink_status(temporary, error))) fs::remove(temporary, error);
    throw;
  }
  // The new file is in place; syncing the folder makes the rename itself durable.
  sync_folder(context, folder);
}

std::size_t tensor_bytes(const std::vector<NamedTensor>& tensors) {
  std::size_t bytes = 0;
  for (const NamedTensor& entry : tensors) {
    bytes += static_cast<std::size_t>(entry.tensor.numel()) * sizeof(float);
  }
  return bytes;
}

void add_paths(const FileContext& context, const std::string& root,
               const std::vector<NamedTensor>& tensors, std::vector<std::string>& paths) {
  for (const NamedTensor& entry : tensors) {
    validate_name(context, root, entry.name);
    paths.push_back(root + "/" + entry.name);
  }
}

}  // namespace

// ---- public API ----

void save_checkpoint(const fs::path& path, const Checkpoint& checkpoint) {
  Hdf5Lock quiet;
  const FileContext context = checkpoint_context(path);

  // Every name is checked before the temporary file exists.
  std::vector<std::string> paths;
  add_paths(context, "/model", checkpoint.model, paths);
  add_paths(context, "/optimizer", checkpoint.optimizer, paths);
  add_paths(context, "/preprocess", checkpoint.preprocess, paths);
  add_paths(context, "/schedule", checkpoint.schedule, paths);
  if (checkpoint.training) {
    for (const auto& [metric, values] : checkpoint.training->history) {
      validate_name(context, "/history", metric);
      paths.push_back("/history/" + metric);
    }
  }
  for (const PluginRecord& plugin : checkpoint.plugins) {
    validate_name(context, "/plugins", plugin.name);
    if (plugin.name.find('/') != std::string::npos) {
      context.fail(fmt::format("plugin name '{}' contains '/'", plugin.name));
    }
    paths.push_back("/plugins/" + plugin.name);
  }
  check_paths_distinct(context, paths);

  std::size_t data_bytes = tensor_bytes(checkpoint.model) + tensor_bytes(checkpoint.optimizer) +
                           tensor_bytes(checkpoint.preprocess) + tensor_bytes(checkpoint.schedule) +
                           checkpoint.experiment_yaml.size();
  if (checkpoint.training) {
    data_bytes += checkpoint.training->rng_state.size();
    if (checkpoint.training->partial) data_bytes += checkpoint.training->partial->rng_state.size();
    for (const auto& [metric, values] : checkpoint.training->history) {
      data_bytes += values.size() * sizeof(double);
    }
  }
  write_atomically(context, path, data_bytes, [&](hid_t file) {
    write_string_attribute(context, file, "/", "format", std::string(kFormatName));
    write_integer_attribute<int32_t>(context, file, "/", "format_version", H5T_STD_I32LE,
                                     H5T_NATIVE_INT32, kCheckpointFormatVersion);
    write_string_dataset(context, file, "/experiment", checkpoint.experiment_yaml);
    const std::pair<const char*, const std::vector<NamedTensor>*> groups[] = {
        {"/model", &checkpoint.model},
        {"/optimizer", &checkpoint.optimizer},
        {"/preprocess", &checkpoint.preprocess},
        {"/schedule", &checkpoint.schedule}};
    for (const auto& [root, tensors] : groups) {
      create_group(context, file, root);
      for (const NamedTensor& entry : *tensors) {
        write_tensor(context, file, std::string(root) + "/" + entry.name, entry.tensor);
      }
    }
    create_group(context, file, "/plugins");
    for (const PluginRecord& plugin : checkpoint.plugins) {
      const std::string group_path = "/plugins/" + plugin.name;
      Handle group(context.check(H5Gcreate2(file, group_path.c_str(), H5P_DEFAULT, H5P_DEFAULT,
                                            H5P_DEFAULT),
                                 fmt::format("cannot create group {}", group_path)),
                   H5Gclose);
      write_string_attribute(context, group, group_path, "version", plugin.version);
      write_string_attribute(context, group, group_path, "path", plugin.path);
    }
    if (const auto& training = checkpoint.training) {
      Handle group(
          context.check(H5Gcreate2(file, "/training", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
                        "cannot create group /training"),
          H5Gclose);
      write_integer_attribute<int64_t>(context, group, "/training", "epoch", H5T_STD_I64LE,
                                       H5T_NATIVE_INT64, training->epoch);
      write_integer_attribute<int64_t>(context, group, "/training", "iteration", H5T_STD_I64LE,
                                       H5T_NATIVE_INT64, training->iteration);
      write_string_attribute(context, group, "/training", "rng_state", training->rng_state);
      if (const auto& partial = training->partial) {
        write_integer_attribute<int64_t>(context, group, "/training", "epoch_step", H5T_STD_I64LE,
                                         H5T_NATIVE_INT64, partial->step);
        write_string_attribute(context, group, "/training", "epoch_rng_state", partial->rng_state);
        write_integer_attribute<double>(context, group, "/training", "epoch_loss_sum",
                                        H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, partial->loss_sum);
        write_integer_attribute<int64_t>(context, group, "/training", "epoch_correct",
                                         H5T_STD_I64LE, H5T_NATIVE_INT64, partial->correct);
        write_integer_attribute<int64_t>(context, group, "/training", "epoch_seen", H5T_STD_I64LE,
                                         H5T_NATIVE_INT64, partial->seen);
        write_integer_attribute<double>(context, group, "/training", "epoch_seconds",
                                        H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, partial->seconds);
      }
      create_group(context, file, "/history");
      for (const auto& [metric, values] : training->history) {
        write_dataset(context, file, "/history/" + metric, {values.size()}, H5T_IEEE_F64LE,
                      H5T_NATIVE_DOUBLE, values.data());
      }
    }
  });
}

std::map<std::string, Shape> checkpoint_tensor_shapes(const fs::path& path, const std::string& group) {
  Hdf5Lock quiet;
  const FileContext context = checkpoint_context(path);
  Handle file = open_for_reading(context, path);
  check_format(context, file);
  const std::string root = "/" + group;
  std::map<std::string, Shape> shapes;
  if (!object_exists(context, file, root)) return shapes;
  for (const std::string& dataset_path : list_datasets(context, file, root)) {
    Handle dataset = open_dataset(context, file, dataset_path);
    shapes[dataset_path.substr(root.size() + 1)] = dataset_shape(context, dataset, dataset_path);
  }
  return shapes;
}

void load_checkpoint_tensors(const fs::path& path, const std::string& group,
                             std::span<NamedTensor> into, bool allow_extra,
                             bool allow_nonfinite) {
  Hdf5Lock quiet;
  const FileContext context = checkpoint_context(path);
  const std::string party = expecting_party(context, group);
  Handle file = open_for_reading(context, path);
  check_format(context, file);
  const std::string root = "/" + group;

  // Check every name, shape and type before reading anything, so that a mismatch leaves the
  // caller's tensors as they were.
  std::vector<Handle> datasets;
  std::set<std::string> expected;
  for (NamedTensor& entry : into) {
    validate_name(context, root, entry.name);
    const std::string dataset_path = root + "/" + entry.name;
    const Shape& shape = entry.tensor.shape();
    if (!entry.tensor.defined()) {
      context.fail(fmt::format("cannot read {} into an undefined tensor", dataset_path));
    }
    if (!object_exists(context, file, dataset_path)) {
      context.fail(
          fmt::format("{} is missing ({} expects shape {})", dataset_path, party, shape.str()));
    }
    Handle dataset = open_dataset(context, file, dataset_path);
    const Shape stored = dataset_shape(context, dataset, dataset_path);
    if (stored != shape) {
      context.fail(fmt::format("{} has shape {} but {} expects {}", dataset_path, stored.str(),
                               party, shape.str()));
    }
    const H5T_class_t type_class = dataset_type_class(context, dataset, dataset_path);
    if (type_class != H5T_FLOAT) {
      context.fail(fmt::format("{} holds {} values but {} expects float32", dataset_path,
                               type_class_name(type_class), party));
    }
    expected.insert(dataset_path);
    datasets.push_back(std::move(dataset));
  }

  if (!allow_extra && object_exists(context, file, root)) {
    std::vector<std::string> extra;
    for (std::string& dataset_path : list_datasets(context, file, root)) {
      if (!expected.count(dataset_path)) extra.push_back(std::move(dataset_path));
    }
    if (extra.size() == 1) {
      context.fail(fmt::format("{} is not part of {}", extra[0], party));
    }
    if (!extra.empty()) {
      constexpr std::size_t kShown = 5;
      const std::size_t shown = std::min(extra.size(), kShown);
      std::string list = fmt::format(
          "{}", fmt::join(std::vector<std::string>(extra.begin(), extra.begin() + shown), ", "));
      if (extra.size() > shown) list += fmt::format(" and {} more", extra.size() - shown);
      context.fail(fmt::format("{} datasets are not part of {}: {}", extra.size(), party, list));
    }
  }

  // Read into copies, so that a non-finite value leaves the caller's tensors as they were too.
  std::vector<Tensor> values;
  for (std::size_t i = 0; i < into.size(); ++i) {
    values.emplace_back(into[i].tensor.shape());
    if (into[i].tensor.numel() == 0) continue;
    context.check_status(H5Dread(datasets[i], H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT,
                                 values.back().data()),
                         fmt::format("cannot read {}/{}", root, into[i].name));
    const int64_t bad = allow_nonfinite ? -1 : first_nonfinite(values.back());
    if (bad >= 0) {
      context.fail(fmt::format(
          "{}/{}[{}] is {}: the run that wrote this checkpoint diverged or the file was edited "
          "(load it anyway with --allow-nonfinite)",
          root, into[i].name, bad, values.back().data()[bad]));
    }
  }
  for (std::size_t i = 0; i < into.size(); ++i) into[i].tensor.copy_from(values[i]);
}

std::string load_checkpoint_experiment(const fs::path& path) {
  Hdf5Lock quiet;
  const FileContext context = checkpoint_context(path);
  Handle file = open_for_reading(context, path);
  check_format(context, file);
  return read_string_dataset(context, file, "/experiment");
}

namespace {
herr_t collect_group_name(hid_t, const char* name, const H5L_info_t*, void* names) {
  try {
    static_cast<std::vector<std::string>*>(names)->emplace_back(name);
  } catch (...) {
    return -1;  // never let an exception cross the C library
  }
  return 0;
}
}  // namespace

std::vector<PluginRecord> load_checkpoint_plugins(const fs::path& path) {
  Hdf5Lock quiet;
  const FileContext context = checkpoint_context(path);
  Handle file = open_for_reading(context, path);
  check_format(context, file);
  std::vector<PluginRecord> plugins;
  if (!object_exists(context, file, "/plugins")) return plugins;
  Handle root(context.check(H5Gopen2(file, "/plugins", H5P_DEFAULT), "cannot open group /plugins"),
              H5Gclose);
  std::vector<std::string> names;
  context.check_status(H5Literate(root, H5_INDEX_NAME, H5_ITER_INC, nullptr, collect_group_name, &names),
                       "cannot list /plugins");
  for (const std::string& name : names) {
    const std::string group_path = "/plugins/" + name;
    if (!object_exists(context, file, group_path)) {
      context.fail(fmt::format("{} is a link to nothing", group_path));
    }
    Handle group(context.check(H5Gopen2(file, group_path.c_str(), H5P_DEFAULT),
                               fmt::format("cannot open group {}", group_path)),
                 H5Gclose);
    plugins.push_back({name, read_string_attribute(context, group, group_path, "version"),
                       read_string_attribute(context, group, group_path, "path")});
  }
  return plugins;
}

std::optional<TrainingState> load_checkpoint_training_state(const fs::path& path) {
  Hdf5Lock quiet;
  const FileContext context = checkpoint_context(path);
  Handle file = open_for_reading(context, path);
  check_format(context, file);
  if (!object_exists(context, file, "/training")) return std::nullopt;

  TrainingState state;
  Handle group(
      context.check(H5Gopen2(file, "/training", H5P_DEFAULT), "cannot open group /training"),
      H5Gclose);
  state.epoch = read_integer_attribute(context, group, "/training", "epoch");
  state.iteration = read_integer_attribute(context, group, "/training", "iteration");
  state.rng_state = read_string_attribute(context, group, "/training", "rng_state");
  if (context.check_bool(H5Aexists(group, "epoch_step"),
                         "cannot look up the attribute epoch_step of /training")) {
    PartialEpoch partial;
    partial.step = read_integer_attribute(context, group, "/training", "epoch_step");
    partial.rng_state = read_string_attribute(context, group, "/training", "epoch_rng_state");
    partial.loss_sum = read_double_attribute(context, group, "/training", "epoch_loss_sum");
    partial.correct = read_integer_attribute(context, group, "/training", "epoch_correct");
    partial.seen = read_integer_attribute(context, group, "/training", "epoch_seen");
    partial.seconds = read_double_attribute(context, group, "/training", "epoch_seconds");
    state.partial = std::move(partial);
  }

  if (object_exists(context, file, "/history")) {
    for (const std::string& dataset_path : list_datasets(context, file, "/history")) {
      Handle dataset = open_dataset(context, file, dataset_path);
      const Shape shape = dataset_shape(context, dataset, dataset_path);
      if (shape.rank() != 1) {
        context.fail(fmt::format("{} has shape {}, expected one value per epoch (rank 1)",
                                 dataset_path, shape.str()));
      }
      const H5T_class_t type_class = dataset_type_class(context, dataset, dataset_path);
      if (type_class != H5T_FLOAT) {
        context.fail(fmt::format("{} holds {} values, expected floating point", dataset_path,
                                 type_class_name(type_class)));
      }
      std::vector<double> values = read_double_series(context, dataset, dataset_path, shape);
      state.history[dataset_path.substr(std::string_view("/history/").size())] = std::move(values);
    }
  }
  return state;
}

void reseal_hdf5_file(const fs::path& path) { file_seal::reseal(path); }

Tensor read_hdf5_tensor(const fs::path& path, const std::string& dataset) {
  Hdf5Lock quiet;
  const FileContext context = hdf5_file_context(path);
  const std::string dataset_path = absolute_name(context, dataset);
  Handle file = open_for_reading(context, path);
  if (!object_exists(context, file, dataset_path)) {
    const std::vector<std::string> present = list_datasets(context, file, "/");
    context.fail(fmt::format("dataset {} does not exist (the file holds {})", dataset_path,
                             present.empty() ? std::string("no datasets")
                                             : fmt::format("{}", fmt::join(present, ", "))));
  }
  Handle handle = open_dataset(context, file, dataset_path);
  const Shape shape = dataset_shape(context, handle, dataset_path);
  const H5T_class_t type_class = dataset_type_class(context, handle, dataset_path);
  if (type_class != H5T_FLOAT) {
    context.fail(fmt::format("dataset {} holds {} values, expected floating point", dataset_path,
                             type_class_name(type_class)));
  }
  check_storage(context, handle, dataset_path, shape);
  Tensor tensor(shape);
  if (tensor.numel() > 0) {
    context.check_status(
        H5Dread(handle, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, tensor.data()),
        fmt::format("cannot read dataset {}", dataset_path));
  }
  return tensor;
}

void write_hdf5_tensors(const fs::path& path, std::span<const NamedTensor> tensors) {
  write_hdf5_tensors(path, tensors, {}, {});
}

void write_hdf5_tensors(const fs::path& path, std::span<const NamedTensor> tensors,
                        std::span<const NamedIntegers> integers,
                        const std::map<std::string, std::string>& root_texts) {
  Hdf5Lock quiet;
  const FileContext context = hdf5_file_context(path);
  std::vector<std::string> paths;
  for (const NamedTensor& entry : tensors) paths.push_back(absolute_name(context, entry.name));
  for (const NamedIntegers& entry : integers) paths.push_back(absolute_name(context, entry.name));
  check_paths_distinct(context, paths);
  std::size_t data_bytes = 0;
  for (const NamedTensor& entry : tensors) {
    data_bytes += static_cast<std::size_t>(entry.tensor.numel()) * sizeof(float);
  }
  for (const NamedIntegers& entry : integers) data_bytes += entry.values.size() * sizeof(int64_t);
  for (const auto& [name, text] : root_texts) data_bytes += 64 + text.size();
  write_atomically(context, path, data_bytes, [&](hid_t file) {
    for (std::size_t i = 0; i < tensors.size(); ++i) {
      write_tensor(context, file, paths[i], tensors[i].tensor);
    }
    for (std::size_t i = 0; i < integers.size(); ++i) {
      write_dataset(context, file, paths[tensors.size() + i], {integers[i].values.size()},
                    H5T_STD_I64LE, H5T_NATIVE_INT64, integers[i].values.data());
    }
    for (const auto& [name, text] : root_texts) {
      write_string_attribute(context, file, "/", name.c_str(), text);
    }
  });
}

void write_hdf5_series(const fs::path& path, std::span<const SeriesGroup> groups,
                       const std::map<std::string, std::string>& root_texts) {
  Hdf5Lock quiet;
  const FileContext context = hdf5_file_context(path);
  std::vector<std::string> paths;
  std::size_t data_bytes = 0;
  for (const SeriesGroup& group : groups) {
    const std::string root = absolute_name(context, group.path);
    for (const auto& [name, values] : group.series) {
      validate_name(context, root, name);
      paths.push_back(root + "/" + name);
      data_bytes += values.size() * sizeof(double);
    }
    data_bytes += 64 * (group.numbers.size() + group.texts.size());
    for (const auto& [name, text] : group.texts) data_bytes += text.size();
  }
  check_paths_distinct(context, paths);
  write_atomically(context, path, data_bytes, [&](hid_t file) {
    for (const auto& [name, text] : root_texts) {
      write_string_attribute(context, file, "/", name.c_str(), text);
    }
    Handle links = link_properties(context);
    for (const SeriesGroup& group : groups) {
      const std::string root = absolute_name(context, group.path);
      Handle handle(context.check(H5Gcreate2(file, root.c_str(), links, H5P_DEFAULT, H5P_DEFAULT),
                                  fmt::format("cannot create group {}", root)),
                    H5Gclose);
      for (const auto& [name, values] : group.series) {
        write_dataset(context, file, root + "/" + name, {values.size()}, H5T_IEEE_F64LE,
                      H5T_NATIVE_DOUBLE, values.data());
      }
      for (const auto& [name, value] : group.numbers) {
        write_integer_attribute<double>(context, handle, root, name.c_str(), H5T_IEEE_F64LE,
                                        H5T_NATIVE_DOUBLE, value);
      }
      for (const auto& [name, text] : group.texts) {
        write_string_attribute(context, handle, root, name.c_str(), text);
      }
    }
  });
}

std::map<std::string, std::map<std::string, std::vector<double>>> read_hdf5_series(
    const fs::path& path, const std::string& root) {
  Hdf5Lock quiet;
  const FileContext context = hdf5_file_context(path);
  const std::string root_path = absolute_name(context, root);
  Handle file = open_for_reading(context, path);
  std::map<std::string, std::map<std::string, std::vector<double>>> result;
  if (!object_exists(context, file, root_path)) return result;
  for (const std::string& dataset_path : list_datasets(context, file, root_path)) {
    Handle dataset = open_dataset(context, file, dataset_path);
    const Shape shape = dataset_shape(context, dataset, dataset_path);
    if (shape.rank() != 1 || dataset_type_class(context, dataset, dataset_path) != H5T_FLOAT) {
      context.fail(fmt::format("{} has shape {}, expected a rank-1 floating-point series",
                               dataset_path, shape.str()));
    }
    std::vector<double> values = read_double_series(context, dataset, dataset_path, shape);
    const std::size_t slash = dataset_path.rfind('/');
    result[dataset_path.substr(0, slash)][dataset_path.substr(slash + 1)] = std::move(values);
  }
  return result;
}

}  // namespace strata
