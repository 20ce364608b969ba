"""Shared pieces of the weight rules: a stateless project-only rule, the dtype of the formulas."""

from __future__ import annotations

from typing import Any, Callable, Sequence

from .._effect import Keep
from .._rule import Rule, _identity_init
from .._validate import check_real
from ..backend._namespace import namespace
from ..prune._state import sparsity_info

__all__ = ["project_rule", "formula_dtype", "zeros_info", "KERAS_EPS"]

KERAS_EPS = 1e-7  # keras.config.epsilon()


def formula_dtype(xp: Any, x: Any) -> Any:
    """The dtype the weight formulas run in: float64 for float64 weights, else float32."""
    return xp.float64 if x.dtype == xp.float64 else xp.float32


def project_rule(name: str, fn: Callable[[Any, list], "tuple[Any, dict]"], *, real_only: str | None = None) -> Rule:
    """A stateless :class:`Rule` whose ``project_effect`` is ``fn(xp, params) -> (effect, info)``.

    ``real_only``: the rule refuses complex weights (what it does to values, for the error).
    """

    def project(params: Sequence[Any], state: Any):
        params = list(params)
        if not params:
            return Keep(), state, {}
        if real_only is not None:
            check_real(name, params, real_only)
        effect, info = fn(namespace(*params), params)
        return effect, state, info

    return Rule(init=_identity_init, project_effect=project, name=name)


def zeros_info(xp: Any, out: list) -> dict:
    """``sparsity`` info of the exact zeros of ``out``."""
    return sparsity_info(xp, [x != 0 for x in out])
