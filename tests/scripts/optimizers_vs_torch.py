"""Strata's optimizers against torch.optim, step for step.

For each configuration: three float32 parameters with random initial values, 20 steps of random
gradients, and a learning rate that changes every step (as a schedule would). Each parameter has
its own lr_mult and decay_mult; in torch each parameter is its own param group with
lr = rate * lr_mult and weight_decay = weight_decay * decay_mult, which is what the multipliers mean.
Strata runs the same steps through tests/tools/optimizer_replay. Every parameter after every step,
and the final optimizer state (slots named as in torch's optimizer.state, step counts included),
must agree to within rtol 2e-5 and atol 1e-6 (float32 arithmetic in a different order: the worst
observed difference is printed).
"""
import argparse
import inspect
import os
import subprocess
import sys
import tempfile

import h5py
import numpy as np
import torch

STEPS = 20

# (name, Strata YAML, torch class, torch keyword arguments, Strata slot -> torch state key)
CASES = [
    ("adam defaults", "{type: adam}", torch.optim.Adam, {}, {}),
    ("adam amsgrad, L2, betas, eps",
     "{type: adam, lr: 0.01, betas: [0.8, 0.99], eps: 1.0e-6, weight_decay: 0.01, amsgrad: true}",
     torch.optim.Adam, dict(betas=(0.8, 0.99), eps=1e-6, weight_decay=0.01, amsgrad=True), {}),
    ("adamw defaults", "{type: adamw}", torch.optim.AdamW, {}, {}),
    ("adamw amsgrad", "{type: adamw, lr: 0.01, weight_decay: 0.1, amsgrad: true}",
     torch.optim.AdamW, dict(weight_decay=0.1, amsgrad=True), {}),
    ("rmsprop defaults", "{type: rmsprop}", torch.optim.RMSprop, {}, {}),
    ("rmsprop centered, momentum",
     "{type: rmsprop, lr: 0.001, alpha: 0.9, eps: 1.0e-6, weight_decay: 0.01, momentum: 0.9, centered: true}",
     torch.optim.RMSprop, dict(alpha=0.9, eps=1e-6, weight_decay=0.01, momentum=0.9, centered=True), {}),
    ("adagrad defaults", "{type: adagrad}", torch.optim.Adagrad, {}, {}),
    ("adagrad lr_decay, accumulator",
     "{type: adagrad, lr: 0.05, lr_decay: 0.1, weight_decay: 0.01, initial_accumulator_value: 0.5, eps: 1.0e-8}",
     torch.optim.Adagrad, dict(lr_decay=0.1, weight_decay=0.01, initial_accumulator_value=0.5, eps=1e-8), {}),
    ("sgd nesterov", "{type: sgd, lr: 0.05, momentum: 0.9, nesterov: true, weight_decay: 0.01}",
     torch.optim.SGD, dict(momentum=0.9, nesterov=True, weight_decay=0.01), {"momentum": "momentum_buffer"}),
]

SHAPES = [(4, 3, 2, 2), (7,), (5, 6)]
LR_MULT = np.array([1.0, 2.0, 0.5], dtype=np.float32)
DECAY_MULT = np.array([1.0, 0.0, 3.0], dtype=np.float32)
RTOL, ATOL = 2e-5, 1e-6


def base_lr(strata_yaml):
    for part in strata_yaml.strip("{}").split(","):
        key, _, value = part.partition(":")
        if key.strip() == "lr":
            return float(value)
    return None


