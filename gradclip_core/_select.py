"""Exact selection of the k smallest scores over many arrays, without sorting or concatenating.

The total order (DESIGN.md): score ascending, then *global flat index* ascending, where
the global flat index is an element's position in the concatenation of all arrays in
order (row-major within each array). Nothing is concatenated: each array is visited
in order and its global offset is carried as a running count.

Scores are non-negative float32 values (``|w|`` for magnitude pruning, bf16/fp16 are
upcast exactly, float64 is rounded to float32). Every non-negative float32 orders
like its IEEE bit pattern read as an integer, so the selection works on int32 *keys*:

- key ``0`` is reserved for elements pruned before (a pruned weight ranks below
  everything, so masks never revive);
- a score ``s`` has key ``bits(s) + 1`` (``+0`` -> 1, ``+inf`` -> ``0x7F800001``);
- every NaN has key ``0x7F800002``: **NaN ranks above +inf** (never pruned before a
  number; several NaNs in index order), as ``torch.topk`` treats NaN as the largest.

The k-th smallest key ``T`` is found by binary lifting over the 31 key bits (31
passes of one ``count_nonzero`` per array; exact, fixed shapes, no host sync). Then
every element with key ``< T`` is pruned and, among the elements with key ``== T``,
the first ``k - count(key < T)`` by global flat index (a running ``cumulative_sum`` of
the tie flags). Adapters replace :func:`prune_smallest` with faster exact versions
(torch: a chunked 2-pass radix histogram, see ``gradclip_torch._ops``).

Masks are **bool** arrays (``True`` = kept). Counts use the namespace's default
integer (int64; int32 under JAX without x64, which limits a selection to 2**31 - 1
elements in total).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from ._collective import active, all_gather, all_reduce, static_total
from ._multi import override, register_multi_ops, size, upcast

__all__ = [
    "order_keys",
    "prune_smallest",
    "apply_masks",
    "cond",
    "NAN_KEY",
    "float32_scores",
]

NAN_KEY = 0x7F800002  # after the +1 shift; +inf is 0x7F800001
_BITS_NAN = 0x7F800001  # canonical NaN bit key before the shift
_KEY_BITS = 31


def float32_scores(xp: Any, x: Any, divisor: Any = None) -> Any:
    """``|x|`` as float32 (optionally divided by a 0-d float32 ``divisor``)."""
    s = xp.abs(upcast(xp, x, xp.float32))
    if divisor is not None:
        s = s / divisor
    return s


def _bits_numpy(xp: Any, s: Any) -> Any:
    b = np.asarray(s, dtype=np.float32).view(np.int32)
    return np.where(np.isnan(s), np.int32(_BITS_NAN), b)


def _bits_portable(xp: Any, s: Any) -> Any:
    """IEEE bit pattern of non-negative float32 ``s`` as int32, with Array API ops only.

    Normalises ``y = s / 2**e`` into ``[1, 2)`` by exact multiplications with powers of
    two (a fixed sequence of selects), then ``bits = (e + 127) * 2**23 + (y - 1) * 2**23``
    for normal numbers and ``s * 2**149`` for subnormals. Exact for every float32 (given IEEE
    subnormal arithmetic; XLA on CPU flushes subnormals, so JAX uses a bitcast).
    """
    nan, inf, zero = xp.isnan(s), xp.isinf(s), s == 0
    y = xp.where(nan | inf | zero, xp.ones_like(s), s)
    e = xp.zeros(s.shape, dtype=xp.int32)
    for b in (64, 32, 16, 8, 4, 2, 1):
        big = y >= 2.0**b
        y = xp.where(big, y * 2.0**-b, y)
        e = e + xp.where(big, xp.asarray(b, dtype=xp.int32), xp.asarray(0, dtype=xp.int32))
    for b in (64, 64, 32, 16, 8, 4, 2, 1):
        small = y < 2.0 ** (1 - b)
        y = xp.where(small, y * 2.0**b, y)
        e = e - xp.where(small, xp.asarray(b, dtype=xp.int32), xp.asarray(0, dtype=xp.int32))
    mant = xp.astype((y - 1.0) * 8388608.0, xp.int32)
    normal = (e + 127) * 8388608 + mant
    tiny = xp.where(e >= -126, xp.zeros_like(s), s)  # subnormals only (no overflow below)
    sub = xp.astype((tiny * 2.0**100) * 2.0**49, xp.int32)  # exact: multiples of 2**-149
    out = xp.where(e >= -126, normal, xp.where(zero, xp.zeros_like(normal), sub))
    out = xp.where(zero, xp.zeros_like(out), out)
    out = xp.where(inf, xp.full_like(out, 0x7F800000), out)
    return xp.where(nan, xp.full_like(out, _BITS_NAN), out)


def order_keys(xp: Any, s: Any) -> Any:
    """int32 keys of non-negative float32 scores (NaN canonical), before the +1 shift.

    ``key(a) < key(b)`` iff ``a < b`` for numbers; every NaN has the key just above
    +inf. Overridable (``"order_keys"``): NumPy uses a bit view, torch ``.view(int32)``,
    JAX ``lax.bitcast_convert_type``; the portable default is arithmetic.
    """
    fast = override(xp, "order_keys")
    if fast is not None:
        return fast(xp, s)
    return _bits_portable(xp, s)


def _count(xp: Any, flag: Any) -> Any:
    return xp.count_nonzero(flag)


def _total(xp: Any, parts: list) -> Any:
    acc = parts[0]
    for p in parts[1:]:
        acc = acc + p
    return acc


def prune_smallest(
    xp: Any,
    xs: Sequence[Any],
    k: Any,
    masks: Sequence[Any] | None = None,
    divisors: Sequence[Any] | None = None,
) -> tuple[list, Any]:
    """Keep-masks pruning exactly the ``k`` smallest scores of ``xs`` together.

    Args:
      xs: arrays; the score of an element is ``|x|`` in float32 (divided by
        ``divisors[i]`` for array ``i`` when given).
      k: how many to prune (Python int or 0-d integer array), clamped to ``[0, n]``.
      masks: current keep-masks (bool); elements already pruned rank first and stay
        pruned (the result is ANDed with them, so more than ``k`` may be pruned).
      divisors: optional 0-d float32 arrays, one per array.

    Returns:
      ``(keep_masks, threshold)``: bool arrays shaped like ``xs``, and the score of
      the last pruned element in the total order (float32 0-d; 0 when nothing new is
      pruned; NaN when a NaN had to be pruned).
    """
    xs = list(xs)
    fast = override(xp, "prune_smallest")
    if fast is not None:
        res = fast(xp, xs, k, masks, divisors)
        if res is not NotImplemented:
            return res
    if active():
        return _prune_smallest_sharded(xp, xs, k, masks, divisors)
    live = [i for i, x in enumerate(xs) if size(x) > 0]
    keep: list[Any] = [xp.ones(x.shape, dtype=xp.bool) for x in xs]
    zero = xp.zeros((), dtype=xp.float32)
    if not live:
        return keep, zero
    scores, keys = {}, {}
    for i in live:
        s = float32_scores(xp, xs[i], None if divisors is None else divisors[i])
        key = order_keys(xp, s) + 1
        if masks is not None:
            key = xp.where(masks[i], key, xp.zeros_like(key))
        scores[i], keys[i] = s, key
    n = sum(size(xs[i]) for i in live)
    cnt0 = _count(xp, xp.zeros((1,), dtype=xp.bool))  # a 0 of the count dtype
    kk = xp.asarray(k, dtype=cnt0.dtype) if not hasattr(k, "shape") else xp.astype(k, cnt0.dtype)
    kk = xp.minimum(xp.maximum(kk, xp.zeros_like(kk)), xp.full_like(kk, n))
    pos = xp.zeros((), dtype=xp.int32)
    for b in range(_KEY_BITS - 1, -1, -1):
        cand = pos + (2**b - 1)
        c = _total(xp, [_count(xp, keys[i] <= cand) for i in live])
        pos = xp.where(c < kk, pos + 2**b, pos)
    below = _total(xp, [_count(xp, keys[i] < pos) for i in live])
    r = kk - below
    before = cnt0
    thr = zero
    for i in live:
        key = keys[i]
        eq = key == pos
        flat = xp.reshape(eq, (-1,))
        cs = xp.cumulative_sum(xp.astype(flat, cnt0.dtype)) + before
        tie_pruned = xp.reshape(flat & (cs <= r), key.shape)
        keep[i] = (key > pos) | (eq & xp.logical_not(tie_pruned))
        if masks is not None:
            keep[i] = keep[i] & masks[i]
        before = before + _count(xp, eq)
        thr = xp.maximum(thr, xp.max(xp.where(eq, scores[i], zero)))
    thr = xp.where(pos == 0, zero, thr)
    return keep, thr


def _prune_smallest_sharded(
    xp: Any,
    xs: list,
    k: Any,
    masks: Sequence[Any] | None,
    divisors: Sequence[Any] | None,
) -> tuple[list, Any]:
    """:func:`prune_smallest` on shards (a collective is active), same masks as one process.

    Every count is summed over participants: the 31 selection passes cost one
    collective each, then one for ``count(key < T)`` and the per-array tie counts
    (gathered, so each shard knows how many ties precede it in the global flat order:
    earlier arrays on every participant, then this array on earlier participants;
    shards split the leading axis in participant order, see
    :mod:`gradclip_core._collective`). The element count ``n`` is the global one. So the
    threshold, the pruned count and the masks (ties included) equal the single-process
    result. Empty shards take part in every collective.
    """
    keep: list[Any] = [xp.ones(x.shape, dtype=xp.bool) for x in xs]
    zero = xp.zeros((), dtype=xp.float32)
    if not xs:
        return keep, zero
    scores, keys = [], []
    for i, x in enumerate(xs):
        s = float32_scores(xp, x, None if divisors is None else divisors[i])
        key = order_keys(xp, s) + 1 if size(x) else xp.zeros(x.shape, dtype=xp.int32)
        if masks is not None:
            key = xp.where(masks[i], key, xp.zeros_like(key))
        scores.append(s)
        keys.append(key)
    n = static_total(sum(size(x) for x in xs))
    cnt0 = _count(xp, xp.zeros((1,), dtype=xp.bool))
    kk = xp.asarray(k, dtype=cnt0.dtype) if not hasattr(k, "shape") else xp.astype(k, cnt0.dtype)
    kk = xp.minimum(xp.maximum(kk, xp.zeros_like(kk)), xp.full_like(kk, n))

    def global_count(flag_of: Callable[[Any], Any]) -> Any:
        return all_reduce(xp, _total(xp, [_count(xp, flag_of(key)) for key in keys]), "sum")

    pos = xp.zeros((), dtype=xp.int32)
    for b in range(_KEY_BITS - 1, -1, -1):
        cand = pos + (2**b - 1)
        c = global_count(lambda key: key <= cand)
        pos = xp.where(c < kk, pos + 2**b, pos)
    ties = xp.stack([_count(xp, key == pos) for key in keys] + [_total(xp, [_count(xp, key < pos) for key in keys])])
    table = all_gather(xp, ties)  # (participants, arrays + 1)
    me = xp.arange(table.shape[0], dtype=xp.int32) < xp.astype(xp.asarray(_index(xp)), xp.int32)
    earlier = xp.sum(xp.where(xp.reshape(me, (-1, 1)), table, xp.zeros_like(table)), axis=0)  # on earlier participants
    everywhere = xp.sum(table, axis=0)
    r = kk - everywhere[-1]  # ties to prune at key == pos
    before = cnt0
    thr = zero
    for i, key in enumerate(keys):
        eq = key == pos
        flat = xp.reshape(eq, (-1,))
        cs = xp.cumulative_sum(xp.astype(flat, cnt0.dtype)) + before + earlier[i]
        tie_pruned = xp.reshape(flat & (cs <= r), key.shape)
        keep[i] = (key > pos) | (eq & xp.logical_not(tie_pruned))
        if masks is not None:
            keep[i] = keep[i] & masks[i]
        before = before + everywhere[i]
        if size(key):
            thr = xp.maximum(thr, xp.max(xp.where(eq, scores[i], zero)))
    # Every element with key == pos has the same score: the threshold needs no collective,
    # except on a participant without any such element; take the max over participants
    # of the 0-d results only where a tie exists anywhere (every participant agrees on pos).
    thr = all_reduce(xp, thr, "max")
    thr = xp.where(pos == 0, zero, thr)
    return keep, thr


def _index(xp: Any) -> Any:
    from ._collective import _need

    return _need("index", "exact pruning ties")(xp)


def apply_masks(xp: Any, xs: Sequence[Any], masks: Sequence[Any]) -> list[Any]:
    """``[where(m, x, 0)]``: zero the pruned elements (NaN/Inf pruned become 0 too).

    Overridable (``"apply_masks"``): torch masks its own buffers in place.
    """
    fast = override(xp, "apply_masks")
    if fast is not None:
        res = fast(xp, list(xs), list(masks))
        if res is not NotImplemented:
            return res
    return [xp.where(m, x, xp.zeros_like(x)) for x, m in zip(xs, masks)]


def _tree_where(xp: Any, pred: Any, a: Any, b: Any) -> Any:
    if isinstance(a, (tuple, list)):
        return type(a)(_tree_where(xp, pred, x, y) for x, y in zip(a, b))
    return xp.where(pred, a, b)


def cond(xp: Any, pred: Any, true_fn: Callable[[], Any], false_fn: Callable[[], Any]) -> Any:
    """``true_fn() if pred else false_fn()`` for a 0-d bool array, branch-free by default.

    The default computes both and selects with ``where`` (fixed cost every call).
    Overridable (``"cond"``): JAX uses ``lax.cond``, torch a Python branch in eager mode
    (one host read of ``pred``; the default under ``torch.compile``), so the expensive
    branch (a global threshold) only runs on the steps that need it. Both branches
    return tuples of arrays of the same shapes and dtypes.
    """
    fast = override(xp, "cond")
    if fast is not None:
        res = fast(xp, pred, true_fn, false_fn)
        if res is not NotImplemented:
            return res
    return _tree_where(xp, pred, true_fn(), false_fn())


def _cond_eager(xp: Any, pred: Any, true_fn: Callable[[], Any], false_fn: Callable[[], Any]) -> Any:
    return true_fn() if bool(pred) else false_fn()


register_multi_ops("array_api_compat.numpy", order_keys=_bits_numpy, cond=_cond_eager)
