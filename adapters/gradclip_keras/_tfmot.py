"""tfmot's pruning API for Keras 3, on every Keras backend: ``prune_low_magnitude`` and friends.

tensorflow-model-optimization (tfmot) prunes Keras 2 (``tf_keras``) models only. This
module gives its users the same workflow in Keras 3, on TensorFlow, JAX and torch, with
the core's rules doing the pruning::

    model = gradclip_keras.prune_low_magnitude(model, pruning_schedule=gradclip_keras.PolynomialDecay(
        initial_sparsity=0.0, final_sparsity=0.8, begin_step=0, end_step=1000))
    model.compile(...)
    model.fit(..., callbacks=[gradclip_keras.UpdatePruningStep()])
    model = gradclip_keras.strip_pruning(model)

Semantics (tfmot 0.8.0, ``tensorflow_model_optimization/python/core/sparsity/keras``):

- A :class:`PruneLowMagnitude` wrapper holds, as non-trainable variables of the model
  (saved with it), one bool keep-mask and one threshold per pruned weight and the
  ``pruning_step``. In each training call it advances the step and, on the schedule's
  steps, recomputes the masks from the current weights: inside the compiled train step
  (``lax.cond`` on JAX, ``tf.cond`` on TensorFlow, a branch on torch), never eagerly.
  Between those steps the stored masks are applied.
- The pruning step of a train step is ``optimizer.iterations + 1`` (tfmot >= 0.5.1: its
  wrapper increments the step before it prunes, so the first batch is step 1):
  :class:`UpdatePruningStep` sets the wrappers' ``pruning_step`` to
  ``optimizer.iterations`` when ``fit`` starts, and each train step advances it, so it
  follows the optimizer with ``steps_per_execution > 1`` too.
- Counts are tfmot's: ``kept = max(1, round_half_even(float32(n) * (1 - sparsity)))``
  per weight (the core's ``rounding="tfmot"``); the polynomial target is tfmot's formula
  in float32 (``(1 - p) ** power`` by repeated products, within an ulp of ``tf.pow``).
- Only the weights that matter are pruned (tfmot's ``PruneRegistry``: kernels, not
  biases; a layer may say which with ``get_prunable_weights()``).

Differences (see the README's migration section): the layer computes with
``where(mask, w, 0)`` rather than first writing ``w * mask`` into the kernel, so pruned
weights get no gradient on every backend (tfmot's TensorFlow graph lets them move for a
step, then zeroes them again) and the stored kernel is zeroed by
:class:`UpdatePruningStep` at each epoch end and by :func:`strip_pruning`; masks are
monotone (a pruned weight is never revived; tfmot recomputes from the re-masked weights,
which in practice revives none either); ties go by flat index (tfmot keeps every weight
equal to its threshold); block pooling windows start at the first element; N:M groups
with equal ``|w|`` keep the later ones.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import keras
import numpy as np
from keras import ops

import gradclip_core as gc

from ._backend import backend, prepare_namespaces, rule_scope, variable_names
from ._callback import _sync
from ._registry import serializable

__all__ = [
    "PruningSchedule",
    "ConstantSparsity",
    "PolynomialDecay",
    "PruneLowMagnitude",
    "prune_low_magnitude",
    "strip_pruning",
    "UpdatePruningStep",
    "PruningSummaries",
    "collect_prunable_layers",
    "prune_scope",
]

_FIRST_STEP = 1  # tfmot >= 0.5.1: the first training batch is pruning step 1


def _check_sparsity(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name} must be in range [0,1), got {value!r}")
    return float(value)


def _check_steps(begin_step: Any, end_step: Any, frequency: Any, allow_forever: bool) -> None:
    """tfmot's ``PruningSchedule._validate_step``."""
    for name, v in (("begin_step", begin_step), ("end_step", end_step), ("frequency", frequency)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ValueError(f"{name} must be an int, got {v!r}")
    if begin_step < 0:
        raise ValueError("begin_step should be >= 0")
    if not allow_forever and end_step == -1:
        raise ValueError("end_step cannot be -1.")
    if end_step != -1:
        if end_step < 0:
            raise ValueError("end_step can be -1 or >= 0")
        if end_step < begin_step:
            raise ValueError("begin_step should be <= end_step if end_step != -1")
    if frequency <= 0:
        raise ValueError("frequency should be > 0")


class PruningSchedule:
    """When masks are recomputed and at which sparsity: tfmot's ``PruningSchedule``, as a core schedule.

    Subclasses give :meth:`schedule` (a :class:`gradclip_core.Schedule` counting steps as
    tfmot does) and :attr:`final_sparsity`. Calling a schedule with a step (tfmot's
    ``should_prune, sparsity = schedule(step)``) evaluates it in NumPy.
    """

    final_sparsity: float

    def schedule(self) -> gc.Schedule:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, step: int) -> tuple[bool, float]:
        """``(should_prune, sparsity)`` at tfmot's pruning step ``step`` (the first batch is step 1)."""
        from gradclip_core.backend import namespace

        sch = self.schedule()
        t = np.asarray(step - sch.first_step, dtype=np.int32)
        xp = namespace(t)
        return bool(sch.active(xp, t)), float(np.float32(sch.target(xp, t, self.final_sparsity)))

    def get_config(self) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def from_config(cls, config: Mapping) -> "PruningSchedule":
        return cls(**config)

    def __eq__(self, other: Any) -> bool:
        return type(other) is type(self) and other.get_config() == self.get_config()

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


