"""Counter-based Gaussian noise: the same ``(seed, counter)`` gives the same noise in every framework.

The core has no random-number generator. For DP noise it offers this deterministic,
stateless generator built on the counter-based hash of :mod:`gradclip_core._hash`
(MurmurHash3's ``fmix32``, int32 array ops only), so a seed and a step counter give
the same standard normals in NumPy, PyTorch, JAX and TensorFlow, under jit, with the
seed and counter as traced arrays. For element ``j`` of array ``i``::

    k      = fmix32(fmix32(seed * 0x9E3779B9 + 0x7F4A7C15) + counter)
    b1(s)  = fmix32(k + (2*s + 1) * 0x9E3779B9),  b2(s) = fmix32(b1(s) ^ 0x5BD1E995)
    h(s,j) = fmix32(fmix32(j + b1(s)) ^ b2(s)) >>> 8            (24 bits)
    u1 = (h(2i, j) + 1) / 2**24  in (0, 1],   u2 = h(2i+1, j) / 2**24  in [0, 1)
    z  = sqrt(-2 log u1) * cos(2 pi u2)                          (Box-Muller, float32)

The 24-bit uniforms truncate the normal at ``|z| <= 5.77``; ``log``/``cos`` differ by
an ulp or so between frameworks. This is a reproducibility tool, not a cryptographically
secure generator: for a formal differential-privacy guarantee draw the noise with a
secure RNG (e.g. Opacus' ``secure_mode``) and pass it explicitly (``noise=``).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from .._hash import _fmix32, _s32, _shr

__all__ = ["gaussian"]

_GOLDEN = _s32(0x9E3779B9)


def _key(xp: Any, seed: Any, counter: Any, **kw: Any) -> Any:
    """int32 array of shape (1,): the mixed ``(seed, counter)`` key (1-d: no NumPy scalar overflow warnings)."""

    def as1(v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            return xp.asarray([_s32(v)], dtype=xp.int32, **kw)
        v = xp.asarray(v)
        return xp.reshape(xp.astype(v, xp.int32), (1,))

    s = _fmix32(xp, as1(seed) * _GOLDEN + _s32(0x7F4A7C15))
    return _fmix32(xp, s + as1(counter))


def _bits(xp: Any, key: Any, stream: int, n: int, **kw: Any) -> Any:
    b1 = _fmix32(xp, key + _s32((2 * stream + 1) * 0x9E3779B9))
    b2 = _fmix32(xp, b1 ^ _s32(0x5BD1E995))
    j = xp.arange(n, dtype=xp.int32, **kw)
    h = _fmix32(xp, _fmix32(xp, j + b1) ^ b2)
    return _shr(xp, h, 8)


def gaussian(xp: Any, shapes: Sequence[tuple], seed: Any, counter: Any = 0, **kw: Any) -> list:
    """Standard-normal float32 arrays of ``shapes`` from ``(seed, counter)``.

    Args:
      xp: the namespace to build the arrays in.
      shapes: one shape per array (array ``i`` uses hash streams ``2i`` and ``2i+1``).
      seed: a Python int or an integer 0-d array (wrapped to 32 bits).
      counter: a Python int or an integer 0-d array, e.g. the step (wrapped to 32 bits).
      **kw: e.g. ``device=`` for the new arrays.

    Returns:
      A list of float32 arrays.

    Example:
      >>> import array_api_compat.numpy as xp
      >>> z = gaussian(xp, [(20000,)], seed=0)[0]
      >>> abs(float(z.mean())) < 0.03, abs(float(z.std()) - 1) < 0.03
      (True, True)
    """
    key = _key(xp, seed, counter, **kw)
    out = []
    scale = 1.0 / (1 << 24)
    for i, shape in enumerate(shapes):
        n = math.prod(shape)
        u1 = (xp.astype(_bits(xp, key, 2 * i, n, **kw), xp.float32) + 1.0) * scale
        u2 = xp.astype(_bits(xp, key, 2 * i + 1, n, **kw), xp.float32) * scale
        z = xp.sqrt(-2.0 * xp.log(u1)) * xp.cos((2.0 * math.pi) * u2)
        out.append(xp.reshape(z, tuple(shape)))
    return out
