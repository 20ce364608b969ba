"""Seeded parity cases: the same parameters and per-step gradients for every framework.

Each case is a small "model" (a list of parameter arrays) and the gradients to feed
it for ``STEPS`` steps. Backends produce exactly these gradients through their real
autodiff (loss = sum(p * G) has dL/dp = G exactly, NaN and Inf included).
"""

from __future__ import annotations

from typing import NamedTuple

import ml_dtypes
import numpy as np

STEPS = 3
LR = 0.5  # a power of two: lr * g is exact, so every optimizer rounds only once
# SGD momentum of the optimizers the reference knows (a power of two too: torch's
# ``buf = m * buf + g; p -= lr * buf``, optax's trace and Keras' ``v = m * v - lr * g``
# round alike); optimizers not listed (Adam) are checked against their own runs only.
MOMENTUM = {"sgd": 0.0, "momentum": 0.5, "momentum-fused": 0.5, "momentum-chain": 0.5}
DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}

# (out, in) first-axis-units layout; includes a scalar, a size-0 array and a conv kernel.
SHAPES = [(6, 4), (6,), (3, 6), (), (0, 3), (2, 3, 3, 3)]


class Case(NamedTuple):
    name: str
    dtype: str
    params: list  # list[np.ndarray]
    grads: list  # list[list[np.ndarray]], one list per step


def _cast(xs, dtype):
    return [np.asarray(x, np.float32).astype(DTYPES[dtype]) for x in xs]


def _random(rng, scale):
    return [rng.normal(0.0, scale, s) for s in SHAPES]


def make_case(kind: str, dtype: str, seed: int = 0) -> Case:
    """One case: ``kind`` in KINDS, ``dtype`` in DTYPES."""
    rng = np.random.default_rng([seed, KINDS.index(kind), list(DTYPES).index(dtype)])
    params = _random(rng, 1.0)
    steps = []
    for step in range(STEPS):
        if kind == "random":
            g = _random(rng, 10.0 ** (step - 1))  # 0.1, 1, 10: below and above thresholds
        elif kind == "ties":
            g = [np.full(s, 0.75) for s in SHAPES]
        elif kind == "zeros":
            g = [np.zeros(s) for s in SHAPES]
        elif kind == "huge":
            big = 300.0 if dtype == "float16" else 1e15
            g = [np.full(s, big) * np.sign(rng.normal(size=s)) for s in SHAPES]
        elif kind == "nonfinite":
            g = _random(rng, 1.0)
            if step == 1:
                g[0][1, 2] = np.nan
            if step == 2:
                g[2][0, 0] = np.inf
                g[5][0, 0, 0, 0] = -np.inf
        else:
            raise ValueError(kind)
        steps.append(_cast(g, dtype))
    return Case(f"{kind}-{dtype}", dtype, _cast(params, dtype), steps)


KINDS = ["random", "ties", "zeros", "huge", "nonfinite"]


def all_cases() -> list[Case]:
    return [make_case(k, d) for k in KINDS for d in DTYPES]


# The contract cases (test_contract.py): longer runs with spikes, so that adaptive
# rules clip and scheduled pruning moves on both sides of a checkpoint; "skip" has a
# NaN and an Inf step, each followed by finite steps (a non-true skip would show there).
CONTRACT_SCALES = [0.3, 1.0, 0.3, 10.0, 0.3, 1.0]
RESUME_AT = 3
NONFINITE_AT = {2: (0, (1, 2), np.nan), 4: (5, (0, 0, 0, 0), -np.inf)}


def contract_case(kind: str, dtype: str = "float32", seed: int = 1) -> Case:
    """``kind``: "resume" (finite) or "skip" (the same with a NaN at step 2 and an Inf at step 4)."""
    rng = np.random.default_rng([seed, list(DTYPES).index(dtype)])
    params = _random(rng, 1.0)
    steps = []
    for step, scale in enumerate(CONTRACT_SCALES):
        g = _random(rng, scale)
        if kind == "skip" and step in NONFINITE_AT:
            j, index, value = NONFINITE_AT[step]
            g[j][index] = value
        steps.append(_cast(g, dtype))
    return Case(f"{kind}-{dtype}", dtype, _cast(params, dtype), steps)


def without_steps(case: Case, drop) -> Case:
    """The same case with the steps ``drop`` left out (what a true skip must equal)."""
    return case._replace(name=f"{case.name}-without", grads=[g for i, g in enumerate(case.grads) if i not in drop])
