// Optimizers (adagrad, rmsprop, adam, adamw, and sgd's handling of frozen parameters), the
// per-layer training keys (lr_mult, decay_mult, freeze) and the learning-rate schedules.
//
// Each optimizer is checked against two steps worked out from its update formula (the formulas
// are in the plugin's header comment; the numbers below are those formulas evaluated in double
// precision), on a weight w = [1, -2] with gradient [0.5, 0.25] (lr_mult 1, decay_mult 1) and a
// bias b = [0.5] with gradient [1] (lr_mult 2, decay_mult 0) at lr 0.1 (rmsprop: 0.01),
// weight_decay 0.1. The 20-step comparison with torch.optim on random data is the script test
// tests/scripts/test_optimizers_vs_torch.sh.
#define BOOST_TEST_MODULE optimizers
#include <boost/test/unit_test.hpp>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <random>

#include "strata/checkpoint.hpp"
#include "strata/graph.hpp"
#include "strata/optimizer.hpp"
#include "strata/training/experiment.hpp"
#include "strata/training/trainer.hpp"
#include "test_support.hpp"

using namespace strata;
using strata::test::error_of;
using strata::test::registries;
using strata::test::yaml;

namespace {

struct TwoParams {
  Param w = Param::make("weight", {2}, "constant", 1, 1);
  Param b = Param::make("bias", {1}, "constant", 1, 1, 0.0f);
  std::shared_ptr<Optimizer> optimizer;

