"""The pictures of docs/analysis.md. Each function writes one file and returns its path."""
import math
import os

import matplotlib
matplotlib.use("Agg")
import matplotlib.colors  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402

# Every picture is FIGSIZE inches at DPI: 800 x 500 pixels (the CI test checks this size).
FIGSIZE = (8, 5)
DPI = 100


def _save(fig, out_dir, name, fmt):
    path = os.path.join(out_dir, f"{name}.{fmt}")
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def colors(n):
    """n distinct colours: tab10 up to 10 lines, tab20 up to 20, then evenly spaced on turbo."""
    if n <= 10:
        return [plt.cm.tab10(i) for i in range(n)]
    if n <= 20:
        return [plt.cm.tab20(i) for i in range(n)]
    return [plt.cm.turbo(x) for x in np.linspace(0.03, 0.97, n)]


def _lr_axis(ax, epochs, lr):
    """The learning rate on a right-hand axis with several labelled ticks: a log scale when it
    spans more than a factor of 10, otherwise linear (a log axis inside one decade shows one tick
    or none). Returns the line and the tick labels."""
    lr_ax = ax.twinx()
    (line,) = lr_ax.step(epochs, lr, where="mid", color="gray", linestyle="--", label="learning rate")
    positive = lr[np.isfinite(lr) & (lr > 0)]
    if positive.size and positive.max() / positive.min() >= 3:
        lr_ax.set_yscale("log")
        lr_ax.set_ylim(positive.min() / 1.5, positive.max() * 1.5)
        lr_ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1, 2, 5), numticks=30))
        lr_ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:.3g}"))
        lr_ax.yaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    else:
        low, high = (positive.min(), positive.max()) if positive.size else (0.0, 1.0)
        pad = (high - low) * 0.2 or abs(high) * 0.2 or 1.0
        lr_ax.set_ylim(max(0.0, low - pad), high + pad)
        lr_ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(5))
        lr_ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:.3g}"))
    lr_ax.set_ylabel("learning rate")
    lr_ax.tick_params(labelsize=7, which="both")
    lr_ax.figure.canvas.draw()
    ticks = [t.get_text() for t in lr_ax.get_yticklabels() if t.get_text() and _visible(t, lr_ax)]
    return line, ticks


def _visible(label, ax):
    """Whether a tick label lies inside the axis' visible range."""
    low, high = ax.get_ylim()
    y = label.get_position()[1]
    return min(low, high) <= y <= max(low, high)


