"""The Rule abstraction: ``init`` / ``update`` (before the optimizer step) / ``project`` (after it).

A rule is a small immutable object of pure functions over *flat sequences* of arrays::

    state                = rule.init(params)
    grads, state, info   = rule.update(grads, state, params=None)   # before the optimizer step
    params, state, info  = rule.project(params, state)              # after the optimizer step

``state`` is a NamedTuple of arrays (possibly empty), so it is a JAX pytree, maps onto
Keras variables and round-trips through a torch ``state_dict``. ``info`` is a dict of
0-d arrays for logging (never synced to the host by the rule).

Rules also *declare their effect* (:mod:`gradclip_core._effect`)::

    effect, state, info  = rule.update_effect(grads, state, params=None)
    effect, state, info  = rule.project_effect(params, state)

so that adapters can apply a scale or a mask in place, or fold it into a fused
optimizer, instead of receiving new full-size arrays. A rule built from an effect
function gets ``update`` / ``project`` for free (the effect applied out of place); a
rule built from ``update`` / ``project`` functions has the effect ``Replace(new arrays)``.

Update clipping (``on_update=True``: :func:`~gradclip_core.clippy`,
:func:`~gradclip_core.clip_update_norm`): the rule's ``update`` runs on the optimizer's
*update*, the step ``delta = w_new - w_old``, after the optimizer computed it, with
``params`` the weights before the step::

    delta, state, info   = rule.update(delta, state, params=w_old)  # after the optimizer, before the write

Adapters that own the optimizer honour the flag: ``gradclip_optax.wrap`` runs it on the
inner optimizer's updates (no copy), ``gradclip_keras.Optimizer`` and
``gradclip_torch.attach`` after the inner step on ``w_new - w_old`` (a snapshot of the
weights taken before the step: one copy of the stepped weights, see their docs), and
write ``w_old + delta'`` where the rule changed the update (``w_new``, bit for bit,
where it did not). Gradient rules and update rules do not mix in one :func:`chain`.

The post-step seam: an adapter that holds the weights after and before the step asks for the
effect on the update from those two directly::

    effect, state, info  = rule.update_effect_from_weights(w_new, w_old, state)

which by default forms ``delta = w_new - w_old`` and calls ``update_effect(delta, state, w_old)``;
the update rules give their own (their reductions read ``(w_new, w_old)`` through the backend's
``difference_*`` primitives: torch's eager CPU never writes the update anywhere), and
``rule.has_weights_effect`` tells an adapter that no ``delta`` buffer is needed.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any, Callable, Mapping, NamedTuple, Sequence

from ._effect import Keep, Replace, Skip, then

__all__ = ["Rule", "EmptyState", "chain", "from_config", "factory", "Info"]

Info = dict  # str -> 0-d array


class EmptyState(NamedTuple):
    """State of a rule that keeps none (like ``optax.EmptyState``)."""


def _identity_init(params: Sequence[Any]) -> EmptyState:
    del params
    return EmptyState()


def _identity_update(grads: Sequence[Any], state: Any, params: Sequence[Any] | None = None):
    del params
    return list(grads), state, {}


def _identity_project(params: Sequence[Any], state: Any):
    return list(params), state, {}


def _keep_update(grads: Sequence[Any], state: Any, params: Sequence[Any] | None = None):
    del grads, params
    return Keep(), state, {}


def _keep_project(params: Sequence[Any], state: Any):
    del params
    return Keep(), state, {}


def _apply(arrays: list, effect: Any) -> list:
    if isinstance(effect, Keep) or not arrays:
        return arrays
    from .backend import apply_effect, namespace

    return apply_effect(namespace(*arrays), arrays, effect)


def _from_effect(effect_fn: Callable[..., tuple], *, project: bool) -> Callable[..., tuple]:
    """``update``/``project`` of an effect function: the effect applied out of place."""
    if project:

        def project_fn(params: Sequence[Any], state: Any):
            params = list(params)
            effect, state, info = effect_fn(params, state)
            return _apply(params, effect), state, info

        return project_fn

    def update_fn(grads: Sequence[Any], state: Any, params: Sequence[Any] | None = None):
        grads = list(grads)
        effect, state, info = effect_fn(grads, state, params)
        return _apply(grads, effect), state, info

    return update_fn


def _from_deltas(update_effect: Callable[..., tuple]) -> Callable[..., tuple]:
    """The default ``update_effect_from_weights``: ``update_effect`` on ``after - before`` (formed out of place)."""

    def update_effect_from_weights(after: Sequence[Any], before: Sequence[Any], state: Any):
        after, before = list(after), list(before)
        if not after or update_effect is _keep_update:  # (no update part: nothing to form)
            return update_effect(after, state, before)
        from .backend import differences, namespace

        return update_effect(differences(namespace(*after), after, before), state, before)

    update_effect_from_weights.forms_deltas_of = update_effect  # (marks the default: Rule.has_weights_effect)
    return update_effect_from_weights


def _to_effect(fn: Callable[..., tuple], *, project: bool) -> Callable[..., tuple]:
    """The effect of a plain ``update``/``project`` function: ``Replace`` of what it returns."""

    def wrap(out: Sequence[Any], inputs: Sequence[Any]) -> Any:
        out = list(out)
        if len(out) == len(inputs) and all(o is i for o, i in zip(out, inputs)):
            return Keep()
        return Replace(tuple(out))

    if project:

        def project_effect(params: Sequence[Any], state: Any):
            params = list(params)
            out, state, info = fn(params, state)
            return wrap(out, params), state, info

        return project_effect

    def update_effect(grads: Sequence[Any], state: Any, params: Sequence[Any] | None = None):
        grads = list(grads)
        out, state, info = fn(grads, state, params)
        return wrap(out, grads), state, info

    return update_effect


@dataclasses.dataclass(frozen=True, eq=False)
class Rule:
    """A gradient-clipping, constraint or pruning rule: pure ``init``/``update``/``project``.

    Build one with a gradclip factory (``gradclip_core.clip_by_global_norm(1.0)``), or
    from your own functions: give ``update`` / ``project`` (new arrays), or
    ``update_effect`` / ``project_effect`` (a declared :mod:`effect <gradclip_core._effect>`
    such as ``Scale``, so adapters can apply it in place); the other form is derived.

    Attributes:
      init: ``init(params) -> state``; ``params`` is a flat sequence of arrays.
      update: ``update(grads, state, params=None) -> (grads, state, info)``, applied to
        the gradients (or optimizer updates) before the optimizer step.
      project: ``project(params, state) -> (params, state, info)``, applied to the
        weights after the optimizer step (identity for clipping rules).
      name: short name, used as the prefix of the rule's info keys inside :func:`chain`.
      needs_params: whether ``update`` requires ``params`` (e.g. adaptive clipping).
      on_update: whether ``update`` acts on the optimizer's update (the step
        ``w_new - w_old``, ``params`` = the weights before it) instead of the gradients:
        update clipping (Clippy, ``clip_update_norm``); see the module docstring.
      config: the factory name and arguments; :func:`from_config` rebuilds the rule.
      update_effect: ``update_effect(grads, state, params=None) -> (effect, state, info)``.
      project_effect: ``project_effect(params, state) -> (effect, state, info)``.
      parts: the rules this one is made of (a chain's rules; the rule a :func:`~gradclip_core.on`
        restriction wraps).
      params: the selection of a restricted rule (:class:`~gradclip_core.Params`), else ``None``.
      update_effect_from_weights: ``update_effect_from_weights(after, before, state) -> (effect,
        state, info)``, for update rules (``on_update``): the effect on the update ``after - before``
        computed from the weights after and before the optimizer step (adapters that hold both
        write ``before + delta'``). Default: ``update_effect(after - before, state, before)``;
        :func:`~gradclip_core.clippy`, :func:`~gradclip_core.clip_update_norm` and
        :func:`~gradclip_core.update_ratio` give one that never forms the update. (:meth:`replace`
        with a new ``update_effect`` or ``update`` and no new ``update_effect_from_weights``
        rebuilds the default, so a rule's own one never outlives the effect it computes.)

    Example:
      >>> import numpy as np
      >>> import gradclip_core as gc
      >>> rule = gc.clip_by_global_norm(1.0)
      >>> rule
      clip_by_global_norm(max_norm=1.0, ord=2, semantics=None, nonfinite='propagate')
      >>> grads = [np.array([3.0, 4.0], np.float32)]
      >>> state = rule.init(grads)
      >>> clipped, state, info = rule.update(grads, state)
      >>> clipped[0].astype(float).round(6).tolist(), float(info["norm"])
      ([0.6, 0.8], 5.0)
      >>> effect, _, _ = rule.update_effect(grads, state)
      >>> type(effect).__name__, round(float(effect.factors[0]), 6)
      ('Scale', 0.2)
    """

    init: Callable[[Sequence[Any]], Any] = _identity_init
    update: Callable[..., tuple] = _identity_update
    project: Callable[..., tuple] = _identity_project
    name: str = "identity"
    needs_params: bool = False
    on_update: bool = False
    config: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    update_effect: Callable[..., tuple] | None = None
    project_effect: Callable[..., tuple] | None = None
    parts: tuple = ()
    params: Any = None
    update_effect_from_weights: Callable[..., tuple] | None = None

    def __post_init__(self) -> None:
        for field in ("init", "update", "project"):
            if not callable(getattr(self, field)):
                raise ValueError(f"Rule {field} must be callable, got {type(getattr(self, field)).__name__}")
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"Rule name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.on_update, bool):
            raise ValueError(f"Rule on_update must be a bool, got {self.on_update!r}")
        set_ = functools.partial(object.__setattr__, self)
        if self.update_effect is None:
            set_("update_effect", _keep_update if self.update is _identity_update else _to_effect(self.update, project=False))
        elif self.update is _identity_update:
            set_("update", _from_effect(self.update_effect, project=False))
        weights_fn = self.update_effect_from_weights
        if weights_fn is None or getattr(weights_fn, "forms_deltas_of", self.update_effect) is not self.update_effect:
            set_("update_effect_from_weights", _from_deltas(self.update_effect))  # (or rebuilt: update_effect replaced)
        elif not callable(weights_fn):
            raise ValueError(f"Rule update_effect_from_weights must be callable, got {type(weights_fn).__name__}")
        if self.project_effect is None:
            set_("project_effect", _keep_project if self.project is _identity_project else _to_effect(self.project, project=True))
        elif self.project is _identity_project and self.project_effect is not _keep_project:
            set_("project", _from_effect(self.project_effect, project=True))

    @property
    def has_update(self) -> bool:
        """Whether the rule acts on the gradients before the step (clipping, gradient masks).

        False for weight-only rules (constraints, proximal shrinkage); adapters use it to
        tell where a rule cannot see the gradients it is meant for.
        """
        return self.update_effect is not _keep_update

    @property
    def has_weights_effect(self) -> bool:
        """Whether :attr:`update_effect_from_weights` is the rule's own (it never forms the update).

        Adapters that hold the weights after and before a step (torch ``attach``, Keras on torch)
        then keep no ``delta`` buffer; otherwise the default forms ``after - before``, and they
        may rather hand ``update_effect`` their own (reused) delta buffers.
        """
        return getattr(self.update_effect_from_weights, "forms_deltas_of", None) is None

    @property
    def has_project(self) -> bool:
        """Whether the rule acts on the weights after the step (constraints, pruning).

        Adapters skip the after-step work for rules without one (all clipping rules).
        """
        return self.project is not _identity_project

    def replace(self, **changes: Any) -> "Rule":
        """A copy with some fields changed (``dataclasses.replace``).

        A new ``update_effect`` (or ``update``) without a new ``update_effect_from_weights``
        drops the rule's own post-step path, so both entry points keep computing the same effect.
        """
        if ("update_effect" in changes or "update" in changes) and "update_effect_from_weights" not in changes:
            changes["update_effect_from_weights"] = None
        return dataclasses.replace(self, **changes)

    def __repr__(self) -> str:
        return describe(self.config) if self.config else f"Rule(name={self.name!r})"


def describe(config: Mapping[str, Any]) -> str:
    """A rule's config as the factory call that builds it (``repr(rule)``).

    Example:
      >>> describe({"rule": "clip_by_value", "clip_value": 1.0, "lo": None, "hi": None})
      'clip_by_value(clip_value=1.0, lo=None, hi=None)'
    """
    kwargs = dict(config)
    name = kwargs.pop("rule", "rule")
    if name == "chain":
        return "chain(" + ", ".join(describe(c) for c in kwargs.get("rules", [])) + ")"
    if name == "on":
        return f"on({describe(kwargs['rule_config'])}, {kwargs['params']!r})"
    if name == "monitor":
        inner = kwargs.pop("rule_config")
        return "monitor(" + ", ".join([describe(inner) if inner else "None", *(f"{k}={v!r}" for k, v in kwargs.items())]) + ")"
    if name == "accumulate":
        return f"accumulate({describe(kwargs['rule_config'])}, {kwargs['dtype']!r})"
    return f"{name}(" + ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) + ")"


_FACTORIES: dict[str, Callable[..., Rule]] = {}


def factory(fn: Callable[..., Rule]) -> Callable[..., Rule]:
    """Decorator for public rule factories: records the call as the rule's ``config``."""
    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Rule:
        bound = sig.bind(*args, **kwargs)
        bound.apply_defaults()
        rule = fn(*args, **kwargs)
        return rule.replace(config={"rule": fn.__name__, **bound.arguments})

    _FACTORIES[fn.__name__] = wrapper
    return wrapper


def from_config(config: Mapping[str, Any]) -> Rule:
    """Rebuild a rule from its ``config`` (what Keras' ``get_config`` stores).

    Args:
      config: ``rule.config`` of a rule made by a gradclip factory or :func:`chain`.

    Returns:
      An equivalent :class:`Rule`.

    Example:
      >>> import gradclip_core as gc
      >>> rule = gc.clip_by_global_norm(2.0, semantics="torch")
      >>> gc.from_config(rule.config).config == rule.config
      True
    """
    if not isinstance(config, Mapping) or "rule" not in config:
        raise ValueError(f"config must be a mapping with a 'rule' key, got {config!r}")
    kwargs = dict(config)
    name = kwargs.pop("rule")
    if name == "chain":
        return chain(*(from_config(c) for c in kwargs["rules"]))
    if name == "on":
        from ._params import on

        return on(from_config(kwargs["rule_config"]), kwargs["params"])
    if name == "monitor":
        from .clip._monitor import monitor

        inner = kwargs.pop("rule_config")
        return monitor(None if inner is None else from_config(inner), **kwargs)
    if name == "accumulate":
        from ._accumulate import accumulate

        return accumulate(from_config(kwargs["rule_config"]), kwargs["dtype"])
    if name not in _FACTORIES:
        raise ValueError(f"unknown rule {name!r} in config; known: {sorted(_FACTORIES) + ['chain']}")
    return _FACTORIES[name](**kwargs)


_UNFORMED = object()  # chain(): the update not formed yet (rules read the weights after and before the step)


def _prefixed(names: Sequence[str]) -> list[str]:
    """Info prefixes for chained rules: the rule name, with ``#i`` where names repeat."""
    out = []
    for i, n in enumerate(names):
        out.append(n if names.count(n) == 1 else f"{n}#{i}")
    return out


def chain(*rules: Rule) -> Rule:
    """Compose rules: ``update`` runs them in order, ``project`` too; state is the tuple of states.

    Info keys are prefixed with each rule's name (``"clip_by_global_norm/norm"``); a name
    used twice gets its position appended (``"clip_by_value#0/clipped_fraction"``).

    The chain's effect: each rule sees what the rules before it produced. Rules that leave
    the arrays unchanged (``record_norms``) cost nothing; when only one rule changes the
    arrays its effect is the chain's (a global scale stays a global scale); otherwise the
    arrays before the last changing rule are computed out of place and the chain's effect
    is ``Then(Replace(those), last effect)``. A skip (``skip_on_spike``, ``nonfinite="skip"``)
    is carried to the end: the later rules see the arrays as they were (not zeros), the
    chain's effect is ``Skip(effect, any skip)``, and on a skipped step every rule's state
    stays as it was (the step did not happen).

    Args:
      *rules: the rules, applied first to last.

    Returns:
      A :class:`Rule` whose state is ``tuple(rule.init(params) for rule in rules)``.

    Example:
      >>> import numpy as np
      >>> import gradclip_core as gc
      >>> rule = gc.chain(gc.clip_by_value(0.5, info="full"), gc.clip_by_global_norm(0.5))
      >>> g = [np.array([3.0, -4.0], np.float32)]
      >>> out, _, info = rule.update(g, rule.init(g))
      >>> sorted(info)
      ['clip_by_global_norm/norm', 'clip_by_global_norm/scale', 'clip_by_value/clipped_fraction']
    """
    for i, r in enumerate(rules):
        if not isinstance(r, Rule):
            raise ValueError(f"chain() argument {i} must be a gradclip Rule, got {type(r).__name__}")
    rules = tuple(rules)
    on_grads = [r.name for r in rules if r.has_update and not r.on_update]
    on_updates = [r.name for r in rules if r.on_update]
    if on_grads and on_updates:
        raise ValueError(
            f"chain(): {', '.join(on_updates)} act(s) on the optimizer's update (after the step) and "
            f"{', '.join(on_grads)} on the gradients (before it); one chain runs at one point of the step. "
            "Give them to the adapter separately: optax wrap(grad_rule, wrap(update_rule, opt)), Keras "
            "Optimizer(Optimizer(opt, update_rule), grad_rule), torch attach(opt, grad_rule) and attach(opt, update_rule)"
        )
    prefixes = _prefixed([r.name for r in rules])

    def init(params: Sequence[Any]) -> tuple:
        return tuple(r.init(params) for r in rules)

    def _check(state: Any) -> None:
        if not isinstance(state, tuple) or len(state) != len(rules):
            raise ValueError(f"chain state must be a tuple of {len(rules)} rule states, got {type(state).__name__}")

    def run(arrays: Any, state: tuple, step: Callable[[Rule, Any, Any], tuple],
            form: Callable[[], list] | None = None) -> tuple:
        """The rules in turn; ``arrays`` is ``_UNFORMED`` (with ``form`` making them) until a rule changes them."""
        _check(state)
        info: dict = {}
        new_state = []
        skips: list = []
        current, pending, effect = arrays, Keep(), Keep()
        for r, p, s in zip(rules, prefixes, state):
            if not isinstance(pending, Keep):  # the next rule sees what the ones before produced
                current, pending = _apply(form() if current is _UNFORMED else current, pending), Keep()
            e, s, i = step(r, current, s)
            if isinstance(e, Skip):  # the skip is carried to the chain's end: no zeroed copy in between
                skips.append(e.skip)
                e = e.effect
            if not isinstance(e, Keep):
                pending = e
                effect = e if current is arrays else then(Replace(tuple(current)), e)
            new_state.append(s)
            info.update({f"{p}/{k}": v for k, v in i.items()})
        new_state = tuple(new_state)
        if skips:
            from .backend._tree import tree_where

            skip = skips[0]
            for flag in skips[1:]:
                skip = skip | flag
            new_state = tree_where(None, skip, state, new_state)  # a skipped step: no rule's state moves
            effect = Skip(effect, skip)
        return effect, new_state, info

    def update_effect(grads: Sequence[Any], state: tuple, params: Sequence[Any] | None = None):
        return run(list(grads), state, lambda r, g, s: r.update_effect(g, s, params))

    def project_effect(params: Sequence[Any], state: tuple):
        return run(list(params), state, lambda r, p, s: r.project_effect(p, s))

    def update_effect_from_weights(after: Sequence[Any], before: Sequence[Any], state: tuple):
        # each rule reads (after, before) while the update is as the optimizer made it; a rule that
        # changes it makes the later ones see the changed update, formed then (out of place)
        after, before = list(after), list(before)

        def form() -> list:
            from .backend import differences, namespace

            return differences(namespace(*after), after, before) if after else []

        def step(r: Rule, current: Any, s: Any) -> tuple:
            if current is _UNFORMED:
                return r.update_effect_from_weights(after, before, s)
            return r.update_effect(current, s, before)

        return run(_UNFORMED, state, step, form)

    has_project = any(r.has_project for r in rules)
    has_update = any(r.has_update for r in rules)
    return Rule(
        init=init,
        name="chain",
        needs_params=any(r.needs_params for r in rules),
        on_update=bool(on_updates),
        config={"rule": "chain", "rules": [dict(r.config) for r in rules]},
        update_effect=update_effect if has_update else None,
        # its own only where every rule has one (else the default: the update formed once, for all)
        update_effect_from_weights=(update_effect_from_weights if on_updates and all(
            r.has_weights_effect for r in rules if r.has_update) else None),
        parts=rules,
        # Keep "no project part" recognisable (Rule.has_project): adapters such as
        # gradclip_optax.transform() must know whether a rule needs the weights after the step.
        project_effect=project_effect if has_project else None,
    )
