"""The recipe in JAX/optax: ``gradclip_optax.wrap(rule, optax.sgd(lr))`` in a ``jax.jit`` step."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import gradclip_optax

from ._config import Config
from ._data import Data, batch_indices
from ._history import History, pick
from ._recipe import recipe


def forward(params: dict, x: jax.Array) -> jax.Array:
    """Logits of the MLP; kernels are ``(in, out)``, like Keras and Flax."""
    h = jax.nn.relu(x @ params["w1"] + params["b1"])
    return h @ params["w2"] + params["b2"]


def loss_fn(params: dict, x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy."""
    return optax.softmax_cross_entropy_with_integer_labels(forward(params, x), y).mean()


def train(cfg: Config, data: Data, weights: list[np.ndarray], log: callable = print,
          make_rule: callable = recipe) -> History:
    """Train with the recipe wrapped around ``optax.sgd``; returns the per-step :class:`History`.

    Args:
      cfg: the run's :class:`Config`.
      data: the split digits.
      weights: the initial weights (``(in, out)`` layout).
      log: progress printer.
      make_rule: ``make_rule(cfg, axis)`` gives the rule (default: the demo's :func:`recipe`;
        ``examples/prune_dst.py`` passes RigL/SET).

    Returns:
      The run's :class:`History`.
    """
    # The parameters are a list (a pytree too), in the order torch and Keras give them,
    # [w1, b1, w2, b2]; a dict would be flattened in sorted key order (b1, b2, w1, w2).
    names = ["w1", "b1", "w2", "b2"]
    params = [jnp.asarray(w) for w in weights]
    tx = gradclip_optax.wrap(make_rule(cfg, "out_last"), optax.sgd(cfg.lr))
    state = tx.init(params)

    @jax.jit
    def step_fn(params: list, state: optax.OptState, x: jax.Array, y: jax.Array, spike: jax.Array):
        loss, grads = jax.value_and_grad(lambda p: loss_fn(dict(zip(names, p)), x, y) * spike)(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss / spike

    @jax.jit
    def accuracy(params: list) -> jax.Array:
        return jnp.sum(jnp.argmax(forward(dict(zip(names, params)), data.x_test), 1) == data.y_test)

    hist = History.empty("optax", cfg.steps)
    t0 = time.perf_counter()
    for step, idx in enumerate(batch_indices(len(data.x_train), cfg)):
        spike = jnp.float32(cfg.spike_factor(step))  # an injected spike: the gradients times spike_scale
        params, state, loss = step_fn(params, state, data.x_train[idx], data.y_train[idx], spike)
        info = gradclip_optax.get_info(state)
        hist.record(step, loss=loss, grad_norm=pick(info, "clip_by_global_norm/norm"), sparsity=pick(info, "sparsity"),
                    skipped=pick(info, "skip_on_spike/skipped"))
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            acc = int(accuracy(params)) / len(data.y_test)
            hist.record(step, accuracy=acc)
            log(f"  optax   step {step + 1:4d}  loss {hist.loss[step]:.4f}  acc {float(acc):.3f}  "
                f"sparsity {hist.sparsity[step]:.3f}")
    hist.seconds = time.perf_counter() - t0
    hist.weights = [np.asarray(p) for p in params]
    hist.masks = [np.asarray(m) for m in gradclip_optax.masks(params, state) if m.ndim == 2]
    return hist
