"""Numeric helpers shared by the rules: accumulation dtype, branch-free scales, counts."""

from __future__ import annotations

from typing import Any, Sequence

from .backend._primitives import size, upcast
from .backend._scoped import ScopedValue
from ._validate import is_number

__all__ = ["acc_dtype", "const_like", "count", "min_ratio", "fraction", "ratio", "stack_norm", "flat", "unflat"]


def const_like(xp: Any, ref: Any, value: Any) -> Any:
    """``value`` (a Python number or a 0-d array) as an array of ``ref``'s shape and dtype."""
    if is_number(value):
        return xp.full_like(ref, float(value))
    return xp.broadcast_to(upcast(xp, value, ref.dtype), ref.shape)


# "float64" inside a rule wrapped by gradclip_core.accumulate(rule, "float64") (None elsewhere:
# a plain attribute read, see _scoped.py).
ACCUMULATE = ScopedValue("gradclip_accumulate")


def acc_dtype(xp: Any, xs: Sequence[Any]) -> Any:
    """Accumulation dtype: float64 if any array is float64 (or complex128), else float32 (bf16/fp16 upcast).

    Always float64 inside a rule wrapped by :func:`gradclip_core.accumulate` ``(rule, "float64")``.
    Always a real dtype: the norms of complex arrays are norms of ``|z|``.
    """
    if ACCUMULATE.get() is not None:
        return xp.float64
    c128 = getattr(xp, "complex128", None)
    return xp.float64 if any(x.dtype == xp.float64 or (c128 is not None and x.dtype == c128) for x in xs) else xp.float32


def min_ratio(xp: Any, bound: Any, value: Any) -> Any:
    """``min(1, bound / value)``, branch-free, as ``value``'s dtype.

    ``value <= bound`` (including 0 <= 0) gives exactly 1, never NaN; NaN ``value``
    gives 1 (the NaN is left to propagate through the data); ``value = inf`` gives 0.
    A static ``bound`` of 0 gives 0 (``min(1, 0 / norm)``), also when the squares of
    tiny values underflowed the float32 norm to 0: clipping to 0 always gives zeros.
    """
    if is_number(bound) and float(bound) == 0.0:
        return xp.zeros_like(value)
    over = value > bound
    safe = xp.where(over, value, xp.ones_like(value))
    return xp.where(over, bound / safe, xp.ones_like(value))


def stack_norm(xp: Any, norms: Sequence[Any], ord: float) -> Any:
    """Norm of the vector of per-array norms (equals the norm of all elements together)."""
    return xp.linalg.vector_norm(xp.stack(list(norms)), ord=ord)


def count(xp: Any, flag: Any) -> Any:
    """Number of true elements of a boolean array, as a float32 0-d array."""
    return xp.astype(xp.count_nonzero(flag), xp.float32)


def ratio(xp: Any, hits: Sequence[Any], total: int) -> Any:
    """``sum(hits) / total`` as a float32 0-d array (0 when ``total`` is 0)."""
    if not hits or total == 0:
        return xp.zeros((), dtype=xp.float32)
    acc = hits[0]
    for h in hits[1:]:
        acc = acc + h
    return acc / float(total)


def fraction(xp: Any, flags: Sequence[Any], counts: Sequence[int] | None = None) -> Any:
    """Fraction of true elements over arrays of flags (float32 0-d array; 0 when empty).

    Args:
      flags: boolean arrays.
      counts: their element counts (computed from shapes when omitted).
    """
    counts = [size(f) for f in flags] if counts is None else counts
    return ratio(xp, [count(xp, f) for f, n in zip(flags, counts) if n], sum(counts))


def flat(xp: Any, xs: list) -> Any:
    """The elements of all ``xs``, concatenated into one vector."""
    flat = [xp.reshape(x, (-1,)) for x in xs]
    return flat[0] if len(flat) == 1 else xp.concat(flat)


def unflat(xp: Any, v: Any, like: list) -> list:
    """``v`` split back into arrays shaped like ``like`` (views)."""
    out, start = [], 0
    for x in like:
        n = size(x)
        out.append(xp.reshape(v[start:start + n], tuple(x.shape)))
        start += n
    return out
