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
- ``min_bound_ratio`` (Clippy's per-array scale): on the CPU, a select-free form that XLA
  runs as one fused reduction (see :func:`min_bound_ratio`).
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, Sequence

import numpy as np

import jax
import jax.numpy as jnp

from ._primitives import min_bound_ratio_default, register_primitives
from ._selection import NAN_BITS, NAN_KEY, Selection, register_selection

__all__ = ["NAMESPACE", "register", "order_keys", "cond", "min_bound_ratio", "SELECTION"]

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


FUSED_MIN = 1 << 16
"""Arrays of at least this many elements per CPU device take :func:`min_bound_ratio`'s fused form
(smaller ones the default): XLA:CPU does not hand a reduction of fewer than 4096 elements to its
fused-reduction library, and under ``jit`` an array may be split over every device."""

_FUSED_OK: dict = {}  # accumulation dtype name -> whether the fused form passed its check in this process


@partial(jax.jit, static_argnums=(2, 3, 4))
def _fused_min(d: jax.Array, w: jax.Array, relative: float, absolute: float, dtype: Any) -> jax.Array:
    """``min(min_i(bound_i / |d_i|, 1))``: no select, so XLA:CPU fuses it (and ``d``'s producer) into one reduction.

    The scalars pass through an ``optimization_barrier`` with ``w`` (a no-op): without it XLA
    merged the broadcast constants of the arrays of one shape, and wrote each such broadcast,
    shared by those arrays' fused reductions, as a weight-sized array (GPT-2 small: 108 MiB).
    """
    rel, ab, one, _ = jax.lax.optimization_barrier(
        (jnp.asarray(relative, dtype), jnp.asarray(absolute, dtype), jnp.ones((), dtype), w))
    bound = ab + rel * jnp.abs(w.astype(dtype))  # (the default's order)
    return jnp.min(jnp.minimum(bound / jnp.abs(d.astype(dtype)), one))


def _fused_ok(dtype: Any) -> bool:
    """Whether :func:`_fused_min` equals the default, bit for bit, on this process' CPU backend.

    Run once per accumulation dtype, on :data:`FUSED_MIN`-element arrays with NaN, zero,
    infinite and ordinary elements (NaN where they hide the true minimum from a reduction that
    drops them: the case a NaN-propagating ``minimum`` gets wrong), compared with the core's
    default in NumPy. A backend where the elementwise ``minimum(NaN, 1)`` does not give 1
    inside the fused reduction (XLA's own loops propagate NaN) fails it and keeps the default.
    """
    key = np.dtype(dtype).name
    if key not in _FUSED_OK:
        ok = True
        try:
            with jax.ensure_compile_time_eval():  # (runs now, also while a jit is tracing)
                rng = np.random.default_rng(0)
                nd = np.dtype(dtype)
                for shape in ((FUSED_MIN,), (FUSED_MIN // 128, 256)):
                    n = math.prod(shape)
                    d = rng.standard_normal(n).astype(nd)
                    w = rng.standard_normal(n).astype(nd)
                    d[rng.integers(0, n, 64)] = np.nan
                    d[rng.integers(0, n, 64)] = 0.0
                    w[rng.integers(0, n, 64)] = 0.0
                    w[rng.integers(0, n, 8)] = np.inf
                    both = rng.integers(0, n, 8)
                    d[both], w[both] = -np.inf, np.inf  # (inf / inf)
                    d[1::97] = np.nan  # a NaN after most elements
                    for relative, absolute in ((0.25, 0.0), (0.1, 1e-3)):
                        dd, ww = d.reshape(shape), w.reshape(shape)
                        with np.errstate(all="ignore"):
                            want = min_bound_ratio_default(np, [dd], [ww], relative, absolute, nd)[0]
                        cpu = jax.devices("cpu")[0]
                        got = _fused_min(jax.device_put(dd, cpu), jax.device_put(ww, cpu), relative, absolute, dtype)
                        ok = ok and np.asarray(got).tobytes() == np.asarray(want, nd).tobytes()
        except Exception:  # noqa: BLE001 - no fused form on a backend that cannot run the check
            ok = False
        _FUSED_OK[key] = ok
    return _FUSED_OK[key]


def fused_size() -> int:
    """The smallest array that takes the fused form: :data:`FUSED_MIN` times the number of CPU devices."""
    return FUSED_MIN * len(jax.devices("cpu"))


def _on_cpu(xs: Sequence[Any]) -> bool:
    """Whether ``xs`` run on the CPU: their devices, or (traced) the default backend's."""
    for x in xs:
        if isinstance(x, jax.core.Tracer):
            if jax.default_backend() != "cpu":
                return False
        elif not isinstance(x, jax.Array) or any(dev.platform != "cpu" for dev in x.devices()):
            return False
    return True


def min_bound_ratio(xp: Any, ds: Sequence[jax.Array], ws: Sequence[jax.Array], relative: float, absolute: float,
                    dtype: Any) -> Any:
    """Clippy's per-array ``min(1, min bound / |d|)`` as one fused reduction per array on XLA:CPU.

    The default selects ``where(|d| > bound, bound / |d|, 1)`` before the ``min``; XLA:CPU hands
    the reduction to its fused-reduction library (``ynn_fusion``), which takes no select, so the
    select ran as a loop of its own and wrote a weight-sized temporary (a GPT-2-small embedding:
    259 ms against 91 ms fused). Here each element is ``minimum(bound / |d|, 1)``, which the library
    fuses with ``d``'s producer (in a Keras or optax step: the optimizer's update). The values are
    the default's: ``bound / |d|`` where ``|d| > bound``, 1 where it is within its bound (the
    quotient is then at least 1), and 1 where the quotient is NaN (``0 / 0``, ``inf / inf``, a NaN
    input), from the library's ``minimum(NaN, 1) = 1``; the reduction then sees no NaN, so the
    minimum does not depend on how it treats one. XLA's own loops propagate NaN through
    ``minimum``, so this form is used only on the CPU, for arrays of at least :data:`FUSED_MIN`
    elements per CPU device (each device's shard, when ``jit`` splits the array over all of them:
    65536 elements over 32 devices gave a wrong scale), and only after :func:`_fused_ok` found it
    equal to the default in this process; otherwise, and for other devices, the default. Only with
    ``absolute > 0``: then finite inputs never make a NaN quotient (with ``absolute = 0`` a zero
    weight whose update is zero, as in a pruned array, makes ``0 / 0``), so a program in which XLA
    reduced an array in its own loops after all could part from the default only on an update that
    already holds NaN or infinite elements (its scale NaN rather than the others' minimum).

    Example:
      >>> from gradclip_core.backend import min_bound_ratio as primitive  # (this kernel, else the default)
      >>> n = fused_size()  # 65536 elements per CPU device: the smallest array that takes the fused form
      >>> d, w = jnp.full((n,), 1.0), jnp.ones((n,))
      >>> [float(m) for m in primitive(jnp, [d], [w], 0.25, 0.25, jnp.float32)]
      [0.5]
      >>> min_bound_ratio(jnp, [d[:7]], [w[:7]], 0.25, 0.25, jnp.float32)  # small: the default's
      NotImplemented
    """
    if not absolute > 0 or not _on_cpu([*ds, *ws]):  # (first: without a CPU backend, fused_size() cannot count
        return NotImplemented                          # its devices)
    big = [i for i, d in enumerate(ds) if d.size >= fused_size()]
    if not big or not _fused_ok(dtype):
        return NotImplemented
    out = [None] * len(ds)
    for i in big:
        out[i] = _fused_min(ds[i], ws[i], relative, absolute, dtype)
    small = [i for i in range(len(ds)) if out[i] is None]
    for i, m in zip(small, min_bound_ratio_default(xp, [ds[i] for i in small], [ws[i] for i in small], relative,
                                                   absolute, dtype)):
        out[i] = m
    return out


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
                        unpermute=unpermute, min_bound_ratio=min_bound_ratio)
    register_selection(NAMESPACE, SELECTION)
