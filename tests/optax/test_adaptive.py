"""Stateful adaptive clipping and DP aggregation in optax: jit, state dtypes, suggest_threshold, DP resume.

Checkpoint/resume of the rules' state (the whole optimizer state to NumPy and back
into the structure of a fresh ``tx.init``, bit for bit) is the contract of every
integration path: tests/parity/test_contract.py. The DP aggregation here is not a rule,
so its resume (the noise counter) is tested below.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

import gradclip_core as gc
import gradclip_optax

from . import util

STEPS = 12


TXS = {
    "autoclip": lambda: optax.chain(gradclip_optax.transform(gc.autoclip(30.0, 6)), optax.adam(1e-2)),
    "zclip": lambda: optax.chain(
        gradclip_optax.transform(gc.zclip(alpha=0.8, z_thresh=1.5, warmup_steps=3, nonfinite="skip")), optax.adam(1e-2)
    ),
    "record-wrap": lambda: gradclip_optax.wrap(gc.chain(gc.record_norms(8), gc.clip_by_global_norm(5.0)), optax.sgd(1e-2)),
}


def batch(step):
    return util.batch(step, x_scale=30.0 if step in (4, 8) else 1.0)  # spikes


def train(tx):
    params = util.mlp_params()
    state = tx.init(params)
    step_fn = util.train_step(tx, util.mlp_loss)
    for step in range(STEPS):
        params, state = step_fn(params, state, *batch(step))
    return params, state


def test_state_dtypes_and_clipping_happens():
    _, state = train(TXS["autoclip"]())
    hist = state[0].rule_state
    assert hist.count.dtype == jnp.int32 and hist.norms.dtype == jnp.float32
    _, state = train(TXS["zclip"]())
    zs = state[0].rule_state
    assert int(zs.count) == 3 and zs.mean.dtype == jnp.float32


def test_suggest_threshold_on_whole_optax_state():
    _, state = train(TXS["record-wrap"]())
    stats = gc.suggest_threshold(state)
    assert float(stats["count"]) == 8
    assert float(stats["p50"]) <= float(stats["p90"]) <= float(stats["p99"]) <= float(stats["max"])
    jitted = jax.jit(gc.suggest_threshold)(state)
    assert float(jitted["max"]) == float(stats["max"])


def test_per_example_clip_resume_continues_the_noise():
    tx = optax.chain(gradclip_optax.clip_per_example_transform(1.0, 1.1, seed=3), optax.sgd(0.1))
    per_example_grad = jax.vmap(jax.grad(util.mlp_loss), in_axes=(None, 0, 0))

    step_fn = jax.jit(lambda p, s, x, y: tx.update(per_example_grad(p, x, y), s, p))

    def run(cut=None):
        params = util.mlp_params()
        state = tx.init(params)
        out = []
        for step in range(6):
            if step == cut:  # to NumPy and back into the structure of a fresh init
                leaves = [np.asarray(x) for x in jax.tree.leaves(state)]
                state = jax.tree.unflatten(jax.tree.structure(tx.init(util.mlp_params())), [jnp.asarray(x) for x in leaves])
            updates, state = step_fn(params, state, *batch(step))
            params = optax.apply_updates(params, updates)
            out.append(params)
        return out, state

    a, sa = run()
    b, sb = run(cut=3)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert np.array_equal(np.asarray(x), np.asarray(y))
    assert int(sa[0].count) == 6 and int(sb[0].count) == 6
    assert 0 <= float(sa[0].info["clipped_fraction"]) <= 1


def test_adagc_under_jit_equals_the_numpy_rule():
    # AdaGC in an optax chain under jit: per-array factors and the (n,) gamma state equal the
    # core rule run eagerly on NumPy arrays (the tree's leaves, in order), step for step.
    rule = gc.adagc(beta=0.5, warmup_steps=2)
    tx = gradclip_optax.transform(rule)
    params = util.mlp_params()
    update = jax.jit(tx.update)
    state = tx.init(params)
    leaves = [np.asarray(x) for x in jax.tree.leaves(params)]
    ref_state = rule.init(leaves)
    clipped = 0
    for step in range(6):
        grads = util.grads_like(params, seed=step, scale=30.0 if step == 4 else 1.0)
        out, state = update(grads, state, params)
        want, ref_state, info = rule.update([np.asarray(g) for g in jax.tree.leaves(grads)], ref_state)
        for a, b in zip(jax.tree.leaves(out), want):
            np.testing.assert_allclose(np.asarray(a), b, rtol=2e-6, atol=1e-7)
        np.testing.assert_allclose(np.asarray(state.rule_state.gamma), ref_state.gamma, rtol=2e-6)
        clipped += int(info["clipped"]) if step >= 2 else 0
    assert state.rule_state.gamma.dtype == jnp.float32 and int(state.rule_state.count) == 2
    assert clipped >= 1
