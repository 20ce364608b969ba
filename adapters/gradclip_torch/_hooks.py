"""Optimizer hooks: run a rule inside every ``optimizer.step()``, with checkpointable state.

:func:`attach` registers two hooks on a ``torch.optim.Optimizer``:

- a step *pre*-hook: ``rule.update`` on the gradients of the optimizer's parameters
  that have one (``grad is None`` skipped), in place, before the optimizer reads them;
- a step *post*-hook: ``rule.project`` on the weights of those same parameters.

**Fused optimizers** (``Adam``/``AdamW``/``SGD``/``Adagrad`` with ``fused=True``): a rule whose
effect is one global scale (global-norm clip, AutoClip, ZClip) is folded into the fused
step's ``grad_scale`` instead of a separate multiply pass, and a ``nonfinite="skip"`` step
into ``found_inf``: a true skip (weights, moments and step counts unchanged) with no host
sync. See :mod:`gradclip_torch._fused` for the rounding (``fold=False`` or
``semantics="torch"`` keep the exact multiply).

AMP: with ``torch.amp.GradScaler`` call ``scaler.step(optimizer)`` as usual. For an
unfused optimizer it unscales the gradients (if ``scaler.unscale_`` was not called
already) and then calls ``optimizer.step()`` only when they are finite, so the rule sees
unscaled gradients, and a step skipped by the scaler skips the rule too: its state stays
that of the last real step, and ``handle.info`` reports that step's values with
``info["skipped"] = 1`` (see :attr:`Handle.info`). For a fused optimizer GradScaler leaves the
gradients scaled and hands the loss scale to the kernel: the hook then divides the
gradients by it first (exact: GradScaler's scales are powers of two), so the rule still
sees the true gradients; on a step GradScaler skips (inf/NaN) the rule's state is kept
and ``info["skipped"]`` is 1.

**Update clipping** (``rule.on_update``: :func:`gradclip_core.clippy`,
:func:`gradclip_core.clip_update_norm`): torch optimizers write their update into the
weights in place, so the pre-hook keeps a copy of the weights that have a gradient
(``w_old``: one copy of those weights), and the post-hook runs the rule on the update
``delta = w_new - w_old`` with ``params = w_old``, and writes ``w_old + delta'`` where the rule
changed the update (``w_new`` bit for bit where it did not). On the eager CPU the rules that
read the weights after and before the step themselves (``rule.has_weights_effect``: Clippy,
the update-norm clip, ``update_ratio``, with ``nonfinite="propagate"``; the core's post-step
seam ``rule.update_effect_from_weights``) never have ``delta`` written: memory, one copy of the
stepped weights; traffic, the copy (read + write), the rule's reads of ``w_new`` and ``w_old``,
and the write-back in place only for the arrays the rule scaled (none on an unclipped step).
Otherwise (a device, ``torch.compile``, a non-finite policy, other update rules) ``delta`` is
formed in a second weight-sized buffer (two reads, one write) and the write-back reads it
(three reads, one write; on the CPU only for the arrays the rule scaled). The handle keeps
its buffers and reuses them at the next step (a weight-sized allocation at every step costs
more than the copy on a CPU, where it is page-faulted in again; a GPU's caching allocator
keeps that memory anyway), so nothing is allocated per step; ``remove()`` frees them. Fused optimizers work unchanged (nothing is
folded); a step ``GradScaler`` skips keeps the rule's state. ``nonfinite="skip"`` on a
non-finite update restores the weights (so does a rule that raises, e.g. ``nonfinite="raise"``,
before the error propagates from ``step()``), but the optimizer's own state (momentum, Adam's
moments) has already taken the non-finite gradient: keep NaN/Inf out of it with a
gradient rule that skips, attached as well (``attach(opt, gc.clip_by_global_norm(max_norm,
nonfinite="skip"))``; a gradient rule and an update rule do not share one ``chain``).

``nonfinite="skip"`` rules with an unfused optimizer: the hook cannot cancel
``optimizer.step()`` without a host sync, so on a non-finite step the rule hands the
optimizer all-zero gradients (and keeps its own state). With plain SGD (no momentum, no
weight decay) the weights then stay exactly as they were; optimizers with momentum,
weight decay or Adam's moments still take their step with a zero gradient.
``handle.info["skipped"]`` tells which steps were skipped. For a true skip use a fused
optimizer (``found_inf``, above), pass ``sync_skip=True`` (below), or check that flag
yourself (one sync) and do not call ``step()``.

``sync_skip``: a true skip for an unfused optimizer costs one host sync per step: the
pre-hook reads the rule's skip flag and, on a skipped step, hides the gradients from the
optimizer (``p.grad = None`` for the step, put back zeroed by the post-hook), and torch's
optimizers leave a parameter without a gradient untouched: weights, moments and step
counts. Steps that are not skipped cost no zeroing pass (a global scale is multiplied in
place as without ``sync_skip``). It is on by default (``"auto"``) for rules that skip finite steps
(:func:`gradclip_core.skip_on_spike`, where a zero-gradient Adam step would still move
the weights), off for ``nonfinite="skip"``; a fused optimizer never needs it.

``optimizer.step(closure)`` (PyTorch Lightning's automatic optimization calls it so in
precision ``"32"`` and ``"bf16-mixed"``): the closure computes the gradients inside
``step()``, after the pre-hook, so the pre-hook wraps it and the rule runs on the
gradients the closure made, before the optimizer reads them; a rule that tests the loss
takes the closure's return value when :meth:`Handle.set_loss` was not called. Not for
``torch.optim.LBFGS``, which calls its closure several times per step (see :func:`warn_attach`).

Loss: rules that test the loss (``skip_on_spike(loss=True)``) get it from
:meth:`Handle.set_loss`, called once per step before ``optimizer.step()`` (the tensor is
detached, nothing is synced); ``step()`` raises if it was not called.
"""

