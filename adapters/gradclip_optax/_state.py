"""The optimizer states of the adapter: the rule's state plus the last info, as pytrees."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp


__all__ = ["TransformState", "WrapState", "info_like", "match_info"]


class TransformState(NamedTuple):
    """State of :func:`gradclip_optax.transform`.

    Attributes:
      rule_state: the gradclip rule's own state (``rule.init(params)``), a pytree of arrays.
      info: the rule's info of the last ``update`` (dict of 0-d arrays, zeros after
        ``init``), for logging: ``state.info["norm"]``. Keys are those of the rule
        (prefixed ``"rule_name/"`` inside :func:`gradclip_core.chain`).
    """

    rule_state: Any
    info: dict


class WrapState(NamedTuple):
    """State of :func:`gradclip_optax.wrap`.

    Attributes:
      rule_state: the gradclip rule's own state.
      inner_state: the wrapped optimizer's state.
      info: info of the last step, ``update`` and ``project`` merged (zeros after ``init``).
    """

    rule_state: Any
    inner_state: Any
    info: dict


def info_like(probe: Callable[[], dict]) -> dict:
    """Zeros with the keys, shapes and dtypes of the info dict ``probe()`` returns.

    ``probe`` runs one rule step; it is traced abstractly (``jax.eval_shape``, no
    compute). Rules with ``nonfinite="raise"`` cannot be traced, so for them it runs
    once eagerly (on the arrays ``probe`` closes over).

    Args:
      probe: zero-argument function returning an info dict of arrays.

    Returns:
      A dict of zero arrays (not weakly typed) of the same structure.

    Example:
      >>> import jax.numpy as jnp
      >>> info_like(lambda: {"norm": jnp.ones(()) * 3})
      {'norm': Array(0., dtype=float32)}
    """
    try:
        shapes = jax.eval_shape(probe)
    except RuntimeError:  # nonfinite="raise": needs concrete values
        shapes = probe()
    return {k: jnp.zeros(s.shape, s.dtype) for k, s in shapes.items()}


def match_info(info: dict, like: dict) -> dict:
    """``info`` with the dtypes of ``like`` (the state's info), same keys required.

    The state's structure must not change from step to step (``jax.lax.cond`` in
    ``optax.MultiSteps``, ``jax.lax.scan`` over steps), so weak types are made strong.
    """
    if set(info) != set(like):
        raise ValueError(f"the rule's info keys changed between init and update: {sorted(like)} vs {sorted(info)}")
    return {k: jnp.asarray(info[k], dtype=like[k].dtype) for k in like}
