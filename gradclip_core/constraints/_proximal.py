"""Proximal shrinkage steps: soft threshold (L1 / LASSO) and firm threshold (MCP).

They act on the weights after the optimizer step and keep no state. Every formula
runs in float32 (bf16/fp16 upcast exactly, float64 kept) and is rounded once to the
weight dtype.
"""

from __future__ import annotations

from typing import Any

from .._effect import Replace
from .._rule import Rule, factory
from .._validate import check_threshold, is_number
from ..backend._primitives import upcast
from ._base import formula_dtype, project_rule, zeros_info

__all__ = ["soft_threshold", "mcp_threshold"]


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


