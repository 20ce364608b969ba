"""Seeded data and small models the tests share, in NumPy; each framework builds its own from them.

The core, torch, optax and Keras tests and the distributed workers train the same kinds
of tiny models on the same kinds of batches. The numbers come from here (NumPy
generators, float32), so a framework's helpers only convert them: tests/torch/util.py,
tests/optax/util.py, tests/keras/util.py.
"""

from __future__ import annotations

import numpy as np


def rand_arrays(seed: int, shapes, scale: float = 1.0, dtype=np.float32) -> list[np.ndarray]:
    """Normals with std ``scale``, one array per shape (gradients, weights)."""
    rng = np.random.default_rng(seed)
    return [rng.normal(0.0, scale, s).astype(dtype) for s in shapes]


def regression(seed: int, n: int, d_in: int, d_out: int, x_scale: float = 1.0, y_scale: float = 1.0) -> tuple:
    """A batch ``(x, y)``: float32 normals of shapes ``(n, d_in)`` and ``(n, d_out)``, scaled."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d_in)) * x_scale
    y = rng.normal(size=(n, d_out)) * y_scale
    return x.astype(np.float32), y.astype(np.float32)


def mlp_weights(seed: int, sizes) -> list[np.ndarray]:
    """``[W0, b0, W1, b1, ...]`` of a dense network with widths ``sizes``, torch's ``(out, in)`` layout.

    Uniform in ``+-1/sqrt(in)`` (as ``torch.nn.Linear`` initializes); Keras' ``Dense``
    kernel is the transpose.
    """
    rng = np.random.default_rng(seed)
    out = []
    for d_in, d_out in zip(sizes, sizes[1:]):
        bound = 1.0 / np.sqrt(d_in)
        out += [rng.uniform(-bound, bound, (d_out, d_in)).astype(np.float32),
                rng.uniform(-bound, bound, (d_out,)).astype(np.float32)]
    return out


def clip_per_example_reference(grads, C, semantics="canonical", noise=None, sigma=0.0, denom=None) -> tuple:
    """DP-SGD in float64: per-example gradients (leading batch axis) clipped to norm ``C``
    (``semantics`` "canonical" ``min(1, C / norm)``, "opacus" ``C / (norm + 1e-6)``, "optax"
    NaN -> 1), summed, plus ``sigma * C * noise``, divided by ``denom``; and the factors."""
    g64 = [np.asarray(g, np.float64) for g in grads]
    B = g64[0].shape[0]
    norms = np.sqrt(sum(np.sum(g.reshape(B, -1) ** 2, axis=1) for g in g64))
    with np.errstate(divide="ignore", invalid="ignore"):
        if semantics == "opacus":
            f = np.minimum(C / (norms + 1e-6), 1.0)
        elif semantics == "optax":
            f = np.nan_to_num(np.minimum(C / norms, 1.0), nan=1.0)
        else:
            f = np.where(norms > C, C / np.where(norms > C, norms, 1), 1.0)
    sums = [np.tensordot(f, g, axes=1) for g in g64]
    if noise is not None:
        sums = [s + sigma * C * np.asarray(z, np.float64) for s, z in zip(sums, noise)]
    return ([s / denom for s in sums] if denom is not None else sums), f
