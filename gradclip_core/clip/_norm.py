"""Norm clipping: global (all arrays together) and per array, with framework presets.

``semantics`` chooses the formula; every preset runs in every framework:

============  ==========================================================================
canonical     ``scale = min(1, max_norm / norm)``, branch-free; norm 0 gives scale 1.
torch         ``torch.nn.utils.clip_grad_norm_``: ``min(max_norm / (norm + 1e-6), 1)``,
              always multiplied; norm = norm of the per-array norms.
optax         ``optax.clip_by_global_norm``: ``g if norm < max_norm else (g / norm) *
              max_norm``; norm = ``sqrt(sum_i sum(g_i**2))`` summed in array order.
              ``max_norm = 0`` with zero gradients gives NaN, as in optax. ord 2 only.
keras         Keras 3: global ``g * (c * min(1/norm, 1/c) + (norm - norm))`` (NaN/Inf
              norm makes everything NaN); per array ``(g * c) / max(norm, c)``
              (``clipnorm``). ``max_norm = 0`` means "off", as in Keras. ord 2 only.
============  ==========================================================================

Norms accumulate in float32 at least (bf16/fp16 are upcast), so an fp16 gradient of
300s has a finite norm here while native optax and Keras overflow to inf. Complex
arrays count with their modulus ``|z|`` (the norm of ``[3+4j, 0]`` is 5, as in
``torch.nn.utils.clip_grad_norm_`` and ``optax.clip_by_global_norm``), and are scaled by
the real factor. Scales are
cast back to each array's dtype; the optax and Keras presets divide by the norm, so
for low-precision arrays they do that arithmetic in float32 and cast the result.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from .._effect import Keep, Replace, Scale
from .._nonfinite import check_policy
from .._numerics import acc_dtype, const_like, fraction, min_ratio, stack_norm
from .._rule import Rule, factory
from .._stateless import stateless_rule
from .._validate import check_choice, check_ord, check_threshold, is_number
from ..backend._collective import active, all_reduce
from ..backend._primitives import array_norms, array_sumsq, difference_norms, is_complex, upcast

__all__ = ["clip_by_global_norm", "clip_by_norm", "SEMANTICS"]

SEMANTICS = ("canonical", "torch", "optax", "keras")
_TORCH_EPS = 1e-6


def _check_semantics(semantics: str | None, ord: float) -> str:
    sem = "canonical" if semantics is None else semantics
    check_choice("semantics", sem, SEMANTICS)
    if sem in ("optax", "keras") and ord != 2.0:
        raise ValueError(f"semantics={sem!r} only defines the 2-norm; got ord={ord!r} (use ord=2)")
    return sem


def _elem_dtype(xp: Any, x: Any) -> Any:
    """The dtype the optax / Keras formulas divide in: float32 at least, complex kept complex."""
    if is_complex(x):
        return x.dtype if x.dtype in (getattr(xp, "complex64", None), getattr(xp, "complex128", None)) else xp.complex64
    return xp.float64 if x.dtype == xp.float64 else xp.float32


def _in_acc(xp: Any, g: Any, fn: Callable[[Any, Any], Any]) -> Any:
    """Apply ``fn(g_acc, dt)`` in float32/float64 and cast the result back to ``g``'s dtype."""
    dt = _elem_dtype(xp, g)
    return upcast(xp, fn(upcast(xp, g, dt), dt), g.dtype)


def _is_off(sem: str, max_norm: Any) -> bool:
    """Keras treats a clip norm of 0 as "no clipping"."""
    return sem == "keras" and is_number(max_norm) and float(max_norm) == 0.0


def _multiplier(xp: Any, sem: str, max_norm: Any, norm: Any) -> Any:
    """The scale of the multiplicative presets (canonical, torch) for a norm."""
    if sem == "canonical":
        return min_ratio(xp, max_norm, norm)
    return xp.minimum(max_norm / (norm + _TORCH_EPS), xp.ones_like(norm))  # torch clip_grads_with_norm_


# ------------------------------------------------------------------------- sharded


def _unstack(xp: Any, v: Any, n: int) -> list:
    return [v[i] for i in range(n)]


def norms_over_shards(xp: Any, grads: Sequence[Any], ord: float, dtype: Any) -> list:
    """Per-array ``ord``-norms of the *full* arrays (``array_norms`` when not sharded).

    Under a collective (:func:`gradclip_core.backend.collective`) each array is a shard: the
    shards' norms are combined with ONE collective of the stacked partials (squares
    summed for ord 2, sums for ord 1, maxima for inf), then the per-array norms rebuilt.
    """
    return _over_shards(xp, array_norms(xp, grads, ord, dtype), ord)


