"""ULP distance between float arrays: how many representable values lie between two results."""

from __future__ import annotations

import numpy as np

_INT = {2: np.int16, 4: np.int32, 8: np.int64}


def _ordered(x: np.ndarray) -> np.ndarray:
    """Map floats to integers whose order and spacing follow the float order (+0 == -0)."""
    bits = x.view(_INT[x.dtype.itemsize]).astype(np.int64)
    sign_min = -(1 << (8 * x.dtype.itemsize - 1))
    return np.where(bits < 0, sign_min - bits, bits)


def ulp_distance(a: np.ndarray, b: np.ndarray) -> int:
    """Largest ULP distance between ``a`` and ``b`` (same shape and dtype).

    NaN matches NaN (distance 0); NaN against a number, or infinities of different
    sign against anything else, count as an unbounded distance (``2**62``).
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.dtype != b.dtype:
        raise AssertionError(f"shape/dtype differ: {a.shape} {a.dtype} vs {b.shape} {b.dtype}")
    if a.size == 0:
        return 0
    na, nb = np.isnan(a.astype(np.float32)), np.isnan(b.astype(np.float32))
    if np.any(na != nb):
        return 1 << 62
    keep = ~na
    if not np.any(keep):
        return 0
    d = np.abs(_ordered(a[keep]) - _ordered(b[keep]))
    return int(d.max())
