"""Shared helpers for the core tests: the namespaces every rule is tested on, conversions."""

from __future__ import annotations

import array_api_strict
import numpy as np
import pytest
from array_api_compat import numpy as compat_np

from ..fixtures import rand_arrays  # noqa: F401  (the core tests' seeded arrays)

# Every core rule runs on both: NumPy (through array-api-compat) and array-api-strict,
# which rejects anything outside the standard.
NAMESPACES = [pytest.param(compat_np, id="numpy"), pytest.param(array_api_strict, id="strict")]


def to_xp(xp, arrays):
    """NumPy arrays -> arrays of ``xp`` (same dtype)."""
    return [xp.asarray(np.asarray(a)) for a in arrays]


def to_np(arrays):
    """Arrays of any namespace -> NumPy arrays."""
    return [np.asarray(a) for a in arrays]


def run_update(rule, xp, grads, params=None):
    """init + one update on ``xp`` arrays; returns (NumPy grads, state, info as floats)."""
    g = to_xp(xp, grads)
    p = to_xp(xp, params) if params is not None else g
    state = rule.init(p)
    out, state, info = rule.update(g, state, p if params is not None else None)
    return to_np(out), state, {k: float(v) for k, v in info.items()}


SHAPES = [(5, 3), (7,), (), (0, 4), (2, 3, 2)]