def plot_curves(ckpt, out_dir, fmt="png", info=None):
    """Loss and accuracy per epoch (train and validation), with the learning rate on a second axis."""
    h = ckpt.history
    if "train_loss" not in h:
        raise ValueError(f"{ckpt.path}: no /history/train_loss (not saved by the trainer)")
    epochs = np.arange(1, len(h["train_loss"]) + 1)
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=FIGSIZE)
    described = {"title": ckpt.title(), "panels": []}
    for ax, metric in ((loss_ax, "loss"), (acc_ax, "accuracy")):
        handles = []
        for split, label in (("train", "train"), ("val", "validation")):
            values = h.get(f"{split}_{metric}")
            if values is not None and np.isfinite(values).any():
                handles += ax.plot(epochs, values, marker="o", label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        lr_ticks = []
        if "lr" in h:
            line, lr_ticks = _lr_axis(ax, epochs, np.asarray(h["lr"], dtype=float))
            handles.append(line)
        legend = ax.legend(handles=handles, loc="best", fontsize=8)
        described["panels"].append({"metric": metric, "legend": [t.get_text() for t in legend.get_texts()],
                                    "lr_ticks": lr_ticks})
    fig.suptitle(described["title"], fontsize=10)
    fig.tight_layout()
    if info is not None:
        info["curves"] = described
    return _save(fig, out_dir, "curves", fmt)


def plot_first_conv_filters(ckpt, out_dir, fmt="png", info=None):
    """A grid of the model's first convolution's filters (input channels averaged), each on its
    own scale. "First" is in model order (Checkpoint.layers), not alphabetical."""
    found = ckpt.first_conv_weight()
    if found is None:
        raise ValueError(f"{ckpt.path}: the model has no convolution weight (rank 4)")
    name, w = found
    filters = w.mean(axis=1)
    n = min(filters.shape[0], 64)  # at most 64 filters stay readable at 800 x 500
    cols = math.ceil(math.sqrt(n * FIGSIZE[0] / FIGSIZE[1]))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=FIGSIZE, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(filters[i], cmap="gray", interpolation="nearest")
            ax.set_title(str(i), fontsize=7)
    shown = f" (first {n} of {w.shape[0]})" if n < w.shape[0] else ""
    fig.suptitle(f"{ckpt.short_title()}: {name} {list(w.shape)}{shown}, input channels averaged", fontsize=10)
    if info is not None:
        info["filters"] = {"layer": name.rsplit("/", 1)[0], "shape": list(w.shape), "shown": n}
    return _save(fig, out_dir, "filters", fmt)


# Up to this many layers, weights.png is one histogram per layer; past it, one panel of per-layer
# percentiles in model order (a ResNet-50 has 54 weights: 54 histograms are unreadable at 800 x 500).
MAX_HISTOGRAMS = 12


def plot_weight_histograms(ckpt, out_dir, fmt="png", info=None):
    """One histogram per layer weight in model order or, for more than MAX_HISTOGRAMS layers, the
    spread of each conv and linear weight (median, 25-75 % and 1-99 % percentiles, +-std) along
    the model."""
    layers = ckpt.layers()
    if not layers:
        raise ValueError(f"{ckpt.path}: no /model/<layer>/weight")
    if len(layers) <= MAX_HISTOGRAMS:
        mode = "histograms"
        cols = min(3, len(layers))
        rows = math.ceil(len(layers) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=FIGSIZE, squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        for ax, layer in zip(axes.flat, layers):
            ax.axis("on")
            values = ckpt.params[f"{layer}/weight"].ravel()
            ax.hist(values, bins=50, color="steelblue")
            ax.set_title(f"{layer} (std {values.std():.3g})", fontsize=8)
            ax.tick_params(labelsize=7)
        fig.suptitle(f"{ckpt.short_title()}: weights", fontsize=10)
    else:
        # Convolution and linear weights only: batch norm's 1-D scales (near 1) would swamp them.
        mode = "percentiles"
        scales = [layer for layer in layers if ckpt.params[f"{layer}/weight"].ndim < 2]
        layers = [layer for layer in layers if ckpt.params[f"{layer}/weight"].ndim >= 2]
        fig, ax = plt.subplots(figsize=FIGSIZE)
        p = np.array([np.percentile(ckpt.params[f"{layer}/weight"], [1, 25, 50, 75, 99]) for layer in layers])
        std = np.array([ckpt.params[f"{layer}/weight"].std() for layer in layers])
        x = np.arange(len(layers))
        ax.fill_between(x, p[:, 0], p[:, 4], color="steelblue", alpha=0.2, label="1-99 %")
        ax.fill_between(x, p[:, 1], p[:, 3], color="steelblue", alpha=0.5, label="25-75 %")
        ax.plot(x, p[:, 2], color="navy", linewidth=1, label="median")
        ax.plot(x, std, color="darkorange", linewidth=1, label="std")
        ax.plot(x, -std, color="darkorange", linewidth=1)
        step = max(1, math.ceil(len(layers) / 30))
        ax.set_xticks(x[::step])
        ax.set_xticklabels(layers[::step], rotation=90, fontsize=6)
        ax.set_xlim(-0.5, len(layers) - 0.5)
        ax.set_ylabel("weight value")
        skipped = f"; {len(scales)} 1-D scales (batch norm) not shown" if scales else ""
        ax.set_xlabel(f"layer, in model order ({len(layers)} conv and linear weights{skipped})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper right")
        fig.suptitle(f"{ckpt.short_title()}: weights per layer", fontsize=10)
    fig.tight_layout()
    if info is not None:
        info["weights"] = {"mode": mode, "layers": layers}
    return _save(fig, out_dir, "weights", fmt)


def plot_update_ratios(ckpt, out_dir, fmt="png", info=None):
    """|update| / |weight| per layer over iterations, from /history/diagnostics/<layer>/update_ratio,
    layers in model order, each its own colour. Returns None when the checkpoint has no such history."""
    series = {layer: m["update_ratio"] for layer, m in ckpt.diagnostics.items() if "update_ratio" in m}
    if not series:
        return None
    order = {layer: i for i, layer in enumerate(ckpt.layers())}
    names = sorted(series, key=lambda layer: (order.get(layer, len(order)), layer))
    fig, ax = plt.subplots(figsize=FIGSIZE)
    palette = colors(len(names))
    for color, layer in zip(palette, names):
        values = series[layer]
        x = ckpt.diagnostics_iteration if ckpt.diagnostics_iteration is not None and len(ckpt.diagnostics_iteration) == len(values) else np.arange(len(values))
        ax.plot(x, values, label=layer, color=color, linewidth=1)
    ax.axhline(1e-3, color="gray", linestyle=":", label="1e-3 (rule of thumb)")
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("update / weight")
    fig.suptitle(f"{ckpt.short_title()}: update / weight per layer", fontsize=10)
    ax.legend(fontsize=6, ncol=max(1, math.ceil(len(names) / 16)), loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    if info is not None:
        info["update_ratio"] = {"layers": names,
                                "colors": [matplotlib.colors.to_hex(c) for c in palette]}
    return _save(fig, out_dir, "update_ratio", fmt)


def plot_search(trials, log_scaled, out_dir, fmt="png", info=None, title=None, best=None):
    """The metric against each sampled hyperparameter (log axes where log-scaled), the best trial
    marked: `best` is (stage, index) from best.yaml, else the best finite metric (the lowest for a
    metric ending in "loss", else the highest)."""
    names = sorted(log_scaled)
    if not names:
        raise ValueError("the search has no sampled parameters")
    fig, axes = plt.subplots(1, len(names), figsize=FIGSIZE, squeeze=False)
    ok = [t for t in trials if t["status"] == "ok" and t["metric"] is not None
          and math.isfinite(t["metric"])]
    failed = [t for t in trials if t not in ok]
    metric_names = sorted({t["metric_name"] for t in trials if t.get("metric_name")})
    metric = metric_names[0] if len(metric_names) == 1 else "metric"
    best_trial = None
    if best is not None:
        best_trial = next((t for t in ok if (t.get("stage"), t.get("index")) == best), None)
    if best_trial is None and ok:
        pick = min if metric.endswith("loss") else max
        best_trial = pick(ok, key=lambda t: t["metric"])
    for ax, name in zip(axes.flat, names):
        xs = [t["params"][name] for t in ok if name in t["params"]]
        ys = [t["metric"] for t in ok if name in t["params"]]
        ax.scatter(xs, ys, s=18, label="trials")
        if failed:
            fx = [t["params"][name] for t in failed if name in t["params"]]
            if fx and ys:
                ax.scatter(fx, [min(ys)] * len(fx), marker="x", color="red", label="failed")
        if best_trial is not None and name in best_trial["params"]:
            ax.scatter([best_trial["params"][name]], [best_trial["metric"]], s=160, marker="*",
                       color="gold", edgecolors="black", zorder=3, label="best")
        if log_scaled[name]:
            ax.set_xscale("log")
        ax.set_xlabel(name + (" (log)" if log_scaled[name] else ""))
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=7)
    best_text = ""
    if best_trial is not None:
        where = f"stage {best_trial['stage'] + 1}, trial {best_trial['index']}" if "stage" in best_trial else "best"
        best_text = f"; best: {where}, {metric} {best_trial['metric']:.4g}"
    fig.suptitle(f"{title or 'search'}: {len(ok)} trials{best_text}", fontsize=10)
    fig.tight_layout()
    if info is not None:
        info["search"] = {"ylabel": metric, "trials": len(ok), "failed": len(failed),
                          "best": None if best_trial is None else
                          {"stage": best_trial.get("stage"), "index": best_trial.get("index"),
                           "metric": best_trial["metric"], "params": best_trial["params"]}}
    return _save(fig, out_dir, "search", fmt)
