"""Rule-state trees <-> flat leaf lists, framework-free (shared by the torch and Keras adapters).

A core rule state is a tree of tuples and NamedTuples (``chain`` nests the states of its
rules in a plain tuple) whose leaves are arrays; ``None`` marks an absent leaf. JAX
reads such a tree as a pytree by itself; torch ``state_dict``\\ s and Keras variables need
the leaves as a flat list and the structure to rebuild the tree from them. Leaves come
depth first, left to right, ``None`` dropped (the order ``jax.tree.leaves`` gives too).
Lists count as nodes; anything else (an array, a dict) is a leaf.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

__all__ = ["TreeDef", "flatten_state", "unflatten_state", "is_namedtuple", "find_masks", "find_regrown", "tree_where"]

_LEAF = "*"


class TreeDef(NamedTuple):
    """The structure of a state tree, without its arrays (from :func:`flatten_state`).

    ``node`` is ``"*"`` (a leaf), ``None``, or ``(type, children)`` for a tuple, list or
    NamedTuple; ``num_leaves`` counts the ``"*"``.
    """

    node: Any
    num_leaves: int


def is_namedtuple(x: Any) -> bool:
    """Whether ``x`` is a NamedTuple instance (a tuple with ``_fields``)."""
    return isinstance(x, tuple) and hasattr(x, "_fields")


def flatten_state(state: Any) -> tuple[list, TreeDef]:
    """The leaves of a state tree, depth first (``None`` dropped), and its structure.

    Args:
      state: a tree of tuples / NamedTuples / lists whose leaves are arrays (or ``None``).

    Returns:
      ``(leaves, treedef)``; ``unflatten_state(treedef, leaves)`` rebuilds ``state``.

    Example:
      >>> leaves, treedef = flatten_state(((1, None), (), 2))
      >>> leaves, treedef.num_leaves
      ([1, 2], 2)
    """
    leaves: list = []

    def walk(node: Any) -> Any:
        if isinstance(node, (tuple, list)):
            return (type(node), tuple(walk(v) for v in node))
        if node is None:
            return None
        leaves.append(node)
        return _LEAF

    node = walk(state)
    return leaves, TreeDef(node, len(leaves))


def unflatten_state(treedef: TreeDef, leaves: Sequence[Any]) -> Any:
    """A tree of ``treedef``'s structure holding ``leaves`` (in :func:`flatten_state` order).

    Args:
      treedef: from :func:`flatten_state`.
      leaves: exactly ``treedef.num_leaves`` leaves.

    Returns:
      The rebuilt tree (NamedTuple, tuple and list types restored).

    Raises:
      ValueError: ``leaves`` holds more or fewer leaves than ``treedef``.

    Example:
      >>> from typing import NamedTuple
      >>> class S(NamedTuple):
      ...     count: int
      ...     buf: list
      >>> leaves, treedef = flatten_state((S(0, [1, 2]), None, ()))
      >>> unflatten_state(treedef, [10, 11, 12])
      (S(count=10, buf=[11, 12]), None, ())
      >>> unflatten_state(treedef, [10, 11])
      Traceback (most recent call last):
      ValueError: leaves holds 2 state leaves, the state tree has 3
    """
    leaves = list(leaves)
    if len(leaves) != treedef.num_leaves:
        raise ValueError(f"leaves holds {len(leaves)} state leaves, the state tree has {treedef.num_leaves}")
    it = iter(leaves)

    def build(node: Any) -> Any:
        if node is None:
            return None
        if node == _LEAF:
            return next(it)
        kind, children = node
        values = (build(c) for c in children)
        if issubclass(kind, tuple) and hasattr(kind, "_fields"):
            return kind(*values)
        return kind(values)

    return build(treedef.node)


def _find_field(tree: Any, field: str, n: int) -> list[tuple]:
    """The ``field`` of every NamedTuple in ``tree`` whose ``field`` is a tuple of ``n`` entries, depth first.

    ``tree`` is any nesting of tuples, lists, NamedTuples and dicts; a matching NamedTuple is
    not searched further.
    """
    found: list[tuple] = []

    def walk(node: Any) -> None:
        if is_namedtuple(node) and field in node._fields:
            value = getattr(node, field)
            if isinstance(value, tuple) and len(value) == n:
                found.append(value)
            return
        children = node.values() if isinstance(node, dict) else node if isinstance(node, (tuple, list)) else ()
        for v in children:
            walk(v)

    walk(tree)
    return found


def find_regrown(tree: Any, n: int) -> list[tuple]:
    """The ``regrown`` masks of every dynamic-sparse-training state with ``n`` arrays in a state tree.

    A state with a ``regrown`` field (:class:`gradclip_core.DSTState`: RigL, SET) marks the
    elements its last ``update`` grew; adapters zero the optimizer state (momentum, Adam
    moments) of those elements after the step, as RigL does. Arrays that the rule does not
    prune hold 0-d ``False``.

    Example:
      >>> import numpy as np
      >>> from gradclip_core import DSTState
      >>> state = (None, DSTState(np.int32(0), (np.array([True, True]),), (np.array([False, True]),)))
      >>> [r.tolist() for rs in find_regrown({"opt": state}, 1) for r in rs]
      [[False, True]]
    """
    return _find_field(tree, "regrown", n)


def find_masks(tree: Any, n: int) -> list[tuple]:
    """The keep-masks of every pruning state with ``n`` masks in a state tree, depth first.

    A pruning state is a NamedTuple with a ``masks`` field holding a tuple of bool arrays
    (:class:`gradclip_core.PruneState`). ``tree`` is any nesting of tuples, lists,
    NamedTuples and dicts (a ``chain``'s state, an optax optimizer state); adapters AND
    the result to read or strip the masks.

    Example:
      >>> import numpy as np
      >>> from gradclip_core import PruneState
      >>> state = (None, PruneState(np.int32(0), (np.array([True, False]),)))
      >>> [m.tolist() for ms in find_masks({"opt": state}, 1) for m in ms]
      [[True, False]]
    """
    return _find_field(tree, "masks", n)


def tree_where(xp: Any, pred: Any, on_true: Any, on_false: Any) -> Any:
    """``xp.where(pred, a, b)`` leaf by leaf over two state trees of the same structure.

    For branch-free choices between two rule states (keep the old state on a skipped
    step). ``None`` leaves stay ``None``; ``xp`` may be ``None`` (taken from the leaves).

    Example:
      >>> import numpy as np
      >>> a, (b,) = tree_where(None, np.bool_(False), (np.int32(1), [np.float32(2)]), (np.int32(5), [np.float32(6)]))
      >>> int(a), float(b)
      (5, 6.0)
    """
    if isinstance(on_true, (tuple, list)):
        items = [tree_where(xp, pred, a, b) for a, b in zip(on_true, on_false)]
        if is_namedtuple(on_true):
            return type(on_true)(*items)
        return type(on_true)(items)
    if on_true is None:
        return None
    if xp is None:
        from ._namespace import namespace

        xp = namespace(on_true)
    return xp.where(pred, on_true, on_false)
