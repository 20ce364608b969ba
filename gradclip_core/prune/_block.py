"""Block magnitude pruning: whole ``(bh, bw)`` blocks of a 2-D weight by their pooled ``|w|`` (tfmot's ``block_size``)."""

from __future__ import annotations

from typing import Any

from .._params import on
from .._rule import Rule, factory
from ..backend._primitives import size
from ..backend._selection import float32_scores
from ..backend._names import array_label
from ._groups import POOLINGS, any_blocks, blocks, expand, pool
from ._schedule import check_amount, check_rounding, check_schedule, prune_count
from ._select import prune_smallest
from ._state import mask_rule

__all__ = ["block_magnitude_prune", "POOLINGS"]


def _check_block(block: Any) -> tuple[int, int]:
    try:
        out = tuple(block)
    except TypeError:
        out = ()
    if len(out) != 2 or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in out):
        raise ValueError(f"block must be two ints >= 1 (rows, columns), got {block!r}")
    return out  # type: ignore[return-value]


def block_scores(xp: Any, p: Any, block: tuple[int, int], pooling: str) -> Any:
    """The pooled float32 ``|w|`` of every block of the 2-D ``p``: shape ``(ceil(h / bh), ceil(w / bw))``.

    The one block pooling of :mod:`gradclip_core.prune._groups` (``score_prune(group=blocks(...))``):
    blocks start at ``(0, 0)``, the last block row / column may be partial; ``"avg"``: the mean
    over the block's weights as tfmot's ``factorized_pool`` takes it (rows first); ``"max"``:
    the largest; a block holding a NaN scores NaN. Bit-identical in every framework.
    """
    return pool(xp, blocks(*block, pooling), float32_scores(xp, p))


@factory
def block_magnitude_prune(
    amount: float,
    block: Any = (1, 1),
    *,
    pooling: str = "avg",
    schedule: Any = None,
    rounding: str = "prune",
    params: Any = "weights",
) -> Rule:
    """Block-sparse magnitude pruning of 2-D weights (tfmot's ``block_size`` / ``block_pooling_type``).

    Each 2-D array is cut into ``block = (bh, bw)`` blocks from its first element (the
    last block row / column may be partial); a block's score is the mean (``"avg"``) or
    the largest (``"max"``) of its ``|w|`` in float32 (see :func:`block_scores`), and the
    ``round_half_even(amount * n_blocks)`` blocks of smallest score are pruned whole
    (``rounding="keep"`` / ``"tfmot"``: tfmot's count of kept blocks), ties by block
    index (row-major), NaN last. Blocks pruned before rank first (masks are monotone).
    ``block=(1, 1)`` is :func:`magnitude_prune`. Arrays of rank other than 2 and size-0
    arrays are left dense (tfmot refuses them). The axes are the array's own: a Keras
    ``Dense`` kernel is ``(in, out)``, a torch ``Linear`` weight ``(out, in)``, so the same
    blocks are ``(bh, bw)`` in Keras and ``(bw, bh)`` in torch.

    tfmot pools with ``padding="SAME"``, which centres its windows where a dimension is
    not a multiple of the block (``(bh - h % bh) // 2`` rows of padding before the first
    window), while it expands the mask from the first element: with two or more rows
    (columns) of padding its scores and its blocks are offset. Here both start at the
    first element. Where the dimensions are multiples of the block, the pooled scores
    are tfmot's (``"avg"`` up to the order of its sums).

    Args:
      amount: the target sparsity (fraction of blocks, in ``[0, 1]``; the final one for a
        polynomial schedule), or an int: how many blocks per array.
      block: ``(rows, columns)`` of a block, ints >= 1.
      pooling: ``"avg"`` or ``"max"`` (tfmot's ``"AVG"`` / ``"MAX"``).
      schedule: ``None`` (one-shot at step 0) or a schedule preset.
      rounding: ``"prune"``, ``"keep"`` or ``"tfmot"`` (counts of blocks).
      params: which arrays are pruned: ``"weights"`` (default: rank >= 2), ``"all"``, or a
        :class:`gradclip_core.Params`.

    Returns:
      A :class:`Rule` with ``PruneState``; info ``sparsity``, ``sparsity/<i>``.

    Example:
      >>> import numpy as np
      >>> import gradclip_core as gc
      >>> rule = gc.block_magnitude_prune(0.5, (2, 2))
      >>> w = [np.array([[3, 3, 0.5, 0.5], [3, 3, 0.5, 0], [5, 0, 1, 1], [0, 0, 1, 9]], np.float32)]
      >>> w, state, info = rule.project(w, rule.init(w))  # block means 3, 0.375 / 1.25, 3: two pruned
      >>> w[0].tolist(), float(info["sparsity"])
      ([[3.0, 3.0, 0.0, 0.0], [3.0, 3.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 9.0]], 0.5)
    """
    schedule = check_schedule(schedule)
    amount = check_amount(amount, schedule=schedule)
    block = _check_block(block)
    pooling = pooling.lower() if isinstance(pooling, str) else pooling
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {list(POOLINGS)}, got {pooling!r}")
    rounding = check_rounding(rounding)
    group = blocks(*block, pooling)

    def compute(xp: Any, params: list, old: list, target: Any) -> tuple[list, Any]:
        masks = []
        for i, (p, m) in enumerate(zip(params, old)):
            if p.ndim != 2 or size(p) == 0:
                masks.append(m)
                continue
            scores = block_scores(xp, p, block, pooling)
            alive = any_blocks(xp, m, block)  # blocks with a weight not pruned before
            k = prune_count(xp, target, size(scores), rounding, where=f"the blocks of {array_label(i)}")
            keep, _ = prune_smallest(xp, [scores], k, [alive])
            masks.append(expand(xp, group, keep[0], tuple(p.shape)) & m)
        return masks, None

    return on(mask_rule("block_magnitude_prune", compute, schedule, amount), params)
