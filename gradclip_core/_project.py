"""Project-only rules: proximal shrinkage (soft threshold, MCP) and weight constraints.

They act on the weights after the optimizer step (``update`` is the identity) and
keep no state. Every formula runs in float32 (bf16/fp16 upcast exactly, float64 kept)
and is rounded once to the weight dtype, except where it says otherwise.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from ._layout import AxisSpec, check_axis, reduce_axes
from ._multi import clip as clip_arrays
from ._multi import size, upcast
from ._namespace import namespace
from ._numerics import count, ratio
from ._prune import sparsity_info
from ._rule import Rule, _identity_init, factory
from ._validate import check_bounds, check_threshold, is_number

__all__ = ["soft_threshold", "mcp_threshold", "clip_weights", "max_norm", "min_max_norm", "unit_norm", "non_neg"]

KERAS_EPS = 1e-7  # keras.config.epsilon()


def _dt(xp: Any, x: Any) -> Any:
    return xp.float64 if x.dtype == xp.float64 else xp.float32


def project_rule(name: str, fn: Callable[[Any, list], "tuple[list, dict]"]) -> Rule:
    """A stateless :class:`Rule` whose ``project`` is ``fn(xp, params)``."""

    def project(params: Sequence[Any], state: Any):
        params = list(params)
        if not params:
            return params, state, {}
        out, info = fn(namespace(*params), params)
        return out, state, info

    return Rule(init=_identity_init, project=project, name=name)


def _zeros_info(xp: Any, out: list) -> dict:
    return sparsity_info(xp, [x != 0 for x in out])


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
            w = upcast(xp, p, _dt(xp, p))
            lo_, hi_ = xp.asarray(-t, dtype=w.dtype), xp.asarray(t, dtype=w.dtype)
            out.append(upcast(xp, w - xp.minimum(xp.maximum(w, lo_), hi_), p.dtype))
        return out, _zeros_info(xp, out)

    return project_rule("soft_threshold", fn)


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
            dt = _dt(xp, p)
            w = upcast(xp, p, dt)
            lo_, hi_ = xp.asarray(-t, dtype=dt), xp.asarray(t, dtype=dt)
            soft = (w - xp.minimum(xp.maximum(w, lo_), hi_)) * xp.asarray(scale, dtype=dt)
            out.append(upcast(xp, xp.where(xp.abs(w) > xp.asarray(upper, dtype=dt), w, soft), p.dtype))
        return out, _zeros_info(xp, out)

    return project_rule("mcp_threshold", fn)


@factory
def clip_weights(clip_value: float | None = None, *, lo: float | None = None, hi: float | None = None) -> Rule:
    """Weight clipping to ``[-c, c]`` or ``[lo, hi]`` after every step (WGAN's critic: ``c = 0.01``).

    Element-wise, exact in every dtype (bounds rounded to the weight dtype, NaN stays NaN).

    Args:
      clip_value: symmetric bound ``c >= 0``; or ``lo`` / ``hi`` (either may be None).

    Returns:
      A project-only :class:`Rule`; info ``clipped_fraction`` (elements outside the bounds).

    Example:
      >>> import numpy as np
      >>> import gradclip_core as gc
      >>> rule = gc.clip_weights(0.01)
      >>> w, _, info = rule.project([np.array([0.5, -0.005], np.float32)], rule.init([]))
      >>> w[0].tolist()
      [0.009999999776482582, -0.004999999888241291]
    """
    lo_, hi_ = check_bounds("clip_weights", clip_value, lo, hi)

    def fn(xp: Any, params: list) -> tuple[list, dict]:
        hits = []
        for p in params:
            if lo_ is not None:
                hits.append(count(xp, p < xp.asarray(lo_, dtype=p.dtype)))
            if hi_ is not None:
                hits.append(count(xp, p > xp.asarray(hi_, dtype=p.dtype)))
        total = sum(size(p) for p in params)
        return clip_arrays(xp, params, lo_, hi_), {"clipped_fraction": ratio(xp, hits, total)}

    return project_rule("clip_weights", fn)


def _norm_rule(name: str, axis: AxisSpec, eps: float, desired: Callable[[Any, Any], Any] | None) -> Rule:
    """Keras' norm constraints: ``w * (desired(norms) / (eps + norms))`` (``w / (eps + norms)`` for unit norm)."""

    def fn(xp: Any, params: list) -> tuple[list, dict]:
        out = []
        for p in params:
            dt = _dt(xp, p)
            w = upcast(xp, p, dt)
            axes = reduce_axes(xp, axis, tuple(p.shape))
            norms = xp.sqrt(xp.sum(w * w, axis=axes, keepdims=True))
            if desired is None:
                res = w / (eps + norms)
            else:
                res = w * (desired(xp, norms) / (eps + norms))
            out.append(upcast(xp, res, p.dtype))
        return out, {}

    return project_rule(name, fn)


def _check_eps(eps: Any) -> float:
    return check_threshold("eps", eps)


@factory
def max_norm(max_value: float = 2.0, *, axis: AxisSpec = None, eps: float = KERAS_EPS) -> Rule:
    """Keras ``MaxNorm``: each unit's L2 norm clipped to ``max_value``: ``w * clip(n, 0, max) / (eps + n)``.

    Norms are taken over ``axis`` (the axes reduced, :mod:`gradclip_core._layout`;
    Keras' ``axis=0`` on a Dense ``(in, out)`` kernel is ``axis=0`` or ``"out_last"``),
    in float32, and the result is rounded once to the weight dtype (Keras works in the
    weight dtype). ``eps`` is Keras' ``epsilon()``, 1e-7: a unit exactly at the bound
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


@factory
def non_neg() -> Rule:
    """Keras ``NonNeg``: ``maximum(w, 0)`` (exact; NaN stays NaN).

    Returns:
      A project-only :class:`Rule`; info ``clipped_fraction`` (negative elements).

    Example:
      >>> import numpy as np
      >>> import gradclip_core as gc
      >>> w, _, _ = gc.non_neg().project([np.array([-1.0, 2.0], np.float32)], ())
      >>> w[0].tolist()
      [0.0, 2.0]
    """

    def fn(xp: Any, params: list) -> tuple[list, dict]:
        hits = [count(xp, p < xp.asarray(0.0, dtype=p.dtype)) for p in params]
        return clip_arrays(xp, params, 0.0, None), {"clipped_fraction": ratio(xp, hits, sum(size(p) for p in params))}

    return project_rule("non_neg", fn)
