"""Dynamic sparse training: RigL and SET (constant sparsity, the connectivity evolves).

RigL (Evci et al. 2020, "Rigging the Lottery", arXiv 1911.11134, Algorithm 1) and SET
(Mocanu et al. 2018, arXiv 1707.04780), as jaxpruner's ``sparse_trainers.py`` implements
them (``SET._update_masks``, ``RigL._get_grow_scores``, ``restart_inner_state``); the
formulas are transcribed, not the code:

- ``init``: every array ``i`` of size ``n_i`` gets ``k_i = round_half_even(s_i * n_i)``
  pruned elements (``s_i``: ``allocation`` ``"uniform"``, every array ``sparsity``, or
  ``"erk"``, :func:`gradclip_core.erk_sparsities`), chosen at random (the seeded hash
  of :mod:`gradclip_core._hash`, identical in every framework) or by smallest ``|w|``.
- on every update step ``t`` (``t > 0``, ``t % update_every == 0``, ``t < end_step``),
  in ``update`` (it needs ``params``): the drop fraction follows the cosine decay
  ``f_t = drop_fraction / 2 * (1 + cos(pi * t / end_step))`` (RigL eq. 1), and each
  array drops ``d_i = round_half_even(f_t * (n_i - k_i))`` of its active weights, the
  smallest ``|w|``, then grows ``d_i`` among the elements not active after the drop:
  the largest ``|g|`` (RigL; ``g`` the dense gradient) or random hash scores of
  ``(seed, t)`` (SET). The sparsity stays ``k_i / n_i``. Both selections are the one
  driver :func:`gradclip_core.prune_smallest` (grow = prune the ``n_i - d_i`` smallest
  scores with the elements kept by the drop ranked first), so masks are bit-identical
  across frameworks. ``d_i`` comes from a table computed in Python float64 (no
  framework ``cos``).
- ``regrown`` (in the state until the next ``update``): elements inactive before and
  active after (jaxpruner's ``masks_activated``; an element dropped and grown again in the
  same step keeps its weight). ``update`` gives them no gradient; ``project`` masks the
  weights and sets the regrown ones to 0. The optimizer state of the regrown weights
  must restart at 0 (RigL, jaxpruner): the core cannot reach it, the adapters do
  (:func:`gradclip_core.backend.find_regrown`): ``gradclip_optax.wrap``, ``gradclip_torch.attach``.

On shards (a collective: torch process groups / DTensor ``Shard(0)``, JAX ``shard_map``;
every array a block of leading rows in participant order) the masks are those of one
process: counts and ERK come from the full shapes (:mod:`gradclip_core.prune._shards`),
the random hash is taken at the global flat index, and each drop / grow is the one driver
over the shards (per array: its histogram passes and one tie gather, so a connectivity
update costs ``2 * arrays * (passes + 1)`` collectives, plus one integer sum per array for
the full shapes and one for ``regrown``; other steps one, for ``regrown``). Arrays split
along another axis (``Shard(1)``) are refused.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

from .._effect import Keep, Mask
from .._hash import HashScores, hash_keys
from .._params import on
from .._rule import Rule, factory
from .._validate import check_choice, check_real
from ..backend._collective import active, all_reduce
from ..backend._namespace import device_kw, namespace
from ..backend._primitives import cond
from ._allocation import erk_sparsities
from ._select import _pick, prune_smallest
from ._shards import flat_offsets, full_shape, refuse_split
from ._state import _RANKS, _sparsity_info_sharded, sparsity_info

__all__ = ["DSTState", "rigl", "sparse_evolutionary", "set_", "drop_fractions"]


class DSTState(NamedTuple):
    """State of :func:`rigl` / :func:`sparse_evolutionary`.

    Attributes:
      count: int32 0-d array, the number of ``project`` calls so far (the step ``t``).
      masks: tuple of bool keep-masks, one per array.
      regrown: tuple of bool arrays, ``True`` where the last ``update`` grew an element
        (all ``False`` after an update that was not on an update step).
    """

    count: Any
    masks: tuple
    regrown: tuple


def drop_fractions(drop_fraction: float, update_every: int, end_step: int) -> list[float]:
    """``f_t = drop_fraction / 2 * (1 + cos(pi * t / end_step))`` for ``t = j * update_every < end_step``.

    Example:
      >>> [round(f, 4) for f in drop_fractions(0.3, 25, 100)]
      [0.3, 0.2561, 0.15, 0.0439]
    """
    return [drop_fraction / 2 * (1 + math.cos(math.pi * t / end_step)) for t in range(0, end_step, update_every)]


def _check(name: str, sparsity: Any, drop_fraction: Any, update_every: Any, end_step: Any, seed: Any) -> None:
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
        raise ValueError(f"{name}: sparsity must be a float in [0, 1), got {sparsity!r}")
    if isinstance(drop_fraction, bool) or not isinstance(drop_fraction, (int, float)) or not 0 <= drop_fraction <= 1:
        raise ValueError(f"{name}: drop_fraction must be a float in [0, 1], got {drop_fraction!r}")
    for arg, v in (("update_every", update_every), ("end_step", end_step)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}: {arg} must be an int >= 1, got {v!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"{name}: seed must be an int >= 0, got {seed!r}")


def _dst(name: str, sparsity: float, allocation: str, drop_fraction: float, update_every: int, end_step: int,
         grow: str, seed: int, init_masks: str) -> Rule:
    fracs = drop_fractions(float(drop_fraction), update_every, end_step)

    def targets(shapes: list) -> list[float]:
        if allocation == "erk":
            live = [i for i, s in enumerate(shapes) if math.prod(s) > 0]
            finals = erk_sparsities([shapes[i] for i in live], float(sparsity))
            out = [0.0] * len(shapes)
            for i, s in zip(live, finals):
                out[i] = s
            return out
        return [float(sparsity)] * len(shapes)

    def full_shapes(arrays: list) -> list:
        # On shards (a collective): the full arrays' shapes, so counts and ERK are those of one process.
        refuse_split(name)
        return [full_shape(tuple(a.shape)) for a in arrays]

    def init(params: Sequence[Any]) -> DSTState:
        params = list(params)
        if not params:
            import numpy as np

            return DSTState(np.zeros((), np.int32), (), ())
        check_real(name, params, _RANKS)
        xp = namespace(*params)
        shapes = full_shapes(params)
        offsets = flat_offsets(xp, params) if init_masks == "random" else [0] * len(params)
        masks, regrown = [], []
        for i, (p, s) in enumerate(zip(params, targets(shapes))):
            kw = device_kw([p])
            k = round(s * math.prod(shapes[i]))
            if init_masks == "random":
                score = xp.asarray(xp.astype(hash_keys(xp, tuple(p.shape), seed, i, offsets[i]), xp.float32), **kw)
            else:
                score = p
            masks.append(prune_smallest(xp, [score], k)[0][0] if k else xp.ones(p.shape, dtype=xp.bool, **kw))
            regrown.append(xp.zeros(p.shape, dtype=xp.bool, **kw))
        return DSTState(xp.zeros((), dtype=xp.int32, **device_kw(params)), tuple(masks), tuple(regrown))

    def _check_state(arrays: list, state: Any) -> None:
        if not isinstance(state, DSTState):
            raise ValueError(f"{name}: state must be the DSTState made by rule.init, got {type(state).__name__}")
        if len(state.masks) != len(arrays):
            raise ValueError(f"{name}: the state has {len(state.masks)} masks for {len(arrays)} arrays "
                             "(call rule.init on these params)")
        for i, (a, m) in enumerate(zip(arrays, state.masks)):
            if tuple(a.shape) != tuple(m.shape):
                raise ValueError(f"{name}: array {i} has shape {tuple(a.shape)} but its mask {tuple(m.shape)}")

    def update(grads: Sequence[Any], state: DSTState, params: Sequence[Any] | None = None):
        grads = list(grads)
        _check_state(grads, state)
        if not grads:
            return Keep(), state, {}
        if params is None:
            raise ValueError(f"{name}: update needs params= (the drop step ranks the weights by |w|)")
        params = list(params)
        check_real(name, grads, _RANKS)
        xp = namespace(*grads)
        t = state.count
        old = list(state.masks)
        pred = (t > 0) & (t % update_every == 0) & (t < end_step)

        def regrow() -> tuple:
            j = t // update_every
            shapes = full_shapes(params)
            targets_ = targets(shapes)
            offsets = flat_offsets(xp, grads) if grow == "random" else [0] * len(grads)
            new, grown = [], []
            for i, (p, g, m) in enumerate(zip(params, grads, old)):
                n = math.prod(shapes[i])
                if n == 0:
                    new.append(m)
                    grown.append(xp.zeros(m.shape, dtype=xp.bool, **device_kw([m])))
                    continue
                on_ = n - round(targets_[i] * n)  # active weights of the full array
                table = xp.asarray([round(f * on_) for f in fracs], dtype=xp.int32, **device_kw([p]))
                d = _pick(xp, table, j)
                kept = prune_smallest(xp, [p], (n - on_) + d, [m])[0][0]        # drop the d smallest |w|
                # grow the d largest scores: |g| (RigL), or the hash of (seed, i, index, t) (SET: never made whole)
                hashed = None if grow == "gradient" else [HashScores(seed, i, offsets[i], t)]
                grown_i = prune_smallest(xp, [g], n - d, [~kept], hashed=hashed)[0][0]
                new_i = kept | grown_i
                new.append(new_i)
                grown.append(new_i & ~m)
            return tuple(new), tuple(grown)

        def keep() -> tuple:
            return tuple(old), tuple(xp.zeros(m.shape, dtype=xp.bool, **device_kw([m])) for m in old)

        masks, regrown = cond(xp, pred, regrow, keep)
        n_grown = sum((xp.astype(xp.count_nonzero(r), xp.float32) for r in regrown), xp.zeros((), dtype=xp.float32))
        if active():  # of the full arrays
            n_grown = all_reduce(xp, n_grown, "sum")
        info = {"regrown": n_grown}
        train = tuple(m & ~r for m, r in zip(masks, regrown))
        return Mask(train), DSTState(t, tuple(masks), tuple(regrown)), info

    def project(params: Sequence[Any], state: DSTState):
        params = list(params)
        _check_state(params, state)
        if not params:
            return Keep(), state, {}
        xp = namespace(*params)
        masks = list(state.masks)
        effective = tuple(m & ~r for m, r in zip(masks, state.regrown))
        info = _sparsity_info_sharded(xp, masks) if active() else sparsity_info(xp, masks)
        return Mask(effective), state._replace(count=state.count + 1), info

    return Rule(init=init, update_effect=update, project_effect=project, name=name, needs_params=True)


@factory
def rigl(
    sparsity: float,
    *,
    allocation: str = "erk",
    drop_fraction: float = 0.3,
    update_every: int = 100,
    end_step: int = 75_000,
    grow: str = "gradient",
    seed: int = 0,
    init_masks: str = "random",
    params: Any = "weights",
) -> Rule:
    """RigL (Evci et al. 2020, arXiv 1911.11134): sparse training with drop by ``|w|`` and growth by ``|g|``.

    See :mod:`gradclip_core.prune._dst` for the update. The rule needs ``params`` in
    ``update`` (every adapter that owns the optimizer passes them) and the dense
    gradient (pruned elements included, as autodiff gives it).

    Args:
      sparsity: the constant sparsity in ``[0, 1)`` (of all arrays with ``"erk"``).
      allocation: ``"erk"`` (Erdos-Renyi-Kernel, the paper's default) or ``"uniform"``.
      drop_fraction: the drop fraction at step 0 (``alpha``; cosine decay to 0 at ``end_step``).
      update_every: steps between connectivity updates (``Delta T``).
      end_step: the last update is before this step (``T_end``).
      grow: ``"gradient"`` (RigL) or ``"random"`` (SET).
      seed: the seed of the random initial masks (and of SET's growth).
      init_masks: ``"random"`` (the paper) or ``"magnitude"`` (smallest ``|w|`` pruned).
      params: which arrays: ``"weights"`` (rank >= 2), ``"all"``, or a :class:`gradclip_core.Params`.

    Returns:
      A :class:`Rule` (``needs_params``) with :class:`DSTState`; ``update`` info
      ``regrown`` (elements grown this step), ``project`` info ``sparsity``, ``sparsity/<i>``.

    Example:
      >>> import numpy as np
      >>> import gradclip_core as gc
      >>> rule = gc.rigl(0.5, allocation="uniform", drop_fraction=0.5, update_every=1, end_step=10,
      ...                init_masks="magnitude")
      >>> w = [np.array([[4.0, 3.0, 2.0, 1.0]], np.float32)]
      >>> state = rule.init(w)
      >>> w, state, _ = rule.project(w, state)                    # step 0: masks only
      >>> g = [np.array([[0.0, 0.0, 0.1, 9.0]], np.float32)]
      >>> _, state, info = rule.update(g, state, w)               # step 1: drop |w|=3, grow |g|=9
      >>> [m.tolist() for m in state.masks], [r.tolist() for r in state.regrown], float(info["regrown"])
      ([[[True, False, False, True]]], [[[False, False, False, True]]], 1.0)
    """
    _check("rigl", sparsity, drop_fraction, update_every, end_step, seed)
    check_choice("allocation", allocation, ("erk", "uniform"))
    check_choice("grow", grow, ("gradient", "random"))
    check_choice("init_masks", init_masks, ("random", "magnitude"))
    return on(_dst("rigl" if grow == "gradient" else "set", sparsity, allocation, drop_fraction, update_every,
                   end_step, grow, seed, init_masks), params)


@factory
def sparse_evolutionary(
    sparsity: float,
    *,
    allocation: str = "erk",
    drop_fraction: float = 0.3,
    update_every: int = 100,
    end_step: int = 75_000,
    seed: int = 0,
    init_masks: str = "random",
    params: Any = "weights",
) -> Rule:
    """SET (Mocanu et al. 2018, arXiv 1707.04780): :func:`rigl` with random growth.

    Args:
      sparsity, allocation, drop_fraction, update_every, end_step, seed, init_masks, params:
        as :func:`rigl` (the growth scores hash ``(seed, array, element, step)``).

    Returns:
      A :class:`Rule` (``needs_params``) with :class:`DSTState`.

    Example:
      >>> import numpy as np
      >>> import gradclip_core as gc
      >>> rule = gc.sparse_evolutionary(0.5, allocation="uniform", update_every=1, end_step=10)
      >>> w = [np.ones((4, 4), np.float32)]
      >>> state = rule.init(w)
      >>> _, state, _ = rule.project(w, state)
      >>> _, state, info = rule.update([np.ones((4, 4), np.float32)], state, w)
      >>> int(state.masks[0].sum()), float(info["regrown"]) <= 3
      (8, True)
    """
    _check("sparse_evolutionary", sparsity, drop_fraction, update_every, end_step, seed)  # (errors name this factory)
    return rigl(sparsity, allocation=allocation, drop_fraction=drop_fraction, update_every=update_every,
                end_step=end_step, grow="random", seed=seed, init_masks=init_masks, params=params)


set_ = sparse_evolutionary
