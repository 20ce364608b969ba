"""Multi-array primitives, overridable per namespace.

A global rule touches every array of the model; a Python loop of single-array ops
over hundreds of tensors is slow in eager frameworks. The core therefore expresses
its multi-array work through the few primitives below. Each has a portable default
written with the Array API; adapters register faster versions for their namespace
(torch: ``torch._foreach_norm`` / ``torch._foreach_mul``) with
:func:`register_multi_ops`. Every override must return exactly what the default
returns (same values, same dtypes), the parity suite checks it.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

from ._namespace import namespace_name

__all__ = ["register_multi_ops", "array_norms", "array_sumsq", "multiply", "clip", "count_outside", "override"]

_OVERRIDES: dict[str, dict[str, Callable[..., Any]]] = {}
# The pruning primitives (order_keys, prune_smallest, apply_masks, cond) have their
# portable defaults in gradclip_core._select; they are looked up with override().
_PRIMITIVES = ("array_norms", "array_sumsq", "multiply", "clip", "count_outside", "order_keys", "prune_smallest", "apply_masks", "cond")


def register_multi_ops(name: str, **primitives: Callable[..., Any]) -> None:
    """Register fast multi-array primitives for the namespace registered as ``name``.

    Args:
      name: the namespace name, as returned by :func:`gradclip_core.namespace_name`
        (e.g. ``"array_api_compat.torch"``).
      **primitives: any of ``array_norms(xp, xs, ord, dtype)``,
        ``array_sumsq(xp, xs, dtype)``, ``multiply(xp, xs, factors)``,
        ``clip(xp, xs, lo, hi)``, ``count_outside(xp, xs, lo, hi)``, with the signatures and results of the defaults in
        this module; and the pruning primitives ``order_keys``, ``prune_smallest``,
        ``apply_masks``, ``cond`` (defaults and signatures in
        :mod:`gradclip_core._select`). An override may return ``NotImplemented`` to
        fall back to the default for one call.

    Example:
      >>> register_multi_ops("array_api_compat.numpy")  # nothing overridden
    """
    unknown = set(primitives) - set(_PRIMITIVES)
    if unknown:
        raise ValueError(f"unknown primitives {sorted(unknown)}; expected some of {list(_PRIMITIVES)}")
    _OVERRIDES.setdefault(name, {}).update(primitives)


def _override(xp: Any, primitive: str) -> Callable[..., Any] | None:
    table = _OVERRIDES.get(namespace_name(xp))
    return None if table is None else table.get(primitive)


def override(xp: Any, primitive: str) -> Callable[..., Any] | None:
    """The override registered for ``primitive`` on ``xp``'s namespace, or ``None``."""
    return _override(xp, primitive)


def size(x: Any) -> int:
    """Static number of elements of ``x`` (shapes are static in every supported framework)."""
    return math.prod(x.shape)


def upcast(xp: Any, x: Any, dtype: Any) -> Any:
    """``x`` as ``dtype`` (no copy when it already is)."""
    return x if x.dtype == dtype else xp.astype(x, dtype)


def array_norms(xp: Any, xs: Sequence[Any], ord: float, dtype: Any) -> list[Any]:
    """Per-array vector norms of order ``ord`` (1, 2 or inf), accumulated in ``dtype``.

    Size-0 arrays have norm 0 for every order.

    Returns:
      a list of 0-d arrays of ``dtype``, one per input array.
    """
    fast = _override(xp, "array_norms")
    if fast is not None:
        return fast(xp, xs, ord, dtype)
    out = []
    for x in xs:
        if size(x) == 0:
            out.append(xp.zeros((), dtype=dtype))
        else:
            out.append(xp.linalg.vector_norm(upcast(xp, x, dtype), ord=ord))
    return out


def array_sumsq(xp: Any, xs: Sequence[Any], dtype: Any) -> list[Any]:
    """Per-array sums of squares ``sum(x * x)``, accumulated in ``dtype``.

    Returns:
      a list of 0-d arrays of ``dtype``.
    """
    fast = _override(xp, "array_sumsq")
    if fast is not None:
        return fast(xp, xs, dtype)
    out = []
    for x in xs:
        xc = upcast(xp, x, dtype)
        out.append(xp.sum(xc * xc))
    return out


def multiply(xp: Any, xs: Sequence[Any], factors: Sequence[Any]) -> list[Any]:
    """``[x * astype(f, x.dtype) for x, f in zip(xs, factors)]``: scale each array.

    ``factors`` are 0-d arrays (or arrays broadcastable to each ``x``); each is cast
    to its array's dtype first, as the numerics contract requires.
    """
    fast = _override(xp, "multiply")
    if fast is not None:
        return fast(xp, xs, factors)
    return [x * upcast(xp, f, x.dtype) for x, f in zip(xs, factors)]


def clip(xp: Any, xs: Sequence[Any], lo: Any, hi: Any) -> list[Any]:
    """Each array clipped to ``[lo, hi]`` (either bound may be ``None``); NaN stays NaN.

    The bounds are Python numbers or 0-d arrays and are cast to each array's dtype
    first. ``maximum``/``minimum`` rather than ``xp.clip``: NumPy has no clip loop for
    bfloat16 (ml_dtypes) and would promote Python-float bounds.
    """
    fast = _override(xp, "clip")
    if fast is not None:
        res = fast(xp, xs, lo, hi)
        if res is not NotImplemented:
            return res
    out = []
    for x in xs:
        if lo is not None:
            x = xp.maximum(x, xp.asarray(lo, dtype=x.dtype))
        if hi is not None:
            x = xp.minimum(x, xp.asarray(hi, dtype=x.dtype))
        out.append(x)
    return out


def symmetric_bounds(lo: Any, hi: Any) -> bool:
    """Whether ``lo``/``hi`` are Python numbers with ``lo == -hi`` (count ``|x| > hi`` then)."""
    return isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and lo == -hi


def count_outside(xp: Any, xs: Sequence[Any], lo: Any, hi: Any) -> list[Any]:
    """Per array, the number of elements below ``lo`` or above ``hi`` (NaN is neither).

    Bounds as in :func:`clip`. Symmetric Python bounds count ``|x| > hi`` (one compare).

    Returns:
      a list of float32 0-d arrays, one per input array (exact integer counts, then cast).
    """
    fast = _override(xp, "count_outside")
    if fast is not None:
        res = fast(xp, xs, lo, hi)
        if res is not NotImplemented:
            return res
    symmetric = symmetric_bounds(lo, hi)
    out = []
    for x in xs:
        if symmetric:
            flag = xp.abs(x) > xp.asarray(hi, dtype=x.dtype)
        else:
            below = None if lo is None else x < xp.asarray(lo, dtype=x.dtype)
            above = None if hi is None else x > xp.asarray(hi, dtype=x.dtype)
            flag = above if below is None else below if above is None else xp.logical_or(below, above)
        out.append(xp.astype(xp.count_nonzero(flag), xp.float32))
    return out
