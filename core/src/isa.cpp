#include "strata/isa.hpp"

#include <dlfcn.h>
#if defined(__x86_64__)
#include <cpuid.h>
#endif

#include <array>
#include <cstdint>
#include <cstdlib>
#include <filesystem>

namespace fs = std::filesystem;

namespace strata::isa {

namespace {

constexpr std::array kAll{Isa::kGeneric, Isa::kAvx2, Isa::kAvx512};  // narrowest first
constexpr const char* kVariable = "STRATA_ISA";

std::vector<Isa> parse_list(std::string_view built) {
  std::vector<Isa> levels;
  while (!built.empty()) {
    const std::size_t comma = built.find(',');
    const std::string_view item = built.substr(0, comma);
    const std::optional<Isa> level = parse(item);
    if (!level) fail("unknown instruction-set level '{}' in the plugin's build list", item);
    levels.push_back(*level);
    built = comma == std::string_view::npos ? std::string_view{} : built.substr(comma + 1);
  }
  return levels;
}

bool contains(const std::vector<Isa>& levels, Isa isa) {
  for (const Isa level : levels) {
    if (level == isa) return true;
  }
  return false;
}

std::string names(const std::vector<Isa>& levels) {
  std::string text;
  for (const Isa level : levels) {
    if (!text.empty()) text += ", ";
    text += name(level);
  }
  return text;
}

}  // namespace

std::string_view name(Isa isa) {
  switch (isa) {
    case Isa::kGeneric:
      return "generic";
    case Isa::kAvx2:
      return "avx2";
    case Isa::kAvx512:
      return "avx512";
  }
  return "?";
}

std::optional<Isa> parse(std::string_view text) {
  for (const Isa isa : kAll) {
    if (name(isa) == text) return isa;
  }
  return std::nullopt;
}

std::string_view requirement(Isa isa) {
  switch (isa) {
    case Isa::kGeneric:
      return "x86-64 baseline";
    case Isa::kAvx2:
      return "x86-64-v3: AVX2, FMA, F16C, BMI1/2, LZCNT and MOVBE";
    case Isa::kAvx512:
      return "x86-64-v4: x86-64-v3 and AVX-512 F, BW, CD, DQ and VL";
  }
  return "?";
}

#if defined(__x86_64__)
namespace {

// The CPU's feature bits (CPUID) and the register state the operating system saves (XGETBV), the
// same tests gcc's and clang's x86-64-v3 / x86-64-v4 levels stand for. Spelled out with cpuid.h
// because clang 14's __builtin_cpu_supports knows neither the levels nor MOVBE and F16C.
struct Features {
  bool v3 = false, v4 = false, avx512_bf16 = false;
};

uint64_t saved_state() {
  uint32_t low = 0, high = 0;
  __asm__ volatile("xgetbv" : "=a"(low), "=d"(high) : "c"(0));
  return (static_cast<uint64_t>(high) << 32) | low;
}

Features detect() {
  Features f;
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (__get_cpuid(1, &a, &b, &c, &d) == 0) return f;
  const auto bit = [](unsigned reg, int n) { return ((reg >> n) & 1u) != 0; };
  const bool fma = bit(c, 12), movbe = bit(c, 22), osxsave = bit(c, 27), avx = bit(c, 28),
             f16c = bit(c, 29);
  if (!osxsave || !avx) return f;
  const uint64_t xcr0 = saved_state();
  const bool ymm_state = (xcr0 & 0x6u) == 0x6u;     // SSE and AVX registers
  const bool zmm_state = (xcr0 & 0xe0u) == 0xe0u;   // opmask, upper ZMM0-15, ZMM16-31
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d) == 0) return f;
  const bool bmi1 = bit(b, 3), avx2 = bit(b, 5), bmi2 = bit(b, 8);
  const bool avx512 = bit(b, 16) && bit(b, 17) && bit(b, 28) && bit(b, 30) && bit(b, 31);  // F DQ CD BW VL
  unsigned ea = 0, eb = 0, ec = 0, ed = 0;
  const bool lzcnt = __get_cpuid(0x80000001u, &ea, &eb, &ec, &ed) != 0 && bit(ec, 5);
  f.v3 = ymm_state && avx2 && fma && f16c && movbe && bmi1 && bmi2 && lzcnt;
  f.v4 = f.v3 && zmm_state && avx512;
  f.avx512_bf16 = f.v4 && __get_cpuid_count(7, 1, &a, &b, &c, &d) != 0 && bit(a, 5);
  return f;
}

}  // namespace
#endif

