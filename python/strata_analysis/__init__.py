"""strata_analysis: read Strata checkpoints and search results with h5py, draw them with matplotlib.

Only Debian's python3-h5py, python3-numpy and python3-matplotlib are needed. The checkpoint layout
is docs/checkpoint-format.md; the pictures are described in docs/analysis.md.
"""
from .checkpoint import Checkpoint, read_trials, reseal
from .plots import (plot_curves, plot_first_conv_filters, plot_weight_histograms,
                    plot_update_ratios, plot_search)

__all__ = ["Checkpoint", "read_trials", "reseal", "plot_curves", "plot_first_conv_filters",
           "plot_weight_histograms", "plot_update_ratios", "plot_search"]
