"""One cross-framework parity test: every rule x every case x every backend vs the NumPy reference.

Backends are the ``backend_*.py`` modules beside this file; each runs a rule through
its framework's real integration path and returns the parameters after every step.
Tolerance (DESIGN.md): float32 within 4 ulp, bfloat16/float16 within 1 ulp, info
values within the same ulp budget in float32. The worst distance per backend is
printed at the end of the run.
"""

from __future__ import annotations

import importlib
import pathlib

import numpy as np
import pytest

from .cases import all_cases
from .reference import run_reference
from .rules import RULES
from .ulp import ulp_distance

TOLERANCE = {"float32": 4, "bfloat16": 1, "float16": 1}
WORST: dict[tuple[str, str], int] = {}

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
                marks = [] if backend.available() else [pytest.mark.skip(reason=f"{backend.NAME} not installed")]
                yield pytest.param(backend, rule_id, case, id=f"{backend.NAME}-{rule_id}-{case.name}", marks=marks)


@pytest.mark.parametrize("backend, rule_id, case", list(_params()))
def test_parity(backend, rule_id, case):
    expected = run_reference(RULES[rule_id](), case)
    got = backend.run(RULES[rule_id], case)
    assert len(got) == len(expected)
    tol = TOLERANCE[case.dtype]
    worst = 0
    for step, ((p_got, i_got), (p_exp, i_exp)) in enumerate(zip(got, expected)):
        for j, (a, b) in enumerate(zip(p_got, p_exp)):
            d = ulp_distance(np.asarray(a), b)
            worst = max(worst, d)
            assert d <= tol, f"step {step} param {j}: {d} ulp (tolerance {tol})\n got {a}\n expected {b}"
        assert set(i_got) == set(i_exp), f"info keys differ: {sorted(i_got)} vs {sorted(i_exp)}"
        for k in i_exp:
            d = ulp_distance(np.float32(i_got[k]), np.float32(i_exp[k]))
            assert d <= 4, f"step {step} info {k}: {i_got[k]} vs {i_exp[k]} ({d} ulp)"
    key = (backend.NAME, case.dtype)
    WORST[key] = max(WORST.get(key, 0), worst)
