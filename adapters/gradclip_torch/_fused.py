"""Folding a rule's global scale (and skip) into a fused optimizer's ``grad_scale`` / ``found_inf``.

torch's fused optimizers (``Adam``/``AdamW``/``SGD``/``Adagrad`` with ``fused=True``) read two
optional attributes in ``step()``: every gradient is divided by ``optimizer.grad_scale``
inside the fused kernel (and stored back divided), and a nonzero ``optimizer.found_inf``
skips the whole update (weights, moments, step counts), with no host synchronisation.
``torch.amp.GradScaler`` uses them to unscale; :func:`gradclip_torch.attach` uses them
for a rule whose effect is one global scale ``s`` (global-norm clip, AutoClip, ZClip,
or a skip): ``grad_scale = 1 / s`` instead of a separate multiply pass, so clipping costs
one read of the gradients (their norm), and ``nonfinite="skip"`` becomes a true skip.

The fused kernel computes ``g / (1 / s)`` where the unfused path computes ``g * s``:
within one or two ulp of each other (``1 / s`` is rounded once). ``fold=False``, or a
rule with ``semantics="torch"`` under ``fold="auto"``, keeps the exact multiply.
"""

from __future__ import annotations

from typing import Any

import torch

from gradclip_core import Keep, Rule, Scale, Skip, Then

__all__ = ["fusable", "resolve_fold", "split_fold", "FOLDS"]

FOLDS = ("auto", True, False)


def fusable(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` takes ``grad_scale`` / ``found_inf`` (a fused torch optimizer).

    Example:
      >>> p = torch.nn.Parameter(torch.ones(2))
      >>> fusable(torch.optim.AdamW([p], fused=True)), fusable(torch.optim.AdamW([p]))
      (True, False)
    """
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False)) and all(
        bool(g.get("fused")) for g in optimizer.param_groups
    )


def _uses_torch_semantics(config: Any) -> bool:
    if isinstance(config, dict):
        return config.get("semantics") == "torch" or any(_uses_torch_semantics(v) for v in config.values())
    if isinstance(config, (list, tuple)):
        return any(_uses_torch_semantics(v) for v in config)
    return False


def resolve_fold(fold: Any, optimizer: torch.optim.Optimizer, rule: Rule) -> bool:
    """``fold=`` of :func:`attach`: ``"auto"`` folds into fused optimizers, except rules asking for
    ``semantics="torch"`` (bit-exact with ``clip_grad_norm_``); ``True`` requires a fused optimizer."""
    if fold not in FOLDS:
        raise ValueError(f"fold must be 'auto', True or False, got {fold!r}")
    if fold is False:
        return False
    if fold is True:
        if not fusable(optimizer):
            raise ValueError(
                f"fold=True needs a fused optimizer (e.g. torch.optim.AdamW(..., fused=True)), "
                f"got {type(optimizer).__name__} without fused=True on every param group"
            )
        return True
    return fusable(optimizer) and not _uses_torch_semantics(dict(rule.config))


def _shared(effect: Any) -> Any:
    """The one 0-d factor of a global :class:`Scale`, or ``None``."""
    if not isinstance(effect, Scale) or effect.divide or not effect.factors:
        return None
    f = effect.factors[0]
    if not isinstance(f, torch.Tensor) or f.ndim != 0 or any(x is not f for x in effect.factors):
        return None
    return f


def split_fold(effect: Any) -> tuple[Any, Any, Any]:
    """``(rest, scale, skip)``: the part of ``effect`` to apply in place, and what folds into the optimizer.

    A global scale at the end of the effect (possibly under a :class:`Skip`, possibly after
    other effects in a :class:`Then`) folds into ``grad_scale``; a skip into ``found_inf``.

    Example:
      >>> s = torch.tensor(0.5)
      >>> rest, scale, skip = split_fold(Skip(Scale((s, s)), torch.tensor(False)))
      >>> rest, float(scale), bool(skip)
      (Keep(), 0.5, False)
    """
    if isinstance(effect, Skip):
        rest, scale, skip = split_fold(effect.effect)
        if skip is not None:  # nested skips: either one skips
            return rest, scale, torch.logical_or(skip, effect.skip)
        return rest, scale, effect.skip
    f = _shared(effect)
    if f is not None:
        return Keep(), f, None
    if isinstance(effect, Then) and effect.effects:
        rest, scale, skip = split_fold(effect.effects[-1])
        if scale is not None or skip is not None:
            head = tuple(effect.effects[:-1]) + (() if isinstance(rest, Keep) else (rest,))
            return (Then(head) if len(head) > 1 else head[0] if head else Keep()), scale, skip
    return effect, None, None
