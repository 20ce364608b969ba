"""``gradclip_keras.Callback(rule)``: weight rules on a schedule; ``LogInfo``: info in ``fit`` logs."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import keras

import gradclip_core as gc

from ._backend import rule_scope, snapshot, to_tensor
from ._state import check_rule, has_project

__all__ = ["Callback", "LogInfo"]


def _sync(model: Any) -> None:
    """JAX trainer: write the in-flight training state back to the Keras variables."""
    sync = getattr(model, "jax_state_sync", None)
    if sync is not None:
        sync()


def _floats(info: dict, prefix: str) -> dict:
    return {f"{prefix}{k}": float(keras.ops.convert_to_numpy(v)) for k, v in info.items()}


class Callback(keras.callbacks.Callback):
    """Apply ``rule.project`` to the model's weights on a schedule during ``fit``.

    Like tfmot's ``UpdatePruningStep``, for Keras 3 and any gradclip rule with a
    ``project`` part: every ``every`` training batches (``on="batch"``) or epochs
    (``on="epoch"``), from the ``start``-th on, it runs::

        weights, state, info = rule.project(weights, state)

    on ``model.trainable_variables`` (or ``variables(model)``), assigns the weights, keeps
    the rule state in the callback (``callback.state``, initialised by ``rule.init`` at
    ``on_train_begin``) and writes the info, as floats prefixed ``"gradclip/"``, into the
    batch or epoch logs (``callback.info`` keeps the last values). It runs eagerly
    between steps (on JAX it first syncs the trainer's state into the variables).
    ``axis=None`` in unit-wise rules means Keras' ``"out_last"`` layout.

    For rules that must also act on the gradients every step (pruning masks), use
    :class:`gradclip_keras.Optimizer` instead, which runs ``update`` and ``project``.
    With ``every=1`` (the default) a pruning rule here re-masks the weights after every
    batch, so pruned weights are 0 between batches, but momentum may still hold
    updates for them. The schedule counts ``project`` calls, i.e. callback runs.
    :func:`gradclip_keras.strip` ``(callback)`` zeroes the pruned weights for good.

    Args:
      rule: a :class:`gradclip_core.Rule` with a ``project`` part.
      every: run every ``every`` batches or epochs (>= 1).
      on: ``"batch"`` (at ``on_train_batch_end``) or ``"epoch"`` (at ``on_epoch_end``).
      start: first batch/epoch count (1-based, counted across epochs for batches) to run at.
      variables: optional ``model -> list of variables`` choosing the weights.
      prefix: prefix of the info keys in the logs.

    Example:
      >>> import gradclip_core as gc, gradclip_keras
      >>> def zero_small(params, state):
      ...     import keras
      ...     return [keras.ops.where(keras.ops.abs(p) < 0.01, 0.0, p) for p in params], state, {}
      >>> cb = gradclip_keras.Callback(gc.Rule(project=zero_small, name="zero_small"), every=10)
      >>> cb.every, cb.on
      (10, 'batch')

      Gradual pruning to 80% sparsity during ``fit`` (polynomial schedule over the first
      20 batches, masks recomputed every 4), the sparsity logged from the info:

      >>> import numpy as np, keras
      >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16), keras.layers.Dense(1)])
      >>> model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
      >>> schedule = gc.polynomial_schedule(0, 20, frequency=4)
      >>> prune = gradclip_keras.Callback(gc.global_magnitude_prune(0.8, schedule=schedule))
      >>> x, y = np.random.default_rng(0).normal(size=(2, 128, 8)).astype("float32")
      >>> history = model.fit(x, y[:, :1], batch_size=16, epochs=3, callbacks=[prune], verbose=0)
      >>> [round(s, 3) for s in history.history["gradclip/sparsity"]]  # at each epoch end
      [0.391, 0.752, 0.801]
      >>> model = gradclip_keras.strip(prune)  # pruned weights are exactly 0 now
    """

    def __init__(
        self,
        rule: gc.Rule,
        *,
        every: int = 1,
        on: str = "batch",
        start: int = 1,
        variables: Callable[[Any], Sequence[Any]] | None = None,
        prefix: str = "gradclip/",
    ) -> None:
        super().__init__()
        check_rule(rule, "gradclip_keras.Callback")
        if not has_project(rule):
            raise ValueError(f"rule {rule.name!r} has no project part; gradient rules go in gradclip_keras.Optimizer")
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ValueError(f"every must be an int >= 1, got {every!r}")
        if on not in ("batch", "epoch"):
            raise ValueError(f"on must be 'batch' or 'epoch', got {on!r}")
        if not isinstance(start, int) or isinstance(start, bool) or start < 1:
            raise ValueError(f"start must be an int >= 1, got {start!r}")
        self.rule = rule
        self.every = every
        self.on = on
        self.start = start
        self.prefix = prefix
        self._select = variables
        self.state: Any = None
        self.info: dict = {}
        self._count = 0

    def _variables(self) -> list:
        return list(self._select(self.model) if self._select is not None else self.model.trainable_variables)

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._count = 0
        if self.state is None:
            _sync(self.model)
            with rule_scope():
                self.state = self.rule.init([to_tensor(v) for v in self._variables()])

    def project(self) -> dict:
        """Run ``rule.project`` on the weights now; returns the info as floats."""
        _sync(self.model)
        variables = self._variables()
        values = [snapshot(v) for v in variables]
        with rule_scope():
            out, self.state, info = self.rule.project(values, self.state)
        for var, value in zip(variables, out):
            var.assign(keras.ops.cast(value, var.dtype))
        self.info = _floats(info, self.prefix)
        return self.info

    def _tick(self, logs: dict | None) -> None:
        self._count += 1
        if self._count >= self.start and (self._count - self.start) % self.every == 0:
            self.project()
        if logs is not None:
            logs.update(self.info)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self.on == "batch":
            self._tick(logs)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.on == "epoch":
            self._tick(logs)
        elif logs is not None:
            logs.update(self.info)


class LogInfo(keras.callbacks.Callback):
    """Put the info of the model's :class:`gradclip_keras.Optimizer` into ``fit``'s logs.

    At every epoch end (and, with ``every_batch=True``, every batch end: one host sync
    per batch) it adds ``{prefix + key: float}`` for the last step's info, so it shows
    in the progress bar, ``History`` and TensorBoard. ``LossScaleOptimizer`` around the
    wrapper is looked through.

    Args:
      prefix: prefix of the keys in the logs.
      every_batch: also log at every batch end.

    Example:
      >>> import gradclip_keras
      >>> gradclip_keras.LogInfo().prefix
      'gradclip/'
    """

    def __init__(self, prefix: str = "gradclip/", every_batch: bool = False) -> None:
        super().__init__()
        self.prefix = prefix
        self.every_batch = every_batch

    def _optimizer(self) -> Any:
        from ._optimizer import Optimizer

        opt = self.model.optimizer
        while opt is not None and not isinstance(opt, Optimizer):
            opt = getattr(opt, "inner_optimizer", None)
        if opt is None:
            raise ValueError("LogInfo: the model's optimizer is not (and does not wrap) a gradclip_keras.Optimizer")
        return opt

    def _log(self, logs: dict | None) -> None:
        if logs is None:
            return
        _sync(self.model)
        logs.update(_floats(self._optimizer().info, self.prefix))

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self.every_batch:
            self._log(logs)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self._log(logs)
