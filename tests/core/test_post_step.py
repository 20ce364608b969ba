"""The post-step seam: ``Rule.update_effect_from_weights(after, before, state)`` equals ``update_effect`` on
``after - before`` (the default forms it; Clippy, the update-norm clip and ``update_ratio`` read the two
arrays through ``difference_*`` primitives), values bit for bit in the portable namespaces."""

from __future__ import annotations

import numpy as np
import pytest

import gradclip_core as gc
from gradclip_core import backend as gcb

from .util import NAMESPACES, to_np, to_xp


def _pair(seed=0, nonfinite=False):
    rng = np.random.default_rng(seed)
    before = [rng.standard_normal((5, 3)).astype(np.float32), rng.standard_normal(7).astype(np.float32),
              np.zeros((0, 2), np.float32), np.float32(rng.standard_normal()).reshape(())]
    after = [b + (0.3 * rng.standard_normal(b.shape)).astype(np.float32) for b in before]
    if nonfinite:
        after[1][2], after[0][1, 1] = np.nan, np.inf
    return after, before


RULES = {
    "clippy": lambda nf: gc.clippy(0.1, 1e-3, nonfinite=nf),
    "clip_update_norm": lambda nf: gc.clip_update_norm(1.0, history=3, min_history=1, nonfinite=nf),
    "update_ratio": lambda nf: gc.update_ratio(per_array=True),
    "chain(update_ratio, clippy)": lambda nf: gc.chain(gc.update_ratio(), gc.clippy(0.1, 1e-3, nonfinite=nf)),
    "chain(clippy, update_ratio)": lambda nf: gc.chain(gc.clippy(0.1, 1e-3, nonfinite=nf), gc.update_ratio()),
    "monitor(clippy)": lambda nf: gc.monitor(gc.clippy(0.1, 1e-3, nonfinite=nf)),
}


def _same_tree(a, b):
    if isinstance(a, (tuple, list)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            _same_tree(x, y)
    elif a is None:
        assert b is None
    else:
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("xp", NAMESPACES)
@pytest.mark.parametrize("nonfinite", ["propagate", "zero", "skip"])
@pytest.mark.parametrize("name", list(RULES))
def test_from_weights_equals_update_effect_on_the_formed_update(name, nonfinite, xp):
    rule = RULES[name](nonfinite)
    # its own where it can (no policy to apply to the update's elements); the default otherwise
    own = "monitor" not in name and (nonfinite == "propagate" or name == "update_ratio")
    assert rule.has_weights_effect == own
    after, before = _pair(nonfinite=nonfinite != "propagate")
    after, before = to_xp(xp, after), to_xp(xp, before)
    deltas = [a - b for a, b in zip(after, before)]
    state = rule.init(before)
    for _ in range(2):  # twice: the update-norm clip's history acts on the second step
        want, want_state, want_info = rule.update_effect(deltas, state, before)
        got, got_state, got_info = rule.update_effect_from_weights(after, before, state)
        assert type(got) is type(want) and sorted(got_info) == sorted(want_info)
        for k in want_info:
            np.testing.assert_array_equal(to_np([got_info[k]])[0], to_np([want_info[k]])[0], err_msg=k)
        _same_tree(got_state, want_state)
        out_want = gcb.apply_effect(xp, deltas, want)
        out_got = gcb.apply_effect(xp, deltas, got)
        for g, w in zip(out_got, out_want):
            np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
        state = want_state


def test_the_raise_policy_sees_the_updates_non_finite_element():
    after, before = _pair(nonfinite=True)
    rule = gc.clippy(nonfinite="raise")
    assert not rule.has_weights_effect
    with pytest.raises(FloatingPointError, match="non-finite"):
        rule.update_effect_from_weights(after, before, rule.init(before))


def test_difference_primitives_equal_their_definitions_with_nan_inf_and_empty_arrays():
    xp = gcb.namespace(np.ones(1))
    after, before = _pair(nonfinite=True)
    deltas = gcb.differences(xp, after, before)
    got = gcb.difference_min_bound_ratio(xp, after, before, 0.1, 1e-3, np.float32)
    want = gcb.min_bound_ratio(xp, deltas, before, 0.1, 1e-3, np.float32)
    assert [float(g) for g in got] == [float(w) for w in want]
    assert float(got[0]) == 0.0 and float(got[2]) == 1.0  # an infinite element: 0; a size-0 array: 1
    norms = gcb.difference_norms(xp, after, before, np.float32)
    want = gcb.array_norms(xp, deltas, 2.0, np.float32)
    np.testing.assert_array_equal(np.array([float(n) for n in norms]), np.array([float(n) for n in want]))
    assert np.isinf(float(norms[0])) and np.isnan(float(norms[1])) and float(norms[2]) == 0.0


def test_the_default_follows_a_replaced_update_effect_and_a_chain_without_update_parts():
    rule = gc.clippy(0.5, 0.0, nonfinite="skip")  # (the default seam: a policy)
    plain = rule.replace(update_effect=lambda d, s, p=None: (gc.Keep(), s, {"seen": d[0]}))
    assert not plain.has_weights_effect  # the default, rebuilt from the new update_effect
    a, b = [np.array([3.0, 1.0], np.float32)], [np.array([1.0, 1.0], np.float32)]
    _, _, info = plain.update_effect_from_weights(a, b, plain.init(b))
    assert info["seen"].tolist() == [2.0, 0.0]
    with pytest.raises(ValueError, match="update_effect_from_weights must be callable"):
        gc.Rule(update_effect_from_weights=3)
    own = gc.clippy(0.5, 0.0).replace(update_effect=lambda d, s, p=None: (gc.Keep(), s, {"seen": d[0]}))
    assert not own.has_weights_effect  # replace() drops the rule's own post-step path with its update_effect
    assert own.update_effect_from_weights(a, b, own.init(b))[2]["seen"].tolist() == [2.0, 0.0]
    empty = gc.clippy().update_effect_from_weights([], [], ())
    assert isinstance(empty[0], gc.Keep)
