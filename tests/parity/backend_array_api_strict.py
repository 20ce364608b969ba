"""Parity backend: the core itself on array-api-strict arrays (float32 cases only).

It proves the harness and that the reference loop uses nothing outside the standard;
the framework backends (torch, optax, Keras) live beside it.
"""

from __future__ import annotations

import numpy as np

from .cases import LR, Case
from .reference import Step, masks_of

NAME = "array_api_strict"
DTYPES = ("float32",)


def available() -> bool:
    try:
        import array_api_strict  # noqa: F401
    except ImportError:
        return False
    return True


def run(make_rule, case: Case) -> list[Step]:
    import array_api_strict as xp

    rule = make_rule()
    params = [xp.asarray(p) for p in case.params]
    state = rule.init(params)
    out = []
    for grads in case.grads:
        g, state, info = rule.update([xp.asarray(x) for x in grads], state, params)
        params = [p - LR * u for p, u in zip(params, g)]
        params, state, pinfo = rule.project(params, state)
        info = {k: float(v) for k, v in {**info, **pinfo}.items()}
        out.append(Step([np.asarray(p) for p in params], info, [np.asarray(u) for u in g], masks_of(state)))
    return out
