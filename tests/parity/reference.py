"""The NumPy reference run: the core rule on NumPy arrays, plain SGD, the same steps."""

from __future__ import annotations

import numpy as np

from .cases import LR, Case


def sgd(p: np.ndarray, g: np.ndarray) -> np.ndarray:
    """``p - lr * g`` computed in float32 and rounded once (what torch/optax/Keras do for lr = 2**-k)."""
    return (p.astype(np.float32) - np.float32(LR) * g.astype(np.float32)).astype(p.dtype)


def run_reference(rule, case: Case) -> list[tuple[list, dict]]:
    """Per step: (params after the step, info as floats)."""
    params = [p.copy() for p in case.params]
    state = rule.init(params)
    out = []
    for grads in case.grads:
        g, state, info = rule.update([x.copy() for x in grads], state, params)
        params = [sgd(p, u) for p, u in zip(params, g)]
        params, state, pinfo = rule.project(params, state)
        out.append(([np.asarray(p) for p in params], {k: float(v) for k, v in {**info, **pinfo}.items()}))
    return out
