"""``score_prune``: any score, any sparsity allocation, any group, through the one exact selection.

An algorithm is a score (:mod:`gradclip_core.prune._scores`), a sparsity allocation
(:mod:`gradclip_core.prune._allocation`) and optionally a structured group
(:mod:`gradclip_core.prune._groups`); the masks are chosen by
:func:`gradclip_core.prune_smallest` (score ascending, then flat index), so they are
bit-identical across frameworks. ``wanda_prune``, ``movement_prune`` and
``taylor_prune`` are ``score_prune`` with their score.

On shards (:mod:`gradclip_core.backend` collectives: torch process groups / DTensor
``Shard(0)``, JAX ``shard_map``), every array a block of leading rows in participant
order, the masks are those of one process: counts and allocations (uniform, global,
ERK, OWL) come from the full arrays (:mod:`gradclip_core.prune._shards`), element
scores are elementwise (the random hash and Wanda's norms indexed by the global
position), and each selection is the one driver with its collectives. Refused there,
with an error naming what: ``allocation="lamp"`` (a sort of each whole array), groups
that pool across the split rows (``nm`` along axis 0, ``units`` whose units span rows,
2-d ``blocks`` whose row extent does not divide every shard's rows),
``per_output`` with the output axis not the leading one, and, where arrays are split
along another axis than the leading one, everything that needs positions or full
shapes (ERK, ``per_output``, groups, the random and Wanda scores).
"""

from __future__ import annotations

import math
from typing import Any

from .._params import on
from .._rule import Rule, factory
from ..backend._collective import active, all_reduce, static_total
from ..backend._namespace import device_kw
from ..backend._primitives import size
from ..backend._names import array_label
from ._allocation import (_output_axis, check_allocation, erk_sparsities, lamp_keep, lamp_scores, lamp_values_sort,
                          owl_sparsities,
                          per_output_keep)
from ._groups import _unit_axes, check_group, expand, nm_keep, pool
from ._schedule import _fraction, alive_counts, check_amount, check_relative, check_rounding, check_schedule, prune_count
from ._shards import flat_offsets, full_shape, refuse_split
from ._scores import accumulate_scores, check_score, compute_scores, movement_score, ordered, taylor_score, wanda_score
from ._select import prune_smallest
from ._state import mask_rule

__all__ = ["score_prune", "wanda_prune", "movement_prune", "taylor_prune"]


def _global_limits(xp: Any, gs: list, galive: list, k: Any, lo: float, hi: float, rounding: str,
                   ns: list) -> tuple[list, list, Any]:
    """Scores, masks and count of a global selection whose per-array sparsity stays in ``[lo, hi]``.

    Per array, the ``round(lo * n_i)`` smallest scores are pruned first (they enter as
    already pruned: they rank first) and the ``n_i - round(hi * n_i)`` largest are
    protected (their score becomes NaN, which ranks last; a NaN score of another element
    becomes +inf); ``k`` is clamped to the protected-free count.
    """
    scores, masks, cap = [], [], 0
    for s, m, n in zip(gs, galive, ns):  # n: the full array's count (on shards too)
        kmin, kmax = prune_count(xp, lo, n, rounding), prune_count(xp, hi, n, rounding)
        cap += kmax
        forced = prune_smallest(xp, [s], kmin, [m])[0][0] if kmin else m
        protect = prune_smallest(xp, [s], kmax, [m])[0][0] if kmax < n else xp.ones(s.shape, dtype=xp.bool,
                                                                                   **device_kw([s]))
        s = xp.where(xp.isnan(s), xp.full_like(s, math.inf), s)
        scores.append(xp.where(protect, xp.full_like(s, math.nan), s))
        masks.append(forced)
    k = min(k, cap) if isinstance(k, int) else xp.minimum(k, xp.full_like(k, cap))
    return scores, masks, k