@serializable("ConstantSparsity")
class ConstantSparsity(PruningSchedule):
    """tfmot's ``ConstantSparsity``: prune to ``target_sparsity`` every ``frequency`` steps in ``[begin_step, end_step]``.

    Masks are recomputed at the pruning steps ``begin_step + i * frequency`` (``>= 1``:
    the first batch is step 1), up to ``end_step`` (``-1``: to the end of training).

    Args:
      target_sparsity: the fraction of each weight pruned, in ``[0, 1)``.
      begin_step: step at which to begin pruning.
      end_step: step at which to end pruning (``-1``: never end).
      frequency: recompute the masks every ``frequency`` steps.

    Example:
      >>> import gradclip_keras
      >>> s = gradclip_keras.ConstantSparsity(0.5, begin_step=0, frequency=100)
      >>> s(100), s(150)
      ((True, 0.5), (False, 0.5))
      >>> s.schedule()  # the core schedule it runs
      Schedule(kind='constant', begin_step=0, end_step=-1, frequency=100, initial_sparsity=0.0, power=3, first_step=1)
    """

    def __init__(self, target_sparsity: float, begin_step: int, end_step: int = -1, frequency: int = 100) -> None:
        _check_steps(begin_step, end_step, frequency, True)
        self.target_sparsity = _check_sparsity("target_sparsity", target_sparsity)
        self.begin_step, self.end_step, self.frequency = int(begin_step), int(end_step), int(frequency)

    @property
    def final_sparsity(self) -> float:  # type: ignore[override]
        return self.target_sparsity

    def schedule(self) -> gc.Schedule:
        return gc.constant_schedule(self.begin_step, self.end_step, self.frequency, first_step=_FIRST_STEP)

    def get_config(self) -> dict:
        return {"target_sparsity": self.target_sparsity, "begin_step": self.begin_step, "end_step": self.end_step,
                "frequency": self.frequency}


@serializable("PolynomialDecay")
class PolynomialDecay(PruningSchedule):
    """tfmot's ``PolynomialDecay``: gradual pruning (Zhu & Gupta 2017) from ``initial_sparsity`` to ``final_sparsity``.

    At the pruning steps ``begin_step + i * frequency <= end_step`` the target is::

        final + (initial - final) * (1 - (step - begin_step) / (end_step - begin_step)) ** power

    (float32, as tfmot computes it). The final sparsity comes at step ``end_step``, i.e.
    after ``end_step`` batches when ``end_step - begin_step`` is a multiple of ``frequency``.

    Args:
      initial_sparsity: the sparsity at ``begin_step``, in ``[0, 1)``.
      final_sparsity: the sparsity at ``end_step``, in ``[0, 1)``.
      begin_step: step at which to begin pruning.
      end_step: step at which to end pruning (``> begin_step``).
      power: the exponent of the decay.
      frequency: recompute the masks every ``frequency`` steps.

    Example:
      >>> import gradclip_keras
      >>> s = gradclip_keras.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=40, frequency=10)
      >>> [(t, round(s(t)[1], 4)) for t in (10, 20, 40) if s(t)[0]]
      [(10, 0.4625), (20, 0.7), (40, 0.8)]
    """

    def __init__(self, initial_sparsity: float, final_sparsity: float, begin_step: int, end_step: int,
                 power: float = 3, frequency: int = 100) -> None:
        _check_steps(begin_step, end_step, frequency, False)
        if end_step == begin_step:
            raise ValueError("end_step must be > begin_step (the decay divides by end_step - begin_step)")
        self.initial_sparsity = _check_sparsity("initial_sparsity", initial_sparsity)
        self.final_sparsity = _check_sparsity("final_sparsity", final_sparsity)
        if isinstance(power, bool) or not isinstance(power, (int, float)) or not power > 0:
            raise ValueError(f"power must be a number > 0, got {power!r}")
        self.power = power
        self.begin_step, self.end_step, self.frequency = int(begin_step), int(end_step), int(frequency)

    def schedule(self) -> gc.Schedule:
        return gc.polynomial_schedule(self.begin_step, self.end_step, self.frequency, self.initial_sparsity, self.power,
                                      first_step=_FIRST_STEP)

    def get_config(self) -> dict:
        return {"initial_sparsity": self.initial_sparsity, "final_sparsity": self.final_sparsity, "power": self.power,
                "begin_step": self.begin_step, "end_step": self.end_step, "frequency": self.frequency}


