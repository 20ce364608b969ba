"""Parity backend: ``gradclip_keras.Optimizer(SGD(LR), rule)`` in a Keras train step, per Keras backend.

The case's arrays are the weights of a small ``keras.Model`` (one weight per array);
every step the gradients come from real autodiff of ``loss = sum(p * G)`` (so
``dL/dp == G`` exactly, NaN and Inf included) and go through the wrapper the way
Keras' own trainers drive an optimizer:

- tensorflow: ``tf.GradientTape`` + ``optimizer.apply`` inside one ``tf.function``;
- jax: ``jax.grad`` + ``optimizer.stateless_apply`` inside one ``jax.jit``;
- torch: ``loss.backward()`` + ``optimizer.apply`` (eager, as Keras' torch trainer).

Model, wrapper and compiled step are built once per rule, optimizer and dtype (all
cases of a dtype share shapes) and reset to their initial values for each case. The
rule's output is read where it enters the optimizer: the inner SGD copies the
gradients it receives into variables of its own (zeroed before each step, so a step
the wrapper skips reports the all-zero output the rule returned).

Resume: the model (weights, and the wrapper with its rule config, rule state, info and
inner optimizer variables) is saved to a ``.keras`` file and loaded back with
``keras.saving.load_model``; the loaded model and optimizer train on. ``nonfinite="skip"``
is a true skip with every inner optimizer (the wrapper does not call it).

Keras runs under one backend per process: ``KERAS_BACKEND`` picks it, and the backend
is enabled only with ``GRADCLIP_KERAS_RUN=1`` (``bash scripts/dev.sh test`` runs it
under tensorflow, jax and torch in three processes).
"""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np

from .cases import LR, Case
from .reference import Step

_BACKEND = os.environ.get("KERAS_BACKEND", "tensorflow")
NAME = f"keras_{_BACKEND}"
DTYPES = ("float32", "bfloat16", "float16")
OPTIMIZERS = {"sgd": "true", "momentum": "true"}
REQUIRES = ("keras", "gradclip_keras")
ENABLED = os.environ.get("GRADCLIP_KERAS_RUN") == "1"  # the main pytest process never imports Keras


_CLASSES: dict = {}


def _classes() -> dict:
    """The Keras classes of this backend, registered once (``load_model`` finds them by name)."""
    if _CLASSES:
        return _CLASSES
    import keras

    @keras.saving.register_keras_serializable(package="gradclip_parity")
    class RecordingSGD(keras.optimizers.SGD):
        """SGD that also stores the gradients it is given (the rule's output)."""

        def build(self, variables):
            super().build(variables)
            self.seen = [self.add_variable_from_reference(v, name="seen") for v in variables]

        def apply(self, grads, trainable_variables=None):
            for var, g in zip(self.seen, grads):
                var.assign(g)
            super().apply(grads, trainable_variables)

    @keras.saving.register_keras_serializable(package="gradclip_parity")
    class Params(keras.Model):
        """A model that is just the case's arrays as weights (``shapes``, ``param_dtype``)."""

        def __init__(self, shapes, param_dtype, **kwargs):
            super().__init__(**kwargs)
            self.shapes, self.param_dtype = [list(s) for s in shapes], param_dtype
            self.ps = [self.add_weight(shape=tuple(s), dtype=param_dtype, initializer="zeros", name=f"p{i}")
                       for i, s in enumerate(self.shapes)]
            self.built = True

        def call(self, x):
            return x

        def get_config(self):
            return {"name": self.name, "shapes": self.shapes, "param_dtype": self.param_dtype}

    _CLASSES.update(Params=Params, RecordingSGD=RecordingSGD)
    return _CLASSES


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

    def run(G):  # committed inputs, as the step's outputs are: jit compiles again for uncommitted ones
        inputs = ([v.value for v in variables], [v.value for v in opt.variables], [jnp.asarray(g) for g in G])
        tvs, ovs = step(*jax.device_put(inputs, jax.devices()[0]))
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


