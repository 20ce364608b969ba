"""The PNG of the curves (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import pathlib
from typing import Sequence

import numpy as np

from ._history import History

PANELS = (("loss", "training loss"), ("grad_norm", "gradient norm (before clip)"),
          ("sparsity", "sparsity"), ("accuracy", "test accuracy"))


def plot(histories: Sequence[History], path: pathlib.Path) -> pathlib.Path:
    """Write a 2x2 figure of loss, gradient norm, sparsity and accuracy, one line per framework.

    Args:
      histories: one :class:`History` per framework.
      path: the PNG file to write (its folder is created).

    Returns:
      ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), constrained_layout=True)
    styles = ["-", "--", ":", "-."]
    for ax, (metric, title) in zip(axes.flat, PANELS):
        for i, h in enumerate(histories):
            y = getattr(h, metric)
            x = np.arange(1, len(y) + 1)
            ok = ~np.isnan(y)
            ax.plot(x[ok], y[ok], styles[i % len(styles)], label=h.framework, linewidth=1.5)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes.flat[0].legend()
    fig.suptitle("gradclip: the same recipe (clip + prune to 80% + max-norm) in three frameworks")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
