"""``gradclip_keras.PerExampleModel``: DP-SGD training (per-example clipping + noise) in ``model.fit``.

Per-example gradients are backend-specific; everything else is shared. One example's
loss is a pure function of the variable values (``stateless_call`` +
``stateless_compute_loss``, a batch of one), and each backend maps its gradient over the
batch: ``jax.vmap(jax.grad)`` on JAX, ``torch.func.vmap(torch.func.grad)`` on torch,
``tf.vectorized_map`` over a ``GradientTape`` on TensorFlow (which falls back to a
``while_loop`` where it cannot vectorize). :func:`gradclip_core.clip_per_example` then
clips, sums, adds noise and averages, and the optimizer applies the result.
"""

from __future__ import annotations

from typing import Any, Callable

import keras
import numpy as np
from keras import ops, tree

import gradclip_core as gc

from ._backend import backend, rule_scope, to_tensor
from ._registry import serializable

__all__ = ["PerExampleModel", "clip_per_example"]

INFO_PREFIX = "per_example/"


def _unpack(data: Any) -> tuple[Any, Any, Any]:
    return keras.utils.unpack_x_y_sample_weight(data)


def _batch_of_one(example: Any) -> Any:
    return None if example is None else tree.map_structure(lambda a: ops.expand_dims(a, 0), example)


def _vmap_grad(fn: Callable, tv: list, batch: Any) -> tuple[list, Any]:
    """``(grads, aux)`` of ``fn(tv, example) -> (loss, aux)`` for every example of ``batch``, batched."""
    name = backend()
    if name == "jax":
        import jax

        return jax.vmap(jax.grad(fn, has_aux=True), in_axes=(None, 0))(tv, batch)
    if name == "torch":
        import torch.func

        return torch.func.vmap(torch.func.grad(fn, has_aux=True), in_dims=(None, 0), randomness="different")(tv, batch)
    if name == "tensorflow":
        import tensorflow as tf

        def one(example: Any) -> tuple[list, Any]:
            with tf.GradientTape() as tape:
                tape.watch(tv)
                loss, aux = fn(tv, example)
            return tape.gradient(loss, tv, unconnected_gradients=tf.UnconnectedGradients.ZERO), aux

        return tf.vectorized_map(one, batch, fallback_to_while_loop=True)
    raise ValueError(f"PerExampleModel supports the jax, torch and tensorflow backends, not {name!r}")


