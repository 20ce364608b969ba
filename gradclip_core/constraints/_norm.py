"""Norm constraints of Keras (``MaxNorm``, ``MinMaxNorm``, ``UnitNorm``), unit-wise over explicit axes.

Each unit's L2 norm is computed in float32 (float64 kept); the effect is one factor per
unit (``desired / (eps + norm)``; ``unit_norm`` divides by ``eps + norm``), cast to the
weight dtype and applied in place by the torch adapter. On shards, a unit that spans
shards gets its norm from every participant's partial sum (see :mod:`gradclip_core._units`).
"""

from __future__ import annotations

from typing import Any, Callable

from .._effect import Scale
from .._rule import Rule, factory
from .._validate import check_threshold, is_number
from .._units import sharded_unit_norms
from ..backend._layout import AxisSpec, check_axis
from .._numerics import flat, unflat
from ._base import KERAS_EPS, project_rule

__all__ = ["max_norm", "min_max_norm", "unit_norm"]


def _norm_rule(name: str, axis: AxisSpec, eps: float, desired: Callable[[Any, Any], Any] | None) -> Rule:
    """Keras' norm constraints: ``w * (desired(norms) / (eps + norms))`` (``w / (eps + norms)`` for unit norm).

    As in Keras, a factor is the same for every element of a unit; the formula runs in
    float32 and the factor is cast to the weight dtype before it is applied.
    """

    def fn(xp: Any, params: list) -> tuple[Scale, dict]:
        # on shards: a unit spanning shards (e.g. a Shard(1) weight's rows) gets its norm from all participants
        (norms,), _, _ = sharded_unit_norms(xp, name, [params], axis)
        n = flat(xp, norms)  # every unit of every weight as one vector: a few operations in all
        f = eps + n if desired is None else desired(xp, n) / (eps + n)
        return Scale(tuple(unflat(xp, f, norms)), divide=desired is None), {}

    return project_rule(name, fn)


def _check_eps(eps: Any) -> float:
    return check_threshold("eps", eps)


@factory
def max_norm(max_value: float = 2.0, *, axis: AxisSpec = None, eps: float = KERAS_EPS) -> Rule:
    """Keras ``MaxNorm``: each unit's L2 norm clipped to ``max_value``: ``w * clip(n, 0, max) / (eps + n)``.

    Norms are taken over ``axis`` (the axes reduced, :mod:`gradclip_core.backend._layout`;
    Keras' ``axis=0`` on a Dense ``(in, out)`` kernel is ``axis=0`` or ``"out_last"``),
    in float32; the factor is cast to the weight dtype (Keras works in the weight dtype). ``eps`` is Keras' ``epsilon()``, 1e-7: a unit exactly at the bound
    shrinks by ``~eps / max_value``, as in Keras.

    Args:
      max_value: the bound ``>= 0``.
      axis: the axes of one unit's norm; ``None``: the framework's native layout.
      eps: the epsilon of the denominator.

    Returns:
      A project-only :class:`Rule` (info empty).

    Example:
      >>> import numpy as np
      >>> import gradclip_core as gc
      >>> rule = gc.max_norm(1.0, axis=0)
      >>> w, _, _ = rule.project([np.array([[3.0, 0.1], [4.0, 0.0]], np.float32)], rule.init([]))
      >>> w[0].astype(float).round(4).tolist()
      [[0.6, 0.1], [0.8, 0.0]]
    """
    mv = check_threshold("max_value", max_value)
    axis = check_axis(axis)
    eps = _check_eps(eps)
    return _norm_rule("max_norm", axis, eps, lambda xp, n: xp.minimum(n, xp.asarray(mv, dtype=n.dtype)))


@factory
def min_max_norm(
    min_value: float = 0.0, max_value: float = 1.0, rate: float = 1.0, *, axis: AxisSpec = None, eps: float = KERAS_EPS
) -> Rule:
    """Keras ``MinMaxNorm``: ``desired = rate * clip(n, min, max) + (1 - rate) * n``; ``w * desired / (eps + n)``.

    Args:
      min_value: lower bound ``>= 0`` on each unit's norm.
      max_value: upper bound ``>= min_value``.
      rate: in ``[0, 1]``; 1 enforces the bounds strictly.
      axis: the axes of one unit's norm; ``None``: the framework's native layout.
      eps: the epsilon of the denominator (Keras: 1e-7).

    Returns:
      A project-only :class:`Rule` (info empty).

    Example:
      >>> import numpy as np
      >>> import gradclip_core as gc
      >>> rule = gc.min_max_norm(1.0, 2.0, axis=0)
      >>> w, _, _ = rule.project([np.array([[0.3], [0.4]], np.float32)], rule.init([]))
      >>> w[0].astype(float).round(4).tolist()
      [[0.6], [0.8]]
    """
    lo = check_threshold("min_value", min_value)
    hi = check_threshold("max_value", max_value)
    if lo > hi:
        raise ValueError(f"min_value must be <= max_value, got {min_value!r} > {max_value!r}")
    if not is_number(rate) or not 0.0 <= float(rate) <= 1.0:
        raise ValueError(f"rate must be a number in [0, 1], got {rate!r}")
    r = float(rate)
    axis = check_axis(axis)
    eps = _check_eps(eps)
    return _norm_rule(
        "min_max_norm", axis, eps, lambda xp, n: r * xp.minimum(xp.maximum(n, xp.asarray(lo, dtype=n.dtype)), xp.asarray(hi, dtype=n.dtype)) + (1.0 - r) * n
    )


@factory
def unit_norm(*, axis: AxisSpec = None, eps: float = KERAS_EPS) -> Rule:
    """Keras ``UnitNorm``: ``w / (eps + ||w_unit||)``.

    Args:
      axis: the axes of one unit's norm; ``None``: the framework's native layout.
      eps: the epsilon of the denominator (Keras: 1e-7).

    Returns:
      A project-only :class:`Rule` (info empty).

    Example:
      >>> import numpy as np
      >>> import gradclip_core as gc
      >>> w, _, _ = gc.unit_norm(axis=0).project([np.array([[3.0], [4.0]], np.float32)], ())
      >>> w[0].astype(float).round(4).tolist()
      [[0.6], [0.8]]
    """
    axis = check_axis(axis)
    eps = _check_eps(eps)
    return _norm_rule("unit_norm", axis, eps, None)


