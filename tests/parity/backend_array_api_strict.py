"""Parity backend: the core itself on array-api-strict arrays (float32 cases only).

It proves the harness and that the reference loop uses nothing outside the standard;
the framework backends (torch, optax, Keras) live beside it. Resume: the rule state
goes to NumPy and back into the structure of a fresh ``rule.init``.
"""

from __future__ import annotations

import numpy as np

from .cases import LR, Case
from .reference import Step, leaves_of, masks_of, skipped

NAME = "array_api_strict"
DTYPES = ("float32",)
OPTIMIZERS = {"sgd": "true"}
REQUIRES = ("array_api_strict",)


def run(make_rule, case: Case, optimizer: str = "sgd", resume_at: int | None = None) -> list[Step]:
    import array_api_strict as xp

    from gradclip_core.backend import flatten_state, unflatten_state

    assert optimizer == "sgd", optimizer
    rule = make_rule()
    params = [xp.asarray(p) for p in case.params]
    state = rule.init(params)
    out = []
    for i, grads in enumerate(case.grads):
        if i == resume_at:
            saved = leaves_of(state)
            rule = make_rule()
            state = unflatten_state(flatten_state(rule.init(params))[1], [xp.asarray(x) for x in saved])
        if rule.on_update:  # update clipping: the rule on SGD's update, with the weights before the step
            deltas = [-LR * xp.asarray(x) for x in grads]
            d, state, info = rule.update(deltas, state, params)
            if not skipped(info):
                params = [xp.where(a == b, p - LR * xp.asarray(x), p + a) for p, a, b, x in zip(params, d, deltas, grads)]
            info = {k: float(v) for k, v in info.items()}
            out.append(Step([np.asarray(p) for p in params], info, None, masks_of(state), leaves_of(state), []))
            continue
        g, state, info = rule.update([xp.asarray(x) for x in grads], state, params)
        if not skipped(info):
            params = [p - LR * u for p, u in zip(params, g)]
            params, state, pinfo = rule.project(params, state)
            info = {**info, **pinfo}
        info = {k: float(v) for k, v in info.items()}
        out.append(Step([np.asarray(p) for p in params], info, [np.asarray(u) for u in g], masks_of(state),
                        leaves_of(state), []))
    return out
