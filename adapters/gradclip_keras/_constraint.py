"""``gradclip_keras.Constraint(rule)``: a weight rule as a Keras ``kernel_constraint``."""

from __future__ import annotations

from typing import Any, Mapping

import keras

import gradclip_core as gc

from ._backend import rule_scope, to_tensor
from ._state import check_rule, flatten, has_project

__all__ = ["Constraint"]


@keras.saving.register_keras_serializable(package="gradclip")
class Constraint(keras.constraints.Constraint):
    """Run ``rule.project`` on one weight after every optimizer step (``kernel_constraint=``).

    Keras calls a constraint with one variable and no state, so only *state-free* weight
    rules fit here (max-norm style constraints); the rule's state is ``rule.init([w])``
    afresh at every call and must be empty. Rules with state (pruning masks) or that act
    on several weights together belong in :class:`gradclip_keras.Optimizer` or
    :class:`gradclip_keras.Callback`. ``axis=None`` in unit-wise rules means Keras'
    ``"out_last"`` layout. Any info the rule returns is dropped.

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
    """

    def __init__(self, rule: gc.Rule | Mapping) -> None:
        if isinstance(rule, Mapping):
            rule = gc.from_config(rule)
        check_rule(rule, "gradclip_keras.Constraint")
        if not has_project(rule):
            raise ValueError(
                f"rule {rule.name!r} has no project part: as a weight constraint it would do nothing; "
                "gradient rules go in gradclip_keras.Optimizer(inner, rule)"
            )
        self.rule = rule

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

    def get_config(self) -> dict:
        """``{"rule": rule.config}`` (rules built from core factories only)."""
        if not self.rule.config:
            raise ValueError(
                f"rule {self.rule.name!r} has no config (it was not made by a gradclip_core factory), so it cannot be saved"
            )
        return {"rule": dict(self.rule.config)}
