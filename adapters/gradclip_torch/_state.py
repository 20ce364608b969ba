"""Rule state <-> flat tensor lists, for ``state_dict`` / ``load_state_dict``.

A core state is a tree of (named) tuples whose leaves are arrays (``chain`` nests the
states of its rules in a tuple). A checkpoint stores the leaves in order plus a
``structure`` signature made of strings and tuples only, so it loads with
``torch.load(..., weights_only=True)``; the tree itself is rebuilt from the rule's own
``init``, which gives the NamedTuple types back.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from gradclip_core.backend import flatten_state, is_namedtuple, unflatten_state

__all__ = ["flatten", "unflatten", "structure", "check_leaves"]


def flatten(tree: Any) -> list[torch.Tensor]:
    """Leaves of a state tree, depth first (:func:`gradclip_core.backend.flatten_state`).

    Example:
      >>> import torch
      >>> from typing import NamedTuple
      >>> class S(NamedTuple):
      ...     count: torch.Tensor
      >>> flatten((S(torch.tensor(1)), ()))
      [tensor(1)]
    """
    return flatten_state(tree)[0]


def unflatten(template: Any, leaves: Sequence[Any]) -> Any:
    """A tree shaped like ``template`` whose leaves are ``leaves`` (in :func:`flatten` order).

    Example:
      >>> unflatten(((1,), 2), [10, 20])
      ((10,), 20)
    """
    return unflatten_state(flatten_state(template)[1], leaves)


def structure(tree: Any) -> Any:
    """A weights_only-safe signature of a state tree (type and field names, leaf dtypes/shapes).

    Example:
      >>> import torch
      >>> structure(((), torch.zeros(2, dtype=torch.int32)))
      ('tuple', ('tuple',), 'torch.int32[2]')
    """
    if is_namedtuple(tree):
        return (type(tree).__name__,) + tuple((k, structure(v)) for k, v in zip(tree._fields, tree))
    if isinstance(tree, (tuple, list)):
        return ("tuple",) + tuple(structure(v) for v in tree)
    if tree is None:
        return "None"
    return f"{tree.dtype}{list(tree.shape)}"


def check_leaves(template: Any, leaves: Sequence[Any]) -> None:
    """``leaves`` must match ``template``'s leaves in number, shape and dtype."""
    expected = flatten(template)
    if len(leaves) != len(expected):
        raise ValueError(f"state_dict holds {len(leaves)} state tensors, this rule's state has {len(expected)}")
    for i, (got, want) in enumerate(zip(leaves, expected)):
        if not isinstance(got, torch.Tensor):
            raise ValueError(f"state tensor {i} must be a torch.Tensor, got {type(got).__name__}")
        if tuple(got.shape) != tuple(want.shape) or got.dtype != want.dtype:
            raise ValueError(
                f"state tensor {i} is {got.dtype}{list(got.shape)}, "
                f"this rule expects {want.dtype}{list(want.shape)}"
            )