  explicit TwoParams(const std::string& config) {
    optimizer = registries().optimizers.create(yaml(config));
    w.value.data()[0] = 1.0f;
    w.value.data()[1] = -2.0f;
    b.value.data()[0] = 0.5f;
    b.lr_mult = 2.0f;
    const std::vector<ParamRef> refs = {{"fc/weight", &w}, {"fc/bias", &b}};
    optimizer->setup(refs);
  }
  void step(float lr) {
    w.grad.data()[0] = 0.5f;
    w.grad.data()[1] = 0.25f;
    b.grad.data()[0] = 1.0f;
    optimizer->step(lr);
  }
  // Two steps, each followed by a comparison with the expected [w0, w1, b].
  void check_two_steps(float lr, const std::array<double, 3>& first,
                       const std::array<double, 3>& second) {
    for (const auto* expected : {&first, &second}) {
      step(lr);
      const double got[3] = {w.value.data()[0], w.value.data()[1], b.value.data()[0]};
      for (int k = 0; k < 3; ++k) {
        BOOST_TEST(got[k] == (*expected)[k], boost::test_tools::tolerance(2e-6)
                                                 << "step " << (expected == &first ? 1 : 2)
                                                 << " value " << k);
      }
    }
  }
  // A copy: state() returns a fresh list, so a reference into it would dangle.
  Tensor slot(const std::string& name) {
    for (NamedTensor& t : optimizer->state()) {
      if (t.name == name) return t.tensor;
    }
    BOOST_FAIL("no state slot " << name);
    return Tensor();
  }
};

std::vector<std::string> state_names(Optimizer& optimizer) {
  std::vector<std::string> names;
  for (const NamedTensor& t : optimizer.state()) names.push_back(t.name);
  return names;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(hand_computed)

// Step 1 with L2 (adam): g_w = g + 0.1 w = [0.6, 0.05]; m = 0.1 g, v = 0.001 g^2, so after bias
// correction m^ = g and sqrt(v^) = |g|: each weight moves by lr = 0.1 against its gradient's sign
// (the bias by lr * lr_mult = 0.2): w = [0.9, -2.1], b = 0.3.
BOOST_AUTO_TEST_CASE(adam) {
  TwoParams f("{type: adam, lr: 0.1, weight_decay: 0.1}");
  f.check_two_steps(0.1f, {0.9, -2.1, 0.3}, {0.80004734, -2.19881254, 0.1});
  BOOST_TEST(
      state_names(*f.optimizer) ==
          (std::vector<std::string>{"fc/weight/exp_avg", "fc/weight/exp_avg_sq", "fc/weight/step",
                                    "fc/bias/exp_avg", "fc/bias/exp_avg_sq", "fc/bias/step"}),
      boost::test_tools::per_element());
  BOOST_TEST(f.slot("fc/weight/step").data()[0] == 2.0f);
  BOOST_TEST(f.slot("fc/weight/step").rank() == 0u);
  // m after two steps: 0.9 * 0.06 + 0.1 * (0.5 + 0.1 * 0.9) = 0.113.
  BOOST_TEST(f.slot("fc/weight/exp_avg").data()[0] == 0.113f, boost::test_tools::tolerance(1e-6f));
}

// Step 1 (adamw): w = w (1 - lr wd) = [0.99, -1.98], then the Adam step of size lr on the plain
// gradient: [0.89, -2.08]; the bias has decay_mult 0: 0.3.
BOOST_AUTO_TEST_CASE(adamw) {
  TwoParams f("{type: adamw, lr: 0.1, weight_decay: 0.1}");
  f.check_two_steps(0.1f, {0.89, -2.08, 0.3}, {0.781100004, -2.15919999, 0.1});
}

BOOST_AUTO_TEST_CASE(adam_amsgrad_keeps_the_maximum) {
  TwoParams f("{type: adam, lr: 0.1, amsgrad: true}");
  f.step(0.1f);
  f.w.grad.data()[0] = 0.01f;  // a smaller gradient: v shrinks, max_exp_avg_sq must not
  f.optimizer->step(0.1f);
  const float v = f.slot("fc/weight/exp_avg_sq").data()[0];
  const float vmax = f.slot("fc/weight/max_exp_avg_sq").data()[0];
  BOOST_TEST(v == 0.999f * 0.00025f + 0.001f * 0.0001f, boost::test_tools::tolerance(1e-5f));
  BOOST_TEST(vmax == 0.00025f, boost::test_tools::tolerance(1e-6f));
}

// Step 1 (rmsprop): g_w = [0.6, 0.05]; s = 0.01 g^2, so g / sqrt(s) = 10 sign(g): w moves by
// 10 lr = 0.1: [0.9, -2.1]; the bias by 10 * 0.02: 0.3.
BOOST_AUTO_TEST_CASE(rmsprop) {
  TwoParams f("{type: rmsprop, lr: 0.01, weight_decay: 0.1}");
  f.check_two_steps(0.01f, {0.9, -2.1, 0.3}, {0.829707117, -2.16266056, 0.158223789});
  BOOST_TEST(state_names(*f.optimizer).size() == 4u);  // square_avg and step, per parameter
}

// Centered with momentum: s = 0.01 g^2, a = 0.01 g, so sqrt(s - a^2) = sqrt(0.0099) |g| and the
// first step is lr / sqrt(0.0099) = 0.100504 (the bias 0.201008).
BOOST_AUTO_TEST_CASE(rmsprop_centered_momentum) {
  TwoParams f("{type: rmsprop, lr: 0.01, weight_decay: 0.1, momentum: 0.9, centered: true}");
  f.check_two_steps(0.01f, {0.899496235, -2.10050358, 0.298992457},
                    {0.738043036, -2.25419412, -0.0251226454});
  BOOST_TEST(
      state_names(*f.optimizer) ==
          (std::vector<std::string>{"fc/weight/square_avg", "fc/weight/momentum_buffer",
                                    "fc/weight/grad_avg", "fc/weight/step", "fc/bias/square_avg",
                                    "fc/bias/momentum_buffer", "fc/bias/grad_avg", "fc/bias/step"}),
      boost::test_tools::per_element());
}

// Step 1 (adagrad, initial accumulator 0.1): g_w = [0.6, 0.05]; s = 0.1 + g^2 = [0.46, 0.1025];
// w = w - 0.1 g / sqrt(s) = [1 - 0.0884652, -2 - 0.0156174]. Step 2 divides lr by 1 + lr_decay.
BOOST_AUTO_TEST_CASE(adagrad) {
  TwoParams f(
      "{type: adagrad, lr: 0.1, weight_decay: 0.1, lr_decay: 0.5, initial_accumulator_value: 0.1}");
  f.check_two_steps(0.1f, {0.911534826, -2.01561738, 0.309307482},
                    {0.867731142, -2.02559026, 0.217298741});
  BOOST_TEST(f.slot("fc/bias/sum").data()[0] == 2.1f, boost::test_tools::tolerance(1e-6f));
}

BOOST_AUTO_TEST_CASE(torch_defaults) {
  // The base rates of torch.optim: adam/adamw 1e-3, rmsprop/adagrad 1e-2.
  BOOST_TEST(registries().optimizers.create(yaml("{type: adam}"))->base_lr() == 1e-3f);
  BOOST_TEST(registries().optimizers.create(yaml("{type: adamw}"))->base_lr() == 1e-3f);
  BOOST_TEST(registries().optimizers.create(yaml("{type: rmsprop}"))->base_lr() == 1e-2f);
  BOOST_TEST(registries().optimizers.create(yaml("{type: adagrad}"))->base_lr() == 1e-2f);
  // adamw decays by default (0.01), adam does not: one step on a zero gradient shows it.
  for (const char* type : {"adam", "adamw"}) {
    TwoParams f(fmt::format("{{type: {}}}", type));
    f.w.grad.fill(0.0f);
    f.b.grad.fill(0.0f);
    f.optimizer->step(1e-3f);
    const double expected = std::string(type) == "adamw" ? 1.0 - 1e-3 * 1e-2 : 1.0;
    BOOST_TEST(f.w.value.data()[0] == expected, boost::test_tools::tolerance(1e-7) << type);
  }
}

BOOST_AUTO_TEST_CASE(config_errors) {
  auto error = [](const std::string& config) {
    return error_of([&] { registries().optimizers.create(yaml(config)); });
  };
  STRATA_CHECK_CONTAINS(error("{type: adam, lr: 0}"), "lr: must be positive, found 0");
  STRATA_CHECK_CONTAINS(error("{type: adam, betas: [0.9]}"), "betas: expected [beta1, beta2]");
  STRATA_CHECK_CONTAINS(error("{type: adamw, betas: [0.9, 1.0]}"),
                        "each in [0, 1), found [0.9, 1]");
  STRATA_CHECK_CONTAINS(error("{type: adamw, weight_decay: -1}"), "weight_decay: must be >= 0");
  STRATA_CHECK_CONTAINS(error("{type: rmsprop, alpha: 1}"), "alpha: must be in [0, 1), found 1");
  STRATA_CHECK_CONTAINS(error("{type: rmsprop, momentum: -0.5}"), "momentum: must be in [0, 1)");
  STRATA_CHECK_CONTAINS(error("{type: adagrad, lr_decay: -1}"), "lr_decay: must be >= 0");
  STRATA_CHECK_CONTAINS(error("{type: adagrad, eps: -1e-3}"), "eps: must be >= 0, found -0.001");
  STRATA_CHECK_CONTAINS(error("{type: adam, beta1: 0.8}"), "unknown key 'beta1'");
  STRATA_CHECK_CONTAINS(error("{type: adma}"), "did you mean 'adam'?");
}

BOOST_AUTO_TEST_SUITE_END()

// ------------------------------------------------------------------------------------------------
// lr_mult, decay_mult and freeze
// ------------------------------------------------------------------------------------------------

BOOST_AUTO_TEST_SUITE(per_layer_keys)

// Every optimizer leaves a frozen parameter and its state exactly as they were (no step count
// either), and updates the others.
BOOST_AUTO_TEST_CASE(every_optimizer_skips_frozen_parameters) {
  std::mt19937 rng(std::random_device{}());
  for (const char* config :
       {"{type: sgd, lr: 0.1, momentum: 0.9, weight_decay: 0.1}", "{type: adam, weight_decay: 0.1}",
        "{type: adamw}", "{type: rmsprop, momentum: 0.5, centered: true}",
        "{type: adagrad, weight_decay: 0.1}"}) {
    Param frozen = Param::make("weight", {3, 4}, "constant", 4, 3);
    Param trained = Param::make("weight", {5}, "constant", 5, 5);
    for (Param* p : {&frozen, &trained}) {
      p->value = test::random_tensor(p->value.shape(), rng);
      p->grad = test::random_tensor(p->value.shape(), rng);
    }
    frozen.frozen = true;
    auto optimizer = registries().optimizers.create(yaml(config));
    const std::vector<ParamRef> refs = {{"a/weight", &frozen}, {"b/weight", &trained}};
    optimizer->setup(refs);
    const Tensor frozen_before = frozen.value.clone(), trained_before = trained.value.clone();
    optimizer->step(0.05f);
    optimizer->step(0.05f);
    BOOST_TEST(test::max_abs_diff(frozen.value, frozen_before) == 0.0f, config);
    BOOST_TEST(test::max_abs_diff(trained.value, trained_before) > 0.0f, config);
    for (const NamedTensor& t : optimizer->state()) {
      if (!t.name.starts_with("a/")) continue;
      for (float v : t.tensor.span()) {
        // sgd's momentum and the moments start at 0, adagrad's sum at initial_accumulator_value 0.
        BOOST_TEST(v == 0.0f, config << ": " << t.name << " changed");
      }
    }
  }
}

// lr_mult and decay_mult reach every optimizer through step(): multiplying lr_mult by 4 is the same
// as multiplying the rate by 4 for that parameter (adam, with weight decay through decay_mult).
BOOST_AUTO_TEST_CASE(lr_mult_scales_the_rate_and_decay_mult_the_decay) {
  std::mt19937 rng(std::random_device{}());
  const Tensor start = test::random_tensor(Shape{6}, rng);
  const Tensor grad = test::random_tensor(Shape{6}, rng);
  auto run = [&](const std::string& config, float lr, float lr_mult, float decay_mult) {
    Param p = Param::make("weight", {6}, "constant", 6, 6, decay_mult);
    p.value.copy_from(start);
    p.grad.copy_from(grad);
    p.lr_mult = lr_mult;
    auto optimizer = registries().optimizers.create(yaml(config));
    const std::vector<ParamRef> refs = {{"fc/weight", &p}};
    optimizer->setup(refs);
    optimizer->step(lr);
    return p.value.clone();
  };
  for (const char* type : {"sgd", "adam", "adamw", "rmsprop", "adagrad"}) {
    const std::string with_decay = fmt::format("{{type: {}, lr: 0.1, weight_decay: 0.2}}", type);
    BOOST_TEST(test::max_abs_diff(run(with_decay, 0.0625f, 4.0f, 1.0f),
                                  run(with_decay, 0.25f, 1.0f, 1.0f)) == 0.0f,
               type);
    const std::string half = fmt::format("{{type: {}, lr: 0.1, weight_decay: 0.1}}", type);
    BOOST_TEST(test::max_abs_diff(run(with_decay, 0.01f, 1.0f, 0.5f),
                                  run(half, 0.01f, 1.0f, 1.0f)) < 1e-7f,
               type);
    const std::string none = fmt::format("{{type: {}, lr: 0.1, weight_decay: 0}}", type);
    BOOST_TEST(test::max_abs_diff(run(with_decay, 0.01f, 1.0f, 0.0f),
                                  run(none, 0.01f, 1.0f, 1.0f)) == 0.0f,
               type);
  }
}

BOOST_AUTO_TEST_CASE(yaml_keys_set_the_multipliers) {
  Rng rng(1);
  Graph graph(yaml(R"(
input: [3, 6, 6]
layers:
  - {name: conv1, type: conv2d, out_channels: 4, kernel: 3, lr_mult: 0.1, freeze: true}
  - {name: relu1, type: relu, freeze: true}
  - {name: bn1, type: batch_norm}
  - {name: fc1, type: linear, out_features: 5, lr_mult: {bias: 2}, decay_mult: {weight: 3}}
  - {name: fc2, type: linear, out_features: 3, decay_mult: 0.5}
  - {name: fc3, type: linear, out_features: 2}
)"),
              registries(), test::backend(), rng);
  struct Expect {
    const char* key;
    float lr_mult, decay_mult;
    bool frozen;
  };
  const Expect expected[] = {{"conv1/weight", 0.1f, 1.0f, true}, {"conv1/bias", 0.1f, 0.0f, true},
                             {"bn1/weight", 1.0f, 0.0f, false},  {"bn1/bias", 1.0f, 0.0f, false},
                             {"fc1/weight", 1.0f, 3.0f, false},  {"fc1/bias", 2.0f, 0.0f, false},
                             {"fc2/weight", 1.0f, 0.5f, false},  {"fc2/bias", 1.0f, 0.5f, false},
                             {"fc3/weight", 1.0f, 1.0f, false},  {"fc3/bias", 1.0f, 0.0f, false}};
  const std::vector<ParamRef> params = graph.params();
  BOOST_TEST_REQUIRE(params.size() == std::size(expected));
  for (std::size_t i = 0; i < params.size(); ++i) {
    BOOST_TEST(params[i].key == expected[i].key);
    BOOST_TEST(params[i].param->lr_mult == expected[i].lr_mult, params[i].key);
    BOOST_TEST(params[i].param->decay_mult == expected[i].decay_mult, params[i].key);
    BOOST_TEST(params[i].param->frozen == expected[i].frozen, params[i].key);
  }
}

BOOST_AUTO_TEST_CASE(yaml_key_errors) {
  auto build = [](const std::string& layer) {
    return error_of([&] {
      Rng rng(1);
      Graph g(Config::parse_string("input: [4]\nlayers:\n  - " + layer + "\n", "net.yaml"),
              registries(), test::backend(), rng);
    });
  };
  const std::string typo = build("{name: fc, type: linear, out_features: 2, lr_mult: {wieght: 2}}");
  STRATA_CHECK_CONTAINS(typo, "net.yaml:3:");
  STRATA_CHECK_CONTAINS(typo, "layer 'fc' has no parameter 'wieght' (lr_mult)");
  STRATA_CHECK_CONTAINS(typo, "did you mean 'weight'?");
  STRATA_CHECK_CONTAINS(build("{name: fc, type: linear, out_features: 2, decay_mult: -1}"),
                        "layers[0].decay_mult: must be a finite number >= 0, found -1");
  STRATA_CHECK_CONTAINS(build("{name: fc, type: linear, out_features: 2, lr_mult: [1, 2]}"),
                        "expected a number (every parameter of the layer) or a map");
  STRATA_CHECK_CONTAINS(build("{name: fc, type: linear, out_features: 2, freeze: maybe}"),
                        "layers[0].freeze");
}

// A frozen front runs no backward (its gradients keep whatever they held), a frozen layer between
// trainable ones passes the gradient through, and trainable layers get theirs.
BOOST_AUTO_TEST_CASE(backward_skips_the_frozen_front) {
  std::mt19937 data_rng(std::random_device{}());
  Rng rng(2);
  auto backend = registries().backends.create("reference", Config{});
  auto build = [&](const std::string& freeze_conv1, const std::string& freeze_fc1) {
    return std::make_unique<Graph>(yaml(fmt::format(R"(
input: [2, 5, 5]
layers:
  - {{name: conv1, type: conv2d, out_channels: 3, kernel: 3, freeze: {}}}
  - {{name: act1, type: tanh}}
  - {{name: fc1, type: linear, out_features: 6, freeze: {}}}
  - {{name: act2, type: tanh}}
  - {{name: fc2, type: linear, out_features: 4}}
)",
                                                    freeze_conv1, freeze_fc1)),
                                   registries(), test::backend(), rng);
  };
  const Tensor x = test::random_tensor(Shape{3, 2, 5, 5}, data_rng);
  const Tensor dout = test::random_tensor(Shape{3, 4}, data_rng);
  Context context{true, &rng, backend.get()};
  auto grads_after_backward = [&](Graph& graph) {
    for (const ParamRef& ref : graph.params())
      ref.param->grad.fill(std::numeric_limits<float>::quiet_NaN());
    graph.forward(context, x);
    graph.backward(context, dout);
    std::map<std::string, bool> computed;
    for (const ParamRef& ref : graph.params())
      computed[ref.key] = !std::isnan(ref.param->grad.data()[0]);
    return computed;
  };
  auto front = build("true", "true");
  auto computed = grads_after_backward(*front);
  BOOST_TEST(!computed["conv1/weight"]);
  BOOST_TEST(!computed["fc1/weight"]);
  BOOST_TEST(computed["fc2/weight"]);

  // conv1 trainable, fc1 frozen: fc1's backward must run so conv1 gets its gradient, and that
  // gradient equals the one of the fully trainable network (same weights).
  Rng same(9);
  rng = same;
  auto middle = build("false", "true");
  rng = same;
  auto all = build("false", "false");
  computed = grads_after_backward(*middle);
  BOOST_TEST(computed["conv1/weight"]);
  grads_after_backward(*all);
  BOOST_TEST(test::max_abs_diff(middle->params()[0].param->grad, all->params()[0].param->grad) ==
             0.0f);
}

BOOST_AUTO_TEST_SUITE_END()

// ------------------------------------------------------------------------------------------------
// Schedules
// ------------------------------------------------------------------------------------------------

BOOST_AUTO_TEST_SUITE(schedules)

std::shared_ptr<Schedule> make_schedule(const std::string& config, float base_lr,
                                        int64_t epochs = 10, int64_t iterations_per_epoch = 4,
                                        std::vector<std::string> metrics = {
                                            "train_loss", "train_accuracy", "val_loss",
                                            "val_accuracy"}) {
  auto schedule = registries().schedules.create(yaml(config));
  SchedulePlan plan;
  plan.base_lr = base_lr;
  plan.epochs = epochs;
  plan.iterations_per_epoch = iterations_per_epoch;
  plan.metrics = std::move(metrics);
  schedule->setup(plan);
  return schedule;
}

// The rate at the first iteration of each epoch.
std::vector<double> per_epoch(Schedule& schedule, int64_t epochs,
                              int64_t iterations_per_epoch = 4) {
  std::vector<double> rates;
  for (int64_t e = 0; e < epochs; ++e) rates.push_back(schedule.lr(e, e * iterations_per_epoch));
  return rates;
}

void check_rates(const std::vector<double>& got, const std::vector<double>& expected,
                 const std::string& what) {
  BOOST_TEST_REQUIRE(got.size() == expected.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    BOOST_TEST(got[i] == expected[i], boost::test_tools::tolerance(1e-6) << what << " epoch " << i);
  }
}

BOOST_AUTO_TEST_CASE(constant_and_step) {
  check_rates(per_epoch(*make_schedule("{type: constant}", 0.3f), 3), {0.3, 0.3, 0.3}, "constant");
  check_rates(per_epoch(*make_schedule("{type: step, step_size: 3, gamma: 0.5}", 0.2f), 8),
              {0.2, 0.2, 0.2, 0.1, 0.1, 0.1, 0.05, 0.05}, "step");
  check_rates(per_epoch(*make_schedule("{type: step, step_size: 2}", 1.0f), 6),
              {1, 1, 0.1, 0.1, 0.01, 0.01}, "step, default gamma");
  STRATA_CHECK_CONTAINS(error_of([] { registries().schedules.create(yaml("{type: step}")); }),
                        "missing required key 'step_size'");
  STRATA_CHECK_CONTAINS(
      error_of([] { registries().schedules.create(yaml("{type: step, step_size: 0}")); }),
      "step_size: must be at least 1");
}

BOOST_AUTO_TEST_CASE(multistep) {
  // MultiStepLR: the rate drops when the epoch reaches a milestone.
  check_rates(
      per_epoch(*make_schedule("{type: multistep, milestones: [2, 5], gamma: 0.5}", 0.2f), 7),
      {0.2, 0.2, 0.1, 0.1, 0.1, 0.05, 0.05}, "multistep");
  check_rates(per_epoch(*make_schedule("{type: multistep, milestones: [1]}", 1.0f), 3),
              {1, 0.1, 0.1}, "multistep, default gamma");
  STRATA_CHECK_CONTAINS(
      error_of(
          [] { registries().schedules.create(yaml("{type: multistep, milestones: [5, 2]}")); }),
      "milestones: must be increasing epochs >= 1, found [5, 2]");
  STRATA_CHECK_CONTAINS(
      error_of([] { registries().schedules.create(yaml("{type: multistep, milestones: []}")); }),
      "milestones: needs at least one epoch");
}

BOOST_AUTO_TEST_CASE(exponential) {
  check_rates(per_epoch(*make_schedule("{type: exponential, gamma: 0.9}", 0.5f), 4),
              {0.5, 0.45, 0.405, 0.3645}, "exponential");
  STRATA_CHECK_CONTAINS(
      error_of([] { registries().schedules.create(yaml("{type: exponential}")); }),
      "missing required key 'gamma'");
  STRATA_CHECK_CONTAINS(
      error_of([] { registries().schedules.create(yaml("{type: exponential, gamma: 0}")); }),
      "gamma: must be positive");
}

BOOST_AUTO_TEST_CASE(cosine) {
  // eta_min + (base - eta_min)(1 + cos(pi e / T)) / 2 with T = train.epochs = 10 by default.
  auto cosine = make_schedule("{type: cosine, eta_min: 0.001}", 0.1f, 10);
  BOOST_TEST(cosine->lr(0, 0) == 0.1, boost::test_tools::tolerance(1e-6));
  BOOST_TEST(cosine->lr(5, 20) == 0.0505, boost::test_tools::tolerance(1e-6));
  BOOST_TEST(cosine->lr(2, 9) == 0.001 + 0.099 * (1 + std::cos(M_PI * 0.2)) / 2,
             boost::test_tools::tolerance(1e-6));
  BOOST_TEST(cosine->lr(10, 40) == 0.001, boost::test_tools::tolerance(1e-6));
  BOOST_TEST(cosine->lr(12, 48) == 0.001, boost::test_tools::tolerance(1e-6));  // held at eta_min
  // Within an epoch the rate is constant, unless per_iteration: iteration 10 of 4 per epoch in
  // epoch 2 is t = 2.5.
  BOOST_TEST(cosine->lr(2, 10) == cosine->lr(2, 8));
  auto smooth =
      make_schedule("{type: cosine, eta_min: 0.001, epochs: 5, per_iteration: true}", 0.1f, 10);
  BOOST_TEST(smooth->lr(2, 10) == 0.001 + 0.099 * (1 + std::cos(M_PI * 2.5 / 5)) / 2,
             boost::test_tools::tolerance(1e-6));
  BOOST_TEST(smooth->lr(5, 20) == 0.001, boost::test_tools::tolerance(1e-6));
  STRATA_CHECK_CONTAINS(
      error_of([] { registries().schedules.create(yaml("{type: cosine, epochs: 0}")); }),
      "epochs: must be at least 1");
}

BOOST_AUTO_TEST_CASE(warmup) {
  // Over 4 epochs from 0.25: factors 0.25, 0.4375, 0.625, 0.8125, 1, times step's 1, 1, 0.1, ...
  auto by_epoch = make_schedule(
      "{type: warmup, epochs: 4, start_factor: 0.25, then: {type: step, step_size: 2, gamma: 0.1}}",
      1.0f);
  check_rates(per_epoch(*by_epoch, 6), {0.25, 0.4375, 0.0625, 0.08125, 0.01, 0.01},
              "warmup by epoch");
  // Over 100 iterations from 0.1, then constant (the default).
  auto by_iteration = make_schedule("{type: warmup, iterations: 100, start_factor: 0.1}", 2.0f);
  BOOST_TEST(by_iteration->lr(0, 0) == 0.2, boost::test_tools::tolerance(1e-6));
  BOOST_TEST(by_iteration->lr(12, 50) == 1.1, boost::test_tools::tolerance(1e-6));
  BOOST_TEST(by_iteration->lr(25, 100) == 2.0, boost::test_tools::tolerance(1e-6));
  BOOST_TEST(by_iteration->lr(40, 160) == 2.0, boost::test_tools::tolerance(1e-6));
  // In front of cosine, torch's default start factor 1/3.
  auto cosine = make_schedule("{type: warmup, epochs: 2, then: {type: cosine}}", 1.0f, 4);
  check_rates(per_epoch(*cosine, 4),
              {1.0 / 3.0, (2.0 / 3.0) * (1 + std::cos(M_PI / 4)) / 2, 0.5,
               (1 + std::cos(3 * M_PI / 4)) / 2},
              "warmup + cosine");
  auto error = [](const std::string& config) {
    return error_of([&] { registries().schedules.create(yaml(config)); });
  };
  STRATA_CHECK_CONTAINS(error("{type: warmup, epochs: 2, iterations: 5}"),
                        "exactly one of `epochs` and `iterations`");
  STRATA_CHECK_CONTAINS(error("{type: warmup}"), "exactly one of `epochs` and `iterations`");
  STRATA_CHECK_CONTAINS(error("{type: warmup, epochs: 2, start_factor: 0}"),
                        "start_factor: must be in (0, 1]");
  STRATA_CHECK_CONTAINS(error("{type: warmup, epochs: 2, then: {type: cosin}}"),
                        "then.type: unknown schedule type 'cosin'");
  STRATA_CHECK_CONTAINS(error("{type: warmup, epochs: 2, then: {type: cosine, eta: 1}}"),
                        "then.eta: unknown key 'eta'");
}

// ReduceLROnPlateau on validation accuracy (mode max), patience 2, factor 0.5, cooldown 1.
BOOST_AUTO_TEST_CASE(plateau_reacts_to_the_metric) {
  auto plateau = make_schedule("{type: plateau, patience: 2, factor: 0.5, cooldown: 1}", 1.0f);
  const double accuracy[] = {0.5, 0.6, 0.6, 0.60005, 0.59, 0.58, 0.57, 0.57, 0.57, 0.7, 0.7};
  // epoch:                    0    1    2     3       4     5     6     7     8     9    10
  // 0.60005 is no improvement: the threshold is relative, 0.6 * (1 + 1e-4) = 0.60006. The third bad
  // epoch in a row (4) halves the rate; epoch 5 is cooldown (not counted); 6, 7, 8 are bad again
  // and 8 halves it once more.
  const double expected_after[] = {1, 1, 1, 1, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25};
  for (int e = 0; e < 11; ++e) {
    plateau->on_epoch_end(e, {{"val_accuracy", accuracy[e]}, {"val_loss", 1.0}});
    BOOST_TEST(plateau->lr(e + 1, 0) == expected_after[e], boost::test_tools::tolerance(1e-7)
                                                               << "epoch " << e);
  }
  // Mode min on a loss (the default for a loss), with min_lr as a floor.
  auto by_loss = make_schedule("{type: plateau, metric: val_loss, patience: 0, min_lr: 0.3}", 1.0f);
  const double loss[] = {2.0, 1.5, 1.6, 1.4, 1.4, 1.4};
  const double after[] = {1, 1, 0.3, 0.3, 0.3, 0.3};
  for (int e = 0; e < 6; ++e) {
    by_loss->on_epoch_end(e, {{"val_loss", loss[e]}});
    BOOST_TEST(by_loss->lr(e + 1, 0) == after[e], boost::test_tools::tolerance(1e-7)
                                                      << "epoch " << e);
  }
  // abs threshold: an increase of 0.01 counts only when it beats the threshold 0.02.
  auto absolute =
      make_schedule("{type: plateau, patience: 0, threshold: 0.02, threshold_mode: abs}", 1.0f);
  absolute->on_epoch_end(0, {{"val_accuracy", 0.5}});
  absolute->on_epoch_end(1, {{"val_accuracy", 0.51}});
  BOOST_TEST(absolute->lr(2, 0) == 0.1f);
}

// The state round-trips: a fresh plateau given the saved state makes the same decisions.
BOOST_AUTO_TEST_CASE(plateau_state_restores) {
  std::mt19937 rng(std::random_device{}());
  std::uniform_real_distribution<double> noise(0.0, 1.0);
  const std::string config = "{type: plateau, patience: 1, factor: 0.5, cooldown: 1}";
  auto straight = make_schedule(config, 0.8f);
  for (int e = 0; e < 4; ++e) straight->on_epoch_end(e, {{"val_accuracy", noise(rng)}});
  auto resumed = make_schedule(config, 0.8f);
  std::vector<NamedTensor> saved = straight->state(), into = resumed->state();
  BOOST_TEST_REQUIRE(saved.size() == 4u);
  BOOST_TEST(saved[0].name == "best");
  BOOST_TEST(saved[1].name == "num_bad_epochs");
  BOOST_TEST(saved[2].name == "cooldown_counter");
  BOOST_TEST(saved[3].name == "lr");
  for (std::size_t i = 0; i < saved.size(); ++i) into[i].tensor.copy_from(saved[i].tensor);
  for (int e = 4; e < 30; ++e) {
    const double value = noise(rng);
    straight->on_epoch_end(e, {{"val_accuracy", value}});
    resumed->on_epoch_end(e, {{"val_accuracy", value}});
    BOOST_TEST(straight->lr(e + 1, 0) == resumed->lr(e + 1, 0));
  }
  // Nested in warmup, the state is the inner schedule's, under then/.
  auto warm = make_schedule("{type: warmup, epochs: 1, then: {type: plateau}}", 1.0f);
  BOOST_TEST(warm->state().at(0).name == "then/best");
}

BOOST_AUTO_TEST_CASE(plateau_errors) {
  // val_accuracy (the default) without a validation split: an error at setup that says why.
  const std::string missing = error_of([] {
    make_schedule("{type: plateau}", 1.0f, 10, 4, {"train_loss", "train_accuracy"});
  });
  STRATA_CHECK_CONTAINS(missing, "this run reports no metric 'val_accuracy'");
  STRATA_CHECK_CONTAINS(missing, "data.validation > 0");
  STRATA_CHECK_CONTAINS(
      error_of([] { make_schedule("{type: plateau, metric: val_acuracy}", 1.0f); }),
      "did you mean 'val_accuracy'?");
  STRATA_CHECK_CONTAINS(error_of([] { make_schedule("{type: plateau, mode: maximum}", 1.0f); }),
                        "mode: expected 'max' or 'min', found 'maximum'");
  STRATA_CHECK_CONTAINS(error_of([] { make_schedule("{type: plateau, factor: 1}", 1.0f); }),
                        "factor: must be in (0, 1), found 1");
}

BOOST_AUTO_TEST_SUITE_END()

// ------------------------------------------------------------------------------------------------
// In the trainer: resume equivalence per optimizer, and the per-iteration learning rate
// ------------------------------------------------------------------------------------------------

BOOST_AUTO_TEST_SUITE(training)

namespace fs = std::filesystem;

const char* kTinyExperiment = R"(
seed: 4
backend: reference
threads: 1
data: {type: synthetic, classes: 4, shape: [1, 8, 8], train_size: 420, test_size: 100, seed: 6,
       validation: 100}
model:
  input: [1, 8, 8]
  layers:
    - {name: conv1, type: conv2d, out_channels: 4, kernel: 3, padding: 1, lr_mult: 0.5}
    - {name: relu1, type: relu}
    - {name: pool1, type: max_pool, kernel: 2}
    - {name: fc1, type: linear, out_features: 4, decay_mult: {bias: 1}}
optimizer:
  type: sgd
  lr: 0.05
  schedule: {type: warmup, iterations: 15, start_factor: 0.2,
             then: {type: plateau, metric: val_loss, patience: 0, factor: 0.5}}
train: {epochs: 3, batch_size: 32, log_every: 3}
)";

