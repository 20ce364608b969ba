"""``get_info(opt_state)``: the last info of the gradclip transform inside any optax state."""

from __future__ import annotations

from typing import Any

import jax

from ._state import TransformState, WrapState

__all__ = ["get_info"]


def get_info(opt_state: Any) -> dict:
    """The info dict of the gradclip transform found in ``opt_state``, for logging.

    Searches the whole optimizer state (``optax.chain`` tuples, ``inject_hyperparams``,
    ``MultiSteps``, ...) for a :class:`TransformState` or :class:`WrapState`.

    Args:
      opt_state: an optax optimizer state holding exactly one gradclip state.

    Returns:
      Its ``info``: a dict of 0-d arrays (the last step's values; zeros after ``init``).

    Raises:
      ValueError: no gradclip state, or several (then read ``state.info`` directly).

    Example:
      >>> import jax.numpy as jnp
      >>> import optax
      >>> import gradclip_core as gc
      >>> import gradclip_optax
      >>> tx = optax.chain(gradclip_optax.transform(gc.clip_by_global_norm(1.0)), optax.sgd(0.1))
      >>> state = tx.init([jnp.ones(4)])
      >>> _, state = tx.update([jnp.ones(4)], state)
      >>> float(gradclip_optax.get_info(state)["norm"])
      2.0
    """
    kinds = (TransformState, WrapState)
    found = [x for x in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, kinds)) if isinstance(x, kinds)]
    if len(found) != 1:
        raise ValueError(
            f"expected exactly one gradclip_optax state in the optimizer state, found {len(found)}; "
            "read `.info` of the one you want directly"
        )
    return found[0].info
