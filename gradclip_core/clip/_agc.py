"""Adaptive gradient clipping (AGC), unit-wise (Brock et al. 2021, NFNets)."""

from __future__ import annotations

from typing import Any

from .._effect import Scale
from .._nonfinite import check_policy
from .._numerics import count, flat, fraction, unflat
from .._rule import Rule, factory
from .._stateless import stateless_rule
from .._units import sharded_unit_norms
from .._validate import check_threshold
from ..backend._collective import active, all_reduce
from ..backend._layout import AxisSpec, check_axis
from ..backend._primitives import size
from ..backend._primitives import unit_norms as _unit_norms

__all__ = ["adaptive_clip", "unit_norms"]

_DIV_EPS = 1e-6


def unit_norms(xp: Any, x: Any, axes: tuple | None, dtype: Any) -> Any:
    """L2 norm of each unit of ``x`` (``sqrt(sum(x**2))`` over ``axes``, kept as size-1 dims).

    Example:
      >>> import numpy as np
      >>> from gradclip_core.backend import namespace
      >>> x = np.array([[3.0, 4.0], [0.0, 1.0]], np.float32)
      >>> unit_norms(namespace(x), x, (1,), np.float32).tolist()
      [[5.0], [1.0]]
    """
    return _unit_norms(xp, [x], [axes], [dtype])[0]


def _sharded_fraction(xp: Any, flags: list, split: set, echoes: set) -> Any:
    """Clipped fraction of all units over participants (one collective).

    Units that span shards (``split``: their arrays' positions) have the same flag on
    every participant and count once; units another participant counts (``echoes``: an
    array split along two axes) are left out here; the others are summed over participants.
    """
    local = [f for i, f in enumerate(flags) if i not in split and i not in echoes]
    shared = [f for i, f in enumerate(flags) if i in split]
    zero = xp.zeros((), dtype=xp.float32)
    hits = sum((count(xp, f) for f in local), zero)
    n_local = float(sum(size(f) for f in local))
    both = all_reduce(xp, xp.stack([hits, xp.asarray(n_local, dtype=xp.float32)]), "sum")
    hits = both[0] + sum((count(xp, f) for f in shared), zero)
    total = both[1] + float(sum(size(f) for f in shared))
    return xp.where(total > 0, hits / xp.where(total > 0, total, xp.ones_like(total)), zero)


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
    The effect is one factor per unit (``1`` where not clipped), cast to the gradient's
    dtype and multiplied in place by the torch adapter.

    Args:
      clipping: ratio bound ``>= 0`` (``clip_factor`` in timm, typically 0.01 - 0.16).
      eps: floor ``>= 0`` on the weight norm, so zero-initialised weights can move.
      axis: which axes form a unit's norm (see :mod:`gradclip_core.backend._layout`):
        ``"out_first"`` (torch ``(out, in, ...)``), ``"out_last"`` (Keras
        ``(..., in, out)``), ``"optax"`` (optax's rule), explicit axes, a callable,
        or ``None`` for the framework's native layout (must be explicit for NumPy).
      nonfinite: ``"propagate" | "zero" | "skip" | "raise"``.

    Returns:
      A stateless :class:`Rule` that needs ``params`` in ``update``; info has
      ``clipped_fraction`` (fraction of units scaled down).

    On shards (a reducer active, :mod:`gradclip_core.backend._collective`), a unit that
    spans shards (its reduced axes hold the array's split axis, e.g. ``"out_first"`` on a
    tensor parallel ``Shard(1)`` weight) gets its norm from the participants' partial
    sums, and counts once in ``clipped_fraction``; so does a unit of an array split along
    two axes that spans only one of them (FSDP2 ``Shard(0)`` x ``RowwiseParallel``
    ``Shard(1)``) when the reducer gives the shards' offsets (refused without them).

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

    def clip(xp: Any, grads: list, params: list) -> tuple[Scale, dict]:
        sharded = active()
        # on shards: units that span shards (their reduced axes hold the split axis) are summed over participants
        (g_norms, p_norms), split, echoes = sharded_unit_norms(xp, "adaptive_clip", [grads, params], axis)
        # Every unit of every array as one vector: a few operations in all, not a few per array.
        gv, pv = flat(xp, g_norms), flat(xp, p_norms)
        max_norm = clipping * xp.clip(pv, min=eps)
        trigger = gv < max_norm
        ratio = max_norm / xp.clip(gv, min=_DIV_EPS)
        factors = unflat(xp, xp.where(trigger, xp.ones_like(ratio), ratio), g_norms)
        if sharded:
            flags = unflat(xp, xp.logical_not(trigger), g_norms)
            return Scale(tuple(factors)), {"clipped_fraction": _sharded_fraction(xp, flags, split, echoes)}
        return Scale(tuple(factors)), {"clipped_fraction": fraction(xp, [xp.logical_not(trigger)])}

    return stateless_rule("adaptive_clip", clip, nonfinite, needs_params=True)
