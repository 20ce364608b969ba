"""The Rule abstraction: init/update/project, chain, config round trip."""

import numpy as np
import pytest

import gradclip_core as gc

from .util import NAMESPACES, rand_arrays, to_np, to_xp

ALL_FACTORIES = {
    "clip_by_value": lambda: gc.clip_by_value(0.3),
    "clip_by_norm": lambda: gc.clip_by_norm(1.0, semantics="keras"),
    "clip_by_global_norm": lambda: gc.clip_by_global_norm(2.0, ord="inf", nonfinite="zero"),
    "clip_by_block_rms": lambda: gc.clip_by_block_rms(0.5),
    "clip_update_rms": lambda: gc.clip_update_rms(),
    "adaptive_clip": lambda: gc.adaptive_clip(0.01, axis=(1,)),
}


@pytest.mark.parametrize("xp", NAMESPACES)
@pytest.mark.parametrize("name", sorted(ALL_FACTORIES))
def test_every_rule_is_stateless_with_identity_project(xp, name):
    rule = ALL_FACTORIES[name]()
    assert rule.name == name
    params = to_xp(xp, rand_arrays(0, [(3, 4), (4,)]))
    state = rule.init(params)
    assert state == gc.EmptyState()
    out, state2, info = rule.project(params, state)
    assert state2 == state and info == {}
    assert all(np.array_equal(a, b) for a, b in zip(to_np(out), to_np(params)))


@pytest.mark.parametrize("name", sorted(ALL_FACTORIES))
def test_config_round_trip(name):
    rule = ALL_FACTORIES[name]()
    assert rule.config["rule"] == name
    again = gc.from_config(rule.config)
    assert again.config == rule.config
    g = rand_arrays(1, [(3, 4), (4,)], scale=3.0)
    a, _, ia = rule.update(g, rule.init(g), g)
    b, _, ib = again.update(g, again.init(g), g)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert ia.keys() == ib.keys()


def test_from_config_rejects_unknown():
    with pytest.raises(ValueError, match="unknown rule 'nope'"):
        gc.from_config({"rule": "nope"})
    with pytest.raises(ValueError, match="'rule' key"):
        gc.from_config({"max_norm": 1.0})


@pytest.mark.parametrize("xp", NAMESPACES)
def test_chain_applies_in_order_and_prefixes_info(xp):
    first, second = gc.clip_by_value(1.0, info="full"), gc.clip_by_global_norm(1.0)
    rule = gc.chain(first, second)
    g = to_xp(xp, [np.array([5.0, -5.0, 0.5], np.float32)])
    state = rule.init(g)
    assert state == (gc.EmptyState(), gc.EmptyState())
    out, state, info = rule.update(g, state)
    # by hand: value clip then global clip
    step1, _, _ = first.update(g, first.init(g))
    step2, _, i2 = second.update(step1, second.init(g))
    np.testing.assert_array_equal(to_np(out)[0], to_np(step2)[0])
    assert sorted(info) == ["clip_by_global_norm/norm", "clip_by_global_norm/scale", "clip_by_value/clipped_fraction"]
    assert float(info["clip_by_global_norm/norm"]) == float(i2["norm"])
    assert rule.config == {"rule": "chain", "rules": [dict(first.config), dict(second.config)]}
    assert gc.from_config(rule.config).config == rule.config


def test_chain_disambiguates_repeated_names_and_needs_params():
    rule = gc.chain(gc.clip_by_value(2.0, info="full"), gc.adaptive_clip(0.1, axis="out_first"), gc.clip_by_value(1.0, info="full"))
    assert rule.needs_params
    g = [np.array([[3.0, 0.0]], np.float32)]
    _, _, info = rule.update(g, rule.init(g), g)
    assert sorted(info) == ["adaptive_clip/clipped_fraction", "clip_by_value#0/clipped_fraction", "clip_by_value#2/clipped_fraction"]


def test_chain_validates_arguments_and_state():
    with pytest.raises(ValueError, match="argument 1 must be a gradclip Rule"):
        gc.chain(gc.clip_by_value(1.0), lambda g: g)
    rule = gc.chain(gc.clip_by_value(1.0))
    with pytest.raises(ValueError, match="tuple of 1 rule states"):
        rule.update([np.ones(2)], gc.EmptyState())


def test_empty_gradient_list_is_a_no_op():
    for make in ALL_FACTORIES.values():
        rule = make()
        out, state, info = rule.update([], rule.init([]), [])
        assert out == [] and info == {}


def test_identity_rule_defaults():
    rule = gc.Rule()
    g = [np.ones(2)]
    assert rule.update(g, rule.init(g))[0][0] is g[0]
    assert rule.project(g, rule.init(g))[0][0] is g[0]


def test_has_project_tells_clipping_rules_from_weight_rules():
    assert not gc.clip_by_global_norm(1.0).has_project
    assert not gc.chain(gc.clip_by_value(1.0), gc.adaptive_clip(0.1, axis=0)).has_project

    def clamp(params, state):
        return [p * 0 for p in params], state, {}

    weight_rule = gc.Rule(project=clamp, name="clamp")
    assert weight_rule.has_project
    assert gc.chain(gc.clip_by_value(1.0), weight_rule).has_project


def test_has_update_and_has_project():
    assert gc.clip_by_global_norm(1.0).has_update and not gc.clip_by_global_norm(1.0).has_project
    assert not gc.non_neg().has_update and gc.non_neg().has_project
    assert gc.magnitude_prune(0.5).has_update and gc.magnitude_prune(0.5).has_project
    assert not gc.chain(gc.non_neg(), gc.max_norm(1.0, axis=0)).has_update
    assert gc.chain(gc.non_neg(), gc.clip_by_value(1.0)).has_update


def test_chain_carries_a_skip_to_its_end_and_keeps_every_state():
    """A skip inside a chain: later rules see the gradients (not zeros), no state moves, one Skip effect at the end."""
    import numpy as np

    import gradclip_core as gc
    from gradclip_core import Skip

    rule = gc.chain(gc.record_norms(4), gc.skip_on_spike(window=4, k=1.0, warmup=2), gc.autoclip(50.0, history=4))
    g = lambda v: [np.full(3, v, np.float32)]  # noqa: E731
    state = rule.init(g(1.0))
    for v in (1.0, 1.1):
        _, state, info = rule.update(g(v), state)
        assert float(info["skip_on_spike/skipped"]) == 0
    effect, new_state, info = rule.update_effect(g(100.0), state)
    assert float(info["skip_on_spike/skipped"]) == 1
    assert isinstance(effect, Skip) and bool(effect.skip)
    assert float(info["autoclip/norm"]) > 100  # autoclip saw the spike, not zeros
    from gradclip_core.backend import flatten_state

    for a, b in zip(flatten_state(state)[0], flatten_state(new_state)[0]):  # no rule's state moved
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    out, _, _ = rule.update(g(100.0), state)
    assert float(np.abs(out[0]).sum()) == 0.0  # applied out of place: zeros (adapters that own the step skip it)