def _schedule_from(value: Any) -> PruningSchedule:
    if isinstance(value, PruningSchedule):
        return value
    if isinstance(value, Mapping):
        obj = keras.saving.deserialize_keras_object(dict(value))
        if isinstance(obj, PruningSchedule):
            return obj
    raise ValueError(
        f"pruning_schedule must be a gradclip_keras.ConstantSparsity or gradclip_keras.PolynomialDecay, got {value!r}"
    )


def _two_ints(name: str, value: Any) -> tuple[int, int]:
    try:
        out = tuple(value)
    except TypeError:
        out = ()
    if len(out) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in out):
        raise ValueError(f"The {name} argument must be a tuple/list of 2 integers, received: {value!r}.")
    return int(out[0]), int(out[1])


# ------------------------------------------------------------------- which weights

_PRUNABLE: dict[str, tuple[str, ...]] = {
    **{name: ("kernel",) for name in ("Dense", "EinsumDense", "Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose",
                                      "Conv2DTranspose", "Conv3DTranspose")},
    "SeparableConv1D": ("pointwise_kernel",),
    "SeparableConv2D": ("pointwise_kernel",),
    "Embedding": ("embeddings",),
    "MultiHeadAttention": ("_query_dense.kernel", "_key_dense.kernel", "_value_dense.kernel", "_output_dense.kernel"),
    **{name: ("cell.kernel", "cell.recurrent_kernel") for name in ("SimpleRNN", "LSTM", "GRU")},
    # layers with weights that tfmot does not prune
    **{name: () for name in ("DepthwiseConv1D", "DepthwiseConv2D", "BatchNormalization", "LayerNormalization",
                             "GroupNormalization", "UnitNormalization", "RMSNormalization", "PReLU")},
}


def _registered(layer: Any) -> tuple[str, ...] | None:
    """The attribute paths of the weights tfmot's registry prunes in ``layer`` (``None``: unknown layer)."""
    cls = type(layer)
    if cls.__module__.startswith("keras.") and cls.__name__ in _PRUNABLE:
        return _PRUNABLE[cls.__name__]
    return None


def _resolve(layer: Any, path: str) -> Any:
    obj = layer
    *parents, leaf = path.split(".")
    for p in parents:
        obj = getattr(obj, p)
    for name in (f"_{leaf}", leaf):  # Dense.kernel is a property over _kernel (LoRA)
        v = getattr(obj, name, None)
        if isinstance(v, keras.Variable):
            return v
    raise ValueError(f"{type(layer).__name__}: no weight {path!r} to prune")


def supports(layer: Any) -> bool:
    """Whether :func:`prune_low_magnitude` knows which weights of ``layer`` to prune."""
    return _registered(layer) is not None or callable(getattr(layer, "get_prunable_weights", None))


def prunable_weights(layer: Any) -> list:
    """The weights of a built ``layer`` that pruning acts on: its ``get_prunable_weights()``, or tfmot's registry."""
    get = getattr(layer, "get_prunable_weights", None)
    if callable(get):
        return list(get())
    paths = _registered(layer)
    if paths is None:
        raise ValueError(
            f"prune_low_magnitude: layer {layer.name!r} ({type(layer).__name__}) is not supported: gradclip_keras knows "
            f"which weights to prune in Keras' Dense, EinsumDense, Conv*, SeparableConv*, Embedding, MultiHeadAttention, "
            f"SimpleRNN/LSTM/GRU (and prunes nothing in normalization and depthwise layers); give the layer a "
            f"get_prunable_weights() method returning its weights to prune, or leave it out (clone_model with a "
            f"clone_function that wraps the layers you choose)"
        )
    return [_resolve(layer, p) for p in paths]


# ------------------------------------------------------------------ the wrapper


class _Holder:
    """The wrapper's pruning variables and rule (kept out of Keras' attribute tracking)."""

    def __init__(self) -> None:
        self.weights: list = []
        self.masks: list = []
        self.thresholds: list = []
        self.step: Any = None
        self.names: list[str] = []
        self.rule: Any = None


def _raw(v: Any) -> Any:
    """The value of variable ``v`` without autocasting (the stateless scope's, when there is one)."""
    from keras.src.backend.common.stateless_scope import get_stateless_scope, in_stateless_scope

    if in_stateless_scope():
        value = get_stateless_scope().get_current_value(v)
        if value is not None:
            return value
    if backend() == "tensorflow":
        import tensorflow as tf

        return tf.convert_to_tensor(v._value) if v._value is not None else v.value
    return v._value if v._value is not None else v.value


