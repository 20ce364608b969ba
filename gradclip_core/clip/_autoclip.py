"""AutoClip (Seetharaman et al. 2020): clip at a percentile of the history of gradient norms.

The paper's code (github.com/pseeth/autoclip, ``add_autoclip_gradient_handler``) does,
on every step::

    grad_history.append(total_norm)                         # the norm before clipping
    clip_value = np.percentile(grad_history, clip_percentile)
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip_value)

:func:`autoclip` follows that update order by default (``include_current=True``: the
current norm enters the history before the percentile is taken, so the first step is
never clipped). Deliberate differences, all documented:

- the history is a fixed-size ring buffer of the last ``history`` norms (the paper's
  list grows without bound, which cannot be a fixed-shape state under jit); with
  ``history`` at least the number of training steps the results are the paper's;
- the clip uses the canonical ``min(1, threshold / norm)`` (``semantics="torch"``
  gives the paper's ``clip_grad_norm_`` formula ``min(1, threshold / (norm + 1e-6))``);
- the percentile is exact (:mod:`gradclip_core.clip._history`), NumPy's ``"linear"``
  interpolation by default, computed in float32.

``include_current=False`` reproduces the ``autoclip`` PyPI package's
``QuantileClip(global_threshold=True)``: the threshold is the quantile of the
*previous* norms (no clipping on the first step), then the current norm is appended.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from .._effect import Keep
from .._nonfinite import check_policy, guard_update
from .._rule import Rule, factory
from .._validate import check_choice
from ..backend._namespace import namespace
from ._history import METHODS, NormHistory, check_percentile, check_size, history_init, push
from ._history import percentile as _percentile
from ._norm import _global_apply, _global_norm

__all__ = ["autoclip"]


def _slots_valid(xp: Any, hist: NormHistory) -> Any:
    return xp.arange(hist.norms.shape[0], dtype=xp.int32) < hist.count


@factory
def autoclip(
    percentile: float = 10.0,
    history: int = 1000,
    *,
    include_current: bool = True,
    method: str = "linear",
    semantics: str | None = None,
    nonfinite: str = "propagate",
) -> Rule:
    """AutoClip: clip the global 2-norm at the ``percentile``-th percentile of recent norms.

    Args:
      percentile: the percentile ``p`` in ``[0, 100]`` (the paper recommends 10).
      history: number of past norms kept (a fixed-size ring buffer, int >= 1); the
        paper's history is unbounded, use at least the number of steps to match it.
      include_current: ``True`` (paper): append this step's norm, then take the
        percentile; ``False`` (``autoclip`` package's ``QuantileClip``): take the
        percentile of the previous norms (none on the first step: no clipping), then
        append.
      method: percentile interpolation, ``"linear"`` (``np.percentile``'s default) or
        ``"lower"``.
      semantics: ``None`` (canonical ``min(1, threshold / norm)``) or ``"torch"``
        (``clip_grad_norm_``'s formula, as in the paper's code).
      nonfinite: ``"propagate" | "zero" | "skip" | "raise"``. With ``"propagate"`` a
        NaN norm enters the history and the threshold is NaN until it leaves the
        window (as ``np.percentile`` over the paper's list); ``"skip"`` keeps it out.

    Returns:
      A :class:`Rule` with state :class:`NormHistory`; info has ``norm`` (global norm
      before clipping), ``scale`` and ``threshold`` (``+inf`` when there is none).

    Example:
      >>> import numpy as np
      >>> import gradclip_core as gc
      >>> rule = gc.autoclip(50.0, history=4)
      >>> state = rule.init([np.zeros(2, np.float32)])
      >>> for norm in [1.0, 3.0, 10.0]:
      ...     g, state, info = rule.update([np.array([norm, 0.0], np.float32)], state)
      >>> float(info["threshold"]), g[0].tolist()
      (3.0, [3.0, 0.0])
    """
    p = check_percentile("percentile", percentile)
    size = check_size("history", history)
    if not isinstance(include_current, bool):
        raise ValueError(f"include_current must be a bool, got {include_current!r}")
    check_choice("method", method, METHODS)
    sem = "canonical" if semantics is None else semantics
    check_choice("semantics", sem, ("canonical", "torch"))
    check_policy(nonfinite)

    def update(grads: Sequence[Any], state: NormHistory, params: Sequence[Any] | None = None):
        del params
        grads = list(grads)
        if not isinstance(state, NormHistory):
            raise ValueError(f"autoclip: state must be the NormHistory made by rule.init, got {type(state).__name__}")
        if not grads:
            return Keep(), state, {}
        xp = namespace(*grads)
        norm = _global_norm(xp, grads, 2.0, sem)
        new = push(xp, state, norm)
        source = new if include_current else state
        thr = _percentile(xp, source.norms, _slots_valid(xp, source), p, method)
        if not include_current:  # empty history: no threshold yet
            thr = xp.where(source.count == 0, xp.full_like(thr, math.inf), thr)
        thr = xp.astype(thr, norm.dtype) if thr.dtype != norm.dtype else thr
        effect, scale = _global_apply(xp, grads, norm, thr, sem)
        return effect, new, {"norm": norm, "scale": scale, "threshold": thr}

    return Rule(init=history_init(size), update_effect=guard_update(update, nonfinite), name="autoclip")