TrainSummary run_tiny(const fs::path& out, bool resume,
                      const std::vector<std::pair<std::string, std::string>>& sets) {
  Config config = Config::parse_string(kTinyExperiment, "tiny.yaml");
  for (const auto& [key, value] : sets) config.set(key, value);
  TrainOptions options;
  options.out_dir = out;
  options.resume = resume;
  options.progress = "none";
  return train_experiment(config, registries(), options);
}

// Every dataset of `group` in both files, bit for bit.
void check_group_identical(const fs::path& a, const fs::path& b, const std::string& group,
                           std::vector<NamedTensor> tensors, const std::string& what) {
  std::vector<NamedTensor> other;
  for (const NamedTensor& t : tensors) other.push_back({t.name, Tensor(t.tensor.shape())});
  load_checkpoint_tensors(a, group, tensors);
  load_checkpoint_tensors(b, group, other);
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    BOOST_TEST(test::max_abs_diff(tensors[i].tensor, other[i].tensor) == 0.0f,
               what << ": /" << group << "/" << tensors[i].name);
  }
}

// For each optimizer: three epochs straight, and one epoch then a resume to three, give
// bit-identical weights, optimizer state (step counts included), schedule state and history on
// the reference backend. The plateau (patience 0, and an improvement must halve the validation
// loss) halves the rate for epoch 3 at the end of epoch 2, from the state the first run saved.
BOOST_AUTO_TEST_CASE(resume_is_bit_identical_for_every_optimizer) {
  const std::string schedule =
      "{type: warmup, iterations: 15, start_factor: 0.2, then: {type: plateau, metric: val_loss, "
      "patience: 0, factor: 0.5, threshold: 0.5}}";
  for (const char* optimizer :
       {"{type: sgd, lr: 0.05, momentum: 0.9, nesterov: true, weight_decay: 0.001}",
        "{type: adam, lr: 0.01, weight_decay: 0.001, amsgrad: true}", "{type: adamw, lr: 0.01}",
        "{type: rmsprop, lr: 0.002, momentum: 0.5, centered: true, weight_decay: 0.001}",
        "{type: adagrad, lr: 0.05, lr_decay: 0.01, initial_accumulator_value: 0.1}"}) {
    test::TempDir straight, interrupted;
    const std::vector<std::pair<std::string, std::string>> sets = {
        {"optimizer", optimizer}, {"optimizer.schedule", schedule}};
    auto with = [&](std::pair<std::string, std::string> extra) {
      auto all = sets;
      all.push_back(std::move(extra));
      return all;
    };
    run_tiny(straight.path(), false, sets);
    run_tiny(interrupted.path(), false, with({"train.epochs", "1"}));
    run_tiny(interrupted.path(), true, sets);

    // Objects of the same shapes name what to compare.
    Rng rng(1);
    Graph graph(yaml(kTinyExperiment).at("model"), registries(), test::backend(), rng);
    auto optimizer_object = registries().optimizers.create(yaml(optimizer));
    optimizer_object->setup(graph.params());
    auto schedule_object = registries().schedules.create(yaml(schedule));
    schedule_object->setup({0.05f, 3, 10, {"val_loss"}});
    const fs::path a = straight / "model.h5", b = interrupted / "model.h5";
    check_group_identical(a, b, "model", graph.state_tensors(), optimizer);
    check_group_identical(a, b, "optimizer", optimizer_object->state(), optimizer);
    check_group_identical(a, b, "schedule", schedule_object->state(), optimizer);

    const auto state_a = load_checkpoint_training_state(a),
               state_b = load_checkpoint_training_state(b);
    BOOST_TEST_REQUIRE((state_a && state_b));
    BOOST_TEST(state_a->iteration == 3 * 10);
    BOOST_TEST(state_b->iteration == 3 * 10);
    for (const char* metric :
         {"train_loss", "val_loss", "lr", "iterations/iteration", "iterations/lr"}) {
      BOOST_TEST(state_a->history.at(metric) == state_b->history.at(metric),
                 optimizer << ": " << metric);
    }
    // The plateau acted: the last epoch ran below the base rate.
    BOOST_TEST(state_a->history.at("lr").back() == 0.5 * optimizer_object->base_lr(), optimizer);
  }
}