class _Substitute:
    """Run a layer with some of its variables read as given tensors (``where(mask, w, 0)``).

    A ``keras.StatelessScope`` mapping those variables to the tensors; under an outer
    scope (the JAX trainer's ``stateless_call``) it also maps the layer's other variables
    to their values there, and on exit hands back whatever the layer assigned (a
    ``SeedGenerator`` state, a ``BatchNormalization`` statistic) and the losses it added.
    """

    def __init__(self, owner: Any, layer: Any, pairs: Sequence[tuple[Any, Any]]) -> None:
        from keras.src.backend.common.stateless_scope import get_stateless_scope, in_stateless_scope

        self.owner = owner
        self.layer = layer
        self.outer = get_stateless_scope() if in_stateless_scope() else None
        self.subs = {id(v) for v, _ in pairs}
        mapping = []
        if self.outer is not None:
            mapping = [(v, v.value) for v in layer.variables if id(v) not in self.subs]
        mapping += list(pairs)
        self.scope = keras.StatelessScope(state_mapping=mapping, collect_losses=True, initialize_variables=False)
        self.before = {id(v): self.scope.get_current_value(v) for v in layer.variables}

    def __enter__(self) -> "_Substitute":
        self.scope.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.scope.__exit__(*exc)
        if exc[0] is not None:
            return
        for v in self.layer.variables:
            if id(v) in self.subs:
                continue
            new = self.scope.get_current_value(v)
            if new is not None and new is not self.before.get(id(v)):
                v.assign(new)
        for loss in self.scope.losses:
            self.owner.add_loss(loss)


