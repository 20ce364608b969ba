"""The contract of every integration path, one test for every parity backend: resume and non-finite skip.

- Resume: a run checkpointed after ``RESUME_AT`` steps through the framework's real
  checkpoint path (see each backend's docstring), then continued by a model, optimizer
  and rule built again from that checkpoint, equals the uninterrupted run bit for bit:
  weights, the rule's output, its info, its whole state (masks, counters, histories,
  dtypes kept) and the optimizer's state. The case has spikes on both sides of the cut,
  so the restored state decides what the rule does next (checked: it acts after the cut).
- Skip: with a ``nonfinite="skip"`` rule, the NaN and the Inf step report
  ``skipped == 1`` and leave the rule's state as it was. Where the backend declares a
  true skip for the optimizer (``OPTIMIZERS``), weights and optimizer state are also
  unchanged bit for bit, and the run equals the run without those steps; where it
  declares ``"zero"``, the optimizer stepped on the rule's all-zero output and the
  weights moved (momentum, Adam: documented). With SGD (with or without momentum)
  the run also matches the NumPy reference with that skip semantics (test_parity.py's
  tolerances).
"""

from __future__ import annotations

import numpy as np
import pytest

from .cases import MOMENTUM, NONFINITE_AT, RESUME_AT, contract_case, without_steps
from .harness import BACKENDS, compare, param
from .reference import run_reference, skipped
from .rules import RESUME, SKIP

FIELDS = ("params", "updates", "masks", "state", "opt_state")


def _bitwise(a, b, what: str) -> None:
    a, b = np.asarray(a), np.asarray(b)
    assert (a.dtype, a.shape) == (b.dtype, b.shape), f"{what}: {a.dtype}{a.shape} vs {b.dtype}{b.shape}"
    assert a.tobytes() == b.tobytes(), f"{what} differs\n got {a}\n want {b}"


def _same_steps(got: list, want: list, fields=FIELDS) -> None:
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        for field in fields:
            a, b = getattr(g, field), getattr(w, field)
            if a is None or b is None:
                assert a is b, f"step {i} {field}: {a} vs {b}"
                continue
            assert len(a) == len(b), f"step {i} {field}: {len(a)} arrays vs {len(b)}"
            for j, (x, y) in enumerate(zip(a, b)):
                _bitwise(x, y, f"step {i} {field}[{j}]")
        assert g.info.keys() == w.info.keys(), f"step {i} info keys {sorted(g.info)} vs {sorted(w.info)}"
        for k in w.info:
            _bitwise(np.float64(g.info[k]), np.float64(w.info[k]), f"step {i} info[{k!r}]")


def _acts_after_the_cut(steps: list) -> bool:
    """The rule clips (a ``scale`` below 1) or prunes more (masks change) after the cut."""
    later = steps[RESUME_AT:]
    clipped = any(v < 1 for s in later for k, v in s.info.items() if k.endswith("scale"))
    pruned = any(not np.array_equal(a, b) for s in later for a, b in zip(s.masks, steps[RESUME_AT - 1].masks))
    return clipped or pruned


def _stateful(backend) -> list:
    """The optimizers with state of each integration structure (or plain SGD, where it is all there is)."""
    return [o for o in backend.OPTIMIZERS if o.startswith("momentum")] or ["sgd"]


@pytest.mark.parametrize("backend, rule_id, optimizer", [
    param(backend, rule_id, optimizer, id=f"resume-{rule_id}-{optimizer}")
    for backend in BACKENDS for optimizer in _stateful(backend) for rule_id in RESUME
    if not (optimizer.endswith("-chain") and RESUME[rule_id]().has_project)  # a chain element has no project
])
def test_resume_equals_the_uninterrupted_run(backend, rule_id, optimizer):
    case = contract_case("resume")
    whole = backend.run(RESUME[rule_id], case, optimizer)
    resumed = backend.run(RESUME[rule_id], case, optimizer, resume_at=RESUME_AT)
    _same_steps(resumed, whole)
    assert all(s.state for s in whole), "a stateful rule"
    assert _acts_after_the_cut(whole), [s.info for s in whole]


@pytest.mark.parametrize("backend, rule_id, optimizer", [
    param(backend, rule_id, optimizer, id=f"skip-{rule_id}-{optimizer}")
    for backend in BACKENDS for optimizer in backend.OPTIMIZERS for rule_id in SKIP
])
def test_nonfinite_skip(backend, rule_id, optimizer):
    kind = backend.OPTIMIZERS[optimizer]
    case = contract_case("skip")
    got = backend.run(SKIP[rule_id], case, optimizer)
    assert [skipped(s.info) for s in got] == [i in NONFINITE_AT for i in range(len(got))]
    for i in NONFINITE_AT:
        before, at = got[i - 1], got[i]
        for j, (a, b) in enumerate(zip(at.state, before.state)):
            _bitwise(a, b, f"step {i} rule state[{j}]")
        if kind == "true":
            for field in ("params", "opt_state"):
                for j, (a, b) in enumerate(zip(getattr(at, field), getattr(before, field))):
                    _bitwise(a, b, f"skipped step {i} {field}[{j}]")
        else:  # the optimizer stepped on the rule's all-zero output, and its state moved the weights
            assert not any(np.any(u) for u in at.updates), at.updates
            assert any(not np.array_equal(a, b) for a, b in zip(at.params, before.params))
    if kind == "true":
        kept = [s for i, s in enumerate(got) if i not in NONFINITE_AT]
        _same_steps(kept, backend.run(SKIP[rule_id], without_steps(case, NONFINITE_AT), optimizer))
    if optimizer in MOMENTUM:
        compare(backend.NAME, rule_id, case.dtype, got, run_reference(SKIP[rule_id](), case, optimizer, skip=kind))
