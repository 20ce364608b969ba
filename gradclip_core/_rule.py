"""The Rule abstraction: ``init`` / ``update`` (before the optimizer step) / ``project`` (after it).

A rule is a named tuple of pure functions over *flat sequences* of arrays::

    state                = rule.init(params)
    grads, state, info   = rule.update(grads, state, params=None)   # before the optimizer step
    params, state, info  = rule.project(params, state)              # after the optimizer step

``state`` is a NamedTuple of arrays (possibly empty), so it is a JAX pytree, maps onto
Keras variables and round-trips through a torch ``state_dict``. ``info`` is a dict of
0-d arrays for logging (never synced to the host by the rule).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Mapping, NamedTuple, Sequence

__all__ = ["Rule", "EmptyState", "chain", "from_config", "Info"]

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


class Rule(NamedTuple):
    """A gradient-clipping, constraint or pruning rule: pure ``init``/``update``/``project``.

    Attributes:
      init: ``init(params) -> state``; ``params`` is a flat sequence of arrays.
      update: ``update(grads, state, params=None) -> (grads, state, info)``, applied to
        the gradients (or optimizer updates) before the optimizer step.
      project: ``project(params, state) -> (params, state, info)``, applied to the
        weights after the optimizer step (identity for clipping rules).
      name: short name, used as the prefix of the rule's info keys inside :func:`chain`.
      needs_params: whether ``update`` requires ``params`` (e.g. adaptive clipping).
      config: the factory name and arguments; :func:`from_config` rebuilds the rule.

    Example:
      >>> import numpy as np
      >>> import gradclip_core as gc
      >>> rule = gc.clip_by_global_norm(1.0)
      >>> grads = [np.array([3.0, 4.0], np.float32)]
      >>> state = rule.init(grads)
      >>> clipped, state, info = rule.update(grads, state)
      >>> clipped[0].astype(float).round(6).tolist(), float(info["norm"])
      ([0.6, 0.8], 5.0)
    """

    init: Callable[[Sequence[Any]], Any] = _identity_init
    update: Callable[..., tuple] = _identity_update
    project: Callable[..., tuple] = _identity_project
    name: str = "identity"
    needs_params: bool = False
    config: Mapping[str, Any] = {}

    @property
    def has_project(self) -> bool:
        """Whether the rule acts on the weights after the step (constraints, pruning).

        Adapters skip the after-step work for rules without one (all clipping rules).
        """
        return self.project is not _identity_project


_FACTORIES: dict[str, Callable[..., Rule]] = {}


def factory(fn: Callable[..., Rule]) -> Callable[..., Rule]:
    """Decorator for public rule factories: records the call as the rule's ``config``."""
    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Rule:
        bound = sig.bind(*args, **kwargs)
        bound.apply_defaults()
        rule = fn(*args, **kwargs)
        return rule._replace(config={"rule": fn.__name__, **bound.arguments})

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
    if name not in _FACTORIES:
        raise ValueError(f"unknown rule {name!r} in config; known: {sorted(_FACTORIES) + ['chain']}")
    return _FACTORIES[name](**kwargs)


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

    Args:
      *rules: the rules, applied first to last.

    Returns:
      A :class:`Rule` whose state is ``tuple(rule.init(params) for rule in rules)``.

    Example:
      >>> import numpy as np
      >>> import gradclip_core as gc
      >>> rule = gc.chain(gc.clip_by_value(0.5), gc.clip_by_global_norm(0.5))
      >>> g = [np.array([3.0, -4.0], np.float32)]
      >>> out, _, info = rule.update(g, rule.init(g))
      >>> sorted(info)
      ['clip_by_global_norm/norm', 'clip_by_global_norm/scale', 'clip_by_value/clipped_fraction']
    """
    for i, r in enumerate(rules):
        if not isinstance(r, Rule):
            raise ValueError(f"chain() argument {i} must be a gradclip Rule, got {type(r).__name__}")
    rules = tuple(rules)
    prefixes = _prefixed([r.name for r in rules])

    def init(params: Sequence[Any]) -> tuple:
        return tuple(r.init(params) for r in rules)

    def _check(state: Any) -> None:
        if not isinstance(state, tuple) or len(state) != len(rules):
            raise ValueError(f"chain state must be a tuple of {len(rules)} rule states, got {type(state).__name__}")

    def update(grads: Sequence[Any], state: tuple, params: Sequence[Any] | None = None):
        _check(state)
        info: dict = {}
        new_state = []
        for r, p, s in zip(rules, prefixes, state):
            grads, s, i = r.update(grads, s, params)
            new_state.append(s)
            info.update({f"{p}/{k}": v for k, v in i.items()})
        return list(grads), tuple(new_state), info

    def project(params: Sequence[Any], state: tuple):
        _check(state)
        info: dict = {}
        new_state = []
        for r, p, s in zip(rules, prefixes, state):
            params, s, i = r.project(params, s)
            new_state.append(s)
            info.update({f"{p}/{k}": v for k, v in i.items()})
        return list(params), tuple(new_state), info

    # Keep "no project part" recognisable (Rule.has_project): adapters such as
    # gradclip_optax.transform() must know whether a rule needs the weights after the step.
    return Rule(
        init=init,
        update=update,
        project=project if any(r.has_project for r in rules) else _identity_project,
        name="chain",
        needs_params=any(r.needs_params for r in rules),
        config={"rule": "chain", "rules": [dict(r.config) for r in rules]},
    )