@serializable("PruneLowMagnitude")
class PruneLowMagnitude(keras.layers.Wrapper):
    """A Keras 3 layer wrapper that prunes the layer's weights during training (tfmot's ``PruneLowMagnitude``).

    Usually made by :func:`prune_low_magnitude`. The wrapper keeps, as non-trainable
    variables (saved with the model): ``pruning_masks`` (bool, one per pruned weight,
    ``True`` = kept), ``pruning_thresholds`` (float32: the smallest kept ``|w|`` at the
    last recomputation, 0 before the first) and ``pruning_step`` (int32: the train steps
    taken, i.e. ``optimizer.iterations`` when :class:`UpdatePruningStep` is used).

    In a training call (``training=True``) the step advances and, on the schedule's
    steps, :attr:`rule`'s ``project`` recomputes the masks from the weights, inside the
    compiled step; in every call the layer computes with ``where(mask, w, 0)``, so
    pruned weights take no part in the output and get no gradient.

    Args:
      layer: the Keras layer to prune (its weights: see :func:`prune_low_magnitude`).
      pruning_schedule: :class:`ConstantSparsity` (default ``ConstantSparsity(0.5, 0)``)
        or :class:`PolynomialDecay`.
      block_size: ``(rows, columns)`` of the blocks pruned whole in 2-D weights
        (``(1, 1)``: single weights).
      block_pooling_type: ``"AVG"`` or ``"MAX"``: a block's score is the mean / largest
        ``|w|`` in it.
      sparsity_m_by_n: ``(m, n)``: prune ``m`` of every ``n`` consecutive weights along the
        input-channel axis (2:4 is ``(2, 4)``), once, at the first training step (as
        tfmot does, whatever the schedule).
      **kwargs: passed to ``keras.layers.Layer`` (``name``...).
    """

    def __init__(self, layer: Any, pruning_schedule: Any = None, block_size: Any = (1, 1),
                 block_pooling_type: str = "AVG", sparsity_m_by_n: Any = None, **kwargs: Any) -> None:
        if not isinstance(layer, keras.layers.Layer):
            raise ValueError(f"Please initialize `Prune` layer with a `Layer` instance. You passed: {layer!r}")
        if block_pooling_type not in ("AVG", "MAX"):
            raise ValueError(f"Unsupported pooling type '{block_pooling_type}'. Should be 'AVG' or 'MAX'.")
        if not supports(layer):
            prunable_weights(layer)  # raises, naming the layer
        self.pruning_schedule = _schedule_from(ConstantSparsity(0.5, 0) if pruning_schedule is None else pruning_schedule)
        self.block_size = _two_ints("block_size", block_size)
        if min(self.block_size) < 1:
            raise ValueError(f"block_size must be two ints >= 1, got {block_size!r}")
        self.block_pooling_type = block_pooling_type
        self.sparsity_m_by_n = None if not sparsity_m_by_n else _two_ints("sparsity_m_by_n", sparsity_m_by_n)
        if self.sparsity_m_by_n is not None and not 0 < self.sparsity_m_by_n[0] < self.sparsity_m_by_n[1]:
            raise ValueError(f"sparsity_m_by_n=(m, n) needs 0 < m < n (m zeros in every n), got {sparsity_m_by_n!r}")
        kwargs.setdefault("name", f"prune_low_magnitude_{layer.name}")
        kwargs.pop("autocast", None)
        kwargs.setdefault("dtype", layer.dtype_policy)
        prepare_namespaces()
        # No autocast here: the masks are computed on the stored (float32) weights; the
        # wrapped layer casts them itself.
        super().__init__(layer, autocast=False, **kwargs)
        self._prune = _Holder()

    # ------------------------------------------------------------------ the rule

    @property
    def rule(self) -> gc.Rule:
        """The core rule this wrapper runs on its weights (the same rule runs in torch and optax).

        Its ``project`` is called once per training step with the state
        ``PruneState(count=pruning_step, masks)``; the schedule counts as tfmot does
        (``first_step=1``) and counts round as tfmot's (``rounding="tfmot"``).
        """
        return _rule(self.pruning_schedule, self.block_size, self.block_pooling_type, self.sparsity_m_by_n)

    @property
    def schedule(self) -> gc.Schedule:
        """The :class:`gradclip_core.Schedule` the rule recomputes its masks on."""
        if self.sparsity_m_by_n is not None:
            return gc.one_shot(1, first_step=_FIRST_STEP)
        return self.pruning_schedule.schedule()

    @property
    def pruned_weights(self) -> list:
        """The wrapped layer's weights this wrapper prunes."""
        return list(self._prune.weights)

    @property
    def pruning_masks(self) -> list:
        return list(self._prune.masks)

    @property
    def pruning_thresholds(self) -> list:
        return list(self._prune.thresholds)

    @property
    def pruning_step(self) -> Any:
        return self._prune.step

    @property
    def pruning_vars(self) -> list:
        """tfmot's ``(weight, mask, threshold)`` triples."""
        h = self._prune
        return list(zip(h.weights, h.masks, h.thresholds))

    # ------------------------------------------------------------------ build / call

    def build(self, input_shape: Any = None) -> None:
        if not self.layer.built:
            self.layer.build(input_shape)
            self.layer.built = True
        h = self._prune
        h.weights = prunable_weights(self.layer)
        for w in h.weights:
            if not isinstance(w, keras.Variable):
                raise ValueError(f"{self.name}: get_prunable_weights() must return Keras variables, got {type(w).__name__}")
            if self.block_size != (1, 1) and len(w.shape) != 2:
                raise ValueError("Block Sparsity can only be used for layers which have 2-dimensional weights.")
        h.names = variable_names(h.weights)
        for i, w in enumerate(h.weights):
            h.masks.append(self.add_weight(name=f"mask_{i}", shape=tuple(w.shape), dtype="bool", trainable=False,
                                           initializer=lambda shape, dtype=None: ops.ones(shape, dtype="bool")))
        for i in range(len(h.weights)):
            h.thresholds.append(self.add_weight(name=f"threshold_{i}", shape=(), dtype="float32", trainable=False,
                                                initializer="zeros"))
        h.step = self.add_weight(name="pruning_step", shape=(), dtype="int32", trainable=False, initializer="zeros")
        h.rule = self.rule
        self.built = True

    def _update_masks(self, weights: list, masks: list) -> list:
        """One pruning step on the weights (inside the train step): new masks, step and thresholds assigned."""
        h = self._prune
        rule = h.rule
        values = [ops.stop_gradient(w) for w in weights]
        step = h.step.value
        state = gc.PruneState(step, tuple(masks))
        with rule_scope(h.names):
            _, new_state, _ = rule.project(values, state)
            new_masks = [ops.convert_to_tensor(m) for m in new_state.masks]
            active = _active(self.schedule, step)
        old_thr = [t.value for t in h.thresholds]

        def smallest_kept() -> list:
            inf = float("inf")
            out = []
            for w, m in zip(values, new_masks):
                a = ops.abs(ops.cast(w, "float32"))
                out.append(ops.min(ops.where(m, a, ops.full_like(a, inf))) if len(w.shape) and int(np.prod(w.shape)) else
                           ops.zeros((), "float32"))
            return out

        thresholds = ops.cond(active, smallest_kept, lambda: old_thr) if weights else []
        h.step.assign(ops.cast(new_state.count, "int32"))
        for var, m in zip(h.masks, new_masks):
            var.assign(m)
        for var, t in zip(h.thresholds, thresholds):
            var.assign(ops.cast(t, "float32"))
        return new_masks

    def call(self, inputs: Any, training: Any = None, **kwargs: Any) -> Any:
        h = self._prune
        weights = [_raw(w) for w in h.weights]
        masks = [m.value for m in h.masks]
        if training and weights:
            masks = self._update_masks(weights, masks)
        pairs = [(w, ops.where(m, x, ops.zeros_like(x))) for w, m, x in zip(h.weights, masks, weights)]
        if self._call_takes_training():
            kwargs["training"] = training
        with _Substitute(self, self.layer, pairs):
            return self.layer(inputs, **kwargs)

    def _call_takes_training(self) -> bool:
        import inspect

        try:
            return "training" in inspect.signature(self.layer.call).parameters
        except (TypeError, ValueError):
            return False

    def compute_output_shape(self, input_shape: Any) -> Any:
        return self.layer.compute_output_shape(input_shape)

    def apply_masks(self) -> None:
        """Write ``where(mask, w, 0)`` into the stored weights (pruned weights exactly 0)."""
        for w, m in zip(self._prune.weights, self._prune.masks):
            value = _raw(w)
            w.assign(ops.where(m.value, value, ops.zeros_like(value)))

    # ------------------------------------------------------------------ config

    def get_config(self) -> dict:
        config = super().get_config()
        config.pop("autocast", None)
        config.update({
            "pruning_schedule": keras.saving.serialize_keras_object(self.pruning_schedule),
            "block_size": list(self.block_size),
            "block_pooling_type": self.block_pooling_type,
            "sparsity_m_by_n": None if self.sparsity_m_by_n is None else list(self.sparsity_m_by_n),
        })
        return config

    @classmethod
    def from_config(cls, config: Mapping, custom_objects: Any = None) -> "PruneLowMagnitude":
        config = dict(config)
        layer = keras.saving.deserialize_keras_object(config.pop("layer"), custom_objects=custom_objects)
        config["pruning_schedule"] = _schedule_from(config["pruning_schedule"])
        return cls(layer, **config)


