"""skip_on_spike in optax: the loss through the update's extra arguments, a true skip in ``wrap``.

A skipped step of ``wrap(skip_on_spike(...), adam)`` leaves the weights, Adam's moments
and its step count exactly as they were (compared bit for bit), like
``optax.apply_if_finite``; the run equals the run without the spike steps.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradclip_core as gc
import gradclip_optax

from .util import batch, mlp_loss, mlp_params

SPIKES = (6, 9)


def _grads(params, step):
    x, y = batch(step)
    loss, grads = jax.value_and_grad(mlp_loss)(params, x, y)
    if step in SPIKES:
        grads = jax.tree.map(lambda g: g * 1e3, grads)
    return loss, grads


def _run(tx, steps, with_loss=True, drop=()):
    params = mlp_params()
    state = tx.init(params)

    @jax.jit
    def step(params, state, grads, loss):
        kw = {"loss": loss} if with_loss else {}
        updates, state = tx.update(grads, state, params, **kw)
        return optax.apply_updates(params, updates), state

    out = []
    for i in range(steps):
        if i in drop:
            continue
        loss, grads = _grads(params, i)
        params, state = step(params, state, grads, loss)
        out.append((params, state))
    return out


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _same(a, b):
    return all(x.dtype == y.dtype and x.tobytes() == y.tobytes() for x, y in zip(_leaves(a), _leaves(b)))


@pytest.mark.parametrize("loss", [False, True])
def test_wrap_skips_the_adam_step_bitwise(loss):
    rule = gc.skip_on_spike(window=8, k=10.0, warmup=4, loss=loss)
    tx = gradclip_optax.wrap(rule, optax.adam(1e-2))
    run = _run(tx, 12)
    skipped = [int(s.info["skipped"]) for _, s in run]
    assert skipped == [int(i in SPIKES) for i in range(12)]
    for i in SPIKES:
        (p0, s0), (p1, s1) = run[i - 1], run[i]
        assert _same(p0, p1), f"weights moved on skipped step {i}"
        assert _same(s0.inner_state, s1.inner_state), f"Adam's moments / count moved on skipped step {i}"
        assert _same(s0.rule_state, s1.rule_state)
        assert int(s1.inner_state[0].count) == i - SPIKES.index(i)  # steps taken so far
    # the kept steps equal a run that never saw the spikes
    kept = [r for i, r in enumerate(run) if i not in SPIKES]
    for (pa, sa), (pb, sb) in zip(kept, _run(tx, 12, drop=SPIKES)):
        assert _same(pa, pb) and _same(sa.inner_state, sb.inner_state)


def test_loss_reaches_the_rule_and_a_loss_spike_skips():
    rule = gc.skip_on_spike(window=8, k=4.0, warmup=4, loss=True)
    tx = gradclip_optax.wrap(rule, optax.sgd(0.1))
    params = mlp_params()
    state = tx.init(params)
    x, y = batch(0)
    grads = jax.grad(mlp_loss)(params, x, y)
    for i in range(6):
        _, state = tx.update(grads, state, params, loss=jnp.float32(1.0 + 0.01 * i))
    assert float(state.info["loss"]) == pytest.approx(1.05) and int(state.info["skipped"]) == 0
    updates, state2 = tx.update(grads, state, params, loss=jnp.float32(10.0))
    assert int(state2.info["skipped"]) == 1 and float(state2.info["loss_z"]) > 4.0
    assert all(not np.any(np.asarray(u)) for u in jax.tree.leaves(updates))
    with pytest.raises(ValueError, match="pass the step's loss"):
        tx.update(grads, state, params)


def test_transform_in_a_chain_takes_the_loss_and_zeroes_the_updates():
    rule = gc.skip_on_spike(window=4, k=3.0, warmup=2, loss=True)
    tx = optax.chain(gradclip_optax.transform(rule), optax.sgd(1.0))
    assert isinstance(gradclip_optax.transform(rule), optax.GradientTransformationExtraArgs)
    params = {"w": jnp.zeros(2)}
    state = tx.init(params)
    for v in [1.0, 1.0, 1.0]:
        upd, state = tx.update({"w": jnp.array([v, 0.0])}, state, params, loss=1.0)
        assert np.asarray(upd["w"]).tolist() == [-v, 0.0]
    upd, state = tx.update({"w": jnp.array([1.0, 0.0])}, state, params, loss=5.0)
    assert np.asarray(upd["w"]).tolist() == [0.0, 0.0] and int(state[0].info["skipped"]) == 1
    with pytest.raises(ValueError, match="loss"):
        tx.update({"w": jnp.ones(2)}, state, params)
    # a rule without a loss ignores other chain elements' extra arguments
    tx2 = optax.chain(gradclip_optax.transform(gc.clip_by_global_norm(1.0)), optax.sgd(1.0))
    upd, _ = tx2.update({"w": jnp.array([3.0, 4.0])}, tx2.init(params), params, loss=1.0, value=2.0)
    np.testing.assert_allclose(np.asarray(upd["w"]), [-0.6, -0.8], rtol=1e-6)


def test_core_rule_and_feed_loss_run_under_jax_jit():
    rule = gc.skip_on_spike(window=4, k=2.0, warmup=3, loss=True)
    g0 = [jnp.ones(3)]

    @jax.jit
    def step(g, state, loss):
        return rule.update(g, gc.feed_loss(state, loss), None)

    state = rule.init(g0)
    flags = []
    for v, loss in [(1.0, 1.0), (1.1, 1.1), (0.9, 0.9), (1.0, 1.0), (1.0, 50.0), (30.0, 1.0)]:
        _, state, info = step([jnp.full(3, v)], state, jnp.float32(loss))
        flags.append(int(info["skipped"]))
    assert flags == [0, 0, 0, 0, 1, 1]


def test_a_skipped_step_keeps_the_pruning_schedule_and_its_info():
    """On a skipped step nothing projects: the pruning count stays and info keeps the last projection's sparsity."""
    rule = gc.chain(gc.skip_on_spike(window=8, k=3.0, warmup=3),
                    gc.magnitude_prune(0.5, schedule=gc.polynomial_schedule(0, 6, 2)))
    rng = np.random.default_rng(0)
    params = [jnp.asarray(rng.normal(size=(6, 4)).astype(np.float32))]
    tx = gradclip_optax.wrap(rule, optax.sgd(0.1))
    state = tx.init(params)
    step = jax.jit(lambda g, s, p: tx.update(g, s, p))
    sparsity, counts = [], []
    for i in range(6):
        g = [jnp.asarray(rng.normal(size=(6, 4)).astype(np.float32) * (1000.0 if i == 4 else 1.0))]
        updates, state = step(g, state, params)
        params = optax.apply_updates(params, updates)
        sparsity.append(float(state.info["magnitude_prune/sparsity"]))
        counts.append(int(state.rule_state[1].count))
    assert counts == [1, 2, 3, 4, 4, 5]
    assert sparsity[4] == sparsity[3] and int(state.info["skip_on_spike/skipped"]) == 0
