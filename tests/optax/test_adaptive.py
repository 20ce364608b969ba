"""Stateful adaptive clipping and DP aggregation in optax: jit, checkpoint/resume, suggest_threshold.

Checkpoint/resume: the whole optimizer state is converted to NumPy arrays mid-run
(what a checkpoint library stores), rebuilt with ``jax.tree.unflatten`` into the
structure of a fresh ``tx.init``, and training continues; it must equal the
uninterrupted run bit for bit (weights, states and info).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradclip_core as gc
import gradclip_optax

STEPS, CUT = 12, 5


def params0():
    k1, k2 = jax.random.split(jax.random.key(0))
    return {"w": jax.random.normal(k1, (4, 3)), "b": jax.random.normal(k2, (3,))}


def loss(params, x, y):
    return jnp.sum((x @ params["w"] + params["b"] - y) ** 2)


def batch(step):
    k1, k2 = jax.random.split(jax.random.key(100 + step))
    scale = 30.0 if step in (4, 8) else 1.0  # spikes
    return jax.random.normal(k1, (8, 4)) * scale, jax.random.normal(k2, (8, 3))


TXS = {
    "autoclip": lambda: optax.chain(gradclip_optax.transform(gc.autoclip(30.0, 6)), optax.adam(1e-2)),
    "zclip": lambda: optax.chain(
        gradclip_optax.transform(gc.zclip(alpha=0.8, z_thresh=1.5, warmup_steps=3, nonfinite="skip")), optax.adam(1e-2)
    ),
    "record-wrap": lambda: gradclip_optax.wrap(gc.chain(gc.record_norms(8), gc.clip_by_global_norm(5.0)), optax.sgd(1e-2)),
}


def to_numpy(state):
    leaves, treedef = jax.tree.flatten(state)
    return [np.asarray(x) for x in leaves], treedef


_COMPILED: dict = {}


def _step_fn(tx):
    """One jitted train step per transformation (both runs of a test share the compilation)."""
    if id(tx) not in _COMPILED:

        @jax.jit
        def step_fn(params, state, x, y):
            grads = jax.grad(loss)(params, x, y)
            updates, state = tx.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        _COMPILED[id(tx)] = (tx, step_fn)
    return _COMPILED[id(tx)][1]


def train(tx, cut=None):
    params = params0()
    state = tx.init(params)
    step_fn = _step_fn(tx)

    for step in range(STEPS):
        if step == cut:
            saved_p, _ = to_numpy(params)
            saved_s, _ = to_numpy(state)
            fresh = tx.init(params0())  # a new process: only the structure comes from init
            state = jax.tree.unflatten(jax.tree.structure(fresh), [jnp.asarray(x) for x in saved_s])
            params = jax.tree.unflatten(jax.tree.structure(params0()), [jnp.asarray(x) for x in saved_p])
        params, state = step_fn(params, state, *batch(step))
    return params, state


@pytest.mark.parametrize("name", sorted(TXS))
def test_checkpoint_resume_is_exact(name):
    tx = TXS[name]()
    p1, s1 = train(tx)
    p2, s2 = train(tx, cut=CUT)
    for a, b in zip(jax.tree.leaves((p1, s1)), jax.tree.leaves((p2, s2))):
        assert a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True)


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
    per_example_grad = jax.vmap(jax.grad(loss), in_axes=(None, 0, 0))

    step_fn = jax.jit(lambda p, s, x, y: tx.update(per_example_grad(p, x, y), s, p))

    def run(cut=None):
        params = params0()
        state = tx.init(params)
        out = []
        for step in range(6):
            if step == cut:
                leaves, _ = to_numpy(state)
                state = jax.tree.unflatten(jax.tree.structure(tx.init(params0())), [jnp.asarray(x) for x in leaves])
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