@factory
def score_prune(
    amount: float,
    *,
    score: Any = "magnitude",
    allocation: Any = "uniform",
    group: Any = None,
    min_sparsity: float = 0.0,
    max_sparsity: float = 1.0,
    schedule: Any = None,
    rounding: str = "prune",
    params: Any = "weights",
    relative_to: str = "all",
) -> Rule:
    """Prune the smallest scores, with a sparsity allocation and optional structured groups.

    The score of each element (``score``) is pooled into one score per group
    (``group``; none: elements), the target sparsity is shared among the arrays
    (``allocation``), and the smallest group scores are pruned exactly (score ascending,
    then flat index, NaN last; pruned elements rank first and stay pruned). Counts are
    ``round_half_even(s_i * n_i)`` per array (``"global"``, ``"lamp"``: of all arrays),
    in groups where there are groups.

    Args:
      amount: the target sparsity in ``[0, 1]`` (the final one for a schedule); an int
        (a count of elements / groups) with ``"uniform"`` and ``"global"`` only.
      score: ``"magnitude"``, ``"random"``, ``"movement"``, ``"taylor"`` or a
        :class:`~gradclip_core.Score` (``gc.wanda_score(act_norms, axis)``,
        ``gc.random_score(seed)``); see :mod:`gradclip_core.prune._scores`.
      allocation: ``"uniform"``, ``"global"``, ``"erk"``, ``"lamp"``, ``"owl"``,
        ``"per_output"`` or an :class:`~gradclip_core.Allocation` (``gc.erk_sparsity(power_scale)``,
        ``gc.owl_sparsity(m, lam)``, ``gc.per_output(axis)``); see
        :mod:`gradclip_core.prune._allocation`.
      group: ``None`` (elements), ``gc.blocks(rows, cols, pooling)``,
        ``gc.units(axis, ord, size)`` or ``gc.nm(keep, group, axis=)``.
      min_sparsity: with ``"global"`` / ``"lamp"``: every array loses at least this
        fraction.
      max_sparsity: with ``"global"`` / ``"lamp"``: no array loses more than this
        fraction (the global count is capped where the limits do not allow it).
      schedule: ``None`` (one-shot at step 0) or a schedule preset; with ``"erk"`` each
        array follows the schedule to its own final sparsity (jaxpruner's way).
      rounding: ``"prune"`` or ``"keep"`` (tfmot / jaxpruner).
      params: which arrays are pruned: ``"weights"`` (rank >= 2), ``"all"``, or a
        :class:`gradclip_core.Params`.
      relative_to: ``"all"`` elements (groups), or the ``"remaining"`` ones (uniform and
        global allocations).

    Returns:
      A :class:`Rule` with :class:`PruneState` (``scores`` accumulated by ``update`` for
      gradient scores, which then need ``params``); info ``sparsity``, ``sparsity/<i>``.

    Example:
      >>> import numpy as np
      >>> import gradclip_core as gc
      >>> rule = gc.score_prune(0.5, allocation="global", group=gc.blocks(1, 2, "max"))
      >>> w = [np.array([[0.1, 0.2, 3.0, 0.0], [0.5, 0.5, 0.3, 0.1]], np.float32)]
      >>> w, state, info = rule.project(w, rule.init(w))
      >>> w[0].tolist()
      [[0.0, 0.0, 3.0, 0.0], [0.5, 0.5, 0.0, 0.0]]
    """
    schedule = check_schedule(schedule)
    amount = check_amount(amount, schedule=schedule)
    score = check_score(score)
    alloc = check_allocation(allocation)
    grp = check_group(group)
    rounding = check_rounding(rounding)
    remaining = check_relative(relative_to) == "remaining"
    lo, hi = _fraction("min_sparsity", min_sparsity), _fraction("max_sparsity", max_sparsity)
    if lo > hi:
        raise ValueError(f"min_sparsity must be <= max_sparsity, got {lo} > {hi}")
    if (lo > 0 or hi < 1) and not alloc.is_global:
        raise ValueError(f"min_sparsity / max_sparsity limit a global selection: pass allocation='global' or 'lamp' "
                         f"(got {alloc.kind!r}, where each array gets its own sparsity)")
    if isinstance(amount, int) and alloc.kind not in ("uniform", "global"):
        raise ValueError(f"amount={amount} is an int (a count); allocation {alloc.kind!r} shares a fraction: pass a "
                         "float in [0, 1]")
    if score.signed and (alloc.kind in ("lamp", "owl") or (grp is not None and grp.kind == "units")):
        raise ValueError(f"score 'movement' is signed; allocation {alloc.kind!r} / group norms need a non-negative "
                         "score (use 'taylor', 'magnitude' or 'wanda')")
    if remaining and alloc.kind not in ("uniform", "global"):
        raise ValueError('relative_to="remaining" works with allocation "uniform" or "global"')
    if alloc.kind == "per_output" and (grp is not None or remaining):
        raise ValueError("allocation 'per_output' compares the elements of each output unit: no group=, "
                         "relative_to='all'")
    if grp is not None and grp.kind == "nm" and (alloc.kind != "uniform" or remaining):
        raise ValueError("an N:M group has a fixed count per group: use allocation='uniform', relative_to='all'")

    def check_shards(xp: Any, params: list) -> None:
        """Refuse, on every participant alike, what cannot run on leading-row shards (see the module docstring)."""
        what = f"score_prune(allocation={alloc.kind!r}, group={None if grp is None else grp.kind!r}, score={score.kind!r})"
        if alloc.kind == "lamp":
            raise ValueError("score_prune(allocation='lamp') does not run on sharded arrays: LAMP scores need a sort of "
                             "each whole array; use allocation='global' / 'erk' / 'owl' there, or gather the weights")
        if alloc.kind in ("erk", "per_output") or grp is not None or score.kind in ("random", "wanda"):
            refuse_split(what)
        ranked = [p for p in params if p.ndim >= 2]
        if alloc.kind == "per_output" and any(_output_axis(xp, alloc.axis, p.ndim) != 0 for p in ranked):
            raise ValueError("score_prune(allocation=per_output(...)) on sharded arrays needs the output axis to be the "
                             "leading (split) one ('out_first'): an output unit along another axis spans the shards")
        if grp is None:
            return
        if grp.kind == "nm" and any(grp.axis % p.ndim == 0 for p in ranked if -p.ndim <= grp.axis < p.ndim):
            raise ValueError(f"score_prune(group=nm(..., axis={grp.axis})) on sharded arrays: N:M groups along axis 0 "
                             "(the split rows) span the shards; group along another axis (e.g. axis=-1)")
        rows = 1
        if grp.kind == "units":
            for p in ranked:
                ax = _unit_axes(xp, grp, full_shape(tuple(p.shape)))
                if ax is not None and 0 in ax[0]:
                    raise ValueError("score_prune(group=units(...)) on sharded arrays: the unit norms reduce over "
                                     "axis 0 (the split rows), across the shards; use units along axis 0 "
                                     "('out_first'), or gather the weights")
            rows = grp.size
        elif grp.kind == "blocks":
            rows = grp.block[0]
            ranked = [p for p in ranked if p.ndim == 2]  # (higher ranks: the blocks tile the last two axes, not rows)
        if rows > 1 and static_total(sum(p.shape[0] % rows != 0 for p in ranked)):
            raise ValueError(f"score_prune(group={grp.kind}(...)) on sharded arrays: a group of {rows} rows crosses "
                             f"the shards where a shard's row count is not a multiple of {rows}")

    def compute(xp: Any, params: list, old: list, target_of: Any, scores: Any = ()) -> tuple[list, Any]:
        sharded = active()
        if sharded:
            check_shards(xp, params)
        offsets = flat_offsets(xp, params) if sharded and score.kind in ("random", "wanda") else None
        el = compute_scores(xp, score, params, scores, offsets)
        shapes = [full_shape(tuple(p.shape)) for p in params] if sharded else [tuple(p.shape) for p in params]
        if grp is not None and grp.kind == "nm":
            return [nm_keep(xp, grp, ordered(xp, s) if score.signed else s, m) for s, m in zip(el, old)], None
        if alloc.kind == "per_output":
            t = target_of(amount)
            return [per_output_keep(xp, alloc.axis, ordered(xp, s) if score.signed else s, m, t, rounding)
                    for s, m in zip(el, old)], None
        # signed scores (movement) are ranked by the selection itself, chunk by chunk (no ordered copy), except
        # where per-array limits rewrite them first
        fused = score.signed and lo == 0 and hi == 1
        live, gs, galive = [], [], []
        for i, (s, m) in enumerate(zip(el, old)):
            if math.prod(shapes[i]) == 0:  # (from the full shape: every participant skips alike)
                continue
            if grp is None:
                g, a = s, m
            else:
                full = shapes[i] if sharded else None
                g = pool(xp, grp, s, full)
                if g is None:
                    continue
                a = pool(xp, grp._replace(pooling="max"), xp.astype(m, xp.float32), full) > 0
            if score.signed and not fused:
                g = ordered(xp, g)
            if alloc.kind == "lamp" and (lo > 0 or hi < 1 or not lamp_values_sort(xp)):  # (else lamp_keep)
                g = lamp_scores(xp, g)
            live.append(i)
            gs.append(g)
            galive.append(a)
        masks = list(old)
        if not live:
            return masks, None
        if not sharded:
            ns = [size(g) for g in gs]
        else:  # the full arrays' counts (of groups: summed over the shards, each holding whole groups)
            ns = [math.prod(shapes[i]) if grp is None else static_total(size(g)) for i, g in zip(live, gs)]
        if alloc.is_global:
            n = sum(ns)
            alive = None
            if remaining:
                counts = [xp.count_nonzero(a) for a in galive]
                alive = all_reduce(xp, sum(counts[1:], counts[0]), "sum")
            k = prune_count(xp, target_of(amount), n, rounding, alive)
            sel_scores, sel_masks = gs, galive
            if lo > 0 or hi < 1:
                sel_scores, sel_masks, k = _global_limits(xp, gs, galive, k, lo, hi, rounding, ns)
            if alloc.kind == "lamp" and lo == 0 and hi == 1 and lamp_values_sort(xp):
                keeps = lamp_keep(xp, gs, galive, k)
            else:
                keeps = prune_smallest(xp, sel_scores, k, sel_masks, signed=fused)[0]
        else:
            if alloc.kind == "erk":
                finals = erk_sparsities([shapes[i] for i in live], amount, alloc.power_scale)
                targets = [target_of(f) for f in finals]
            elif alloc.kind == "owl":
                targets = owl_sparsities(xp, gs, target_of(amount), alloc.m, alloc.lam)
            else:
                targets = [target_of(amount)] * len(live)
            alive = alive_counts(xp, galive) if remaining else [None] * len(live)
            keeps = []
            for j, (i, g, a, t) in enumerate(zip(live, gs, galive, targets)):
                k = prune_count(xp, t, ns[j], rounding, alive[j], where=array_label(i))
                keeps.append(prune_smallest(xp, [g], k, [a], signed=fused)[0][0])
        for i, kg in zip(live, keeps):
            shape = tuple(params[i].shape)
            masks[i] = (kg if grp is None else expand(xp, grp, kg, shape, shapes[i] if sharded else None)) & old[i]
        return masks, None

    def accumulate(xp: Any, grads: list, params: list, acc: list) -> list:
        return accumulate_scores(xp, score, grads, params, acc)

    return on(mask_rule("score_prune", compute, schedule, amount, accumulate=accumulate if score.needs_grads else None,
                        reset=score.kind == "taylor", scheduled=True), params)


