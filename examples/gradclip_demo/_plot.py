"""The PNG of the curves (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import pathlib
from typing import Sequence

import numpy as np

from ._history import History

PANELS = (("loss", "training loss"), ("grad_norm", "gradient norm (before clip)"),
          ("sparsity", "sparsity"), ("accuracy", "test accuracy"))


def plot(histories: Sequence[History], path: pathlib.Path, spikes: Sequence[int] = ()) -> pathlib.Path:
    """Write a 2x2 figure of loss, gradient norm, sparsity and accuracy, one line per framework.

    The gradient-norm panel is log-scaled; each framework's skipped steps are marked on it
    (one marker style per framework, so identical skips overlap), and the injected spikes
    are drawn as vertical lines on every panel.

    Args:
      histories: one :class:`History` per framework.
      path: the PNG file to write (its folder is created).
      spikes: 0-based steps of the injected spikes.

    Returns:
      ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), constrained_layout=True)
    styles = ["-", "--", ":", "-."]
    markers = ["o", "s", "^", "D"]
    for ax, (metric, title) in zip(axes.flat, PANELS):
        for i, h in enumerate(histories):
            y = getattr(h, metric)
            x = np.arange(1, len(y) + 1)
            ok = ~np.isnan(y)
            ax.plot(x[ok], y[ok], styles[i % len(styles)], label=h.framework, linewidth=1.5)
            if metric == "grad_norm":
                skipped = np.flatnonzero(h.skipped == 1)
                ax.plot(skipped + 1, y[skipped], markers[i % len(markers)], markersize=9 - 2 * i, fillstyle="none",
                        label=f"{h.framework}: skipped")
        for s in spikes:
            ax.axvline(s + 1, color="grey", alpha=0.3, linewidth=3)
        if metric == "grad_norm":
            ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes.flat[0].legend()
    axes.flat[1].legend(fontsize=7)
    fig.suptitle("gradclip: the same recipe (skip spikes + clip + prune to 80% + max-norm) in three frameworks; "
                 "grey: injected spikes", fontsize=10)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
