// conv_bench: times one conv2d kernel (forward, backward_data, backward_params) of a backend, on
// fresh random data, the way a conv layer runs inside a training step.
//
//   conv_bench --shape N,C,H,W,K,R,S,stride,pad,dilation[,groups] [--backend tbb] [--threads T]
//              [--iterations I] [--warmup W] [--no-bias] [--precision fp32|bf16]
//              [--roofline [--peak-fp32 GFLOPS] [--peak-bf16 GFLOPS] [--peak-size M]]
//   conv_bench --gemm M,N,K [--backend tbb] [--threads T] [--iterations I] [--warmup W]
//
// --gemm times the backend's "gemm" op instead, C = A B (M x K times K x N, row-major), in fp32
// (the tbb backend: OpenBLAS sgemm, split over TBB tasks) and in bf16 (the tbb backend: its own
// AVX512-BF16 kernel, bf16_gemm.hpp), and prints both GFLOP/s (2 M N K flops per product) in one
// JSON object (bf16 null, with the reason on stderr, where the CPU has no bf16 products).
//
// Prints one JSON object: the best (minimum) seconds of each pass over I timed iterations after W
// untimed ones, and GFLOP/s of the three passes together, counting 2 * N * K * (C/groups) * R * S *
// out_h * out_w floating-point operations per pass (multiply and add), and the kernel's
// implementation (Kernel::implementation(): for tbb, the method of each pass, e.g.
// "fwd=direct bwd_data=small bwd_weights=winograd23"). bench/compare_pytorch.py
// runs it beside PyTorch; it is a benchmark, not a test, and asserts nothing about speed.
//
// --roofline adds "roofline": this machine's peak, measured by the backend's own gemm on an
// M x M x M product (--peak-size, 2048) with the conv's thread count, best of kPeakRuns after one
// warm-up, in fp32 and bf16 (null where the CPU has no bf16 products), after the conv was timed;
// --peak-fp32/--peak-bf16 give a peak measured before instead (compare_pytorch.py measures once
// for all its shapes). Then per pass and for the three together: GFLOP/s counted as direct
// convolution and as the arithmetic the kernel actually does (Conv2dKernel::arithmetic(): for
// Winograd its fewer products plus its transforms), each as a fraction of the peak of the run's
// precision (docs/performance.md, "The roofline").
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "strata/backend.hpp"
#include "strata/config.hpp"
#include "strata/error.hpp"
#include "strata/ops.hpp"
#include "strata/plugin.hpp"
#include "strata/registry.hpp"

namespace {

using Clock = std::chrono::steady_clock;

constexpr const char* kUsage =
    "usage: conv_bench --shape N,C,H,W,K,R,S,stride,pad,dilation[,groups] [--backend tbb]\n"
    "                  [--threads T] [--iterations I] [--warmup W] [--no-bias]\n"
    "                  [--precision fp32|bf16]\n"
    "                  [--roofline [--peak-fp32 GFLOPS] [--peak-bf16 GFLOPS] [--peak-size M]]\n"
    "       conv_bench --gemm M,N,K [--backend tbb] [--threads T] [--iterations I] [--warmup W]\n";

// Timed products of the roofline's peak, after one untimed.
constexpr int kPeakRuns = 3;

struct Options {
  std::string shape, gemm, backend = "tbb";
  strata::Precision precision = strata::Precision::kFp32;
  int threads = 0, iterations = 10, warmup = 2;
  bool bias = true, roofline = false;
  // Peaks given on the command line (GFLOP/s), 0 when to be measured; the measured product's size.
  double peak_fp32 = 0, peak_bf16 = 0;
  int64_t peak_size = 2048;
};

std::vector<int64_t> parse_list(const std::string& text) {
  std::vector<int64_t> values;
  std::size_t start = 0;
  while (start <= text.size()) {
    const std::size_t comma = std::min(text.find(',', start), text.size());
    const std::string item = text.substr(start, comma - start);
    char* end = nullptr;
    const long long v = std::strtoll(item.c_str(), &end, 10);
    if (item.empty() || *end != '\0')
      strata::fail("--shape {}: '{}' is not an integer", text, item);
    values.push_back(v);
    start = comma + 1;
  }
  return values;
}

// A positive number of GFLOP/s, for --peak-fp32 and --peak-bf16.
double parse_peak(const std::string& option, const std::string& text) {
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0' || !(v > 0) || !std::isfinite(v)) {
    strata::fail("{} {}: expected a positive number of GFLOP/s", option, text);
  }
  return v;
}