def _active(schedule: gc.Schedule, step: Any) -> Any:
    """0-d bool tensor: the masks are recomputed at this train step."""
    from gradclip_core.backend import namespace

    return schedule.active(namespace(step), step)


def _rule(schedule: PruningSchedule, block_size: tuple, pooling: str, m_by_n: tuple | None) -> gc.Rule:
    if m_by_n is not None:
        m, n = m_by_n
        return gc.nm_prune(keep=n - m, group=n, axis=-2, schedule=gc.one_shot(1, first_step=_FIRST_STEP),
                           remainder="pad", params="all")
    sch = schedule.schedule()
    if tuple(block_size) != (1, 1):
        return gc.block_magnitude_prune(schedule.final_sparsity, tuple(block_size), pooling=pooling.lower(), schedule=sch,
                                        rounding="tfmot", params="all")
    return gc.magnitude_prune(schedule.final_sparsity, schedule=sch, rounding="tfmot", params="all")


# --------------------------------------------------------------- the functions


def collect_prunable_layers(model: Any) -> list:
    """Every :class:`PruneLowMagnitude` in ``model``, nested models included."""
    out = []
    for layer in getattr(model, "layers", []):
        if isinstance(layer, keras.Model):
            out += collect_prunable_layers(layer)
        if isinstance(layer, PruneLowMagnitude):
            out.append(layer)
    return out


def _is_graph_model(model: Any) -> bool:
    return isinstance(model, keras.Sequential) or type(model).__name__ == "Functional" or (
        isinstance(model, keras.Model) and hasattr(model, "_operations") and hasattr(model, "_inputs_struct"))


