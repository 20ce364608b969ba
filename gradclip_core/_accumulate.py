"""Opt-in float64 accumulation: the same norm, to the last bit, whatever the split.

Norms accumulate in float32 (:func:`~gradclip_core._numerics.acc_dtype`). Sums of
10^5-10^6 float32 squares carry rounding errors of tens of ulp, and a sharded run
(FSDP2, ``shard_map``, pipeline or expert groups) sums them in another order: the
global norm moves with the number of shards. Within a rule wrapped by
:func:`accumulate` ``(rule, "float64")`` every norm, sum of squares, unit norm and
every partial handed to a collective is float64, the square root is taken in float64
and only then rounded: the float32 norm is the exactly rounded one, on 1, 2, 4 or 8
shards alike.

What leaves the wrapper has the dtypes it has without it: float64 info values are cast
to float32 (unless an input array is float64, where they are float64 anyway), state
leaves to the dtypes of the incoming state (jit carries, Keras variables and torch
``state_dict`` entries keep theirs), scale factors to float32 for non-float64 arrays.
"""

from __future__ import annotations

from typing import Any, Sequence

from ._effect import On, Scale, Skip, Then
from ._numerics import ACCUMULATE
from ._rule import Rule
from .backend._namespace import namespace
from .backend._primitives import override, upcast
from .backend._tree import flatten_state, unflatten_state

__all__ = ["accumulate", "DTYPES"]

DTYPES = ("float32", "float64")

# Namespaces (name, device) seen to make float64 arrays. Not cached for JAX, whose
# jax_enable_x64 flag may change between calls.
_F64_OK: set = set()


def _check_float64(xp: Any, arrays: Sequence[Any]) -> None:
    """Raise a ValueError saying how to enable float64 where ``xp`` cannot make it."""
    name = getattr(xp, "__name__", type(xp).__name__)
    device = getattr(arrays[0], "device", None)
    key = (name, str(device))
    if key in _F64_OK:
        return
    try:
        ok = xp.zeros((), dtype=xp.float64, **({} if device is None else {"device": device})).dtype == xp.float64
    except (TypeError, RuntimeError, ValueError):  # torch on MPS: no float64 at all
        ok = False
    if not ok:
        hint = ('set jax.config.update("jax_enable_x64", True) (or JAX_ENABLE_X64=1) before building arrays'
                if "jax" in name else "run the rule on a device with float64 (not MPS), or use dtype='float32'")
        raise ValueError(f"accumulate(dtype='float64'): {name} arrays on {device} cannot be float64 here; {hint}")
    if "jax" not in name:
        _F64_OK.add(key)


def _down(xp: Any, x: Any) -> Any:
    """A float64 array as float32; anything else as it is."""
    return upcast(xp, x, xp.float32) if getattr(x, "dtype", None) == xp.float64 else x


def _effect_down(xp: Any, effect: Any, wide: Sequence[bool]) -> Any:
    """``effect`` with float64 scale factors of non-float64 arrays cast to float32 (a shared factor once)."""
    if isinstance(effect, Scale):
        cast: dict = {}
        out = []
        for f, w in zip(effect.factors, wide):
            if w or getattr(f, "dtype", None) != xp.float64:
                out.append(f)
                continue
            if id(f) not in cast:
                cast[id(f)] = _down(xp, f)
            out.append(cast[id(f)])
        return effect._replace(factors=tuple(out))
    if isinstance(effect, Then):
        return Then(tuple(_effect_down(xp, e, wide) for e in effect.effects))
    if isinstance(effect, Skip):
        return effect._replace(effect=_effect_down(xp, effect.effect, wide))
    if isinstance(effect, On):
        return effect._replace(effect=_effect_down(xp, effect.effect, [wide[i] for i in effect.indices]))
    return effect  # Keep, Mask, Clamp, ZeroNonfinite, Replace: the rule's own dtypes


def _state_like(xp: Any, new: Any, old: Any) -> Any:
    """``new`` with each float64 leaf cast to the dtype of ``old``'s leaf at the same place."""
    new_leaves, treedef = flatten_state(new)
    old_leaves, _ = flatten_state(old)
    if len(old_leaves) != len(new_leaves):
        return new
    out = [upcast(xp, n, o.dtype) if getattr(n, "dtype", None) == xp.float64 and getattr(o, "dtype", None) is not None
           and o.dtype != n.dtype else n for n, o in zip(new_leaves, old_leaves)]
    return unflatten_state(treedef, out)


def _run(arrays: list, state: Any, call: Any) -> tuple:
    if not arrays:
        return call()
    xp = namespace(*arrays)
    _check_float64(xp, arrays)
    compiling = override(xp, "compiling")  # (torch.compile: no ContextVar, or a graph break)
    with ACCUMULATE.scope("float64", traced=compiling is not None and compiling(xp)):
        effect, new_state, info = call()
    wide = [x.dtype == xp.float64 or x.dtype == getattr(xp, "complex128", None) for x in arrays]
    if not any(wide):  # without the wrapper every norm in info would be float32
        info = {k: _down(xp, v) for k, v in info.items()}
    return _effect_down(xp, effect, wide), _state_like(xp, new_state, state), info


def accumulate(rule: Rule, dtype: str = "float64") -> Rule:
    """``rule`` with every norm and sum of squares accumulated in ``dtype`` (opt-in float64).

    A sharded run (torch.distributed, ``shard_map``) then gives the same float32 norm
    (the exactly rounded one) whatever the number of shards: float32 partial sums of
    10^5-10^6 elements move it by up to ~100 ulp. Outputs keep the dtypes the rule has
    without the wrapper (info float32, state as given, scales cast to each array's dtype).
    Costs one float64 reduction instead of a float32 one (no float64 copy of the arrays
    on torch; see the README for measurements). Needs a namespace that makes float64:
    JAX only with ``jax.config.update("jax_enable_x64", True)`` (a ValueError at the
    first call says so), not torch on MPS.

    Args:
      rule: any :class:`~gradclip_core.Rule` (a chain, an ``on`` restriction, ...).
      dtype: ``"float64"``, or ``"float32"`` (the rule itself, unchanged).

    Returns:
      A :class:`~gradclip_core.Rule` with the wrapped rule's name, effect and attributes.

    Example:
      >>> import numpy as np
      >>> import gradclip_core as gc
      >>> rule = gc.accumulate(gc.clip_by_global_norm(1.0), "float64")
      >>> g = [np.array([3.0, 4.0], np.float32)]
      >>> out, _, info = rule.update(g, rule.init(g))
      >>> float(info["norm"]), info["norm"].dtype, out[0].dtype
      (5.0, dtype('float32'), dtype('float32'))
    """
    if not isinstance(rule, Rule):
        raise ValueError(f"accumulate() needs a gradclip Rule, got {type(rule).__name__}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    if dtype == "float32":
        return rule

    def update_effect(grads: Sequence[Any], state: Any, params: Sequence[Any] | None = None) -> tuple:
        grads = list(grads)
        return _run(grads, state, lambda: rule.update_effect(grads, state, params))

    def project_effect(params: Sequence[Any], state: Any) -> tuple:
        params = list(params)
        return _run(params, state, lambda: rule.project_effect(params, state))

    return Rule(
        init=rule.init,
        name=rule.name,
        needs_params=rule.needs_params,
        on_update=rule.on_update,
        config={"rule": "accumulate", "rule_config": dict(rule.config), "dtype": dtype} if rule.config else {},
        update_effect=update_effect if rule.has_update else None,
        project_effect=project_effect if rule.has_project else None,
        parts=(rule,),
    )
