"""The NumPy reference run: the core rule on NumPy arrays, plain SGD, the same steps."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .cases import LR, Case


class Step(NamedTuple):
    """What a backend reports after one training step (NumPy arrays in the case dtype)."""

    params: list  # weights after the optimizer step (and the rule's project)
    info: dict  # the rule's info, as floats
    updates: list  # the rule's output, as it entered the optimizer
    masks: list | None = None  # bool leaves of the rule state (pruning masks), if the backend reports them


def masks_of(state) -> list:
    """The bool arrays of a rule state (pruning masks), depth first, as NumPy arrays."""
    out = []

    def walk(node):
        if isinstance(node, dict):
            for v in node.values():
                walk(v)
        elif isinstance(node, (tuple, list)):
            for v in node:
                walk(v)
        elif node is not None and "bool" in str(getattr(node, "dtype", "")):
            out.append(np.asarray(node.detach().cpu() if hasattr(node, "detach") else node))

    walk(state)
    return out


def sgd(p: np.ndarray, g: np.ndarray) -> np.ndarray:
    """``p - lr * g`` computed in float32 and rounded once (what torch/optax/Keras do for lr = 2**-k)."""
    return (p.astype(np.float32) - np.float32(LR) * g.astype(np.float32)).astype(p.dtype)


def spacing(x: np.ndarray, dtype) -> np.ndarray:
    """Float64 ulp of ``|x|`` in ``dtype`` (the gap to the next representable value)."""
    import ml_dtypes

    fi = ml_dtypes.finfo(dtype)
    mag = np.maximum(np.abs(np.asarray(x, np.float64)), float(fi.smallest_normal))
    mag = np.where(np.isfinite(mag), mag, float(fi.max))
    return np.exp2(np.floor(np.log2(mag)) - fi.nmant)


def run_reference(rule, case: Case) -> list[tuple[Step, list]]:
    """Per step: the reference :class:`Step` and, per parameter, the accumulated error scale.

    The error scale of a weight after step k is the sum over steps of
    ``ulp(max(|p_prev|, |lr * u|))``: the rounding of ``p - lr * u`` is relative to its
    operands, so when the subtraction cancels, a 1-ulp difference in ``u`` is many ulp
    of the (small) result. Weights are checked against that scale; updates and info in
    plain ulp.
    """
    params = [p.copy() for p in case.params]
    scales = [np.zeros(p.shape) for p in params]
    state = rule.init(params)
    out = []
    for grads in case.grads:
        g, state, info = rule.update([x.copy() for x in grads], state, params)
        g = [np.asarray(u) for u in g]
        scales = [
            s + spacing(np.maximum(np.abs(p.astype(np.float64)), np.abs(LR * u.astype(np.float64))), p.dtype)
            for s, p, u in zip(scales, params, g)
        ]
        params = [sgd(p, u) for p, u in zip(params, g)]
        params, state, pinfo = rule.project(params, state)
        params = [np.asarray(p) for p in params]
        step = Step(params, {k: float(v) for k, v in {**info, **pinfo}.items()}, g, masks_of(state))
        out.append((step, list(scales)))
    return out
