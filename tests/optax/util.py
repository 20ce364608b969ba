"""Helpers for the optax adapter tests: the shared models and batches (tests/fixtures.py) as JAX arrays, one jitted step."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from .. import fixtures


def tree(seed: int, shapes, scale: float = 1.0) -> dict:
    """``{"p0": ..., "p1": ...}``: ``fixtures.rand_arrays`` as a dict of JAX arrays."""
    return {f"p{i}": jnp.asarray(a) for i, a in enumerate(fixtures.rand_arrays(seed, shapes, scale))}


def mlp_params(seed: int = 0, sizes=(4, 3)) -> dict:
    """``{"w0", "b0", "w1", ...}``: ``fixtures.mlp_weights`` (``(out, in)`` layout) as JAX arrays."""
    ws = fixtures.mlp_weights(seed, sizes)
    return {f"{'wb'[i % 2]}{i // 2}": jnp.asarray(w) for i, w in enumerate(ws)}


def grads_like(params, seed: int = 1, scale: float = 1.0):
    """Seeded normal "gradients" (``fixtures.rand_arrays``) in the structure of ``params``."""
    leaves, treedef = jax.tree.flatten(params)
    return jax.tree.unflatten(treedef, [scale * jnp.asarray(a) for a in fixtures.rand_arrays(seed, [x.shape for x in leaves])])


def mlp_loss(params: dict, x, y, reduce=jnp.sum):
    """Squared error of the dense network (tanh between layers) on the batch ``(x, y)``."""
    h = x
    for i in range(len(params) // 2):
        h = (jnp.tanh(h) if i else h) @ params[f"w{i}"].T + params[f"b{i}"]
    return reduce((h - y) ** 2)


def batch(step: int, n: int = 8, sizes=(4, 3), x_scale: float = 1.0, y_scale: float = 1.0) -> tuple:
    """The batch of a training step (``fixtures.regression`` seeded by the step), as JAX arrays."""
    x, y = fixtures.regression(100 + step, n, sizes[0], sizes[-1], x_scale, y_scale)
    return jnp.asarray(x), jnp.asarray(y)


def train_step(tx: optax.GradientTransformation, loss=None):
    """One jitted step ``(params, state, *args) -> (params, state)``: the gradients are
    ``jax.grad(loss)(params, *args)``, or, without ``loss``, the one argument itself."""

    @jax.jit
    def step(params, state, *args):
        grads = jax.grad(loss)(params, *args) if loss is not None else args[0]
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step
