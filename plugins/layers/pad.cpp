// pad: explicit padding of an image sample (PyTorch's F.pad on the last two axes, ONNX Pad).
//
// WHAT THIS OBJECT REPRESENTS
//   y = x with `padding` rows and columns added around each channel, filled as `mode` says:
//   constant (the `value`), reflect (mirror without repeating the edge), replicate (repeat the
//   edge) or circular (wrap around); pad.hpp states the index rules. No parameters. backward sums
//   dy over every output element that read an input element (reflect, replicate and circular
//   read some inputs several times).
//
// KEYS
//   padding  required: p, [ph, pw] or [top, bottom, left, right] (ONNX Pad's `pads` for an
//            image are [0, 0, top, left, 0, 0, bottom, right]: reorder)
//   mode     constant (default) | reflect | replicate | circular (ONNX: constant, reflect, edge,
//            wrap)
//   value    0: the fill of mode constant (an error with another mode)
//
// REQUIRES
//   - one input with sample shape [C, H, W]; reflect: each padding less than the input extent on
//     its axis; circular: at most the input extent.
// ENSURES
//   - output sample shape [C, H + top + bottom, W + left + right].
#include "pad.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <string>

#include "strata/error.hpp"
#include "strata/export.hpp"

namespace strata::layers {

PadMode read_pad_mode(const Config& config, std::string_view key, std::string_view constant_name) {
  const auto text = config.get<std::string>(key, std::string(constant_name));
  if (text == constant_name) return PadMode::kConstant;
  if (text == "reflect") return PadMode::kReflect;
  if (text == "replicate") return PadMode::kReplicate;
  if (text == "circular") return PadMode::kCircular;
  config.fail_key(key,
                  fmt::format("expected '{}', 'reflect', 'replicate' or 'circular', found '{}'",
                              constant_name, text));
}

namespace {

const char* mode_name(PadMode mode) {
  switch (mode) {
    case PadMode::kConstant:
      return "constant";
    case PadMode::kReflect:
      return "reflect";
    case PadMode::kReplicate:
      return "replicate";
    case PadMode::kCircular:
      return "circular";
  }
  return "?";
}

// The source index of every output index along one axis (-1: the constant).
std::vector<int64_t> source_indices(PadMode mode, int64_t in, int64_t begin, int64_t end,
                                    const char* axis) {
  for (const int64_t pad : {begin, end}) {
    if (mode == PadMode::kReflect && pad >= in) {
      fail("padding mode reflect needs each {} padding to be less than the input {} {}, found {}",
           axis, axis, in, pad);
    }
    if (mode == PadMode::kCircular && pad > in) {
      fail("padding mode circular needs each {} padding to be at most the input {} {}, found {}",
           axis, axis, in, pad);
    }
  }
  std::vector<int64_t> source(static_cast<std::size_t>(in + begin + end));
  for (int64_t o = 0; o < in + begin + end; ++o) {
    int64_t i = o - begin;
    if (i < 0 || i >= in) {
      switch (mode) {
        case PadMode::kConstant:
          i = -1;
          break;
        case PadMode::kReflect:
          i = i < 0 ? -i : 2 * (in - 1) - i;
          break;
        case PadMode::kReplicate:
          i = i < 0 ? 0 : in - 1;
          break;
        case PadMode::kCircular:
          i = (i % in + in) % in;
          break;
      }
    }
    source[static_cast<std::size_t>(o)] = i;
  }
  return source;
}

}  // namespace

PadPlan make_pad_plan(PadMode mode, float value, const Padding& padding, const Shape& sample) {
  require_image_shape(sample, "pad");
  PadPlan plan;
  plan.value = value;
  plan.channels = sample[0];
  plan.in_h = sample[1];
  plan.in_w = sample[2];
  plan.source_h = source_indices(mode, plan.in_h, padding.begin[0], padding.end[0], "height");
  plan.source_w = source_indices(mode, plan.in_w, padding.begin[1], padding.end[1], "width");
  plan.out_h = static_cast<int64_t>(plan.source_h.size());
  plan.out_w = static_cast<int64_t>(plan.source_w.size());
  return plan;
}

namespace {

// Walks the index map of `planes` planes: body(p, o, i) for every output o (oh * out_w + ow) of
// plane p, with i (ih * in_w + iw) the input it reads, or -1 for the constant. The planes are
// spread over the context's backend, each plane walked in order by one thread: a body may add
// into plane p's inputs (several outputs of a plane read the same input) without a race.
template <class Body>
void for_each_source(Context& context, const PadPlan& plan, int64_t planes, Body body) {
  parallel_elementwise(context, planes, plan.out_h * plan.out_w, [&](int64_t lo, int64_t hi) {
    for (int64_t p = lo; p < hi; ++p) {
      for (int64_t oh = 0; oh < plan.out_h; ++oh) {
        const int64_t ih = plan.source_h[static_cast<std::size_t>(oh)];
        for (int64_t ow = 0; ow < plan.out_w; ++ow) {
          const int64_t iw = plan.source_w[static_cast<std::size_t>(ow)];
          body(p, oh * plan.out_w + ow, ih < 0 || iw < 0 ? -1 : ih * plan.in_w + iw);
        }
      }
    }
  });
}

}  // namespace

void pad_forward(Context& context, const PadPlan& plan, const Tensor& x, Tensor& y) {
  const Shape shape{x.dim(0), plan.channels, plan.out_h, plan.out_w};
  reuse_buffer(y, shape);
  const int64_t in_plane = plan.in_h * plan.in_w, out_plane = plan.out_h * plan.out_w;
  const float* px = x.data();
  float* py = y.data();
  for_each_source(context, plan, x.dim(0) * plan.channels, [&](int64_t p, int64_t o, int64_t i) {
    py[p * out_plane + o] = i < 0 ? plan.value : px[p * in_plane + i];
  });
}

void pad_backward(Context& context, const PadPlan& plan, const Tensor& dy, Tensor& dx) {
  const int64_t in_plane = plan.in_h * plan.in_w, out_plane = plan.out_h * plan.out_w;
  const int64_t planes = dy.dim(0) * plan.channels;
  const float* pdy = dy.data();
  float* pdx = dx.data();
  parallel_elementwise(context, planes, in_plane, [&](int64_t lo, int64_t hi) {
    std::fill(pdx + lo * in_plane, pdx + hi * in_plane, 0.0f);
  });
  for_each_source(context, plan, planes, [&](int64_t p, int64_t o, int64_t i) {
    if (i >= 0) pdx[p * in_plane + i] += pdy[p * out_plane + o];
  });
}

namespace {

class Pad final : public Layer {
 public:
  explicit Pad(const Config& config)
      : padding_(read_padding(config, std::nullopt)),
        mode_(read_pad_mode(config, "mode", "constant")),
        value_(read_value(config, mode_)) {
    if (!config.has("padding")) config.at("padding");  // raises "missing required key"
  }

