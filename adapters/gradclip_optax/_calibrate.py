"""``activation_norms``: Wanda's input-channel norms ``||X_j||_2`` in JAX, from a capture function.

JAX has no forward hooks: the user gives ``capture(batch) -> {param path: input of that
layer}`` (a plain function of the model's forward pass, or flax's
``capture_intermediates``). Each calibration batch adds the squares of every input per
channel (float32, :func:`gradclip_core.activation_sumsq`); the norms are the square
roots, keyed by the paths :func:`gradclip_optax.wrap` names the leaves with (``"l1/w"``).
Flax / haiku kernels are ``(in, out)``: the input-channel axis is ``-2`` (``axis=None``).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp

import gradclip_core as gc

__all__ = ["activation_norms"]


def activation_norms(capture: Callable[[Any], Mapping[str, Any]], batches: Iterable[Any], *,
                     channel_axis: int = -1) -> dict[str, jax.Array]:
    """``{param path: ||X_j||_2 per input channel}`` over ``batches``.

    Args:
      capture: ``capture(batch) -> {path of a kernel: the input of its layer}``.
      batches: calibration batches.
      channel_axis: the channel axis of the inputs (``-1``: ``(..., in)``).

    Returns:
      float32 arrays, one per path.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradclip_optax
      >>> norms = gradclip_optax.activation_norms(lambda x: {"w": x}, [jnp.array([[3.0, 0.0]]), jnp.array([[4.0, 1.0]])])
      >>> norms["w"].tolist()
      [5.0, 1.0]
    """
    sums: dict[str, Any] = {}
    for batch in batches:
        for name, x in capture(batch).items():
            x = jnp.asarray(x)
            s = gc.activation_sumsq(jnp, x, channel_axis)
            sums[name] = s if name not in sums else sums[name] + s
    return {k: jnp.sqrt(v) for k, v in sums.items()}
