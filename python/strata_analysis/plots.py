"""The pictures of docs/analysis.md. Each function writes one file and returns its path."""
import math
import os

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

# Every picture is FIGSIZE inches at DPI: 800 x 500 pixels (the CI test checks this size).
FIGSIZE = (8, 5)
DPI = 100


def _save(fig, out_dir, name, fmt):
    path = os.path.join(out_dir, f"{name}.{fmt}")
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_curves(ckpt, out_dir, fmt="png"):
    """Loss and accuracy per epoch (train and validation), with the learning rate on a second axis."""
    h = ckpt.history
    if "train_loss" not in h:
        raise ValueError(f"{ckpt.path}: no /history/train_loss (not saved by the trainer)")
    epochs = np.arange(1, len(h["train_loss"]) + 1)
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=FIGSIZE)
    for ax, metric in ((loss_ax, "loss"), (acc_ax, "accuracy")):
        for split in ("train", "val"):
            values = h.get(f"{split}_{metric}")
            if values is not None and np.isfinite(values).any():
                ax.plot(epochs, values, marker="o", label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        if "lr" in h:
            lr_ax = ax.twinx()
            lr_ax.step(epochs, h["lr"], where="mid", color="gray", linestyle="--", label="lr")
            lr_ax.set_ylabel("learning rate")
            lr_ax.set_yscale("log")
        ax.legend(loc="center right")
    fig.suptitle(os.path.basename(os.path.dirname(os.path.abspath(ckpt.path))) or ckpt.path)
    fig.tight_layout()
    return _save(fig, out_dir, "curves", fmt)


def plot_first_conv_filters(ckpt, out_dir, fmt="png"):
    """A grid of the first conv layer's filters (input channels averaged), each on its own scale."""
    found = ckpt.first_conv_weight()
    if found is None:
        raise ValueError(f"{ckpt.path}: the model has no convolution weight (rank 4)")
    name, w = found
    filters = w.mean(axis=1)
    n = filters.shape[0]
    cols = math.ceil(math.sqrt(n * FIGSIZE[0] / FIGSIZE[1]))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=FIGSIZE, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(filters[i], cmap="gray", interpolation="nearest")
            ax.set_title(str(i), fontsize=8)
    fig.suptitle(f"{name} {list(w.shape)}")
    return _save(fig, out_dir, "filters", fmt)


def plot_weight_histograms(ckpt, out_dir, fmt="png"):
    """One histogram per layer weight."""
    names = [n for n in ckpt.params if n.endswith("/weight")]
    if not names:
        raise ValueError(f"{ckpt.path}: no /model/<layer>/weight")
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=FIGSIZE, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, name in zip(axes.flat, names):
        ax.axis("on")
        values = ckpt.params[name].ravel()
        ax.hist(values, bins=50, color="steelblue")
        ax.set_title(f"{name} (std {values.std():.3g})", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    return _save(fig, out_dir, "weights", fmt)


def plot_update_ratios(ckpt, out_dir, fmt="png"):
    """|update| / |weight| per layer over iterations, from /history/diagnostics/<layer>/update_ratio.
    Returns None when the checkpoint has no such history."""
    series = {layer: m["update_ratio"] for layer, m in ckpt.diagnostics.items() if "update_ratio" in m}
    if not series:
        return None
    fig, ax = plt.subplots(figsize=FIGSIZE)
    for layer, values in series.items():
        x = ckpt.diagnostics_iteration if ckpt.diagnostics_iteration is not None and len(ckpt.diagnostics_iteration) == len(values) else np.arange(len(values))
        ax.plot(x, values, label=layer)
    ax.axhline(1e-3, color="gray", linestyle=":", label="1e-3 (rule of thumb)")
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("update / weight")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, out_dir, "update_ratio", fmt)


def plot_search(trials, log_scaled, out_dir, fmt="png"):
    """The metric against each sampled hyperparameter (log axes where log-scaled)."""
    names = sorted(log_scaled)
    if not names:
        raise ValueError("the search has no sampled parameters")
    fig, axes = plt.subplots(1, len(names), figsize=FIGSIZE, squeeze=False)
    ok = [t for t in trials if t["status"] == "ok" and t["metric"] is not None]
    failed = [t for t in trials if t not in ok]
    for ax, name in zip(axes.flat, names):
        xs = [t["params"][name] for t in ok if name in t["params"]]
        ys = [t["metric"] for t in ok if name in t["params"]]
        ax.scatter(xs, ys, s=18, label="trials")
        if failed:
            fx = [t["params"][name] for t in failed if name in t["params"]]
            if fx and ys:
                ax.scatter(fx, [min(ys)] * len(fx), marker="x", color="red", label="failed")
        if log_scaled[name]:
            ax.set_xscale("log")
        ax.set_xlabel(name + (" (log)" if log_scaled[name] else ""))
        ax.set_ylabel("metric")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, out_dir, "search", fmt)
