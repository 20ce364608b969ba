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

import contextlib
import logging
from typing import Any, Callable, Iterator

import keras
import numpy as np
from keras import ops, tree

import gradclip_core as gc

from ._backend import backend, prepare_namespaces, rule_scope, to_tensor
from ._registry import serializable

__all__ = ["PerExampleModel", "clip_per_example"]

INFO_PREFIX = "per_example/"
_SEED_MIX = 0x9E3779B9  # odd: example i's seed is seed + i * _SEED_MIX (mod the seed dtype), distinct for every i


def _unpack(data: Any) -> tuple[Any, Any, Any]:
    return keras.utils.unpack_x_y_sample_weight(data)


def _batch_of_one(example: Any) -> Any:
    return None if example is None else tree.map_structure(lambda a: ops.expand_dims(a, 0), example)


@contextlib.contextmanager
def _torch_vmap_memory_format() -> Iterator[None]:
    """Keras' torch convolutions without their channels-last memory hint, inside ``torch.func.vmap``.

    Keras' torch ``conv`` copies its NCHW-permuted input to ``torch.channels_last`` memory
    (a speed hint, the numbers are the same); ``vmap`` cannot clone into that format
    ("NYI: Tensor.clone(memory_format) inside vmap"), so any ``Conv2D`` with more than one
    input channel failed. The hint is off for the duration of the per-example map only.
    """
    try:
        from keras.src.backend.torch import nn as torch_nn
    except ImportError:  # another Keras layout: nothing to switch off
        yield
        return
    hint = getattr(torch_nn, "_maybe_convert_to_channels_last", None)
    if hint is None:
        yield
        return
    torch_nn._maybe_convert_to_channels_last = lambda tensor: tensor
    try:
        yield
    finally:
        torch_nn._maybe_convert_to_channels_last = hint


