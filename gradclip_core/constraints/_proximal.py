"""Proximal shrinkage steps: soft threshold (L1 / LASSO), firm threshold (MCP) and group lasso.

They act on the weights after the optimizer step and keep no state. Every formula
runs in float32 (bf16/fp16 upcast exactly, float64 kept) and is rounded once to the
weight dtype.
"""

from __future__ import annotations

from typing import Any

from .._effect import Replace
from .._rule import Rule, factory
from .._validate import check_threshold, is_number
from .._units import sharded_unit_norms
from ..backend._layout import AxisSpec, check_axis
from ..backend._primitives import size, upcast
from ._base import formula_dtype, project_rule, zeros_info

__all__ = ["soft_threshold", "mcp_threshold", "group_lasso"]


@factory
def soft_threshold(threshold: float) -> Rule:
    """Proximal L1 step (LASSO / ISTA): ``w <- sign(w) * max(|w| - threshold, 0)``.

    Computed as ``w - clip(w, -t, t)`` in float32 (one rounding; NaN stays NaN, +-Inf
    stays +-Inf). For the proximal gradient method of ``lambda * ||w||_1`` with step
    size ``lr``, pass ``threshold = lr * lambda``. Weights set to 0 may grow back
    (no mask): for a permanent cut use a pruning rule.

    Args:
      threshold: ``t >= 0``.

    Returns:
      A project-only :class:`Rule`; info ``sparsity`` / ``sparsity/<i>`` (fraction of
      exact zeros after the step).

    Example:
      >>> import numpy as np
      >>> import gradclip_core as gc
      >>> rule = gc.soft_threshold(0.5)
      >>> w, _, _ = rule.project([np.array([2.0, -0.25, -1.0], np.float32)], rule.init([]))
      >>> w[0].tolist()
      [1.5, 0.0, -0.5]
    """
    t = check_threshold("threshold", threshold)

    def fn(xp: Any, params: list) -> tuple[list, dict]:
        out = []
        for p in params:
            w = upcast(xp, p, formula_dtype(xp, p))
            lo_, hi_ = xp.asarray(-t, dtype=w.dtype), xp.asarray(t, dtype=w.dtype)
            out.append(upcast(xp, w - xp.minimum(xp.maximum(w, lo_), hi_), p.dtype))
        return Replace(tuple(out)), zeros_info(xp, out)

    return project_rule("soft_threshold", fn, real_only="shrinks each value towards 0 by its sign (complex numbers have none)")


@factory
def mcp_threshold(threshold: float, gamma: float = 3.0) -> Rule:
    """Firm thresholding, the proximal step of the MCP penalty (Zhang 2010; Gao & Bruce 1997).

    With ``t = threshold`` and ``gamma > 1``::

        w <- 0                                  if |w| <= t
        w <- sign(w) (|w| - t) * gamma/(gamma-1) if t < |w| <= gamma * t
        w <- w                                  if |w| > gamma * t

    in float32 (``gamma / (gamma - 1)`` and ``gamma * t`` rounded to float32 once).
    Unbiased for large weights, unlike :func:`soft_threshold`. NaN stays NaN.

    Args:
      threshold: ``t >= 0`` (``lr * lambda`` for a proximal gradient step).
      gamma: concavity ``> 1``.

    Returns:
      A project-only :class:`Rule`; info ``sparsity`` / ``sparsity/<i>``.

    Example:
      >>> import numpy as np
      >>> import gradclip_core as gc
      >>> rule = gc.mcp_threshold(1.0, gamma=3.0)
      >>> w, _, _ = rule.project([np.array([0.5, 2.0, -5.0], np.float32)], rule.init([]))
      >>> w[0].tolist()
      [0.0, 1.5, -5.0]
    """
    t = check_threshold("threshold", threshold)
    if not is_number(gamma) or not (float(gamma) > 1.0) or float(gamma) == float("inf"):
        raise ValueError(f"gamma must be a finite number > 1, got {gamma!r}")
    g = float(gamma)
    scale, upper = g / (g - 1.0), g * t

    def fn(xp: Any, params: list) -> tuple[list, dict]:
        out = []
        for p in params:
            dt = formula_dtype(xp, p)
            w = upcast(xp, p, dt)
            lo_, hi_ = xp.asarray(-t, dtype=dt), xp.asarray(t, dtype=dt)
            soft = (w - xp.minimum(xp.maximum(w, lo_), hi_)) * xp.asarray(scale, dtype=dt)
            out.append(upcast(xp, xp.where(xp.abs(w) > xp.asarray(upper, dtype=dt), w, soft), p.dtype))
        return Replace(tuple(out)), zeros_info(xp, out)

    return project_rule("mcp_threshold", fn, real_only="shrinks each value towards 0 by its sign (complex numbers have none)")




@factory
def group_lasso(threshold: float, *, axis: AxisSpec = None) -> Rule:
    """Proximal group-lasso step (block soft threshold): ``w_g <- w_g * max(0, 1 - threshold / ||w_g||_2)``.

    The proximal operator of ``lambda * sum_g ||w_g||_2`` (Yuan & Lin 2006; Parikh & Boyd,
    "Proximal Algorithms", 2014, section 6.5.4) with ``threshold = lr * lambda``: a
    group (unit) whose L2 norm is at most ``threshold`` becomes exactly 0, the others
    shrink towards 0 by ``threshold`` along their direction. Groups are the units of
    ``axis`` (the axes *reduced*, as in :func:`gradclip_core.max_norm`: ``"out_first"``
    rows / filters of torch weights, ``"out_last"`` Keras units, ``(0,)`` the columns of a
    torch ``Linear``); arrays of rank <= 1 form one group. In float32 (float64 kept),
    rounded once to the weight dtype. Groups set to 0 may grow back (no mask): for a
    permanent cut use ``gc.score_prune(..., group=gc.units(axis))``.

    Args:
      threshold: ``t >= 0``.
      axis: the axes forming one group's norm; ``None``: the framework's layout.

    Returns:
      A project-only :class:`Rule`; info ``sparsity`` / ``sparsity/<i>`` (fraction of
      exact zeros after the step).

    Example:
      >>> import numpy as np
      >>> import gradclip_core as gc
      >>> rule = gc.group_lasso(1.0, axis="out_first")
      >>> w, _, _ = rule.project([np.array([[3.0, 4.0], [0.6, 0.8]], np.float32)], rule.init([]))
      >>> w[0].astype(float).round(6).tolist()            # norms 5 and 1
      [[2.4, 3.2], [0.0, 0.0]]
    """
    t = check_threshold("threshold", threshold)
    axis = check_axis(axis)

    def fn(xp: Any, params: list) -> tuple[list, dict]:
        # (on shards: a group spanning shards gets its norm from every participant, see gradclip_core._units)
        (norms,), _, _ = sharded_unit_norms(xp, "group_lasso", [params], axis)
        out = []
        for p, n in zip(params, norms):
            if size(p) == 0:
                out.append(p)
                continue
            dt = formula_dtype(xp, p)
            w = upcast(xp, p, dt)
            norm = upcast(xp, n, dt)
            big = norm > xp.asarray(t, dtype=dt)
            factor = xp.where(big, 1.0 - xp.asarray(t, dtype=dt) / xp.where(big, norm, xp.ones_like(norm)),
                              xp.zeros_like(norm))
            out.append(upcast(xp, w * factor, p.dtype))
        return Replace(tuple(out)), zeros_info(xp, out)

    return project_rule("group_lasso", fn, real_only="shrinks groups by their L2 norm (complex weights are not supported)")
