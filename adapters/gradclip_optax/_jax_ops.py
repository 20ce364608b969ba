"""JAX versions of the core's pruning primitives (see :mod:`gradclip_core._select`).

Registered for the ``jax.numpy`` namespace by :func:`register`, which both JAX
adapters call on import: ``gradclip_optax`` always, ``gradclip_keras`` when the Keras
backend is JAX. This module needs only ``jax`` and ``gradclip_core``.

- ``order_keys``: ``lax.bitcast_convert_type`` (the portable default is arithmetic,
  which XLA on CPU gets wrong for subnormals: it flushes them);
- ``cond``: ``lax.cond``, so a pruning rule recomputes its masks only on its
  schedule's steps, under ``jax.jit`` too;
- ``prune_smallest``: exact radix selection of the k-th smallest key. The portable
  default finds it by 31 unrolled counting passes per array, which XLA takes minutes
  to compile for a model's worth of arrays; here ``PASSES`` radix passes in one
  ``lax.fori_loop`` (a histogram, ``at[].add`` into ``2**DIGIT`` bins, of one digit of
  the int32 keys whose higher digits equal the prefix found so far) give the same key
  ``T``, with one loop body to compile. Then,
  as in the default, every key ``< T`` is pruned and the first
  ``k - count(key < T)`` keys ``== T`` by global flat index (a running cumulative sum).

Same keys as the core (``bits(score) + 1``, 0 for elements pruned before, NaN
canonical above +inf), same counts dtype (the default integer: int32 without x64),
same masks and threshold as the default, bit for bit (a NaN threshold is the canonical
NaN; a subnormal threshold is reported exactly, where the default's ``max`` flushes it
to 0 under XLA on CPU). Nothing is concatenated: each pass adds per-array histograms, and the summed
histogram goes through :func:`gradclip_core._collective.all_reduce` (one call per
pass), so under a collective (``shard_map`` shards) the selection is global; ties then
need one ``all_gather`` of the per-array tie counts, exactly as the default's sharded
path.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp

import gradclip_core as gc
from gradclip_core._collective import _need, active, all_gather, all_reduce, static_total
from gradclip_core._multi import size
from gradclip_core._select import float32_scores

__all__ = ["order_keys", "cond", "prune_smallest", "register", "NAMESPACE", "DIGIT", "PASSES"]

NAMESPACE = "jax.numpy"
DIGIT = 11
"""Bits per radix digit (histograms of ``2**DIGIT`` bins)."""
PASSES = 3
"""Radix passes: ``DIGIT * PASSES >= 31`` covers every key (keys are < 2**31)."""

_NAN_BITS = 0x7F800001  # canonical NaN bits before the +1 shift (just above +inf)
_NAN_KEY = _NAN_BITS + 1


def order_keys(xp: Any, s: jax.Array) -> jax.Array:
    """``bits(s)`` as int32 for non-negative float32 ``s``; every NaN ``0x7F800001``."""
    del xp
    bits = jax.lax.bitcast_convert_type(s.astype(jnp.float32), jnp.int32)
    return jnp.where(jnp.isnan(s), jnp.int32(_NAN_BITS), bits)


def cond(xp: Any, pred: Any, true_fn: Any, false_fn: Any) -> Any:
    """``lax.cond(pred, true_fn, false_fn)``."""
    del xp
    return jax.lax.cond(pred, true_fn, false_fn)


def _histogram(digits: jax.Array, bins: int, dtype: Any) -> jax.Array:
    """Counts of ``digits`` in ``[0, bins)``; other values (out-of-prefix keys) are dropped."""
    return jnp.zeros((bins,), dtype=dtype).at[jnp.reshape(digits, (-1,))].add(jnp.ones((), dtype=dtype), mode="drop")


def _select_key(keys: list, kk: jax.Array, dtype: Any) -> tuple[jax.Array, jax.Array]:
    """``(T, below)``: the ``kk``-th smallest key over ``keys`` (0 when ``kk == 0``) and ``count(key < T)``.

    ``PASSES`` radix passes in a ``lax.fori_loop`` (one loop body to compile): pass ``p``
    histograms digit ``p`` of the keys whose higher digits equal the prefix found so far,
    sums the histograms of all arrays (and over participants, one ``all_reduce``), and
    appends the digit of the bin holding the ``kk``-th key to the prefix.
    """
    bins = 1 << DIGIT

    def body(p: Any, carry: tuple) -> tuple:
        prefix, below = carry
        shift = jnp.int32(DIGIT * (PASSES - 1)) - DIGIT * p.astype(jnp.int32)
        hist = jnp.zeros((bins,), dtype=dtype)
        for key in keys:
            high = jax.lax.shift_right_logical(key, shift + DIGIT)
            digit = jnp.where(high == prefix, jax.lax.shift_right_logical(key, shift) & (bins - 1), bins)
            hist = hist + _histogram(digit, bins, dtype)
        hist = all_reduce(jnp, hist, "sum")  # one collective per pass
        cum = jnp.cumsum(hist) + below  # count(key <= prefix:digit)
        b = jnp.minimum(jnp.sum(cum < kk, dtype=jnp.int32), bins - 1)
        return (prefix << DIGIT) | b, cum[b] - hist[b]

    init = (jnp.zeros((), dtype=jnp.int32), jnp.zeros((), dtype=dtype))
    return jax.lax.fori_loop(0, PASSES, body, init)


def prune_smallest(
    xp: Any,
    xs: Sequence[jax.Array],
    k: Any,
    masks: Sequence[jax.Array] | None = None,
    divisors: Sequence[jax.Array] | None = None,
) -> tuple[list, jax.Array]:
    """The core's ``prune_smallest`` (same masks, same threshold) by radix selection.

    Args:
      xp: the ``jax.numpy`` namespace (unused).
      xs: arrays; an element's score is ``|x|`` in float32 (divided by ``divisors[i]``).
      k: how many to prune (int or 0-d integer array), clamped to ``[0, n]``.
      masks: current bool keep-masks; pruned elements rank first and stay pruned.
      divisors: optional 0-d float32 arrays, one per array.

    Returns:
      ``(keep_masks, threshold)`` as :func:`gradclip_core._select.prune_smallest`.

    Example:
      >>> import jax.numpy as jnp
      >>> keep, thr = prune_smallest(jnp, [jnp.array([0.5, -0.1]), jnp.array([2.0, 0.2])], 2)
      >>> [m.tolist() for m in keep], round(float(thr), 6)
      ([[True, False], [True, False]], 0.2)
    """
    del xp
    xs = list(xs)
    sharded = active()
    keep = [jnp.ones(jnp.shape(x), dtype=bool) for x in xs]
    zero = jnp.zeros((), dtype=jnp.float32)
    live = list(range(len(xs))) if sharded else [i for i, x in enumerate(xs) if size(x) > 0]
    if not live:
        return keep, zero
    keys = {}
    for i in live:
        s = float32_scores(jnp, xs[i], None if divisors is None else divisors[i])
        key = order_keys(jnp, s) + 1
        if masks is not None:
            key = jnp.where(masks[i], key, jnp.zeros_like(key))
        keys[i] = key
    n = sum(size(xs[i]) for i in live)
    n = static_total(n) if sharded else n
    dtype = jnp.count_nonzero(jnp.zeros((1,), dtype=bool)).dtype  # the default's count dtype
    kk = jnp.asarray(k, dtype=dtype) if not hasattr(k, "shape") else jnp.asarray(k).astype(dtype)
    kk = jnp.clip(kk, 0, n)

    T, below = _select_key([keys[i] for i in live], kk, dtype)
    r = kk - below  # ties at T to prune, first by global flat index
    eqs = {i: keys[i] == T for i in live}
    if sharded:
        counts = jnp.stack([jnp.count_nonzero(eqs[i]).astype(dtype) for i in live])
        table = all_gather(jnp, counts)  # (participants, arrays)
        me = jnp.arange(table.shape[0], dtype=jnp.int32) < jnp.asarray(_need("index", "exact pruning ties")(jnp), jnp.int32)
        everywhere = jnp.sum(table, axis=0)
        earlier = jnp.sum(jnp.where(me[:, None], table, jnp.zeros_like(table)), axis=0)
        start = (jnp.cumsum(everywhere) - everywhere) + earlier  # ties before this shard
    before = jnp.zeros((), dtype=dtype)
    for j, i in enumerate(live):
        key, eq = keys[i], eqs[i]
        if size(key):
            offset = start[j] if sharded else before
            cs = jnp.reshape(jnp.cumsum(jnp.reshape(eq, (-1,)), dtype=dtype), key.shape) + offset
            kept = (key > T) | (eq & (cs > r))
            keep[i] = kept if masks is None else kept & masks[i]
        if not sharded:
            before = before + jnp.count_nonzero(eq).astype(dtype)
    bits = jax.lax.bitcast_convert_type(jnp.maximum(T - 1, 0), jnp.float32)
    thr = jnp.where(T == _NAN_KEY, jnp.float32(jnp.nan), bits)
    return keep, jnp.where(T == 0, zero, thr)


def register() -> None:
    """Register the JAX pruning primitives with the core (idempotent).

    Example:
      >>> register()  # done by ``import gradclip_optax``, and by ``gradclip_keras`` on JAX
    """
    gc.register_multi_ops(NAMESPACE, order_keys=order_keys, cond=cond, prune_smallest=prune_smallest)
