"""Functional API: run a rule on the ``.grad`` of some parameters (or on the weights), in place.

The rule declares its effect (a scale, a mask, a clamp, new arrays; see
:mod:`gradclip_core._effect`); every factor and mask is computed and checked first,
then the effect is written into the ``.grad`` buffers (or the weights) in place with
torch's ``_foreach_*`` kernels. So a rule that raises leaves everything untouched, and a
global scale costs what ``clip_grad_norm_`` costs: one ``_foreach_mul_`` per dtype.
"""

from __future__ import annotations

import warnings
import weakref
from typing import Any, Iterable, Sequence

import torch

from gradclip_core import Keep, Rule, Scale, clip_by_global_norm, feed_loss, needs_loss
from gradclip_core.backend import (apply_effect, array_names, check_effect, counts_on_apply, flatten_state, kept_buffers, name_info,
                                   namespace)

from ._distributed import as_parallel, localize
from ._fused import split_fold

__all__ = ["apply_", "project_", "clip_grad_norm_", "collect", "update_grads", "run_update", "project_params", "check_rule", "split_named",
           "snapshot_params", "correct_update"]

Parameters = torch.Tensor | Iterable[torch.Tensor] | Iterable[tuple[str, torch.Tensor]]


def check_rule(rule: Any, where: str) -> None:
    """``rule`` must be a gradclip :class:`~gradclip_core.Rule`."""
    if not isinstance(rule, Rule):
        raise TypeError(f"{where}: rule must be a gradclip Rule (e.g. gradclip_core.clip_by_global_norm(1.0)), got {type(rule).__name__}")


def _as_list(parameters: Parameters) -> list[torch.Tensor]:
    return split_named(parameters)[0]


def split_named(parameters: Parameters) -> tuple[list[torch.Tensor], list[str] | None]:
    """The tensors of ``parameters`` and their names (``named_parameters()`` pairs), or ``None``.

    Example:
      >>> lin = torch.nn.Linear(2, 1)
      >>> split_named(lin.named_parameters())[1], split_named(lin.parameters())[1]
      (['weight', 'bias'], None)
    """
    if isinstance(parameters, torch.Tensor):
        return [parameters], None
    items = list(parameters)
    if items and all(isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], str) for x in items):
        return [t for _, t in items], [n for n, _ in items]
    return items, None


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
    with torch.no_grad(), localize([params, grads], process_group) as loc:
        params, grads = loc
        if not grads:  # nothing to clip: no state is made from zero arrays (it would be NumPy's)
            return state, {}, None, None
        views = [p.detach() for p in params] if (rule.needs_params or state is None) else None
        if state is None:
            state = rule.init(views)
        with counts_on_apply():  # (a counted value clip counts in its clamp's pass, applied below)
            effect, new_state, info = rule.update_effect(list(grads), state, views if rule.needs_params else None)
            check_effect(effect, grads, "gradclip_torch")
            if fold:
                effect, scale, skip = split_fold(effect)
                # a skip inside a chain is baked into the chain's arrays; its flag in info still tells
                for flag in (v != 0 for k, v in info.items() if k == "skipped" or k.endswith("/skipped")):
                    skip = flag if skip is None else torch.logical_or(skip, flag)
            apply_effect(namespace(*grads), grads, effect, inplace=True)
        loc.finish(effect, 1)
    return new_state, loc.info(info), scale, skip


def project_params(rule: Rule, params: Sequence[torch.Tensor], state: Any, process_group: Any = None) -> tuple[Any, dict]:
    """``rule.project_effect`` on the weights ``params``, applied in place; returns ``(state, info)``."""
    with torch.no_grad(), localize([params], process_group) as loc:
        views = [p.detach() for p in loc[0]]
        if not views:  # (a state is only ever made from real tensors, on their device)
            return state, {}
        if state is None:
            state = rule.init(views)
        effect, new_state, info = rule.project_effect(views, state)
        check_effect(effect, views, "gradclip_torch")
        apply_effect(namespace(*views), views, effect, inplace=True)
        loc.finish(effect, 0)
    return new_state, loc.info(info)