@serializable("PerExampleModel")
class PerExampleModel(keras.Model):
    """A Keras model trained with per-example (DP-SGD) clipping: wrap, compile, ``fit``.

    Its ``train_step`` computes one gradient per example (a batch of one each, mapped
    over the batch with the backend's vectorizing map), hands them to
    :func:`gradclip_core.clip_per_example` (each example's global norm clipped to
    ``max_norm``, summed, Gaussian noise of std ``noise_multiplier * max_norm`` added to
    the sum, divided by the batch size: Opacus' convention) and applies the result with
    the compiled optimizer (any Keras optimizer, ``gradclip_keras.Optimizer`` included).
    Calling the model, ``evaluate`` and ``predict`` run the wrapped model unchanged.

    The noise is the core's counter-based noise keyed by ``(seed, optimizer.iterations)``:
    the same in every backend and framework, and a reloaded checkpoint continues with
    the noise an uninterrupted run would have drawn. It is not a cryptographic RNG.

    The per-example clip's info (``clipped_fraction``, ``norm_mean``, ``norm_max``) is in
    ``fit``'s logs as ``"per_example/<key>"``. The logged loss is the mean per-example loss.

    Limits: layers must not mix examples (no ``BatchNormalization`` in training; use
    ``GroupNormalization`` / ``LayerNormalization``), updates of non-trainable
    variables (e.g. seed generators) are taken from the first example, and loss scaling
    (``LossScaleOptimizer``) is not applied.

    Args:
      model: the Keras model to train (built: give it an ``Input``).
      max_norm: the clip norm ``C`` of each example's gradient.
      noise_multiplier: ``sigma``; 0 for clipping only (then ``seed`` may be omitted).
      seed: the noise seed (an int); required when ``noise_multiplier`` is not 0.
      batch_size: divisor of ``reduction="mean"`` (default: each batch's size).
      reduction: ``"mean"`` (DP-SGD) or ``"sum"``.
      semantics: ``None``, ``"opacus"`` or ``"optax"``: the clip factor formula.
      name: optional name.

    Raises:
      ValueError: arguments :func:`gradclip_core.clip_per_example` refuses, or a
        ``seed`` that is not an int.

    Example:
      >>> import numpy as np, keras
      >>> import gradclip_keras
      >>> inner = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
      >>> model = gradclip_keras.PerExampleModel(inner, max_norm=1.0, noise_multiplier=0.5, seed=0)
      >>> model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
      >>> logs = model.fit(np.ones((8, 3)), np.full((8, 1), 10.0), verbose=0).history
      >>> logs["per_example/clipped_fraction"]
      [1.0]
    """

    def __init__(
        self,
        model: keras.Model,
        max_norm: Any,
        *,
        noise_multiplier: Any = 0.0,
        seed: int | None = None,
        batch_size: Any = None,
        reduction: str = "mean",
        semantics: str | None = None,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(model, dict):
            model = keras.saving.deserialize_keras_object(model)
        if not isinstance(model, keras.Model):
            raise ValueError(f"model must be a keras.Model, got {type(model).__name__}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed must be an int, got {seed!r}")
        self._options = dict(
            noise_multiplier=noise_multiplier, seed=seed, batch_size=batch_size, reduction=reduction, semantics=semantics
        )
        gc.clip_per_example([np.zeros((1, 1), np.float32)], max_norm, **self._options)  # check the arguments now
        super().__init__(name=name, **kwargs)
        self.model = model
        self.max_norm = max_norm
        if model.built:
            self.built = True

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        return self.model(inputs, training=training)

    # ------------------------------------------------------------ per-example part

    def _example_fn(self, ntv: list, mv: list) -> Callable:
        """``fn(tv, (x, y, sw)) -> (loss, (loss, y_pred, ntv))`` for ONE example (no batch axis)."""

        def fn(tv: list, example: tuple) -> tuple[Any, tuple]:
            x, y, sw = (_batch_of_one(e) for e in example + (None,) * (3 - len(example)))
            y_pred, new_ntv, losses = self.stateless_call(tv, ntv, x, training=True, return_losses=True)
            if losses:
                self._losses_override = losses
            loss, _ = self.stateless_compute_loss(tv, new_ntv, mv, x=x, y=y, y_pred=y_pred, sample_weight=sw)
            if losses:
                self._losses_override = []
            y_pred = tree.map_structure(lambda a: a[0], y_pred)
            return loss, (loss, y_pred, new_ntv)

        return fn

    def _clipped_grads(self, tv: list, ntv: list, mv: list, data: Any, counter: Any) -> tuple:
        """Per-example grads -> ``(clipped grads, mean loss, y_pred, new ntv, logs)``."""
        batch = tuple(_unpack(data))
        while batch and batch[-1] is None:  # no None in what the maps split (y, sample_weight optional)
            batch = batch[:-1]
        if any(e is None for e in batch):
            raise ValueError("PerExampleModel: sample_weight without targets y is not supported")
        grads, (losses, y_pred, new_ntv) = _vmap_grad(self._example_fn(ntv, mv), list(tv), batch)
        with rule_scope():
            grads, info = gc.clip_per_example(list(grads), self.max_norm, counter=counter, **self._options)
        new_ntv = [v[0] for v in new_ntv]
        return grads, ops.mean(losses), y_pred, new_ntv, {INFO_PREFIX + k: v for k, v in info.items()}

    # ----------------------------------------------------------------- train steps

    def train_step(self, *args: Any) -> Any:
        """Keras' train step with per-example clipping (``(state, data)`` on JAX, ``(data)`` elsewhere)."""
        if backend() == "jax":
            return self._stateless_train_step(*args)
        return self._stateful_train_step(*args)

    def _stateless_train_step(self, state: tuple, data: Any) -> tuple[dict, tuple]:
        tv, ntv, ov, mv = state
        counter = ov[self._iterations_index()]
        grads, loss, y_pred, ntv, info = self._clipped_grads(tv, ntv, mv, data, counter)
        tv, ov = self.optimizer.stateless_apply(ov, grads, tv)
        x, y, sw = _unpack(data)
        logs, mv = self._update_metrics_variables(mv, loss, x, y, y_pred, sw)
        return {**logs, **info}, (tv, ntv, ov, mv)

    def _iterations_index(self) -> int:
        it = self.optimizer.iterations
        for i, v in enumerate(self.optimizer.variables):
            if v is it:
                return i
        raise ValueError("the optimizer's iterations variable is not among its variables")

    def _stateful_train_step(self, data: Any) -> dict:
        values = lambda vs: [to_tensor(v) for v in vs]  # noqa: E731
        tv, ntv, mv = values(self.trainable_variables), values(self.non_trainable_variables), values(self.metrics_variables)
        if backend() == "torch":
            tv = [t.detach() for t in tv]
        grads, loss, y_pred, new_ntv, info = self._clipped_grads(tv, ntv, mv, data, to_tensor(self.optimizer.iterations))
        for var, value in zip(self.non_trainable_variables, new_ntv):
            var.assign(value)
        with rule_scope():
            self.optimizer.apply(grads, self.trainable_variables)
        x, y, sw = _unpack(data)
        self._loss_tracker.update_state(loss, sample_weight=ops.shape(tree.flatten(x)[0])[0])
        return {**self.compute_metrics(x, y, y_pred, sample_weight=sw), **info}

    # ---------------------------------------------------------------------- config

    def get_config(self) -> dict:
        """The wrapped model (serialized), ``max_norm`` and the clip options."""
        return {
            "name": self.name,
            "model": keras.saving.serialize_keras_object(self.model),
            "max_norm": self.max_norm,
            **self._options,
        }


def clip_per_example(model: keras.Model, max_norm: Any, **options: Any) -> PerExampleModel:
    """DP-SGD training for ``model.fit``: ``model`` wrapped in a :class:`PerExampleModel`.

    The Keras form of ``gradclip_torch.clip_per_example`` / ``gradclip_optax.clip_per_example``:
    each example's gradient is clipped to ``max_norm`` (global norm over all weights) by
    :func:`gradclip_core.clip_per_example`, summed, noised and averaged inside the
    compiled train step.

    Args:
      model: the Keras model (no layer may mix examples, e.g. no ``BatchNormalization``).
      max_norm: the clip norm ``C``.
      **options: ``noise_multiplier``, ``seed``, ``batch_size``, ``reduction``,
        ``semantics``, ``name`` (see :class:`PerExampleModel`).

    Returns:
      The wrapped model; ``compile`` and ``fit`` it as usual.

    Example:
      >>> import keras
      >>> import gradclip_keras
      >>> inner = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
      >>> type(gradclip_keras.clip_per_example(inner, 1.0)).__name__
      'PerExampleModel'
    """
    return PerExampleModel(model, max_norm, **options)
