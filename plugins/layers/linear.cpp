// linear: a fully connected layer (PyTorch's nn.Linear, preceded by an implicit flatten).
//
// WHAT THIS OBJECT REPRESENTS
//   y[n, o] = bias[o] + sum_i weight[o, i] * x[n, i], where x[n] is the input sample flattened
//   in row-major order: for an image sample [C, H, W], i = (c*H + h)*W + w, exactly what
//   torch.flatten(x, 1) gives, so PyTorch weights load unchanged.
//   Parameters: weight [out_features, in_features] (PyTorch layout; default init he_normal,
//   fan_in = in_features, fan_out = out_features) and, unless `bias: false`, bias [out_features]
//   (default init constant 0, no weight decay).
//
// KEYS
//   out_features  required, >= 1
//   bias          true
//
// REQUIRES
//   - one input of any non-empty sample shape; in_features is its element count.
// ENSURES
//   - output sample shape [out_features]; the products run in the backend's "gemm" kernel, in the
//     experiment's precision (bf16: x, weight and dy rounded to bfloat16, float sums; the bias
//     and its gradient stay float).
#include <fmt/format.h>

#include <algorithm>
#include <memory>

#include "common.hpp"
#include "strata/error.hpp"
#include "strata/export.hpp"
#include "strata/ops.hpp"

namespace strata::layers {

namespace {

class Linear final : public Layer {
 public:
  explicit Linear(const Config& config)
      : out_features_(config.get<int64_t>("out_features")),
        has_bias_(config.get<bool>("bias", true)) {
    if (out_features_ < 1) {
      config.fail_key("out_features", fmt::format("must be at least 1, found {}", out_features_));
    }
  }

  std::string_view type() const override { return "linear"; }
  // backward reads its input (x, for the weight gradient), never its output.
  bool backward_reads_output() const override { return false; }
  bool recomputable() const override { return true; }

  std::vector<Param*> params() override {
    if (has_bias_) return {&weight_, &bias_};
    return {&weight_};
  }

  int64_t multiply_adds() const override { return in_features_ * out_features_; }
  Window window() const override {
    Window window;
    window.global = true;
    return window;
  }
  std::string implementation() const override { return gemm_ ? gemm_->implementation() : ""; }

  // ONNX Gemm with transB (the weight is [out, in]), after a Flatten for a sample of rank > 1.
  bool export_to(ExportContext& context) const override {
    std::string x = context.input();
    if (context.input_shape().rank() != 1) {
      x = context.value("flat");
      context.node("Flatten", {context.input()}, {x}).set("axis", int64_t{1});
    }
    std::vector<std::string> inputs = {x, context.parameter("weight", weight_.value)};
    if (has_bias_) inputs.push_back(context.parameter("bias", bias_.value));
    context.node("Gemm", std::move(inputs), {context.output()}).set("transB", int64_t{1});
    return true;
  }

  void forward(Context&, std::span<const Tensor> in, Tensor& out) override {
    const int64_t batch = in[0].dim(0);
    prepare_output(out, output_shape().with_batch(batch));
    float* y = out.data();
    float beta = 0.0f;
    if (has_bias_) {
      // y = bias (broadcast over rows), then y += x * W^T.
      const float* b = bias_.value.data();
      for (int64_t n = 0; n < batch; ++n) {
        std::copy(b, b + out_features_, y + n * out_features_);
      }
      beta = 1.0f;
    }
    gemm_->gemm(false, true, batch, out_features_, in_features_, 1.0f, in[0].data(), in_features_,
                weight_.value.data(), in_features_, beta, y, out_features_);
  }

  void backward(Context&, std::span<const Tensor> in, const Tensor&, const Tensor& dout,
                std::span<Tensor> din) override {
    const int64_t batch = in[0].dim(0);
    const float* dy = dout.data();
    if (din[0].defined()) {
      // dx [N, in] = dy [N, out] * W [out, in]
      gemm_->gemm(false, false, batch, in_features_, out_features_, 1.0f, dy, out_features_,
                  weight_.value.data(), in_features_, 0.0f, din[0].data(), in_features_);
    }
    // dW [out, in] = dy^T [out, N] * x [N, in]
    gemm_->gemm(true, false, out_features_, in_features_, batch, 1.0f, dy, out_features_,
                in[0].data(), in_features_, 0.0f, weight_.grad.data(), in_features_);
    if (has_bias_) {
      float* db = bias_.grad.data();
      std::fill(db, db + out_features_, 0.0f);
      for (int64_t n = 0; n < batch; ++n) {
        const float* row = dy + n * out_features_;
        for (int64_t o = 0; o < out_features_; ++o) db[o] += row[o];
      }
    }
  }

 protected:
  Shape infer_shape(const SetupContext& context, std::span<const Shape> inputs) override {
    const Shape& in = inputs[0];
    in_features_ = in.numel();
    if (in.rank() == 0 || in_features_ < 1) {
      fail("linear expects a non-empty sample shape, got {}", in.str());
    }
    weight_ = Param::make("weight", Shape{out_features_, in_features_}, "he_normal", in_features_,
                          out_features_);
    if (has_bias_) {
      bias_ =
          Param::make("bias", Shape{out_features_}, "constant", in_features_, out_features_, 0.0f);
    }
    gemm_ = context.kernel<GemmKernel>("gemm", GemmDesc{context.precision()});
    return Shape{out_features_};
  }

 private:
  int64_t out_features_;
  bool has_bias_;
  int64_t in_features_ = 0;
  Param weight_, bias_;
  std::shared_ptr<GemmKernel> gemm_;
};

}  // namespace

void register_linear(Registries& registries) { registries.layers.add<Linear>("linear"); }

}  // namespace strata::layers
