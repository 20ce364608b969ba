"""Building block for stateless ``update`` rules (every clipping rule of the core)."""

from __future__ import annotations

from typing import Any, Callable, Sequence

from ._effect import Keep
from ._nonfinite import guard_update
from ._rule import EmptyState, Rule
from ._validate import check_real
from .backend._names import array_label
from .backend._namespace import namespace

__all__ = ["stateless_rule", "check_params", "NO_PARAMS_MSG"]

NO_PARAMS_MSG = (
    "{name} needs the current parameters: call rule.update(grads, state, params) "
    "(in optax, pass params to the transformation's update)"
)

# fn(xp, grads, params) -> (effect, info)
UpdateFn = Callable[[Any, list, "list | None"], "tuple[list, dict]"]


def check_params(name: str, grads: Sequence[Any], params: Sequence[Any] | None) -> list:
    """``params`` must be given and match ``grads`` one to one in shape."""
    if params is None:
        raise ValueError(NO_PARAMS_MSG.format(name=name))
    params = list(params)
    if len(params) != len(grads):
        raise ValueError(f"params must have one array per gradient: got {len(params)} params for {len(grads)} grads")
    for i, (g, p) in enumerate(zip(grads, params)):
        if tuple(g.shape) != tuple(p.shape):
            raise ValueError(f"{name}: params {array_label(i)} has shape {tuple(p.shape)} but its gradient has shape "
                             f"{tuple(g.shape)}")
    return params


def stateless_rule(name: str, fn: UpdateFn, nonfinite: str, *, needs_params: bool = False,
                   real_only: str | None = None) -> Rule:
    """A :class:`Rule` with empty state whose ``update_effect`` is ``fn`` under a non-finite policy.

    ``fn(xp, grads, params) -> (effect, info)`` is called only with a non-empty list of
    gradients, their namespace ``xp`` and the params (checked against the gradients when
    ``needs_params``, else as given). ``real_only``: the rule refuses complex gradients
    (:func:`~gradclip_core._validate.check_real`), the text says what it does to values.
    """

    def update_effect(grads: Sequence[Any], state: EmptyState, params: Sequence[Any] | None = None):
        grads = list(grads)
        if needs_params:
            params = check_params(name, grads, params)
        if not grads:
            return Keep(), state, {}
        if real_only is not None:
            check_real(name, grads, real_only)
        effect, info = fn(namespace(*grads), grads, params)
        return effect, state, info

    return Rule(update_effect=guard_update(update_effect, nonfinite), name=name, needs_params=needs_params)