def difference_norms_over_shards(xp: Any, after: Sequence[Any], before: Sequence[Any], dtype: Any) -> list:
    """:func:`norms_over_shards` (2-norms) of the updates ``after - before``, never formed
    (:func:`gradclip_core.backend.difference_norms`)."""
    return _over_shards(xp, difference_norms(xp, after, before, dtype), 2.0)


def _over_shards(xp: Any, norms: list, ord: float) -> list:
    """Per-shard norms made the norms of the full arrays (one collective; as they are when not sharded)."""
    if not active() or not norms:
        return norms
    v = xp.stack(norms)
    if ord == 2.0:
        return _unstack(xp, xp.sqrt(all_reduce(xp, v * v, "sum")), len(norms))
    return _unstack(xp, all_reduce(xp, v, "max" if ord == float("inf") else "sum"), len(norms))


def sumsq_over_shards(xp: Any, grads: Sequence[Any], dtype: Any) -> list:
    """Per-array sums of squares of the full arrays (one collective under sharding)."""
    sums = array_sumsq(xp, grads, dtype)
    if not active() or not sums:
        return sums
    return _unstack(xp, all_reduce(xp, xp.stack(sums), "sum"), len(sums))


# ----------------------------------------------------------------------------- global


def _global_norm(xp: Any, grads: Sequence[Any], ord: float, sem: str) -> Any:
    dtype = acc_dtype(xp, grads)
    if sem in ("canonical", "torch"):
        return stack_norm(xp, norms_over_shards(xp, grads, ord, dtype), ord)
    sums = sumsq_over_shards(xp, grads, dtype)
    if sem == "optax":  # jax.tree.reduce(operator.add, sums, initializer=0)
        total = sums[0]
        for s in sums[1:]:
            total = total + s
        return xp.sqrt(total)
    return xp.sqrt(xp.sum(xp.stack(sums)))  # keras: ops.sqrt(ops.sum(ops.stack(...)))


def _global_apply(xp: Any, grads: list, norm: Any, max_norm: Any, sem: str) -> tuple[Any, Any]:
    """The effect (one shared ``Scale``, or new arrays for the optax preset) and the scale for a global norm."""
    if sem in ("canonical", "torch"):
        scale = _multiplier(xp, sem, max_norm, norm)
    elif sem == "keras":
        inv_c = const_like(xp, norm, 1.0 / max_norm)
        scale = max_norm * xp.minimum(1.0 / norm, inv_c) + (norm - norm)
    else:  # optax
        trigger = norm < max_norm
        safe = xp.where(trigger, xp.ones_like(norm), norm)
        scale = xp.where(trigger, xp.ones_like(norm), max_norm / safe)

        def clip(g: Any, dt: Any) -> Any:
            n = upcast(xp, norm, dt)
            return xp.where(trigger, g, (g / n) * max_norm)

        return Replace(tuple(_in_acc(xp, g, clip) for g in grads)), scale
    return Scale((scale,) * len(grads)), scale


@factory
def clip_by_global_norm(
    max_norm: float,
    *,
    ord: float | str = 2,
    semantics: str | None = None,
    nonfinite: str = "propagate",
) -> Rule:
    """Scale all arrays together so that their global norm is at most ``max_norm``.

    Args:
      max_norm: finite bound ``>= 0`` on the global norm.
      ord: norm order, 1, 2 or ``inf`` (the global norm is the norm of all elements).
      semantics: ``None`` (canonical ``min(1, max_norm / norm)``), ``"torch"``,
        ``"optax"`` or ``"keras"``: reproduce that framework's native formula.
      nonfinite: ``"propagate" | "zero" | "skip" | "raise"``.

    Returns:
      A stateless :class:`Rule`; info has ``norm`` (global norm before clipping,
      float32) and ``scale`` (the factor applied, 1 when not clipped).

    Example:
      >>> import numpy as np
      >>> import gradclip_core as gc
      >>> rule = gc.clip_by_global_norm(1.0)
      >>> g = [np.array([3.0], np.float32), np.array([4.0], np.float32)]
      >>> out, _, info = rule.update(g, rule.init(g))
      >>> [round(float(o[0]), 6) for o in out], float(info["norm"]), round(float(info["scale"]), 6)
      ([0.6, 0.8], 5.0, 0.2)
    """
    max_norm = check_threshold("max_norm", max_norm)
    ord_ = check_ord(ord)
    sem = _check_semantics(semantics, ord_)
    check_policy(nonfinite)

    def clip(xp: Any, grads: list, params: Any) -> tuple[list, dict]:
        norm = _global_norm(xp, grads, ord_, sem)
        if _is_off(sem, max_norm):
            return Keep(), {"norm": norm, "scale": xp.ones_like(norm)}
        effect, scale = _global_apply(xp, grads, norm, max_norm, sem)
        return effect, {"norm": norm, "scale": scale}

    return stateless_rule("clip_by_global_norm", clip, nonfinite)