def snapshot_params(params: Sequence[torch.Tensor], scratch: dict | None = None) -> list[torch.Tensor]:
    """A copy of the weights before the step, for update clipping (one copy of ``params``).

    ``scratch`` (a dict the caller keeps from step to step, shared with
    :func:`correct_update`): the copy lands in buffers kept there
    (:func:`gradclip_core.backend.kept_buffers`: reused while they fit), so a training loop
    allocates the snapshot once instead of every step: on the CPU a fresh weight-sized
    allocation is page-faulted in again at every step (more than the copy itself), and on
    a GPU the caching allocator keeps that memory anyway. Inside a ``torch.compile`` trace
    a fresh copy is made.
    """
    with torch.no_grad():
        views = [p.detach() for p in params]
        kept = kept_buffers(namespace(*views), scratch, "snapshot", views) if views else None
        if kept is None:
            return [v.clone() for v in views]
        if all(type(v) is torch.Tensor for v in views):
            torch._foreach_copy_(kept, views)
        else:  # (DTensors: no foreach copy sharding strategy)
            for b, v in zip(kept, views):
                b.copy_(v)
        return kept


def correct_update(
    rule: Rule, params: Sequence[torch.Tensor], before: Sequence[torch.Tensor], state: Any, process_group: Any = None,
    scratch: dict | None = None,
) -> tuple[Any, dict]:
    """Update clipping (``rule.on_update``) after ``optimizer.step()``: the rule on ``params - before``.

    The rule's effect is computed (and checked) on the update ``delta = w_new - w_old`` before
    anything is written; then a weight becomes ``w_old + delta'`` where the rule changed its
    update and stays ``w_new`` (bit for bit) where it did not.

    Eager CPU, a rule with its own ``update_effect_from_weights`` (``rule.has_weights_effect``:
    Clippy, the update-norm clip, ``update_ratio`` with ``nonfinite="propagate"``, and chains of
    them): the rule reads ``(w_new, w_old)`` and ``delta`` is never written (the kernels form it
    chunk by chunk, in cache); a per-array scale is then written back only to the arrays whose
    factor is not 1, in place (``w := w_old + (w - w_old) * f``, the same values). Otherwise
    (a device, ``torch.compile``, a non-finite policy, other rules) ``delta`` is formed in
    buffers that ``scratch`` (the dict of :func:`snapshot_params`) keeps for the next call,
    reused while they fit (no weight-sized allocation per step), and a per-array scale is
    applied in place in them.

    Returns:
      ``(state, info)``.
    """
    with torch.no_grad(), localize([params, before], process_group) as loc:
        params, before = loc
        views = [p.detach() for p in params]
        if not views:
            return state, {}
        if state is None:
            state = rule.init(list(before))
        before = list(before)
        if rule.has_weights_effect and _eager_cpu(views, before):
            effect, new_state, info = rule.update_effect_from_weights(views, before, state)
            check_effect(effect, views, "gradclip_torch")
            factors = _array_factors(effect, len(views))
            if isinstance(effect, Keep):
                return new_state, loc.info(info)
            if factors is not None:
                _write_back_scaled(views, before, None, factors)
                loc.sync(0)  # replicas this rank did not see: the weights of the rank that did
                return new_state, loc.info(info)
            deltas = _delta(views, before, scratch)  # another effect (a chain's): the update, formed now
        else:
            deltas = _delta(views, before, scratch)
            effect, new_state, info = rule.update_effect(list(deltas), state, before)
            check_effect(effect, deltas, "gradclip_torch")
        if isinstance(effect, Keep):
            return new_state, loc.info(info)
        factors = _array_factors(effect, len(deltas))
        if factors is not None and _on_host(views, factors):  # CPU: write back only the arrays whose factor is not 1
            _write_back_scaled(views, before, deltas, factors)
        elif factors is not None:  # one factor per array (both update rules): unchanged where it is 1
            apply_effect(namespace(*deltas), deltas, effect, inplace=True)  # deltas := delta'
            torch._foreach_add_(deltas, list(before))  # deltas := w_old + delta'
            for p, d, f in zip(views, deltas, factors):  # (the factor as applied: cast to the array's dtype)
                torch.where(f.to(d.dtype) == 1, p, d, out=p)
        else:  # any other effect: compare with the original delta, recomputed (the same op)
            apply_effect(namespace(*deltas), deltas, effect, inplace=True)  # deltas := delta'
            for p, b, d in zip(views, before, deltas):
                p.copy_(torch.where(d == p - b, p, b + d))
        loc.sync(0)  # replicas this rank did not see: the weights of the rank that did
    return new_state, loc.info(info)


def _delta(views: list[torch.Tensor], before: list[torch.Tensor], scratch: dict | None) -> list[torch.Tensor]:
    """``w_new - w_old``, in the buffers of ``scratch["delta"]`` (:func:`gradclip_core.backend.kept_buffers`)."""
    kept = kept_buffers(namespace(*views), scratch, "delta", views)
    if kept is None:
        return torch._foreach_sub(views, before)
    for v, b, d in zip(views, before, kept):  # (elementwise into a buffer that aliases neither input)
        torch.sub(v, b, out=d)
    return kept