def prune_low_magnitude(
    to_prune: Any,
    pruning_schedule: Any = None,
    block_size: Any = (1, 1),
    block_pooling_type: str = "AVG",
    pruning_policy: Any = None,
    sparsity_m_by_n: Any = None,
    **kwargs: Any,
) -> Any:
    """Wrap a Keras 3 layer, list of layers or model so that its weights are pruned during training (tfmot's API).

    - a layer: returns ``PruneLowMagnitude(layer, ...)`` (``kwargs`` go to the wrapper);
    - a list of layers: a list with each wrapped (``InputLayer`` s and wrappers as they are);
    - a ``Sequential`` or functional model: a clone (``keras.models.clone_model``) whose
      layers with weights to prune are wrapped, **sharing the original layers and their
      weights** (load pretrained weights first, then prune). Layers without weights are
      kept as they are; normalization and depthwise layers too (nothing to prune). Nested
      models are pruned recursively. Subclassed models are refused, as in tfmot.

    Per-layer choices: as in tfmot's guide, ``keras.models.clone_model(model,
    clone_function=fn)`` with ``fn`` returning ``prune_low_magnitude(layer, ...)`` for the
    layers to prune (each with its own schedule) and ``layer`` for the others.

    Which weights: Keras' ``Dense``, ``EinsumDense``, ``Conv*`` (``kernel``),
    ``SeparableConv*`` (``pointwise_kernel``), ``Embedding`` (``embeddings``),
    ``MultiHeadAttention`` (the four projection kernels), ``SimpleRNN`` / ``LSTM`` / ``GRU``
    (``kernel``, ``recurrent_kernel``): tfmot's registry; never biases. A custom layer
    names its own with a ``get_prunable_weights()`` method; other layers with weights are
    refused (``ValueError``).

    Train with :class:`UpdatePruningStep` in ``fit``'s callbacks (it starts the pruning
    step at ``optimizer.iterations`` and zeroes the stored pruned weights at each epoch
    end), then :func:`strip_pruning`.

    Args:
      to_prune: a layer, a list of layers, or a ``Sequential`` / functional model.
      pruning_schedule: :class:`ConstantSparsity` (default ``ConstantSparsity(0.5, 0)``) or
        :class:`PolynomialDecay`.
      block_size: ``(rows, columns)``: prune whole blocks of 2-D weights (tfmot's block sparsity).
      block_pooling_type: ``"AVG"`` or ``"MAX"``.
      pruning_policy: optional object with ``allow_pruning(layer) -> bool`` and
        ``ensure_model_supports_pruning(model)`` (tfmot's ``PruningPolicy`` protocol).
      sparsity_m_by_n: ``(m, n)`` for m-of-n sparsity (``(2, 4)``), along the input channels.
      **kwargs: keyword arguments of the wrapper, for a single layer.

    Returns:
      The wrapped layer, list of layers, or model (not compiled).

    Example:
      >>> import numpy as np, keras, gradclip_keras
      >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(1)])
      >>> pruned = gradclip_keras.prune_low_magnitude(model, pruning_schedule=gradclip_keras.ConstantSparsity(0.75, 0, frequency=2))
      >>> [type(layer).__name__ for layer in pruned.layers]
      ['PruneLowMagnitude', 'PruneLowMagnitude']
      >>> pruned.compile(optimizer="sgd", loss="mse")
      >>> x = np.random.default_rng(0).normal(size=(32, 8)).astype("float32")
      >>> _ = pruned.fit(x, x[:, :1], batch_size=8, epochs=1, verbose=0, callbacks=[gradclip_keras.UpdatePruningStep()])
      >>> stripped = gradclip_keras.strip_pruning(pruned)
      >>> float((keras.ops.convert_to_numpy(stripped.layers[0].kernel) == 0).mean())
      0.75
    """
    params = dict(pruning_schedule=pruning_schedule, block_size=block_size, block_pooling_type=block_pooling_type,
                  sparsity_m_by_n=sparsity_m_by_n)

    def wrap_for_model(layer: Any) -> Any:
        if isinstance(layer, keras.Model):
            return prune_low_magnitude(layer, pruning_policy=pruning_policy, **params)
        if isinstance(layer, (PruneLowMagnitude, keras.layers.InputLayer)):
            return layer
        if pruning_policy is not None and not pruning_policy.allow_pruning(layer):
            return layer
        if not supports(layer):
            if not layer.weights:
                return layer  # nothing to prune (Flatten, Dropout, pooling, activations...)
            prunable_weights(layer)  # raises with the fix
        if layer.built and not prunable_weights(layer):
            return layer  # normalization, depthwise: nothing tfmot prunes
        return PruneLowMagnitude(layer, **params)

    if isinstance(to_prune, list):
        return [layer if isinstance(layer, (PruneLowMagnitude, keras.layers.InputLayer)) else PruneLowMagnitude(layer, **params)
                for layer in to_prune]
    if isinstance(to_prune, keras.Model):
        if not _is_graph_model(to_prune):
            raise ValueError("Subclassed models are not supported currently.")
        if pruning_policy is not None:
            pruning_policy.ensure_model_supports_pruning(to_prune)
        return keras.models.clone_model(to_prune, clone_function=wrap_for_model)
    if isinstance(to_prune, keras.layers.Layer):
        return PruneLowMagnitude(to_prune, **params, **kwargs)
    raise ValueError(
        "`prune_low_magnitude` can only prune an object of the following types: keras.models.Sequential, keras "
        f"functional model, keras.layers.Layer, list of keras.layers.Layer. You passed an object of type: "
        f"{type(to_prune).__name__}."
    )


def strip_pruning(model: Any) -> Any:
    """Remove the pruning wrappers: a model with the original layers, its pruned weights exactly 0 (tfmot's API).

    Writes ``where(mask, w, 0)`` into every pruned weight, then returns
    ``keras.models.clone_model(model, clone_function=...)`` with each
    :class:`PruneLowMagnitude` replaced by the layer it wraps (the same layer objects,
    sharing their weights, as in tfmot). The result holds only Keras' own layers: it
    saves and loads without ``gradclip_keras``.

    Args:
      model: a ``Sequential`` or functional ``keras.Model`` with pruning wrappers.

    Returns:
      The stripped model (not compiled).
    """
    if not isinstance(model, keras.Model):
        raise ValueError(f"Expected model to be a `keras.Model` instance but got: {model!r}")
    if not _is_graph_model(model):
        raise ValueError("strip_pruning: subclassed models are not supported (Sequential or functional models only)")
    _sync(model)
    for layer in collect_prunable_layers(model):
        if layer.built:
            layer.apply_masks()

    def unwrap(layer: Any) -> Any:
        if isinstance(layer, keras.Model) and _is_graph_model(layer):
            return keras.models.clone_model(layer, clone_function=unwrap)
        if isinstance(layer, PruneLowMagnitude):
            return layer.layer
        return layer

    return keras.models.clone_model(model, clone_function=unwrap)


