"""Update clipping in optax: ``wrap`` runs ``rule.on_update`` rules on the inner optimizer's update, under jit.

References: Clippy's ``shrink_by_references`` and Levanter's historical update-norm clip, in
NumPy (tests/core/test_update_clip.py). The checkpoint/resume contract: tests/parity.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradclip_core as gc
import gradclip_optax

from ..core.test_update_clip import LevanterRef, shrink_by_references


def _params(seed=0):
    rng = np.random.default_rng(seed)
    return {"w": jnp.asarray(rng.normal(size=(4, 3)).astype(np.float32)), "b": jnp.asarray(rng.normal(size=3).astype(np.float32))}


def _grads(step, scale):
    rng = np.random.default_rng(100 + step)
    return {"w": jnp.asarray(rng.normal(0, scale, (4, 3)).astype(np.float32)), "b": jnp.asarray(rng.normal(0, scale, 3).astype(np.float32))}


def _run(tx, params, steps):
    state = tx.init(params)

    @jax.jit
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, updates

    out = []
    for i, scale in enumerate(steps):
        new, state, updates = step(params, state, _grads(i, scale))
        out.append((params, new, updates, state))
        params = new
    return out


def test_wrap_clippy_is_the_reference_on_adams_update():
    rule = gc.clippy(0.05, 1e-3)
    params = _params()
    wrapped = _run(gradclip_optax.wrap(rule, optax.adam(0.1)), params, [1.0, 3.0, 1.0])
    plain = _run(optax.adam(0.1), params, [1.0, 3.0, 1.0])
    clipped_any = False
    for (p_old, p_new, u, state), (_, _, u_plain, _) in zip(wrapped, plain):
        for key in ("b", "w"):  # Adam's moments see the unclipped gradients: its raw update is the plain run's
            want, scale = shrink_by_references(np.asarray(u_plain[key]), np.asarray(p_old[key]), 0.05, 1e-3)
            np.testing.assert_allclose(np.asarray(u[key]), want, rtol=1e-6)
            # apply_updates: p + u (XLA may fuse p + s * u into one FMA inside the jitted step: 1 ulp)
            np.testing.assert_array_max_ulp(np.asarray(p_new[key]), np.asarray(p_old[key] + u[key]), maxulp=1)
            clipped_any |= scale < 1
        assert set(gradclip_optax.get_info(state)) == {"min_scale", "clipped_fraction"}
    assert clipped_any


def test_wrap_equals_the_chain_after_the_optimizer():
    params = _params(1)
    for rule in (gc.clippy(0.1, 1e-2), gc.clip_update_norm(1.0, history=2)):
        a = _run(gradclip_optax.wrap(rule, optax.sgd(0.5, momentum=0.9)), params, [0.1, 1.0, 10.0, 1.0])
        b = _run(optax.chain(optax.sgd(0.5, momentum=0.9), gradclip_optax.transform(rule)), params, [0.1, 1.0, 10.0, 1.0])
        for (_, pa, _, _), (_, pb, _, _) in zip(a, b):
            for key in pa:
                np.testing.assert_array_equal(np.asarray(pa[key]), np.asarray(pb[key]))


def test_wrap_clip_update_norm_is_levanter_on_sgds_update():
    scales = [1.0, 1.1, 0.9, 20.0, 1.0, 1.0, 50.0]
    out = _run(gradclip_optax.wrap(gc.clip_update_norm(2.0, history=4), optax.sgd(0.5)), _params(), scales)
    ref = LevanterRef(4, 2.0)
    clipped = 0
    for i, (p_old, p_new, u, state) in enumerate(out):
        g = _grads(i, scales[i])
        raw = [np.float32(-0.5) * np.asarray(g[k]) for k in ("b", "w")]  # jax.tree order
        want, scale, norm, bound = ref.update(raw)
        for k, w in zip(("b", "w"), want):
            np.testing.assert_allclose(np.asarray(u[k]), w, rtol=1e-6)
        info = gradclip_optax.get_info(state)
        assert float(info["norm"]) == pytest.approx(float(norm), rel=1e-6)
        assert float(info["threshold"]) == pytest.approx(float(bound), rel=1e-6)
        clipped += int(info["clipped"])
    assert clipped >= 2  # the two spikes


def test_wrap_skips_a_nonfinite_update_with_everything_kept():
    params = _params()
    tx = gradclip_optax.wrap(gc.clippy(0.1, 1e-2, nonfinite="skip"), optax.adam(0.1))
    state = tx.init(params)
    grads = _grads(0, 1.0)
    grads["w"] = grads["w"].at[0, 0].set(jnp.nan)
    updates, new_state = jax.jit(tx.update)(grads, state, params)
    assert all(not np.any(np.asarray(u)) for u in jax.tree.leaves(updates))
    assert int(new_state.info["skipped"]) == 1
    for a, b in zip(jax.tree.leaves(new_state.inner_state), jax.tree.leaves(state.inner_state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_gradient_rule_and_an_update_rule_nest_as_two_wraps():
    params = _params(2)
    grad_rule, update_rule = gc.clip_by_global_norm(0.5), gc.clippy(0.02, 0.0)
    nested = _run(gradclip_optax.wrap(grad_rule, gradclip_optax.wrap(update_rule, optax.sgd(0.5))), params, [3.0])
    (p_old, p_new, u, state), = nested
    g = _grads(0, 3.0)
    norm = np.sqrt(sum(float(np.sum(np.asarray(x, np.float64) ** 2)) for x in g.values()))
    assert norm > 0.5  # the gradient clip acts ...
    for key in ("b", "w"):
        raw = np.float32(-0.5) * (np.asarray(g[key]) * np.float32(min(1.0, 0.5 / norm)))
        want, scale = shrink_by_references(raw, np.asarray(p_old[key]), 0.02, 0.0)
        np.testing.assert_allclose(np.asarray(u[key]), want, rtol=1e-6)  # ... then Clippy on the update
    assert float(state.info["norm"]) == pytest.approx(norm, rel=1e-6)
    assert float(state.inner_state.info["min_scale"]) < 1
