// conv_bench: times one conv2d kernel (forward, backward_data, backward_params) of a backend, on
// fresh random data, the way a conv layer runs inside a training step.
//
//   conv_bench --shape N,C,H,W,K,R,S,stride,pad,dilation[,groups] [--backend tbb] [--threads T]
//              [--iterations I] [--warmup W] [--no-bias] [--precision fp32|bf16]
//   conv_bench --gemm M,N,K [--backend tbb] [--threads T] [--iterations I] [--warmup W]
//
// --gemm times the backend's "gemm" op instead, C = A B (M x K times K x N, row-major), in fp32
// (the tbb backend: OpenBLAS sgemm, split over TBB tasks) and in bf16 (the tbb backend: its own
// AVX512-BF16 kernel, bf16_gemm.hpp), and prints both GFLOP/s (2 M N K flops per product) in one
// JSON object.
//
// Prints one JSON object: the best (minimum) seconds of each pass over I timed iterations after W
// untimed ones, and GFLOP/s of the three passes together, counting 2 * N * K * (C/groups) * R * S *
// out_h * out_w floating-point operations per pass (multiply and add), and the kernel's
// implementation (Kernel::implementation(): for tbb, the method of each pass, e.g.
// "fwd=direct bwd_data=small bwd_weights=winograd23"). bench/compare_pytorch.py
// runs it beside PyTorch; it is a benchmark, not a test, and asserts nothing about speed.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <limits>
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
    "       conv_bench --gemm M,N,K [--backend tbb] [--threads T] [--iterations I] [--warmup W]\n";

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

strata::Tensor random_tensor(const strata::Shape& shape, std::mt19937& rng) {
  strata::Tensor t(shape);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  for (float& v : t.span()) v = dist(rng);
  return t;
}

