"""Per-example gradient clipping for differential privacy (DP-SGD, Abadi et al. 2016).

:func:`clip_per_example` takes per-example gradients (every array has a leading batch
axis of size ``B``) and returns one aggregated gradient per array. Convention (that of
Opacus' ``DPOptimizer`` and optax's ``differentially_private_aggregate``)::

    n_b    = || (g_1[b], ..., g_P[b]) ||_2       the global norm of example b over all arrays
                                                  (Opacus' order: per-array norms, then their norm)
    f_b    = min(1, C / n_b)                      (semantics: see below)
    S      = sum_b f_b * g[b]                     (a contraction over the batch axis)
    S      = S + noise_multiplier * C * N(0, 1)   the noise is added to the SUM, std = sigma * C
    result = S / batch_size                       reduction="mean" (batch_size defaults to B;
                                                  Opacus divides by the *expected* batch size
                                                  under Poisson sampling: pass it);
             S                                    reduction="sum" (optax's per_example_global_norm_clip)

``semantics`` picks ``f_b``: ``None`` (canonical ``min(1, C / n)``; ``n = 0`` gives 1),
``"opacus"`` (``min(C / (n + 1e-6), 1)``, Opacus' ``clip_and_accumulate``) or
``"optax"`` (``nan_to_num(min(C / n, 1), nan=1)``, ``optax.per_example_global_norm_clip``).
Norms and the sum are in float32 at least; results are cast to each array's dtype.

The noise: the core has no RNG. Give standard normals yourself (``noise=``, one array
per result, e.g. from ``torch.randn`` or ``jax.random.normal``, or a secure RNG for a
formal guarantee), or a ``seed`` (and ``counter``, e.g. the step) for the counter-based
generator of :mod:`gradclip_core.clip._noise`, which gives identical noise in every framework.
Use a different ``(seed, counter)`` every step: reusing noise voids the privacy analysis.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

from .._numerics import acc_dtype, min_ratio
from .._validate import check_choice, check_real, check_threshold, is_number
from ..backend._namespace import namespace
from ..backend._primitives import upcast
from ._noise import gaussian

__all__ = ["clip_per_example", "PER_EXAMPLE_SEMANTICS"]

PER_EXAMPLE_SEMANTICS = ("canonical", "opacus", "optax")
_OPACUS_EPS = 1e-6


def _factors(xp: Any, sem: str, max_norm: Any, norms: Any) -> Any:
    if sem == "canonical":
        return min_ratio(xp, max_norm, norms)
    one = xp.ones_like(norms)
    if sem == "opacus":
        return xp.minimum(max_norm / (norms + _OPACUS_EPS), one)
    r = xp.minimum(max_norm / norms, one)  # optax: C / 0 = inf -> 1; 0 / 0 = NaN -> 1
    return xp.where(xp.isnan(r), one, r)


def clip_per_example(
    grads: Sequence[Any],
    max_norm: Any,
    *,
    noise_multiplier: Any = 0.0,
    seed: Any = None,
    counter: Any = 0,
    noise: Sequence[Any] | Callable[[list], Sequence[Any]] | None = None,
    batch_size: Any = None,
    reduction: str = "mean",
    semantics: str | None = None,
) -> tuple[list, dict]:
    """Clip each example's gradient to global norm ``max_norm``, sum, add Gaussian noise, average.

    Args:
      grads: per-example gradients, arrays with the same leading batch size ``B``.
      max_norm: the clip norm ``C`` (finite, ``>= 0``; or a 0-d array).
      noise_multiplier: ``sigma`` (``>= 0``, or a 0-d array); the noise std is
        ``sigma * C``, added to the clipped sum. 0 (a Python number) means no noise.
      seed: for counter-based noise (int or integer 0-d array), see :mod:`gradclip_core.clip._noise`.
      counter: second key of the counter-based noise, e.g. the step number.
      noise: standard-normal arrays, one per result (shape ``g.shape[1:]``), instead of ``seed``;
        or a function ``noise(shapes) -> arrays`` drawing them (a framework RNG), called
        only when noise is added (``noise_multiplier`` not 0).
      batch_size: divisor for ``reduction="mean"`` (default ``B``; Opacus uses the
        expected batch size under Poisson sampling).
      reduction: ``"mean"`` (DP-SGD) or ``"sum"``.
      semantics: ``None`` (canonical), ``"opacus"`` or ``"optax"``: the clip factor.

    Returns:
      ``(grads, info)``: one array per input, shaped ``g.shape[1:]`` in ``g``'s dtype;
      info has ``clipped_fraction`` (examples whose norm exceeds ``max_norm``), ``norm_mean`` and
      ``norm_max`` (per-example norms before clipping), float32 0-d.

    Raises:
      ValueError: bad arguments, no batch axis, batch sizes that differ, noise
        requested without ``seed`` or ``noise``.

    Example:
      >>> import numpy as np
      >>> import gradclip_core as gc
      >>> g = [np.array([[0.0, 0.0], [3.0, 4.0], [0.3, 0.4]], np.float32)]  # norms 0, 5, 0.5
      >>> out, info = gc.clip_per_example(g, 1.0)
      >>> [round(float(v), 6) for v in out[0]], round(float(info["clipped_fraction"]), 4)
      ([0.3, 0.4], 0.3333)
    """
    grads = list(grads)
    if not grads:
        raise ValueError("grads must hold at least one per-example gradient array")
    max_norm = check_threshold("max_norm", max_norm)
    if is_number(noise_multiplier):
        noise_multiplier = check_threshold("noise_multiplier", noise_multiplier)
    elif getattr(noise_multiplier, "shape", None) != ():
        raise ValueError(f"noise_multiplier must be a number >= 0 or a 0-d array, got {noise_multiplier!r}")
    check_choice("reduction", reduction, ("mean", "sum"))
    sem = "canonical" if semantics is None else semantics
    check_choice("semantics", sem, PER_EXAMPLE_SEMANTICS)
    for i, g in enumerate(grads):
        if len(g.shape) < 1:
            raise ValueError(f"grads[{i}] is 0-d: per-example gradients need a leading batch axis")
    B = grads[0].shape[0]
    for i, g in enumerate(grads):
        if g.shape[0] != B:
            raise ValueError(f"grads[{i}] has batch size {g.shape[0]}, grads[0] has {B}")
    if batch_size is not None and is_number(batch_size):
        batch_size = check_threshold("batch_size", batch_size, positive=True)
    noisy = not (is_number(noise_multiplier) and float(noise_multiplier) == 0.0)
    if noisy and noise is None and seed is None:
        raise ValueError("noise_multiplier > 0 needs the noise: pass seed= (counter-based noise) or noise= (standard normals)")
    if callable(noise):
        noise = noise([tuple(g.shape[1:]) for g in grads]) if noisy else None
    if noise is not None:
        noise = list(noise)
        if len(noise) != len(grads):
            raise ValueError(f"noise must hold one array per gradient: got {len(noise)} for {len(grads)}")
        for i, (z, g) in enumerate(zip(noise, grads)):
            if tuple(z.shape) != tuple(g.shape[1:]):
                raise ValueError(f"noise[{i}] has shape {tuple(z.shape)}, expected {tuple(g.shape[1:])}")

    check_real("clip_per_example", grads, "adds real Gaussian noise to the clipped sum")
    xp = namespace(*grads)
    dt = acc_dtype(xp, grads)
    rows = -1 if B is None else B  # None: a batch size known only at run time (a TF graph)
    flat = [xp.reshape(upcast(xp, g, dt), (rows, math.prod(g.shape[1:]))) for g in grads]
    per_array = [xp.linalg.vector_norm(f, axis=1) if f.shape[1] else xp.sum(f, axis=1) for f in flat]
    norms = xp.linalg.vector_norm(xp.stack(per_array, axis=1), axis=1)  # (B,)
    factors = _factors(xp, sem, max_norm, norms)
    out = []
    for i, (g, f) in enumerate(zip(grads, flat)):
        s = xp.tensordot(factors, f, axes=1)  # (n,)
        s = xp.reshape(s, tuple(g.shape[1:]))
        out.append(s)
    if noisy:
        if noise is None:
            kw = {}
            try:
                import array_api_compat

                kw = {"device": array_api_compat.device(grads[0])}
            except Exception:
                pass
            noise = gaussian(xp, [tuple(g.shape[1:]) for g in grads], seed, counter, **kw)
        std = noise_multiplier * max_norm
        out = [s + upcast(xp, z, dt) * std for s, z in zip(out, noise)]
    if reduction == "mean":
        denom = batch_size
        if denom is None:
            denom = float(B) if B is not None else xp.sum(xp.ones_like(norms))
        if is_number(denom) and float(denom) == 0.0:
            denom = 1.0  # empty batch: the sum (zeros, plus noise)
        out = [s / denom for s in out]
    out = [upcast(xp, s, g.dtype) for s, g in zip(out, grads)]
    if B == 0:
        zero = xp.zeros((), dtype=xp.float32)
        return out, {"clipped_fraction": zero, "norm_mean": zero, "norm_max": zero}
    if B is None:
        frac = xp.mean(xp.astype(norms > max_norm, xp.float32))
    else:
        frac = xp.astype(xp.count_nonzero(norms > max_norm), xp.float32) / float(B)
    info = {
        "clipped_fraction": frac,
        "norm_mean": xp.astype(xp.mean(norms), xp.float32),
        "norm_max": xp.astype(xp.max(norms), xp.float32),
    }
    return out, info
