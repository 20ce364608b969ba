"""NumPy kernels (``array_api_compat.numpy``): bit-view keys, ``bincount`` histograms, eager branches.

Loaded the first time a NumPy array reaches a primitive. The results are those of
the portable defaults, bit for bit (the core tests compare both on every case).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._selection import NAN_BITS, NAN_KEY, Selection, register_selection
from ._primitives import register_primitives

__all__ = ["register", "order_keys", "SELECTION"]

NAME = "array_api_compat.numpy"
CHUNK = 1 << 20


def order_keys(xp: Any, s: Any) -> np.ndarray:
    """``bits(s)`` of non-negative float32 ``s`` (a view), every NaN ``0x7F800001``."""
    del xp
    s = np.asarray(s, dtype=np.float32)
    return np.where(np.isnan(s), np.int32(NAN_BITS), s.view(np.int32))


def float_from_bits(xp: Any, u: Any) -> np.ndarray:
    """The float32 whose bit pattern is the int32 ``u`` (a view)."""
    del xp
    return np.ascontiguousarray(u, dtype=np.int32).view(np.float32)


def _cond(xp: Any, pred: Any, true_fn: Any, false_fn: Any) -> Any:
    return true_fn() if bool(pred) else false_fn()


def _keys(xp: Any, x: np.ndarray, old: Any, divisor: Any, ws: Any) -> np.ndarray:
    s = np.abs(np.asarray(x, dtype=np.float32))
    if divisor is not None:
        s = s / np.float32(divisor)
    key = order_keys(xp, s) + np.int32(1)
    if old is not None:
        key = np.where(old, key, np.int32(0))
    return key


def _histogram(xp: Any, key: np.ndarray, shift: int, prefix: Any, digit: int, dtype: Any, ws: Any,
               acc: Any) -> np.ndarray:
    top = key >> shift
    bins = 1 << digit
    inside = top[(top >> digit) == int(prefix)] & (bins - 1)
    h = np.bincount(inside, minlength=bins).astype(dtype)
    if acc is None:
        return h
    acc += h
    return acc


def _keep(xp: Any, key: np.ndarray, T: Any, r: Any, before: Any, out: np.ndarray, ws: Any) -> tuple[np.ndarray, Any]:
    T, r, before = int(T), int(r), int(before)
    eq = key == T
    ties = int(np.count_nonzero(eq))
    if before >= r:
        np.greater_equal(key, T, out=out)
    else:
        np.greater(key, T, out=out)
        if before + ties > r:
            out[np.flatnonzero(eq)[r - before:]] = True
    return out, np.int64(ties)


def _gather(xp: Any, key: np.ndarray, shift: int, b: Any, out: np.ndarray, ws: Any) -> tuple[np.ndarray, np.ndarray]:
    top = key >> shift
    np.greater(top, int(b), out=out)
    pos = np.flatnonzero(top == int(b))
    return key[pos], pos


def _scatter(xp: Any, flat: np.ndarray, positions: np.ndarray, values: np.ndarray) -> None:
    flat[positions] = values


def _value(xp: Any, T: Any) -> np.ndarray:
    T = int(T)
    if T == 0:
        return np.zeros((), np.float32)
    if T == NAN_KEY:
        return np.full((), np.nan, np.float32)
    return np.array(T - 1, np.int32).view(np.float32)


SELECTION = Selection(digit=16, chunk=CHUNK, keys=_keys, histogram=_histogram, keep=_keep, gather=_gather,
                      scatter=_scatter, value=_value)


def unpermute(xp: Any, values: Any, order: Any) -> np.ndarray:
    """``out[order] = values`` (index assignment; the default is a second sort)."""
    del xp
    out = np.empty_like(values)
    out[np.asarray(order)] = values
    return out


def register() -> None:
    """Register the NumPy kernels (done on first use).

    Example:
      >>> register()
    """
    register_primitives(NAME, order_keys=order_keys, float_from_bits=float_from_bits, cond=_cond, unpermute=unpermute)
    register_selection(NAME, SELECTION)
