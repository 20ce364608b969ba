"""What the parity tests share: the backends, their pytest parameters, and the comparison to the reference.

A backend is a ``backend_*.py`` module beside this file with:

- ``NAME``: its id (``keras_<backend>`` for Keras, so ``-k keras_`` selects it);
- ``DTYPES``: the case dtypes it runs;
- ``OPTIMIZERS``: optimizer name -> what a ``nonfinite="skip"`` step does with it:
  ``"true"`` (weights and optimizer state unchanged) or ``"zero"`` (the optimizer steps on
  the rule's all-zero output); ``"sgd"`` is plain SGD(LR), the parity suite's optimizer,
  ``"momentum"`` SGD(LR, momentum 0.5), ``"adam"`` Adam; others are the backend's own;
- ``REQUIRES``: the modules it needs (and ``ENABLED``, default true: Keras runs only in
  the Keras processes): :func:`available` tells whether it runs in this process;
- ``run(make_rule, case, optimizer="sgd", resume_at=None) -> list[Step]``: the rule
  through the framework's real integration path, one :class:`~.reference.Step` per step;
  with ``resume_at=k`` the first ``k`` steps are checkpointed through the framework's
  real checkpoint path and everything (model, optimizer, rule) is built again from the
  checkpoint for the remaining steps.
"""

from __future__ import annotations

import importlib
import pathlib

import ml_dtypes
import numpy as np
import pytest

from .cases import DTYPES
from .rules import EXACT, INFO_RTOL, RECOVERED_UPDATE, RECOVERED_UPDATE_RTOL, ULP_BUDGET, WEIGHT_BUDGET
from .ulp import ulp_distance

BACKENDS = [
    importlib.import_module(f"{__package__}.{p.stem}")
    for p in sorted(pathlib.Path(__file__).parent.glob("backend_*.py"))
]
TOLERANCE = {"float32": 4, "bfloat16": 1, "float16": 1}
WORST: dict[tuple[str, str, str], float] = {}


def available(backend) -> bool:
    """Whether ``backend`` is enabled and its modules import in this process."""
    try:
        return getattr(backend, "ENABLED", True) and all(importlib.import_module(m) for m in backend.REQUIRES)
    except ImportError:
        return False


def param(backend, *values, id: str):
    """A pytest parameter for ``backend``, skipped where its framework is not in this process."""
    marks = [] if available(backend) else [pytest.mark.skip(
        reason=f"{backend.NAME} not available in this process (Keras backends run in their own processes via scripts/dev.sh)")]
    return pytest.param(backend, *values, id=f"{backend.NAME}-{id}", marks=marks)


def _record(backend: str, dtype: str, what: str, value: float) -> None:
    key = (backend, dtype, what)
    WORST[key] = max(WORST.get(key, 0), value)


def weight_error(got: np.ndarray, expected: np.ndarray, scale: np.ndarray) -> float:
    """Largest ``|got - expected| / scale`` (NaN must match NaN, infinities must be equal)."""
    g, e = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    if g.shape != e.shape:
        raise AssertionError(f"shape {g.shape} != {e.shape}")
    if np.any(np.isnan(g) != np.isnan(e)) or np.any(np.isinf(e) & (g != e)):
        return float("inf")
    finite = np.isfinite(e)
    if not finite.any():
        return 0.0
    return float(np.max(np.abs(g[finite] - e[finite]) / scale[finite]))


def compare(backend: str, rule_id: str, dtype: str, got: list, expected: list) -> None:
    """Assert a backend's steps match the reference's within the tolerances of test_parity.py."""
    assert len(got) == len(expected)
    tol = 0 if rule_id in EXACT else ULP_BUDGET.get((rule_id, dtype), TOLERANCE[dtype])
    weight_tol = (0 if rule_id in EXACT else tol + 1) + WEIGHT_BUDGET.get((backend, rule_id), 0)
    for step, (g, (e, scales)) in enumerate(zip(got, expected)):
        for j, (a, b) in enumerate(zip(g.updates or (), e.updates)):  # None: a skip the optimizer took
            d = ulp_distance(np.asarray(a), b)
            _record(backend, dtype, "update ulp", d)
            assert d <= tol, f"step {step} update {j}: {d} ulp (tolerance {tol})\n got {a}\n expected {b}"
        for j, (a, b, s) in enumerate(zip(g.params, e.params, scales)):
            d = weight_error(a, b, s)
            _record(backend, dtype, "weight ulp-of-operands", d)
            assert d <= weight_tol, f"step {step} param {j}: {d:.3g} ulp of the operands\n got {a}\n expected {b}"
        if g.masks is not None and e.masks is not None:  # pruning masks: bit for bit
            assert len(g.masks) == len(e.masks), f"step {step}: {len(g.masks)} masks vs {len(e.masks)}"
            for j, (a, b) in enumerate(zip(g.masks, e.masks)):
                assert a.shape == b.shape and np.array_equal(a, b), f"step {step} mask {j} differs\n got {a}\n expected {b}"
        assert set(g.info) == set(e.info), f"info keys differ: {sorted(g.info)} vs {sorted(e.info)}"
        if step > 0 and (backend, rule_id) in WEIGHT_BUDGET:
            continue  # later steps start from weights that differ within WEIGHT_BUDGET: counts may differ
        if (backend, rule_id) in RECOVERED_UPDATE:  # the update recovered from the weights (rules.py)
            _compare_recovered(step, g.info, e.info, dtype, expected[step - 1][0].params if step else [])
            continue
        for k in e.info:
            rtol = INFO_RTOL.get((rule_id, k))
            if rtol is not None and dtype != "float32":
                eps = float(ml_dtypes.finfo(DTYPES[dtype]).eps)
                a, b = float(g.info[k]), float(e.info[k])
                same = a == b or (np.isnan(a) and np.isnan(b)) or abs(a - b) <= rtol * eps * abs(b)
                assert same, f"step {step} info {k}: {a} vs {b} ({rtol} eps of {dtype})"
                continue
            d = ulp_distance(np.float32(g.info[k]), np.float32(e.info[k]))
            _record(backend, dtype, "info ulp", d)
            assert d <= 4, f"step {step} info {k}: {g.info[k]} vs {e.info[k]} ({d} ulp)"


def _compare_recovered(step: int, got: dict, want: dict, dtype: str, prev_params: list) -> None:
    """Info of an update rule whose update is recovered from the weights (``RECOVERED_UPDATE`` in rules.py).

    Values within ``RECOVERED_UPDATE_RTOL`` epsilons of the case dtype, relatively. A flag
    (``clipped``) may differ where the clip is marginal: its ``scale`` agrees within that
    tolerance. Once a weight is NaN/Inf the recovered update is NaN there (the optimizer's
    update was not), so those steps compare the weights only.
    """
    if any(not np.all(np.isfinite(np.asarray(p, np.float64))) for p in prev_params):
        return
    rtol = RECOVERED_UPDATE_RTOL * float(ml_dtypes.finfo(DTYPES[dtype]).eps)

    def close(a: float, b: float) -> bool:
        return a == b or (np.isnan(a) and np.isnan(b)) or abs(a - b) <= rtol * abs(b)

    for k in want:
        a, b = float(got[k]), float(want[k])
        if close(a, b):
            continue
        scale = k[: -len("clipped")] + "scale"
        if k.endswith("clipped") and scale in want and close(float(got[scale]), float(want[scale])):
            continue  # on the threshold: the scale itself agrees
        raise AssertionError(f"step {step} info {k}: {a} vs {b} (relative tolerance {rtol:.3g})")
