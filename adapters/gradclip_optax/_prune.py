"""Pruning helpers for optax states: :func:`masks` and :func:`strip`.

(The JAX pruning kernels, ``lax.cond`` schedules and the radix selection in one
``fori_loop``, are the core's: :mod:`gradclip_core.backend`, loaded on the first JAX array.)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from gradclip_core.backend import find_masks

__all__ = ["strip", "masks"]


def masks(params: Any, state: Any) -> Any:
    """The keep-masks of every pruning rule in an optimizer ``state``, ANDed, as a pytree like ``params``.

    Args:
      params: the parameter pytree.
      state: the state of ``gradclip_optax.wrap(rule, ...)`` (or any state holding it).

    Returns:
      A pytree of bool arrays (all True where no pruning rule is found).
    """
    leaves, treedef = jax.tree.flatten(params)
    out = [jnp.ones(jnp.shape(p), dtype=bool) for p in leaves]
    for ms in find_masks(state, len(leaves)):
        out = [a & b for a, b in zip(out, ms)]
    return jax.tree.unflatten(treedef, out)


def strip(params: Any, state: Any) -> Any:
    """Make pruning permanent: ``params`` with every pruned element set to exactly 0.

    After ``optax.apply_updates`` the pruned weights are already 0 (``wrap`` returns
    ``proj(p + u) - p`` for them); ``strip`` guarantees it bit for bit and gives the final,
    mask-free parameters to export (drop the optimizer state afterwards).

    Lottery-ticket rewinding is ``strip`` of the *initial* parameters: the rewound
    weights, pruned ones 0 (re-initialise the inner optimizer's state if the recipe
    asks for it, and keep ``state.rule_state``: the masks).

    Example:
      >>> import jax.numpy as jnp
      >>> import optax
      >>> import gradclip_core as gc
      >>> import gradclip_optax
      >>> params = {"w": jnp.array([[0.1, -2.0], [0.3, 4.0]])}   # (rank >= 2: pruned by default)
      >>> tx = gradclip_optax.wrap(gc.magnitude_prune(0.5), optax.sgd(0.0))
      >>> state = tx.init(params)
      >>> updates, state = tx.update({"w": jnp.zeros((2, 2))}, state, params)
      >>> gradclip_optax.strip(optax.apply_updates(params, updates), state)["w"].tolist()
      [[0.0, -2.0], [0.0, 4.0]]
    """
    m = masks(params, state)
    return jax.tree.map(lambda p, k: jnp.where(k, p, jnp.zeros_like(p)), params, m)
