"""Telemetry in optax: gc.monitor in a chain and gc.update_ratio in wrap, under jit, keyed by tree paths."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

import gradclip_core as gc
import gradclip_optax


def _params():
    rng = np.random.default_rng(0)
    return {"dense": {"kernel": jnp.asarray(rng.normal(size=(4, 3)).astype(np.float32)),
                      "bias": jnp.asarray(rng.normal(size=3).astype(np.float32))}}


def _grads(step, scale):
    rng = np.random.default_rng(100 + step)
    return {"dense": {"kernel": jnp.asarray(rng.normal(0, scale, (4, 3)).astype(np.float32)),
                      "bias": jnp.asarray(rng.normal(0, scale, 3).astype(np.float32))}}


def _norm(tree):
    return float(np.sqrt(sum(np.sum(np.asarray(x, np.float64) ** 2) for x in jax.tree.leaves(tree))))


def test_monitor_in_a_chain_matches_optax_clip_by_global_norm():
    """get_info: norm/<tree path> before the clip, post_norm after; updates equal optax's own clip + adam."""
    params = _params()
    tx = optax.chain(gradclip_optax.transform(gc.monitor(gc.clip_by_global_norm(1.0, semantics="optax"), decay=0.5)),
                     optax.adam(0.1))
    ref = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(0.1))
    state, ref_state = tx.init(params), ref.init(params)
    step = jax.jit(tx.update)
    rate = weight = 0.0
    for i, scale in enumerate([3.0, 0.01, 5.0]):
        g = _grads(i, scale)
        updates, state = step(g, state, params)
        ref_updates, ref_state = jax.jit(ref.update)(g, ref_state, params)
        for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(ref_updates)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        info = {k: float(v) for k, v in gradclip_optax.get_info(state).items()}
        for path, x in (("dense/kernel", g["dense"]["kernel"]), ("dense/bias", g["dense"]["bias"])):
            np.testing.assert_allclose(info[f"norm/{path}"], _norm(x), rtol=1e-6)
        total = _norm(g)
        np.testing.assert_allclose(info["norm"], total, rtol=1e-6)
        np.testing.assert_allclose(info["post_norm"], min(total, 1.0), rtol=1e-5)
        clipped = float(total > 1.0)
        rate, weight = 0.5 * rate + 0.5 * clipped, 0.5 * weight + 0.5
        assert info["clipped"] == clipped
        np.testing.assert_allclose(info["clip_rate"], rate / weight, rtol=1e-6)
        assert info["clip_by_global_norm/norm"] == info["norm"] or abs(info["clip_by_global_norm/norm"] / total - 1) < 1e-6


def test_update_ratio_in_wrap():
    params = _params()
    tx = gradclip_optax.wrap(gc.update_ratio(per_array=True), optax.sgd(0.1, momentum=0.9))
    ref = optax.sgd(0.1, momentum=0.9)
    state, ref_state = tx.init(params), ref.init(params)
    step = jax.jit(tx.update)
    for i in range(3):
        g = _grads(i, 1.0)
        updates, state = step(g, state, params)
        ref_updates, ref_state = jax.jit(ref.update)(g, ref_state, params)
        for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(ref_updates)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # the step left as the optimizer made it
        info = gradclip_optax.get_info(state)
        np.testing.assert_allclose(float(info["ratio"]), _norm(updates) / _norm(params), rtol=1e-6)
        np.testing.assert_allclose(float(info["ratio/dense/kernel"]),
                                   _norm(updates["dense"]["kernel"]) / _norm(params["dense"]["kernel"]), rtol=1e-6)
        params = optax.apply_updates(params, updates)