  std::string_view type() const override { return "pad"; }
  // backward copies or spreads dout: it reads neither tensor's values.
  bool backward_reads_inputs() const override { return false; }
  bool backward_reads_output() const override { return false; }
  bool recomputable() const override { return true; }

  // `value` is read (and so written out with the checkpoint's experiment) only for mode
  // constant: a checkpoint of a replicate pad must not carry a value its rebuild would refuse.
  static float read_value(const Config& config, PadMode mode) {
    if (mode == PadMode::kConstant) return config.get<float>("value", 0.0f);
    if (config.has("value")) {
      config.fail_key("value", fmt::format("is the fill of mode constant; mode {} fills from the "
                                           "input",
                                           mode_name(mode)));
    }
    return 0.0f;
  }

  // ONNX Pad (export_pad).
  bool export_to(ExportContext& context) const override {
    export_pad(context, context.input(), context.output(), mode_, value_, padding_);
    return true;
  }

  void forward(Context& context, std::span<const Tensor> in, Tensor& out) override {
    prepare_output(out, output_shape().with_batch(in[0].dim(0)));
    pad_forward(context, plan_, in[0], out);
  }

  void backward(Context& context, std::span<const Tensor>, const Tensor&, const Tensor& dout,
                std::span<Tensor> din) override {
    if (din[0].defined()) pad_backward(context, plan_, dout, din[0]);
  }

 protected:
  Shape infer_shape(const SetupContext&, std::span<const Shape> inputs) override {
    plan_ = make_pad_plan(mode_, value_, padding_, inputs[0]);
    return Shape{plan_.channels, plan_.out_h, plan_.out_w};
  }

 private:
  Padding padding_;
  PadMode mode_;
  float value_;
  PadPlan plan_;
};

}  // namespace

void export_pad(ExportContext& context, const std::string& input, const std::string& output,
                PadMode mode, float value, const Padding& padding) {
  if (mode == PadMode::kCircular && context.opset() < 19) {
    fail(
        "circular padding is ONNX Pad's mode 'wrap', which needs opset 19; this export writes "
        "opset {}",
        context.opset());
  }
  std::vector<std::string> inputs = {
      input, context.int64_constant("pads", {0, 0, padding.begin[0], padding.begin[1], 0, 0,
                                             padding.end[0], padding.end[1]})};
  if (mode == PadMode::kConstant) {
    Tensor fill(Shape{});
    fill.fill(value);
    inputs.push_back(context.parameter("value", fill));
  }
  context.node("Pad", std::move(inputs), {output})
      .set("mode", std::string(mode == PadMode::kConstant   ? "constant"
                               : mode == PadMode::kReflect  ? "reflect"
                               : mode == PadMode::kCircular ? "wrap"
                                                            : "edge"));
}

void register_pad(Registries& registries) { registries.layers.add<Pad>("pad"); }

}  // namespace strata::layers
