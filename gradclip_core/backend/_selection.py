"""The kernel registry of exact k-smallest selection, and its portable kernels.

Keys, ordering and the :class:`Selection` kernels that
:func:`gradclip_core.prune.prune_smallest` (the one selection driver) runs on. A
framework's kernel module registers its own :class:`Selection` with
:func:`register_selection`; the defaults here use Array API operations only.

Keys: ``bits(score) + 1`` for a non-negative float32 score (order-preserving), every
NaN ``NAN_KEY`` (above +inf), ``0`` for elements pruned before.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

from ._namespace import ensure_kernels, namespace_name
from ._primitives import override, upcast

__all__ = [
    "Selection",
    "register_selection",
    "selection_for",
    "order_keys",
    "float32_scores",
    "key_value",
    "float_from_bits",
    "bits_portable",
    "NAN_KEY",
    "NAN_BITS",
    "KEY_BITS",
]

NAN_KEY = 0x7F800002  # after the +1 shift; +inf is 0x7F800001
NAN_BITS = 0x7F800001  # canonical NaN bit key before the shift
KEY_BITS = 31


def float32_scores(xp: Any, x: Any, divisor: Any = None) -> Any:
    """``|x|`` as float32 (optionally divided by a 0-d float32 ``divisor``)."""
    s = xp.abs(upcast(xp, x, xp.float32))
    if divisor is not None:
        s = s / divisor
    return s


def bits_portable(xp: Any, s: Any) -> Any:
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
    return xp.where(nan, xp.full_like(out, NAN_BITS), out)


def order_keys(xp: Any, s: Any) -> Any:
    """int32 keys of non-negative float32 scores (NaN canonical), before the +1 shift.

    ``key(a) < key(b)`` iff ``a < b`` for numbers; every NaN has the key just above
    +inf. Overridable (``"order_keys"``): NumPy uses a bit view, torch ``.view(int32)``,
    JAX ``lax.bitcast_convert_type``; the portable default is arithmetic.
    """
    fast = override(xp, "order_keys")
    if fast is not None:
        return fast(xp, s)
    return bits_portable(xp, s)


def float_from_bits(xp: Any, u: Any) -> Any:
    """The float32 whose IEEE bit pattern is the int32 ``u`` (``0 <= u <= 0x7F800001``; that one is NaN).

    Overridable (``"float_from_bits"``: a bit view in NumPy / torch, a bitcast in JAX); the
    portable default decodes the fields with exact arithmetic (:func:`key_value`).
    """
    fast = override(xp, "float_from_bits")
    if fast is not None:
        return fast(xp, u)
    return key_value(xp, u + 1)


def _pow2(xp: Any, y: Any, e: Any) -> Any:
    """``y * 2**e`` for float32 ``y`` in ``[1, 2)`` and an int32 ``e`` in ``[-126, 127]``, exactly.

    Power-of-two steps, all multiplications exact: upward by ``2**b`` for the bits of a
    positive ``e``, downward by ``2**-b`` for those of a negative one (every step stays a
    normal float32: no flush to zero).
    """
    up, down = xp.maximum(e, xp.zeros_like(e)), xp.maximum(-e, xp.zeros_like(e))
    for b in (64, 32, 16, 8, 4, 2, 1):
        y = xp.where(xp.bitwise_and(up, b) != 0, y * 2.0**b, y)
        y = xp.where(xp.bitwise_and(down, b) != 0, y * 2.0**-b, y)
    return y


def key_value(xp: Any, T: Any) -> Any:
    """The float32 score of a key ``T`` (0-d int32, after the +1 shift); 0 for key 0, NaN for ``NAN_KEY``.

    The inverse of :func:`order_keys` ``+ 1``, with Array API ops: the exponent and
    mantissa fields are decoded and scaled by exact powers of two.
    """
    bits = xp.maximum(T - 1, xp.zeros_like(T))
    e = xp.bitwise_right_shift(bits, 23)
    m = xp.astype(xp.bitwise_and(bits, 0x7FFFFF), xp.float32)
    normal = _pow2(xp, 1.0 + m * 2.0**-23, xp.minimum(xp.maximum(e, xp.ones_like(e)), xp.full_like(e, 254)) - 127)
    sub = (m * 2.0**-100) * 2.0**-49
    val = xp.where(e == 0, sub, normal)
    val = xp.where(e >= 255, xp.full_like(val, math.inf), val)
    val = xp.where(T == NAN_KEY, xp.full_like(val, math.nan), val)
    return xp.where(T == 0, xp.zeros_like(val), val)


# ------------------------------------------------------------------ portable kernels


def _keys(xp: Any, x: Any, old: Any, divisor: Any, ws: Any) -> Any:
    """Keys of a (flat) array or chunk: ``bits(|x| / d) + 1``, 0 where ``old`` is False."""
    del ws
    key = order_keys(xp, float32_scores(xp, x, divisor)) + 1
    return key if old is None else xp.where(old, key, xp.zeros_like(key))


def _count(xp: Any, flag: Any, dtype: Any) -> Any:
    c = xp.count_nonzero(flag)
    return c if c.dtype == dtype else xp.astype(c, dtype)


def _histogram(xp: Any, key: Any, shift: Any, prefix: Any, digit: int, dtype: Any, ws: Any = None, acc: Any = None) -> Any:
    """``acc`` plus the counts of digit ``(key >> shift) & (2**digit - 1)`` over the keys whose higher
    bits equal ``prefix`` (``acc`` is ``None`` for the first chunk)."""
    h = _digit_counts(xp, key, shift, prefix, digit, dtype)
    return h if acc is None else acc + h


def _digit_counts(xp: Any, key: Any, shift: Any, prefix: Any, digit: int, dtype: Any) -> Any:
    top = xp.bitwise_right_shift(key, shift)
    inside = xp.bitwise_right_shift(top, digit) == prefix
    low = xp.bitwise_and(top, (1 << digit) - 1)
    if digit == 1:
        ones = _count(xp, inside & (low == 1), dtype)
        return xp.stack([_count(xp, inside, dtype) - ones, ones])
    return xp.stack([_count(xp, inside & (low == b), dtype) for b in range(1 << digit)])


def _keep(xp: Any, key: Any, T: Any, r: Any, before: Any, out: Any, ws: Any = None) -> tuple[Any, Any]:
    """``key > T``, and ties ``key == T`` kept after the first ``r - before`` of them here."""
    del out, ws
    eq = key == T
    cs = xp.cumulative_sum(xp.astype(eq, before.dtype)) + before
    return (key > T) | (eq & (cs > r)), _count(xp, eq, before.dtype)


def _python_loop(n: int, body: Callable[[Any, Any], Any], carry: Any) -> Any:
    for p in range(n):
        carry = body(p, carry)
    return carry


class Selection(NamedTuple):
    """The kernels of :func:`prune_smallest` for one namespace (see the module docstring).

    Attributes:
      digit: bits per radix pass (``ceil(31 / digit)`` passes).
      chunk: elements per chunk, or ``None``: whole arrays, keys computed once.
      keys: ``keys(xp, x, old, divisor, ws) -> int32 keys`` of a flat array or chunk.
      histogram: ``histogram(xp, key, shift, prefix, digit, dtype, ws, acc) -> acc + counts``
        (``2**digit`` counts; ``acc`` is ``None`` for the first chunk, kernels may add in place).
      keep: ``keep(xp, key, T, r, before, out, ws) -> (keep, ties)``; writes into ``out``
        (a chunk of the masks) when chunked.
      loop: ``loop(n, body, carry)`` running the passes (``lax.fori_loop`` for JAX).
      workspace: ``workspace(xp, flats, chunk) -> ws``, scratch buffers reused across chunks.
      gather: eager compaction: ``gather(xp, key, shift, b, out, ws) -> (keys, positions)``
        of the keys whose top bits are ``b``, writing ``(key >> shift) > b`` into ``out``.
      scatter: ``scatter(xp, flat_mask, positions, values)``, in place.
      compact_limit: compaction only when the k-th key's bin holds at most this many keys.
      value: ``value(xp, T) -> float32``: the score of a key (:func:`key_value`).
      signed_keys: ``signed_keys(xp, s, old, ws) -> int32 keys`` of a flat chunk of *signed*
        float32 scores, ranked as ``gradclip_core.prune``'s ``ordered`` ranks them (the keys of
        ``ordered(s)``), or ``None``: the driver makes ``ordered(s)`` of each array first.
      hash_keys: ``hash_keys(xp, spec, start, n, old, ws) -> int32 keys`` of the random scores
        of flat elements ``start .. start + n - 1`` of the array a
        :class:`gradclip_core._hash.HashScores` ``spec`` names, or ``None``: the driver makes
        :func:`gradclip_core._hash.hash_scores` of each array first.
      hash_chunk: the chunk size of a selection of hashed keys (``None``: ``chunk``); an array of at
        most that many elements has its keys computed once, not once per pass.
      sort_limit: chunked kernels only (their radix passes cost ``2**digit`` bins each, however
        few the keys): a selection of at most this many elements in all, on one participant, is
        one stable sort of its keys (``sort_keys``), the same masks and threshold; ``0``: never.
    """

    digit: int = 1
    chunk: int | None = None
    keys: Callable[..., Any] = _keys
    histogram: Callable[..., Any] = _histogram
    keep: Callable[..., Any] = _keep
    loop: Callable[..., Any] = _python_loop
    workspace: Callable[..., Any] | None = None
    gather: Callable[..., Any] | None = None
    scatter: Callable[..., Any] | None = None
    compact_limit: int = 1 << 22
    value: Callable[..., Any] = key_value
    signed_keys: Callable[..., Any] | None = None
    hash_keys: Callable[..., Any] | None = None
    hash_chunk: int | None = None
    sort_limit: int = 1 << 16


PORTABLE = Selection()
_SELECTIONS: dict[str, Callable[[Any, list], Selection]] = {}


def register_selection(name: str, selection: Selection | Callable[[Any, list], Selection]) -> None:
    """Register the selection kernels of a namespace: a :class:`Selection`, or a function
    ``(xp, arrays) -> Selection`` choosing per call (e.g. by device, or under ``torch.compile``).

    Example:
      >>> register_selection("array_api_compat.numpy", Selection(digit=1))  # doctest: +SKIP
    """
    if isinstance(selection, Selection):
        fixed = selection
        selection = lambda xp, xs: fixed  # noqa: E731
    if not callable(selection):
        raise ValueError(f"selection must be a Selection or a callable, got {type(selection).__name__}")
    _SELECTIONS[name] = selection


def selection_for(xp: Any, xs: list) -> Selection:
    """The :class:`Selection` registered for ``xp`` (the portable one if none)."""
    name = namespace_name(xp)
    ensure_kernels(name)
    choose = _SELECTIONS.get(name)
    return PORTABLE if choose is None else choose(xp, xs)