def wanda_prune(
    amount: float,
    *,
    act_norms: Any,
    axis: int | None = None,
    allocation: Any = "uniform",
    group: Any = None,
    schedule: Any = None,
    rounding: str = "prune",
    params: Any = "weights",
) -> Rule:
    """Wanda (Sun et al. 2023, arXiv 2306.11695): prune the smallest ``|W_ij| * ||X_j||_2``.

    ``score_prune(amount, score=gc.wanda_score(act_norms, axis), ...)``. One-shot,
    without retraining, from the input-channel norms of calibration data (collect them
    with ``gradclip_torch.activation_norms``, ``gradclip_keras.activation_norms`` or
    ``gradclip_optax.activation_norms``). The paper compares weights per output row;
    here the comparison group is each array (``allocation="uniform"``), all arrays
    (``"global"``), or the N:M groups (``group=gc.nm(2, 4, axis=<input axis>)``, per
    row by construction: the paper's 2:4 setting).

    Args:
      amount: the sparsity in ``[0, 1]``.
      act_norms: one 1-d array of input-channel norms per pruned array (a sequence in the
        order the rule sees the arrays, or a dict by array name).
      allocation: ``"uniform"`` (default: each array), ``gc.per_output(axis)`` (the paper's
        comparison group: each output unit), ``"global"``, ``"owl"`` (OWL's Wanda), ...
      axis: the input-channel axis (``1`` torch ``(out, in, ...)``, ``-2`` Keras
        ``(..., in, out)``), ``None``: from the framework's layout.
      group, schedule, rounding, params: as :func:`score_prune`.

    Returns:
      A :class:`Rule` with :class:`PruneState`; info ``sparsity``, ``sparsity/<i>``. Its
      ``config`` is the one of :func:`score_prune` (the norms as lists of floats).

    Example:
      >>> import numpy as np
      >>> import gradclip_core as gc
      >>> w = [np.array([[1.0, 1.0], [1.0, 1.0]], np.float32)]     # (out, in)
      >>> rule = gc.wanda_prune(0.5, act_norms=[[10.0, 0.1]], axis=1)
      >>> w, state, info = rule.project(w, rule.init(w))
      >>> w[0].tolist()                                               # input 1 carries little signal
      [[1.0, 0.0], [1.0, 0.0]]
    """
    return score_prune(amount, score=wanda_score(act_norms, axis), allocation=allocation, group=group,
                       schedule=schedule, rounding=rounding, params=params)