// With log_every 3, /history/iterations holds iterations 3, 6, 9, ... (the count of steps taken)
// and the rate the last of them used: the warmup ramp over the first 15 iterations is visible.
BOOST_AUTO_TEST_CASE(learning_rate_per_iteration_in_the_history) {
  test::TempDir dir;
  run_tiny(dir.path(), false,
           {{"train.epochs", "2"}, {"optimizer.schedule.then", "{type: constant}"}});
  const auto state = load_checkpoint_training_state(dir / "model.h5");
  BOOST_TEST_REQUIRE(state.has_value());
  const std::vector<double>& iterations = state->history.at("iterations/iteration");
  const std::vector<double>& lr = state->history.at("iterations/lr");
  BOOST_TEST_REQUIRE(iterations.size() == 6u);  // 20 iterations: 3, 6, ..., 18
  BOOST_TEST_REQUIRE(lr.size() == iterations.size());
  for (std::size_t k = 0; k < iterations.size(); ++k) {
    BOOST_TEST(iterations[k] == 3.0 * static_cast<double>(k + 1));
    const double t = std::min(iterations[k] - 1.0, 15.0);
    const double expected = 0.05 * (0.2 + 0.8 * t / 15.0);
    BOOST_TEST(lr[k] == expected, boost::test_tools::tolerance(1e-6)
                                      << "iteration " << iterations[k]);
  }
  STRATA_CHECK_CONTAINS(error_of([&] {
                          run_tiny(dir.path(), false, {{"train.log_every", "-1"}});
                        }),
                        "train.log_every: must be 0 (off) or positive");
}