#if defined(__x86_64__)
const Features& features() {
  static const Features detected = detect();
  return detected;
}
#endif

bool cpu_runs(Isa isa) {
  if (isa == Isa::kGeneric) return true;
#if defined(__x86_64__)
  return isa == Isa::kAvx2 ? features().v3 : features().v4;
#else
  return false;
#endif
}

bool cpu_has_avx512_bf16() {
#if defined(__x86_64__)
  return features().avx512_bf16;
#else
  return false;
#endif
}

Choice choose(std::string_view built) {
  const std::vector<Isa> levels = parse_list(built);
  if (levels.empty()) fail("the plugin was built for no instruction-set level");
  const char* requested = std::getenv(kVariable);
  if (requested != nullptr && *requested != '\0') {
    const std::optional<Isa> isa = parse(requested);
    if (!isa) {
      fail("{}={}: not an instruction-set level (expected one of generic, avx2, avx512)", kVariable,
           requested);
    }
    if (!contains(levels, *isa)) {
      fail("{}={}: this plugin was built for {} only", kVariable, requested, names(levels));
    }
    if (!cpu_runs(*isa)) {
      fail("{}={}: this CPU cannot run {} code ({})", kVariable, requested, name(*isa),
           requirement(*isa));
    }
    return {*isa, fmt::format("{}={} from the environment", kVariable, requested)};
  }
  // The widest this CPU runs (the build list is in any order; the levels are nested).
  std::optional<Isa> best;
  for (const Isa isa : levels) {
    if (cpu_runs(isa) && (!best || static_cast<int>(isa) > static_cast<int>(*best))) best = isa;
  }
  if (!best) fail("this CPU runs none of the levels the plugin was built for ({})", names(levels));
  return {*best, "the best this CPU runs"};
}

std::string describe(const Choice& choice) {
  switch (choice.isa) {
    case Isa::kGeneric:
      return fmt::format("generic (x86-64 baseline) kernels, {}", choice.reason);
    case Isa::kAvx2:
      return fmt::format("AVX2 (x86-64-v3) kernels, {}", choice.reason);
    case Isa::kAvx512:
      return fmt::format("AVX-512 (x86-64-v4) kernels, {}", choice.reason);
  }
  return "?";
}

const PluginInfo* open_variant(const char* plugin, const char* built, const void* anchor) {
  const Choice choice = choose(built);
  Dl_info info{};
  if (::dladdr(anchor, &info) == 0 || info.dli_fname == nullptr || *info.dli_fname == '\0') {
    fail("cannot find the file of plugin '{}' to open its {} variant", plugin, name(choice.isa));
  }
  std::error_code ec;
  const fs::path file = fs::absolute(info.dli_fname, ec);
  const fs::path variant =
      (file.parent_path() / plugin / (std::string(name(choice.isa)) + ".so")).lexically_normal();
  if (!fs::is_regular_file(variant, ec)) {
    fail("its {} variant {} ({}) is missing: the plugin is installed incompletely",
         name(choice.isa), variant.string(), choice.reason);
  }
  // Never unmapped: the registries hold factories whose code is in it, for the process's life.
  void* handle = ::dlopen(variant.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
  if (handle == nullptr) fail("cannot open its variant {}: {}", variant.string(), ::dlerror());
  using EntryFn = const PluginInfo* (*)();
  using IsaFn = const char* (*)();
  const auto entry = reinterpret_cast<EntryFn>(::dlsym(handle, "strata_plugin_variant"));
  const auto level = reinterpret_cast<IsaFn>(::dlsym(handle, "strata_plugin_isa"));
  if (entry == nullptr || level == nullptr) {
    fail("{} is not a Strata plugin variant (no strata_plugin_variant or strata_plugin_isa)",
         variant.string());
  }
  const char* compiled = level();
  if (compiled == nullptr || name(choice.isa) != compiled) {
    fail("{} was compiled for '{}', not for '{}'", variant.string(), compiled ? compiled : "",
         name(choice.isa));
  }
  return entry();
}

}  // namespace strata::isa