Options parse_options(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) strata::fail("{} needs a value\n{}", arg, kUsage);
      return argv[++i];
    };
    if (arg == "--shape") {
      o.shape = value();
    } else if (arg == "--backend") {
      o.backend = value();
    } else if (arg == "--threads") {
      o.threads = std::stoi(value());
    } else if (arg == "--iterations") {
      o.iterations = std::stoi(value());
    } else if (arg == "--warmup") {
      o.warmup = std::stoi(value());
    } else if (arg == "--no-bias") {
      o.bias = false;
    } else if (arg == "--gemm") {
      o.gemm = value();
    } else if (arg == "--precision") {
      const std::string name = value();
      const auto parsed = strata::parse_precision(name);
      if (!parsed) strata::fail("--precision {}: expected fp32 or bf16", name);
      o.precision = *parsed;
    } else if (arg == "--roofline") {
      o.roofline = true;
    } else if (arg == "--peak-fp32") {
      o.peak_fp32 = parse_peak(arg, value());
    } else if (arg == "--peak-bf16") {
      o.peak_bf16 = parse_peak(arg, value());
    } else if (arg == "--peak-size") {
      o.peak_size = std::stoll(value());
    } else {
      strata::fail("unknown argument '{}'\n{}", arg, kUsage);
    }
  }
  if (o.iterations < 1 || o.warmup < 0 || o.threads < 0) {
    strata::fail("--iterations must be >= 1, --warmup and --threads >= 0");
  }
  if (o.peak_size < 1) strata::fail("--peak-size {}: must be positive", o.peak_size);
  if (!o.roofline && (o.peak_fp32 > 0 || o.peak_bf16 > 0)) {
    strata::fail("--peak-fp32 and --peak-bf16 go with --roofline");
  }
  return o;
}

strata::Tensor random_tensor(const strata::Shape& shape, std::mt19937& rng) {
  strata::Tensor t(shape);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  for (float& v : t.span()) v = dist(rng);
  return t;
}

