// concat: joins two or more inputs along the channel axis (GoogLeNet's inception output).
//
// WHAT THIS OBJECT REPRESENTS
//   torch.cat(inputs, dim=1): the channels of input 0, then those of input 1, and so on.
//   Sample shapes [C_i, H, W] give [sum C_i, H, W]; feature vectors [F_i] give [sum F_i].
//   No parameters, no keys. Written in YAML with named inputs:
//     - {name: mixed, type: concat, inputs: [branch1, branch2, branch3, branch4]}
//
// REQUIRES
//   - two or more inputs of the same rank (1 or 3), agreeing on every dimension but the first;
//     a mismatch is an error naming the inputs' shapes and the spatial sizes that differ.
// ENSURES
//   - output sample shape [sum of C_i, rest of the shape].
//   - backward: each wanted input gradient is its slice of dy.
//   - the copies are split over the backend's parallel_for by sample.
#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <vector>

#include "common.hpp"
#include "strata/error.hpp"
#include "strata/export.hpp"

namespace strata::layers {

namespace {

std::string spatial_text(const Shape& shape) {
  std::vector<int64_t> rest(shape.dims().begin() + 1, shape.dims().end());
  return fmt::format("{}", fmt::join(rest, "x"));
}

class Concat final : public Layer {
 public:
  explicit Concat(const Config&) {}

  std::string_view type() const override { return "concat"; }
  // backward copies or spreads dout: it reads neither tensor's values.
  bool backward_reads_inputs() const override { return false; }
  bool backward_reads_output() const override { return false; }
  bool recomputable() const override { return true; }
  int min_inputs() const override { return 2; }
  int max_inputs() const override { return std::numeric_limits<int>::max(); }

  // ONNX Concat on axis 1 (the first sample axis).
  bool export_to(ExportContext& context) const override {
    context.node("Concat", context.inputs(), {context.output()}).set("axis", int64_t{1});
    return true;
  }

  void forward(Context& context, std::span<const Tensor> in, Tensor& out) override {
    const int64_t batch = in[0].dim(0);
    prepare_output(out, output_shape().with_batch(batch));
    float* y = out.data();
    for_samples(context, batch, [&](int64_t n) {
      float* row = y + n * output_numel_;
      for (std::size_t k = 0; k < in.size(); ++k) {
        const int64_t size = sizes_[k];
        std::memcpy(row, in[k].data() + n * size, static_cast<std::size_t>(size) * sizeof(float));
        row += size;
      }
    });
  }

  void backward(Context& context, std::span<const Tensor>, const Tensor&, const Tensor& dout,
                std::span<Tensor> din) override {
    const float* dy = dout.data();
    for_samples(context, dout.dim(0), [&](int64_t n) {
      const float* row = dy + n * output_numel_;
      for (std::size_t k = 0; k < din.size(); ++k) {
        const int64_t size = sizes_[k];
        if (din[k].defined()) {
          std::memcpy(din[k].data() + n * size, row,
                      static_cast<std::size_t>(size) * sizeof(float));
        }
        row += size;
      }
    });
  }

 protected:
  Shape infer_shape(const SetupContext&, std::span<const Shape> inputs) override {
    const Shape& first = inputs[0];
    if (first.rank() != 3 && first.rank() != 1) {
      fail(
          "concat joins image samples [channels, height, width] or features [features], but "
          "input 0 is {}",
          first.str());
    }
    Shape out = first;
    sizes_.clear();
    for (std::size_t k = 0; k < inputs.size(); ++k) {
      const Shape& shape = inputs[k];
      if (shape.rank() != first.rank()) {
        fail("concat needs inputs of the same rank, but input 0 is {} and input {} is {}",
             first.str(), k, shape.str());
      }
      if (!std::equal(shape.dims().begin() + 1, shape.dims().end(), first.dims().begin() + 1)) {
        fail(
            "concat joins along channels, so the spatial sizes must agree, but input 0 is {} "
            "({}) and input {} is {} ({})",
            first.str(), spatial_text(first), k, shape.str(), spatial_text(shape));
      }
      if (k > 0) out[0] += shape[0];
      sizes_.push_back(shape.numel());
    }
    output_numel_ = out.numel();
    return out;
  }

 private:
  template <class Body>
  void for_samples(Context& context, int64_t batch, const Body& body) const {
    auto run = [&](int64_t lo, int64_t hi) {
      for (int64_t n = lo; n < hi; ++n) body(n);
    };
    parallel_elementwise(context, batch, output_numel_, run);
  }

  std::vector<int64_t> sizes_;  // elements per sample of each input
  int64_t output_numel_ = 0;
};

}  // namespace

void register_concat(Registries& registries) { registries.layers.add<Concat>("concat"); }

}  // namespace strata::layers
