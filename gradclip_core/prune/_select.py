"""Exact selection of the k smallest scores over many arrays: one radix-selection driver.

The total order (DESIGN.md): score ascending, then *global flat index* ascending, where
the global flat index is an element's position in the concatenation of all arrays in
order (row-major within each array). Nothing is concatenated and nothing is sorted: the
arrays are visited in order (in chunks, where a backend asks for it) and their global
offset is carried as a running count.

Scores are non-negative float32 values (``|w|`` for magnitude pruning, bf16/fp16 are
upcast exactly, float64 is rounded to float32). Every non-negative float32 orders
like its IEEE bit pattern read as an integer, so the selection works on int32 *keys*:

- key ``0`` is reserved for elements pruned before (a pruned weight ranks below
  everything, so masks never revive);
- a score ``s`` has key ``bits(s) + 1`` (``+0`` -> 1, ``+inf`` -> ``0x7F800001``);
- every NaN has key ``0x7F800002``: **NaN ranks above +inf** (never pruned before a
  number; several NaNs in index order), as ``torch.topk`` treats NaN as the largest.

**The driver** (:func:`prune_smallest`) finds the k-th smallest key ``T`` by radix
selection: ``ceil(31 / digit)`` passes, each a histogram (summed over the arrays, and
over participants with :func:`gradclip_core.backend.all_reduce`: one collective per
pass) of the next ``digit`` bits of the keys whose higher bits equal the prefix found
so far. Then every key ``< T`` is pruned and, of the keys ``== T``, the first
``k - count(key < T)`` in global flat order (a running tie count; on shards, the ties
of earlier arrays and earlier participants come from one ``all_gather``). A single
process is the sharded case with identity collectives.

Backends supply only kernels, as a :class:`Selection` registered for their namespace
(:func:`gradclip_core.backend.register_selection`): the digit width, a chunk size, how to compute keys and
histograms (torch: ``bincount`` over 1M-element chunks with reused buffers; JAX:
``at[].add`` in one ``lax.fori_loop``; NumPy: ``bincount``), how to write a chunk of
masks, and, for eager backends with dynamic shapes, a *compaction* finish: after the
first pass, one more pass writes every decided mask element and gathers the few keys
in the k-th key's bin, whose order is then resolved by a stable sort of those alone.
A selection of only a few elements in all (at most ``Selection.sort_limit``: one score
per unit of a weight, per block) is one stable sort of their keys on the chunked kernels,
whose radix passes cost ``2**digit`` bins however few the keys. Every path gives the same
masks and threshold, bit for bit (tests check each against the portable default).

Masks are **bool** arrays (``True`` = kept). Counts use the namespace's default
integer (int64; int32 under JAX without x64, which limits a selection to 2**31 - 1
elements in total).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from ..backend._collective import active, all_gather, all_reduce, participant_index
from ..backend._namespace import device_kw, namespace
from ..backend._primitives import size, sort_keys, unpermute
from ..backend._selection import KEY_BITS, Selection, _count, selection_for
from .._hash import hash_scores
from ._scores import ordered

__all__ = ["prune_smallest"]


def _pick(xp: Any, v: Any, i: Any) -> Any:
    """``v[i]`` for a 1-d ``v`` and a 0-d integer ``i`` (one-hot sum: only where/sum needed)."""
    slots = xp.arange(v.shape[0], dtype=xp.int32, **device_kw([v]))
    return xp.sum(xp.where(slots == xp.astype(i, xp.int32), v, xp.zeros_like(v)))


def prune_smallest(
    xp: Any,
    xs: Sequence[Any],
    k: Any,
    masks: Sequence[Any] | None = None,
    divisors: Sequence[Any] | None = None,
    signed: bool = False,
    hashed: Sequence[Any] | None = None,
) -> tuple[list, Any]:
    """Keep-masks pruning exactly the ``k`` smallest scores of ``xs`` together.

    Args:
      xs: arrays; the score of an element is ``|x|`` in float32 (divided by
        ``divisors[i]`` for array ``i`` when given).
      k: how many to prune (Python int or 0-d integer array), clamped to ``[0, n]`` (under a
        collective it must be at most the global element count, as the rules compute it).
      masks: current keep-masks (bool); elements already pruned rank first and stay
        pruned (the result is ANDed with them, so more than ``k`` may be pruned).
      divisors: optional 0-d float32 arrays, one per array.
      signed: the arrays are signed float32 scores ranked as
        :func:`gradclip_core.prune._scores.ordered` ranks them (movement scores), not
        ``|x|``; the backend's ``signed_keys`` kernel computes their keys chunk by chunk
        (without one, the ordered scores are made first: a temporary per array).
      hashed: one :class:`gradclip_core._hash.HashScores` per array: the scores are those
        random scores, not ``|x|`` (``xs`` give only the shapes and devices); the
        backend's ``hash_keys`` kernel computes their keys chunk by chunk (without one,
        :func:`gradclip_core._hash.hash_scores` makes them first: a temporary per array).

    Returns:
      ``(keep_masks, threshold)``: bool arrays shaped like ``xs``, and the score of
      the last pruned element in the total order (float32 0-d; 0 when nothing new is
      pruned; NaN when a NaN had to be pruned).

    Example:
      >>> import numpy as np
      >>> keep, thr = prune_smallest(None, [np.array([0.5, -0.1], np.float32), np.array([2.0, 0.2], np.float32)], 2)
      >>> [m.tolist() for m in keep], round(float(thr), 6)
      ([[True, False], [True, False]], 0.2)
    """
    xs = list(xs)
    if xp is None:
        xp = namespace(*xs)
    sel = selection_for(xp, xs)
    if signed and divisors is not None:
        raise ValueError("prune_smallest: signed scores take no divisors")
    if signed and sel.signed_keys is None:
        xs, signed = [ordered(xp, x) for x in xs], False
    if hashed is not None:
        hashed = list(hashed)
        if signed or divisors is not None or len(hashed) != len(xs):
            raise ValueError("prune_smallest: hashed scores take one HashScores per array, no divisors, not signed")
        if sel.hash_keys is None:
            xs, hashed = [xp.asarray(hash_scores(xp, tuple(x.shape), h), **device_kw([x])) for x, h in zip(xs, hashed)], None
        elif sel.hash_chunk is not None:  # (hashed keys cost more to compute again than to keep: bigger chunks)
            sel = sel._replace(chunk=sel.hash_chunk)
    sharded = active()
    # (chunked kernels write every element of every mask: no fill pass first)
    fresh = xp.ones if sel.chunk is None else xp.empty
    keep: list[Any] = [fresh(x.shape, dtype=xp.bool, **device_kw([x])) for x in xs]
    zero = xp.zeros((), dtype=xp.float32, **device_kw(xs))
    if not xs:
        return keep, zero
    live = [i for i, x in enumerate(xs) if size(x) > 0]
    n = sum(size(x) for x in xs)
    if n == 0 and not sharded:  # (on shards every participant makes every collective, empty or not)
        return keep, zero
    flats = {i: xp.reshape(xs[i], (-1,)) for i in live}
    olds = {i: None if masks is None else xp.reshape(masks[i], (-1,)) for i in live}
    divs = {i: None if divisors is None else divisors[i] for i in live}
    flat_keep = {i: xp.reshape(keep[i], (-1,)) for i in live}
    cdt = xp.count_nonzero(xp.zeros((1,), dtype=xp.bool, **device_kw(xs))).dtype  # the default count dtype
    kk = xp.asarray(k, dtype=cdt, **device_kw(xs)) if not hasattr(k, "shape") else xp.astype(k, cdt)
    kk = xp.maximum(kk, xp.zeros_like(kk))
    if not sharded:  # on shards the caller's k is already at most the global count (no collective for it)
        kk = xp.minimum(kk, xp.full_like(kk, n))

    ws = None if sel.workspace is None else sel.workspace(xp, [flats[i] for i in live], sel.chunk)

    def keys(i: int, s: int, e: int) -> Any:  # the keys of elements s .. e - 1 of array i
        whole_ = s == 0 and e == size(flats[i])
        old = olds[i] if whole_ or olds[i] is None else olds[i][s:e]
        if hashed is not None:
            return sel.hash_keys(xp, hashed[i], s, e - s, old, ws)
        x = flats[i] if whole_ else flats[i][s:e]
        return sel.signed_keys(xp, x, old, ws) if signed else sel.keys(xp, x, old, divs[i], ws)

    if sel.chunk is not None and not sharded and n <= sel.sort_limit:  # a few keys: one sort
        parts = [(i, s, min(size(flats[i]), s + sel.chunk)) for i in live for s in range(0, size(flats[i]), sel.chunk)]
        copy = len(parts) > 1  # (the kernels may compute every chunk's keys in the same workspace)
        return _by_sort(xp, sel, xs, live, [xp.asarray(keys(*p), copy=copy) for p in parts], kk, masks, cdt)

    # One chunk in all (one array of at most ``chunk`` elements: a per-array selection): its keys are
    # computed once, in the workspace, for every pass (no kernel writes the buffer keys are made in).
    if sel.chunk is None or (len(live) == 1 and size(flats[live[0]]) <= sel.chunk):
        whole = {i: keys(i, 0, size(flats[i])) for i in live}

        def chunks() -> Any:
            for i in live:
                yield i, 0, size(flats[i]), whole[i]
    else:

        def chunks() -> Any:
            for i in live:
                m = size(flats[i])
                for s in range(0, m, sel.chunk):
                    e = min(m, s + sel.chunk)
                    yield i, s, e, keys(i, s, e)

    digit = sel.digit
    passes = -(-KEY_BITS // digit)
    bins = 1 << digit

    def body(p: Any, carry: tuple, chunks: Callable = chunks) -> tuple:
        prefix, below = carry
        shift = digit * (passes - 1) - digit * p
        hist = None
        for _, _, _, key in chunks():
            hist = sel.histogram(xp, key, shift, prefix, digit, cdt, ws, hist)
        if hist is None:  # no local element (an empty shard)
            hist = xp.zeros((bins,), dtype=cdt, **device_kw(xs))
        hist = all_reduce(xp, hist, "sum")  # one collective per pass
        cum = xp.cumulative_sum(hist) + below  # count(key <= prefix:digit)
        b = xp.minimum(_count(xp, cum < kk, cdt), xp.full_like(kk, bins - 1))
        nxt = xp.bitwise_or(xp.bitwise_left_shift(prefix, digit), xp.astype(b, xp.int32))
        return nxt, _pick(xp, cum, b) - _pick(xp, hist, b), _pick(xp, hist, b)

    start = (xp.zeros((), dtype=xp.int32, **device_kw(xs)), xp.zeros((), dtype=cdt, **device_kw(xs)))
    if sel.gather is not None and not sharded:
        prefix, below, in_bin = body(0, start)
        if int(in_bin) <= sel.compact_limit:
            width = min(sel.chunk, max(size(flats[i]) for i in live))  # (the workspace's width)

            def rank(bin_chunks: Callable) -> tuple:  # the remaining passes, over the gathered keys alone
                return sel.loop(passes - 1, lambda p, c: body(p + 1, c, bin_chunks)[:2], (prefix, below))

            return _finish_compact(xp, sel, keep, flat_keep, chunks, digit * (passes - 1), prefix, kk, below, rank,
                                   width, masks, zero, ws, cdt)
        T, below = sel.loop(passes - 1, lambda p, c: body(p + 1, c)[:2], (prefix, below))
    else:
        T, below = sel.loop(passes, lambda p, c: body(p, c)[:2], start)
    r = kk - below  # ties at T to prune, first in the global flat order

    offsets = None
    if sharded:  # ties before this shard: earlier arrays everywhere, this array on earlier participants
        counts = [xp.zeros((), dtype=cdt, **device_kw(xs)) for _ in xs]
        for i, _, _, key in chunks():
            counts[i] = counts[i] + _count(xp, key == T, cdt)
        table = all_gather(xp, xp.stack(counts))  # (participants, arrays)
        me = xp.arange(table.shape[0], dtype=xp.int32) < xp.astype(xp.asarray(participant_index(xp)), xp.int32)
        earlier = xp.sum(xp.where(xp.reshape(me, (-1, 1)), table, xp.zeros_like(table)), axis=0)
        everywhere = xp.sum(table, axis=0)
        offsets = (xp.cumulative_sum(everywhere) - everywhere) + earlier
    before = xp.zeros((), dtype=cdt, **device_kw(xs))
    running = {i: xp.zeros((), dtype=cdt, **device_kw(xs)) for i in live}
    for i, s, e, key in chunks():
        start_i = before if offsets is None else offsets[i] + running[i]
        out = None if sel.chunk is None else flat_keep[i][s:e]
        kept, ties = sel.keep(xp, key, T, r, start_i, out, ws)
        if sel.chunk is None:
            keep[i] = xp.reshape(kept, tuple(xs[i].shape))
        before = before + ties
        running[i] = running[i] + ties
    if masks is not None:
        _and_old(keep, masks)
    return keep, sel.value(xp, T)


def _by_sort(xp: Any, sel: Selection, xs: list, live: list, keys: list, kk: Any, masks: Any,
             cdt: Any) -> tuple[list, Any]:
    """The driver's result for a few keys in all (at most ``sel.sort_limit``): one stable sort of them.

    A stable ascending sort of the concatenated keys *is* the total order (key, then global
    flat index), so the ``kk`` first are pruned: an element is kept when its rank is
    ``>= kk``, and the threshold is the value of the ``kk``-th key (key 0, so 0, when only
    elements pruned before are). For the chunked (eager) kernels, whose radix passes cost
    ``2**digit`` bins each however few the keys are: a unit norm per row of a weight is a
    few thousand scores. Same masks and threshold as the passes, bit for bit.
    """
    allk = xp.concat(keys) if len(keys) > 1 else keys[0]  # (the keys of every chunk of every array, in order)
    n = size(allk)
    sorted_keys, order = sort_keys(xp, allk)
    rank = unpermute(xp, xp.arange(n, dtype=cdt, **device_kw([allk])), order)
    kept = rank >= kk
    last = xp.take(sorted_keys, xp.reshape(xp.maximum(kk - 1, xp.zeros_like(kk)), (1,)))[0]
    T = xp.where(kk > 0, last, xp.zeros_like(last))
    keep = [xp.ones(x.shape, dtype=xp.bool, **device_kw([x])) for x in xs]
    start = 0
    for i in live:
        m = size(xs[i])
        keep[i] = xp.reshape(kept[start:start + m], tuple(xs[i].shape))
        start += m
    if masks is not None:
        _and_old(keep, masks)
    return keep, sel.value(xp, T)


def _and_old(keep: list, masks: Sequence[Any]) -> None:
    """``keep[i] &= masks[i]``: in place where arrays are mutable (no second set of masks), else rebound."""
    for i, o in enumerate(masks):
        keep[i] &= o


def _finish_compact(xp: Any, sel: Selection, keep: list, flat_keep: dict, chunks: Callable, shift: int, b1: Any,
                    kk: Any, below: Any, rank: Callable, width: int, masks: Any, zero: Any, ws: Any,
                    cdt: Any) -> tuple[list, Any]:
    """Eager compaction: write the decided masks, gather the k-th key's bin, rank the bin's keys alone.

    The gathered keys (in the global flat order) take the remaining radix passes
    (``rank``: the driver's histogram passes over them, in ``width``-element chunks) and
    the tie-counting ``keep``: no sort, so a bin of many equal keys (zero gradients of
    inactive weights, say) costs one histogram. Eager backends only (it reads the bin
    size on the host).
    """
    cand_keys, where = [], []
    for i, s, e, key in chunks():
        bin_keys, positions = sel.gather(xp, key, shift, b1, flat_keep[i][s:e], ws)
        if size(bin_keys):
            cand_keys.append(bin_keys)
            where.append((i, s, positions))
    thr = zero
    if cand_keys:
        ck = xp.concat(cand_keys) if len(cand_keys) > 1 else cand_keys[0]
        m_all = size(ck)

        def bin_chunks() -> Any:
            for s in range(0, m_all, width):
                yield None, s, min(m_all, s + width), ck[s:s + width]

        r0 = int(kk - below)  # ties to prune in the bin (> 0 unless k is 0)
        T, below = rank(bin_chunks)
        r = kk - below  # those at the bin's k-th key T, first in the global flat order
        kept = xp.empty(ck.shape, dtype=xp.bool, **device_kw([ck]))
        before = xp.zeros((), dtype=cdt, **device_kw([ck]))
        for _, s, e, key in bin_chunks():
            _, ties = sel.keep(xp, key, T, r, before, kept[s:e], ws)
            before = before + ties
        start = 0
        for i, s, positions in where:
            m = size(positions)
            sel.scatter(xp, flat_keep[i], positions + s, kept[start:start + m])
            start += m
        if r0 > 0:
            thr = sel.value(xp, T)
    if masks is not None:
        _and_old(keep, masks)
    return keep, thr
