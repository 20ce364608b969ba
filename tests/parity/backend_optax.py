"""Parity backend: optax, the real integration path under ``jax.jit``.

Each step is one jitted train step: ``jax.value_and_grad`` of ``loss = sum(p * G)``
(so the gradient is exactly ``G``, NaN/Inf included), the gradclip transform inside
``optax.chain(..., optax.sgd(LR))`` (``gradclip_optax.wrap`` for rules with a project
part), then ``optax.apply_updates``. Compiled steps are cached per rule factory and
dtype (the case shapes are fixed), so the suite compiles each rule once per dtype.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .cases import LR, Case
from .reference import Step, masks_of

NAME = "optax"
DTYPES = ("float32", "bfloat16", "float16")

_STEPS: dict[tuple, tuple[Any, Callable]] = {}


def available() -> bool:
    try:
        import gradclip_optax  # noqa: F401
        import jax  # noqa: F401
        import optax  # noqa: F401
    except ImportError:
        return False
    return True


def _make(make_rule):
    import jax
    import jax.numpy as jnp
    import optax

    import gradclip_optax

    rule = make_rule()
    if rule.has_project:
        tx = gradclip_optax.wrap(rule, optax.sgd(LR))
    else:
        gc_tx = gradclip_optax.transform(rule)
        tx = optax.chain(gc_tx, optax.sgd(LR))

    def loss(params, G):
        return sum(jnp.sum(p * g) for p, g in zip(params, G))

    @jax.jit
    def step(params, opt_state, G):
        _, grads = jax.value_and_grad(loss)(params, G)
        if rule.has_project:  # wrap() runs rule.update first on the flat leaves: the same call
            rule_out, _, _ = rule.update(jax.tree.leaves(grads), opt_state.rule_state, jax.tree.leaves(params))
        else:  # optax.chain runs its elements in order: the same as tx.update
            rule_out, _ = gc_tx.update(grads, opt_state[0], params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, rule_out

    return tx, step


def _info(opt_state) -> dict:
    import gradclip_optax

    return gradclip_optax.get_info(opt_state)


def run(make_rule, case: Case) -> list[Step]:
    import jax.numpy as jnp

    key = (make_rule, case.dtype, tuple(p.shape for p in case.params))
    if key not in _STEPS:
        _STEPS[key] = _make(make_rule)
    tx, step = _STEPS[key]
    params = [jnp.asarray(p) for p in case.params]
    opt_state = tx.init(params)
    out = []
    for grads in case.grads:
        params, opt_state, rule_out = step(params, opt_state, [jnp.asarray(g) for g in grads])
        info = {k: float(v) for k, v in _info(opt_state).items()}
        updates = [np.asarray(u) for u in rule_out]
        masks = masks_of(opt_state.rule_state) if hasattr(opt_state, "rule_state") else None
        out.append(Step([np.asarray(p) for p in params], info, updates, masks))
    return out