// optimizer.lr_scaling in a run: 320 training images in batches of 32 (10 iterations per epoch)
// against a reference batch of 16 give k = 2, lr 0.05 -> 0.1, ramped over the first epoch and
// then under a step schedule; the history records the rate each step used. A resume may not change
// the rule.
BOOST_AUTO_TEST_CASE(lr_scaling_sets_the_rate_of_every_step) {
  test::TempDir dir;
  const std::vector<std::pair<std::string, std::string>> sets = {
      {"optimizer.schedule", "{type: step, step_size: 2, gamma: 0.1}"},
      {"optimizer.lr_scaling", "{rule: linear, reference_batch: 16, warmup_epochs: 1}"},
      {"train.log_every", "1"}};
  run_tiny(dir.path(), false, sets);
  const auto state = load_checkpoint_training_state(dir / "model.h5");
  BOOST_TEST_REQUIRE(state.has_value());
  const std::vector<double>& lr = state->history.at("iterations/lr");
  BOOST_TEST_REQUIRE(lr.size() == 30u);
  for (std::size_t i = 0; i < lr.size(); ++i) {
    const double step = static_cast<double>(i);  // the 0-based iteration that used lr[i]
    const double expected = i < 10 ? 0.1 * (0.5 + 0.5 * step / 10) : i < 20 ? 0.1 : 0.01;
    BOOST_TEST(lr[i] == expected, boost::test_tools::tolerance(1e-6) << "iteration " << i);
  }
  auto changed = sets;
  changed.push_back({"optimizer.lr_scaling.reference_batch", "32"});
  changed.push_back({"train.epochs", "4"});
  STRATA_CHECK_CONTAINS(error_of([&] { run_tiny(dir.path(), true, changed); }),
                        "optimizer.lr_scaling.reference_batch");
}

