"""The NumPy reference run: the core rule on NumPy arrays, SGD (optionally with momentum), the same steps."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from gradclip_core.backend import flatten_state

from .cases import LR, MOMENTUM, Case


class Step(NamedTuple):
    """What a backend reports after one training step (NumPy arrays in the case dtype)."""

    params: list  # weights after the optimizer step (and the rule's project)
    info: dict  # the rule's info, as floats
    updates: list | None  # the rule's output, as it entered the optimizer (None: not observable there)
    masks: list | None = None  # bool leaves of the rule state (pruning masks), if the backend reports them
    state: list | None = None  # every leaf of the rule state, depth first (NumPy, dtypes kept)
    opt_state: list | None = None  # the optimizer's own state (NumPy), in the backend's layout


def _numpy(x) -> np.ndarray:
    return np.asarray(x.detach().cpu() if hasattr(x, "detach") else x)


def leaves_of(state) -> list:
    """Every array of a rule state (depth first, as ``gradclip_core.backend.flatten_state``), as NumPy."""
    return [_numpy(x) for x in flatten_state(state)[0]]


def masks_of(state) -> list:
    """The bool arrays of a rule state (pruning masks), depth first, as NumPy arrays."""
    return [x for x in leaves_of(state) if x.dtype == np.bool_]


def skipped(info: dict) -> bool:
    """Whether a ``nonfinite="skip"`` rule (alone or inside a chain) skipped this step."""
    return any(float(v) != 0 for k, v in info.items() if k == "skipped" or k.endswith("/skipped"))


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


def run_reference(rule, case: Case, optimizer: str = "sgd", skip: str = "true") -> list[tuple[Step, list]]:
    """Per step: the reference :class:`Step` and, per parameter, the accumulated error scale.

    The optimizer is SGD with momentum ``MOMENTUM[optimizer]`` (torch's form, which
    torch, optax and Keras compute alike for power-of-two ``lr`` and momentum):
    ``buf = momentum * buf + u`` (``buf = u`` at the first step), ``p = p - lr * buf``.

    A step that a ``nonfinite="skip"`` rule skips (``info["skipped"]``): with
    ``skip="true"`` it leaves the weights and the optimizer state unchanged and no
    ``project`` runs (the rule keeps the state its ``update`` returned); with
    ``skip="zero"`` the optimizer steps on the rule's all-zero output (what an adapter
    that does not own the optimizer can do: momentum still moves the weights).

    The error scale of a weight after step k is the sum over steps of
    ``ulp(max(|p_prev|, |lr * u|, |lr * buf|)) / (1 - momentum)``: the rounding of
    ``p - lr * buf`` is relative to its operands, so when the subtraction cancels, a
    1-ulp difference in ``u`` is many ulp of the (small) result; momentum carries a
    step's difference into the later steps with weights summing to ``1 / (1 - momentum)``.
    Weights are checked against that scale; updates and info in plain ulp.
    """
    assert skip in ("true", "zero"), skip
    momentum = MOMENTUM[optimizer]
    params = [p.copy() for p in case.params]
    scales = [np.zeros(p.shape) for p in params]
    bufs = None
    state = rule.init(params)
    out = []
    for grads in case.grads:
        if rule.on_update:
            params, state, bufs, scales, step = _update_clipping_step(rule, params, state, bufs, scales, grads,
                                                                      momentum, skip)
            out.append((step, list(scales)))
            continue
        g, state, info = rule.update([x.copy() for x in grads], state, params)
        g = [np.asarray(u) for u in g]
        info = {k: float(v) for k, v in info.items()}
        if not (skip == "true" and skipped(info)):
            if momentum == 0:
                steps = g
            else:
                steps = g if bufs is None else [
                    (np.float32(momentum) * b.astype(np.float32) + u.astype(np.float32)).astype(u.dtype)
                    for b, u in zip(bufs, g)
                ]
                bufs = steps
            scales = [
                s + spacing(np.maximum.reduce([np.abs(p.astype(np.float64)), np.abs(LR * u.astype(np.float64)),
                                               np.abs(LR * b.astype(np.float64))]), p.dtype) / (1 - momentum)
                for s, p, u, b in zip(scales, params, g, steps)
            ]
            params = [sgd(p, b) for p, b in zip(params, steps)]
            params, state, pinfo = rule.project(params, state)
            params = [np.asarray(p) for p in params]
            info.update({k: float(v) for k, v in pinfo.items()})
        step = Step(params, info, g, masks_of(state), leaves_of(state), [] if bufs is None else list(bufs))
        out.append((step, list(scales)))
    return out


def _update_clipping_step(rule, params, state, bufs, scales, grads, momentum: float, skip: str):
    """One reference step of an update-clipping rule (``rule.on_update``): the rule on the optimizer's update.

    The optimizer (SGD with momentum, as above) computes its update ``delta = -lr * buf``
    (exact: ``lr`` is a power of two); the rule clips it with ``params`` = the weights before
    the step; the weights become ``p + delta'`` (rounded once) where the rule changed the
    update and the unclipped optimizer step ``sgd(p, buf)`` where it did not. The momentum
    buffer keeps the unclipped gradients (the rule acts after the optimizer). A skipped step
    (``skip="true"``) leaves weights and buffers as they were.
    """
    g = [x.astype(np.float32) for x in grads]
    if momentum == 0 or bufs is None:
        steps = [x.astype(p.dtype) for x, p in zip(g, params)]
    else:
        steps = [(np.float32(momentum) * b.astype(np.float32) + x).astype(b.dtype) for b, x in zip(bufs, g)]
    deltas = [(-np.float32(LR) * b.astype(np.float32)).astype(p.dtype) for p, b in zip(params, steps)]
    out, state, info = rule.update([d.copy() for d in deltas], state, params)
    out = [np.asarray(d) for d in out]
    info = {k: float(v) for k, v in info.items()}
    if not (skip == "true" and skipped(info)):
        if momentum != 0:
            bufs = steps
        new = []
        for p, b, d0, d in zip(params, steps, deltas, out):
            moved = (p.astype(np.float32) + d.astype(np.float32)).astype(p.dtype)
            new.append(np.where(d == d0, sgd(p, b), moved).astype(p.dtype))
        scales = [
            s + spacing(np.maximum.reduce([np.abs(p.astype(np.float64)), np.abs(d0.astype(np.float64)),
                                           np.abs(d.astype(np.float64))]), p.dtype) / (1 - momentum)
            for s, p, d0, d in zip(scales, params, deltas, out)
        ]
        params, state, pinfo = rule.project(new, state)
        params = [np.asarray(p) for p in params]
        info.update({k: float(v) for k, v in pinfo.items()})
    step = Step(params, info, out, masks_of(state), leaves_of(state), [] if bufs is None else list(bufs))
    return params, state, bufs, scales, step