double seconds(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Best seconds of `iterations` products C = A B (m x k times k x n, random) after `warmup`, by
// the backend's gemm kernel of `precision` (the backend's thread count as set); its
// implementation name in `implementation`.
double time_gemm(strata::Registries& registries, const std::string& backend_name,
                 strata::Precision precision, int64_t m, int64_t n, int64_t k, int iterations,
                 int warmup, std::string& implementation) {
  std::mt19937 rng(12345);
  const strata::Tensor a = random_tensor({m, k}, rng), b = random_tensor({k, n}, rng);
  strata::Tensor c({m, n});
  auto gemm = registries.kernels.pick<strata::GemmKernel>(
      "gemm", backend_name, strata::GemmDesc{precision}, "conv_bench");
  implementation = gemm->implementation();
  double best = std::numeric_limits<double>::infinity();
  for (int it = 0; it < warmup + iterations; ++it) {
    const auto t0 = Clock::now();
    gemm->gemm(false, false, m, n, k, 1.0f, a.data(), k, b.data(), n, 0.0f, c.data(), n);
    if (it >= warmup) best = std::min(best, seconds(t0));
  }
  return best;
}

// Best seconds of `iterations` products after `warmup`, for each precision; prints one JSON line.
int run_gemm(const Options& o) {
  const std::vector<int64_t> v = parse_list(o.gemm);
  if (v.size() != 3) strata::fail("--gemm {}: expected M,N,K\n{}", o.gemm, kUsage);
  const int64_t m = v[0], n = v[1], k = v[2];
  strata::Registries registries;
  strata::PluginLoader loader(registries);
  loader.load_default();
  auto backend = registries.backends.create(o.backend, strata::Config{});
  backend->set_threads(o.threads);
  std::string fields;
  for (const strata::Precision precision : {strata::Precision::kFp32, strata::Precision::kBf16}) {
    const std::string name(strata::precision_name(precision));
    std::string implementation;
    double best = 0;
    try {
      best = time_gemm(registries, o.backend, precision, m, n, k, o.iterations, o.warmup,
                       implementation);
    } catch (const strata::Error& error) {
      // bf16 on a CPU without its products: say why, and still time fp32.
      if (precision == strata::Precision::kFp32) throw;
      std::fprintf(stderr, "conv_bench: no %s product: %s\n", name.c_str(), error.what());
      fields += fmt::format(", \"{}_s\": null, \"{}_gflops\": null", name, name);
      continue;
    }
    fields +=
        fmt::format(", \"{}_s\": {:.6g}, \"{}_gflops\": {:.6g}, \"{}_implementation\": \"{}\"",
                    name, best, name, 2.0 * m * n * k / best * 1e-9, name, implementation);
  }
  std::printf("{\"backend\": \"%s\", \"threads\": %d, \"gemm\": \"%s\"%s}\n", o.backend.c_str(),
              backend->threads(), o.gemm.c_str(), fields.c_str());
  return 0;
}

strata::Conv2dDesc parse_shape(const Options& o, int64_t& n) {
  const std::vector<int64_t> v = parse_list(o.shape);
  if (v.size() != 10 && v.size() != 11) {
    strata::fail("--shape {}: expected 10 or 11 integers, found {}\n{}", o.shape, v.size(), kUsage);
  }
  n = v[0];
  strata::Conv2dDesc d;
  d.in_channels = v[1];
  d.in_h = v[2];
  d.in_w = v[3];
  d.out_channels = v[4];
  d.kernel_h = v[5];
  d.kernel_w = v[6];
  d.stride_h = d.stride_w = v[7];
  d.pad_h = d.pad_w = v[8];
  d.dilation_h = d.dilation_w = v[9];
  d.groups = v.size() == 11 ? v[10] : 1;
  d.precision = o.precision;
  d.out_h = (d.in_h + 2 * d.pad_h - d.dilation_h * (d.kernel_h - 1) - 1) / d.stride_h + 1;
  d.out_w = (d.in_w + 2 * d.pad_w - d.dilation_w * (d.kernel_w - 1) - 1) / d.stride_w + 1;
  return d;
}

// Best seconds of each pass, and of the three in one iteration.
struct PassTimes {
  double forward = std::numeric_limits<double>::infinity();
  double data = forward, params = forward, total = forward;
};

PassTimes time_conv(strata::Conv2dKernel& conv, const strata::Conv2dDesc& d, int64_t n,
                    const Options& o) {
  std::mt19937 rng(12345);
  const int64_t cg = d.in_channels / d.groups;
  strata::Tensor x = random_tensor({n, d.in_channels, d.in_h, d.in_w}, rng);
  strata::Tensor w = random_tensor({d.out_channels, cg, d.kernel_h, d.kernel_w}, rng);
  strata::Tensor b = random_tensor({d.out_channels}, rng);
  strata::Tensor dy = random_tensor({n, d.out_channels, d.out_h, d.out_w}, rng);
  strata::Tensor y({n, d.out_channels, d.out_h, d.out_w});
  strata::Tensor dx({n, d.in_channels, d.in_h, d.in_w});
  strata::Tensor dw(w.shape()), db(b.shape());
  PassTimes best;
  for (int it = 0; it < o.warmup + o.iterations; ++it) {
    const auto t0 = Clock::now();
    conv.forward(x, w, o.bias ? &b : nullptr, y);
    const double forward = seconds(t0);
    const auto t1 = Clock::now();
    conv.backward_data(dy, w, dx);
    const double data = seconds(t1);
    const auto t2 = Clock::now();
    conv.backward_params(x, dy, dw, o.bias ? &db : nullptr);
    const double params = seconds(t2);
    if (it < o.warmup) continue;
    best.forward = std::min(best.forward, forward);
    best.data = std::min(best.data, data);
    best.params = std::min(best.params, params);
    best.total = std::min(best.total, forward + data + params);
  }
  return best;
}

// The peak GFLOP/s of the backend's gemm in `precision`: given, or measured on an M x M x M
// product; nullopt when the backend cannot run that precision here (no bf16 products).
std::optional<double> peak_gflops(strata::Registries& registries, const Options& o,
                                  strata::Precision precision) {
  const double given = precision == strata::Precision::kBf16 ? o.peak_bf16 : o.peak_fp32;
  if (given > 0) return given;
  const int64_t m = o.peak_size;
  std::string implementation;
  try {
    return 2.0 * m * m * m /
           time_gemm(registries, o.backend, precision, m, m, m, kPeakRuns, 1, implementation) *
           1e-9;
  } catch (const strata::Error& error) {
    if (precision == o.precision) throw;  // the run's own precision ran the conv: a real failure
    std::fprintf(stderr, "conv_bench: no %s peak: %s\n",
                 std::string(strata::precision_name(precision)).c_str(), error.what());
    return std::nullopt;
  }
}

std::string json_number(std::optional<double> v) {
  return v ? fmt::format("{:.6g}", *v) : std::string("null");
}

// Each pass's method: "fwd=winograd43 bwd_data=direct bwd_weights=winograd23" names them; an
// implementation without such keys (bf16_gemm, reference) runs every pass itself.
std::string pass_method(const std::string& implementation, const std::string& key) {
  const std::string prefix = key + "=";
  std::size_t at = implementation.find(prefix);
  while (at != std::string::npos && at > 0 && implementation[at - 1] != ' ') {
    at = implementation.find(prefix, at + 1);
  }
  if (at == std::string::npos) return implementation;
  const std::size_t begin = at + prefix.size();
  return implementation.substr(begin, implementation.find(' ', begin) - begin);
}

// The "roofline" JSON object: the peaks, then per pass (and "total", the three in one iteration)
// the method, flops counted as direct convolution and as done (both for the whole batch), their
// GFLOP/s and those as fractions of the peak of the run's precision.
std::string roofline_json(strata::Registries& registries, const Options& o,
                          const strata::Conv2dKernel& conv, int64_t n, const PassTimes& t) {
  const std::optional<double> fp32 = peak_gflops(registries, o, strata::Precision::kFp32);
  const std::optional<double> bf16 = peak_gflops(registries, o, strata::Precision::kBf16);
  const double peak = o.precision == strata::Precision::kBf16 ? bf16.value() : fp32.value();
  const double direct = 2.0 * static_cast<double>(strata::conv2d_direct_multiply_adds(conv.desc()));
  const strata::Conv2dArithmetic a = conv.arithmetic();
  const std::string implementation = conv.implementation();
  std::string passes;
  const auto add = [&](const char* name, const std::string& method, double direct_flops,
                       double actual_flops, double seconds) {
    const double direct_gflops = direct_flops / seconds * 1e-9;
    const double actual_gflops = actual_flops / seconds * 1e-9;
    passes += fmt::format(
        "{}\"{}\": {{\"method\": \"{}\", \"direct_flops\": {:.0f}, \"actual_flops\": {:.0f}, "
        "\"seconds\": {:.6g}, \"direct_gflops\": {:.6g}, \"actual_gflops\": {:.6g}, "
        "\"direct_fraction\": {:.6g}, \"actual_fraction\": {:.6g}}}",
        passes.empty() ? "" : ", ", name, method, direct_flops, actual_flops, seconds,
        direct_gflops, actual_gflops, direct_gflops / peak, actual_gflops / peak);
  };
  const double images = static_cast<double>(n);
  add("forward", pass_method(implementation, "fwd"), images * direct,
      images * static_cast<double>(a.forward.flops()), t.forward);
  add("backward_data", pass_method(implementation, "bwd_data"), images * direct,
      images * static_cast<double>(a.backward_data.flops()), t.data);
  add("backward_params", pass_method(implementation, "bwd_weights"), images * direct,
      images * static_cast<double>(a.backward_params.flops()), t.params);
  const double all =
      static_cast<double>(a.forward.flops() + a.backward_data.flops() + a.backward_params.flops());
  add("total", implementation, images * 3.0 * direct, images * all, t.total);
  return fmt::format(
      "{{\"precision\": \"{}\", \"peak_fp32_gflops\": {}, \"peak_bf16_gflops\": {}, \"peak\": "
      "\"{}\", \"peak_size\": {}, \"peak_gflops\": {:.6g}, \"passes\": {{{}}}}}",
      strata::precision_name(o.precision), json_number(fp32), json_number(bf16),
      (o.precision == strata::Precision::kBf16 ? o.peak_bf16 : o.peak_fp32) > 0 ? "given"
                                                                                : "measured",
      o.peak_size, peak, passes);
}

int run(int argc, char** argv) {
  const Options o = parse_options(argc, argv);
  if (!o.gemm.empty()) return run_gemm(o);
  if (o.shape.empty()) strata::fail("--shape or --gemm is required\n{}", kUsage);
  int64_t n = 0;
  const strata::Conv2dDesc d = parse_shape(o, n);

  strata::Registries registries;
  strata::PluginLoader loader(registries);
  loader.load_default();
  auto backend = registries.backends.create(o.backend, strata::Config{});
  backend->set_threads(o.threads);
  auto conv = registries.kernels.pick<strata::Conv2dKernel>("conv2d", o.backend, d, "conv_bench");
  const PassTimes best = time_conv(*conv, d, n, o);

  const double flops_per_pass =
      2.0 * static_cast<double>(n * strata::conv2d_direct_multiply_adds(d));
  const std::string roofline =
      o.roofline ? ", \"roofline\": " + roofline_json(registries, o, *conv, n, best) : "";
  std::printf(
      "{\"backend\": \"%s\", \"threads\": %d, \"shape\": \"%s\", \"precision\": \"%s\", "
      "\"out_h\": %lld, \"out_w\": %lld, \"forward_s\": %.6g, \"backward_data_s\": %.6g, "
      "\"backward_params_s\": %.6g, \"total_s\": %.6g, \"gflops\": %.6g, \"forward_gflops\": "
      "%.6g, \"implementation\": \"%s\"%s}\n",
      o.backend.c_str(), backend->threads(), o.shape.c_str(),
      std::string(strata::precision_name(o.precision)).c_str(), static_cast<long long>(d.out_h),
      static_cast<long long>(d.out_w), best.forward, best.data, best.params, best.total,
      3.0 * flops_per_pass / best.total * 1e-9, flops_per_pass / best.forward * 1e-9,
      conv->implementation().c_str(), roofline.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& error) {
    std::fprintf(stderr, "conv_bench: %s\n", error.what());
    return 1;
  }
}