def _eager_cpu(views: Sequence[torch.Tensor], before: Sequence[torch.Tensor]) -> bool:
    """Whether the post-step seam applies: plain eager CPU tensors (the kernels that never form the update)."""
    return not torch.compiler.is_compiling() and all(
        type(t) is torch.Tensor and t.device.type == "cpu" for t in (*views, *before))


def _on_host(views: Sequence[torch.Tensor], factors: Sequence[torch.Tensor]) -> bool:
    """Whether the factors can be read without a device sync: every tensor on the CPU, eager."""
    return not torch.compiler.is_compiling() and all(t.device.type == "cpu" for t in (*views, *factors))


def _write_back_scaled(views: Sequence[torch.Tensor], before: Sequence[torch.Tensor], deltas: Sequence[torch.Tensor] | None,
                       factors: Sequence[torch.Tensor]) -> None:
    """``w := w_old + delta * f`` for the arrays whose factor (cast to their dtype) is not 1, read on the host.

    The same values as the device path of :func:`correct_update` (``where(f == 1, w_new, w_old +
    delta * f)``), without its three passes over every weight: an update that is not clipped
    (the common step) costs no write at all, and a clipped array one multiply, one add, one copy.
    ``deltas=None`` (the post-step seam: no delta buffer): ``w := (w - w_old) * f + w_old`` in place, the
    same per-element operations (the update rounded to the array's dtype, times ``f``, plus ``w_old``).
    """
    seen: dict = {}  # (factor, dtype) -> whether it changes its arrays (a global factor is read once)
    for p, b, d, f in zip(views, before, deltas or [None] * len(views), factors):
        key = (id(f), p.dtype)
        if key not in seen:
            f_d = f.to(p.dtype)
            seen[key] = (f_d, bool(f_d != 1))  # (NaN != 1: written, as the device path does)
        f_d, changes = seen[key]
        if changes and d is None:
            p.sub_(b).mul_(f_d).add_(b)
        elif changes:
            p.copy_(d.mul_(f_d).add_(b))


def _array_factors(effect: Any, n: int) -> list | None:
    """The per-array 0-d factors of a multiplying ``Scale`` (``None`` for any other effect)."""
    if not isinstance(effect, Scale) or effect.divide or len(effect.factors) != n:
        return None
    if any(not isinstance(f, torch.Tensor) or f.ndim != 0 for f in effect.factors):
        return None
    return list(effect.factors)


