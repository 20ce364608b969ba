"""Pruning through gradclip_optax.wrap under jax.jit: lax.cond schedules, strip, masks."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import gradclip_core as gc
import gradclip_optax


def test_wrap_prunes_masks_momentum_and_strips_under_jit():
    rng = np.random.default_rng(0)
    params = {"a": jnp.asarray(rng.normal(size=(8, 8)), jnp.float32), "b": jnp.asarray(rng.normal(size=(5,)), jnp.float32)}
    rule = gc.global_magnitude_prune(0.75, schedule=gc.polynomial_schedule(0, 4, 2, initial_sparsity=0.25))
    tx = gradclip_optax.wrap(rule, optax.sgd(0.1, momentum=0.9))
    state = tx.init(params)

    @jax.jit
    def step(params, state, g):
        updates, state = tx.update(g, state, params)
        return optax.apply_updates(params, updates), state

    seen = []
    for _ in range(6):
        g = jax.tree.map(lambda p: jnp.ones_like(p), params)
        params, state = step(params, state, g)
        seen.append(round(float(state.info["sparsity"]), 4))
    masks = gradclip_optax.masks(params, state)
    n = 69
    assert seen[0] == round(round(0.25 * n) / n, 4) and seen[1] == seen[0]  # recomputed at steps 0, 2, 4
    assert seen[-1] == round(round(0.75 * n) / n, 4)
    for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(masks)):
        assert bool(jnp.all(jnp.where(m, 0.0, p) == 0))
    stripped = gradclip_optax.strip(params, state)
    assert jax.tree.structure(stripped) == jax.tree.structure(params)
    assert int(state.rule_state.count) == 6


def test_jax_bitcast_keys_equal_portable_keys():
    # (no subnormals: XLA on CPU flushes them in arithmetic, which is why JAX uses a bitcast)
    from gradclip_core._select import _bits_portable, order_keys

    v = jnp.asarray(np.array([0.0, 1.2e-38, 0.5, 3e38, np.inf, np.nan], np.float32))
    np.testing.assert_array_equal(np.asarray(order_keys(jnp, v)), np.asarray(_bits_portable(jnp, v)))


def test_masks_equal_numpy_reference_for_every_pruner():
    rng = np.random.default_rng(1)
    ws = [rng.normal(size=(6, 4)).astype(np.float32), rng.normal(size=(4, 3, 2)).astype(np.float32)]
    # (every pruner runs through wrap + jit in tests/parity; here the bare project under jit)
    rules = [gc.global_magnitude_prune(0.5), gc.nm_prune(2, 4, axis=0)]
    for rule in rules:
        _, ref, _ = rule.project(ws, rule.init(ws))
        jw = [jnp.asarray(w) for w in ws]
        _, got, _ = jax.jit(rule.project)(jw, rule.init(jw))
        for a, b in zip(ref.masks, got.masks):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