def _gradient_scored(name: str, score: Any, doc: str) -> Any:
    """The public factory ``name``: :func:`score_prune` with a score accumulated from the gradients (``score()``)."""

    def make(amount: float, *, allocation: Any = "uniform", group: Any = None, schedule: Any = None,
             rounding: str = "prune", params: Any = "weights") -> Rule:
        return score_prune(amount, score=score(), allocation=allocation, group=group, schedule=schedule,
                           rounding=rounding, params=params)

    make.__name__ = make.__qualname__ = name
    make.__doc__ = doc
    return factory(make)


movement_prune = _gradient_scored("movement_prune", movement_score, """\
    Movement pruning (Sanh et al. 2020, arXiv 2005.07683): prune the smallest ``-sum_t W_t * G_t``.

    ``score_prune(amount, score="movement", ...)``: ``update`` accumulates the score from
    every step's gradients (it needs ``params``: every adapter that owns the optimizer
    passes them), the schedule prunes by it, usually gradually during fine-tuning
    (``schedule=gc.polynomial_schedule(...)``).

    Args:
      amount: the (final) sparsity in ``[0, 1]``.
      allocation: ``"uniform"``, ``"global"`` or ``"erk"`` (see :func:`score_prune`).
      group, schedule, rounding, params: as :func:`score_prune`.

    Returns:
      A :class:`Rule` (``needs_params``) with :class:`PruneState` (``scores``: the
      accumulated movement score).

    Example:
      >>> import numpy as np
      >>> import gradclip_core as gc
      >>> rule = gc.movement_prune(0.5, schedule=gc.one_shot(1))
      >>> w = [np.array([[1.0, -1.0, 0.5, 2.0]], np.float32)]
      >>> state = rule.init(w)
      >>> g = [np.array([[1.0, 1.0, -1.0, 0.0]], np.float32)]   # w[0] moves towards 0, w[1] away from it
      >>> _, state, _ = rule.update(g, state, w)
      >>> _, state, _ = rule.project(w, state)                  # step 0: not a pruning step
      >>> w, state, info = rule.project(w, state)               # step 1 prunes by -W*G
      >>> w[0].tolist()
      [[0.0, -1.0, 0.5, 0.0]]
    """)

