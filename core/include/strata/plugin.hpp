// strata/plugin.hpp: how a shared library becomes a plugin.
//
// A plugin exports exactly one C symbol, `strata_plugin`, returning a PluginInfo. The loader reads
// `api` first and refuses a plugin built for another kPluginApi before calling anything else in it.
// Registration is explicit: register_all() adds the plugin's types to the registries. There is no
// static-initializer registration (it breaks silently under static linking, see BVLC/caffe#2799).
//
//   void register_all(strata::Registries& r) { r.layers.add<Swish>("swish"); }
//   STRATA_PLUGIN("example_swish", "1.0", register_all)
//
// Every object a plugin's factory creates holds a reference to the plugin's library, so the
// library stays mapped until the last such object is destroyed.
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

namespace boost::dll {
class shared_library;
}

namespace strata {

// Bump when any interface a plugin compiles against changes incompatibly.
// 2: Layer::multiply_adds() and Layer::window(), the Block interface, and
//    Dataset::class_names() (new virtual functions change every layer's and dataset's vtable).
// 3: datasets read samples on demand (Dataset::open, SplitReader; whole-split readers derive
//    from InMemoryDataset), transforms work one Image at a time, Layer::has_dead_units().
// 4: Context::communicator and the communicator registry (strata/communicator.hpp).
// 5: Layer::export_to() and Transform::export_to(), the optional export hooks (strata/export.hpp).
// 6: Kernel::implementation() and Layer::implementation(); KernelRegistry holds an ordered list
//    of named implementations per (op, backend). Source-compatible: add<K>(op, backend) works.
// 7: BatchNormKernel::normalize(x, center, scale, shift, y) replaces affine(x, scale, shift, y);
//    Conv2dDesc and GemmDesc carry a Precision, SetupContext::precision(); the softmax, lrn and
//    global_avg_pool kernels; plugins built once per ISA (strata/isa.hpp) export
//    strata_plugin_variant.
// 8: Layer::backward_reads_inputs() and backward_reads_output(), which let training reuse the
//    memory of outputs no backward reads (Graph, OutputRetention); Conv2dKernel::arithmetic(),
//    the multiply-adds each pass performs (the default needs no source change).
// 9: fusion: Layer::fusable_activation(), fuses() and set_fused_activation() (the defaults fuse
//    nothing), and BatchNormKernel::normalize takes a last `const ActivationDesc*` (null: none).
// 10: recomputation: Layer::recomputable() (the default: no) and Context::recomputing.
inline constexpr int kPluginApi = 10;

class Registries;

// What a plugin's strata_plugin() entry point returns (STRATA_PLUGIN fills it); the loader refuses
// a null PluginInfo, a null or empty name and a null register_all; a null version reads as "".
struct PluginInfo {
  int api;  // must stay the first member: it is read before anything else
  const char* name;
  const char* version;
  void (*register_all)(Registries&);
};

// A loaded plugin. Objects created by its factories share ownership of it.
struct Plugin {
  std::string name;
  std::string version;
  std::filesystem::path path;  // empty for types registered by the host program itself
  std::shared_ptr<boost::dll::shared_library> library;  // null for the host program itself
};
// Never null in a registry entry: the host program's own types have the "host" Plugin.
using PluginRef = std::shared_ptr<const Plugin>;

class PluginLoader {
 public:
  explicit PluginLoader(Registries& registries) : registries_(registries) {}

  // Loads one plugin file. Errors: missing file, not a Strata plugin (no entry point), API
  // mismatch, two plugins with the same name, or a registration error (duplicate type, an
  // exception from register_all(), an invalid type name). A failed load is transactional: none
  // of the plugin's types stays in any registry, and the plugin is not in plugins().
  // Loading a file that is already loaded is a no-op.
  void load_file(const std::filesystem::path& file);
  // Loads every `*.so` file in a folder whose name starts with "libstrata_" (sorted by name).
  void load_dir(const std::filesystem::path& dir);
  // The default search path: the plugins installed with this libstrata_core, i.e. the folder
  // `strata` beside the library file itself (PREFIX/lib/strata; build/lib/strata in the build
  // tree; found through dladdr, so it holds for any program linked against the library and after
  // the whole prefix has been moved), then each folder of STRATA_PLUGIN_PATH (colon-separated).
  static std::vector<std::filesystem::path> default_dirs();
  // load_dir() on every default folder that exists.
  void load_default();

  const std::vector<PluginRef>& plugins() const { return plugins_; }

 private:
  Registries& registries_;
  std::vector<PluginRef> plugins_;
};

}  // namespace strata

#if defined(_WIN32)
#define STRATA_EXPORT __declspec(dllexport)
#else
#define STRATA_EXPORT __attribute__((visibility("default")))
#endif

// In a plugin built once per ISA (strata_add_plugin(... ISAS ...), strata/isa.hpp), CMake defines
// STRATA_ISA_VARIANT as the level a copy is compiled for; the copy then exports its entry point as
// strata_plugin_variant, and the level as strata_plugin_isa, for the plugin's dispatcher to find.
#if defined(STRATA_ISA_VARIANT)
#define STRATA_PLUGIN(NAME, VERSION, REGISTER_FN)                                             \
  extern "C" STRATA_EXPORT const ::strata::PluginInfo* strata_plugin_variant() {              \
    static const ::strata::PluginInfo info{::strata::kPluginApi, NAME, VERSION, REGISTER_FN}; \
    return &info;                                                                             \
  }                                                                                           \
  extern "C" STRATA_EXPORT const char* strata_plugin_isa() { return STRATA_ISA_VARIANT; }
#else
#define STRATA_PLUGIN(NAME, VERSION, REGISTER_FN)                                             \
  extern "C" STRATA_EXPORT const ::strata::PluginInfo* strata_plugin() {                      \
    static const ::strata::PluginInfo info{::strata::kPluginApi, NAME, VERSION, REGISTER_FN}; \
    return &info;                                                                             \
  }
#endif
