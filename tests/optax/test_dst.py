"""RigL / SET under gradclip_optax.wrap and jax.jit: constant sparsity, regrown weights and Adam moments at 0."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradclip_core as gc
import gradclip_optax


def _loss(params, x, y):
    h = jnp.tanh(x @ params["w1"] + params["b1"])
    return jnp.mean((h @ params["w2"] - y) ** 2)


@pytest.mark.parametrize("grow", ["gradient"])
def test_wrap_rigl_jit_tiny_mlp(grow):
    rng = np.random.default_rng(0)
    params = {"w1": jnp.asarray(rng.standard_normal((6, 8)), jnp.float32), "b1": jnp.zeros(8),
              "w2": jnp.asarray(rng.standard_normal((8, 3)), jnp.float32)}
    x = jnp.asarray(rng.standard_normal((16, 6)), jnp.float32)
    y = jnp.asarray(rng.standard_normal((16, 3)), jnp.float32)
    rule = gc.rigl(0.5, allocation="uniform", drop_fraction=0.5, update_every=2, end_step=20, grow=grow)
    tx = gradclip_optax.wrap(rule, optax.adam(0.05))
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        g = jax.grad(_loss)(params, x, y)
        u, state = tx.update(g, state, params)
        return optax.apply_updates(params, u), state

    names = ["b1", "w1", "w2"]                                  # flatten order of the dict
    grew = 0
    for t in range(7):
        ones = jax.tree.map(lambda v: jnp.ones_like(v) if v.ndim else v, state.inner_state)
        state = state._replace(inner_state=ones)               # moments everywhere, pruned elements too
        params, state = step(params, state)
        masks = gc.backend.find_masks(state.rule_state, 3)[0]
        regrown = gc.backend.find_regrown(state.rule_state, 3)[0]
        adam = state.inner_state[0]
        for i, n in enumerate(names):
            if n == "b1":
                assert bool(jnp.all(params[n] != 0)) or t == 0
                continue
            m, r = np.asarray(masks[i]), np.asarray(regrown[i])
            assert m.sum() == m.size // 2                           # constant sparsity
            w = np.asarray(params[n])
            assert (w[~m] == 0).all() and (w[r] == 0).all()          # pruned and regrown weights are 0
            assert (np.asarray(adam.mu[n])[r] == 0).all() and (np.asarray(adam.nu[n])[r] == 0).all()
            grew += int(r.sum())
            assert (np.asarray(adam.nu[n])[~r] != 0).all()          # the others keep theirs
    assert grew > 0
    assert float(state.info["sparsity"]) > 0
