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


def max_relative_difference(histories: Sequence[History], metric: str) -> float:
    """Largest ``|a - b| / |b|`` of ``metric`` over all steps and pairs (spiked norms are large).

    Example:
      >>> a, b = History.empty("a", 1), History.empty("b", 1)
      >>> a.record(0, grad_norm=100.0); b.record(0, grad_norm=100.5)
      >>> round(max_relative_difference([a, b], "grad_norm"), 6)
      0.005
    """
    stack = np.stack([getattr(h, metric) for h in histories])
    stack = stack[:, ~np.isnan(stack).any(0)]
    if stack.size == 0:
        return 0.0
    return float(((stack.max(0) - stack.min(0)) / np.maximum(np.abs(stack).min(0), 1e-30)).max())


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


def spike_summary(histories: Sequence[History], spikes: Sequence[int]) -> list[str]:
    """Lines saying, per framework, which injected spikes were skipped and which other steps were.

    Example:
      >>> h = History.empty("a", 4); h.skipped[:] = [0, 0, 1, 0]
      >>> spike_summary([h], [2])
      ['injected spikes skipped: a 1/1 (steps 3); other skipped steps: none', 'skip decisions identical in every framework: yes']
    """
    spikes = list(spikes)
    lines = []
    per = []
    for h in histories:
        skipped = set(np.flatnonzero(h.skipped == 1).tolist())
        hit = [s for s in spikes if s in skipped]
        other = sorted(skipped - set(spikes))
        per.append(f"{h.framework} {len(hit)}/{len(spikes)} (steps {', '.join(str(s + 1) for s in hit) or '-'})")
        if other:
            per[-1] += f", also steps {', '.join(str(s + 1) for s in other)}"
    others = any(set(np.flatnonzero(h.skipped == 1).tolist()) - set(spikes) for h in histories)
    lines.append("injected spikes skipped: " + "; ".join(per) + ("" if others else "; other skipped steps: none"))
    same = all(np.array_equal(histories[0].skipped, h.skipped, equal_nan=True) for h in histories[1:])
    lines.append(f"skip decisions identical in every framework: {'yes' if same else 'NO'}")
    return lines


def format_table(histories: Sequence[History], rows: int = 10, spikes: Sequence[int] = ()) -> str:
    """The per-step table (one line per step and framework) and the max-difference lines.

    Args:
      histories: one :class:`History` per framework.
      rows: about how many steps to show.
      spikes: 0-based steps of the injected spikes (shown, marked ``*``).

    Returns:
      The table as text.
    """
    lines = [f"{'step':>5}  {'framework':<16} {'loss':>10} {'grad norm':>11} {'skipped':>7} {'sparsity':>9} {'test acc':>9}"]
    steps = sorted(set(table_steps(len(histories[0].loss), histories[0].accuracy, rows)) | set(spikes))
    for s in steps:
        for h in histories:
            mark = "*" if s in spikes else " "
            skipped = "-" if np.isnan(h.skipped[s]) else ("yes" if h.skipped[s] == 1 else "no")
            lines.append(f"{s + 1:>4}{mark}  {h.framework:<16} {h.loss[s]:>10.6f} {h.grad_norm[s]:>11.6f} {skipped:>7} "
                         f"{h.sparsity[s]:>9.4f} {h.accuracy[s]:>9.4f}")
    if spikes:
        lines.append("* an injected gradient spike")
        lines.extend(spike_summary(histories, spikes))
    if len(histories) > 1:
        diff = max_differences(histories)
        lines.append("largest cross-framework difference over all steps: " +
                     ", ".join(f"{m} {v:.3g}" for m, v in diff.items()))
        rel = max_relative_difference(histories, "grad_norm")
        lines.append(f"largest relative difference of the gradient norm: {rel:.3g}")
    weights = compare_weights(histories)
    if weights is not None:
        lines.append(f"final weights: pruning masks identical in every framework: {'yes' if weights[0] else 'NO'}; "
                     f"largest weight difference {weights[1]:.3g}")
    lines.append("training time (s, compilation included): " +
                 ", ".join(f"{h.framework} {h.seconds:.1f}" for h in histories))
    return "\n".join(lines)
