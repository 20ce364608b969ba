"""gradclip_optax.wrap: project parts land on the weights (its true skip: tests/parity/test_contract.py)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradclip_core as gc
import gradclip_optax

from . import util


def _params():
    return util.mlp_params(0, (3, 2))


def _grads(scale=1.0):
    return util.grads_like(_params(), 1, 2.0 * scale)


def _clamp(bound: float) -> gc.Rule:
    """A weight constraint: clamp every weight to [-bound, bound] after the step."""

    def project(params, state):
        out = [jnp.clip(p, -bound, bound) for p in params]
        return out, state, {"clamped": sum(jnp.sum(o != p) for o, p in zip(out, params)).astype(jnp.float32)}

    return gc.Rule(project=project, name="clamp")


class MaskState(NamedTuple):
    masks: list


def _prune_small(threshold: float) -> gc.Rule:
    """Pruning: mask gradients of pruned weights, and zero weights below ``threshold`` after the step."""

    def init(params):
        return MaskState([jnp.ones(p.shape, bool) for p in params])

    def update(grads, state, params=None):
        return [jnp.where(m, g, 0) for g, m in zip(grads, state.masks)], state, {}

    def project(params, state):
        masks = [jnp.logical_and(m, jnp.abs(p) >= threshold) for p, m in zip(params, state.masks)]
        out = [jnp.where(m, p, 0) for p, m in zip(params, masks)]
        sparsity = sum(jnp.sum(~m) for m in masks) / sum(m.size for m in masks)
        return out, MaskState(masks), {"sparsity": sparsity.astype(jnp.float32)}

    return gc.Rule(init=init, update=update, project=project, name="prune")


def _run(tx, params, grads_seq):
    state, step = tx.init(params), util.train_step(tx)
    for g in grads_seq:
        params, state = step(params, state, g)
    return params, state


def test_identity_project_equals_chain():
    rule = gc.clip_by_global_norm(1.0)
    seq = [_grads(s) for s in (0.1, 3.0, 1.0)]
    p_wrap, s_wrap = _run(gradclip_optax.wrap(rule, optax.adam(0.1)), _params(), seq)
    p_chain, s_chain = _run(optax.chain(gradclip_optax.transform(rule), optax.adam(0.1)), _params(), seq)
    for a, b in zip(jax.tree.leaves(p_wrap), jax.tree.leaves(p_chain)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree.leaves(s_wrap.inner_state), jax.tree.leaves(s_chain[1])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert float(s_wrap.info["norm"]) == float(s_chain[0].info["norm"])


def test_project_lands_on_projected_weights():
    params, seq = _params(), [_grads(1.0), _grads(-2.0)]
    p_out, state = _run(gradclip_optax.wrap(_clamp(1.0), optax.sgd(0.5)), params, seq)
    expected = params
    for g in seq:  # reference: step, then clamp
        expected = jax.tree.map(lambda p, g: jnp.clip(p - 0.5 * g, -1.0, 1.0), expected, g)
    for a, b in zip(jax.tree.leaves(p_out), jax.tree.leaves(expected)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=float(np.spacing(np.float32(2))))
        assert np.abs(np.asarray(a)).max() <= 1.0
    assert "clamped" in state.info


def test_pruned_weights_are_exactly_zero_and_stay_zero():
    params = _params()
    tx = gradclip_optax.wrap(gc.chain(gc.clip_by_global_norm(10.0), _prune_small(0.2)), optax.sgd(0.01, momentum=0.9))
    p_out, state = _run(tx, params, [_grads(1.0)] * 4)
    masks = state.rule_state[1].masks
    for p, m in zip(jax.tree.leaves(p_out), masks):
        assert np.all(np.asarray(p)[~np.asarray(m)] == 0.0)  # exactly 0: q - p = -p is exact
    assert 0 < float(state.info["prune/sparsity"]) < 1
    assert "clip_by_global_norm/norm" in state.info


def test_wrap_needs_params_and_a_rule():
    tx = gradclip_optax.wrap(gc.clip_by_global_norm(1.0), optax.sgd(0.1))
    state = tx.init(_params())
    with pytest.raises(ValueError, match="requires the current value of parameters"):
        tx.update(_grads(), state)
    with pytest.raises(TypeError, match="gradclip_core.Rule"):
        gradclip_optax.wrap(optax.sgd(0.1), optax.sgd(0.1))


def test_wrap_under_multisteps_and_grad():
    params = _params()
    tx = optax.MultiSteps(gradclip_optax.wrap(_clamp(1.0), optax.sgd(0.5)), every_k_schedule=2)
    p_out, _ = _run(tx, params, [_grads(1.0), _grads(1.0)])
    expected = jax.tree.map(lambda p, g: jnp.clip(p - 0.5 * g, -1.0, 1.0), params, _grads(1.0))
    for a, b in zip(jax.tree.leaves(p_out), jax.tree.leaves(expected)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)

    inner = gradclip_optax.wrap(gc.clip_by_global_norm(1.0), optax.sgd(0.1))

    def meta(p):
        u, _ = inner.update(_grads(3.0), inner.init(p), p)
        return jnp.sum(optax.apply_updates(p, u)["w0"] ** 2)

    g = jax.jit(jax.grad(meta))(params)
    np.testing.assert_allclose(np.asarray(g["w0"]), 2 * np.asarray(jax.tree.map(lambda p, u: p + u, params,
                               inner.update(_grads(3.0), inner.init(params), params)[0])["w0"]), rtol=1e-6)


def _ulp_distance(a, b) -> int:
    ia, ib = (np.asarray(x, np.float32).view(np.int32).astype(np.int64) for x in (a, b))
    ia, ib = (np.where(i < 0, -(2**31) - i, i) for i in (ia, ib))
    return int(np.abs(ia - ib).max())


@pytest.mark.parametrize("lr", [0.1, 0.37])
def test_non_neg_equals_optax_keep_params_nonnegative_bitwise_under_jit(lr):
    # Issue 16: returning proj(p + u) - p for every weight was 16-32 ulp from optax's own
    # transform under jit (XLA fuses p - lr * g differently in the rule and in apply_updates).
    rng = np.random.default_rng(0)
    ours = gradclip_optax.wrap(gc.non_neg(), optax.sgd(lr))
    native = optax.chain(optax.sgd(lr), optax.keep_params_nonnegative())
    p0 = {"w": jnp.asarray(rng.uniform(0, 1, (4096,)).astype(np.float32))}
    grads = [{"w": jnp.asarray(rng.normal(0, 1, (4096,)).astype(np.float32))} for _ in range(5)]
    p_ours, _ = _run(ours, p0, grads)
    p_native, _ = _run(native, p0, grads)
    assert np.asarray(p_ours["w"]).min() >= 0 and (np.asarray(p_ours["w"]) == 0).any()
    assert _ulp_distance(p_ours["w"], p_native["w"]) == 0


def test_moved_weights_within_two_ulp_of_the_operands():
    # The documented bound for weights the projection moves (clipped): 2 ulp of max(|p|, |u|).
    rng = np.random.default_rng(1)
    lr, rule = 0.37, gc.clip_weights(0.5)
    p = {"w": jnp.asarray(rng.uniform(-1, 1, (64, 64)).astype(np.float32))}
    g = {"w": jnp.asarray(rng.normal(0, 1, (64, 64)).astype(np.float32))}
    got, _ = _run(gradclip_optax.wrap(rule, optax.sgd(lr)), p, [g])
    moved = (np.asarray(p["w"], np.float64) - lr * np.asarray(g["w"], np.float64)).astype(np.float32)
    expected = np.clip(moved, -0.5, 0.5)
    scale = np.maximum(np.abs(np.asarray(p["w"])), np.abs(lr * np.asarray(g["w"]))).astype(np.float32)
    err = np.abs(np.asarray(got["w"], np.float64) - expected) / np.spacing(scale)
    assert err.max() <= 2.0
    assert np.abs(np.asarray(got["w"])).max() <= 0.5
