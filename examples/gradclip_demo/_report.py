"""The final table: metrics per framework at a few steps, and the largest cross-framework difference."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ._history import METRICS, History


def max_differences(histories: Sequence[History]) -> dict[str, float]:
    """Largest ``|a - b|`` of each metric over all steps and all pairs of frameworks.

    Args:
      histories: one :class:`History` per framework (same number of steps).

    Returns:
      ``{metric: max difference}`` (0.0 with fewer than two frameworks; NaN steps ignored).

    Example:
      >>> a, b = History.empty("a", 2), History.empty("b", 2)
      >>> a.record(0, loss=1.0); b.record(0, loss=1.5)
      >>> max_differences([a, b])["loss"]
      0.5
    """
    out = {}
    for m in METRICS:
        stack = np.stack([getattr(h, m) for h in histories])
        stack = stack[:, ~np.isnan(stack).any(0)]  # steps every framework recorded
        out[m] = float((stack.max(0) - stack.min(0)).max()) if stack.size else 0.0
    return out


def compare_weights(histories: Sequence[History]) -> tuple[bool, float] | None:
    """Whether the final pruning masks (``w != 0``) are identical, and the largest weight difference.

    Args:
      histories: one :class:`History` per framework, with ``weights``.

    Returns:
      ``(masks identical, max |w_a - w_b|)``, or ``None`` with fewer than two weight sets.

    Example:
      >>> a, b = History.empty("a", 1), History.empty("b", 1)
      >>> a.weights, b.weights = [np.array([0.0, 1.0])], [np.array([0.0, 1.5])]
      >>> compare_weights([a, b])
      (True, 0.5)
    """
    sets = [h.weights for h in histories if h.weights is not None]
    if len(sets) < 2:
        return None
    same = all(np.array_equal(a != 0, b != 0) for ws in sets[1:] for a, b in zip(sets[0], ws))
    diff = max(float(np.max(np.abs(a - b), initial=0.0)) for ws in sets[1:] for a, b in zip(sets[0], ws))
    return same, diff


def table_steps(steps: int, accuracy: np.ndarray, rows: int = 10) -> list[int]:
    """About ``rows`` evaluated steps (0-based) to print, the last one included."""
    evaluated = np.flatnonzero(~np.isnan(accuracy))
    if len(evaluated) == 0:
        evaluated = np.arange(steps)
    pick = np.unique(np.linspace(0, len(evaluated) - 1, min(rows, len(evaluated))).round().astype(int))
    return [int(evaluated[i]) for i in pick]


def format_table(histories: Sequence[History], rows: int = 10) -> str:
    """The per-step table (one line per step and framework) and the max-difference lines.

    Args:
      histories: one :class:`History` per framework.
      rows: about how many steps to show.

    Returns:
      The table as text.
    """
    lines = [f"{'step':>5}  {'framework':<16} {'loss':>10} {'grad norm':>10} {'sparsity':>9} {'test acc':>9}"]
    for s in table_steps(len(histories[0].loss), histories[0].accuracy, rows):
        for h in histories:
            lines.append(f"{s + 1:>5}  {h.framework:<16} {h.loss[s]:>10.6f} {h.grad_norm[s]:>10.6f} "
                         f"{h.sparsity[s]:>9.4f} {h.accuracy[s]:>9.4f}")
    if len(histories) > 1:
        diff = max_differences(histories)
        lines.append("largest cross-framework difference over all steps: " +
                     ", ".join(f"{m} {v:.3g}" for m, v in diff.items()))
    weights = compare_weights(histories)
    if weights is not None:
        lines.append(f"final weights: pruning masks identical in every framework: {'yes' if weights[0] else 'NO'}; "
                     f"largest weight difference {weights[1]:.3g}")
    lines.append("training time (s, compilation included): " +
                 ", ".join(f"{h.framework} {h.seconds:.1f}" for h in histories))
    return "\n".join(lines)
