"""Structured pruning: whole rows/channels by their L_n norm, and N:M semi-structured groups."""

from __future__ import annotations

from typing import Any

from .._params import on
from .._rule import Rule, factory
from .._validate import check_ord
from ..backend._layout import AxisSpec, check_axis, reduce_axes
from ..backend._primitives import and_broadcast, size, unit_any, upcast
from ..backend._selection import float32_scores
from ..backend._names import array_label
from ._groups import Group, nm_keep
from ._schedule import check_amount, check_relative, check_rounding, check_schedule, prune_count
from ._select import prune_smallest
from ._state import mask_rule

__all__ = ["ln_structured_prune", "nm_prune"]


@factory
def ln_structured_prune(
    amount: float,
    *,
    ord: Any = 2,
    axis: AxisSpec = None,
    schedule: Any = None,
    rounding: str = "prune",
    params: Any = "weights",
    relative_to: str = "all",
) -> Rule:
    """Prune whole units (rows / output channels) with the smallest L_n norm, per array.

    A unit's norm is taken over ``axis`` (the axes *reduced*, as in
    :func:`adaptive_clip`): ``"out_first"`` prunes output channels of torch
    ``(out, in, ...)`` weights, the masks of
    ``torch.nn.utils.prune.ln_structured(m, "weight", amount, n=ord, dim=0)`` on
    tie-free inputs; ``"out_last"`` those of Keras ``(..., in, out)`` kernels. Each
    array with ``c`` units loses ``round_half_even(amount * c)`` of them (norms in
    float32, ties by unit index, NaN norms last). Arrays of rank <= 1 (biases,
    scalars) and size-0 arrays are left dense.

    Args:
      amount: fraction of units to prune, in ``[0, 1]``, or an int: how many units per
        array (torch's int ``amount``).
      ord: norm order, 1, 2 or inf.
      axis: the axes forming one unit's norm (see :mod:`gradclip_core.backend._layout`);
        ``None``: the framework's native layout (explicit for NumPy).
      schedule: ``None`` (one-shot at step 0) or a schedule preset.
      rounding: ``"prune"`` or ``"keep"``.
      params: which arrays are pruned: ``"weights"`` (default: rank >= 2), ``"all"``, or a
        :class:`gradclip_core.Params`.
      relative_to: ``"all"`` units, or the ``"remaining"`` (not yet pruned) ones, as torch
        counts when a pruned tensor is pruned again.

    Returns:
      A :class:`Rule` with ``PruneState``; info ``sparsity``, ``sparsity/<i>``.

    Example:
      >>> import numpy as np
      >>> import gradclip_core as gc
      >>> rule = gc.ln_structured_prune(0.5, ord=1, axis="out_first")
      >>> w = [np.array([[1.0, 1.0], [0.1, 0.2], [3.0, 0.0], [0.5, 0.5]], np.float32)]
      >>> w, state, info = rule.project(w, rule.init(w))
      >>> w[0].tolist()
      [[1.0, 1.0], [0.0, 0.0], [3.0, 0.0], [0.0, 0.0]]
    """
    schedule = check_schedule(schedule)
    amount = check_amount(amount, schedule=schedule)
    ord = check_ord(ord)
    axis = check_axis(axis)
    rounding = check_rounding(rounding)
    remaining = check_relative(relative_to) == "remaining"

    def compute(xp: Any, params: list, old: list, target: Any) -> tuple[list, Any]:
        masks = []
        for i, (p, m) in enumerate(zip(params, old)):
            axes = reduce_axes(xp, axis, tuple(p.shape)) if p.ndim >= 2 else None
            if axes is None or size(p) == 0:
                masks.append(m)
                continue
            norms = xp.linalg.vector_norm(upcast(xp, p, xp.float32), axis=axes, keepdims=True, ord=ord)
            alive = unit_any(xp, m, axes)
            units = xp.count_nonzero(alive) if remaining else None
            k = prune_count(xp, target, size(norms), rounding, units, where=f"the units of {array_label(i)}")
            keep, _ = prune_smallest(xp, [norms], k, [alive])
            masks.append(and_broadcast(xp, m, keep[0]))
        return masks, None

    return on(mask_rule("ln_structured_prune", compute, schedule, amount), params)


