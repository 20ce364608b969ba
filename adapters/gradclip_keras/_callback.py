"""``gradclip_keras.Callback(rule)``: weight rules on a schedule; ``LogInfo``: info in ``fit`` logs."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import keras

import gradclip_core as gc

from ._backend import backend, rule_scope, snapshot, to_tensor, variable_names
from ._state import check_rule, flatten, has_project, name_info

__all__ = ["Callback", "LogInfo"]


def _sync(model: Any) -> None:
    """JAX trainer: write the in-flight training state back to the Keras variables."""
    sync = getattr(model, "jax_state_sync", None)
    if sync is not None:
        sync()


def _floats(info: dict, prefix: str) -> dict:
    return {f"{prefix}{k}": float(keras.ops.convert_to_numpy(v)) for k, v in info.items()}


_MISSING = object()


def _schedule(value: Any) -> gc.Schedule:
    """A pruning rule's ``schedule`` argument as a :class:`gradclip_core.Schedule` (``None``: one-shot at 0)."""
    if value is None:
        return gc.one_shot(0)
    if isinstance(value, gc.Schedule):
        return value
    return gc.Schedule(**value) if isinstance(value, Mapping) else gc.Schedule(*value)


def _prune_schedules(config: Mapping, state: Any) -> list | None:
    """The schedule of every pruning state in ``state`` (a rule's or a chain's), or ``None``.

    ``None`` when the state holds anything besides :class:`gradclip_core.PruneState` s of
    rules whose config names their schedule (a custom rule, a stateful clipping rule):
    those must see every step.
    """
    if isinstance(state, gc.PruneState):
        schedule = config.get("schedule", _MISSING) if config else _MISSING
        return None if schedule is _MISSING else [_schedule(schedule)]
    if config and config.get("rule") == "chain" and isinstance(state, tuple) and len(state) == len(config["rules"]):
        out: list = []
        for c, s in zip(config["rules"], state):
            found = _prune_schedules(c, s)
            if found is None:
                return None
            out += found
        return out
    return [] if not flatten(state) else None


def _with_count(state: Any, count: Any) -> Any:
    """``state`` with the step counter of every pruning state set to ``count``."""
    if isinstance(state, gc.PruneState):
        return state._replace(count=keras.ops.cast(keras.ops.convert_to_tensor(count), "int32"))
    if isinstance(state, tuple) and not hasattr(state, "_fields"):
        return tuple(_with_count(s, count) for s in state)
    return state


def _placement(a: Any, values: list) -> Any:
    """Where a JAX state array goes: where it is, or replicated on the weights' mesh.

    Under ``keras.distribution.ModelParallel`` the weights are sharded over a mesh, and a
    state that ``rule.init`` made on one device (a step count) cannot enter ``jax.jit``
    beside them: it is replicated over their mesh (XLA reshards it as the step needs).
    """
    spread = next((v.sharding for v in values if len(v.sharding.device_set) > 1), None)
    if spread is None or a.sharding.device_set == spread.device_set or getattr(spread, "mesh", None) is None:
        return a.sharding
    import jax

    return jax.sharding.NamedSharding(spread.mesh, jax.sharding.PartitionSpec())


