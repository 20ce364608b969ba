"""Pruning rules: masks in the state, ``update`` masks gradients, ``project`` re-masks weights.

State (:class:`PruneState`): ``count``, an int32 0-d step counter (advanced by every
``project``), and ``masks``, a tuple of **bool** arrays shaped like the parameters
(``True`` = kept). Arrays only, so it is a JAX pytree, a torch ``state_dict`` and a
list of Keras variables (a Keras ``Callback`` / ``Optimizer`` holds one int32
variable and one bool variable per weight).

- ``update(grads, state)``: ``where(mask, g, 0)``: pruned weights get no gradient, so
  momentum and Adam moments can never move them.
- ``project(params, state)``: on the schedule's steps (see
  :mod:`gradclip_core._schedule`) the masks are recomputed from the current weights;
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
:mod:`gradclip_core._select`). The recomputation runs under the ``cond`` primitive:
``lax.cond`` in JAX, a Python branch in eager torch / NumPy, so non-schedule steps
only apply the masks; elsewhere (array-api-strict, ``torch.compile``) both branches
are computed and selected with ``where``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

from ._collective import active, all_reduce, static_total
from ._hash import hash_keys
from ._history import device_kw
from ._multi import size
from ._namespace import namespace
from ._rule import Rule, factory
from ._schedule import Schedule, check_amount, check_rounding, check_schedule, prune_count
from ._select import apply_masks, cond, float32_scores, prune_smallest
from ._validate import check_choice, check_threshold

__all__ = [
    "PruneState",
    "mask_rule",
    "magnitude_prune",
    "global_magnitude_prune",
    "random_prune",
    "sparsity_info",
    "find_masks",
]

_NORM_EPS = 1e-8  # jaxpruner's normalization_eps


class PruneState(NamedTuple):
    """State of every mask-based pruning rule.

    Attributes:
      count: int32 0-d array, the number of ``project`` calls so far (the step).
      masks: tuple of bool arrays, one per parameter, ``True`` where kept.
    """

    count: Any
    masks: tuple


def sparsity_info(xp: Any, masks: Sequence[Any]) -> dict:
    """``sparsity`` (all arrays) and ``sparsity/<i>`` (each array), float32 0-d."""
    info: dict = {}
    total = 0
    pruned = xp.zeros((), dtype=xp.float32)
    for i, m in enumerate(masks):
        n = size(m)
        if n == 0:
            info[f"sparsity/{i}"] = xp.zeros((), dtype=xp.float32)
            continue
        p = float(n) - xp.astype(xp.count_nonzero(m), xp.float32)
        info[f"sparsity/{i}"] = p / float(n)
        pruned = pruned + p
        total += n
    info["sparsity"] = pruned / float(total) if total else xp.zeros((), dtype=xp.float32)
    return {"sparsity": info.pop("sparsity"), **info}


def _sparsity_info_sharded(xp: Any, masks: Sequence[Any]) -> dict:
    """:func:`sparsity_info` of the full arrays when ``masks`` are shards (one collective)."""
    if not masks:
        return {"sparsity": xp.zeros((), dtype=xp.float32)}
    pruned = [float(size(m)) - xp.astype(xp.count_nonzero(m), xp.float32) for m in masks]
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


def find_masks(tree: Any, n: int) -> list[tuple]:
    """The masks of every :class:`PruneState` with ``n`` masks in a state tree, depth first.

    ``tree`` is any nesting of tuples, lists, NamedTuples and dicts (a ``chain``'s state,
    an optax optimizer state); adapters AND the result to read or strip the masks.

    Example:
      >>> import numpy as np
      >>> state = (None, PruneState(np.int32(0), (np.array([True, False]),)))
      >>> [m.tolist() for ms in find_masks({"opt": state}, 1) for m in ms]
      [[True, False]]
    """
    found: list[tuple] = []

    def walk(node: Any) -> None:
        if isinstance(node, PruneState):
            if len(node.masks) == n:
                found.append(node.masks)
            return
        children = node.values() if isinstance(node, dict) else node if isinstance(node, (tuple, list)) else ()
        for v in children:
            walk(v)

    walk(tree)
    return found


def _init_state(params: Sequence[Any]) -> PruneState:
    params = list(params)
    if not params:
        import numpy as np

        return PruneState(np.zeros((), np.int32), ())
    xp = namespace(*params)
    # Each mask lives on its weight's device (torch: CUDA weights get CUDA masks).
    masks = tuple(xp.ones(p.shape, dtype=xp.bool, **device_kw([p])) for p in params)
    return PruneState(xp.zeros((), dtype=xp.int32, **device_kw(params)), masks)


def _check_masks(name: str, arrays: Sequence[Any], state: PruneState) -> None:
    if not isinstance(state, PruneState):
        raise ValueError(f"{name}: state must be the PruneState made by rule.init, got {type(state).__name__}")
    if len(state.masks) != len(arrays):
        raise ValueError(f"{name}: the state has {len(state.masks)} masks for {len(arrays)} arrays (call rule.init on these params)")
    for i, (a, m) in enumerate(zip(arrays, state.masks)):
        if tuple(a.shape) != tuple(m.shape):
            raise ValueError(f"{name}: array {i} has shape {tuple(a.shape)} but its mask {tuple(m.shape)}")


# compute(xp, params, old_masks, target) -> (new keep masks (already ANDed with old), threshold or None)
ComputeFn = Callable[[Any, list, list, Any], "tuple[list, Any]"]


def mask_rule(name: str, compute: ComputeFn, schedule: Schedule, amount: float | None, *, threshold_info: bool = False) -> Rule:
    """A mask-based pruning :class:`Rule` from a mask computation and a schedule."""

    def update(grads: Sequence[Any], state: PruneState, params: Sequence[Any] | None = None):
        grads = list(grads)
        _check_masks(name, grads, state)
        if not grads:
            return grads, state, {}
        xp = namespace(*grads)
        return apply_masks(xp, grads, list(state.masks)), state, {}

    def project(params: Sequence[Any], state: PruneState):
        params = list(params)
        _check_masks(name, params, state)
        if not params:
            return params, state, {}
        xp = namespace(*params)
        t = state.count
        old = list(state.masks)
        zero = xp.zeros((), dtype=xp.float32)

        def recompute() -> tuple:
            target = schedule.target(xp, t, amount) if amount is not None else None
            masks, thr = compute(xp, params, old, target)
            return tuple(masks), (zero if thr is None else thr)

        def keep() -> tuple:
            return tuple(old), zero

        masks, thr = cond(xp, schedule.active(xp, t), recompute, keep)
        masks = list(masks)
        out = apply_masks(xp, params, masks)
        info = _sparsity_info_sharded(xp, masks) if active() else sparsity_info(xp, masks)
        if threshold_info:
            info["threshold"] = thr
        return out, PruneState(t + 1, tuple(masks)), info

    return Rule(init=_init_state, update=update, project=project, name=name)


def _amount_or_threshold(amount: Any, threshold: Any) -> tuple[float | None, float | None]:
    if (amount is None) == (threshold is None):
        raise ValueError("pass exactly one of amount (a fraction in [0, 1]) or threshold (prune |w| < threshold)")
    if amount is not None:
        return check_amount(amount), None
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
) -> Rule:
    """Per-array magnitude pruning: in each array prune the ``amount`` smallest ``|w|``, or ``|w| < threshold``.

    With ``amount``: array ``i`` of ``n_i`` elements loses exactly
    ``k_i = round_half_even(amount * n_i)`` elements (``rounding="keep"``: keeps
    ``max(1, round_half_even((1 - amount) * n_i))``, tfmot / jaxpruner), the smallest
    ``|w|`` first, ties by flat index, NaN last; the masks of
    ``torch.nn.utils.prune.l1_unstructured`` on tie-free inputs. With ``threshold``:
    every ``|w| < threshold`` is pruned (NaN never).

    Args:
      amount: target sparsity in ``[0, 1]`` (the final one for a polynomial schedule).
      threshold: fixed magnitude threshold ``>= 0`` (instead of ``amount``).
      schedule: ``None`` (:func:`one_shot` at step 0), or a schedule preset.
      rounding: ``"prune"`` (torch) or ``"keep"`` (tfmot / jaxpruner).

    Returns:
      A :class:`Rule` with :class:`PruneState`; info ``sparsity``, ``sparsity/<i>``.

    Example:
      >>> import numpy as np
      >>> import gradclip_core as gc
      >>> rule = gc.magnitude_prune(0.5)
      >>> w = [np.array([0.3, -0.1, 2.0, 0.2], np.float32)]
      >>> state = rule.init(w)
      >>> w, state, info = rule.project(w, state)
      >>> w[0].tolist(), state.masks[0].tolist(), float(info["sparsity"])
      ([0.30000001192092896, 0.0, 2.0, 0.0], [True, False, True, False], 0.5)
    """
    amount, threshold = _amount_or_threshold(amount, threshold)
    schedule = check_schedule(schedule)
    rounding = check_rounding(rounding)

    def compute(xp: Any, params: list, old: list, target: Any) -> tuple[list, Any]:
        masks = []
        for p, m in zip(params, old):
            n = size(p) if threshold is not None else static_total(size(p))  # global under sharding
            if n == 0:
                masks.append(m)
            elif threshold is not None:
                small = float32_scores(xp, p) < threshold
                masks.append(m & xp.logical_not(small))
            else:
                keep, _ = prune_smallest(xp, [p], prune_count(xp, target, n, rounding), [m])
                masks.append(keep[0])
        return masks, None

    return mask_rule("magnitude_prune", compute, schedule, amount)


@factory
def global_magnitude_prune(
    amount: float,
    *,
    normalize: bool = False,
    schedule: Any = None,
    rounding: str = "prune",
) -> Rule:
    """Global magnitude pruning: prune the ``amount`` smallest ``|w|`` of all arrays together.

    Exactly ``k = round_half_even(amount * n)`` of the ``n`` elements of all arrays
    are pruned (``rounding="keep"``: tfmot / jaxpruner count), in the total order
    ``(|w|, global flat index)``, NaN last. The threshold is found exactly by
    selection over the float32 bit patterns (no concatenation, no sort; torch: a
    chunked radix histogram, see ``benchmarks/bench_prune.py``); the masks of
    ``torch.nn.utils.prune.global_unstructured(..., L1Unstructured)`` on tie-free inputs.

    Args:
      amount: target sparsity in ``[0, 1]`` (the final one for a polynomial schedule).
      normalize: score ``|w| / (||w||_2 + 1e-8)`` per array (jaxpruner's
        ``use_normalization``), so no array is pruned away just for its scale. The
        norm is a float32 reduction whose summation order (and so last bit) is the
        framework's own (``vector_norm``: pairwise, blocked or tree sums), so masks with
        ``normalize=True`` agree across frameworks except at near-ties: scores of two
        arrays within ~1 ulp of each other may swap order (the parity suite's random
        cases have none). ``normalize=False`` masks are bit-identical everywhere.
      schedule: ``None`` (one-shot at step 0), or a schedule preset.
      rounding: ``"prune"`` (torch) or ``"keep"`` (tfmot / jaxpruner).

    Returns:
      A :class:`Rule` with :class:`PruneState`; info ``sparsity``, ``sparsity/<i>``,
      ``threshold``.

    Example:
      >>> import numpy as np
      >>> import gradclip_core as gc
      >>> rule = gc.global_magnitude_prune(0.5)
      >>> w = [np.array([0.3, -0.1], np.float32), np.array([2.0, 0.2], np.float32)]
      >>> w, state, info = rule.project(w, rule.init(w))
      >>> [m.tolist() for m in state.masks], round(float(info["threshold"]), 6)
      ([[True, False], [True, False]], 0.2)
    """
    amount = check_amount(amount)
    if not isinstance(normalize, bool):
        raise ValueError(f"normalize must be a bool, got {normalize!r}")
    schedule = check_schedule(schedule)
    rounding = check_rounding(rounding)

    def compute(xp: Any, params: list, old: list, target: Any) -> tuple[list, Any]:
        n = static_total(sum(size(p) for p in params))  # the global count under sharding
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
        return prune_smallest(xp, params, prune_count(xp, target, n, rounding), old, divisors)

    return mask_rule("global_magnitude_prune", compute, schedule, amount, threshold_info=True)


@factory
def random_prune(
    amount: float,
    *,
    seed: int = 0,
    scope: str = "array",
    schedule: Any = None,
    rounding: str = "prune",
) -> Rule:
    """Random pruning with a counter-based hash: the same ``seed`` gives the same masks everywhere.

    Every element gets the score ``h(seed, array index, flat index)`` (24 bits, see
    :mod:`gradclip_core._hash`); the ``k`` smallest scores are pruned exactly as in
    magnitude pruning (per array, or over all arrays with ``scope="global"``). Masks
    do not depend on the weights, the framework or the device. (Not comparable with
    ``torch.nn.utils.prune.random_unstructured``, which draws from torch's RNG.)

    Args:
      amount: sparsity in ``[0, 1]``.
      seed: a non-negative int.
      scope: ``"array"`` (``k_i`` per array) or ``"global"``.
      schedule: ``None`` (one-shot at step 0), or a schedule preset.
      rounding: ``"prune"`` or ``"keep"``.

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
    amount = check_amount(amount)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    check_choice("scope", scope, ("array", "global"))
    schedule = check_schedule(schedule)
    rounding = check_rounding(rounding)

    def compute(xp: Any, params: list, old: list, target: Any) -> tuple[list, Any]:
        scores = [xp.astype(hash_keys(xp, tuple(p.shape), seed, i), xp.float32) for i, p in enumerate(params)]
        if scope == "global":
            k = prune_count(xp, target, sum(size(p) for p in params), rounding)
            return prune_smallest(xp, scores, k, old)[0], None
        masks = []
        for s, m in zip(scores, old):
            if size(s) == 0:
                masks.append(m)
            else:
                masks.append(prune_smallest(xp, [s], prune_count(xp, target, size(s), rounding), [m])[0][0])
        return masks, None

    return mask_rule("random_prune", compute, schedule, amount)
