"""Parity backend: ``gradclip_keras.Optimizer(SGD(LR), rule)`` in a Keras train step, per Keras backend.

The case's arrays are Keras variables; every step the gradients come from real autodiff
of ``loss = sum(p * G)`` (so ``dL/dp == G`` exactly, NaN and Inf included) and go
through the wrapper the way Keras' own trainers drive an optimizer:

- tensorflow: ``tf.GradientTape`` + ``optimizer.apply`` inside one ``tf.function``;
- jax: ``jax.grad`` + ``optimizer.stateless_apply`` inside one ``jax.jit``;
- torch: ``loss.backward()`` + ``optimizer.apply`` (eager, as Keras' torch trainer).

Variables, wrapper and compiled step are built once per rule and dtype (all cases of
a dtype share shapes) and reset to their initial values for each case. The rule's
output is read where it enters the optimizer: the inner SGD copies the
gradients it receives into variables of its own (zeroed before each step, so a step
the wrapper skips reports the all-zero output the rule returned).

Keras runs under one backend per process: ``KERAS_BACKEND`` picks it, and the backend
is enabled only with ``GRADCLIP_KERAS_RUN=1`` (``bash scripts/dev.sh test`` runs it
under tensorflow, jax and torch in three processes).
"""

from __future__ import annotations

import os

import numpy as np

from .cases import LR, Case
from .reference import Step

_BACKEND = os.environ.get("KERAS_BACKEND", "tensorflow")
NAME = f"keras_{_BACKEND}"
DTYPES = ("float32", "bfloat16", "float16")


def available() -> bool:
    if os.environ.get("GRADCLIP_KERAS_RUN") != "1":
        return False
    try:
        import keras  # noqa: F401

        import gradclip_keras  # noqa: F401
    except ImportError:
        return False
    return True


def _recording_sgd():
    import keras

    class RecordingSGD(keras.optimizers.SGD):
        """Plain SGD that also stores the gradients it is given (the rule's output)."""

        def build(self, variables):
            super().build(variables)
            self.seen = [self.add_variable_from_reference(v, name="seen") for v in variables]

        def apply(self, grads, trainable_variables=None):
            for var, g in zip(self.seen, grads):
                var.assign(g)
            super().apply(grads, trainable_variables)

    return RecordingSGD(LR)


def _np(x, like: np.ndarray) -> np.ndarray:
    from keras import ops

    return np.asarray(ops.convert_to_numpy(ops.cast(x, "float32"))).astype(like.dtype)


def _step_tf(opt, variables):
    import tensorflow as tf

    @tf.function
    def step(G):
        for s in opt.inner_optimizer.seen:
            s.assign(tf.zeros_like(s))
        with tf.GradientTape() as tape:
            loss = tf.add_n([tf.reduce_sum(tf.cast(v.value * g, tf.float32)) for v, g in zip(variables, G)])
        grads = tape.gradient(loss, [v.value for v in variables])
        opt.apply(grads, variables)

    return lambda G: step([tf.convert_to_tensor(g) for g in G])


def _step_jax(opt, variables):
    import jax
    import jax.numpy as jnp

    seen_idx = [i for i, v in enumerate(opt.variables) if any(v is s for s in opt.inner_optimizer.seen)]

    @jax.jit
    def step(tvs, ovs, G):
        grads = jax.grad(lambda ps: sum(jnp.sum((p * g).astype(jnp.float32)) for p, g in zip(ps, G)))(tvs)
        ovs = [jnp.zeros_like(v) if i in seen_idx else v for i, v in enumerate(ovs)]
        return opt.stateless_apply(ovs, grads, tvs)

    def run(G):
        tvs, ovs = step([v.value for v in variables], [v.value for v in opt.variables], [jnp.asarray(g) for g in G])
        for v, x in zip(variables, tvs):
            v.assign(x)
        for v, x in zip(opt.variables, ovs):
            v.assign(x)

    return run


def _step_torch(opt, variables):
    import torch

    def run(G):
        for s in opt.inner_optimizer.seen:
            s.assign(torch.zeros_like(s.value))
        ps = [v.value for v in variables]
        for p in ps:
            p.grad = None
        loss = sum((p * torch.as_tensor(g).to(p.device)).float().sum() for p, g in zip(ps, G))
        loss.backward()
        grads = [p.grad for p in ps]
        with torch.no_grad():
            opt.apply(grads, variables)

    return run


def _tensor(x: np.ndarray, dtype: str):
    import keras

    return keras.ops.cast(keras.ops.convert_to_tensor(np.asarray(x, np.float32)), dtype)


_CACHE: dict[tuple, tuple] = {}


def _setup(make_rule, case: Case):
    """Variables, wrapper and compiled step for a rule and dtype, reused across cases.

    Every case of a dtype has the same shapes, so the variables and the optimizer are
    built (and the step traced / jitted) once; each case then starts from the saved
    initial optimizer values (rule state, info, inner SGD) and its own parameters.
    """
    import keras

    import gradclip_keras

    key = (make_rule, case.dtype, tuple(p.shape for p in case.params))
    if key not in _CACHE:
        variables = [
            keras.Variable(_tensor(p, case.dtype), dtype=case.dtype, name=f"p{i}") for i, p in enumerate(case.params)
        ]
        opt = gradclip_keras.Optimizer(_recording_sgd(), make_rule())
        opt.build(variables)
        initial = [keras.ops.copy(v.value) for v in opt.variables]
        step = {"tensorflow": _step_tf, "jax": _step_jax, "torch": _step_torch}[keras.backend.backend()](opt, variables)
        _CACHE[key] = (variables, opt, initial, step)
    variables, opt, initial, step = _CACHE[key]
    for v, p in zip(variables, case.params):
        v.assign(_tensor(p, case.dtype))
    for v, x in zip(opt.variables, initial):
        v.assign(x)
    return variables, opt, step


def _positional(info: dict, variables: list) -> dict:
    """Keras names per-array info by variable path (``sparsity/p3``); the reference numbers it (``sparsity/3``)."""
    out = {}
    for key, value in info.items():
        for i, var in enumerate(variables):
            suffix = f"sparsity/{var.path}"
            if key.endswith(suffix):
                key = f"{key[:-len(suffix)]}sparsity/{i}"
                break
        out[key] = value
    return out


def run(make_rule, case: Case) -> list[Step]:
    import keras

    variables, opt, step = _setup(make_rule, case)
    out = []
    for grads in case.grads:
        step([_tensor(g, case.dtype) for g in grads])
        params = [_np(v.value, ref) for v, ref in zip(variables, case.params)]
        updates = [_np(s.value, ref) for s, ref in zip(opt.inner_optimizer.seen, case.params)]
        info = _positional({k: float(keras.ops.convert_to_numpy(v)) for k, v in opt.info.items()}, variables)
        # pruning masks: the bool leaves of the rule state, depth first (as reference.masks_of)
        masks = [np.asarray(keras.ops.convert_to_numpy(v.value)) for v in opt.gradclip_state if v.dtype == "bool"]
        out.append(Step(params, info, updates, masks))
    return out