BOOST_AUTO_TEST_SUITE_END()

// ------------------------------------------------------------------------------------------------
// optimizer.lr_scaling (strata/training/lr_scaling.hpp): Goyal et al. 2017's linear scaling with a
// gradual warmup, read by Experiment::read.
// ------------------------------------------------------------------------------------------------

BOOST_AUTO_TEST_SUITE(lr_scaling)

const char* kScalingExperiment = R"(model:
  input: [1, 4, 4]
  layers:
    - {name: fc1, type: linear, out_features: 3}
optimizer:
  type: sgd
  lr: 0.1
  momentum: 0.9
  schedule: {type: multistep, milestones: [3]}
  lr_scaling: {rule: linear, reference_batch: 256, warmup_epochs: 2}
train: {epochs: 4, batch_size: 1024}
)";

Experiment read_scaling(const std::vector<std::pair<std::string, std::string>>& sets = {}) {
  Config config = Config::parse_string(kScalingExperiment, "scaling.yaml");
  for (const auto& [key, value] : sets) config.set(key, value);
  return Experiment::read(config, registries(), Experiment::Scope::optimization);
}

// The rates of `epochs` epochs of 5 iterations, from the experiment's (wrapped) schedule.
std::vector<double> rates(Experiment& experiment, int64_t epochs) {
  experiment.schedule->setup({experiment.optimizer->base_lr(), epochs, 5, {"train_loss"}});
  std::vector<double> result;
  for (int64_t i = 0; i < epochs * 5; ++i) result.push_back(experiment.schedule->lr(i / 5, i));
  return result;
}

