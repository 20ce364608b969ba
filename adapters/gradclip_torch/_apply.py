"""Functional API: run a rule on the ``.grad`` of some parameters (or on the weights), in place.

The rule declares its effect (a scale, a mask, a clamp, new arrays; see
:mod:`gradclip_core._effect`); every factor and mask is computed and checked first,
then the effect is written into the ``.grad`` buffers (or the weights) in place with
torch's ``_foreach_*`` kernels. So a rule that raises leaves everything untouched, and a
global scale costs what ``clip_grad_norm_`` costs: one ``_foreach_mul_`` per dtype.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch

from gradclip_core import Rule
from gradclip_core.backend import apply_effect, check_effect, namespace

from ._distributed import localize
from ._fused import split_fold

__all__ = ["apply_", "project_", "collect", "update_grads", "run_update", "project_params", "check_rule"]

Parameters = torch.Tensor | Iterable[torch.Tensor]


def check_rule(rule: Any, where: str) -> None:
    """``rule`` must be a gradclip :class:`~gradclip_core.Rule`."""
    if not isinstance(rule, Rule):
        raise TypeError(f"{where}: rule must be a gradclip Rule (e.g. gradclip_core.clip_by_global_norm(1.0)), got {type(rule).__name__}")


def _as_list(parameters: Parameters) -> list[torch.Tensor]:
    if isinstance(parameters, torch.Tensor):
        return [parameters]
    return list(parameters)


def _check_devices(tensors: Sequence[torch.Tensor], what: str) -> None:
    if not tensors:
        return
    first = tensors[0].device
    if any(t.device != first for t in tensors):
        devices = sorted({str(t.device) for t in tensors})
        raise ValueError(
            f"gradclip_torch: {what} are on several devices ({', '.join(devices)}); a gradclip rule "
            "computes one result over all of them and needs them on one device (apply it per device, "
            "or move them, as torch.nn.utils.clip_grad_norm_ users do with foreach)"
        )


def collect(parameters: Parameters) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The parameters that have a gradient, and their gradients (``grad is None`` skipped).

    Raises:
      ValueError: gradients on several devices, or sparse gradients.

    Example:
      >>> import torch
      >>> a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(3))
      >>> a.grad = torch.ones(2)
      >>> [tuple(p.shape) for p in collect([a, b])[0]]
      [(2,)]
    """
    params = [p for p in _as_list(parameters) if p.grad is not None]
    grads = [p.grad for p in params]
    for g in grads:
        if g.is_sparse:
            raise ValueError("gradclip_torch: sparse gradients are not supported (densify them, or clip them yourself)")
    _check_devices(grads, "the gradients")
    return params, grads


def update_grads(
    rule: Rule, params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], state: Any, process_group: Any = None
) -> tuple[Any, dict]:
    """``rule.update_effect`` on ``grads``, applied to them in place; returns ``(state, info)``.

    Everything is computed and checked before anything is written: if the rule raises,
    the gradients and ``state`` are untouched. DTensors (FSDP2) or ``process_group``: the
    rule runs on the local shards under a collective (``gradclip_torch._distributed``).
    """
    state, info, _, _ = run_update(rule, params, grads, state, process_group)
    return state, info


def run_update(
    rule: Rule,
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    state: Any,
    process_group: Any = None,
    *,
    fold: bool = False,
) -> tuple[Any, dict, Any, Any]:
    """:func:`update_grads`, optionally leaving a final global scale and skip to a fused optimizer.

    Returns:
      ``(state, info, scale, skip)``: with ``fold``, the global scale (0-d tensor) and the
      skip flag (0-d bool) the caller hands to the optimizer (``None`` when there is none);
      everything else of the effect is applied in place.
    """
    scale = skip = None
    with torch.no_grad(), localize([params, grads], process_group) as (params, grads):
        if not grads:
            return (rule.init([]) if state is None else state), {}, None, None
        views = [p.detach() for p in params] if (rule.needs_params or state is None) else None
        if state is None:
            state = rule.init(views)
        effect, new_state, info = rule.update_effect(list(grads), state, views if rule.needs_params else None)
        check_effect(effect, grads, "gradclip_torch")
        if fold:
            effect, scale, skip = split_fold(effect)
            # a skip inside a chain is baked into the chain's arrays; its flag in info still tells
            for flag in (v != 0 for k, v in info.items() if k == "skipped" or k.endswith("/skipped")):
                skip = flag if skip is None else torch.logical_or(skip, flag)
        apply_effect(namespace(*grads), grads, effect, inplace=True)
    return new_state, dict(info), scale, skip