class _DropWhileLoopNotice(logging.Filter):
    """Drops ``tf.vectorized_map``'s notices that it falls back to a ``while_loop`` for an op.

    "Conv2DBackpropFilter uses a while_loop. Fix that!" (a TODO of TensorFlow's, printed
    for every convolution of every traced step) and "Using a while_loop for converting
    <op>": the fallback is expected and exact. Other TensorFlow messages pass.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("Using a while_loop for converting") or message.endswith("uses a while_loop. Fix that!"))


@contextlib.contextmanager
def _quiet_tf_while_loop_fallback() -> Iterator[None]:
    import tensorflow as tf

    logger = tf.get_logger()
    notice = _DropWhileLoopNotice()
    logger.addFilter(notice)
    try:
        yield
    finally:
        logger.removeFilter(notice)


def _vmap_grad(fn: Callable, tv: list, batch: Any) -> tuple[list, Any]:
    """``(grads, aux)`` of ``fn(tv, example) -> (loss, aux)`` for every example of ``batch``, batched."""
    name = backend()
    if name == "jax":
        import jax

        return jax.vmap(jax.grad(fn, has_aux=True), in_axes=(None, 0))(tv, batch)
    if name == "torch":
        import torch.func

        with _torch_vmap_memory_format():
            return torch.func.vmap(torch.func.grad(fn, has_aux=True), in_dims=(None, 0), randomness="different")(tv, batch)
    if name == "tensorflow":
        import tensorflow as tf

        def one(example: Any) -> tuple[list, Any]:
            with tf.GradientTape() as tape:
                tape.watch(tv)
                loss, aux = fn(tv, example)
            return tape.gradient(loss, tv, unconnected_gradients=tf.UnconnectedGradients.ZERO), aux

        with _quiet_tf_while_loop_fallback():
            return tf.vectorized_map(one, batch, fallback_to_while_loop=True)
    raise ValueError(f"PerExampleModel supports the jax, torch and tensorflow backends, not {name!r}")


def _layers(model: keras.Model) -> list:
    """Every layer inside ``model`` (nested models included)."""
    flatten = getattr(model, "_flatten_layers", None)
    if flatten is not None:
        return list(flatten(include_self=False, recursive=True))
    out, todo = [], list(getattr(model, "layers", []))
    while todo:
        layer = todo.pop(0)
        out.append(layer)
        todo.extend(getattr(layer, "layers", []))
    return out


def _check_per_example_layers(model: keras.Model) -> None:
    """Refuse layers that mix the examples of a batch in training (``BatchNormalization``).

    A trainable ``BatchNormalization`` normalises each example with the statistics of the
    batch; computed one example at a time it normalises every example to zero, so the
    model trained to chance without an error. A frozen one (``trainable=False``) runs in
    inference mode in Keras 3, with its moving statistics: per example, allowed.
    """
    for layer in _layers(model):
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable:
            raise ValueError(
                f"PerExampleModel: layer {layer.name!r} (BatchNormalization) normalises each example with the "
                "statistics of the whole batch, so per-example gradients cannot be computed (the model would "
                "train to chance); use GroupNormalization or LayerNormalization, or freeze it "
                f"({layer.name}.trainable = False runs it in inference mode, with its moving statistics)"
            )


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

    Randomness: each example draws its own dropout mask (and other layer noise), as in a
    batch; the seed generators then advance as in a plain ``fit``.

    Limits: layers must not mix examples: a trainable ``BatchNormalization`` is refused
    with a ``ValueError`` naming it (use ``GroupNormalization`` / ``LayerNormalization``,
    or freeze it: ``trainable = False`` runs it with its moving statistics); other
    updates of non-trainable variables are taken from the first example; loss scaling
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
      ValueError: arguments :func:`gradclip_core.clip_per_example` refuses, a
        ``seed`` that is not an int, or a trainable ``BatchNormalization`` in ``model``.

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
        _check_per_example_layers(model)
        prepare_namespaces()
        super().__init__(name=name, **kwargs)
        self.model = model
        self.max_norm = max_norm
        if model.built:
            self.built = True

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        return self.model(inputs, training=training)

    # ------------------------------------------------------------ per-example part

    def _seed_positions(self) -> list[int]:
        """Positions of the ``SeedGenerator`` states among the non-trainable variables (Dropout, noise layers)."""
        return [
            i for i, v in enumerate(self.non_trainable_variables)
            if v.name == "seed_generator_state" and tuple(v.shape) == (2,)
        ]

    def _example_fn(self, ntv: list, mv: list, seeds: list[int]) -> Callable:
        """``fn(tv, (x, y, sw, index)) -> (loss, (loss, y_pred, ntv))`` for ONE example (no batch axis).

        With ``seeds`` (JAX, TensorFlow), example ``index`` draws its random numbers from
        the seed states ``[seed + index * _SEED_MIX, counter]``: one dropout mask per
        example, as a batch draws one per row (torch's ``vmap(randomness="different")``
        does that by itself). Example 0 keeps the seeds, so the states after the step (taken
        from example 0) advance exactly as in a plain model.
        """

        def fn(tv: list, example: tuple) -> tuple[Any, tuple]:
            example_ntv = ntv
            if seeds:
                example, index = example[:-1], example[-1]
                example_ntv = list(ntv)
                for i in seeds:
                    state = ntv[i]
                    offset = ops.cast(index, state.dtype) * ops.cast(_SEED_MIX, state.dtype)
                    example_ntv[i] = state + ops.stack([offset, ops.zeros_like(offset)])
            x, y, sw = (_batch_of_one(e) for e in example + (None,) * (3 - len(example)))
            y_pred, new_ntv, losses = self.stateless_call(tv, example_ntv, x, training=True, return_losses=True)
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
        seeds = self._seed_positions() if backend() in ("jax", "tensorflow") else []
        if seeds:
            size = ops.shape(tree.flatten(batch[0])[0])[0]
            batch = batch + (ops.arange(size, dtype="int32"),)
        grads, (losses, y_pred, new_ntv) = _vmap_grad(self._example_fn(ntv, mv, seeds), list(tv), batch)
        with rule_scope():
            grads, info = gc.clip_per_example(list(grads), self.max_norm, counter=counter, **self._options)
        new_ntv = [v[0] for v in new_ntv]
        return grads, ops.mean(losses), y_pred, new_ntv, {INFO_PREFIX + k: v for k, v in info.items()}

    # ----------------------------------------------------------------- train steps

    def train_step(self, *args: Any) -> Any:
        """Keras' train step with per-example clipping (``(state, data)`` on JAX, ``(data)`` elsewhere)."""
        _check_per_example_layers(self.model)  # again: a layer may have been unfrozen since
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
