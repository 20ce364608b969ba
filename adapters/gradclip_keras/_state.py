"""Rule state trees <-> flat lists (for Keras variables), the skip signal, rule checks."""

from __future__ import annotations

from typing import Any, Sequence

from keras import ops

import gradclip_core as gc
from gradclip_core.backend import flatten_state, unflatten_state
from gradclip_core.backend import name_info as core_name_info

__all__ = ["flatten", "unflatten", "has_project", "skipped", "check_rule", "sanitize", "name_info"]


def check_rule(rule: Any, where: str) -> gc.Rule:
    """``rule`` must be a :class:`gradclip_core.Rule`."""
    if not isinstance(rule, gc.Rule):
        raise TypeError(
            f"{where}: rule must be a gradclip_core.Rule (e.g. gradclip_core.clip_by_global_norm(1.0)), "
            f"got {type(rule).__name__}"
        )
    return rule


def has_project(rule: gc.Rule) -> bool:
    """Whether ``rule`` acts on the weights after the optimizer step (constraints, pruning).

    Example:
      >>> import gradclip_core as gc
      >>> has_project(gc.clip_by_global_norm(1.0)), has_project(gc.Rule(project=lambda p, s: (p, s, {})))
      (False, True)
    """
    return rule.has_project


def flatten(tree: Any) -> list:
    """Leaves of a state tree of (named) tuples, depth first (``None`` leaves dropped).

    Example:
      >>> flatten(((1, None), (), 2))
      [1, 2]
    """
    return flatten_state(tree)[0]


def unflatten(template: Any, leaves: Sequence[Any]) -> Any:
    """A tree shaped like ``template`` holding ``leaves`` (in :func:`flatten` order).

    Example:
      >>> unflatten(((0,), None, 0), [10, 20])
      ((10,), None, 20)
    """
    return unflatten_state(flatten_state(template)[1], leaves)


def skipped(info: dict) -> Any:
    """The skip signal of ``nonfinite="skip"`` rules in ``info`` (0-d bool), or ``None``.

    True when ``info["skipped"]`` or any ``".../skipped"`` (inside ``chain``) is set.

    Example:
      >>> skipped({"norm": 1.0}) is None
      True
    """
    flags = [v for k, v in info.items() if k == "skipped" or k.endswith("/skipped")]
    if not flags:
        return None
    out = ops.not_equal(flags[0], 0)
    for f in flags[1:]:
        out = ops.logical_or(out, ops.not_equal(f, 0))
    return out


def sanitize(key: str) -> str:
    """An info key as a variable name (``"clip_by_value#0/clipped_fraction"`` -> ``..._0_...``)."""
    return "".join(c if c.isalnum() or c == "_" else "_" for c in key)


def name_info(keys: Sequence[str], variables: Sequence[Any]) -> dict:
    """Info key -> the key to show: per-array keys named by the variable's path, not its position.

    The core numbers per-array info by position (``"sparsity/3"``, ``"norm/3"``); in Keras
    the ``i``-th array is a variable with a path (``"sequential/dense/kernel"``), so the
    logs say ``"sparsity/sequential/dense/kernel"``. Positions stay where paths are not unique.

    Example:
      >>> class V:
      ...     def __init__(self, path): self.path = path
      >>> name_info(["norm", "prune/sparsity", "prune/sparsity/1", "norm/0"], [V("d/kernel"), V("d/bias")])
      {'norm': 'norm', 'prune/sparsity': 'prune/sparsity', 'prune/sparsity/1': 'prune/sparsity/d/bias', 'norm/0': 'norm/d/kernel'}
    """
    keys = list(keys)
    paths = [getattr(v, "path", None) for v in variables]
    unique = all(p for p in paths) and len(set(paths)) == len(paths)
    return dict(zip(keys, core_name_info(dict.fromkeys(keys), paths if unique else None)))
