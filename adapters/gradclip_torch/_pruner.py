"""Module pruning: masks as module buffers (like ``torch.nn.utils.prune``), and ``strip``.

:func:`prune` ``(module, rule)`` registers the rule's state on the module: each mask
as a bool buffer ``<param>_mask`` on the submodule owning the parameter (a second
pruning rule in a chain gets ``<param>_mask_1``...), every other state tensor as a
buffer of ``module`` named after the rule and the state field, e.g. the int32 step
counter of ``global_magnitude_prune`` as ``_gradclip_global_magnitude_prune_count``. So the masks are in
``module.state_dict()``, come back with ``load_state_dict``, are copied by
``copy.deepcopy`` and ``torch.save(module)``; :meth:`Pruner.attach` runs the rule
inside ``optimizer.step()`` with its state read from and written to those buffers.
The weights themselves stay plain parameters holding zeros where pruned (no
``weight_orig`` reparametrisation, no forward hook).

:func:`strip` makes pruning permanent: removes the hooks and the buffers, leaving the
zeroed weights (``torch.nn.utils.prune.remove``).
"""

from __future__ import annotations

import weakref
from typing import Any, Iterable, Mapping, Sequence

import torch

import gradclip_core as gc
from gradclip_core.backend import array_names, find_masks, is_namedtuple, name_info

from ._apply import check_rule, project_params
from ._hooks import Handle, unwrap_optimizer, warn_attach
from ._state import flatten, unflatten

__all__ = ["prune", "strip", "Pruner"]

_ATTR = "_gradclip_prune"  # plain attribute on the root module: {"rule": config, "params": [...], "slots": [...]}
_HANDLES: "weakref.WeakKeyDictionary[torch.nn.Module, list[Handle]]" = weakref.WeakKeyDictionary()


def _is_mask_holder(node: Any) -> bool:
    return isinstance(node, tuple) and hasattr(node, "_fields") and "masks" in node._fields


def _mask_positions(tree: Any, n: int) -> list[int | None]:
    """For each leaf of ``tree`` (flatten order): the parameter index if it is a mask, else None."""
    out: list[int | None] = []

    def walk(node: Any, in_masks: bool) -> None:
        if _is_mask_holder(node):
            for name, v in zip(node._fields, node):
                walk(v, name == "masks")
        elif isinstance(node, (tuple, list)):
            if in_masks and len(node) == n:
                for i, v in enumerate(node):
                    out.extend([i] * len(flatten(v)))
            else:
                for v in node:
                    walk(v, False)
        elif node is not None:
            out.append(None)

    walk(tree, False)
    return out


def _has_masks(tree: Any) -> bool:
    """Whether a state tree holds a pruning state (a NamedTuple with a ``masks`` field)."""
    if _is_mask_holder(tree):
        return True
    return isinstance(tree, (tuple, list)) and any(_has_masks(v) for v in tree)


def _leaf_paths(config: Any, name: str, state: Any) -> list[str]:
    """For each state leaf (flatten order): ``<rule>_<field>`` (chains: each rule's own name)."""
    out: list[str] = []

    def walk(node: Any, path: list[str]) -> None:
        if is_namedtuple(node):
            for f, v in zip(node._fields, node):
                walk(v, path + [f])
        elif isinstance(node, (tuple, list)):
            for i, v in enumerate(node):
                walk(v, path + [str(i)])
        elif node is not None:
            out.append("_".join(path))

    def rule(cfg: Any, rule_name: str, sub: Any, path: list[str]) -> None:
        if isinstance(cfg, dict) and cfg.get("rule") == "on":  # gc.on(rule, params): the rule's own names
            inner = cfg.get("rule_config", {})
            rule(inner, inner.get("rule", rule_name) if isinstance(inner, dict) else rule_name, sub, path)
        elif isinstance(cfg, dict) and cfg.get("rule") == "chain" and isinstance(sub, tuple) and not is_namedtuple(sub):
            names = [c.get("rule", f"rule{i}") if isinstance(c, dict) else f"rule{i}" for i, c in enumerate(cfg["rules"])]
            for i, (c, n, s) in enumerate(zip(cfg["rules"], names, sub)):
                rule(c, n, s, path + [n if names.count(n) == 1 else f"{n}_{i}"])
        else:
            walk(sub, path or [rule_name])

    rule(dict(config) if config else {}, name, state, [])
    return out


def _stripped(module: torch.nn.Module) -> ValueError:
    again = getattr(module, _ATTR, None) is not None
    return ValueError(
        "this Pruner's module was stripped with gradclip_torch.strip: pruning is permanent now (the pruned "
        "weights are exact zeros) and the masks and rule state are gone"
        + ("; the module was pruned again since: use the Pruner that gradclip_torch.prune returned then "
           "(or Pruner.from_module(module))" if again else
           "; read gradclip_torch.masks(module) before strip, or use (param != 0) as the mask")
    )


