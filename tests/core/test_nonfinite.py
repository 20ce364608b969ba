"""Non-finite policies: propagate, zero, skip, raise, for every rule."""

from typing import NamedTuple

import numpy as np
import pytest

import gradclip_core as gc
import gradclip_core.backend as gcb
from gradclip_core._nonfinite import guard_update
from gradclip_core.backend import tree_where as tree_select

from .util import NAMESPACES, to_np, to_xp

FACTORIES = {
    "value": lambda nf: gc.clip_by_value(0.5, nonfinite=nf),
    "norm": lambda nf: gc.clip_by_norm(1.0, nonfinite=nf),
    "global": lambda nf: gc.clip_by_global_norm(1.0, nonfinite=nf),
    "global-torch": lambda nf: gc.clip_by_global_norm(1.0, semantics="torch", nonfinite=nf),
    "block_rms": lambda nf: gc.clip_by_block_rms(0.5, nonfinite=nf),
    "update_rms": lambda nf: gc.clip_update_rms(0.5, nonfinite=nf),
    "agc": lambda nf: gc.adaptive_clip(0.1, axis="out_first", nonfinite=nf),
}


def bad_grads():
    rng = np.random.default_rng(3)
    g = [rng.normal(0, 3, (4, 3)).astype(np.float32), rng.normal(0, 3, (5,)).astype(np.float32)]
    g[0][1, 1] = np.nan
    g[1][2] = -np.inf
    return g


def params():
    return [np.ones((4, 3), np.float32), np.ones(5, np.float32)]


def apply(rule, xp, g):
    p = to_xp(xp, params())
    out, state, info = rule.update(to_xp(xp, g), rule.init(p), p)
    return to_np(out), state, {k: float(v) for k, v in info.items()}


@pytest.mark.parametrize("xp", NAMESPACES)
@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_zero_cleans_before_the_rule(xp, name):
    g = bad_grads()
    out, _, info = apply(FACTORIES[name]("zero"), xp, g)
    cleaned = [np.where(np.isfinite(x), x, 0).astype(np.float32) for x in g]
    expected, _, _ = apply(FACTORIES[name]("propagate"), xp, cleaned)
    assert all(np.array_equal(a, b) for a, b in zip(out, expected))
    assert all(np.isfinite(o).all() for o in out)
    assert info["nonfinite"] == 1


@pytest.mark.parametrize("xp", NAMESPACES)
@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_skip_returns_zeros_and_flags(xp, name):
    out, state, info = apply(FACTORIES[name]("skip"), xp, bad_grads())
    assert all(not o.any() and o.dtype == np.float32 for o in out)
    assert info["skipped"] == 1 and info["nonfinite"] == 1
    assert state == gc.EmptyState()


@pytest.mark.parametrize("xp", NAMESPACES)
@pytest.mark.parametrize("name", sorted(FACTORIES))
@pytest.mark.parametrize("policy", ["zero", "skip", "raise"])
def test_finite_input_is_untouched_by_the_policy(xp, name, policy):
    g = [np.where(np.isfinite(x), x, 0.5).astype(np.float32) for x in bad_grads()]
    out, _, info = apply(FACTORIES[name](policy), xp, g)
    expected, _, base_info = apply(FACTORIES[name]("propagate"), xp, g)
    assert all(np.array_equal(a, b) for a, b in zip(out, expected))
    assert info["nonfinite"] == 0 and info.get("skipped", 0) == 0
    assert {k: v for k, v in info.items() if k not in ("nonfinite", "skipped")} == base_info


@pytest.mark.parametrize("xp", NAMESPACES)
@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_raise_names_the_positions_and_changes_nothing(xp, name):
    g = bad_grads()
    xg = to_xp(xp, g)
    rule = FACTORIES[name]("raise")
    p = to_xp(xp, params())
    with pytest.raises(FloatingPointError, match=r"in array 0, array 1; nothing was changed"):
        rule.update(xg, rule.init(p), p)
    assert all(np.array_equal(a, b, equal_nan=True) for a, b in zip(to_np(xg), g))
    names = [f"layer{i}.weight" for i in range(len(g))]
    with gcb.array_names(lambda: names), pytest.raises(FloatingPointError, match="'layer0.weight', 'layer1.weight'"):
        rule.update(xg, rule.init(p), p)


def test_raise_under_tracing_says_why():
    class Tracer:
        def __bool__(self):
            raise TypeError("abstract value")

    class FakeXP:
        def all(self, x):
            return Tracer()

        def isfinite(self, x):
            return x

        def logical_and(self, a, b):
            return a

    import gradclip_core._nonfinite as nf

    guarded = guard_update(lambda g, s, p=None: (g, s, {}), "raise")
    orig = nf.namespace
    nf.namespace = lambda *a: FakeXP()
    try:
        with pytest.raises(RuntimeError, match="cannot run under jax.jit"):
            guarded([np.ones(2)], gc.EmptyState())
    finally:
        nf.namespace = orig


class Counter(NamedTuple):
    count: object
    history: object


def test_skip_keeps_the_previous_state_of_stateful_rules():
    """A stateful update under 'skip': state advances on finite steps only."""

    def update(grads, state, params=None):
        new = Counter(state.count + 1, state.history + grads[0][:1])
        return grads, new, {}

    guarded = guard_update(update, "skip")
    state = Counter(np.zeros((), np.int32), np.zeros(1, np.float32))
    _, state, info = guarded([np.array([2.0, 3.0], np.float32)], state)
    assert int(state.count) == 1 and state.history[0] == 2.0 and info["skipped"] == 0
    _, state2, info = guarded([np.array([np.nan, 3.0], np.float32)], state)
    assert int(state2.count) == 1 and state2.history[0] == 2.0 and info["skipped"] == 1


def test_tree_select_over_nested_states():
    xp = gcb.namespace(np.ones(1))
    a = (Counter(np.int32(1), np.ones(2)), (np.zeros(3),), gc.EmptyState())
    b = (Counter(np.int32(5), np.zeros(2)), (np.ones(3),), gc.EmptyState())
    out = tree_select(xp, np.bool_(False), a, b)
    assert isinstance(out[0], Counter) and int(out[0].count) == 5
    assert out[1][0].tolist() == [1.0, 1.0, 1.0] and out[2] == gc.EmptyState()
