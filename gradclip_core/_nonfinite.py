"""Non-finite policies, written once and applied around any rule's ``update``.

``nonfinite=`` chooses what a rule does when its input holds NaN or +-Inf:

- ``"propagate"`` (default): no check, no cost; the rule's formula does what it does
  (usually NaN spreads, as in torch, optax and Keras).
- ``"zero"``: non-finite elements are replaced by 0 *before* the rule runs, so the rule
  acts on the finite part of the gradient.
- ``"skip"``: branch-free skip of the whole step: the rule returns all-zero gradients
  and its state unchanged, and ``info["skipped"]`` is 1. Adapters that own the optimizer
  (``gradclip_optax.wrap``, ``gradclip_keras.Optimizer``) also skip the inner optimizer
  on that signal, so params and optimizer state stay unchanged.
- ``"raise"``: raises ``FloatingPointError`` before anything is changed. This needs the
  values on the host (one sync), so it cannot run under ``jax.jit``,
  ``tf.function`` or ``torch.compile``.

Every policy other than ``"propagate"`` reports ``info["nonfinite"]`` (1 if any
non-finite input element was seen, else 0, int32).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from ._effect import Skip, ZeroNonfinite, then
from .backend._collective import active, all_reduce
from .backend._names import array_label
from .backend._namespace import namespace
from .backend._tree import tree_where

__all__ = ["POLICIES", "check_policy", "guard_update", "all_finite"]

POLICIES = ("propagate", "zero", "skip", "raise")


def check_policy(value: Any) -> str:
    """Validate ``nonfinite=``."""
    if value not in POLICIES:
        raise ValueError(f"nonfinite must be one of {list(POLICIES)}, got {value!r}")
    return value


def all_finite(xp: Any, xs: Sequence[Any]) -> Any:
    """0-d bool array: every element of every array is finite."""
    flags = [xp.all(xp.isfinite(x)) for x in xs]
    out = flags[0]
    for f in flags[1:]:
        out = xp.logical_and(out, f)
    if active():  # shards: every participant must take the same branch (one collective)
        out = all_reduce(xp, xp.astype(xp.logical_not(out), xp.int32), "max") == 0
    return out


def _flag(xp: Any, pred: Any) -> Any:
    return xp.astype(pred, xp.int32)


def guard_update(update: Callable[..., tuple], policy: str) -> Callable[..., tuple]:
    """Wrap ``update_effect(grads, state, params=None) -> (effect, state, info)`` with a policy.

    ``"zero"`` runs the rule on the cleaned arrays and prefixes its effect with
    :class:`~gradclip_core.ZeroNonfinite`; ``"skip"`` wraps it in
    :class:`~gradclip_core.Skip` (all zeros when non-finite) and keeps the old state.
    """
    check_policy(policy)
    if policy == "propagate":
        return update

    def guarded(grads: Sequence[Any], state: Any, params: Sequence[Any] | None = None):
        grads = list(grads)
        if not grads:
            return update(grads, state, params)
        xp = namespace(*grads)
        finite = all_finite(xp, grads)
        if policy == "raise":
            try:
                ok = bool(finite)
            except Exception as err:  # a tracer: no concrete value under jit
                raise RuntimeError(
                    "nonfinite='raise' needs concrete values (one host sync) and cannot run under "
                    "jax.jit, tf.function or torch.compile; use nonfinite='skip' or 'zero' there"
                ) from err
            if not ok:
                bad = [array_label(i) for i, g in enumerate(grads) if not bool(xp.all(xp.isfinite(g)))]
                raise FloatingPointError(
                    f"non-finite values (NaN or Inf) in {', '.join(bad)}; nothing was changed (nonfinite='raise')"
                )
            effect, new_state, info = update(grads, state, params)
            info = dict(info)
            info["nonfinite"] = _flag(xp, xp.logical_not(finite))
            return effect, new_state, info
        if policy == "zero":
            cleaned = [xp.where(xp.isfinite(g), g, xp.zeros_like(g)) for g in grads]
            effect, new_state, info = update(cleaned, state, params)
            info = dict(info)
            info["nonfinite"] = _flag(xp, xp.logical_not(finite))
            return then(ZeroNonfinite(), effect), new_state, info
        # skip
        effect, new_state, info = update(grads, state, params)
        effect = Skip(effect, xp.logical_not(finite))
        new_state = tree_where(xp, finite, new_state, state)
        info = dict(info)
        info["nonfinite"] = _flag(xp, xp.logical_not(finite))
        info["skipped"] = info["nonfinite"]
        return effect, new_state, info

    return guarded