// Batch 1024 against 256: k = 4, lr 0.1 -> 0.4. Over the first 2 epochs of 5 iterations the rate
// is (1/k + (1 - 1/k) i / 10) * 0.4, from 0.1 at iteration 0; then 0.4; the multistep schedule's
// drop at epoch 3 applies to 0.4.
BOOST_AUTO_TEST_CASE(linear_scaling_with_warmup_follows_the_formula) {
  Experiment experiment = read_scaling();
  BOOST_TEST_REQUIRE(experiment.lr_scaling.has_value());
  const std::vector<double> got = rates(experiment, 4);
  for (int64_t i = 0; i < 20; ++i) {
    const double base = 0.1, k = 1024.0 / 256.0, peak = base * k;
    const double expected = i < 10   ? (1 / k + (1 - 1 / k) * i / 10.0) * peak
                            : i < 15 ? peak
                                     : 0.1 * peak;
    BOOST_TEST(got[static_cast<std::size_t>(i)] == expected, boost::test_tools::tolerance(1e-6)
                                                                 << "iteration " << i);
  }
  BOOST_TEST(got[0] == 0.1, boost::test_tools::tolerance(1e-7));  // starts at optimizer.lr
  BOOST_TEST(experiment.lr_scaling->describe(0.1f, 20) ==
             "lr scaling (linear, Goyal et al. 2017): global batch 1024 / reference 256: lr 0.1 "
             "-> 0.4, warmed up over 2 epochs");
  BOOST_TEST(experiment.lr_scaling->describe(0.1f, 1) ==
             "lr scaling (linear, Goyal et al. 2017): global batch 1024 / reference 256: lr 0.1 "
             "-> 0.4, warmed up over 2 epochs (longer than this run's 1: the rate stays below "
             "0.4)");

  // No warmup: the scaled rate from the first iteration.
  Experiment sudden = read_scaling({{"optimizer.lr_scaling.warmup_epochs", "0"}});
  const std::vector<double> flat = rates(sudden, 2);
  for (double rate : flat) BOOST_TEST(rate == 0.4, boost::test_tools::tolerance(1e-6));
  BOOST_TEST(sudden.lr_scaling->describe(0.1f, 4).ends_with("lr 0.1 -> 0.4, no warmup"));
  // A batch below the reference scales the rate down, with no ramp.
  Experiment small = read_scaling({{"train.batch_size", "64"}});
  for (double rate : rates(small, 2)) BOOST_TEST(rate == 0.025, boost::test_tools::tolerance(1e-6));
  BOOST_TEST(small.lr_scaling->describe(0.1f, 4) ==
             "lr scaling (linear, Goyal et al. 2017): global batch 64 / reference 256: lr 0.1 -> "
             "0.025, no warmup (the rate is not raised)");
}