def apply_(parameters: Parameters, rule: Rule, state: Any = None, *, process_group: Any = None,
           loss: Any = None, parallel: Any = None) -> tuple[Any, dict]:
    """Apply ``rule.update`` to the gradients of ``parameters``, in place (like ``clip_grad_norm_``).

    Parameters whose ``grad`` is ``None`` are skipped, as torch does: the rule sees only
    the parameters that have a gradient. Nothing is synchronised with the host (except
    ``nonfinite="raise"``, which must look at the values). Multi-tensor work runs on
    torch's ``_foreach`` kernels. Call it after ``backward()`` (and after
    ``GradScaler.unscale_(optimizer)`` under AMP) and before ``optimizer.step()``.

    Args:
      parameters: a tensor or an iterable of tensors (e.g. ``model.parameters()``), or
        of ``(name, tensor)`` pairs (``model.named_parameters()``): then errors name
        the parameters and per-array info keys use the names (``sparsity/0.weight``).
      rule: a gradclip rule, e.g. ``gradclip_core.clip_by_global_norm(1.0)``.
      state: the rule state returned by the previous call, or ``None`` to start from
        ``rule.init`` of the parameters that have a gradient (stateless rules need none).
        Stateful rules (AutoClip, ZClip, ``record_norms``, pruning) need the returned
        state passed back at every call: calling again with ``None`` on the same
        parameters warns (the rule would start over every time).
        A call where no parameter has a gradient changes nothing and returns ``state``
        as given (``None`` stays ``None``: the state is made at the first call with
        gradients, on their device).
      process_group: for plain tensors that are each rank's shard (block of rows) of the
        full arrays: reduce the rule's global quantities over this group. Not needed for
        DDP (replicated gradients) nor for FSDP2 (DTensors are detected, their mesh's
        group is used).
      parallel: a :class:`gradclip_torch.Parallel`: pipeline stages and expert groups
        (their global quantities are summed over those groups too).
      loss: the step's loss (a 0-d tensor, detached here), for rules that test it
        (:func:`gradclip_core.skip_on_spike` with ``loss=True``, which require it). A
        skip here only zeroes the gradients: check ``info["skipped"]`` before
        ``optimizer.step()`` (one sync), or use :func:`attach` for a true skip.

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
    _refuse_on_update(rule, "apply_")
    process_group = as_parallel(process_group, parallel)
    tensors, names = split_named(parameters)
    params, grads = collect(tensors)
    if names is not None:
        names = [n for n, t in zip(names, tensors) if t.grad is not None]
    if rule.needs_params:
        _check_devices(list(params) + list(grads), "the parameters and their gradients")
    _warn_dropped_state(rule, state, params)
    given = state
    if loss is None and needs_loss(rule):
        raise ValueError(f"apply_: the rule {rule.name!r} tests the loss (skip_on_spike(loss=True)): pass loss=")
    if loss is not None and grads:
        if state is None:
            with torch.no_grad(), array_names(names):
                state = rule.init([p.detach() for p in params])
        if isinstance(loss, torch.Tensor):
            loss = loss.detach().to(grads[0].device)
        state = feed_loss(state, loss)
    with array_names(names):
        new_state, info = update_grads(rule, params, grads, state, process_group)
    _remember(rule, given, new_state, params)
    return new_state, name_info(info, names)


def project_(parameters: Parameters, rule: Rule, state: Any = None, *, process_group: Any = None,
             parallel: Any = None) -> tuple[Any, dict]:
    """Apply ``rule.project`` to the weights of ``parameters``, in place (after ``optimizer.step()``).

    Clipping rules do nothing here; constraints and pruning re-project the weights.

    Args:
      parameters: a tensor or an iterable of tensors, or of ``(name, tensor)`` pairs
        (``model.named_parameters()``), as in :func:`apply_`.
      rule: a gradclip rule.
      state: the rule state (as returned by :func:`apply_`), or ``None`` for ``rule.init``.
      process_group: as in :func:`apply_` (sharded plain tensors).
      parallel: as in :func:`apply_` (pipeline stages, expert groups).

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
    process_group = as_parallel(process_group, parallel)
    params, names = split_named(parameters)
    _check_devices(params, "the parameters")
    with array_names(names):
        new_state, info = project_params(rule, params, state, process_group)
    return new_state, name_info(info, names)


def _refuse_on_update(rule: Rule, where: str) -> None:
    if rule.on_update:
        raise ValueError(
            f"{where}: {rule.name} clips the optimizer's update (w_new - w_old), not the gradients; "
            "use gradclip_torch.attach(optimizer, rule), which runs it after optimizer.step()"
        )


# Stateful rules whose state apply_ made from None, and for which parameters (the id of the
# first one): a second call on them with None again means the caller dropped the state
# (ZClip / AutoClip would stay in warm-up forever). (project_ is not checked: a one-shot
# pruning or constraint call without keeping the state is a normal use.)
_STARTED: "weakref.WeakKeyDictionary[Rule, set[int]]" = weakref.WeakKeyDictionary()


def _remember(rule: Rule, given: Any, new_state: Any, params: Sequence[torch.Tensor]) -> None:
    if given is None and params and new_state is not None and flatten_state(new_state)[0]:
        _STARTED.setdefault(rule, set()).add(id(params[0]))


def _warn_dropped_state(rule: Rule, state: Any, params: Sequence[torch.Tensor]) -> None:
    if state is None and params and id(params[0]) in _STARTED.get(rule, ()):
        warnings.warn(
            f"{rule.name} keeps a state (step counts, norm history, masks) but was called again with "
            "state=None, so it starts over at every call (AutoClip/ZClip never leave their warm-up, "
            "pruning schedules never advance). Pass the returned state back: "
            "state, info = gradclip_torch.apply_(params, rule, state).",
            UserWarning,
            stacklevel=3,
        )


def _norm_of(info: dict, rule: Rule) -> torch.Tensor:
    """The total norm a rule reports: ``info["norm"]``, or the one ``.../norm`` of a chain."""
    if "norm" in info:
        return info["norm"]
    found = [v for k, v in info.items() if k.endswith("/norm")]
    if len(found) == 1:
        return found[0]
    raise TypeError(
        f"clip_grad_norm_: {rule!r} reports {'no' if not found else 'several'} 'norm' in its info, and "
        "clip_grad_norm_ returns the total norm; use a norm clip (clip_by_global_norm, clip_by_norm) or "
        "gradclip_torch.apply_, which returns the whole info"
    )


