"""A counter-based hash for random pruning: the same seed gives the same mask everywhere.

``h(seed, i, j)`` for element ``j`` (flat index) of array ``i`` is two rounds of
MurmurHash3's 32-bit finaliser (``fmix32``) computed with int32 array ops only::

    b1, b2 = fmix32(seed * 0x9E3779B9 + 2*i + 1), fmix32(b1 ^ 0x5BD1E995)   (Python ints)
    h      = fmix32(fmix32(j + b1) ^ b2)                                    (arrays)

uint32 arithmetic is emulated in int32 (two's-complement wrap-around of ``*`` and
``+``, which NumPy, PyTorch, JAX and TensorFlow all implement; JAX without x64 and
torch lack usable uint32/uint64 ops) with logical right shifts written as
``(h >> s) & (2**(32-s) - 1)``. The random score is the top 24 bits, ``h >>> 8``, an
exact float32 integer; ties among those scores are broken by flat index like any tie.
A step ``t`` (SET's growth) remixes that score: ``fmix32(score + t * 0x9E3779B9) >>> 8``.

:class:`HashScores` names the scores of one array; the selection driver ranks them
without the array of scores where its backend has a ``hash_keys`` kernel (torch: chunk by
chunk, in reused buffers), else from :func:`hash_scores`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = ["fmix32_int", "hash_keys", "array_bases", "HashScores", "hash_scores", "GOLDEN"]

_M = 0xFFFFFFFF
GOLDEN = 0x9E3779B9  # the step's multiplier (uint32)


def _s32(c: int) -> int:
    """A uint32 constant as the int32 with the same bits."""
    c &= _M
    return c - (1 << 32) if c >= 1 << 31 else c


def fmix32_int(h: int) -> int:
    """MurmurHash3 ``fmix32`` on a Python int (uint32 semantics); the reference."""
    h &= _M
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _M
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _M
    h ^= h >> 16
    return h


def _shr(xp: Any, x: Any, s: int) -> Any:
    # xp.bitwise_right_shift, not ``>>``: TensorFlow tensors (Keras adapter) have no __rshift__.
    return xp.bitwise_right_shift(x, s) & ((1 << (32 - s)) - 1)


def _fmix32(xp: Any, h: Any) -> Any:
    h = h ^ _shr(xp, h, 16)
    h = h * _s32(0x85EBCA6B)
    h = h ^ _shr(xp, h, 13)
    h = h * _s32(0xC2B2AE35)
    return h ^ _shr(xp, h, 16)


def array_bases(seed: int, i: int) -> tuple[int, int]:
    """The two per-array keys ``(b1, b2)`` (uint32 values)."""
    b1 = fmix32_int((seed * 0x9E3779B9 + 2 * i + 1) & _M)
    return b1, fmix32_int(b1 ^ 0x5BD1E995)


def hash_keys(xp: Any, shape: tuple, seed: int, i: int, offset: Any = 0) -> Any:
    """int32 array of ``shape``: the 24-bit random scores ``h(seed, i, j) >>> 8``.

    ``offset``: the flat index of the first element (an int or a 0-d int32 array; a
    shard's position in its full array, so a shard gets the full array's scores).
    """
    n = 1
    for d in shape:
        n *= d
    b1, b2 = array_bases(seed, i)
    j = xp.arange(n, dtype=xp.int32)
    if not isinstance(offset, int) or offset:
        j = j + (offset if isinstance(offset, int) else xp.astype(offset, xp.int32))
    h = _fmix32(xp, j + _s32(b1))
    h = _fmix32(xp, h ^ _s32(b2))
    return xp.reshape(_shr(xp, h, 8), shape)


class HashScores(NamedTuple):
    """The random float32 scores of one array, named instead of made (see :func:`hash_scores`).

    Attributes:
      seed: the seed (int >= 0).
      index: the array's index ``i``.
      offset: the flat index of the first element (an int or a 0-d integer array: a shard's position).
      step: ``None`` or a 0-d integer array ``t``: the scores remixed with the step (SET's growth).
    """

    seed: int
    index: int
    offset: Any = 0
    step: Any = None


def hash_scores(xp: Any, shape: tuple, spec: HashScores) -> Any:
    """float32 array of ``shape``: ``h(seed, i, j) >>> 8``, or with a step ``fmix32(that + t * GOLDEN) >>> 8``.

    Example:
      >>> import numpy as np
      >>> hash_scores(np, (3,), HashScores(0, 0)).tolist() == hash_keys(np, (3,), 0, 0).astype(np.float32).tolist()
      True
    """
    keys = hash_keys(xp, shape, spec.seed, spec.index, spec.offset)
    if spec.step is not None:
        t = xp.zeros_like(keys) + xp.astype(spec.step, keys.dtype)
        keys = _shr(xp, _fmix32(xp, keys + t * _s32(GOLDEN)), 8)
    return xp.astype(keys, xp.float32)
