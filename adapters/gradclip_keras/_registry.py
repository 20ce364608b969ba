"""Saving rules and gradclip classes with a Keras model: names in Keras' registry.

- gradclip's Keras classes are registered as ``"gradclip_keras>Optimizer"`` etc., so a
  model loaded without ``import gradclip_keras`` fails with Keras' own "Could not
  locate ... gradclip_keras>..." error (the names ``"gradclip>..."`` of gradclip 0.2 files
  still load).
- :func:`register_rule` registers a rule *factory*: the rules it returns carry a config
  (``{"rule": "package>name", **arguments}``) that :func:`rule_from_config` rebuilds, so
  a custom rule saves and reloads with the model like the core's rules.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Mapping

import keras

import gradclip_core as gc

__all__ = ["serializable", "register_rule", "rule_from_config", "rule_config"]

PACKAGE = "gradclip_keras"
_OLD_PACKAGE = "gradclip"  # gradclip 0.2 saved its classes as "gradclip>Name"


def serializable(name: str) -> Callable[[type], type]:
    """Register a gradclip Keras class as ``"gradclip_keras>name"`` (and the 0.2 name ``"gradclip>name"``)."""

    def decorator(cls: type) -> type:
        cls = keras.saving.register_keras_serializable(package=PACKAGE, name=name)(cls)
        keras.saving.get_custom_objects().setdefault(f"{_OLD_PACKAGE}>{name}", cls)
        return cls

    return decorator


def register_rule(factory: Callable[..., gc.Rule] | None = None, *, package: str = "Custom", name: str | None = None) -> Any:
    """Register a rule factory so that the rules it makes save and reload with a Keras model.

    The core's factories (``gc.clip_by_global_norm(...)``) record their arguments in
    ``rule.config``, which :class:`gradclip_keras.Optimizer` and
    :class:`gradclip_keras.Constraint` store in the model's config. A rule you build with
    ``gc.Rule(...)`` has no config, so a model using it cannot be saved (``model.save``,
    ``ModelCheckpoint``). Decorate the function that builds it: the rules it returns get
    the config ``{"rule": "package>name", **arguments}`` (arguments must be JSON-able),
    and the factory is registered in Keras' object registry under ``"package>name"``
    (like ``keras.saving.register_keras_serializable``), so ``keras.saving.load_model``
    rebuilds the rule by calling it again. Define (import) the factory before loading,
    or pass it in ``custom_objects={"package>name": factory}``.

    Args:
      factory: the function returning a :class:`gradclip_core.Rule` (when used as
        ``@register_rule`` without arguments).
      package: the registry package (default ``"Custom"``, as Keras').
      name: the registered name (default: the function's name).

    Returns:
      The wrapped factory (or a decorator, when called with keyword arguments only).

    Example:
      >>> import keras, gradclip_core as gc, gradclip_keras
      >>> @gradclip_keras.register_rule(package="docs")
      ... def box(c=0.1):
      ...     def project(params, state):
      ...         return [keras.ops.clip(p, -c, c) for p in params], state, {}
      ...     return gc.Rule(project=project, name="box")
      >>> box(0.5).config
      {'rule': 'docs>box', 'c': 0.5}
      >>> gradclip_keras.Constraint(box(0.5)).get_config()["rule"]["rule"]
      'docs>box'
    """
    if factory is None:
        return functools.partial(register_rule, package=package, name=name)
    if not callable(factory):
        raise TypeError(f"register_rule: factory must be a function returning a gradclip_core.Rule, got {factory!r}")
    if not isinstance(package, str) or not package or ">" in package:
        raise ValueError(f"register_rule: package must be a non-empty string without '>', got {package!r}")
    key = f"{package}>{name or factory.__name__}"
    sig = inspect.signature(factory)

    @functools.wraps(factory)
    def wrapper(*args: Any, **kwargs: Any) -> gc.Rule:
        bound = sig.bind(*args, **kwargs)
        bound.apply_defaults()
        rule = factory(*args, **kwargs)
        if not isinstance(rule, gc.Rule):
            raise TypeError(f"{key}: the registered factory must return a gradclip_core.Rule, got {type(rule).__name__}")
        return rule.replace(config={"rule": key, **bound.arguments})

    keras.saving.register_keras_serializable(package=package, name=name or factory.__name__)(wrapper)
    return wrapper


def rule_from_config(config: Mapping, custom_objects: Any = None) -> gc.Rule:
    """Rebuild a rule from ``rule.config``: core factories, ``chain``, and :func:`register_rule` factories."""
    if not isinstance(config, Mapping) or "rule" not in config:
        raise ValueError(f"a rule config must be a mapping with a 'rule' key, got {config!r}")
    kwargs = dict(config)
    name = kwargs.pop("rule")
    if name == "chain":
        return gc.chain(*(rule_from_config(c, custom_objects) for c in kwargs["rules"]))
    factory = keras.saving.get_registered_object(name, custom_objects=custom_objects)
    if factory is not None:
        return factory(**kwargs)
    if ">" in name:
        raise ValueError(
            f"unknown rule {name!r}: its factory is registered with gradclip_keras.register_rule; define or import it "
            f"before loading (or pass custom_objects={{{name!r}: factory}})"
        )
    return gc.from_config(config)


def rule_config(rule: gc.Rule, where: str) -> dict:
    """``rule.config``, checked to be complete (every rule of a chain has one) before it is saved."""

    def missing(config: Mapping) -> bool:
        if not config:
            return True
        if config.get("rule") == "chain":
            return any(missing(c) for c in config.get("rules", ()))
        return False

    if missing(rule.config):
        raise ValueError(
            f"{where}: rule {rule!r} (or a rule in its chain) was not made by a gradclip_core factory, so it has no "
            "config to save with the model; build it with a factory decorated with @gradclip_keras.register_rule"
        )
    return dict(rule.config)
