"""One cross-framework parity test: every rule x every case x every backend vs the NumPy reference.

Backends are the ``backend_*.py`` modules beside this file (the protocol is in
harness.py); each runs a rule through its framework's real integration path for
several steps and reports, per step, a :class:`~tests.parity.reference.Step`: the
rule's output as it entered the optimizer, the rule's info, and the weights after the step.

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

import pytest

from .cases import all_cases
from .harness import BACKENDS, compare, param
from .reference import run_reference
from .rules import CASES_FOR, KERAS_CASES_FOR, RULES

CASES = all_cases()


@pytest.mark.parametrize("backend, rule_id, case", [
    param(backend, rule_id, case, id=f"{rule_id}-{case.name}")
    for backend in BACKENDS for rule_id in RULES for case in CASES
    if case.dtype in backend.DTYPES and case.name in (KERAS_CASES_FOR if backend.NAME.startswith("keras_") else
                                                      CASES_FOR).get(rule_id, (case.name,))
])
def test_parity(backend, rule_id, case):
    compare(backend.NAME, rule_id, case.dtype, backend.run(RULES[rule_id], case), run_reference(RULES[rule_id](), case))