# ---------------------------------------------------------------------------- per array


def _per_array(xp: Any, grads: list, max_norm: Any, ord: float, sem: str) -> tuple[Any, list, list]:
    """(effect: per-array ``Scale`` or new arrays, per-array norms, per-array clipped flags)."""
    dtype = acc_dtype(xp, grads)
    if sem in ("canonical", "torch"):
        norms = norms_over_shards(xp, grads, ord, dtype)
        scales = _multiplier(xp, sem, max_norm, xp.stack(norms))  # all arrays at once: a few ops, not a few per array
        return Scale(tuple(_unstack(xp, scales, len(norms)))), norms, [scales < 1]
    if sem == "optax":
        norms = [xp.sqrt(s) for s in sumsq_over_shards(xp, grads, dtype)]
        out, flags = [], []
        for g, n in zip(grads, norms):
            trigger = n < max_norm

            def clip(a: Any, dt: Any, n: Any = n, trigger: Any = trigger) -> Any:
                return xp.where(trigger, a, (a / upcast(xp, n, dt)) * max_norm)

            out.append(_in_acc(xp, g, clip))
            flags.append(xp.logical_not(trigger))
        return Replace(tuple(out)), norms, flags
    # keras: BaseOptimizer._clip_by_norm, each array's scalars computed for all arrays at once (the same
    # element-wise operations on a vector: the same values; op by op, TensorFlow ran ~7 small ops per array)
    if not grads:
        return Replace(()), [], []
    l2sum = xp.stack(sumsq_over_shards(xp, grads, dtype))
    pred = l2sum > 0
    l2norm = xp.where(pred, xp.sqrt(xp.where(pred, l2sum, xp.ones_like(l2sum))), l2sum)
    denoms = xp.maximum(l2norm, const_like(xp, l2norm, max_norm))
    out = []
    for g, denom in zip(grads, _unstack(xp, denoms, len(grads))):

        def clip(a: Any, dt: Any, denom: Any = denom) -> Any:
            return (a * max_norm) / upcast(xp, denom, dt)

        out.append(_in_acc(xp, g, clip))
    return Replace(tuple(out)), _unstack(xp, l2norm, len(grads)), [l2norm > max_norm]


@factory
def clip_by_norm(
    max_norm: float,
    *,
    ord: float | str = 2,
    semantics: str | None = None,
    nonfinite: str = "propagate",
) -> Rule:
    """Scale each array separately so that its own norm is at most ``max_norm``.

    This is Keras' ``clipnorm`` (per variable); torch and optax have no per-array
    norm clip, so their presets apply their global formula to each array.

    Args:
      max_norm: finite bound ``>= 0`` on each array's norm.
      ord: norm order, 1, 2 or ``inf``.
      semantics: ``None`` (canonical), ``"torch"``, ``"optax"`` or ``"keras"``.
      nonfinite: ``"propagate" | "zero" | "skip" | "raise"``.

    Returns:
      A stateless :class:`Rule`; info has ``norm`` (global norm of the input, the
      ``ord``-norm of the per-array norms) and ``clipped_fraction`` (fraction of
      arrays that were scaled down).

    Example:
      >>> import numpy as np
      >>> import gradclip_core as gc
      >>> rule = gc.clip_by_norm(1.0)
      >>> g = [np.array([3.0, 4.0], np.float32), np.array([0.1], np.float32)]
      >>> out, _, info = rule.update(g, rule.init(g))
      >>> out[0].astype(float).round(6).tolist(), out[1] is g[1], float(info["clipped_fraction"])
      ([0.6, 0.8], False, 0.5)
    """
    max_norm = check_threshold("max_norm", max_norm)
    ord_ = check_ord(ord)
    sem = _check_semantics(semantics, ord_)
    check_policy(nonfinite)

    def clip(xp: Any, grads: list, params: Any) -> tuple[list, dict]:
        if _is_off(sem, max_norm):
            norm = stack_norm(xp, norms_over_shards(xp, grads, ord_, acc_dtype(xp, grads)), ord_)
            return Keep(), {"norm": norm, "clipped_fraction": xp.zeros((), dtype=xp.float32)}
        effect, norms, flags = _per_array(xp, grads, max_norm, ord_, sem)
        counts = [1] * len(flags) if len(flags) == len(grads) else [len(grads)]
        return effect, {"norm": stack_norm(xp, norms, ord_), "clipped_fraction": fraction(xp, flags, counts)}

    return stateless_rule("clip_by_norm", clip, nonfinite)