double seconds(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Best seconds of `iterations` products after `warmup`, for each precision; prints one JSON line.
int run_gemm(const std::string& sizes, const std::string& backend_name, int threads, int iterations,
             int warmup) {
  const std::vector<int64_t> v = parse_list(sizes);
  if (v.size() != 3) strata::fail("--gemm {}: expected M,N,K\n{}", sizes, kUsage);
  const int64_t m = v[0], n = v[1], k = v[2];
  strata::Registries registries;
  strata::PluginLoader loader(registries);
  loader.load_default();
  auto backend = registries.backends.create(backend_name, strata::Config{});
  backend->set_threads(threads);
  std::mt19937 rng(12345);
  const strata::Tensor a = random_tensor({m, k}, rng), b = random_tensor({k, n}, rng);
  strata::Tensor c({m, n});
  std::string fields;
  for (const strata::Precision precision : {strata::Precision::kFp32, strata::Precision::kBf16}) {
    auto gemm = registries.kernels.pick<strata::GemmKernel>(
        "gemm", backend_name, strata::GemmDesc{precision}, "conv_bench");
    double best = std::numeric_limits<double>::infinity();
    for (int it = 0; it < warmup + iterations; ++it) {
      const auto t0 = Clock::now();
      gemm->gemm(false, false, m, n, k, 1.0f, a.data(), k, b.data(), n, 0.0f, c.data(), n);
      if (it >= warmup) best = std::min(best, seconds(t0));
    }
    const std::string name(strata::precision_name(precision));
    fields +=
        fmt::format(", \"{}_s\": {:.6g}, \"{}_gflops\": {:.6g}, \"{}_implementation\": \"{}\"",
                    name, best, name, 2.0 * m * n * k / best * 1e-9, name, gemm->implementation());
  }
  std::printf("{\"backend\": \"%s\", \"threads\": %d, \"gemm\": \"%s\"%s}\n", backend_name.c_str(),
              backend->threads(), sizes.c_str(), fields.c_str());
  return 0;
}

int run(int argc, char** argv) {
  std::string shape_text, gemm_text, backend_name = "tbb";
  strata::Precision precision = strata::Precision::kFp32;
  int threads = 0;
  int iterations = 10, warmup = 2;
  bool bias = true;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) strata::fail("{} needs a value\n{}", arg, kUsage);
      return argv[++i];
    };
    if (arg == "--shape") {
      shape_text = value();
    } else if (arg == "--backend") {
      backend_name = value();
    } else if (arg == "--threads") {
      threads = std::stoi(value());
    } else if (arg == "--iterations") {
      iterations = std::stoi(value());
    } else if (arg == "--warmup") {
      warmup = std::stoi(value());
    } else if (arg == "--no-bias") {
      bias = false;
    } else if (arg == "--gemm") {
      gemm_text = value();
    } else if (arg == "--precision") {
      const std::string name = value();
      const auto parsed = strata::parse_precision(name);
      if (!parsed) strata::fail("--precision {}: expected fp32 or bf16", name);
      precision = *parsed;
    } else {
      strata::fail("unknown argument '{}'\n{}", arg, kUsage);
    }
  }
  if (iterations < 1 || warmup < 0 || threads < 0) {
    strata::fail("--iterations must be >= 1, --warmup and --threads >= 0");
  }
  if (!gemm_text.empty()) return run_gemm(gemm_text, backend_name, threads, iterations, warmup);
  if (shape_text.empty()) strata::fail("--shape or --gemm is required\n{}", kUsage);
  const std::vector<int64_t> v = parse_list(shape_text);
  if (v.size() != 10 && v.size() != 11) {
    strata::fail("--shape {}: expected 10 or 11 integers, found {}\n{}", shape_text, v.size(),
                 kUsage);
  }
  const int64_t n = v[0];
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
  d.precision = precision;
  d.out_h = (d.in_h + 2 * d.pad_h - d.dilation_h * (d.kernel_h - 1) - 1) / d.stride_h + 1;
  d.out_w = (d.in_w + 2 * d.pad_w - d.dilation_w * (d.kernel_w - 1) - 1) / d.stride_w + 1;

  strata::Registries registries;
  strata::PluginLoader loader(registries);
  loader.load_default();
  auto backend = registries.backends.create(backend_name, strata::Config{});
  backend->set_threads(threads);
  auto conv =
      registries.kernels.pick<strata::Conv2dKernel>("conv2d", backend_name, d, "conv_bench");

  std::mt19937 rng(12345);
  const int64_t cg = d.in_channels / d.groups;
  strata::Tensor x = random_tensor({n, d.in_channels, d.in_h, d.in_w}, rng);
  strata::Tensor w = random_tensor({d.out_channels, cg, d.kernel_h, d.kernel_w}, rng);
  strata::Tensor b = random_tensor({d.out_channels}, rng);
  strata::Tensor dy = random_tensor({n, d.out_channels, d.out_h, d.out_w}, rng);
  strata::Tensor y({n, d.out_channels, d.out_h, d.out_w});
  strata::Tensor dx({n, d.in_channels, d.in_h, d.in_w});
  strata::Tensor dw(w.shape()), db(b.shape());

  double best_forward = std::numeric_limits<double>::infinity();
  double best_data = best_forward, best_params = best_forward, best_total = best_forward;
  for (int it = 0; it < warmup + iterations; ++it) {
    const auto t0 = Clock::now();
    conv->forward(x, w, bias ? &b : nullptr, y);
    const double forward = seconds(t0);
    const auto t1 = Clock::now();
    conv->backward_data(dy, w, dx);
    const double data = seconds(t1);
    const auto t2 = Clock::now();
    conv->backward_params(x, dy, dw, bias ? &db : nullptr);
    const double params = seconds(t2);
    if (it < warmup) continue;
    best_forward = std::min(best_forward, forward);
    best_data = std::min(best_data, data);
    best_params = std::min(best_params, params);
    best_total = std::min(best_total, forward + data + params);
  }
  const double flops_per_pass = 2.0 * static_cast<double>(n * d.out_channels * cg * d.kernel_h *
                                                          d.kernel_w * d.out_h * d.out_w);
  std::printf(
      "{\"backend\": \"%s\", \"threads\": %d, \"shape\": \"%s\", \"out_h\": %lld, \"out_w\": %lld, "
      "\"forward_s\": %.6g, \"backward_data_s\": %.6g, \"backward_params_s\": %.6g, "
      "\"total_s\": %.6g, \"gflops\": %.6g, \"forward_gflops\": %.6g, \"implementation\": "
      "\"%s\"}\n",
      backend_name.c_str(), backend->threads(), shape_text.c_str(), static_cast<long long>(d.out_h),
      static_cast<long long>(d.out_w), best_forward, best_data, best_params, best_total,
      3.0 * flops_per_pass / best_total * 1e-9, flops_per_pass / best_forward * 1e-9,
      conv->implementation().c_str());
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