from __future__ import annotations

import warnings
import weakref
from typing import Any, Mapping

import torch

from gradclip_core import Rule, Scale, feed_loss, needs_loss, skips_finite
from gradclip_core.backend import (apply_effect, array_names, find_regrown, name_info, namespace, prepare_selection,
                                   tree_where)

from ._apply import _check_devices, check_rule, collect, correct_update, project_params, run_update, snapshot_params
from ._distributed import as_parallel, is_dtensor, local, localize
from ._fused import resolve_fold
from ._state import check_leaves, flatten, structure, unflatten

__all__ = ["attach", "Handle"]

_FORMAT = 1
# The live handles of each optimizer (attaching twice is almost always a mistake: warn).
_LIVE: "weakref.WeakKeyDictionary[torch.optim.Optimizer, list[Handle]]" = weakref.WeakKeyDictionary()


class Handle:
    """What :func:`attach` returns: the hooks, the rule's state and the last ``info``.

    Attributes:
      rule: the attached rule.
      optimizer: the optimizer it is attached to.
      info: dict of 0-d tensors from the last step (update and project info merged),
        left on the device (no host sync); empty before the first step. With an
        optimizer built from ``model.named_parameters()``, per-array keys use the
        parameter names (``sparsity/0.weight``) and errors name the parameters.

    Example:
      >>> import torch
      >>> import gradclip_core as gc
      >>> import gradclip_torch
      >>> model = torch.nn.Linear(2, 1)
      >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
      >>> handle = gradclip_torch.attach(opt, gc.clip_by_global_norm(1.0))
      >>> model(torch.ones(4, 2)).sum().backward()
      >>> opt.step()
      >>> sorted(handle.info)
      ['norm', 'scale']
      >>> handle.remove()
    """

    def __init__(self, optimizer: torch.optim.Optimizer, rule: Rule, process_group: Any = None, fold: Any = "auto",
                 sync_skip: Any = "auto") -> None:
        self.rule = rule
        self.process_group = process_group
        self.optimizer = optimizer
        if rule.on_update and fold is True:
            raise ValueError(f"attach: fold=True folds a gradient scale into a fused optimizer, but {rule.name} clips "
                             "the optimizer's update after the step; leave fold='auto' or False")
        self.fold = False if rule.on_update else resolve_fold(fold, optimizer, rule)
        if sync_skip not in ("auto", True, False):
            raise ValueError(f"sync_skip must be 'auto', True or False, got {sync_skip!r}")
        self.sync_skip = (skips_finite(rule) if sync_skip == "auto" else sync_skip) and not self.fold
        self._needs_loss = needs_loss(rule)
        self._loss: Any = None
        self._hidden: list = []  # (param, grad) hidden from a skipped step (sync_skip)
        self._project_info: dict = {}  # the last projection's info
        self._step_skip: Any = None  # this step's skip (a bool decided on the host, a 0-d bool tensor, or None)
        self._own_attrs: list[str] = []
        self._info: dict[str, torch.Tensor] = {}
        self._fresh: Any = None  # (param, its grad, the grad's version) after the last step: see info
        self._state: Any = None
        self._pending: list[torch.Tensor] | None = None  # a loaded checkpoint, applied at the first step
        self._pending_structure: Any = None  # its signature (None: not recorded)
        self._before: list[torch.Tensor] | None = None  # update clipping: the weights before the step
        self._scratch: dict = {}  # (its buffers and the update delta's, reused from step to step)
        self._scaler_inf: Any = None
        self._params: list[torch.Tensor] = []
        self._names: list[str] | None = None
        self._pre = optimizer.register_step_pre_hook(self._pre_hook)
        self._post = optimizer.register_step_post_hook(self._post_hook)
        _LIVE.setdefault(optimizer, []).append(self)
        every = [p for group in optimizer.param_groups for p in group["params"]]
        with array_names(optimizer_names(optimizer)):  # gc.Params matched now, eagerly (a compiled step cannot)
            prepare_selection(rule, every)

    # --------------------------------------------------------------------- hooks

    def _materialize(self, params: list[torch.Tensor], names: list[str] | None = None) -> None:
        """Build the state on the first step: ``rule.init``, or the loaded checkpoint."""
        with torch.no_grad(), array_names(names, traced=torch.compiler.is_compiling()):  # (gc.Params patterns match the names)
            with localize([[p.detach() for p in params]], self.process_group) as views:  # what the rule sees
                template = self.rule.init(views[0])
        if self._pending is not None:
            self._check_checkpoint(template, self._pending, self._pending_structure)
            device = params[0].device if params else None
            leaves = [t.to(device) if device is not None else t for t in self._pending]
            template = unflatten(template, leaves)
            self._pending, self._pending_structure = None, None
        self._state = template

    def _check_checkpoint(self, template: Any, leaves: list, given: Any) -> None:
        """A loaded checkpoint must be a state of this rule: the same signature (when recorded), leaves that fit."""
        expected = structure(template)
        if given is not None and given != expected:
            def root(sig: Any) -> str:
                return sig[0] if isinstance(sig, tuple) and sig else str(sig)

            raise ValueError(
                f"load_state_dict: the checkpoint holds the state of a different rule ({root(given)}), "
                f"this handle's rule {self.rule.name} has {root(expected)}: {given} vs {expected}")
        try:
            check_leaves(template, leaves)
        except ValueError as e:
            raise ValueError(f"load_state_dict: the checkpoint does not fit rule {self.rule.name}: {e}") from None

    def _pre_hook(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> Any:
        closure = _closure(args, kwargs)
        if closure is None or isinstance(optimizer, torch.optim.LBFGS):  # (LBFGS calls it many times: see warn_attach)
            self._before_step(optimizer, self._take_loss())
            return None

        # step(closure): the closure computes the gradients inside step(), after this hook
        # (PyTorch Lightning's automatic optimization in precision "32" / "bf16-mixed"): the
        # rule runs when it returns, before the optimizer reads the gradients.
        def closure_then_rule() -> Any:
            loss = closure()
            self._before_step(optimizer, self._take_loss(loss))
            return loss

        return _with_closure(args, kwargs, closure_then_rule)

    def _before_step(self, optimizer: torch.optim.Optimizer, given: Any) -> None:
        """The rule on this step's gradients, before the optimizer reads them (the step pre-hook's work)."""
        every = [p for group in optimizer.param_groups for p in group["params"]]
        names = optimizer_names(optimizer)
        params, grads = collect(every)
        if names is not None:
            names = [n for n, p in zip(names, every) if p.grad is not None]
        if self.rule.needs_params:
            _check_devices(list(params) + list(grads), "the parameters and their gradients")
        if self._state is None and params:  # a step without gradients (LBFGS before its closure) makes none
            self._materialize(params, names)
        if self.rule.on_update:  # update clipping: a snapshot now, the rule after the step (_post_hook)
            self._params, self._names = params, names
            self._before = snapshot_params(params, self._scratch)
            self._scaler_inf = getattr(optimizer, "found_inf", None)
            return
        loss_scale = getattr(optimizer, "grad_scale", None)  # GradScaler + fused optimizer: grads still scaled
        scaler_inf = getattr(optimizer, "found_inf", None)
        if loss_scale is not None and grads:
            with torch.no_grad():  # the rule must see the true gradients (exact for power-of-two scales)
                torch._foreach_div_([local(g) for g in grads], local(loss_scale).to(grads[0].dtype))
            optimizer.grad_scale = None
        old_state = self._state
        if isinstance(given, torch.Tensor) and grads and given.device != grads[0].device:
            given = given.to(grads[0].device)
        fed = self._state if given is None or self._state is None else feed_loss(self._state, given)
        with array_names(names, traced=torch.compiler.is_compiling()):
            self._state, info, scale, skip = run_update(self.rule, params, grads, fed, self.process_group,
                                                        fold=self.fold or self.sync_skip)
        if scaler_inf is not None and grads:  # a step GradScaler skips: the rule's state stays too
            skipped = local(scaler_inf) > 0
            with torch.no_grad():
                self._state = tree_where(None, skipped, old_state, self._state)
            info["skipped"] = torch.logical_or(skipped, info["skipped"] != 0).to(torch.int32) if "skipped" in info \
                else skipped.to(torch.int32)
        if self.sync_skip:  # (never with fold) decide on the host, so the zeroing pass is needed on skipped steps only
            skipping = skip is not None and bool(skip)  # the one host sync
            views = [local(g) for g in grads]
            with torch.no_grad():
                if skipping and views:
                    torch._foreach_zero_(views)  # what the rule's Skip effect makes of them
                elif scale is not None and views:
                    apply_effect(namespace(*views), views, Scale((scale,) * len(views)), inplace=True)
            if skipping:
                self._hidden = [(p, p.grad) for p in params]
                for p in params:
                    p.grad = None
            self._step_skip = skipping
            scale = skip = None
        else:
            # the step's skip for the projection after it: the rule's flag (folded into found_inf), GradScaler's
            flag = skip if scaler_inf is None or not grads else (
                local(scaler_inf) > 0 if skip is None else torch.logical_or(skip != 0, local(scaler_inf) > 0))
            self._step_skip = None if flag is None else flag != 0
        self._own_attrs = []
        if scale is not None:
            self._set(optimizer, "grad_scale", torch.reciprocal(scale.to(torch.float32)))
        if skip is not None:
            found = skip.to(torch.float32)
            self._set(optimizer, "found_inf", found if scaler_inf is None else torch.maximum(found, scaler_inf))
        self._params, self._names = params, names
        self.info = info

    def _take_loss(self, returned: Any = None) -> Any:
        """This step's loss: the one given to :meth:`set_loss`, else the closure's (``step(closure)``)."""
        loss, self._loss = self._loss, None
        if loss is None and self._needs_loss and isinstance(returned, torch.Tensor) and returned.numel() == 1:
            loss = returned.detach().reshape(())
        if loss is None and self._needs_loss:
            raise RuntimeError(
                f"gradclip_torch: the rule {self.rule.name!r} tests the loss (skip_on_spike(loss=True)): call "
                "handle.set_loss(loss) before every optimizer.step() (or step(closure) with a closure that returns "
                "it); nothing was changed"
            )
        return loss

    def set_loss(self, loss: Any) -> None:
        """Give the rule the loss of the coming ``optimizer.step()`` (rules that test it).

        Call it after ``backward()`` and before ``step()``, every step: it is used by that
        one step. The tensor is detached and stays on its device (no host sync).

        Args:
          loss: a 0-d tensor (or a one-element tensor, or a number): the step's loss,
            unscaled (not multiplied by a ``GradScaler``'s scale).

        Example:
          >>> import torch
          >>> import gradclip_core as gc
          >>> import gradclip_torch
          >>> w = torch.nn.Parameter(torch.ones(2))
          >>> opt = torch.optim.SGD([w], lr=0.1)
          >>> handle = gradclip_torch.attach(opt, gc.skip_on_spike(window=4, warmup=2, loss=True))
          >>> loss = (w * w).sum()
          >>> loss.backward()
          >>> handle.set_loss(loss)
          >>> opt.step()
          >>> float(handle.info["loss"]), int(handle.info["skipped"])
          (2.0, 0)
        """
        if isinstance(loss, torch.Tensor):
            if loss.numel() != 1:
                raise ValueError(f"set_loss: loss must be a scalar tensor, got shape {tuple(loss.shape)}")
            loss = loss.detach().reshape(())
        elif isinstance(loss, bool) or not isinstance(loss, (int, float)):
            raise ValueError(f"set_loss: loss must be a tensor or a number, got {type(loss).__name__}")
        self._loss = loss

    def _set(self, optimizer: torch.optim.Optimizer, name: str, value: torch.Tensor) -> None:
        """Hand a folded scale / skip to the fused step (attributes GradScaler did not set are ours to remove)."""
        if getattr(optimizer, name, None) is None and name not in vars(optimizer):
            self._own_attrs.append(name)
        setattr(optimizer, name, value)

    def _post_hook(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        for p, g in self._hidden:  # a step skipped by sync_skip: the (zeroed) gradients come back
            p.grad = g
        self._hidden = []
        for name in self._own_attrs:  # (GradScaler deletes the ones it set after step())
            vars(optimizer).pop(name, None)
        self._own_attrs = []
        self._mark_fresh()
        if self.rule.on_update and self._before is not None:
            before, self._before = self._before, None  # (freed when this step is done)
            old_state = self._state
            try:
                with array_names(self._names, traced=torch.compiler.is_compiling()):
                    self._state, info = correct_update(self.rule, self._params, before, self._state, self.process_group,
                                                         self._scratch)
            except Exception:  # (e.g. nonfinite="raise"): the weights go back to where the step started
                with torch.no_grad():
                    for p, b in zip(self._params, before):
                        p.copy_(b)
                raise
            if self._scaler_inf is not None and before:  # a step GradScaler skipped (fused): the rule's state stays
                skipped = local(self._scaler_inf) > 0
                with torch.no_grad():
                    self._state = tree_where(None, skipped, old_state, self._state)
                info["skipped"] = skipped.to(torch.int32)
            self.info = info
        if not self.rule.has_project:  # clipping rules: nothing to do after the step
            return
        step_skip, self._step_skip = self._step_skip, None
        if step_skip is True:  # a skipped step (sync_skip): no projection either, the state stays (as in optax wrap)
            if self._project_info:
                self.info = {**self._info, **self._project_info}  # the last projection's info (sparsity, ...) stands
            return
        self._restart_regrown(optimizer)
        old_state = self._state
        with array_names(self._names, traced=torch.compiler.is_compiling()):
            self._state, info = project_params(self.rule, self._params, self._state, self.process_group)
        if isinstance(step_skip, torch.Tensor):  # skipped on the device (found_inf): the state stays, no sync
            with torch.no_grad():
                self._state = tree_where(None, step_skip, old_state, self._state)
        if info:
            self._project_info = info
            self.info = {**self._info, **info}

    def _restart_regrown(self, optimizer: torch.optim.Optimizer) -> None:
        """RigL / SET: zero the optimizer state (momentum, Adam moments) of the elements grown this step.

        Every tensor of ``optimizer.state[p]`` shaped like ``p`` (``exp_avg``,
        ``exp_avg_sq``, ``momentum_buffer``, ...) gets ``where(regrown, 0, t)`` in place, as
        jaxpruner's ``restart_inner_state``; step counts are left as they are.
        """
        found = find_regrown(self._state, len(self._params))
        if not found:
            return
        with torch.no_grad():
            for j, p in enumerate(self._params):
                st = optimizer.state.get(p)
                if not st:
                    continue
                r = found[0][j]
                for rs in found[1:]:
                    r = r | rs[j]
                if r.ndim == 0:  # (an array the rule does not act on)
                    continue
                for v in st.values():
                    if isinstance(v, torch.Tensor) and tuple(v.shape) == tuple(p.shape):
                        local(v).masked_fill_(local(r).to(v.device), 0)

    def _mark_fresh(self) -> None:
        """Remember which gradient the last step ran on (one tensor: its identity and version)."""
        self._fresh = None
        if torch.compiler.is_compiling():
            return
        for p in self._params:
            g = p.grad
            if g is not None and not is_dtensor(g):
                self._fresh = (weakref.ref(p), weakref.ref(g), g._version)
                return

    def _gradients_since(self) -> bool:
        """Whether new gradients were made since the last step that ran the rule (no host sync)."""
        if self._fresh is None:
            return False
        p = self._fresh[0]()
        g = None if p is None else p.grad
        return g is not None and (self._fresh[1]() is not g or g._version != self._fresh[2])

    # --------------------------------------------------------------------- public

    @property
    def info(self) -> dict:
        """The info of the last ``optimizer.step()`` that ran the rule (0-d tensors, no host sync).

        A step that never reaches the hooks leaves nothing to report: ``GradScaler.step``
        skips ``optimizer.step()`` altogether on inf/NaN gradients (unfused optimizers).
        So when the gradients have changed since the last step that ran the rule (a new
        ``backward()``, or ``GradScaler``'s unscaling) ``info`` is the last step's values
        with ``info["skipped"] = 1``: read it after ``step()``, as usual, and a skipped
        step shows as skipped. (Read between ``backward()`` and ``step()`` it says the
        same, since no step has run on those gradients yet; ``zero_grad(set_to_none=False)``
        also counts as a change. Not tracked under ``torch.compile`` nor for DTensors.)
        """
        info = self._info if self._names is None else name_info(self._info, self._names)  # (named here, not in
        if self._gradients_since():                                                        # a compiled step)
            return {**info, "skipped": torch.ones((), dtype=torch.int32, device=self._device())}
        return info

    @info.setter
    def info(self, value: dict) -> None:
        self._info = value

    def _device(self) -> torch.device:
        for v in self._info.values():
            return v.device
        return self._params[0].device if self._params else torch.device("cpu")

    @property
    def state(self) -> Any:
        """The rule's current state (a tree of NamedTuples of tensors).

        ``None`` before the first step (the state is built from the parameters that
        have gradients at that step; a loaded checkpoint is applied then too).
        """
        return self._state

    def remove(self) -> None:
        """Remove both hooks; the optimizer steps without the rule afterwards."""
        self._pre.remove()
        self._post.remove()
        self._scratch = {}  # (update clipping: its buffers go with the hooks)
        live = _LIVE.get(self.optimizer, [])
        if self in live:
            live.remove(self)

    def state_dict(self) -> dict[str, Any]:
        """A checkpoint of the rule's state: tensors, strings and tuples only.

        Returns:
          ``{"format": 1, "state": [tensors...], "structure": signature}``; ``state``
          is empty (and ``structure`` ``None``) before the first step, or the loaded
          checkpoint not applied yet. It loads with ``torch.load(weights_only=True)``.

        Example:
          >>> import torch
          >>> import gradclip_core as gc
          >>> import gradclip_torch
          >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=0.1)
          >>> gradclip_torch.attach(opt, gc.clip_by_value(1.0)).state_dict()
          {'format': 1, 'state': [], 'structure': None}
        """
        if self._state is None:
            leaves = [t.clone() for t in (self._pending or [])]
            return {"format": _FORMAT, "state": leaves, "structure": self._pending_structure}
        leaves = [t.detach().clone() for t in flatten(self._state)]
        return {"format": _FORMAT, "state": leaves, "structure": structure(self._state)}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a checkpoint made by :meth:`state_dict` (of a handle with the same rule).

        Before the first step the tensors are kept and checked against ``rule.init``
        at that step (moved to the parameters' device, dtypes kept), so a checkpoint of
        another rule is refused by that ``step()``; after it they replace the current
        state at once. A checkpoint saved before the first step (no state yet) resets
        the handle: the next step builds the state with ``rule.init``, as a fresh
        handle's first step does.

        Raises:
          ValueError: not a gradclip handle checkpoint, or a state that does not fit
            (another rule's, or other shapes or dtypes).

        Example:
          >>> import torch
          >>> import gradclip_core as gc
          >>> import gradclip_torch
          >>> w = torch.nn.Parameter(torch.ones(2))
          >>> opt = torch.optim.SGD([w], lr=0.1)
          >>> handle = gradclip_torch.attach(opt, gc.zclip())
          >>> step0 = handle.state_dict()  # before any step: no state yet
          >>> w.grad = torch.ones(2); opt.step()
          >>> handle.load_state_dict(step0)  # back to step 0: the next step starts afresh
          >>> handle.state is None
          True
        """
        if not isinstance(state_dict, Mapping) or state_dict.get("format") != _FORMAT or "state" not in state_dict:
            raise ValueError("load_state_dict expects a dict made by gradclip_torch's Handle.state_dict()")
        leaves = list(state_dict["state"])
        for i, t in enumerate(leaves):
            if not isinstance(t, torch.Tensor):
                raise ValueError(f"state tensor {i} must be a torch.Tensor, got {type(t).__name__}")
        given = state_dict.get("structure")
        if given is None and not leaves:  # saved before the first step: start afresh at the next one
            self._state, self._pending, self._pending_structure = None, None, None
            return
        if self._state is None:
            self._pending = [t.detach().clone() for t in leaves]
            self._pending_structure = given
            return
        self._check_checkpoint(self._state, leaves, given)
        current = flatten(self._state)
        self._state = unflatten(self._state, [t.detach().to(c.device).clone() for t, c in zip(leaves, current)])

    def __enter__(self) -> "Handle":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"Handle(rule={self.rule.name!r}, optimizer={type(self.optimizer).__name__})"


def attach(optimizer: torch.optim.Optimizer, rule: Rule, *, process_group: Any = None, fold: Any = "auto",
           sync_skip: Any = "auto", parallel: Any = None) -> Handle:
    """Run ``rule`` inside every ``optimizer.step()`` (step pre- and post-hooks).

    Works unchanged with DDP (replicated gradients) and FSDP2 (DTensor parameters:
    the rule runs on the local shards and all-reduces its global quantities over the
    mesh, see ``gradclip_torch._distributed``).

    Args:
      optimizer: any ``torch.optim.Optimizer``; an Accelerate ``AcceleratedOptimizer``
        (``accelerator.prepare``, the Hugging Face ``Trainer``) is unwrapped: the hooks go
        on the optimizer it wraps (``handle.optimizer``), see :func:`unwrap_optimizer`.
      rule: a gradclip rule.
      process_group: only for plain tensors that are each rank's shard of the full
        arrays: the group to reduce over.
      parallel: a :class:`gradclip_torch.Parallel` for pipeline stages and expert groups
        (see ``gradclip_torch._distributed``); DTensor meshes need none.
      fold: ``"auto"`` (default): with a fused optimizer, a global scale goes into its
        ``grad_scale`` and a skip into ``found_inf`` (one pass less, a true skip), except for
        rules with ``semantics="torch"``, which stay bit-exact; ``True``: whatever the rule's
        effect allows, ``semantics="torch"`` rules too (requires a fused optimizer; per-array
        or per-unit factors and value clips have nothing to fold and run in place);
        ``False``: never (the scale is multiplied in place).
      sync_skip: a true skip for an optimizer that does not fold: ``"auto"`` (default) for
        rules that skip finite steps (:func:`gradclip_core.skip_on_spike`), ``True`` also
        for ``nonfinite="skip"``, ``False`` never (the optimizer steps on zero gradients).
        It costs one host sync per step (see the module docstring).

    Returns:
      A :class:`Handle` with ``.remove()``, ``.info`` (last info, tensors),
      ``.state``, ``.set_loss(loss)``, ``.state_dict()`` and ``.load_state_dict()``; also a context manager
      that removes the hooks on exit.

    Example:
      >>> import torch
      >>> import gradclip_core as gc
      >>> import gradclip_torch
      >>> w = torch.nn.Parameter(torch.zeros(2))
      >>> opt = torch.optim.SGD([w], lr=1.0)
      >>> handle = gradclip_torch.attach(opt, gc.clip_by_global_norm(1.0))
      >>> w.grad = torch.tensor([3.0, 4.0])
      >>> opt.step()
      >>> [round(v, 4) for v in w.tolist()], float(handle.info["norm"])
      ([-0.6, -0.8], 5.0)
    """
    check_rule(rule, "attach")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"attach: optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    optimizer = unwrap_optimizer(optimizer)
    warn_attach(optimizer, rule, Handle)
    return Handle(optimizer, rule, as_parallel(process_group, parallel), fold, sync_skip)


def unwrap_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The optimizer that steps, for a wrapper that delegates ``step()`` to ``optimizer.optimizer``.

    Accelerate's ``AcceleratedOptimizer`` (what ``accelerator.prepare`` and the Hugging Face
    ``Trainer`` hand out) subclasses ``torch.optim.Optimizer`` without running its
    ``__init__``: it has no step hooks of its own, and its ``step()`` calls the wrapped
    optimizer's (only on steps that sync the gradients, under gradient accumulation; after
    ``GradScaler`` unscaled them). The hooks go on that one. Wrappers that are real
    optimizers (with their own hooks) are kept.

    Example:
      >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=0.1)
      >>> unwrap_optimizer(opt) is opt
      True
    """
    inner = optimizer
    while not hasattr(inner, "_optimizer_step_pre_hooks") and isinstance(getattr(inner, "optimizer", None),
                                                                           torch.optim.Optimizer):
        inner = inner.optimizer
    return inner


def _closure(args: tuple, kwargs: dict) -> Any:
    """The ``closure`` given to ``optimizer.step`` (``args[0]`` is the optimizer), or ``None``."""
    if "closure" in kwargs:
        return kwargs["closure"]
    return args[1] if len(args) > 1 and callable(args[1]) else None


def _with_closure(args: tuple, kwargs: dict, closure: Any) -> tuple[tuple, dict]:
    """``(args, kwargs)`` of ``optimizer.step`` with its closure replaced (a step pre-hook's return value)."""
    if "closure" in kwargs:
        return args, {**kwargs, "closure": closure}
    return (args[0], closure, *args[2:]), kwargs


def optimizer_names(optimizer: torch.optim.Optimizer) -> list[str] | None:
    """The parameter names of an optimizer built from ``model.named_parameters()`` (torch >= 2.6), else ``None``.

    Example:
      >>> lin = torch.nn.Linear(2, 1)
      >>> optimizer_names(torch.optim.SGD(lin.named_parameters(), lr=0.1))
      ['weight', 'bias']
    """
    groups = optimizer.param_groups
    if not groups or any("param_names" not in g for g in groups):
        return None
    return [n for g in groups for n in g["param_names"]]


def warn_attach(optimizer: torch.optim.Optimizer, rule: Rule, kind: type) -> None:
    """Warn about attachments that silently do something else than intended.

    - a second handle of the same kind on one optimizer: both rules run, in attach order
      (a :class:`Handle` next to a ``Pruner.attach`` handle is the documented way to clip
      and prune, and a gradient rule next to an update rule, ``rule.on_update``, the way to
      have both: neither is warned about);
    - a gradient rule on ``torch.optim.LBFGS``: its step pre-hook runs before
      ``step(closure)`` computes the gradients, so the rule would act on stale ones.
    """
    others = [h for h in _LIVE.get(optimizer, []) if type(h) is kind and h.rule.on_update == rule.on_update]
    if others:
        warnings.warn(
            f"attach: this {type(optimizer).__name__} already has a gradclip rule attached ({others[0]!r}); both "
            "rules now run in every step(), in attach order. Attach one gradclip_core.chain(rule_a, rule_b) "
            "instead, or call handle.remove() on the old handle first.",
            UserWarning,
            stacklevel=3,
        )
    if isinstance(optimizer, torch.optim.LBFGS) and rule.has_update and not rule.on_update:  # (w_new - w_old is fine)
        warnings.warn(
            f"attach: torch.optim.LBFGS computes its gradients inside step(closure), after the step pre-hook, "
            f"so the gradient part of {rule.name!r} (clipping, gradient masks) would act on stale gradients "
            "and not on the ones LBFGS uses. Call gradclip_torch.apply_(params, rule, state) inside your closure, "
            "after backward(); weight rules (constraints, the re-masking of pruned weights) work with attach.",
            UserWarning,
            stacklevel=3,
        )
