// optimizer_replay: runs a Strata optimizer on recorded gradients, for the comparison with
// torch.optim (tests/scripts/optimizers_vs_torch.py).
//
//   optimizer_replay '<optimizer YAML>' IN.h5 OUT.h5
//
// IN.h5 holds, for K parameters and S steps: /init/p<k> (initial values), /grad/<s>/p<k> (the
// gradient of step s), /lr [S] (the rate of each step), /lr_mult [K] and /decay_mult [K].
// OUT.h5 receives /step<s>/p<k> (the values after step s) and /state/<name> (the optimizer state
// after the last step, named "p<k>/<slot>").
#include <cstdio>
#include <string>
#include <vector>

#include "strata/checkpoint.hpp"
#include "strata/config.hpp"
#include "strata/error.hpp"
#include "strata/layer.hpp"
#include "strata/optimizer.hpp"
#include "strata/plugin.hpp"
#include "strata/registry.hpp"

using namespace strata;

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: optimizer_replay '<optimizer YAML>' IN.h5 OUT.h5\n");
    return 2;
  }
  try {
    Registries registries;
    PluginLoader loader(registries);
    loader.load_default();
    auto optimizer = registries.optimizers.create(Config::parse_string(argv[1], "<argument>"));
    const std::string in = argv[2];
    const Tensor lr = read_hdf5_tensor(in, "lr");
    const Tensor lr_mult = read_hdf5_tensor(in, "lr_mult");
    const Tensor decay_mult = read_hdf5_tensor(in, "decay_mult");
    std::vector<Param> params(static_cast<std::size_t>(lr_mult.numel()));
    std::vector<ParamRef> refs;
    for (std::size_t k = 0; k < params.size(); ++k) {
      Tensor init = read_hdf5_tensor(in, fmt::format("init/p{}", k));
      params[k] = Param::make("weight", init.shape(), "constant", 1, 1, decay_mult.data()[k]);
      params[k].value.copy_from(init);
      params[k].lr_mult = lr_mult.data()[k];
      refs.push_back({fmt::format("p{}", k), &params[k]});
    }
    optimizer->setup(refs);
    std::vector<NamedTensor> out;
    for (int64_t s = 0; s < lr.numel(); ++s) {
      for (std::size_t k = 0; k < params.size(); ++k) {
        params[k].grad.copy_from(read_hdf5_tensor(in, fmt::format("grad/{}/p{}", s, k)));
      }
      optimizer->step(lr.data()[s]);
      for (std::size_t k = 0; k < params.size(); ++k) {
        out.push_back({fmt::format("step{}/p{}", s, k), params[k].value.clone()});
      }
    }
    for (NamedTensor& t : optimizer->state()) out.push_back({"state/" + t.name, t.tensor});
    write_hdf5_tensors(argv[3], out);
    return 0;
  } catch (const Error& error) {
    std::fprintf(stderr, "error: %s\n", error.what());
    return 1;
  }
}