taylor_prune = _gradient_scored("taylor_prune", taylor_score, """\
    First-order Taylor / SNIP pruning: prune the smallest ``sum_t |W_t * G_t|`` since the last pruning step.

    ``score_prune(amount, score="taylor", ...)`` (Molchanov et al. 2019, arXiv
    1906.10771; with one batch before a one-shot step at initialisation, SNIP: Lee et
    al. 2019, arXiv 1810.02340). ``update`` accumulates the score (it needs ``params``),
    and it restarts from 0 after each recomputation of the masks.

    Args:
      amount: the (final) sparsity in ``[0, 1]``.
      allocation, group, schedule, rounding, params: as :func:`score_prune`.

    Returns:
      A :class:`Rule` (``needs_params``) with :class:`PruneState`.

    Example:
      >>> import numpy as np
      >>> import gradclip_core as gc
      >>> rule = gc.taylor_prune(0.5)
      >>> w = [np.array([[1.0, -1.0, 0.5, 2.0]], np.float32)]
      >>> state = rule.init(w)
      >>> _, state, _ = rule.update([np.array([[1.0, 0.1, -4.0, 0.0]], np.float32)], state, w)
      >>> w, state, info = rule.project(w, state)
      >>> w[0].tolist()
      [[1.0, 0.0, 0.5, 0.0]]
    """)
