"""Magnitude pruning: per array (``magnitude_prune``) and over all arrays together (``global_magnitude_prune``)."""

from __future__ import annotations

from typing import Any

from .._params import on
from .._rule import Rule, factory
from .._validate import check_threshold
from ..backend._collective import active, all_reduce, static_total
from ..backend._primitives import size
from ..backend._selection import float32_scores
from ..backend._names import array_label
from ._schedule import alive_counts, check_amount, check_relative, check_rounding, check_schedule, prune_count
from ._select import prune_smallest
from ._state import mask_rule

__all__ = ["magnitude_prune", "global_magnitude_prune"]

_NORM_EPS = 1e-8  # jaxpruner's normalization_eps


def _amount_or_threshold(amount: Any, threshold: Any, schedule: Any) -> tuple[float | int | None, float | None]:
    if (amount is None) == (threshold is None):
        raise ValueError(
            "pass exactly one of amount (a fraction in [0, 1], or an int count) or threshold (prune |w| < threshold)"
        )
    if amount is not None:
        return check_amount(amount, schedule=schedule), None
    t = check_threshold("threshold", threshold)
    if not isinstance(t, float):
        raise ValueError(f"threshold must be a finite number >= 0, got {threshold!r}")
    return None, t


@factory
def magnitude_prune(
    amount: float | None = None,
    *,
    threshold: float | None = None,
    schedule: Any = None,
    rounding: str = "prune",
    params: Any = "weights",
    relative_to: str = "all",
) -> Rule:
    """Per-array magnitude pruning: in each array prune the ``amount`` smallest ``|w|``, or ``|w| < threshold``.

    With ``amount``: array ``i`` of ``n_i`` elements loses exactly
    ``k_i = round_half_even(amount * n_i)`` elements (``rounding="keep"``: keeps
    ``max(1, round_half_even((1 - amount) * n_i))``, tfmot / jaxpruner), the smallest
    ``|w|`` first, ties by flat index, NaN last; the masks of
    ``torch.nn.utils.prune.l1_unstructured`` on tie-free inputs. With ``threshold``:
    every ``|w| < threshold`` is pruned (NaN never). Scores are ``|w|`` rounded to
    float32 (float64 weights closer than a float32 ulp tie, and ties go by index).

    Args:
      amount: a float in ``[0, 1]``: the target sparsity (the final one for a polynomial
        schedule); or an int ``>= 0``: how many elements to prune in each array (as
        torch.nn.utils.prune reads an int ``amount``; ``1`` prunes one element).
      threshold: fixed magnitude threshold ``>= 0`` (instead of ``amount``).
      schedule: ``None`` (:func:`one_shot` at step 0), or a schedule preset.
      rounding: ``"prune"`` (torch) or ``"keep"`` (tfmot / jaxpruner).
      params: which arrays are pruned: ``"weights"`` (default: rank >= 2, not biases or
        norm scales), ``"all"``, or a :class:`gradclip_core.Params` (names, rank).
      relative_to: ``"all"`` elements of each array, or the ``"remaining"`` (unpruned)
        ones: each recomputation then prunes ``amount`` of what is left, as torch does
        when a pruned tensor is pruned again (iterative pruning, lottery-ticket rounds).

    Returns:
      A :class:`Rule` with :class:`PruneState`; info ``sparsity``, ``sparsity/<i>``.

    Example:
      >>> import numpy as np
      >>> import gradclip_core as gc
      >>> rule = gc.magnitude_prune(0.5)
      >>> w = [np.array([[0.5, -0.1], [2.0, 0.25]], np.float32), np.array([0.01, 3.0], np.float32)]
      >>> state = rule.init(w)
      >>> w, state, info = rule.project(w, state)
      >>> w[0].tolist(), w[1].tolist(), float(info["sparsity"])   # the bias (rank 1) is not pruned
      ([[0.5, 0.0], [2.0, 0.0]], [0.009999999776482582, 3.0], 0.5)
    """
    schedule = check_schedule(schedule)
    amount, threshold = _amount_or_threshold(amount, threshold, schedule)
    rounding = check_rounding(rounding)
    remaining = check_relative(relative_to) == "remaining"
    if remaining and threshold is not None:
        raise ValueError('relative_to="remaining" needs an amount (a threshold prunes |w| < threshold, whatever remains)')

    def compute(xp: Any, params: list, old: list, target: Any) -> tuple[list, Any]:
        masks = []
        alive = alive_counts(xp, old) if remaining else [None] * len(old)
        for i, (p, m) in enumerate(zip(params, old)):
            n = size(p) if threshold is not None else static_total(size(p))  # global under sharding
            if n == 0:
                masks.append(m)
            elif threshold is not None:
                small = float32_scores(xp, p) < threshold
                masks.append(m & xp.logical_not(small))
            else:
                k = prune_count(xp, target, n, rounding, alive[i], where=array_label(i))
                keep, _ = prune_smallest(xp, [p], k, [m])
                masks.append(keep[0])
        return masks, None

    return on(mask_rule("magnitude_prune", compute, schedule, amount), params)