def project_params(rule: Rule, params: Sequence[torch.Tensor], state: Any, process_group: Any = None) -> tuple[Any, dict]:
    """``rule.project_effect`` on the weights ``params``, applied in place; returns ``(state, info)``."""
    with torch.no_grad(), localize([params], process_group) as (params,):
        views = [p.detach() for p in params]
        if state is None:
            state = rule.init(views)
        if not views:
            return state, {}
        effect, new_state, info = rule.project_effect(views, state)
        check_effect(effect, views, "gradclip_torch")
        apply_effect(namespace(*views), views, effect, inplace=True)
    return new_state, dict(info)


def apply_(parameters: Parameters, rule: Rule, state: Any = None, *, process_group: Any = None) -> tuple[Any, dict]:
    """Apply ``rule.update`` to the gradients of ``parameters``, in place (like ``clip_grad_norm_``).

    Parameters whose ``grad`` is ``None`` are skipped, as torch does: the rule sees only
    the parameters that have a gradient. Nothing is synchronised with the host (except
    ``nonfinite="raise"``, which must look at the values). Multi-tensor work runs on
    torch's ``_foreach`` kernels. Call it after ``backward()`` (and after
    ``GradScaler.unscale_(optimizer)`` under AMP) and before ``optimizer.step()``.

    Args:
      parameters: a tensor or an iterable of tensors (e.g. ``model.parameters()``).
      rule: a gradclip rule, e.g. ``gradclip_core.clip_by_global_norm(1.0)``.
      state: the rule state returned by the previous call, or ``None`` to start from
        ``rule.init`` of the parameters that have a gradient (stateless rules need none).
      process_group: for plain tensors that are each rank's shard (block of rows) of the
        full arrays: reduce the rule's global quantities over this group. Not needed for
        DDP (replicated gradients) nor for FSDP2 (DTensors are detected, their mesh's
        group is used).

    Returns:
      ``(state, info)``: the new rule state, and a dict of 0-d tensors for logging
      (e.g. ``norm`` and ``scale``), left on the device.

    Raises:
      ValueError: gradients on several devices, or a rule that changes shapes/dtypes.
      FloatingPointError: ``nonfinite="raise"`` and a NaN/Inf gradient; nothing changed.

    Example:
      >>> import torch
      >>> import gradclip_core as gc
      >>> import gradclip_torch
      >>> w = torch.nn.Parameter(torch.zeros(2))
      >>> w.grad = torch.tensor([3.0, 4.0])
      >>> state, info = gradclip_torch.apply_([w], gc.clip_by_global_norm(1.0))
      >>> w.grad.tolist(), float(info["norm"])
      ([0.6000000238418579, 0.800000011920929], 5.0)
    """
    check_rule(rule, "apply_")
    params, grads = collect(parameters)
    if rule.needs_params:
        _check_devices(list(params) + list(grads), "the parameters and their gradients")
    return update_grads(rule, params, grads, state, process_group)


def project_(parameters: Parameters, rule: Rule, state: Any = None, *, process_group: Any = None) -> tuple[Any, dict]:
    """Apply ``rule.project`` to the weights of ``parameters``, in place (after ``optimizer.step()``).

    Clipping rules do nothing here; constraints and pruning re-project the weights.

    Args:
      parameters: a tensor or an iterable of tensors.
      rule: a gradclip rule.
      state: the rule state (as returned by :func:`apply_`), or ``None`` for ``rule.init``.
      process_group: as in :func:`apply_` (sharded plain tensors).

    Returns:
      ``(state, info)`` like :func:`apply_`.

    Example:
      >>> import torch
      >>> import gradclip_core as gc
      >>> import gradclip_torch
      >>> w = torch.nn.Parameter(torch.ones(2))
      >>> _, info = gradclip_torch.project_([w], gc.clip_by_value(1.0))
      >>> w.tolist(), info
      ([1.0, 1.0], {})
    """
    check_rule(rule, "project_")
    params = _as_list(parameters)
    _check_devices(params, "the parameters")
    return project_params(rule, params, state, process_group)
