"""``gradclip_keras.strip`` and ``masks``: make pruning permanent in a Keras model.

The keep-masks of a pruning rule live in its :class:`gradclip_core.PruneState`: in the
state variables of a :class:`gradclip_keras.Optimizer`, or in ``callback.state`` of a
:class:`gradclip_keras.Callback`. ``strip`` writes ``where(mask, w, 0)`` into the
weights (exact zeros, whatever the training did since the last projection) and drops
the pruning machinery, as ``gradclip_torch.strip`` and ``gradclip_optax.strip`` do.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from gradclip_core.backend import find_masks

from ._backend import to_tensor
from ._callback import Callback, _sync
from ._optimizer import Optimizer
from ._state import unflatten

__all__ = ["strip", "masks", "get_info"]


def _unwrap(optimizer: Any) -> Optimizer | None:
    """The :class:`Optimizer` in ``optimizer`` (looking through ``LossScaleOptimizer``), or ``None``."""
    while optimizer is not None and not isinstance(optimizer, Optimizer):
        optimizer = getattr(optimizer, "inner_optimizer", None)
    return optimizer


def _source(obj: Any) -> tuple[list, Any]:
    """``(variables, rule state)`` of a gradclip Optimizer, Callback or a model compiled with the Optimizer."""
    if isinstance(obj, Callback):
        if obj.state is None:
            raise ValueError("strip: the callback has no state yet (it runs rule.init at the start of fit)")
        _sync(obj.model)
        return obj._variables(), obj.state
    if isinstance(obj, keras.Model):
        _sync(obj)
        opt = _unwrap(getattr(obj, "optimizer", None))
        if opt is None:
            raise ValueError(
                "strip: the model's optimizer is not a gradclip_keras.Optimizer; pass the gradclip_keras.Callback "
                "that pruned it instead"
            )
        obj = opt
    if isinstance(obj, Optimizer):
        if not obj.built:
            raise ValueError("strip: the optimizer is not built yet (no training step has run)")
        slots = obj._gradclip
        return list(obj._trainable_variables), unflatten(slots.treedef, [v.value for v in slots.state])
    raise TypeError(
        f"strip: expected a keras.Model compiled with gradclip_keras.Optimizer, a gradclip_keras.Optimizer "
        f"or a gradclip_keras.Callback, got {type(obj).__name__}"
    )


def masks(obj: Any) -> list:
    """The keep-masks (bool tensors) of every pruning rule of ``obj``, ANDed, one per weight.

    Args:
      obj: a ``keras.Model`` compiled with a :class:`gradclip_keras.Optimizer`, that
        optimizer, or a :class:`gradclip_keras.Callback` (after ``fit`` started).

    Returns:
      A list of bool tensors shaped like the rule's variables (all True where the rule
      has no pruning part).
    """
    variables, state = _source(obj)
    out = [ops.ones(tuple(v.shape), dtype="bool") for v in variables]
    for ms in find_masks(state, len(variables)):
        out = [ops.logical_and(a, ops.convert_to_tensor(b)) for a, b in zip(out, ms)]
    return out


def strip(obj: Any) -> Any:
    """Make pruning permanent: zero the pruned weights and drop the gradclip pruning state.

    - a ``keras.Model`` compiled with a :class:`gradclip_keras.Optimizer`: the pruned
      weights are set to exactly 0, then the model is re-compiled with the wrapper's
      inner optimizer (same loss and metrics; the inner optimizer keeps its slots and
      iteration count), so ``model.save`` writes no gradclip state and the saved model
      loads without ``gradclip_keras``'s optimizer. A ``LossScaleOptimizer`` around the
      wrapper is refused (call ``strip(model.optimizer.inner_optimizer)`` and re-compile
      with the optimizer it returns). Returns the model.
    - a :class:`gradclip_keras.Optimizer`: zeroes the pruned weights among its variables
      and returns its inner optimizer (to ``compile`` with).
    - a :class:`gradclip_keras.Callback`: zeroes the pruned weights among its variables
      (the model holds no gradclip state: nothing else to remove) and returns
      ``callback.model``. Do not reuse the callback in another ``fit`` afterwards.

    Args:
      obj: the model, optimizer or callback that pruned the weights.

    Returns:
      The model (for a model or a callback), or the inner optimizer (for an optimizer).

    Example:
      >>> import numpy as np, keras
      >>> import gradclip_core as gc, gradclip_keras
      >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4, use_bias=False)])
      >>> opt = gradclip_keras.Optimizer(keras.optimizers.SGD(0.01), gc.global_magnitude_prune(0.5))
      >>> model.compile(optimizer=opt, loss="mse")
      >>> _ = model.fit(np.ones((8, 4)), np.ones((8, 4)), epochs=2, verbose=0)
      >>> model = gradclip_keras.strip(model)
      >>> int((keras.ops.convert_to_numpy(model.weights[0]) == 0).sum()), type(model.optimizer).__name__
      (8, 'SGD')
    """
    if isinstance(obj, keras.Model) and _unwrap(obj.optimizer) is not None and not isinstance(obj.optimizer, Optimizer):
        raise ValueError(
            "strip: the model's gradclip_keras.Optimizer is inside another optimizer (LossScaleOptimizer): "
            "call strip(model.optimizer.inner_optimizer) and re-compile with the optimizer it returns"
        )
    variables, _ = _source(obj)
    keep = masks(obj)
    for var, m in zip(variables, keep):
        value = to_tensor(var)
        var.assign(ops.where(m, value, ops.zeros_like(value)))
    if isinstance(obj, Callback):
        return obj.model
    if isinstance(obj, Optimizer):
        return obj.inner_optimizer
    opt = obj.optimizer
    config = obj.get_compile_config() or {}
    config = dict(config)
    config.pop("optimizer", None)
    kwargs = keras.saving.deserialize_keras_object(config) if config else {}
    obj.compile(optimizer=opt.inner_optimizer, **kwargs)
    return obj


def get_info(obj: Any) -> dict:
    """The last step's info of the model's :class:`gradclip_keras.Optimizer`, as tensors.

    The same as ``optimizer.info``; the name ``gradclip_torch.get_info(handle)`` and
    ``gradclip_optax.get_info(state)`` use. A ``LossScaleOptimizer`` around the wrapper is
    looked through. For a :class:`gradclip_keras.Callback`, its last info (floats).

    Args:
      obj: a ``keras.Model`` compiled with the wrapper, the wrapper, or a ``Callback``.

    Example:
      >>> import numpy as np, keras
      >>> import gradclip_core as gc, gradclip_keras
      >>> opt = gradclip_keras.Optimizer(keras.optimizers.SGD(1.0), gc.clip_by_global_norm(1.0))
      >>> w = keras.Variable(np.zeros(2, np.float32))
      >>> opt.apply([keras.ops.convert_to_tensor(np.array([3.0, 4.0], np.float32))], [w])
      >>> float(gradclip_keras.get_info(opt)["norm"])
      5.0
    """
    if isinstance(obj, Callback):
        return dict(obj.info)
    if isinstance(obj, keras.Model):
        _sync(obj)
        obj = getattr(obj, "optimizer", None)
    opt = _unwrap(obj)
    if opt is None:
        raise TypeError(
            f"get_info: expected a keras.Model compiled with gradclip_keras.Optimizer, the optimizer or a "
            f"gradclip_keras.Callback, got {type(obj).__name__}"
        )
    return opt.info