@factory
def nm_prune(
    keep: int = 2, group: int = 4, *, axis: int, schedule: Any = None, params: Any = "weights", remainder: str = "dense"
) -> Rule:
    """N:M semi-structured sparsity: in every ``group`` consecutive weights along ``axis``, keep the ``keep`` largest.

    2:4 (``keep=2, group=4``) is what sparse tensor cores accelerate. Groups run along
    ``axis`` (the input axis: ``axis=1`` / ``-1`` for torch ``Linear`` ``(out, in)``,
    ``axis=0`` / ``-2`` for Keras ``Dense`` ``(in, out)``); within a group the
    ``group - keep`` smallest ``|w|`` are pruned, ties by position in the group, NaN
    last. Arrays of rank < 2 and size-0 arrays are left dense, and so are arrays whose
    ``axis`` length is not a multiple of ``group`` unless ``remainder="pad"`` (their
    ``sparsity/<i>`` shows it). ``remainder="pad"`` does what tfmot's
    ``sparsity_m_by_n`` does (``pruning_utils.generate_m_by_n_mask`` pads with zeros):
    the last, partial group of ``r < group`` weights is padded to ``group`` with
    elements that rank below every weight, so it keeps ``min(keep, r)`` of its weights.

    Args:
      keep: N, the number of weights KEPT per group, ``1 <= keep < group``.
      group: M, the group size, ``>= 2``.
      axis: the group axis (an int, required: layouts differ between frameworks).
      schedule: ``None`` (one-shot at step 0) or a schedule preset.
      params: which arrays are pruned: ``"weights"`` (default: rank >= 2), ``"all"``, or a
        :class:`gradclip_core.Params`.
      remainder: ``"dense"`` (arrays whose ``axis`` length is not a multiple of ``group``
        are not pruned) or ``"pad"`` (their last group is padded, as tfmot does).

    Returns:
      A :class:`Rule` with ``PruneState``; info ``sparsity``, ``sparsity/<i>``.

    Example:
      >>> import numpy as np
      >>> import gradclip_core as gc
      >>> rule = gc.nm_prune(keep=2, group=4, axis=-1, remainder="pad")
      >>> w = [np.array([[0.1, -3.0, 0.5, 0.2, 7.0, 0.3, 0.4]], np.float32)]
      >>> w, state, info = rule.project(w, rule.init(w))
      >>> w[0].tolist()  # the last group [7.0, 0.3, 0.4] keeps 2
      [[0.0, -3.0, 0.5, 0.0, 7.0, 0.0, 0.4000000059604645]]
      >>> rule = gc.nm_prune(keep=2, group=4, axis=-1)
      >>> w = [np.array([[0.1, -3.0, 0.5, 0.2], [1.0, 1.0, 1.0, 1.0]], np.float32)]
      >>> w, state, info = rule.project(w, rule.init(w))
      >>> w[0].tolist()
      [[0.0, -3.0, 0.5, 0.0], [0.0, 0.0, 1.0, 1.0]]
    """
    for name, v, lo in (("keep", keep, 1), ("group", group, 2)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    if keep >= group:
        raise ValueError(f"keep must be < group (N < M in N:M sparsity), got keep={keep}, group={group}")
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise ValueError(f"axis must be an int (the group axis), got {axis!r}")
    if remainder not in ("dense", "pad"):
        raise ValueError(f"remainder must be 'dense' or 'pad', got {remainder!r}")
    schedule = check_schedule(schedule)
    spec = Group("nm", axis=axis, keep=keep, group=group)

    def compute(xp: Any, params: list, old: list, target: Any) -> tuple[list, Any]:
        return [nm_keep(xp, spec, float32_scores(xp, p), m, remainder) for p, m in zip(params, old)], None

    return on(mask_rule("nm_prune", compute, schedule, None), params)