def _template(rule: gc.Rule, params: Sequence[torch.Tensor], names: Sequence[str]) -> Any:
    """``rule.init`` of ``params``' shapes on the meta device (no memory); on real tensors if that fails."""
    with torch.no_grad(), array_names(names):
        try:
            with torch.device("meta"):  # factory calls without a device (xp.ones(shape)) land on meta too
                return rule.init([torch.empty(p.shape, dtype=p.dtype) for p in params])
        except (NotImplementedError, RuntimeError, TypeError, ValueError):  # a rule whose init needs values
            return rule.init([p.detach() for p in params])


class Pruner:
    """A rule whose state lives in a module's buffers (what :func:`prune` returns).

    Attributes:
      module: the pruned module.
      rule: the gradclip rule.
      names: qualified names of the pruned parameters, in the rule's order.
    """

    def __init__(self, module: torch.nn.Module, rule: gc.Rule, names: Sequence[str], slots: Sequence[tuple[str, str]]):
        self.module, self.rule, self.names = module, rule, list(names)
        self._slots = [tuple(s) for s in slots]
        self._meta = getattr(module, _ATTR, None)  # strip() removes it: this pruner is then dead
        # Only the tree structure of the state is needed: a state made on the meta device
        # costs no memory or time (a real rule.init fills a full set of masks, 1 byte per weight).
        self._template = _template(rule, self.parameters, self.names)

    @classmethod
    def from_module(cls, module: torch.nn.Module) -> "Pruner":
        """The pruner of a module pruned by :func:`prune` (e.g. after ``copy.deepcopy`` or ``torch.load``)."""
        meta = getattr(module, _ATTR, None)
        if meta is None:
            raise ValueError("this module was not pruned with gradclip_torch.prune")
        return cls(module, gc.from_config(meta["rule"]), meta["params"], meta["slots"])

    @property
    def parameters(self) -> list[torch.nn.Parameter]:
        return [self.module.get_parameter(n) for n in self.names]

    def _check_live(self) -> None:
        """Raise a clear error once the module was stripped (its buffers are gone)."""
        if getattr(self.module, _ATTR, None) is not self._meta:
            raise _stripped(self.module)

    @property
    def state(self) -> Any:
        """The rule state, rebuilt from the module's buffers.

        Raises:
          ValueError: the module was stripped (:func:`strip`).
        """
        self._check_live()
        leaves = [self.module.get_submodule(sub)._buffers[name] for sub, name in self._slots]
        return unflatten(self._template, leaves)

    @state.setter
    def state(self, value: Any) -> None:
        if value is None:
            return
        self._check_live()
        for (sub, name), t in zip(self._slots, flatten(value)):
            self.module.get_submodule(sub)._buffers[name] = t

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        """``{parameter name: keep-mask}`` (bool, True = kept; ANDed over the rule's pruning parts).

        The same as :func:`gradclip_torch.masks` ``(pruner)``.
        """
        params = self.parameters
        keep = [torch.ones(p.shape, dtype=torch.bool, device=p.device) for p in params]
        for ms in find_masks(self.state, len(params)):
            keep = [a & b for a, b in zip(keep, ms)]
        return dict(zip(self.names, keep))

    def project(self) -> dict:
        """Run ``rule.project`` on the weights now (one step of the schedule); returns info.

        Info keys per parameter use the parameter names (``sparsity/0.weight``).
        """
        with array_names(self.names):
            state, info = project_params(self.rule, self.parameters, self.state)
        self.state = state
        return name_info(info, self.names)

    def rewind(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Lottery-ticket rewinding: the module's values back to ``state_dict``, pruned weights 0, masks kept.

        Loads ``state_dict`` (e.g. ``copy.deepcopy(model.state_dict())`` taken at
        initialisation, or after a few steps for "late rewinding") into the module in
        place, except the pruner's own buffers (masks, step counter), which stay as
        they are; then sets the pruned weights to 0. The optimizer keeps pointing at the
        same tensors (reset its state yourself if the recipe asks for it).

        Iterative pruning with rewinding (Frankle & Carbin), 20% of the remaining
        weights per round, recomputed after the last step of each round::

            rule = gc.global_magnitude_prune(0.2, relative_to="remaining",
                                             schedule=gc.constant_schedule(steps - 1, -1, steps))
            pruner = gradclip_torch.prune(model, rule, apply=False)
            init = copy.deepcopy(model.state_dict())
            pruner.attach(optimizer)
            for r in range(rounds):
                train(model, optimizer, steps)   # masks recomputed after the last step
                pruner.rewind(init)              # sparsity gc.iterative_sparsity(0.2, r + 1)

        Args:
          state_dict: a ``state_dict`` of this module (its pruning buffers, if any, are ignored).

        Raises:
          ValueError: the module was stripped, or ``state_dict`` lacks some of the
            module's entries or has others.

        Example:
          >>> import copy, torch
          >>> import gradclip_core as gc
          >>> import gradclip_torch
          >>> lin = torch.nn.Linear(4, 2)
          >>> init = copy.deepcopy(lin.state_dict())
          >>> pruner = gradclip_torch.prune(lin, gc.magnitude_prune(0.5), ["weight"])
          >>> with torch.no_grad():
          ...     _ = lin.weight.add_(1.0)   # training moves the weights
          >>> pruner.rewind(init)
          >>> bool(torch.equal(lin.weight, init["weight"] * pruner.masks["weight"]))
          True
        """
        self._check_live()
        own = {f"{sub}.{name}" if sub else name for sub, name in self._slots}
        values = {k: v for k, v in state_dict.items() if k not in own}
        missing, unexpected = self.module.load_state_dict(values, strict=False)
        missing = [k for k in missing if k not in own]
        if missing or unexpected:
            raise ValueError(
                f"rewind: state_dict does not fit this module: missing {sorted(missing)[:5]}, "
                f"unexpected {sorted(unexpected)[:5]} (pass a state_dict of the same module)"
            )
        with torch.no_grad():
            _apply_all_masks(self.parameters, self.state)

    def attach(self, optimizer: torch.optim.Optimizer) -> Handle:
        """Run the rule in every ``optimizer.step()``, its state kept in the module buffers."""
        self._check_live()
        optimizer = unwrap_optimizer(optimizer)  # (Accelerate's AcceleratedOptimizer)
        warn_attach(optimizer, self.rule, _PrunerHandle)
        handle = _PrunerHandle(optimizer, self)
        _HANDLES.setdefault(self.module, []).append(handle)
        return handle


class _PrunerHandle(Handle):
    """A :class:`Handle` whose rule state is the pruner's buffers; pruned params without grad get a zero one."""

    def __init__(self, optimizer: torch.optim.Optimizer, pruner: Pruner) -> None:
        self._pruner = pruner
        super().__init__(optimizer, pruner.rule)

    @property
    def _state(self) -> Any:  # type: ignore[override]
        return self._pruner.state

    @_state.setter
    def _state(self, value: Any) -> None:
        self._pruner.state = value

    def _before_step(self, optimizer: torch.optim.Optimizer, given: Any) -> None:  # (after a step's closure too)
        from ._apply import update_grads

        params, names = self._pruner.parameters, self._pruner.names
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        with array_names(names, traced=torch.compiler.is_compiling()):
            self._state, self.info = update_grads(self.rule, params, grads, self._state)
        self._params, self._names = params, names  # (info is named when read: Handle.info)


def _select(module: torch.nn.Module, parameters: Any) -> list[str]:
    named = dict(module.named_parameters())
    if parameters is None:
        return [n for n, p in named.items() if p.ndim >= 2]
    if isinstance(parameters, str):
        parameters = [parameters]
    names = list(parameters)
    for n in names:
        if n not in named:
            raise ValueError(f"prune: module has no parameter {n!r} (parameters are {sorted(named)[:8]}...)")
    return names


def prune(module: torch.nn.Module, rule: gc.Rule, parameters: str | Iterable[str] | None = None, *, apply: bool = True) -> Pruner:
    """Prune ``module`` with ``rule``: masks as ``<param>_mask`` buffers, and (``apply``) prune now.

    Args:
      module: any ``nn.Module``.
      rule: a gradclip pruning rule (or a chain with one); e.g.
        ``gradclip_core.global_magnitude_prune(0.5)``.
      parameters: qualified parameter names (``"0.weight"``), or ``None`` for every
        parameter of rank >= 2 (Linear/Conv/Embedding weights, not biases/norms).
      apply: run ``rule.project`` once now (a one-shot schedule at step 0 prunes here).

    Returns:
      A :class:`Pruner` (``.attach(optimizer)`` to keep the masks during training,
      ``.masks``, ``.state``, ``.project()``).

    Example:
      >>> import torch
      >>> import gradclip_core as gc
      >>> import gradclip_torch
      >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
      >>> pruner = gradclip_torch.prune(model, gc.global_magnitude_prune(0.5))
      >>> sorted(k for k in model.state_dict() if k.endswith("_mask"))
      ['0.weight_mask', '2.weight_mask']
      >>> int((model[0].weight == 0).sum() + (model[2].weight == 0).sum())
      12
      >>> gradclip_torch.strip(model)
      >>> sorted(model.state_dict())
      ['0.bias', '0.weight', '2.bias', '2.weight']
    """
    check_rule(rule, "prune")
    if not rule.has_project:
        raise ValueError(
            f"prune: {rule!r} has no pruning part (it only acts on the gradients). gradclip_torch.prune takes a "
            "pruning rule, e.g. gradclip_core.global_magnitude_prune(0.5), or a chain with one; to clip "
            "gradients use gradclip_torch.attach(optimizer, rule) or gradclip_torch.apply_"
        )
    if getattr(module, _ATTR, None) is not None:
        raise ValueError("module is already pruned by gradclip_torch.prune; call gradclip_torch.strip(module) first")
    names = _select(module, parameters)
    if not names:
        raise ValueError(
            "prune: no parameter to prune (parameters=None selects the parameters of rank >= 2, and this module "
            "has none); pass parameters=[names] explicitly"
        )
    params = [module.get_parameter(n) for n in names]
    with torch.no_grad(), array_names(names):  # (gc.Params patterns match the parameter names)
        state = rule.init([p.detach() for p in params])
    if not _has_masks(state):
        raise ValueError(
            f"prune: {rule!r} has no pruning part (its state holds no masks). gradclip_torch.prune takes a pruning "
            "rule, e.g. gradclip_core.magnitude_prune(0.5), or a chain with one; for weight constraints use "
            "gradclip_torch.attach(optimizer, rule) or gradclip_torch.project_"
        )
    leaves = flatten(state)
    positions = _mask_positions(state, len(params))
    paths = _leaf_paths(rule.config, rule.name, state)
    slots: list[tuple[str, str]] = []
    used: dict[tuple[str, str], int] = {}
    for j, (leaf, pos, path) in enumerate(zip(leaves, positions, paths)):
        if pos is not None and leaf.dtype == torch.bool:
            sub, _, pname = names[pos].rpartition(".")
            base = f"{pname}_mask"
        else:  # e.g. _gradclip_global_magnitude_prune_count
            sub, base = "", "_gradclip_" + path.replace("#", "_")
        c = used.get((sub, base), 0)
        used[(sub, base)] = c + 1
        slot = (sub, base if c == 0 else f"{base}_{c}")
        module.get_submodule(slot[0]).register_buffer(slot[1], leaf)
        slots.append(slot)
    setattr(module, _ATTR, {"rule": dict(rule.config), "params": names, "slots": slots})
    try:
        pruner = Pruner(module, rule, names, slots)  # its template is a meta-device state: no second set of masks
        if apply:
            pruner.project()
    except BaseException:  # e.g. a rule refusing these weights: leave the module as it was
        _unregister(module, slots)
        raise
    return pruner


def _unregister(module: torch.nn.Module, slots: Sequence[tuple[str, str]]) -> None:
    for sub, name in slots:
        module.get_submodule(sub)._buffers.pop(name, None)
    if hasattr(module, _ATTR):
        delattr(module, _ATTR)


def strip(obj: Any) -> None:
    """Make pruning permanent: weights stay zero where pruned; hooks, masks and buffers go.

    Args:
      obj: a module pruned with :func:`prune` (its attached handles are removed too),
        or a :class:`Handle` from :func:`gradclip_torch.attach` with a pruning rule
        (the last masks are applied to its parameters and the hooks removed).

    Example:
      >>> import torch
      >>> import gradclip_core as gc
      >>> import gradclip_torch
      >>> lin = torch.nn.Linear(4, 1)
      >>> _ = gradclip_torch.prune(lin, gc.magnitude_prune(0.5), ["weight"])
      >>> gradclip_torch.strip(lin); hasattr(lin, "weight_mask")
      False
    """
    if isinstance(obj, Handle):
        obj.remove()
        state = obj.state
        if state is not None and obj._params:
            with torch.no_grad():
                _apply_all_masks(obj._params, state)
        return
    if not isinstance(obj, torch.nn.Module):
        raise TypeError(f"strip: expected a pruned nn.Module or a gradclip_torch Handle, got {type(obj).__name__}")
    meta = getattr(obj, _ATTR, None)
    if meta is None:
        raise ValueError("strip: this module was not pruned with gradclip_torch.prune")
    for h in _HANDLES.pop(obj, []):
        h.remove()
    pruner = Pruner.from_module(obj)
    with torch.no_grad():
        _apply_all_masks(pruner.parameters, pruner.state)
    _unregister(obj, meta["slots"])


def _apply_all_masks(params: Sequence[torch.Tensor], state: Any) -> None:
    positions = _mask_positions(state, len(params))
    for leaf, pos in zip(flatten(state), positions):
        if pos is not None and leaf.dtype == torch.bool:
            params[pos].masked_fill_(leaf.logical_not(), 0)