def prune_scope() -> Any:
    """tfmot's ``prune_scope()``: a custom-object scope with the pruning classes (not needed: they are registered)."""
    return keras.saving.custom_object_scope({"PruneLowMagnitude": PruneLowMagnitude, "ConstantSparsity": ConstantSparsity,
                                             "PolynomialDecay": PolynomialDecay})


# ------------------------------------------------------------------ callbacks


def _iterations(model: Any) -> int | None:
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        return None
    return int(ops.convert_to_numpy(optimizer.iterations))


class UpdatePruningStep(keras.callbacks.Callback):
    """tfmot's ``UpdatePruningStep``: the pruning step follows ``optimizer.iterations``; pruned weights saved as 0.

    At the start of ``fit`` every :class:`PruneLowMagnitude` of the model gets
    ``pruning_step = optimizer.iterations`` (a resumed model continues its schedule where
    the optimizer is; each train step then advances it inside the compiled step, so
    ``steps_per_execution > 1`` counts every step). At each epoch end the stored pruned
    weights are set to exactly 0, so a checkpoint written then holds sparse weights. It
    does nothing per batch (no host round trip: on JAX the train state is not synced).

    Example:
      >>> import gradclip_keras
      >>> gradclip_keras.UpdatePruningStep().prunable_layers
      []
    """

    def __init__(self) -> None:
        super().__init__()
        self.prunable_layers: list = []

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.prunable_layers = collect_prunable_layers(self.model)
        if not self.prunable_layers:
            return
        _sync(self.model)
        iterations = _iterations(self.model)
        if iterations is None:
            return
        for layer in self.prunable_layers:
            if layer.built:
                layer.pruning_step.assign(np.int32(iterations))

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        _sync(self.model)
        for layer in self.prunable_layers:
            if layer.built:
                layer.apply_masks()


def _summary_name(layer: Any, weight: Any) -> str:
    return re.sub(r"[^A-Za-z0-9_./-]", "_", f"{layer.name}/{getattr(weight, 'name', 'weight')}")


class PruningSummaries(keras.callbacks.TensorBoard):
    """tfmot's ``PruningSummaries``: TensorBoard, plus each pruned weight's sparsity and threshold as scalars.

    A ``keras.callbacks.TensorBoard`` (``log_dir`` and its other arguments) that also writes,
    under ``log_dir/metrics``, at each epoch start (as tfmot does) and at the end of
    training, at step ``optimizer.iterations``: ``<wrapper>/<weight>/sparsity`` (the
    pruned fraction of the mask) and ``<wrapper>/<weight>/threshold`` (the smallest kept
    ``|w|`` at the last recomputation) for every pruned weight. Needs TensorFlow's
    ``tf.summary`` (installed with ``gradclip[keras]``), on any Keras backend.

    Args:
      log_dir: the TensorBoard log directory (a non-empty string).
      update_freq: TensorBoard's ``update_freq`` (default ``"epoch"``).
      **kwargs: other ``keras.callbacks.TensorBoard`` arguments.
    """

    def __init__(self, log_dir: str, update_freq: Any = "epoch", **kwargs: Any) -> None:
        if not isinstance(log_dir, str) or not log_dir:
            raise ValueError(f"`log_dir` must be a non-empty string. You passed `log_dir`={log_dir!r}.")
        super().__init__(log_dir=log_dir, update_freq=update_freq, **kwargs)
        self._pruning_writer: Any = None

    def _pruning_logs(self) -> dict:
        _sync(self.model)
        logs = {}
        for layer in collect_prunable_layers(self.model):
            if not layer.built:
                continue
            for weight, mask, threshold in layer.pruning_vars:
                keep = np.asarray(ops.convert_to_numpy(mask.value))
                name = _summary_name(layer, weight)
                logs[f"{name}/sparsity"] = float(1.0 - keep.mean()) if keep.size else 0.0
                logs[f"{name}/threshold"] = float(ops.convert_to_numpy(threshold.value))
        return logs

    def _write_pruning(self) -> None:
        import tensorflow as tf

        if self._pruning_writer is None:
            self._pruning_writer = tf.summary.create_file_writer(self.log_dir + "/metrics")
        step = _iterations(self.model) or 0
        with self._pruning_writer.as_default():
            for name, value in self._pruning_logs().items():
                tf.summary.scalar(name, value, step=step)
        self._pruning_writer.flush()

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        super().on_epoch_begin(epoch, logs)
        self._write_pruning()

    def on_train_end(self, logs: dict | None = None) -> None:
        self._write_pruning()
        super().on_train_end(logs)