def clip_grad_norm_(
    parameters: Parameters,
    max_norm: float | torch.Tensor | Rule,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
    foreach: bool | None = None,
) -> torch.Tensor:
    """A drop-in for ``torch.nn.utils.clip_grad_norm_``: clips in place, returns the total norm.

    With a number, it is ``clip_grad_norm_`` itself, bit for bit in float32:
    ``gradclip_core.clip_by_global_norm(max_norm, ord=norm_type, semantics="torch")`` on
    the gradients (the same ``_foreach_norm`` / ``_foreach_mul_`` kernels), returning
    the total norm before clipping. With a gradclip rule instead of the number, that
    rule runs (e.g. the canonical formula ``clip_by_global_norm(1.0)``, or
    ``semantics="optax"``) and its reported norm is returned. Stateful rules (AutoClip,
    ZClip, pruning) need their state carried from step to step: use :func:`attach` or
    :func:`apply_` for them.

    Differences from torch: the norm is float32 at least (torch returns it in the
    gradients' dtype, so fp16/bf16 norms can overflow there), ``norm_type`` is 1, 2 or
    inf, ``foreach`` is accepted and ignored (the foreach kernels are used wherever
    torch has them), and ``error_if_nonfinite=True`` raises before anything changed
    when an element is NaN/Inf (torch checks the total norm, so it also raises when
    finite gradients overflow the norm), naming the parameters when
    ``named_parameters()`` are given.

    Args:
      parameters: a tensor, an iterable of tensors, or of ``(name, tensor)`` pairs;
        parameters without a gradient are skipped.
      max_norm: the bound (a number, or a 0-d tensor), or a stateless gradclip rule.
      norm_type: 1, 2 or ``inf`` (with a number ``max_norm``).
      error_if_nonfinite: raise ``RuntimeError`` on NaN/Inf gradients (number ``max_norm``
        only; give a rule ``nonfinite="raise"`` instead).
      foreach: ignored (torch's argument).

    Returns:
      The total norm of the gradients before clipping, a 0-d tensor on their device
      (``tensor(0.)`` when no parameter has a gradient, as in torch).

    Raises:
      RuntimeError: ``error_if_nonfinite`` and a NaN/Inf gradient; nothing was changed.
      TypeError: a stateful rule, or a rule that reports no norm.
      ValueError: a ``norm_type`` other than 1, 2 or inf, or a negative ``max_norm``.

    Example:
      >>> import torch
      >>> import gradclip_torch
      >>> w = torch.nn.Parameter(torch.zeros(2))
      >>> w.grad = torch.tensor([3.0, 4.0])
      >>> gradclip_torch.clip_grad_norm_([w], 1.0)
      tensor(5.)
      >>> [round(v, 4) for v in w.grad.tolist()]
      [0.6, 0.8]
    """
    del foreach
    if isinstance(max_norm, Rule):
        if error_if_nonfinite:
            raise ValueError("clip_grad_norm_: with a rule, ask it for nonfinite='raise' instead of error_if_nonfinite")
        rule = max_norm
        _refuse_on_update(rule, "clip_grad_norm_")
    else:
        try:
            rule = clip_by_global_norm(max_norm, ord=norm_type, semantics="torch",
                                       nonfinite="raise" if error_if_nonfinite else "propagate")
        except ValueError as err:
            raise ValueError(f"clip_grad_norm_: {err} (norm_type is the ord, max_norm the bound)") from err
    tensors, names = split_named(parameters)
    params, grads = collect(tensors)
    if not grads:
        return torch.tensor(0.0)
    if names is not None:
        names = [n for n, t in zip(names, tensors) if t.grad is not None]
    if rule.needs_params:
        _check_devices(list(params) + list(grads), "the parameters and their gradients")
    with torch.no_grad(), array_names(names):
        template = rule.init([p.detach() for p in params])
    if flatten_state(template)[0]:
        raise TypeError(
            f"clip_grad_norm_: {rule.name} keeps a state from step to step (norm history, step counts, masks), "
            "which clip_grad_norm_ cannot carry: use gradclip_torch.attach(optimizer, rule), or "
            "state, info = gradclip_torch.apply_(params, rule, state)"
        )
    try:
        with array_names(names):
            _, info = update_grads(rule, params, grads, template)
    except FloatingPointError as err:
        if not error_if_nonfinite:
            raise
        raise RuntimeError(
            f"The total norm of order {float(norm_type)} for gradients from `parameters` is non-finite, so it "
            f"cannot be clipped ({err}). To disable this error and scale the gradients by the non-finite norm "
            "anyway, set `error_if_nonfinite=False`"
        ) from err
    return _norm_of(info, rule)