@factory
def global_magnitude_prune(
    amount: float,
    *,
    normalize: bool = False,
    schedule: Any = None,
    rounding: str = "prune",
    params: Any = "weights",
    relative_to: str = "all",
) -> Rule:
    """Global magnitude pruning: prune the ``amount`` smallest ``|w|`` of all arrays together.

    Exactly ``k = round_half_even(amount * n)`` of the ``n`` elements of all arrays
    are pruned (``rounding="keep"``: tfmot / jaxpruner count), in the total order
    ``(|w|, global flat index)``, NaN last. The threshold is found exactly by
    selection over the float32 bit patterns (no concatenation, no sort; torch: a
    chunked radix histogram, see ``benchmarks/bench_prune.py``); the masks of
    ``torch.nn.utils.prune.global_unstructured(..., L1Unstructured)`` on tie-free inputs.

    Scores are ``|w|`` rounded to float32: float64 weights closer than a float32 ulp
    tie there, and ties go by global flat index (torch ranks float64 scores in float64,
    so its masks can differ on such near-ties).

    Args:
      amount: a float in ``[0, 1]``: the target sparsity (the final one for a polynomial
        schedule); or an int ``>= 0``: how many elements to prune over all arrays (torch's
        int ``amount``).
      normalize: score ``|w| / (||w||_2 + 1e-8)`` per array (jaxpruner's
        ``use_normalization``), so no array is pruned away just for its scale. The
        norm is a float32 reduction whose summation order (and so last bit) is the
        framework's own (``vector_norm``: pairwise, blocked or tree sums), so masks with
        ``normalize=True`` agree across frameworks except at near-ties: scores of two
        arrays within ~1 ulp of each other may swap order (the parity suite's random
        cases have none). ``normalize=False`` masks are bit-identical everywhere.
      schedule: ``None`` (one-shot at step 0), or a schedule preset.
      rounding: ``"prune"`` (torch) or ``"keep"`` (tfmot / jaxpruner).
      params: which arrays are pruned: ``"weights"`` (default: rank >= 2, not biases or
        norm scales), ``"all"``, or a :class:`gradclip_core.Params` (names, rank).
      relative_to: ``"all"`` elements, or the ``"remaining"`` ones: each recomputation
        prunes ``amount`` of what is left (iterative pruning; ``global_unstructured``
        applied again to a pruned model, in torch).

    Returns:
      A :class:`Rule` with :class:`PruneState`; info ``sparsity``, ``sparsity/<i>``,
      ``threshold``.

    Example:
      >>> import numpy as np
      >>> import gradclip_core as gc
      >>> rule = gc.global_magnitude_prune(0.5)
      >>> w = [np.array([[0.3, -0.1]], np.float32), np.array([[2.0], [0.2]], np.float32)]
      >>> w, state, info = rule.project(w, rule.init(w))
      >>> [m.tolist() for m in state.masks], round(float(info["threshold"]), 6)
      ([[[True, False]], [[True], [False]]], 0.2)
    """
    schedule = check_schedule(schedule)
    amount = check_amount(amount, schedule=schedule)
    if not isinstance(normalize, bool):
        raise ValueError(f"normalize must be a bool, got {normalize!r}")
    rounding = check_rounding(rounding)
    remaining = check_relative(relative_to) == "remaining"

    def compute(xp: Any, params: list, old: list, target: Any) -> tuple[list, Any]:
        n = static_total(sum(size(p) for p in params))  # the global count under sharding
        alive = None
        if remaining:
            counts = [xp.count_nonzero(m) for m in old]
            alive = all_reduce(xp, sum(counts[1:], counts[0]), "sum") if counts else None
        divisors = None
        if normalize and active():
            sq = [xp.sum(float32_scores(xp, p) * float32_scores(xp, p)) for p in params]
            norms = xp.sqrt(all_reduce(xp, xp.stack(sq), "sum"))
            divisors = [norms[i] + _NORM_EPS for i in range(len(params))]
        elif normalize:
            divisors = [
                xp.linalg.vector_norm(float32_scores(xp, p)) + _NORM_EPS if size(p) else xp.ones((), dtype=xp.float32)
                for p in params
            ]
        return prune_smallest(xp, params, prune_count(xp, target, n, rounding, alive), old, divisors)

    return on(mask_rule("global_magnitude_prune", compute, schedule, amount, threshold_info=True), params)


