"""Adaptive gradient clipping (AGC), unit-wise (Brock et al. 2021, NFNets)."""

from __future__ import annotations

from typing import Any

from .._effect import Scale
from .._nonfinite import check_policy
from .._numerics import acc_dtype, count, flat, fraction, unflat
from .._rule import Rule, factory
from .._stateless import stateless_rule
from .._validate import check_threshold
from ..backend._collective import active, all_reduce, split_on_leading_axis, static_total
from ..backend._layout import _DEFAULT_LAYOUT, _OVERRIDE, AxisSpec, check_axis, reduce_axes
from ..backend._namespace import namespace_name
from ..backend._primitives import is_complex, magnitude, size, upcast
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


def _unit_sumsq(xp: Any, x: Any, axes: tuple | None, dtype: Any) -> Any:
    if dtype == xp.float64 and x.dtype != xp.float64 and size(x):  # gc.accumulate: no float64 copy of x (backends chunk)
        n = _unit_norms(xp, [x], [axes], [dtype])[0]
        return n * n
    xc = magnitude(xp, x, dtype) if is_complex(x) else upcast(xp, x, dtype)  # complex: |z|
    return xp.sum(xc * xc, axis=axes, keepdims=True)


def _unit_axes(xp: Any, axis: Any, shape: tuple) -> tuple | None:
    """``reduce_axes`` of the *full* array: shards have a smaller leading dimension.

    ``"out_first"``, ``"out_last"`` and explicit axes depend on the rank only; ``"optax"``
    (which skips size-1 dimensions) and callables see the full shape, whose leading
    dimension is summed over participants (:func:`gradclip_core.backend.static_total`).
    """
    if not active() or not shape:
        return reduce_axes(xp, axis, shape)
    resolved = axis
    if resolved is None:
        resolved = _OVERRIDE.get() or _DEFAULT_LAYOUT.get(namespace_name(xp))
    if resolved == "optax" or callable(resolved):
        shape = (static_total(shape[0]),) + tuple(shape[1:])
    return reduce_axes(xp, axis, shape)


def _split(axes: tuple | None, ndim: int) -> bool:
    """Whether a unit spans shards: shards split the leading axis, and the unit reduces it."""
    return ndim >= 1 and (axes is None or 0 in axes)


def _sharded_unit_norms(xp: Any, grads: list, params: list, axis: Any) -> dict:
    """``{i: (g_norm, p_norm)}`` of the full units of arrays whose units span shards.

    One collective: the per-unit sums of squares of all those arrays (gradients and
    weights) are concatenated into one vector, summed over participants, split back.
    """
    idx, parts = [], []
    for i, (g, p) in enumerate(zip(grads, params)):
        axes = _unit_axes(xp, axis, tuple(g.shape))
        if _split(axes, g.ndim):
            dt = acc_dtype(xp, [g])
            idx.append(i)
            parts += [_unit_sumsq(xp, g, axes, dt), _unit_sumsq(xp, p, axes, dt)]
    if not idx:
        return {}
    dt = xp.float64 if any(x.dtype == xp.float64 for x in parts) else xp.float32
    flat = xp.concat([xp.reshape(upcast(xp, x, dt), (-1,)) for x in parts])
    total = xp.sqrt(all_reduce(xp, flat, "sum"))
    out, start = {}, 0
    for j, i in enumerate(idx):
        pair = []
        for x in parts[2 * j : 2 * j + 2]:
            n = size(x)
            pair.append(upcast(xp, xp.reshape(total[start : start + n], x.shape), x.dtype))
            start += n
        out[i] = tuple(pair)
    return out


def _sharded_fraction(xp: Any, flags: list, split: dict) -> Any:
    """Clipped fraction of all units over participants (one collective).

    Units that span shards have the same flag on every participant and count once;
    the others are summed over participants.
    """
    local = [f for i, f in enumerate(flags) if i not in split]
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
        if sharded and not split_on_leading_axis():
            raise ValueError("adaptive_clip: some arrays are split along another axis than the leading one (e.g. "
                             "tensor parallel Shard(1)): their units would span shards on some participants only; "
                             "apply AGC to arrays sharded on dim 0 (FSDP2, ColwiseParallel) or gather them")
        split = _sharded_unit_norms(xp, grads, params, axis) if sharded else {}
        axes = [_unit_axes(xp, axis, tuple(g.shape)) for g in grads]
        dt = acc_dtype(xp, grads)  # float64 when any array is float64, else float32
        local = [i for i in range(len(grads)) if i not in split]
        g_local = _unit_norms(xp, [grads[i] for i in local], [axes[i] for i in local], [dt] * len(local))
        p_local = _unit_norms(xp, [params[i] for i in local], [axes[i] for i in local], [dt] * len(local))
        g_norms: list = [None] * len(grads)
        p_norms: list = [None] * len(grads)
        for i, gn, pn in zip(local, g_local, p_local):
            g_norms[i], p_norms[i] = gn, pn
        for i, (gn, pn) in split.items():
            g_norms[i], p_norms[i] = upcast(xp, gn, dt), upcast(xp, pn, dt)
        # Every unit of every array as one vector: a few operations in all, not a few per array.
        gv, pv = flat(xp, g_norms), flat(xp, p_norms)
        max_norm = clipping * xp.clip(pv, min=eps)
        trigger = gv < max_norm
        ratio = max_norm / xp.clip(gv, min=_DIV_EPS)
        factors = unflat(xp, xp.where(trigger, xp.ones_like(ratio), ratio), g_norms)
        if sharded:
            flags = unflat(xp, xp.logical_not(trigger), g_norms)
            return Scale(tuple(factors)), {"clipped_fraction": _sharded_fraction(xp, flags, split)}
        return Scale(tuple(factors)), {"clipped_fraction": fraction(xp, [xp.logical_not(trigger)])}

    return stateless_rule("adaptive_clip", clip, nonfinite, needs_params=True)
