"""Per-example (DP-SGD) clipping in JAX: ``jax.vmap(jax.grad)`` and a GradientTransformation."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

import gradclip_core as gc

from ._flat import flatten

__all__ = ["clip_per_example", "clip_per_example_transform", "PerExampleClipState"]


def clip_per_example(
    loss_fn: Callable[..., jax.Array],
    params: Any,
    *batch: Any,
    max_norm: Any,
    key: jax.Array | None = None,
    **options: Any,
) -> tuple[Any, dict]:
    """DP-SGD gradients of ``loss_fn``: per-example gradients clipped to ``max_norm``, summed, noised, averaged.

    ``jax.vmap(jax.grad(loss_fn), in_axes=(None, 0, ...))`` gives one gradient per
    example; :func:`gradclip_core.clip_per_example` clips each example's global norm,
    sums, adds ``noise_multiplier * max_norm`` Gaussian noise to the sum and divides by
    the batch size (it defines the convention and checks the arguments). Pure: use it
    inside ``jax.jit``.

    Noise: ``key=`` draws it with ``jax.random.normal`` (split per leaf), ``seed=``
    (+ ``counter=``, e.g. the step) uses the core's counter-based generator (identical
    noise in torch and NumPy).

    Args:
      loss_fn: ``loss_fn(params, *example) -> scalar`` for ONE example (no batch axis).
      params: the parameter pytree.
      *batch: arrays (or pytrees) with a leading batch axis, one per ``loss_fn`` argument.
      max_norm: the clip norm ``C`` (number or 0-d array).
      key: a ``jax.random`` key for the noise, instead of ``seed``.
      **options: the keyword arguments of :func:`gradclip_core.clip_per_example`
        (``noise_multiplier``, ``seed``, ``counter``, ``batch_size``, ``reduction``,
        ``semantics``).

    Returns:
      ``(grads, info)``: a pytree like ``params`` and the core's info dict.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradclip_optax
      >>> loss = lambda p, x, y: (jnp.dot(p["w"], x) - y) ** 2
      >>> x, y = jnp.ones((4, 3)), jnp.array([0.0, 1.0, 2.0, 30.0])
      >>> g, info = gradclip_optax.clip_per_example(loss, {"w": jnp.zeros(3)}, x, y, max_norm=1.0)
      >>> bool(jnp.linalg.norm(g["w"]) <= 1.0), float(info["clipped_fraction"])
      (True, 0.75)
    """
    per = jax.vmap(jax.grad(loss_fn), in_axes=(None,) + (0,) * len(batch))(params, *batch)
    leaves, treedef = flatten(per)
    if key is not None:
        options["noise"] = lambda shapes: [
            jax.random.normal(k, s, jnp.float32) for k, s in zip(jax.random.split(key, len(shapes)), shapes)
        ]
    out, info = gc.clip_per_example(leaves, max_norm, **options)
    return jax.tree.unflatten(treedef, out), info


class PerExampleClipState(NamedTuple):
    """State of :func:`clip_per_example_transform`: ``count`` (int32, steps taken: the noise counter) and the last ``info``."""

    count: jax.Array
    info: dict


def clip_per_example_transform(
    max_norm: Any,
    noise_multiplier: Any = 0.0,
    *,
    seed: int = 0,
    batch_size: Any = None,
    semantics: str | None = None,
) -> optax.GradientTransformation:
    """DP aggregation as an optax transformation: per-example updates in, one noised mean out.

    Like ``optax.contrib.differentially_private_aggregate``, its ``update`` expects
    *per-example* gradients (a leading batch axis on every leaf, e.g. from
    ``jax.vmap(jax.grad(loss))``) and returns the clipped, noised mean. The noise is the
    core's counter-based noise keyed by ``(seed, step)``; the step counter lives in the
    state, so a checkpointed state resumes with exactly the noise an uninterrupted run
    would have drawn. Put it first in a chain:
    ``optax.chain(gradclip_optax.clip_per_example_transform(1.0, 1.1, seed=0), optax.sgd(0.1))``.

    Args:
      max_norm: the clip norm ``C``.
      noise_multiplier: ``sigma`` (noise std ``sigma * C`` on the sum).
      seed: the noise seed (an int).
      batch_size: divisor (default: the batch size of each update).
      semantics: ``None``, ``"opacus"`` or ``"optax"``.

    Returns:
      An ``optax.GradientTransformation`` with state :class:`PerExampleClipState`.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradclip_optax
      >>> tx = gradclip_optax.clip_per_example_transform(1.0)
      >>> state = tx.init({"w": jnp.zeros(2)})
      >>> u, state = tx.update({"w": jnp.array([[3.0, 4.0], [0.3, 0.4]])}, state)
      >>> [round(float(v), 4) for v in u["w"]], int(state.count)
      ([0.45, 0.6], 1)
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    options = dict(noise_multiplier=noise_multiplier, seed=seed, batch_size=batch_size, semantics=semantics)
    gc.clip_per_example([jnp.zeros((1, 1))], max_norm, **options)  # validate the arguments now

    def run(updates: Any, count: Any) -> tuple[Any, dict]:
        leaves, treedef = flatten(updates)
        out, info = gc.clip_per_example(leaves, max_norm, counter=count, **options)
        return jax.tree.unflatten(treedef, out), info

    def init_fn(params: Any) -> PerExampleClipState:
        probe = jax.tree.map(lambda p: jnp.zeros((1,) + jnp.shape(p), jnp.result_type(p)), params)
        shapes = jax.eval_shape(lambda: run(probe, jnp.zeros((), jnp.int32))[1])
        return PerExampleClipState(jnp.zeros((), jnp.int32), {k: jnp.zeros(s.shape, s.dtype) for k, s in shapes.items()})

    def update_fn(updates: Any, state: PerExampleClipState, params: Any = None) -> tuple[Any, PerExampleClipState]:
        del params
        out, info = run(updates, state.count)
        info = {k: jnp.asarray(info[k], state.info[k].dtype) for k in state.info}
        return out, PerExampleClipState(state.count + 1, info)

    return optax.GradientTransformation(init_fn, update_fn)
