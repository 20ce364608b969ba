"""A reducer over a named JAX axis (``shard_map`` / ``pmap``): ``lax.psum`` / ``lax.pmax``.

``transform(rule, axis_name="x")`` and ``wrap(rule, inner, axis_name="x")`` run the rule
under :func:`axis_collective`, for updates that are *shards* of the full arrays along
their leading axis (``shard_map`` with ``in_specs=P("x")`` on the first dimension, as in
ZeRO/FSDP-style sharding): every global quantity of the rule (norms, pruning counts) is
reduced over the axis, once per quantity (see :func:`gradclip_core.backend.collective`).

On a 2-D mesh pass the tuple of axes the arrays are split over, in the order of their
``PartitionSpec``: ``axis_name=("data", "model")`` for ``P(("data", "model"))`` on the
leading dimension (participant ``i`` = ``axis_index(("data", "model"))`` holds the
``i``-th block), or ``axis_name="model"`` for ``P("model")`` when the gradients are
replicated over ``"data"`` (tested: ``tests/distributed/test_jax_mesh.py``). Every array
must be such a block: an array split along another dimension, or a replicated one (a
bias) beside sharded ones, is outside this contract (the replicated one would be counted
once per participant); for such layouts run the step under ``jax.jit`` with
``NamedSharding`` instead, where the rule sees global arrays.

Not for replicated gradients: after ``lax.pmean(grads, "x")`` in a data-parallel step,
every device holds the full gradients, and the rule must run without ``axis_name``
(each device computes the same result). Under ``jax.jit`` with ``NamedSharding``
nothing is needed either: the arrays are global and XLA inserts the collectives.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import jax

import gradclip_core.backend as gcb

__all__ = ["axis_reducer", "axis_collective", "check_axis_name"]


def check_axis_name(axis_name: Any) -> Any:
    """``None``, a string or a tuple of strings (several mesh axes)."""
    ok = axis_name is None or isinstance(axis_name, str) or (
        isinstance(axis_name, tuple) and axis_name and all(isinstance(a, str) for a in axis_name)
    )
    if not ok:
        raise ValueError(f"axis_name must be None, a mesh axis name (str) or a tuple of names, got {axis_name!r}")
    return axis_name


def axis_reducer(axis_name: Any) -> gcb.Participants:
    """A :class:`gradclip_core.backend.Participants` over ``axis_name``; call it inside the mapped function.

    Args:
      axis_name: the ``shard_map`` / ``pmap`` axis name (or a tuple of names).

    Returns:
      ``psum`` / ``pmax`` reductions, ``size`` = the axis size, ``index`` =
      ``lax.axis_index``, ``total(n) = n * size`` (shards have equal shapes).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> f = jax.pmap(lambda x: axis_reducer("i")(jnp, x, "sum"), axis_name="i")
      >>> f(jnp.ones((1, 2))).tolist()
      [[1.0, 1.0]]
    """

    def reduce(xp: Any, x: Any, op: str) -> Any:
        return jax.lax.psum(x, axis_name) if op == "sum" else jax.lax.pmax(x, axis_name)

    size = int(jax.lax.axis_size(axis_name))
    return gcb.Participants(reduce, size=size, index=lambda xp: jax.lax.axis_index(axis_name), total=lambda n: n * size)


@contextlib.contextmanager
def axis_collective(axis_name: Any) -> Iterator[None]:
    """Within this block the rule's reductions go over ``axis_name`` (nothing when ``None``)."""
    if axis_name is None:
        yield
        return
    with gcb.collective(axis_reducer(axis_name)):
        yield
