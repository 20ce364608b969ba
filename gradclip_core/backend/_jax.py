"""JAX kernels (``jax.numpy``): bitcast keys, ``lax.cond`` schedules, radix passes in one ``fori_loop``.

Loaded the first time a JAX array (or tracer) reaches a primitive; shared by
``gradclip_optax`` and Keras' JAX backend. Needs only ``jax``.

- ``order_keys``: ``lax.bitcast_convert_type`` (the portable default is arithmetic,
  which XLA on CPU gets wrong for subnormals: it flushes them);
- ``cond``: ``lax.cond``, so a pruning rule recomputes its masks only on its schedule's
  steps, under ``jax.jit`` too;
- selection (:mod:`gradclip_core.prune._select`): 11-bit digits, 3 passes in one
  ``lax.fori_loop`` (one loop body to compile: the portable 31 unrolled passes took XLA
  minutes to compile for a model's worth of arrays), histograms by ``at[].add`` into
  2048 bins; the threshold is decoded by a bitcast (exact for subnormals too); ties at
  the threshold by a radix selection on their flat index, not a cumulative sum (which
  XLA all-gathers when the array is sharded).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from ._primitives import register_primitives
from ._selection import NAN_BITS, NAN_KEY, Selection, register_selection

__all__ = ["NAMESPACE", "register", "order_keys", "cond", "SELECTION"]

NAMESPACE = "jax.numpy"
DIGIT = 11
"""Bits per radix digit (histograms of ``2**DIGIT`` bins); ``ceil(31 / DIGIT) = 3`` passes."""


def order_keys(xp: Any, s: jax.Array) -> jax.Array:
    """``bits(s)`` as int32 for non-negative float32 ``s``; every NaN ``0x7F800001``."""
    del xp
    bits = jax.lax.bitcast_convert_type(s.astype(jnp.float32), jnp.int32)
    return jnp.where(jnp.isnan(s), jnp.int32(NAN_BITS), bits)


def float_from_bits(xp: Any, u: jax.Array) -> jax.Array:
    """The float32 whose bit pattern is the int32 ``u`` (``lax.bitcast_convert_type``)."""
    del xp
    return jax.lax.bitcast_convert_type(u.astype(jnp.int32), jnp.float32)


def argsort_keys(xp: Any, keys: jax.Array) -> jax.Array:
    """Stable ascending order of 1-d int32 ``keys``: ``lax.sort`` of ``(keys, index)`` as two keys (unstable
    sort, the same order), about twice as fast on XLA's CPU sort as ``argsort(stable=True)``."""
    return sort_keys(xp, keys)[1]


def sort_keys(xp: Any, keys: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Sorted 1-d int32 ``keys`` and their stable order: both outputs of :func:`argsort_keys`' two-key sort."""
    del xp
    idx = jax.lax.iota(jnp.int32, keys.shape[0])
    return jax.lax.sort((keys.astype(jnp.int32), idx), num_keys=2, is_stable=False)


def sort_values(xp: Any, keys: jax.Array) -> jax.Array:
    """Sorted 1-d int32 ``keys`` alone: ``jnp.sort``, one operand (several times faster on XLA's CPU sort
    than the two-key sort of :func:`sort_keys`)."""
    del xp
    return jnp.sort(keys.astype(jnp.int32))


def unpermute(xp: Any, values: jax.Array, order: jax.Array) -> jax.Array:
    """``out[order] = values`` (a scatter; the default is a second sort)."""
    del xp
    return jnp.zeros_like(values).at[order].set(values, unique_indices=True)


def cond(xp: Any, pred: Any, true_fn: Any, false_fn: Any) -> Any:
    """``lax.cond(pred, true_fn, false_fn)``."""
    del xp
    return jax.lax.cond(pred, true_fn, false_fn)


def _histogram(xp: Any, key: jax.Array, shift: Any, prefix: Any, digit: int, dtype: Any, ws: Any,
               acc: Any) -> jax.Array:
    """``acc`` plus the counts of the next digit of the keys in ``prefix`` (others dropped, ``mode="drop"``)."""
    bins = 1 << digit
    if acc is None:
        acc = jnp.zeros((bins,), dtype=dtype)
    shift = jnp.asarray(shift, jnp.int32)
    top = jax.lax.shift_right_logical(key, shift)
    high = jax.lax.shift_right_logical(top, jnp.int32(digit))
    d = jnp.where(high == prefix, top & (bins - 1), bins)
    return acc.at[jnp.reshape(d, (-1,))].add(jnp.ones((), dtype=dtype), mode="drop")


def _keep(xp: Any, key: jax.Array, T: Any, r: Any, before: Any, out: Any, ws: Any) -> tuple:
    """``key > T``, and ties ``key == T`` kept after the first ``r - before`` of them here.

    The first ``m`` ties in flat order are found by a radix selection on their flat index
    (histograms by ``at[].add``, in a ``lax.cond`` taken only when some but not all ties
    here are pruned), not by a running count: XLA partitions a scatter-add over a sharded
    array (partial counts, one all-reduce) but all-gathers a cumulative sum, so under
    ``jax.jit`` with ``NamedSharding`` no array is gathered for the ties.
    """
    del xp, out, ws
    eq = key == T
    ties = jnp.count_nonzero(eq).astype(before.dtype)
    m = jnp.clip(r - before, 0, ties)
    n = key.shape[0]
    bins = 1 << DIGIT

    def some() -> jax.Array:
        idx = jnp.arange(n, dtype=jnp.int32)
        passes = -(-max(1, (n - 1).bit_length()) // DIGIT)
        prefix, below = jnp.int32(0), jnp.zeros((), before.dtype)
        for p in range(passes):  # prefix ends as the flat index of the m-th tie
            top = jax.lax.shift_right_logical(idx, jnp.int32(DIGIT * (passes - 1 - p)))
            d = jnp.where(eq & (jax.lax.shift_right_logical(top, jnp.int32(DIGIT)) == prefix), top & (bins - 1), bins)
            hist = jnp.zeros((bins,), before.dtype).at[d].add(jnp.ones((), before.dtype), mode="drop")
            cum = jnp.cumsum(hist) + below
            b = jnp.minimum(jnp.count_nonzero(cum < m), bins - 1).astype(jnp.int32)
            below = cum[b] - hist[b]
            prefix = (prefix << DIGIT) | b
        return (key > T) | (eq & (idx > prefix))

    kept = jax.lax.cond((m > 0) & (m < ties), some, lambda: (key > T) | (eq & (m == 0)))
    return kept, ties


def _loop(n: int, body: Any, carry: Any) -> Any:
    return jax.lax.fori_loop(0, n, body, carry)


def _value(xp: Any, T: jax.Array) -> jax.Array:
    bits = jax.lax.bitcast_convert_type(jnp.maximum(T - 1, 0).astype(jnp.int32), jnp.float32)
    thr = jnp.where(T == NAN_KEY, jnp.float32(jnp.nan), bits)
    return jnp.where(T == 0, jnp.float32(0), thr)


SELECTION = Selection(digit=DIGIT, chunk=None, histogram=_histogram, keep=_keep, loop=_loop, value=_value)


def register() -> None:
    """Register the JAX kernels with the core (done on first use of a JAX array).

    Example:
      >>> register()
    """
    register_primitives(NAMESPACE, order_keys=order_keys, float_from_bits=float_from_bits, cond=cond,
                        argsort_keys=argsort_keys, sort_keys=sort_keys, sort_values=sort_values,
                        unpermute=unpermute)
    register_selection(NAMESPACE, SELECTION)