// Without the key the schedule is the optimizer's own, rate for rate.
BOOST_AUTO_TEST_CASE(without_the_key_nothing_changes) {
  Config config = Config::parse_string(kScalingExperiment, "scaling.yaml");
  BOOST_TEST_REQUIRE(config.at("optimizer").erase("lr_scaling"));
  Experiment experiment = Experiment::read(config, registries(), Experiment::Scope::optimization);
  BOOST_TEST(!experiment.lr_scaling.has_value());
  auto plain = schedules::make_schedule("{type: multistep, milestones: [3]}", 0.1f, 4, 5);
  const std::vector<double> got = rates(experiment, 4);
  for (int64_t i = 0; i < 20; ++i) {
    BOOST_TEST(got[static_cast<std::size_t>(i)] == plain->lr(i / 5, i), "iteration " << i);
  }
}

BOOST_AUTO_TEST_CASE(bad_values_point_at_the_key) {
  auto error = [](std::vector<std::pair<std::string, std::string>> sets) {
    return error_of([&] { read_scaling(sets); });
  };
  // The file's line and column (a --set value points at the --set instead).
  std::string text = kScalingExperiment;
  text.replace(text.find("rule: linear"), 12, "rule: sqrt");
  STRATA_CHECK_CONTAINS(error_of([&] {
                          Experiment::read(Config::parse_string(text, "scaling.yaml"), registries(),
                                           Experiment::Scope::optimization);
                        }),
                        "scaling.yaml:10:22: optimizer.lr_scaling.rule: unknown rule 'sqrt'; "
                        "known: linear");
  STRATA_CHECK_CONTAINS(error({{"optimizer.lr_scaling.reference_batch", "0"}}),
                        "optimizer.lr_scaling.reference_batch: must be at least 1 (the batch "
                        "optimizer.lr was tuned for), found 0");
  STRATA_CHECK_CONTAINS(error({{"optimizer.lr_scaling.warmup_epochs", "-1"}}),
                        "optimizer.lr_scaling.warmup_epochs: must be 0 (no warmup) or a number of "
                        "epochs, found -1");
  STRATA_CHECK_CONTAINS(error({{"optimizer.lr_scaling.warmup_epochs", "1.5"}}),
                        "optimizer.lr_scaling.warmup_epochs");
  STRATA_CHECK_CONTAINS(error({{"optimizer.lr_scaling", "{rule: linear, reference_batch: 256}"}}),
                        "missing required key 'warmup_epochs'");
  STRATA_CHECK_CONTAINS(error({{"optimizer.lr_scaling",
                                "{rule: linear, reference_batch: 256, "
                                "warmup_epochs: 1, warmup: 2}"}}),
                        "optimizer.lr_scaling.warmup: unknown key 'warmup'");
  STRATA_CHECK_CONTAINS(error({{"optimizer.lr_scaling", "linear"}}),
                        "optimizer.lr_scaling: expected a map such as {rule: linear, "
                        "reference_batch: 256, warmup_epochs: 5}");
  STRATA_CHECK_CONTAINS(error({{"optimizer.schedule", "{type: warmup, epochs: 1}"}}),
                        "optimizer.lr_scaling.warmup_epochs: optimizer.schedule is a `warmup` "
                        "already");
  BOOST_CHECK_NO_THROW(read_scaling({{"optimizer.schedule", "{type: warmup, epochs: 1}"},
                                     {"optimizer.lr_scaling.warmup_epochs", "0"}}));
  STRATA_CHECK_CONTAINS(error({{"optimizer.lr", "1e38"}}),
                        "optimizer.lr_scaling: scales lr 1e+38 by 4 to inf");
}

BOOST_AUTO_TEST_SUITE_END()
