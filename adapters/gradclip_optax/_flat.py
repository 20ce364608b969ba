"""Pytrees <-> the flat lists of arrays that gradclip rules work on."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["flatten", "params_like", "leaf_names", "NO_PARAMS_MSG"]

# optax's own NO_PARAMS_MSG (optax._src.base, not exported), plus what to do.
NO_PARAMS_MSG = (
    "You are using a transformation that requires the current value of "
    "parameters, but you are not passing `params` when calling `update`."
    " The gradclip rule {name!r} needs them (e.g. adaptive clipping, or any rule used with "
    "gradclip_optax.wrap): call `tx.update(updates, state, params)`."
)


def flatten(tree: Any) -> tuple[list[jax.Array], Any]:
    """Leaves of ``tree`` as JAX arrays, and its treedef.

    NumPy arrays and Python numbers become JAX arrays, so the core always sees the
    ``jax.numpy`` namespace (JAX layout and numerics), eagerly or under ``jax.jit``.

    Args:
      tree: a pytree of arrays (updates, gradients or parameters).

    Returns:
      ``(leaves, treedef)``; ``treedef.unflatten(leaves)`` rebuilds the tree.

    Example:
      >>> import jax.numpy as jnp
      >>> leaves, treedef = flatten({"b": jnp.ones(2), "a": {"w": jnp.zeros((2, 2))}})
      >>> [x.shape for x in leaves], treedef.num_leaves
      ([(2, 2), (2,)], 2)
    """
    leaves, treedef = jax.tree.flatten(tree)
    return [jnp.asarray(x) for x in leaves], treedef


def _key(k: Any) -> str:
    for attr in ("key", "idx", "name"):  # DictKey, SequenceKey / FlattenedIndexKey, GetAttrKey
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def leaf_names(tree: Any) -> list[str]:
    """A name for each leaf of ``tree`` (``jax.tree.flatten`` order): its path, keys joined by ``/``.

    A list of arrays gives ``"0"``, ``"1"``, ... (the positions); a dict
    ``{"params": {"dense": {"kernel": ...}}}`` gives ``"params/dense/kernel"``.

    Example:
      >>> import jax.numpy as jnp
      >>> leaf_names({"b": jnp.ones(2), "a": {"w": jnp.zeros(1)}, "c": [jnp.ones(1)]})
      ['a/w', 'b', 'c/0']
    """
    paths, _ = jax.tree_util.tree_flatten_with_path(tree)
    return ["/".join(_key(k) for k in path) or str(i) for i, (path, _) in enumerate(paths)]


def params_like(treedef: Any, params: Any, name: str, required: bool,
                updates: list | None = None) -> list[jax.Array] | None:
    """Flatten ``params`` with the structure of the updates (``treedef``).

    Args:
      treedef: the treedef of the updates.
      params: the parameters passed to ``update`` (or ``None``).
      name: the rule's name, for the error message.
      required: whether the caller needs ``params`` (raise if missing).
      updates: the update leaves; when given, each parameter must have its update's
        shape (the error names the tree path).

    Returns:
      The parameter leaves in the order of the update leaves, or ``None`` when
      ``params`` is ``None`` and not required.

    Raises:
      ValueError: ``params`` missing while required (optax's ``NO_PARAMS_MSG``), not of
        the updates' tree structure, or of other shapes.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> treedef = jax.tree.structure({"w": 0})
      >>> [x.tolist() for x in params_like(treedef, {"w": jnp.ones(1)}, "rule", True)]
      [[1.0]]
    """
    if params is None:
        if required:
            raise ValueError(NO_PARAMS_MSG.format(name=name))
        return None
    try:
        leaves = treedef.flatten_up_to(params)
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"{name}: params and updates must have the same tree structure; the updates are {treedef}, "
            f"params {jax.tree.structure(params)} (the tree structure of the updates decides)"
        ) from err
    leaves = [jnp.asarray(x) for x in leaves]
    if updates is not None:
        for i, (p, u) in enumerate(zip(leaves, updates)):
            if tuple(p.shape) != tuple(jnp.shape(u)):
                path = leaf_names(params)[i]
                raise ValueError(f"{name}: params {path!r} has shape {tuple(p.shape)} but its update (gradient) "
                                 f"has shape {tuple(jnp.shape(u))}")
    return leaves
