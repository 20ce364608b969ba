"""Pruning rules: masks in the state, ``update`` masks gradients, ``project`` re-masks weights.

State (:class:`PruneState`): ``count``, an int32 0-d step counter (advanced by every
``project``), and ``masks``, a tuple of **bool** arrays shaped like the parameters
(``True`` = kept). Arrays only, so it is a JAX pytree, a torch ``state_dict`` and a
list of Keras variables (a Keras ``Callback`` / ``Optimizer`` holds one int32
variable and one bool variable per weight).

- ``update(grads, state)``: ``where(mask, g, 0)``: pruned weights get no gradient, so
  momentum and Adam moments can never move them.
- ``project(params, state)``: on the schedule's steps (see
  :mod:`gradclip_core.prune._schedule`) the masks are recomputed from the current weights;
  then ``where(mask, w, 0)``. Masks are monotone: an element pruned once ranks below
  everything at the next recomputation and stays pruned (never revives).
- info (from ``project``): ``sparsity`` (pruned fraction of all elements) and
  ``sparsity/<i>`` per array, float32; ``threshold`` for global magnitude pruning
  (the largest pruned ``|w|`` of this step's recomputation, 0 on other steps).

Counts (DESIGN.md): ``rounding="prune"`` (default, ``torch.nn.utils.prune``) prunes
``k = round_half_even(amount * n)``; ``rounding="keep"`` (tfmot, jaxpruner) keeps
``max(1, round_half_even((1 - amount) * n))``. Ties: score ascending, then global flat
index ascending (jaxpruner prunes the *last* of equal scores and tfmot keeps all
ties; torch's is unspecified), NaN scores rank above +inf (see
:mod:`gradclip_core.prune._select`). The recomputation runs under the ``cond`` primitive:
``lax.cond`` in JAX, ``tf.cond`` in TensorFlow, a Python branch in eager torch / NumPy,
so non-schedule steps only apply the masks; elsewhere (array-api-strict,
``torch.compile``) both branches are computed and selected with ``where``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

from .._effect import Keep, Mask
from .._rule import Rule
from .._validate import check_real
from ..backend._collective import active, all_reduce
from ..backend._namespace import device_kw, namespace
from ..backend._primitives import cond, count_true, size
from ._schedule import Schedule

__all__ = ["PruneState", "mask_rule", "sparsity_info"]


class PruneState(NamedTuple):
    """State of every mask-based pruning rule.

    Attributes:
      count: int32 0-d array, the number of ``project`` calls so far (the step).
      masks: tuple of bool arrays, one per parameter, ``True`` where kept.
      scores: tuple of float32 arrays shaped like the parameters, the scores a rule
        accumulates from the gradients in ``update`` (movement, Taylor; see
        :mod:`gradclip_core.prune._scores`); ``()`` for rules that score the weights alone.
    """

    count: Any
    masks: tuple
    scores: tuple = ()


def sparsity_info(xp: Any, masks: Sequence[Any]) -> dict:
    """``sparsity`` (all arrays) and ``sparsity/<i>`` (each array), float32 0-d."""
    info: dict = {}
    total = 0
    pruned = xp.zeros((), dtype=xp.float32)
    for i, (m, c) in enumerate(zip(masks, count_true(xp, masks))):
        n = size(m)
        if n == 0:
            info[f"sparsity/{i}"] = xp.zeros((), dtype=xp.float32)
            continue
        p = float(n) - xp.astype(c, xp.float32)
        info[f"sparsity/{i}"] = p / float(n)
        pruned = pruned + p
        total += n
    info["sparsity"] = pruned / float(total) if total else xp.zeros((), dtype=xp.float32)
    return {"sparsity": info.pop("sparsity"), **info}


def _sparsity_info_sharded(xp: Any, masks: Sequence[Any]) -> dict:
    """:func:`sparsity_info` of the full arrays when ``masks`` are shards (one collective)."""
    if not masks:
        return {"sparsity": xp.zeros((), dtype=xp.float32)}
    pruned = [float(size(m)) - xp.astype(c, xp.float32) for m, c in zip(masks, count_true(xp, masks))]
    sizes = [xp.asarray(float(size(m)), dtype=xp.float32) for m in masks]
    v = all_reduce(xp, xp.stack(pruned + sizes), "sum")
    k = len(masks)
    zero = xp.zeros((), dtype=xp.float32)

    def frac(p: Any, n: Any) -> Any:
        return xp.where(n > 0, p / xp.where(n > 0, n, xp.ones_like(n)), zero)

    info = {"sparsity": frac(xp.sum(v[:k]), xp.sum(v[k:]))}
    for i in range(k):
        info[f"sparsity/{i}"] = frac(v[i], v[k + i])
    return info


def _init_state(params: Sequence[Any], scores: bool = False) -> PruneState:
    params = list(params)
    if not params:
        import numpy as np

        return PruneState(np.zeros((), np.int32), ())
    xp = namespace(*params)
    # Each mask lives on its weight's device (torch: CUDA weights get CUDA masks).
    masks = tuple(xp.ones(p.shape, dtype=xp.bool, **device_kw([p])) for p in params)
    acc = tuple(xp.zeros(p.shape, dtype=xp.float32, **device_kw([p])) for p in params) if scores else ()
    return PruneState(xp.zeros((), dtype=xp.int32, **device_kw(params)), masks, acc)


def _check_masks(name: str, arrays: Sequence[Any], state: PruneState) -> None:
    if not isinstance(state, PruneState):
        raise ValueError(f"{name}: state must be the PruneState made by rule.init, got {type(state).__name__}")
    if len(state.masks) != len(arrays):
        raise ValueError(f"{name}: the state has {len(state.masks)} masks for {len(arrays)} arrays (call rule.init on these params)")
    for i, (a, m) in enumerate(zip(arrays, state.masks)):
        if tuple(a.shape) != tuple(m.shape):
            raise ValueError(f"{name}: array {i} has shape {tuple(a.shape)} but its mask {tuple(m.shape)}")


_RANKS = "ranks the weights by a real float32 score (complex weights are not supported)"  # (complex weights are refused, see check_real)

# compute(xp, params, old_masks, target) -> (new keep masks (already ANDed with old), threshold or None)
ComputeFn = Callable[[Any, list, list, Any], "tuple[list, Any]"]
# accumulate(xp, grads, params, scores) -> new scores (float32 arrays shaped like the params)
AccumulateFn = Callable[[Any, list, list, list], list]


def mask_rule(name: str, compute: ComputeFn, schedule: Schedule, amount: float | None, *, threshold_info: bool = False,
              accumulate: AccumulateFn | None = None, reset: bool = False, scheduled: bool = False) -> Rule:
    """A mask-based pruning :class:`Rule` from a mask computation and a schedule.

    Args:
      name: the rule's name.
      compute: ``compute(xp, params, old_masks, target)``; with ``accumulate`` it is
        called with ``scores=`` (the accumulated scores) too.
      schedule: when the masks are recomputed.
      amount: the final sparsity (``None``: the rule has its own count).
      threshold_info: report ``threshold`` (the compute's second output).
      accumulate: ``accumulate(xp, grads, params, scores) -> scores``, run in ``update``
        on the raw gradients (the rule then needs ``params``); its scores live in
        ``PruneState.scores``.
      reset: the accumulated scores restart from 0 after each recomputation.
      scheduled: pass ``target`` as a function ``final -> target at this step`` (per-array
        final sparsities, e.g. ERK, each following the schedule as in jaxpruner).
    """

    def update(grads: Sequence[Any], state: PruneState, params: Sequence[Any] | None = None):
        grads = list(grads)
        _check_masks(name, grads, state)
        if not grads:
            return Keep(), state, {}
        check_real(name, grads, _RANKS)
        if accumulate is not None:
            if params is None:
                raise ValueError(f"{name}: update needs params= (the score multiplies weights and gradients)")
            xp = namespace(*grads)
            state = state._replace(scores=tuple(accumulate(xp, grads, list(params), list(state.scores))))
        return Mask(tuple(state.masks)), state, {}

    def project(params: Sequence[Any], state: PruneState):
        params = list(params)
        _check_masks(name, params, state)
        if not params:
            return Keep(), state, {}
        check_real(name, params, _RANKS)
        xp = namespace(*params)
        t = state.count
        old = list(state.masks)
        zero = xp.zeros((), dtype=xp.float32)

        acc = tuple(state.scores)

        def recompute() -> tuple:
            if scheduled:
                target = lambda final: schedule.target(xp, t, final)  # noqa: E731
            else:
                target = schedule.target(xp, t, amount) if amount is not None else None
            if accumulate is None:
                masks, thr = compute(xp, params, old, target)
            else:
                masks, thr = compute(xp, params, old, target, scores=list(acc))
            new_acc = tuple(xp.zeros_like(a) for a in acc) if reset else acc
            return tuple(masks), (zero if thr is None else thr), new_acc

        def keep() -> tuple:
            return tuple(old), zero, acc

        masks, thr, acc = cond(xp, schedule.active(xp, t), recompute, keep)
        masks = list(masks)
        info = _sparsity_info_sharded(xp, masks) if active() else sparsity_info(xp, masks)
        if threshold_info:
            info["threshold"] = thr
        return Mask(tuple(masks)), PruneState(t + 1, tuple(masks), tuple(acc)), info

    init = (lambda params: _init_state(params, scores=True)) if accumulate is not None else _init_state
    return Rule(init=init, update_effect=update, project_effect=project, name=name,
                needs_params=accumulate is not None)