def _compiled_step(model):
    import keras

    step = {"tensorflow": _step_tf, "jax": _step_jax, "torch": _step_torch}[keras.backend.backend()]
    return step(model.optimizer, model.ps)


def _tensor(x: np.ndarray, dtype: str):
    import keras

    return keras.ops.cast(keras.ops.convert_to_tensor(np.asarray(x, np.float32)), dtype)


_CACHE: dict[tuple, tuple] = {}


def _setup(make_rule, case: Case, optimizer: str):
    """Model, wrapper and compiled step for a rule, optimizer and dtype, reused across cases.

    Every case of a dtype has the same shapes, so the model and the optimizer are
    built (and the step traced / jitted) once; each case then starts from the saved
    initial optimizer values (rule state, info, inner optimizer) and its own parameters.
    """
    import keras

    key = (make_rule, optimizer, case.dtype, tuple(p.shape for p in case.params))
    if key not in _CACHE:
        import gradclip_keras

        classes = _classes()
        model = classes["Params"]([p.shape for p in case.params], case.dtype)
        inner = classes["RecordingSGD"](LR, momentum={"sgd": 0.0, "momentum": 0.5}[optimizer])
        model.compile(optimizer=gradclip_keras.Optimizer(inner, make_rule()))
        model.optimizer.build(model.ps)
        _CACHE[key] = (model, [keras.ops.copy(v.value) for v in model.optimizer.variables], _compiled_step(model))
    model, initial, step = _CACHE[key]
    for v, p in zip(model.ps, case.params):
        v.assign(_tensor(p, case.dtype))
    for v, x in zip(model.optimizer.variables, initial):
        v.assign(x)
    return model, step


def _resume(model):
    """Save the model to a ``.keras`` file and load it back: weights, wrapper, rule, state."""
    import keras

    import gradclip_keras

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ckpt.keras")
        model.save(path)
        loaded = keras.saving.load_model(path)
    opt = loaded.optimizer
    assert isinstance(opt, gradclip_keras.Optimizer), type(opt)  # the wrapper class and its rule came back
    assert json.dumps(opt.rule.config) == json.dumps(model.optimizer.rule.config), opt.rule.config  # as saved
    assert type(opt.inner_optimizer) is type(model.optimizer.inner_optimizer)
    return loaded, _compiled_step(loaded)


def _positional(info: dict, variables: list) -> dict:
    """Keras names per-array info by variable path (``sparsity/p3``, ``norm/p3``); the reference numbers it (``sparsity/3``)."""
    out = {}
    for key, value in info.items():
        for i, var in enumerate(variables):
            for stem in ("sparsity", "norm", "ratio"):
                suffix = f"{stem}/{var.path}"
                if key.endswith(suffix):
                    key = f"{key[:-len(suffix)]}{stem}/{i}"
                    break
            else:
                continue
            break
        out[key] = value
    return out


def run(make_rule, case: Case, optimizer: str = "sgd", resume_at: int | None = None) -> list[Step]:
    import keras

    model, step = _setup(make_rule, case, optimizer)
    out = []
    for i, grads in enumerate(case.grads):
        if i == resume_at:
            model, step = _resume(model)
        step([_tensor(g, case.dtype) for g in grads])
        opt = model.optimizer
        params = [_np(v.value, ref) for v, ref in zip(model.ps, case.params)]
        updates = None if opt.rule.on_update else [_np(s.value, ref) for s, ref in zip(opt.inner_optimizer.seen, case.params)]
        info = _positional({k: float(keras.ops.convert_to_numpy(v)) for k, v in opt.info.items()}, model.ps)
        state = [np.asarray(keras.ops.convert_to_numpy(v.value)) for v in opt.gradclip_state]
        masks = [x for x in state if x.dtype == np.bool_]  # pruning masks, depth first (as reference.masks_of)
        seen = {id(s) for s in opt.inner_optimizer.seen}
        opt_state = [np.asarray(keras.ops.convert_to_numpy(v.value)) for v in opt.inner_optimizer.variables
                     if id(v) not in seen]
        out.append(Step(params, info, updates, masks, state, opt_state))
    return out