def run_case(replay, folder, index, name, strata_yaml, torch_class, kwargs, slot_names, rng):
    init = [rng.standard_normal(shape).astype(np.float32) for shape in SHAPES]
    grads = [[rng.standard_normal(shape).astype(np.float32) for shape in SHAPES] for _ in range(STEPS)]
    defaults = {key: parameter.default for key, parameter in inspect.signature(torch_class.__init__).parameters.items()}
    lr0 = base_lr(strata_yaml) or defaults["lr"]
    # A rate that changes every step, as a warmup or decay would.
    rates = (lr0 * (0.5 + 0.5 * np.cos(np.arange(STEPS) / 7.0))).astype(np.float32)

    in_path = os.path.join(folder, f"in{index}.h5")
    out_path = os.path.join(folder, f"out{index}.h5")
    with h5py.File(in_path, "w") as f:
        f["lr"] = rates
        f["lr_mult"] = LR_MULT
        f["decay_mult"] = DECAY_MULT
        for k, value in enumerate(init):
            f[f"init/p{k}"] = value
        for s, step_grads in enumerate(grads):
            for k, g in enumerate(step_grads):
                f[f"grad/{s}/p{k}"] = g
    subprocess.run([replay, strata_yaml, in_path, out_path], check=True)

    params = [torch.tensor(value.copy()) for value in init]
    weight_decay = kwargs.get("weight_decay", defaults.get("weight_decay", 0.0))
    groups = [dict(params=[p], weight_decay=weight_decay * float(DECAY_MULT[k])) for k, p in enumerate(params)]
    options = dict(kwargs)
    options.pop("weight_decay", None)
    optimizer = torch_class(groups, lr=lr0, **options)

    worst = 0.0
    failures = []

    def compare(what, ours, theirs):
        nonlocal worst
        ours = np.asarray(ours, dtype=np.float64)
        theirs = np.asarray(theirs, dtype=np.float64)
        if ours.shape != theirs.shape:
            failures.append(f"{what}: shape {ours.shape} vs torch {theirs.shape}")
            return
        excess = np.abs(ours - theirs) / (ATOL + RTOL * np.abs(theirs))
        worst = max(worst, float(excess.max(initial=0.0)))
        if not np.all(excess <= 1.0):
            i = int(np.argmax(excess))
            failures.append(f"{what}: element {i} is {ours.flat[i]:.9g}, torch {theirs.flat[i]:.9g}")

    with h5py.File(out_path, "r") as f:
        for s in range(STEPS):
            for k, p in enumerate(params):
                p.grad = torch.tensor(grads[s][k])
            for k, group in enumerate(optimizer.param_groups):
                group["lr"] = float(rates[s]) * float(LR_MULT[k])
            optimizer.step()
            for k, p in enumerate(params):
                compare(f"step {s + 1} p{k}", f[f"step{s}/p{k}"][()], p.detach().numpy())
        ours_state = {}
        f["state"].visititems(lambda key, obj: ours_state.__setitem__(key, obj[()]) if isinstance(obj, h5py.Dataset) else None)
        compared = 0
        for k, p in enumerate(params):
            theirs = optimizer.state[p]
            for key, value in ours_state.items():
                param, _, slot = key.partition("/")
                if param != f"p{k}":
                    continue
                torch_key = slot_names.get(slot, slot)
                if torch_key not in theirs:
                    failures.append(f"state {key}: torch has no '{torch_key}' (it has {sorted(theirs)})")
                    continue
                reference = theirs[torch_key]
                reference = reference.numpy() if torch.is_tensor(reference) else np.float64(reference)
                compare(f"state {key}", value, np.reshape(reference, np.shape(value)))
                compared += 1
            missing = set(theirs) - {slot_names.get(key.partition("/")[2], key.partition("/")[2])
                                     for key in ours_state if key.startswith(f"p{k}/")}
            if missing:
                failures.append(f"p{k}: Strata keeps no state for torch's {sorted(missing)}")
    status = "ok  " if not failures else "FAIL"
    print(f"{status} {name:34s} {STEPS} steps, {compared} state tensors; worst |difference| / tolerance {worst:.3f}")
    for failure in failures[:8]:
        print(f"       {failure}")
    return not failures


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--replay", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng()
    seed = int(rng.integers(1 << 31))
    print(f"torch {torch.__version__}, seed {seed}")
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as folder:
        results = [run_case(args.replay, folder, i, *case, rng) for i, case in enumerate(CASES)]
    print(f"{sum(results)} of {len(results)} configurations agree with torch.optim")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
