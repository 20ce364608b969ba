"""One cross-framework parity test: every rule x every case x every backend vs the NumPy reference.

Backends are the ``backend_*.py`` modules beside this file; each runs a rule through
its framework's real integration path for several steps and reports, per step, a
:class:`~tests.parity.reference.Step`: the rule's output as it entered the optimizer,
the rule's info, and the weights after the step.

Tolerance (DESIGN.md): the rule's outputs within 4 ulp in float32 and 1 ulp in
bfloat16/float16; info values within 4 ulp of float32; masks and value clips exact
(0 ulp). One documented exception: AGC's output composes two independent norms (of
the gradient and of the weight unit) and a ratio, so it gets 6 ulp in float32 (see
``ULP_BUDGET`` in rules.py).

Weights are checked in ulp of the *operands* of the optimizer step
(``max(|p_prev|, |lr * u|)``, summed over steps), because ``p - lr*u`` cancels: a
1-ulp difference in ``u`` (XLA, torch and NumPy sum a norm in different orders, and
torch's float32 ``sqrt`` on CPU is not correctly rounded) can be hundreds of ulp of a
near-zero weight. The weight may be off by the update's tolerance plus the one
rounding of the step itself. The worst distances per backend are printed at the end.
"""

from __future__ import annotations

import importlib
import pathlib

import numpy as np
import pytest

from .cases import all_cases
from .reference import run_reference
from .rules import EXACT, RULES, ULP_BUDGET, WEIGHT_BUDGET
from .ulp import ulp_distance

TOLERANCE = {"float32": 4, "bfloat16": 1, "float16": 1}
WORST: dict[tuple[str, str, str], float] = {}

_BACKENDS = [
    importlib.import_module(f"{__package__}.{p.stem}")
    for p in sorted(pathlib.Path(__file__).parent.glob("backend_*.py"))
]
CASES = all_cases()


def _params():
    for backend in _BACKENDS:
        for rule_id in RULES:
            for case in CASES:
                if case.dtype not in backend.DTYPES:
                    continue
                marks = [] if backend.available() else [pytest.mark.skip(reason=f"{backend.NAME} not available in this process (Keras backends run in their own processes via scripts/dev.sh)")]
                yield pytest.param(backend, rule_id, case, id=f"{backend.NAME}-{rule_id}-{case.name}", marks=marks)


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


@pytest.mark.parametrize("backend, rule_id, case", list(_params()))
def test_parity(backend, rule_id, case):
    expected = run_reference(RULES[rule_id](), case)
    got = backend.run(RULES[rule_id], case)
    assert len(got) == len(expected)
    tol = 0 if rule_id in EXACT else ULP_BUDGET.get((rule_id, case.dtype), TOLERANCE[case.dtype])
    weight_tol = (0 if rule_id in EXACT else tol + 1) + WEIGHT_BUDGET.get((backend.NAME, rule_id), 0)
    for step, (g, (e, scales)) in enumerate(zip(got, expected)):
        for j, (a, b) in enumerate(zip(g.updates, e.updates)):
            d = ulp_distance(np.asarray(a), b)
            _record(backend.NAME, case.dtype, "update ulp", d)
            assert d <= tol, f"step {step} update {j}: {d} ulp (tolerance {tol})\n got {a}\n expected {b}"
        for j, (a, b, s) in enumerate(zip(g.params, e.params, scales)):
            d = weight_error(a, b, s)
            _record(backend.NAME, case.dtype, "weight ulp-of-operands", d)
            assert d <= weight_tol, f"step {step} param {j}: {d:.3g} ulp of the operands\n got {a}\n expected {b}"
        if g.masks is not None and e.masks is not None:  # pruning masks: bit for bit
            assert len(g.masks) == len(e.masks), f"step {step}: {len(g.masks)} masks vs {len(e.masks)}"
            for j, (a, b) in enumerate(zip(g.masks, e.masks)):
                assert a.shape == b.shape and np.array_equal(a, b), f"step {step} mask {j} differs\n got {a}\n expected {b}"
        assert set(g.info) == set(e.info), f"info keys differ: {sorted(g.info)} vs {sorted(e.info)}"
        if step > 0 and (backend.NAME, rule_id) in WEIGHT_BUDGET:
            continue  # later steps start from weights that differ within WEIGHT_BUDGET: counts may differ
        for k in e.info:
            d = ulp_distance(np.float32(g.info[k]), np.float32(e.info[k]))
            _record(backend.NAME, case.dtype, "info ulp", d)
            assert d <= 4, f"step {step} info {k}: {g.info[k]} vs {e.info[k]} ({d} ulp)"
