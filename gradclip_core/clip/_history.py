"""A fixed-size ring buffer of gradient norms and an exact, branch-free percentile over it.

Shared by :func:`gradclip_core.autoclip` (clip at a percentile of the history) and
:func:`gradclip_core.record_norms` / :func:`gradclip_core.suggest_threshold`.

:class:`NormHistory` holds arrays only (an int32 count, an int32 write position, a
float32 buffer of static size), so it is a JAX pytree, a torch ``state_dict`` and a list
of Keras variables, and every operation here has fixed shapes and no host sync.

Percentile (``method="linear"``, the default of ``numpy.percentile`` and
``torch.quantile``): the ``n`` valid entries are sorted (invalid slots are masked as
``+inf`` and sort last), and with ``pos = (p / 100) * (n - 1)``, ``lo = floor(pos)``,
``hi = min(lo + 1, n - 1)``, ``t = pos - lo``::

    result = v[lo] + (v[hi] - v[lo]) * t        if t < 0.5
           = v[hi] - (v[hi] - v[lo]) * (1 - t)  otherwise  (NumPy's _lerp, same order)

``method="lower"`` returns ``v[lo]`` (always a norm that was actually observed).
``lo`` and ``t`` are computed exactly from the decimal ``p`` (integer arithmetic:
``lo = (num * m) // den``, ``t = remainder / den`` rounded once, for ``p = num / den``
written as the user wrote it), so the chosen entries are always the right ones; NumPy
computes ``pos`` in float64, and the result is within about an ulp of float32 of
``numpy.percentile`` on float32 data. Percentiles with many decimal digits (where
``num * (size - 1)`` would overflow int32) fall back to a float32 ``pos``: ``t`` is then
off by about ``1e-7`` (and ``lo`` may round down at exact integers).
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any, Callable, NamedTuple, Sequence

from ..backend._namespace import device_kw, state_namespace

__all__ = ["NormHistory", "init_history", "history_init", "push", "percentile", "check_percentile", "check_size", "METHODS"]

METHODS = ("linear", "lower")


class NormHistory(NamedTuple):
    """Ring buffer of the last ``size`` norms.

    Attributes:
      count: int32 0-d array, the number of valid entries (saturates at the size).
      index: int32 0-d array, the slot the next norm is written to.
      norms: float32 array of shape ``(size,)``; slots ``>= count`` are unused.
    """

    count: Any
    index: Any
    norms: Any


def check_size(name: str, value: Any) -> int:
    """A static buffer size: a Python int ``>= 1``."""
    if value is None:
        raise ValueError(
            f"{name} must be an int >= 1: the history is a fixed-size buffer (so the rule runs under "
            "jax.jit, tf.function and torch.compile); an unbounded history is not possible, use a large size"
        )
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


def check_percentile(name: str, value: Any) -> float:
    """A percentile in ``[0, 100]`` (a Python number)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0.0 <= float(value) <= 100.0):
        raise ValueError(f"{name} must be a number in [0, 100], got {value!r}")
    return float(value)


def init_history(xp: Any, size: int, **kw: Any) -> NormHistory:
    """An empty history of ``size`` slots."""
    return NormHistory(
        xp.zeros((), dtype=xp.int32, **kw),
        xp.zeros((), dtype=xp.int32, **kw),
        xp.zeros((size,), dtype=xp.float32, **kw),
    )


def history_init(size: int) -> Callable[[Sequence[Any]], NormHistory]:
    """A rule's ``init``: an empty history of ``size`` slots, on the parameters' device."""

    def init(params: Sequence[Any]) -> NormHistory:
        params = list(params)
        return init_history(state_namespace(params), size, **device_kw(params))

    return init


def push(xp: Any, hist: NormHistory, value: Any) -> NormHistory:
    """``hist`` with the 0-d ``value`` written to the next slot (oldest overwritten when full)."""
    size = hist.norms.shape[0]
    slots = xp.arange(size, dtype=xp.int32)
    v = xp.astype(value, xp.float32) if value.dtype != xp.float32 else value
    norms = xp.where(slots == hist.index, v, hist.norms)
    nxt = hist.index + 1
    index = xp.where(nxt >= size, xp.zeros_like(nxt), nxt)
    count = xp.minimum(hist.count + 1, xp.full_like(hist.count, size))
    return NormHistory(count, index, norms)


def _pick(xp: Any, sorted_: Any, slots: Any, i: Any) -> Any:
    """``sorted_[i]`` for a 0-d int32 ``i``, as a one-hot sum (exact; only where/sum needed)."""
    return xp.sum(xp.where(slots == i, sorted_, xp.zeros_like(sorted_)))


def percentile(xp: Any, values: Any, valid: Any, p: float, method: str = "linear") -> Any:
    """Exact ``p``-th percentile of ``values[valid]`` (1-d float32), branch-free.

    Args:
      values: 1-d float32 array.
      valid: bool array of the same shape, which entries count.
      p: percentile in ``[0, 100]`` (a Python number).
      method: ``"linear"`` (NumPy's default) or ``"lower"``.

    Returns:
      A float32 0-d array; NaN when no entry is valid, or when a valid entry is NaN
      (as ``numpy.percentile``).
    """
    size = values.shape[0]
    slots = xp.arange(size, dtype=xp.int32)
    inf = xp.full_like(values, math.inf)
    s = xp.sort(xp.where(valid, values, inf))
    n = xp.astype(xp.count_nonzero(valid), xp.int32)
    m = xp.maximum(n - 1, xp.zeros_like(n))  # pos = p / 100 * m
    frac = Fraction(str(p))  # the decimal the user wrote: 99.9 -> 999/10
    num, den = frac.numerator, 100 * frac.denominator
    if num * max(size - 1, 1) < 2**31 and den < 2**24:
        # Exact: lo = floor(num * m / den) in int32, t = remainder / den rounded once.
        prod = m * num
        lo = prod // den
        t = xp.astype(prod - lo * den, xp.float32) / float(den)
    else:  # float32 position (may round lo down at exact integers)
        pos = (p / 100.0) * xp.astype(m, xp.float32)
        lo_f = xp.floor(pos)
        lo = xp.astype(lo_f, xp.int32)
        t = pos - lo_f
    a = _pick(xp, s, slots, lo)
    if method == "lower":
        out = a
    else:
        hi = xp.minimum(lo + 1, xp.maximum(n - 1, xp.zeros_like(n)))
        b = _pick(xp, s, slots, hi)
        same = a == b  # also +inf == +inf: no inf - inf
        d = xp.where(same, xp.zeros_like(a), b - a)
        lerp = xp.where(t >= 0.5, b - d * (1.0 - t), a + d * t)
        out = xp.where(same, a, lerp)
    has_nan = xp.any(xp.logical_and(valid, xp.isnan(values)))
    bad = xp.logical_or(n == 0, has_nan)
    return xp.where(bad, xp.full_like(out, math.nan), out)
