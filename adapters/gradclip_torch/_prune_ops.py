"""torch versions of the core's pruning primitives (see :mod:`gradclip_core._select`).

``prune_smallest`` is the exact global selection of the k smallest ``|w|`` by
(score, global flat index), NaN last, computed chunk by chunk (``CHUNK`` elements of
one tensor at a time, views, no concatenation of the weights):

1. histogram of the top 16 bits of every key (``torch.bincount``, 65536 bins); the
   bin ``b1`` holding the k-th key follows from the cumulative counts;
2. eager CPU, and fewer than ``CANDIDATES`` keys in ``b1``: one more pass writes
   ``key > bin`` into the masks and gathers the keys and flat indices of bin ``b1``;
   a stable sort of those few resolves the exact cut (ties by global index);
   otherwise (CUDA, ``torch.compile``, shards, huge bins): a second 15-bit histogram
   inside ``b1`` gives the exact key ``T``, and a third pass writes the masks, breaking
   ties at ``T`` by a running cumulative sum without a host sync (eager CPU: by a tie
   count per chunk, see :func:`_write_masks_cpu`).

Eager CPU passes are branch-free (``where``/``masked_fill_`` with a data-dependent
mask branch per element on CPU: see :func:`_zero_where_not`).

Extra memory is a few chunk-sized temporaries plus the bool masks (1 byte per weight).
Keys are those of the core: ``bits(|w|) + 1``, 0 for elements pruned before, NaN
canonical above +inf, so the masks equal the portable default's bit for bit.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

import array_api_compat.torch as _XP
from gradclip_core._collective import active, all_gather, all_reduce

from ._ops import _owned_ids

__all__ = ["prune_smallest", "order_keys", "apply_masks", "cond", "register"]

NAMESPACE = "array_api_compat.torch"
CHUNK = 1 << 20
CANDIDATES = 1 << 22
EAGER_CPU = True  # host-synchronising CPU paths (tests turn them off to check the CUDA/compile path on CPU)
_NAN_BITS = 0x7F800001


def order_keys(xp: Any, s: torch.Tensor) -> torch.Tensor:
    """``bits(s)`` as int32 (``s`` float32, non-negative), every NaN ``0x7F800001``."""
    del xp
    k = s.contiguous().view(torch.int32) & 0x7FFFFFFF
    return k.clamp_(max=_NAN_BITS)


def _keys(
    x: torch.Tensor,
    old: torch.Tensor | None,
    divisor: torch.Tensor | None,
    buf: torch.Tensor | None = None,
    ibuf: torch.Tensor | None = None,
) -> torch.Tensor:
    """Core keys of a flat chunk: ``bits(|x| / d) + 1``, 0 where ``old`` is False.

    Written into ``buf`` (a float32 scratch buffer reused across chunks; ``ibuf`` an int32
    one for the old mask) when given: no allocation per chunk, so nothing fragments the heap (a
    per-chunk temporary interleaved with the small candidate tensors kept across
    chunks made glibc's heap grow by ~1 GB on GPT-2 small).
    """
    v = torch.empty(x.shape, dtype=torch.float32, device=x.device) if buf is None else buf[: x.numel()]
    if x.dtype == torch.float32:
        torch.abs(x, out=v)
    else:
        v.copy_(x).abs_()
    if divisor is not None:
        v.div_(divisor)
    k = v.view(torch.int32)
    k.clamp_(max=_NAN_BITS).add_(1)  # abs cleared the sign: every NaN is > inf's bits; one NaN key
    if old is not None:
        if _branch_free(k.device):
            _and_mask(k, old, torch.empty_like(k) if ibuf is None else ibuf[: k.numel()])
        else:
            k.masked_fill_(torch.logical_not(old), 0)
    return k


def _chunks(flats: list[torch.Tensor]):
    offset = 0
    for i, f in enumerate(flats):
        n = f.numel()
        for s in range(0, n, CHUNK):
            e = min(n, s + CHUNK)
            yield i, s, e, offset + s
        offset += n


def prune_smallest(
    xp: Any,
    xs: Sequence[torch.Tensor],
    k: Any,
    masks: Sequence[torch.Tensor] | None = None,
    divisors: Sequence[torch.Tensor] | None = None,
):
    """The core's ``prune_smallest`` (same masks, same threshold) by chunked radix selection.

    Example:
      >>> import torch
      >>> keep, thr = prune_smallest(None, [torch.tensor([0.5, -0.1]), torch.tensor([2.0, 0.2])], 2)
      >>> [m.tolist() for m in keep], round(float(thr), 6)
      ([[True, False], [True, False]], 0.2)
    """
    del xp
    xs = list(xs)
    if not xs:
        return [], torch.zeros(())
    device = xs[0].device
    if any(x.device != device for x in xs):
        return NotImplemented
    flats = [x.reshape(-1) for x in xs]
    olds = [None] * len(xs) if masks is None else [m.reshape(-1) for m in masks]
    divs = [None] * len(xs) if divisors is None else [d.to(device=device, dtype=torch.float32) for d in divisors]
    n = sum(f.numel() for f in flats)
    keep = [torch.ones(x.shape, dtype=torch.bool, device=device) for x in xs]
    zero = torch.zeros((), dtype=torch.float32, device=device)
    sharded = active()  # shards of DTensors: every pass's histogram is summed over ranks
    if n == 0 and not sharded:
        return keep, zero
    kk = torch.as_tensor(k, device=device).to(torch.int64)
    if not sharded:
        kk = kk.clamp(0, n)

    width = max(1, min(CHUNK, max(f.numel() for f in flats)))
    buf = torch.empty(width, dtype=torch.float32, device=device)
    top_buf = torch.empty(width, dtype=torch.int32, device=device)
    flag_buf = torch.empty(width, dtype=torch.bool, device=device)
    live_buf = None if masks is None else torch.empty(width, dtype=torch.int32, device=device)

    def keys(i: int, s: int, e: int) -> torch.Tensor:
        old = None if olds[i] is None else olds[i][s:e]
        return _keys(flats[i][s:e], old, divs[i], buf, live_buf)

    def top16(key: torch.Tensor) -> torch.Tensor:
        return torch.bitwise_right_shift(key, 15, out=top_buf[: key.numel()])

    hist = torch.zeros(1 << 16, dtype=torch.int64, device=device)
    for i, s, e, _ in _chunks(flats):
        hist += torch.bincount(top16(keys(i, s, e)), minlength=1 << 16)
    if sharded:
        hist = all_reduce(None, hist, "sum")  # one collective per pass
        kk = torch.minimum(kk.clamp(min=0), hist.sum())  # the global element count
    cum = hist.cumsum(0)
    b1 = torch.searchsorted(cum, kk.reshape(1)).clamp(max=(1 << 16) - 1)[0]
    below1 = cum[b1] - hist[b1]
    flat_keep = [m.reshape(-1) for m in keep]
    eager_cpu = EAGER_CPU and device.type == "cpu" and not sharded and not torch.compiler.is_compiling()
    if eager_cpu and int(hist[b1]) <= CANDIDATES:
        b1_ = int(b1)
        cand_keys, cand_pos = [], []
        for i, s, e, g in _chunks(flats):
            hi = keys(i, s, e)
            top = top16(hi)
            torch.gt(top, b1_, out=flat_keep[i][s:e])
            idx = torch.eq(top, b1_, out=flag_buf[: e - s]).nonzero().reshape(-1)
            if idx.numel():
                cand_keys.append(hi[idx])
                cand_pos.append((i, s, idx))
        r = int(kk - below1)
        if not cand_keys:
            return keep, zero
        ck = torch.cat(cand_keys)
        order = torch.sort(ck, stable=True).indices
        rank = torch.empty_like(order)
        rank[order] = torch.arange(order.numel(), device=device)
        pruned = rank < r
        start = 0
        for (i, s, idx) in cand_pos:
            m = idx.numel()
            flat_keep[i][s + idx] = ~pruned[start:start + m]
            start += m
        T = ck[order[r - 1]] if r > 0 else torch.zeros((), dtype=torch.int32)
    else:
        if eager_cpu:  # branch-free: below the bin -> 0, key v in it -> v + 1, above -> 2**15 + 1
            base = (int(b1) << 15) - 1
            hist2 = torch.zeros((1 << 15) + 2, dtype=torch.int64, device=device)
            for i, s, e, _ in _chunks(flats):
                low = torch.sub(keys(i, s, e), base, out=top_buf[: e - s]).clamp_(0, (1 << 15) + 1)
                hist2 += torch.bincount(low, minlength=(1 << 15) + 2)
            hist2 = hist2[1:]
        else:
            hist2 = torch.zeros((1 << 15) + 1, dtype=torch.int64, device=device)
            for i, s, e, _ in _chunks(flats):
                key = keys(i, s, e)
                low = torch.where((key >> 15) == b1, key & 0x7FFF, 1 << 15)
                hist2 += torch.bincount(low, minlength=(1 << 15) + 1)
        if sharded:
            hist2 = all_reduce(None, hist2, "sum")
        cum2 = hist2[: 1 << 15].cumsum(0)
        rem = (kk - below1).reshape(1)
        b2 = torch.searchsorted(cum2, rem).clamp(max=(1 << 15) - 1)[0]
        T = (b1 << 15) | b2
        r = kk - below1 - (cum2[b2] - hist2[b2])
        if eager_cpu:
            _write_masks_cpu(flats, flat_keep, keys, int(T), int(r), flag_buf)
        else:
            offsets = _tie_offsets(flats, keys, T, device) if sharded else None
            _write_masks(flats, flat_keep, keys, T, r, offsets)
    if masks is not None:
        for m, o in zip(keep, masks):
            m &= o
    T = torch.as_tensor(T, device=device).to(torch.int32)
    thr = torch.where(T > 0, (T - 1).clamp(min=0).reshape(1).view(torch.float32)[0], zero)
    return keep, thr


def _write_masks(flats, flat_keep, keys, T: torch.Tensor, r: torch.Tensor, offsets: torch.Tensor | None) -> None:
    """Masks for an exact key ``T`` without a host sync (CUDA, compile, shards).

    Ties at ``T`` are kept after the first ``r`` in the global order, counted by a
    running cumulative sum; ``offsets`` are the ties before this shard (sharded arrays).
    """
    device = T.device
    running = torch.zeros((), dtype=torch.int64, device=device)
    for i, s, e, _ in _chunks(flats):
        key = keys(i, s, e)
        eq = key == T
        start = running if offsets is None else offsets[i] + running
        cs = eq.cumsum(0) + start
        flat_keep[i][s:e] = (key > T) | (eq & (cs > r))
        running = running + eq.sum()
        if offsets is not None and e == flats[i].numel():
            running = torch.zeros((), dtype=torch.int64, device=device)  # next array: its own offset


def _write_masks_cpu(flats, flat_keep, keys, T: int, r: int, flag_buf: torch.Tensor) -> None:
    """Masks for an exact key ``T``: ``key > T``, and ties at ``T`` kept after the first ``r``.

    Chunk by chunk, with the tie count read per chunk (CPU: no device sync to pay): a
    chunk before the ``r``-th tie takes ``key > T``, one after it ``key >= T``, and only
    the chunk holding it looks at positions. No cumulative sum over the weights.
    """
    running = 0
    for i, s, e, _ in _chunks(flats):
        key, out = keys(i, s, e), flat_keep[i][s:e]
        if running >= r:
            torch.ge(key, T, out=out)
            continue
        eq = torch.eq(key, T, out=flag_buf[: e - s])
        c = int(torch.count_nonzero(eq))
        if running + c <= r:
            torch.gt(key, T, out=out)
        else:
            torch.ge(key, T, out=out)
            out[eq.nonzero().reshape(-1)[: r - running]] = False
        running += c


def _tie_offsets(flats: list[torch.Tensor], keys: Any, T: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Sharded ties: for each array, how many elements with key ``T`` precede this shard.

    In the global flat order (array by array; within an array, shards in rank order,
    FSDP2's ``Shard(0)``): ties of earlier arrays on every rank, plus ties of this array
    on earlier ranks. One extra pass counting the ties per array, one collective.
    """
    counts = torch.zeros(len(flats), dtype=torch.int64, device=device)
    for i, s, e, _ in _chunks(flats):
        counts[i] += (keys(i, s, e) == T).sum()
    table = all_gather(_XP, counts)  # (ranks, arrays)
    from gradclip_core._collective import _need

    rank = int(_need("index", "exact pruning ties")(_XP))
    everywhere = table.sum(0)
    earlier_arrays = everywhere.cumsum(0) - everywhere
    return earlier_arrays + table[:rank].sum(0)


_BITS = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def _zero_where_not(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """``x[~m] = +0`` in place on a contiguous CPU float tensor, by ``bits(x) & -m``, chunk by chunk.

    Bit-identical to ``where(m, x, 0)`` (kept elements untouched, NaNs included; pruned
    ones become +0.0) but branch-free: torch's CPU ``where``/``masked_fill_`` take a
    data-dependent branch per element, and a magnitude mask is a coin flip per element,
    so they ran ~10x slower than this on GPT-2-small (0.47 s vs 0.045 s for 124M weights).
    """
    bits = x.view(_BITS[x.element_size()]).reshape(-1)
    flat = m.reshape(-1)
    buf = torch.empty(min(CHUNK, bits.numel()), dtype=bits.dtype)
    for s in range(0, bits.numel(), CHUNK):
        e = min(bits.numel(), s + CHUNK)
        _and_mask(bits[s:e], flat[s:e], buf[: e - s])
    return x


def _and_mask(bits: torch.Tensor, mask: torch.Tensor, buf: torch.Tensor) -> None:
    """``bits &= -mask`` in place (True -> all ones, False -> 0), ``buf`` of ``bits``' size and dtype."""
    bits.bitwise_and_(buf.copy_(mask).neg_())


def _branch_free(device: torch.device) -> bool:
    """Whether masking on ``device`` takes the branch-free bit path (eager CPU; see :func:`_zero_where_not`)."""
    return device.type == "cpu" and not torch.compiler.is_compiling()


def apply_masks(xp: Any, xs: list[torch.Tensor], masks: list[torch.Tensor]) -> list[torch.Tensor]:
    """``where(mask, x, 0)``; in place on tensors the adapter owns.

    Eager CPU float tensors take the branch-free bit mask of :func:`_zero_where_not`;
    CUDA, ``torch.compile`` and other dtypes take ``torch.where``.
    """
    del xp
    ids = _owned_ids()
    out = []
    for x, m in zip(xs, masks):
        owned = ids is not None and id(x) in ids
        if (_branch_free(x.device) and m.device == x.device and x.is_floating_point()
                and x.element_size() in _BITS and m.shape == x.shape and m.dtype == torch.bool
                and (x.is_contiguous() or not owned)):
            y = x if owned else x.clone(memory_format=torch.contiguous_format)
            out.append(_zero_where_not(y, m.contiguous()))
            continue
        zero = torch.zeros((), dtype=x.dtype, device=x.device)
        out.append(torch.where(m, x, zero, out=x) if owned else torch.where(m, x, zero))
    return out


def cond(xp: Any, pred: Any, true_fn: Any, false_fn: Any) -> Any:
    """A Python branch in eager mode (reads ``pred``: one host sync on CUDA); ``where`` under compile."""
    del xp
    if torch.compiler.is_compiling():
        return NotImplemented
    return true_fn() if bool(pred) else false_fn()


def register() -> None:
    """Register the pruning primitives for torch tensors with the core.

    Example:
      >>> register()  # done once by ``import gradclip_torch``
    """
    import gradclip_core as gc

    gc.register_multi_ops(NAMESPACE, prune_smallest=prune_smallest, order_keys=order_keys, apply_masks=apply_masks, cond=cond)
