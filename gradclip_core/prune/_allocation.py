"""Sparsity allocation: how a target sparsity is shared among the arrays of a model.

An :class:`Allocation` (plain Python values, so it sits in a rule's ``config``):

- ``"uniform"``: every array at the target sparsity (``k_i = round(s * n_i)`` each).
- ``"global"``: one selection over all arrays together (the smallest scores anywhere),
  optionally with a per-array ``min_sparsity`` / ``max_sparsity``.
- ``"erk"`` (:func:`erk_sparsity`; Evci et al. 2020, "Rigging the Lottery", arXiv
  1911.11134, section 3 / appendix; jaxpruner ``sparsity_distributions.erk``):
  Erdős–Rényi-Kernel: array ``i`` keeps a fraction ``eps * (sum(shape_i) /
  prod(shape_i)) ** power_scale`` of its weights, ``eps`` chosen so the whole model
  has the target sparsity; an array whose fraction would exceed 1 is left dense and
  ``eps`` recomputed (:func:`erk_sparsities`). Static: computed from the shapes.
- ``"lamp"`` (Lee et al. 2021, arXiv 2010.07611, eq. 2): global selection on the
  layer-adaptive score ``score(u) = s_u**2 / sum_{v >= u} s_v**2``, where the array's
  scores are sorted ascending (ties by index) and ``v >= u`` runs over the rest of that
  order, ``u`` included (:func:`lamp_scores`). Every array keeps its largest score
  (LAMP score 1).
- ``"per_output"`` (:func:`per_output`; Wanda's comparison group, Sun et al. 2023,
  section 3): every output unit (a row of a torch ``(out, in)`` weight, a column of a
  Keras ``(in, out)`` kernel, a conv filter) loses ``round_half_even(s * m)`` of its ``m``
  weights, the smallest scores of that unit (ties by position, pruned ones first):
  a stable sort of the int32 order keys along the unit (exact, identical everywhere).
  The Wanda authors' code floors the count (``int(m * s)``); here it is rounded.
- ``"owl"`` (:func:`owl_sparsity`; Yin et al. 2024, "Outlier Weighed Layerwise
  sparsity", arXiv 2310.05175, section 3 and the authors' ``prune_wanda_outlier``):
  per array the outlier ratio ``D_i`` = fraction of scores ``> m * mean(scores)``,
  then ``keep_i = (D_i - min D) / (max D - min D) * 2 * lam`` shifted so the keep
  ratios average ``1 - s`` (an unweighted mean over arrays, as the authors' code),
  sparsity ``1 - keep_i`` (arrays with more outliers are pruned less); equal ratios
  give the uniform target. Computed on the device from the scores (Wanda scores with
  :func:`gradclip_core.wanda_score`, as in the paper).

Counts are per array ``k_i = round_half_even(s_i * n_i)`` (``rounding="keep"``: the
kept count), in units of the rule's groups where it has groups.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, NamedTuple, Sequence

from ..backend._collective import active, all_reduce, static_total
from ..backend._layout import _DEFAULT_LAYOUT, _OVERRIDE
from ..backend._namespace import device_kw, namespace_name
from ..backend._primitives import cond, override, size, sort_keys, sort_values, unpermute
from ..backend._selection import float_from_bits, order_keys
from ._schedule import prune_count
from ._select import prune_smallest

__all__ = ["Allocation", "ALLOCATIONS", "erk_sparsity", "owl_sparsity", "per_output", "per_output_keep", "check_allocation", "erk_sparsities",
           "owl_sparsities", "lamp_scores", "lamp_keep", "lamp_values_sort"]

ALLOCATIONS = ("uniform", "global", "erk", "lamp", "owl", "per_output")
_GRID = 65536.0
_INF_BITS = 0x7F800000  # the bits of float32 +inf  # OWL sparsities are rounded to multiples of 2**-16


class Allocation(NamedTuple):
    """How the target sparsity is shared among arrays (see the module docstring).

    Attributes:
      kind: one of ``ALLOCATIONS``.
      power_scale: ERK's exponent (``< 1``: softer than Erdős–Rényi).
      m: OWL's outlier threshold, a multiple of the mean score.
      lam: OWL's ``lambda``: the per-array sparsity stays within ``s +- lam``.
      axis: ``per_output``'s output axis (``"out_first"``, ``"out_last"``, an int, or
        ``None``: the framework's layout).
    """

    kind: str = "uniform"
    power_scale: float = 1.0
    m: float = 5.0
    lam: float = 0.08
    axis: Any = None

    @property
    def is_global(self) -> bool:
        """Whether one selection runs over all arrays together."""
        return self.kind in ("global", "lamp")


def _positive(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
    return float(v)


def erk_sparsity(power_scale: float = 1.0) -> Allocation:
    """ERK allocation (Evci et al. 2020), with jaxpruner's ``erk_power_scale``.

    Example:
      >>> erk_sparsity(0.5).power_scale
      0.5
    """
    return Allocation("erk", power_scale=_positive("power_scale", power_scale))


def owl_sparsity(m: float = 5.0, lam: float = 0.08) -> Allocation:
    """OWL allocation (Yin et al. 2024): outlier threshold ``m`` (x the mean score), spread ``lam``.

    Example:
      >>> owl_sparsity(7, 0.1).lam
      0.1
    """
    lam = float(lam) if isinstance(lam, (int, float)) and not isinstance(lam, bool) else lam
    if not isinstance(lam, float) or not 0.0 <= lam <= 0.5:
        raise ValueError(f"lam must be a number in [0, 0.5], got {lam!r}")
    return Allocation("owl", m=_positive("m", m), lam=lam)


def per_output(axis: Any = None) -> Allocation:
    """Per-output-unit comparison groups (Wanda's): each output unit at the target sparsity.

    Args:
      axis: the output axis: ``"out_first"`` (torch), ``"out_last"`` (Keras, flax), an int,
        or ``None`` (the framework's layout; ``"optax"`` means ``"out_last"`` here).

    Example:
      >>> per_output("out_first").kind
      'per_output'
    """
    if axis is not None and axis not in ("out_first", "out_last") and (isinstance(axis, bool) or not isinstance(axis, int)):
        raise ValueError(f"axis must be 'out_first', 'out_last', an int or None, got {axis!r}")
    return Allocation("per_output", axis=axis)


def check_allocation(allocation: Any) -> Allocation:
    """An :class:`Allocation`, its kind as a string, or its fields as a dict/list (configs)."""
    if isinstance(allocation, str):
        if allocation not in ALLOCATIONS:
            raise ValueError(f"allocation must be one of {list(ALLOCATIONS)} or a gradclip Allocation, got {allocation!r}")
        return Allocation(allocation)
    if isinstance(allocation, Mapping):
        allocation = Allocation(**allocation)
    elif isinstance(allocation, list):
        allocation = Allocation(*allocation)
    if not isinstance(allocation, Allocation) or allocation.kind not in ALLOCATIONS:
        raise ValueError(f"allocation must be one of {list(ALLOCATIONS)} or a gradclip Allocation, got {allocation!r}")
    if allocation.kind == "erk":
        return erk_sparsity(allocation.power_scale)
    if allocation.kind == "owl":
        return owl_sparsity(allocation.m, allocation.lam)
    if allocation.kind == "per_output":
        return per_output(allocation.axis)
    return Allocation(allocation.kind)


def erk_sparsities(shapes: Sequence[tuple], sparsity: float, power_scale: float = 1.0) -> list[float]:
    """Per-array ERK sparsities for a model-wide ``sparsity`` (pure Python, from the shapes).

    A transcription of jaxpruner's ``get_sparsities_erdos_renyi`` (``include_kernel=True``,
    no custom map): with ``N_i`` the size of array ``i`` and ``p_i = (sum(shape_i) /
    N_i) ** power_scale``, find ``eps`` with ``sum_dense N_i + eps * sum_rest p_i N_i =
    sum_all (N_i - floor(s * N_i))``; while ``eps * max p_i > 1``, the arrays with the
    largest ``p_i`` become dense. Array ``i`` gets ``1 - eps * p_i`` (dense: 0).
    Size-0 arrays get 0.

    Example:
      >>> [round(s, 4) for s in erk_sparsities([(100, 100), (100, 10)], 0.9)]
      [0.929, 0.6097]
    """
    names = [i for i, s in enumerate(shapes) if math.prod(s) > 0]
    if not names:
        return [0.0] * len(shapes)
    dense: set = set()
    while True:
        divisor, rhs, raw = 0.0, 0.0, {}
        for i in names:
            n = math.prod(shapes[i])
            zeros = math.floor(sparsity * n)
            if i in dense:
                rhs -= zeros
            else:
                rhs += n - zeros
                raw[i] = (sum(shapes[i]) / n) ** power_scale
                divisor += raw[i] * n
        if not raw:  # every array dense
            break
        eps = rhs / divisor
        top = max(raw.values())
        if top * eps > 1:
            dense.update(i for i, p in raw.items() if p == top)
            continue
        break
    out = [0.0] * len(shapes)
    for i in names:
        out[i] = 0.0 if i in dense else 1.0 - eps * raw[i]
    return out


def owl_sparsities(xp: Any, scores: Sequence[Any], sparsity: Any, m: float, lam: float) -> list:
    """Per-array OWL sparsities (float32 0-d arrays) from the element scores and the target ``sparsity``.

    ``D_i = count(s > m * mean(s)) / n_i`` per array (size-0 arrays: 0); ``r_i = (D_i -
    min D) / (max D - min D) * 2 * lam`` (0 when all ``D_i`` are equal); ``keep_i = r_i -
    mean(r) + (1 - sparsity)``; sparsity ``1 - keep_i``, clipped to ``[0, 1]`` and rounded to a
    multiple of ``2**-16`` (so that the float32 arithmetic of different frameworks, within an
    ulp of each other, gives the same counts). The mean score is a float32 sum whose order
    is the framework's: an outlier count may differ only for a score within an ulp of
    ``m * mean``.

    Example:
      >>> import numpy as np
      >>> s = [np.array([1, 1, 1, 1, 100], np.float32), np.ones(5, np.float32)]
      >>> [round(float(v), 4) for v in owl_sparsities(np, s, 0.5, 2.0, 0.1)]
      [0.4, 0.6]
    """
    if active():  # shards: the full arrays' sums, then outlier counts (two collectives for all arrays)
        ns = [static_total(size(s)) for s in scores]
        sums = all_reduce(xp, xp.stack([xp.sum(s) for s in scores]), "sum")
        means = [sums[i] / float(max(n, 1)) for i, n in enumerate(ns)]
        counts = all_reduce(xp, xp.stack([xp.astype(xp.count_nonzero(s > m * mu), xp.float32)
                                          for s, mu in zip(scores, means)]), "sum")
        ratios = [counts[i] / float(n) if n else xp.zeros((), dtype=xp.float32) for i, n in enumerate(ns)]
    else:
        ratios = []
        for s in scores:
            n = size(s)
            if n == 0:
                ratios.append(xp.zeros((), dtype=xp.float32))
                continue
            mean = xp.sum(s) / float(n)
            ratios.append(xp.astype(xp.count_nonzero(s > m * mean), xp.float32) / float(n))
    # Element-wise float32 steps in a fixed order (no reduction whose order a framework picks).
    lo, hi = ratios[0], ratios[0]
    for d in ratios[1:]:
        lo, hi = xp.minimum(lo, d), xp.maximum(hi, d)
    spread = hi - lo
    safe = xp.where(spread > 0, spread, xp.ones_like(spread))
    rs = [xp.where(spread > 0, (d - lo) * (2.0 * lam) / safe, xp.zeros_like(d)) for d in ratios]
    total = rs[0]
    for r in rs[1:]:
        total = total + r
    mean_r = total / float(len(rs))
    out = []
    for r in rs:
        sp = xp.clip(1.0 - (r - mean_r + (1.0 - sparsity)), 0.0, 1.0)
        out.append(xp.round(sp * _GRID) / _GRID)  # on a 2**-16 grid: 1-ulp differences upstream vanish
    return out


def lamp_scores(xp: Any, s: Any) -> Any:
    """LAMP scores (Lee et al. 2021, eq. 2) of one array's non-negative float32 scores ``s``.

    ``s_u**2 / sum_{v >= u} s_v**2`` over the ascending order of ``s`` (ties by flat
    index; a stable sort), in float32; 0 where the suffix sum is 0. A NaN score is ranked
    as +inf (its LAMP score is NaN, ranked last; the scores below it are 0).

    Example:
      >>> import numpy as np
      >>> lamp_scores(np, np.array([[2.0, 1.0], [0.0, 3.0]], np.float32)).astype(float).round(4).tolist()
      [[0.3077, 0.0714], [0.0, 1.0]]
    """
    flat = xp.reshape(s, (-1,))
    if size(flat) == 0:
        return s
    keys = _lamp_keys(xp, flat)
    fast = override(xp, "lamp_scores")  # (torch on the CPU: the sort, then one fused loop for the rest)
    out = NotImplemented if fast is None else fast(xp, keys)
    if out is NotImplemented:
        sorted_keys, order = sort_keys(xp, keys)
        out = unpermute(xp, _lamp_sorted(xp, sorted_keys), order)
    return xp.reshape(out, tuple(s.shape))


def _lamp_keys(xp: Any, flat: Any) -> Any:
    """int32 order keys of 1-d scores for LAMP: they sort like the floats (+0 and -0 apart, both with LAMP
    score 0); a NaN's key becomes +inf's (NaN sorts as +inf everywhere)."""
    return xp.minimum(order_keys(xp, flat), xp.asarray(_INF_BITS, dtype=xp.int32, **device_kw([flat])))


def _lamp_sorted(xp: Any, sorted_keys: Any) -> Any:
    """LAMP scores in the sorted order, from the sorted keys alone (read back as the values)."""
    sq = float_from_bits(xp, sorted_keys) ** 2
    suffix = xp.flip(xp.cumulative_sum(xp.flip(sq, axis=0), axis=0), axis=0)
    one = xp.asarray(1.0, dtype=sq.dtype, **device_kw([sq]))
    # where the suffix sum is 0 so is its own term sq (a sum of non-negative floats rounds to at least its
    # largest term): 0 / 1 is the +0 defined there, with no second full-size select
    return sq / xp.where(suffix > 0, suffix, one)


def _at(xp: Any, v: Any, i: Any) -> Any:
    """``v[i]`` for a 1-d ``v`` and a 0-d integer ``i`` in range (a ``take``: a traced index under jit too)."""
    return xp.take(v, xp.reshape(i, (1,)))[0]


def _place(xp: Any, sorted_keys: Any, q: Any, cdt: Any) -> tuple:
    """``(K, g, c)`` for the first ``q`` places (``0 <= q <= n``) of the stable ascending order of keys sorted
    as ``sorted_keys``: they are the keys below ``K`` (the ``q``-th sorted key, the last where ``q = n``) and
    the first ``g`` in index order of the ``c`` keys equal to ``K`` (``0 <= g <= c``)."""
    n = sorted_keys.shape[0]
    K = _at(xp, sorted_keys, xp.minimum(q, xp.asarray(n - 1, dtype=q.dtype, **device_kw([sorted_keys]))))
    lo = xp.astype(xp.count_nonzero(sorted_keys < K), cdt)  # (a pass, not a searchsorted: XLA compiles a
    hi = xp.astype(xp.count_nonzero(sorted_keys <= K), cdt)  # while loop for that, and slowly)
    return K, xp.astype(q, cdt) - lo, hi - lo


def _first(xp: Any, keys: Any, place: tuple, cdt: Any) -> Any:
    """Which elements of 1-d ``keys`` take the places of ``place`` (:func:`_place`): a cumulative count of
    the keys equal to ``K`` in index order (the general case)."""
    K, g, _ = place
    eq = keys == K
    return (keys < K) | (eq & (xp.cumulative_sum(xp.astype(eq, cdt)) <= g))


def _first_whole(xp: Any, keys: Any, place: tuple) -> Any:
    """:func:`_first` where none or all of the keys equal to ``K`` are taken (``g`` is 0 or ``c``): no count."""
    K, g, _ = place
    return xp.where(g > 0, keys <= K, keys < K)


def _leading(xp: Any, flags: Any, cdt: Any) -> Any:
    """How many leading elements of the 1-d bool ``flags`` are True."""
    n = flags.shape[0]
    first_false = xp.astype(xp.argmax(xp.astype(~flags, xp.int8)), cdt)
    return xp.where(xp.all(flags), xp.asarray(n, dtype=cdt, **device_kw([flags])), first_false)


def lamp_values_sort(xp: Any) -> bool:
    """Whether LAMP's masks come from :func:`lamp_keep` here: the backend has a fast values-only sort
    (``sort_values``: JAX); elsewhere (torch's sort returns the order anyway) the permutation path."""
    return override(xp, "sort_values") is not None


def lamp_keep(xp: Any, scores: Sequence[Any], alive: Sequence[Any], k: Any) -> list:
    """Keep-masks of LAMP's global selection: the ``k`` smallest LAMP scores of ``scores`` together.

    The masks of ``prune_smallest(xp, [lamp_scores(xp, s) for s in scores], k, alive)``, bit for bit, from
    one values-only sort per array (one operand: the int32 keys, which XLA sorts several times faster than
    keys with their order) instead of a sort that carries the permutation and a scatter back:

    - LAMP scores are computed in the sorted order (:func:`_lamp_sorted`) and the selection runs on
      them: which scores, and so each array's threshold ``V`` and pruned count, depend on the values
      and the tie counts only, not on where the values sit;
    - along the order the LAMP scores do not decrease (squares grow, suffix sums shrink) except by an
      ulp where the framework's cumulative sum rounds out of order (XLA's blocked scan); where none of
      that happens at ``V``, the places below ``V`` are the first ``a`` of the order and those at ``V``
      the next ones up to ``b``: the elements on the first ``a`` (or ``b``) places are found in index
      order from the keys (:func:`_first`), and where only some of the ties at ``V`` are pruned, the
      first of them by flat index (a cumulative count), as the selection does.

    Elements pruned before (``alive`` False) rank first, as in the selection; they are placed among
    the LAMP scores 0 at the front of the order. Where an assumption fails (an out-of-order LAMP score
    at an array's threshold, or an element pruned before whose LAMP score is not 0) the masks come from
    the permutation path (:func:`lamp_scores`), a branch taken only then.

    Args:
      scores: non-empty arrays of non-negative float32 scores.
      alive: their current keep-masks (bool).
      k: how many to prune in all (a count of the namespace's default integer dtype).

    Returns:
      Bool keep-masks shaped like ``scores`` (``alive`` ANDed in).

    Example:
      >>> import numpy as np
      >>> s = [np.array([[2.0, 1.0], [0.0, 3.0]], np.float32), np.array([1.0, 1.0], np.float32)]
      >>> [m.tolist() for m in lamp_keep(np, s, [np.ones(x.shape, bool) for x in s], 3)]
      [[[False, False], [False, True]], [True, True]]
    """
    flats = [xp.reshape(s, (-1,)) for s in scores]
    olds = [xp.reshape(a, (-1,)) for a in alive]
    cdt = xp.count_nonzero(olds[0]).dtype
    zero = xp.zeros((), dtype=cdt, **device_kw(flats))
    keys = [_lamp_keys(xp, f) for f in flats]
    sks = [sort_values(xp, kk) for kk in keys]
    lamps = [_lamp_sorted(xp, sk) for sk in sks]
    lks = [order_keys(xp, v) for v in lamps]  # NaN (inf / inf) ranks last, as in the selection
    dead = [size(f) - xp.astype(xp.count_nonzero(o), cdt) for f, o in zip(flats, olds)]
    places = [xp.arange(size(v), dtype=cdt, **device_kw([v])) >= d for v, d in zip(lamps, dead)]
    kept, thr = prune_smallest(xp, lamps, k, places)
    vk = order_keys(xp, xp.reshape(thr, (1,)))[0]
    ok, plan = None, []
    for kk, sk, lk, o, d, ks in zip(keys, sks, lks, olds, dead, kept):
        n = size(lk)
        z = _leading(xp, lk == 0, cdt)  # the first z places have LAMP score +0
        kz = _at(xp, sk, xp.minimum(z, xp.asarray(n - 1, dtype=cdt, **device_kw([sk]))))
        placed = (z == n) | xp.all(o | (kk < kz))  # the dead are among them: keys below the z-th sorted key
        new = size(ks) - xp.astype(xp.count_nonzero(ks), cdt) - d  # pruned here now (beyond the dead)
        a = _leading(xp, lk < vk, cdt)
        b = n - _leading(xp, xp.flip(lk > vk, axis=0), cdt)
        ties = xp.astype(xp.count_nonzero(lk == vk), cdt)
        in_order = (new == 0) | (b - a == ties)  # [a, b): exactly the places at V
        ok = placed & in_order if ok is None else ok & placed & in_order
        at_zero = vk == 0  # V = 0: the dead are among the ties, else below them
        m = new - a + xp.where(at_zero, zero, d)  # ties at V pruned here
        alive_ties = ties - xp.where(at_zero, d, zero)
        plan.append((kk, sk, o, a, b, xp.where(new > 0, m, zero), alive_ties))

    def fast() -> list:
        out = []
        for kk, sk, o, a, b, m, alive_ties in plan:
            partial = (m > 0) & (m < alive_ties)  # some of the ties at V here are pruned: the first by index
            q = _place(xp, sk, xp.where(m > 0, b, a), cdt)  # else the first a places (none pruned) or b (all)

            def simple(kk=kk, q=q) -> Any:
                return _first_whole(xp, kk, q)

            def general(kk=kk, sk=sk, o=o, a=a, b=b, m=m, partial=partial, q=q) -> Any:
                below = _first(xp, kk, _place(xp, sk, a, cdt), cdt)
                upto = _first(xp, kk, _place(xp, sk, b, cdt), cdt)
                ties = o & upto & ~below
                took = xp.cumulative_sum(xp.astype(ties, cdt)) <= m
                return xp.where(partial, below | (ties & took), _first(xp, kk, q, cdt))

            whole = (q[1] == 0) | (q[1] == q[2])
            out.append(o & ~cond(xp, ~partial & whole, simple, general))
        return out

    def slow() -> list:
        return [xp.reshape(m, (-1,)) for m in
                prune_smallest(xp, [lamp_scores(xp, f) for f in flats], k, olds)[0]]

    res = cond(xp, ok, fast, slow)
    return [xp.reshape(m, tuple(s.shape)) for m, s in zip(res, scores)]


def _output_axis(xp: Any, axis: Any, ndim: int) -> int:
    if axis is None:
        axis = _OVERRIDE.get() or _DEFAULT_LAYOUT.get(namespace_name(xp))
        if axis is None:
            raise ValueError("per_output(axis=None) means the framework's layout, and this namespace has none: pass "
                             "axis= ('out_first' for (out, in, ...) weights, 'out_last' for (..., in, out) kernels)")
    if axis == "out_first":
        return 0
    if axis in ("out_last", "optax"):
        return ndim - 1
    return axis % ndim


def per_output_keep(xp: Any, axis: Any, s: Any, m: Any, target: Any, rounding: str) -> Any:
    """Keep-mask pruning ``target`` of every output unit of ``s`` (non-negative float32 scores), old mask ``m``.

    Arrays of rank < 2 and size-0 arrays keep ``m``.
    """
    if s.ndim < 2 or size(s) == 0:
        return m
    ax = _output_axis(xp, axis, s.ndim)
    key = order_keys(xp, s) + 1
    key = xp.where(m, key, xp.zeros_like(key))  # pruned before: first
    moved = xp.moveaxis(key, ax, 0)
    shp = tuple(moved.shape)
    rows = xp.reshape(moved, (shp[0], -1))
    n = rows.shape[1]
    k = prune_count(xp, target, n, rounding)
    order = xp.argsort(rows, axis=1, stable=True)
    rank = xp.argsort(order, axis=1, stable=True)
    keep = xp.reshape(rank >= k, shp)
    return xp.moveaxis(keep, 0, ax) & m
