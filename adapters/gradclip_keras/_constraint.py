"""``gradclip_keras.Constraint(rule)``: a weight rule as a Keras ``kernel_constraint``."""

from __future__ import annotations

from typing import Any, Mapping

import keras

import gradclip_core as gc

from ._backend import prepare_namespaces, rule_scope, to_tensor
from ._registry import rule_config, rule_from_config, serializable
from ._state import check_rule, flatten, has_project

__all__ = ["Constraint"]


# The class is not *named* ``Constraint``: Keras resolves a constraint config by its class
# name among its own constraints first, so a model saved with one and loaded without
# ``import gradclip_keras`` failed with "Constraint() takes no arguments" (Keras' base
# class). Under a name of its own, loading fails with Keras' "Could not interpret
# constraint identifier", which shows the module and registered name
# ("gradclip_keras>Constraint") to import.
@serializable("Constraint")
class GradclipConstraint(keras.constraints.Constraint):
    """Run ``rule.project`` on one weight after every optimizer step (``kernel_constraint=``).

    Keras calls a constraint with one variable and no state, so only *state-free* weight
    rules fit here (max-norm style constraints); the rule's state is ``rule.init([w])``
    afresh at every call and must be empty. Rules with state (pruning masks) or that act
    on several weights together belong in :class:`gradclip_keras.Optimizer` or
    :class:`gradclip_keras.Callback`. Any info the rule returns is dropped.

    Axes: ``axis=None`` in unit-wise rules means Keras' ``"out_last"`` layout: a unit is
    one output, and the norm runs over *every other* axis (``(0, 1, 2)`` of a ``Conv2D``
    kernel ``(kh, kw, in, out)``, ``0`` of a ``Dense`` kernel ``(in, out)``). Keras'
    own ``MaxNorm`` / ``MinMaxNorm`` / ``UnitNorm`` default to ``axis=0`` whatever the
    layer: the same on ``Dense``, but on a ``Conv2D`` kernel they normalise over the
    kernel height only. For Keras' numbers pass Keras' axis: ``gc.max_norm(c, axis=0)``
    equals ``keras.constraints.MaxNorm(c)`` on every layer (tested), and the default
    equals ``MaxNorm(c, axis=[0, 1, 2])`` on a ``Conv2D``, the axis the Keras docs
    recommend for convolutions.

    A model using it saves and reloads with the rule's config (core factories, or
    factories registered with :func:`gradclip_keras.register_rule`); loading needs
    ``import gradclip_keras``.

    Args:
      rule: a :class:`gradclip_core.Rule` with a ``project`` part (or its ``config``).

    Raises:
      ValueError: the rule has no ``project`` part (a clipping rule would do nothing), or
        (at call time) it keeps state.

    Example:
      >>> import numpy as np, keras
      >>> import gradclip_core as gc, gradclip_keras
      >>> def unit_box(params, state):
      ...     return [keras.ops.clip(p, -1.0, 1.0) for p in params], state, {}
      >>> c = gradclip_keras.Constraint(gc.Rule(project=unit_box, name="unit_box"))
      >>> keras.ops.convert_to_numpy(c(keras.ops.convert_to_tensor(np.array([3.0, -0.5], np.float32)))).tolist()
      [1.0, -0.5]

      Keras' ``MaxNorm(2.0)`` (``axis=0``) versus the default units, on a ``Conv2D`` kernel:

      >>> w = keras.ops.ones((3, 3, 2, 4))  # (kh, kw, in, out): every unit has norm sqrt(18)
      >>> keras_like = gradclip_keras.Constraint(gc.max_norm(2.0, axis=0))(w)  # = MaxNorm(2.0)(w)
      >>> per_unit = gradclip_keras.Constraint(gc.max_norm(2.0))(w)           # = MaxNorm(2.0, axis=[0, 1, 2])(w)
      >>> round(float(keras.ops.norm(keras_like[:, 0, 0, 0])), 4), round(float(keras.ops.norm(keras.ops.reshape(per_unit[..., 0], (-1,)))), 4)
      (1.7321, 2.0)

      (``axis=0`` sees columns of norm ``sqrt(3) < 2`` and leaves the kernel alone; each
      unit, of norm ``sqrt(18)``, is scaled to norm 2.)
    """

    def __init__(self, rule: gc.Rule | Mapping) -> None:
        if isinstance(rule, Mapping):
            rule = rule_from_config(rule)
        check_rule(rule, "gradclip_keras.Constraint")
        if not has_project(rule):
            raise ValueError(
                f"rule {rule.name!r} has no project part: as a weight constraint it would do nothing; "
                "gradient rules go in gradclip_keras.Optimizer(inner, rule)"
            )
        self.rule = rule
        prepare_namespaces()

    def __call__(self, w: Any) -> Any:
        value = to_tensor(w)
        with rule_scope():
            state = self.rule.init([value])
            if flatten(state):
                raise ValueError(
                    f"rule {self.rule.name!r} keeps state, which a Keras constraint cannot hold; "
                    "use gradclip_keras.Optimizer(inner, rule) or gradclip_keras.Callback(rule)"
                )
            (out,), _, _ = self.rule.project([value], state)
        return keras.ops.cast(out, value.dtype)

    def __repr__(self) -> str:
        return f"gradclip_keras.Constraint({self.rule!r})"

    def get_config(self) -> dict:
        """``{"rule": rule.config}``.

        Raises:
          ValueError: the rule has no config (a ``gc.Rule`` built by hand): register its
            factory with :func:`gradclip_keras.register_rule` to save it.
        """
        return {"rule": rule_config(self.rule, "gradclip_keras.Constraint")}

    @classmethod
    def from_config(cls, config: Mapping, custom_objects: Any = None) -> "GradclipConstraint":
        return cls(rule_from_config(config["rule"], custom_objects))


Constraint = GradclipConstraint
