"""Adaptive gradient clipping (AGC), unit-wise (Brock et al. 2021, NFNets)."""

from __future__ import annotations

from typing import Any

from ._layout import AxisSpec, check_axis, reduce_axes
from ._multi import upcast
from ._nonfinite import check_policy
from ._numerics import const_like, fraction
from ._rule import Rule, factory
from ._stateless import stateless_rule
from ._validate import check_threshold

__all__ = ["adaptive_clip", "unit_norms"]

_DIV_EPS = 1e-6


def unit_norms(xp: Any, x: Any, axes: tuple | None, dtype: Any) -> Any:
    """L2 norm of each unit of ``x`` (``sqrt(sum(x**2))`` over ``axes``, kept as size-1 dims)."""
    xc = upcast(xp, x, dtype)
    return xp.sqrt(xp.sum(xc * xc, axis=axes, keepdims=True))


@factory
def adaptive_clip(
    clipping: float,
    eps: float = 1e-3,
    *,
    axis: AxisSpec = None,
    nonfinite: str = "propagate",
) -> Rule:
    """Clip each unit's gradient to ``clipping * max(||w_unit||, eps)`` (AGC).

    For every unit (output neuron / channel) of every array::

        max_norm = clipping * max(||w||, eps)
        g <- g                                  if ||g|| < max_norm
        g <- g * (max_norm / max(||g||, 1e-6))  otherwise

    which is the formula of NFNets, ``optax.adaptive_grad_clip`` and timm's
    ``adaptive_clip_grad`` (same operation order). Norms accumulate in float32 at least.

    Args:
      clipping: ratio bound ``>= 0`` (``clip_factor`` in timm, typically 0.01 - 0.16).
      eps: floor ``>= 0`` on the weight norm, so zero-initialised weights can move.
      axis: which axes form a unit's norm (see :mod:`gradclip_core._layout`):
        ``"out_first"`` (torch ``(out, in, ...)``), ``"out_last"`` (Keras
        ``(..., in, out)``), ``"optax"`` (optax's rule), explicit axes, a callable,
        or ``None`` for the framework's native layout (must be explicit for NumPy).
      nonfinite: ``"propagate" | "zero" | "skip" | "raise"``.

    Returns:
      A stateless :class:`Rule` that needs ``params`` in ``update``; info has
      ``clipped_fraction`` (fraction of units scaled down).

    Example:
      >>> import numpy as np
      >>> import gradclip_core as gc
      >>> rule = gc.adaptive_clip(0.1, axis="out_first")
      >>> w = [np.array([[3.0, 4.0], [0.0, 1.0]], np.float32)]   # unit norms 5 and 1
      >>> g = [np.array([[1.0, 0.0], [0.0, 0.05]], np.float32)]  # unit norms 1 and 0.05
      >>> out, _, info = rule.update(g, rule.init(w), w)
      >>> out[0].astype(float).round(6).tolist(), float(info["clipped_fraction"])
      ([[0.5, 0.0], [0.0, 0.05]], 0.5)
    """
    clipping = check_threshold("clipping", clipping)
    eps = check_threshold("eps", eps)
    axis = check_axis(axis)
    check_policy(nonfinite)

    def clip(xp: Any, grads: list, params: list) -> tuple[list, dict]:
        out, flags = [], []
        for g, p in zip(grads, params):
            axes = reduce_axes(xp, axis, tuple(g.shape))
            dt = xp.float64 if g.dtype == xp.float64 else xp.float32
            g_norm = unit_norms(xp, g, axes, dt)
            max_norm = clipping * xp.maximum(unit_norms(xp, p, axes, dt), const_like(xp, g_norm, eps))
            trigger = g_norm < max_norm
            gc = upcast(xp, g, dt)
            clipped = gc * (max_norm / xp.maximum(g_norm, const_like(xp, g_norm, _DIV_EPS)))
            out.append(upcast(xp, xp.where(trigger, gc, clipped), g.dtype))
            flags.append(xp.logical_not(trigger))
        return out, {"clipped_fraction": fraction(xp, flags)}

    return stateless_rule("adaptive_clip", clip, nonfinite, needs_params=True)
