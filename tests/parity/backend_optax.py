"""Parity backend: optax, the real integration path under ``jax.jit``.

Each step is one jitted train step: ``jax.value_and_grad`` of ``loss = sum(p * G)``
(so the gradient is exactly ``G``, NaN/Inf included), the gradclip rule in the
optimizer, then ``optax.apply_updates``. With plain ``"sgd"`` a rule without a project
part is ``optax.chain(gradclip_optax.transform(rule), optax.sgd(LR))``, one with a
project part ``gradclip_optax.wrap(rule, optax.sgd(LR))``; ``"momentum"`` and ``"adam"``
are always ``wrap``, ``"momentum-chain"`` always the chain (rules without project only).
Compiled steps are cached per rule factory, optimizer and dtype (the case shapes are
fixed), so the suite compiles each once.

Resume: the whole optimizer state (and the params) become NumPy arrays, as a
checkpoint library stores them, and are put back into the structure of a fresh
``tx.init``. ``nonfinite="skip"``: ``wrap`` is a true skip (params and the inner
optimizer's state unchanged); a chain element can only zero the updates, the
optimizers after it still step ("zero", documented in ``gradclip_optax.transform``).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .cases import LR, Case
from .reference import Step, leaves_of, masks_of

NAME = "optax"
DTYPES = ("float32", "bfloat16", "float16")
OPTIMIZERS = {"sgd": "true", "momentum": "true", "adam": "true", "momentum-chain": "zero"}
REQUIRES = ("jax", "optax", "gradclip_optax")

_STEPS: dict[tuple, tuple[Any, Callable]] = {}


def _make(make_rule, optimizer: str):
    import jax
    import jax.numpy as jnp
    import optax

    import gradclip_optax

    rule = make_rule()
    inner = {"sgd": lambda: optax.sgd(LR), "momentum": lambda: optax.sgd(LR, momentum=0.5),
             "momentum-chain": lambda: optax.sgd(LR, momentum=0.5), "adam": lambda: optax.adam(1e-2)}[optimizer]()
    wrapped = rule.has_project or optimizer in ("momentum", "adam")
    if wrapped:
        tx = gradclip_optax.wrap(rule, inner)
    else:  # update clipping (rule.on_update) goes after the optimizer, as Levanter chains it
        gc_tx = gradclip_optax.transform(rule)
        tx = optax.chain(inner, gc_tx) if rule.on_update else optax.chain(gc_tx, inner)

    def loss(params, G):
        return sum(jnp.sum(p * g) for p, g in zip(params, G))

    @jax.jit
    def step(params, opt_state, G):
        _, grads = jax.value_and_grad(loss)(params, G)
        if rule.on_update:  # the rule's output is the corrected update: the weights show it
            rule_out = None
        elif wrapped:  # wrap() runs rule.update first on the flat leaves: the same call
            rule_out, _, _ = rule.update(jax.tree.leaves(grads), opt_state.rule_state, jax.tree.leaves(params))
        else:  # optax.chain runs its elements in order: the same as tx.update
            rule_out, _ = gc_tx.update(grads, opt_state[0], params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, rule_out

    return tx, step


def _parts(opt_state) -> tuple:
    """(rule state, inner optimizer state) of a wrap or a chain state (either order)."""
    if hasattr(opt_state, "rule_state"):
        return opt_state.rule_state, opt_state.inner_state
    if hasattr(opt_state[1], "rule_state"):  # optax.chain(inner, transform(update rule))
        return opt_state[1].rule_state, opt_state[0]
    return opt_state[0].rule_state, opt_state[1]


def _put(tree):
    """On the device, committed: the step's outputs are, and jit compiles again for uncommitted inputs."""
    import jax

    return jax.device_put(tree, jax.devices()[0])


def _resume(tx, case: Case, params, opt_state):
    """To NumPy and back, into the structure of a fresh ``tx.init`` (a new process)."""
    import jax

    saved_p = [np.asarray(x) for x in params]
    saved_s = [np.asarray(x) for x in jax.tree.leaves(opt_state)]
    structure = jax.tree.structure(tx.init([np.zeros_like(p) for p in case.params]))
    return _put(saved_p), _put(jax.tree.unflatten(structure, saved_s))


def run(make_rule, case: Case, optimizer: str = "sgd", resume_at: int | None = None) -> list[Step]:
    import jax
    import jax.numpy as jnp

    import gradclip_optax

    key = (make_rule, optimizer, case.dtype, tuple(p.shape for p in case.params))
    if key not in _STEPS:
        _STEPS[key] = _make(make_rule, optimizer)
    tx, step = _STEPS[key]
    params = _put([jnp.asarray(p) for p in case.params])
    opt_state = _put(tx.init(params))
    out = []
    for i, grads in enumerate(case.grads):
        if i == resume_at:
            params, opt_state = _resume(tx, case, params, opt_state)
        params, opt_state, rule_out = step(params, opt_state, _put([jnp.asarray(g) for g in grads]))
        info = {k: float(v) for k, v in gradclip_optax.get_info(opt_state).items()}
        rule_state, inner_state = _parts(opt_state)
        out.append(Step([np.asarray(p) for p in params], info, None if rule_out is None else [np.asarray(u) for u in rule_out],
                        masks_of(rule_state), leaves_of(rule_state), [np.asarray(x) for x in jax.tree.leaves(inner_state)]))
    return out
