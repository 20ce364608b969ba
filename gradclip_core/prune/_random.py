"""Random pruning with a counter-based hash: the same seed gives the same masks in every framework."""

from __future__ import annotations

from typing import Any

from .._hash import hash_keys
from .._params import on
from .._rule import Rule, factory
from .._validate import check_choice
from ..backend._collective import active, static_total
from ..backend._primitives import size
from ..backend._names import array_label
from ._schedule import alive_counts, check_amount, check_relative, check_rounding, check_schedule, prune_count
from ._select import prune_smallest
from ._shards import flat_offsets, refuse_split
from ._state import mask_rule

__all__ = ["random_prune"]


@factory
def random_prune(
    amount: float,
    *,
    seed: int = 0,
    scope: str = "array",
    schedule: Any = None,
    rounding: str = "prune",
    params: Any = "weights",
    relative_to: str = "all",
) -> Rule:
    """Random pruning with a counter-based hash: the same ``seed`` gives the same masks everywhere.

    Every element gets the score ``h(seed, array index, flat index)`` (24 bits, see
    :mod:`gradclip_core._hash`); the ``k`` smallest scores are pruned exactly as in
    magnitude pruning (per array, or over all arrays with ``scope="global"``). Masks
    do not depend on the weights, the framework or the device. (Not comparable with
    ``torch.nn.utils.prune.random_unstructured``, which draws from torch's RNG.)

    Args:
      amount: sparsity in ``[0, 1]``, or an int: how many elements (per array, or in all
        with ``scope="global"``), as torch reads an int ``amount``.
      seed: a non-negative int.
      scope: ``"array"`` (``k_i`` per array) or ``"global"``.
      schedule: ``None`` (one-shot at step 0), or a schedule preset.
      rounding: ``"prune"`` or ``"keep"``.
      params: which arrays are pruned: ``"weights"`` (default: rank >= 2), ``"all"``, or a
        :class:`gradclip_core.Params`.
      relative_to: ``"all"`` elements, or the ``"remaining"`` (unpruned) ones.

    Returns:
      A :class:`Rule` with :class:`PruneState`; info ``sparsity``, ``sparsity/<i>``.

    Example:
      >>> import numpy as np
      >>> import gradclip_core as gc
      >>> rule = gc.random_prune(0.25, seed=3)
      >>> w = [np.ones((4, 4), np.float32)]
      >>> w, state, info = rule.project(w, rule.init(w))
      >>> int((w[0] == 0).sum()), float(info["sparsity"])
      (4, 0.25)
    """
    schedule = check_schedule(schedule)
    amount = check_amount(amount, schedule=schedule)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    check_choice("scope", scope, ("array", "global"))
    rounding = check_rounding(rounding)
    remaining = check_relative(relative_to) == "remaining"

    def compute(xp: Any, params: list, old: list, target: Any) -> tuple[list, Any]:
        refuse_split("random_prune")  # on shards: the hash at the global flat index, counts of the full arrays
        offsets = flat_offsets(xp, params)
        scores = [xp.astype(hash_keys(xp, tuple(p.shape), seed, i, o), xp.float32)
                  for i, (p, o) in enumerate(zip(params, offsets))]
        ns = [static_total(size(p)) for p in params] if active() else [size(p) for p in params]
        alive = alive_counts(xp, old) if remaining else [None] * len(old)
        if scope == "global":
            total = None if not remaining else sum(alive[1:], alive[0])
            k = prune_count(xp, target, sum(ns), rounding, total)
            return prune_smallest(xp, scores, k, old)[0], None
        masks = []
        for i, (s, m) in enumerate(zip(scores, old)):
            if ns[i] == 0:
                masks.append(m)
            else:
                k = prune_count(xp, target, ns[i], rounding, alive[i], where=array_label(i))
                masks.append(prune_smallest(xp, [s], k, [m])[0][0])
        return masks, None

    return on(mask_rule("random_prune", compute, schedule, amount), params)