class Callback(keras.callbacks.Callback):
    """Apply ``rule.project`` to the model's weights on a schedule during ``fit``.

    Like tfmot's ``UpdatePruningStep``, for Keras 3 and any gradclip rule with a
    ``project`` part: after every ``every`` optimizer steps (``on="batch"``) or epochs
    (``on="epoch"``), from the ``start``-th on, it runs::

        weights, state, info = rule.project(weights, state)

    on ``model.trainable_variables`` (or ``variables(model)``), assigns the weights, keeps
    the rule state in the callback (``callback.state``) and writes the info, as floats
    prefixed ``"gradclip/"``, into the batch and epoch logs (``callback.info`` keeps the
    last values; per-array keys are named by the variable's path,
    ``"gradclip/sparsity/sequential/dense/kernel"``). ``axis=None`` in unit-wise rules
    means Keras' ``"out_last"`` layout.

    **The rule's step is the optimizer's step.** A rule with state (a pruning schedule
    counts its ``project`` calls) is brought up to ``optimizer.iterations`` each time the
    callback runs: one ``project`` per optimizer step since its last run, in a row on the
    current weights (a pruning rule recomputes its masks only on its schedule's steps and
    otherwise just re-applies them). So the schedule counts optimizer steps with
    ``steps_per_execution > 1``, ``every > 1`` or ``on="epoch"`` too, and a run resumed from
    a saved model continues it: the callback needs no state of its own in the checkpoint,
    since the step is the optimizer's ``iterations`` (saved with the model) and, at the
    start of ``fit``, the masks are rebuilt by replaying the schedule on the saved
    weights, whose pruned entries are 0 (exact when the checkpoint was written after a
    run of the callback, e.g. ``on="batch"``, ``every=1``, and no kept weight is exactly 0).
    A state-free rule (a constraint) runs once per run. For the core's pruning rules the
    catch-up jumps to the steps where a schedule recomputes (the others only re-apply the
    masks), so resuming at step 100 000 costs one call per recomputation.

    Cost: the weights are read and written once per run. On JAX ``project`` is compiled
    once (``jax.jit``); on TensorFlow and torch it runs eagerly, and a pruning rule's
    selection runs only on its schedule's steps. Masks are kept on the weights between
    runs, not on the gradients: for pruning during every step (momentum never revives a
    pruned weight) use :class:`gradclip_keras.Optimizer`, which runs ``update`` and
    ``project`` inside the train step. List this callback before callbacks that read the
    logs or the weights at the same hook (``TensorBoard``, ``ModelCheckpoint``).
    :func:`gradclip_keras.strip` ``(callback)`` zeroes the pruned weights for good.

    Args:
      rule: a :class:`gradclip_core.Rule` with a ``project`` part.
      every: run every ``every`` optimizer steps (``on="batch"``: at the first batch end
        at least ``every`` steps after the last run) or epochs (>= 1).
      on: ``"batch"`` (at ``on_train_batch_end``) or ``"epoch"`` (at ``on_epoch_end``).
      start: first optimizer step (1-based) or epoch to run at.
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
      20 optimizer steps, masks recomputed every 4), the sparsity logged from the info
      (the kernels are pruned, the biases are not: ``params="weights"``, rank >= 2):

      >>> import numpy as np, keras
      >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16), keras.layers.Dense(1)])
      >>> model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
      >>> schedule = gc.polynomial_schedule(0, 20, frequency=4)
      >>> prune = gradclip_keras.Callback(gc.global_magnitude_prune(0.8, schedule=schedule))
      >>> x, y = np.random.default_rng(0).normal(size=(2, 128, 8)).astype("float32")
      >>> history = model.fit(x, y[:, :1], batch_size=16, epochs=3, callbacks=[prune], verbose=0)
      >>> [round(s, 3) for s in history.history["gradclip/sparsity"]]  # of the kernels, at each epoch end
      [0.389, 0.75, 0.799]
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
        if variables is not None and not callable(variables):
            raise ValueError(f"variables must be a function model -> list of variables, got {variables!r}")
        self.rule = rule
        self.every = every
        self.on = on
        self.start = start
        self.prefix = prefix
        self._select = variables
        self.state: Any = None
        self.info: dict = {}
        self._steps = 0  # rule steps applied so far (= optimizer iterations after each run)
        self._next = start  # on="batch": the first optimizer step at which to run next
        self._shapes: list | None = None
        self._names: list[str] | None = None  # the variables' paths (gc.Params patterns match them)
        self._compiled: Any = None

    @property
    def steps(self) -> int:
        """How many rule steps (``project`` calls of a rule with state) have been applied."""
        return self._steps

    def _variables(self) -> list:
        return list(self._select(self.model) if self._select is not None else self.model.trainable_variables)

    def _iterations(self) -> int:
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is None:
            return self._steps
        return int(keras.ops.convert_to_numpy(optimizer.iterations))

    def _stateful(self) -> bool:
        return bool(flatten(self.state))

    def on_train_begin(self, logs: dict | None = None) -> None:
        _sync(self.model)
        variables = self._variables()
        shapes = [tuple(v.shape) for v in variables]
        self._names = variable_names(variables)  # (gc.Params patterns match the variables' paths)
        if self.state is None or shapes != self._shapes:
            with rule_scope(self._names):
                self.state = self.rule.init([to_tensor(v) for v in variables])
            self._shapes, self._steps, self._next, self._compiled = shapes, 0, self.start, None
        iterations = self._iterations()
        if iterations > self._steps and self._stateful():
            # A model that trained before (a resumed checkpoint, another fit): replay the
            # rule's steps on its weights now, before training moves the pruned ones.
            self._advance(iterations - self._steps)
        self._steps = max(self._steps, iterations)
        self._next = max(self._next, iterations + 1)

    def _project_fn(self) -> Callable:
        """``project(values, state)``: compiled once on JAX; eager on TensorFlow and torch."""
        if self._compiled is None:
            rule, names = self.rule, self._names
            if backend() == "jax":
                import jax

                jitted = jax.jit(lambda values, state: rule.project(values, state))

                def run(values: list, state: Any) -> tuple:
                    # Every argument committed to where it is: the weights arrive uncommitted
                    # or not, depending on the trainer's last step, and jit keys its cache on it.
                    values = jax.tree.map(lambda a: jax.device_put(a, a.sharding), values)
                    state = jax.tree.map(lambda a: jax.device_put(a, _placement(a, values)), state)
                    with rule_scope(names):
                        return jitted(values, state)

                self._compiled = run
            else:

                def run(values: list, state: Any) -> tuple:
                    with rule_scope(names):
                        return rule.project(values, state)

                self._compiled = run
        return self._compiled

    def _advance(self, steps: int) -> dict:
        """``steps`` rule steps (one call for a state-free rule) on the weights; assign them once.

        Pruning rules (every stateful part a :class:`gradclip_core.PruneState` with its
        schedule in the config) jump over the steps where no schedule recomputes: on fixed
        weights those only re-apply the masks, and a recomputation selects in one fixed
        order (pruned elements first), so the masks after the last recomputation of the
        span are those of the step-by-step replay. A resume at step 100 000 then costs a
        call per recomputation, not 100 000 calls.
        """
        _sync(self.model)
        variables = self._variables()
        values = [snapshot(v) for v in variables]
        project = self._project_fn()
        calls = max(1, steps) if self._stateful() else 1
        info: dict = {}
        schedules = _prune_schedules(self.rule.config, self.state) if calls > 1 else None
        if schedules:
            import numpy as np

            span = np.arange(self._steps, self._steps + calls, dtype=np.int64)
            active = sorted({int(t) for sch in schedules for t in span[np.asarray(sch.active(np, span), bool)]})
            last = self._steps + calls - 1
            for t in [*active, last] if not active or active[-1] != last else active:
                values, self.state, info = project(list(values), _with_count(self.state, t))
        else:
            for _ in range(calls):
                values, self.state, info = project(list(values), self.state)
        for var, value in zip(variables, values):
            var.assign(keras.ops.cast(value, var.dtype))
        if self._stateful():
            self._steps += calls
        names = name_info(list(info), variables)
        self.info = _floats({names[k]: v for k, v in info.items()}, self.prefix)
        return self.info

    def project(self) -> dict:
        """Run one ``rule.project`` on the weights now (one rule step); returns the info as floats."""
        return self._advance(1)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self.on == "batch":
            _sync(self.model)
            iterations = self._iterations()
            if iterations >= self._next:
                self._advance(iterations - self._steps)
                self._steps = max(self._steps, iterations)
                self._next = iterations + self.every
        if logs is not None:
            logs.update(self.info)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.on == "epoch" and epoch + 1 >= self.start and (epoch + 1 - self.start) % self.every == 0:
            iterations = self._iterations()
            self._advance(iterations - self._steps)
            self._steps = max(self._steps, iterations)
        if logs is not None:
            logs.update(self.info)


class LogInfo(keras.callbacks.Callback):
    """Put the info of the model's :class:`gradclip_keras.Optimizer` into ``fit``'s logs.

    Every step's logs get ``{prefix + key: value}`` for the wrapper's info (per-array keys
    named by variable path: ``"gradclip/sparsity/sequential/dense/kernel"``), so it shows in
    the progress bar, ``History`` (the epoch's last step) and TensorBoard, whatever the
    order of the callbacks: at ``on_train_begin`` it wraps ``model.train_function`` so the
    values are in the logs the train step returns, before any callback reads them (a
    callback that only added them at its own hook came too late for a ``TensorBoard``
    listed before it). The values stay tensors until Keras converts the logs, as it does
    for the loss; ``on_train_end`` restores the train function. ``LossScaleOptimizer``
    around the wrapper is looked through.

    Args:
      prefix: prefix of the keys in the logs.
      every_batch: kept for compatibility; the info is in every step's logs.

    Raises:
      ValueError: (at the start of ``fit``) the model's optimizer is not, and does not
        wrap, a :class:`gradclip_keras.Optimizer`.

    Example:
      >>> import numpy as np, keras
      >>> import gradclip_core as gc, gradclip_keras
      >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
      >>> model.compile(optimizer=gradclip_keras.Optimizer(keras.optimizers.SGD(0.1), gc.clip_by_global_norm(1.0)), loss="mse")
      >>> logs = model.fit(np.ones((8, 3)), np.full((8, 1), 9.0), verbose=0, callbacks=[gradclip_keras.LogInfo()]).history
      >>> sorted(logs), logs["gradclip/norm"][0] > 1
      (['gradclip/norm', 'gradclip/scale', 'loss'], True)
    """

    def __init__(self, prefix: str = "gradclip/", every_batch: bool = True) -> None:
        super().__init__()
        self.prefix = prefix
        self.every_batch = every_batch
        self._wrapped: tuple | None = None

    def _optimizers(self) -> list:
        """The gradclip Optimizers of the model, outermost first (nested wrappers: a gradient
        rule around an update rule), looking through ``LossScaleOptimizer``."""
        from ._optimizer import Optimizer

        found, opt = [], self.model.optimizer
        while opt is not None:
            if isinstance(opt, Optimizer):
                found.append(opt)
            opt = getattr(opt, "inner_optimizer", None)
        if not found:
            raise ValueError("LogInfo: the model's optimizer is not (and does not wrap) a gradclip_keras.Optimizer")
        return found

    def _info_variables(self) -> dict:
        """Log key -> info variable of every gradclip Optimizer (an inner one's key that an outer one
        uses too gets the inner rule's name: ``"gradclip/clip_update_norm/norm"``)."""
        out: dict = {}
        for opt in self._optimizers():
            for k, v in opt.gradclip_info.items():
                key = self.prefix + k
                if key in out:
                    key = f"{self.prefix}{opt.rule.name}/{k}"
                out[key] = v
        return out

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._optimizers()  # fail early: no gradclip Optimizer
        model = self.model
        original = model.train_function
        if original is None or getattr(original, "_gradclip_log_info", None) is self:
            return
        # The optimizer may build in the first step (TensorFlow): look its info up then.
        if backend() == "jax":
            # The JAX trainer threads the optimizer variables through the step as values:
            # read the info from the new state, not from the (not yet synced) variables.
            where: dict = {}

            def train_function(state: Any, data: Any) -> Any:
                step_logs, state = original(state, data)
                if not where:
                    index = {id(v): i for i, v in enumerate(model.optimizer.variables)}
                    where.update({k: index[id(v)] for k, v in self._info_variables().items()})
                values = state[2]
                return {**step_logs, **{k: values[i] for k, i in where.items()}}, state

        else:

            def train_function(*args: Any, **kwargs: Any) -> Any:
                step_logs = original(*args, **kwargs)
                return {**step_logs, **{k: snapshot(v) for k, v in self._info_variables().items()}}

        train_function._gradclip_log_info = self  # type: ignore[attr-defined]
        model.train_function = train_function
        self._wrapped = (model, original, train_function)

    def on_train_end(self, logs: dict | None = None) -> None:
        if self._wrapped is not None:
            model, original, wrapped = self._wrapped
            if model.train_function is wrapped:
                model.train_function = original
            self._wrapped = None
