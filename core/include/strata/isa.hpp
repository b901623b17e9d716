// strata/isa.hpp: one plugin, built once, fast on every x86-64 CPU.
//
// A plugin whose compute code profits from wider vector units is built once per instruction-set
// level (ISA) and chosen on the machine that runs it:
//
//   strata_add_plugin(backend_tbb ISAS generic avx2 avx512 SOURCES ...)   #
//   cmake/StrataPlugin.cmake
//
// compiles SOURCES once per ISA into <plugin folder>/<name>/<isa>.so, each a complete copy of the
// plugin compiled with that ISA's flags, and builds the plugin file itself (libstrata_<name>.so)
// from a small baseline dispatcher. When the loader asks that file for its entry point, it picks
// an ISA (choose() below), opens the variant, and hands over the variant's own PluginInfo: the
// sources need no change, their STRATA_PLUGIN(...) line exports the variant's entry point instead.
//
// Why whole copies in separate modules, not one library with per-function target attributes: code
// the compiler vectorizes itself (and every template and inline function a source instantiates)
// would otherwise exist once per ISA under one symbol, and the linker keeps one copy for all,
// possibly the AVX-512 one, which an AVX2 CPU cannot run. One variant per process has no such
// clash. A variant stays mapped until the process ends (RTLD_NODELETE).
//
// The levels are the x86-64 micro-architecture levels that gcc and clang name:
//   generic  the compiler's baseline (x86-64: SSE2); scalar code paths, runs everywhere;
//   avx2     x86-64-v3: AVX, AVX2, FMA, F16C, BMI1/2, LZCNT, MOVBE;
//   avx512   x86-64-v4: v3 plus AVX-512 F, BW, CD, DQ and VL.
// STRATA_ISA=<isa> in the environment overrides the choice (tests run every variant the CPU
// supports this way); naming a level this CPU cannot run, or one the plugin was not built for, is
// an error, never a silent fallback.
#pragma once

#include <exception>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "strata/error.hpp"
#include "strata/plugin.hpp"

namespace strata::isa {

enum class Isa { kGeneric, kAvx2, kAvx512 };

// "generic", "avx2", "avx512".
std::string_view name(Isa isa);
// The level named `text` (as name() spells it), if any.
std::optional<Isa> parse(std::string_view text);
// "x86-64-v4: AVX-512 F, BW, CD, DQ and VL", for messages.
std::string_view requirement(Isa isa);
// Whether this CPU (and its operating system, which must save the wider registers) runs code
// compiled for `isa`.
bool cpu_runs(Isa isa);
// Whether this CPU runs AVX512-BF16 instructions (vdpbf16ps, vcvtne2ps2bf16) besides x86-64-v4.
bool cpu_has_avx512_bf16();

struct Choice {
  Isa isa = Isa::kGeneric;
  // Who chose it: "the best this CPU runs" or "STRATA_ISA=avx2 from the environment".
  std::string reason;
};

// Among the levels a plugin was built for (`built`, a comma-separated list of names), the one to
// run: STRATA_ISA's when set (an error when this CPU cannot run it or it was not built), else the
// widest one this CPU runs. Fails when `built` names an unknown level or none this CPU runs.
Choice choose(std::string_view built);

// "AVX-512 (x86-64-v4) kernels, the best this CPU runs": what a backend's description says.
std::string describe(const Choice& choice);

// For a plugin's dispatcher (STRATA_ISA_DISPATCHER): chooses a level among `built`, opens
// <folder of the file holding `anchor`>/<plugin>/<isa>.so, checks that it is a variant of that
// level, and returns its PluginInfo. Throws Error with the reason when any step fails.
const PluginInfo* open_variant(const char* plugin, const char* built, const void* anchor);

}  // namespace strata::isa

// The whole dispatcher, one line in a baseline source (strata_add_plugin generates it). A failure
// to open the variant becomes this plugin's registration error, which the loader reports with the
// plugin's file.
#define STRATA_ISA_DISPATCHER(NAME, BUILT)                                                         \
  namespace {                                                                                      \
  const char strata_isa_anchor = 0;                                                                \
  std::string strata_isa_failure;                                                                  \
  void strata_isa_fail(::strata::Registries&) { ::strata::fail("{}", strata_isa_failure); }        \
  }                                                                                                \
  extern "C" STRATA_EXPORT const ::strata::PluginInfo* strata_plugin() {                           \
    static const ::strata::PluginInfo* const info = []() -> const ::strata::PluginInfo* {          \
      try {                                                                                        \
        return ::strata::isa::open_variant(NAME, BUILT, &strata_isa_anchor);                       \
      } catch (const std::exception& error) {                                                      \
        strata_isa_failure = error.what();                                                         \
        static const ::strata::PluginInfo failed{::strata::kPluginApi, NAME, "", strata_isa_fail}; \
        return &failed;                                                                            \
      }                                                                                            \
    }();                                                                                           \
    return info;                                                                                   \
  }
