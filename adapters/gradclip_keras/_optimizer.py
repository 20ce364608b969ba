"""``gradclip_keras.Optimizer(inner, rule)``: a gradclip rule around any Keras optimizer."""

from __future__ import annotations

import functools
import warnings
from typing import Any, Mapping, Sequence

import keras
import numpy as np
from keras import ops

import gradclip_core as gc
from gradclip_core.backend import apply_effect, kept_buffers, namespace

from ._backend import (backend, is_symbolic, prepare_namespaces, rule_scope, run_unless, snapshot, storage_precision, to_tensor,
                       unconverted, variable_names)
from ._registry import rule_config, rule_from_config, serializable
from ._state import check_rule, flatten, has_project, name_info, sanitize, skipped, unflatten

__all__ = ["Optimizer"]


class _Slots:
    """Plain holder for the rule and its variables (kept out of Keras/TF attribute tracking)."""

    def __init__(self, rule: gc.Rule) -> None:
        self.rule = rule
        self.project = has_project(rule)
        self.treedef: Any = None
        self.state: list = []  # keras.Variable per state leaf
        self.info: dict[str, Any] = {}  # shown info key -> keras.Variable
        self.update_keys: tuple = ()
        self.names: dict[str, str] = {}  # the rule's info key -> shown key (per-array keys by variable path)
        self.paths: list[str] | None = None  # the built variables' paths (gc.Params patterns match them)
        self.needs_loss = gc.needs_loss(rule)
        self.regrows = False  # the state has regrown masks (RigL / SET): the inner slots of grown elements restart
        self.loss: Any = None  # the step's loss (scale_loss / set_loss), used by the next apply
        self.scratch: dict = {}  # torch, update rules: the snapshot and delta buffers kept from step to step


def _unaliased(outs: list, params: list, own: bool = False) -> list:
    """``outs`` with every tensor that shares memory with one of ``params`` copied (torch only).

    On torch the rule reads the live weights (no per-step copy of every weight); the
    weights are then written in place, so an output that *is* a weight (a rule returning
    its input unchanged) must not change under the adapter. ``own``: ``outs[i]`` may be
    ``params[i]`` itself (a weight written back onto itself).
    """
    if backend() != "torch" or not outs:
        return outs
    ptrs = {p.untyped_storage().data_ptr(): i for i, p in enumerate(params) if p is not None}
    fixed = list(outs)
    for i, o in enumerate(outs):
        j = None if o is None else ptrs.get(o.untyped_storage().data_ptr())
        if j is not None and not (own and j == i):
            fixed[i] = o.clone()
    return fixed


def _constant(value: Any) -> Any:
    """An initializer giving a private, unplaced copy of ``value``.

    A rule's ``init`` may return one array for several leaves (``z = zeros(); (z, z)``);
    Keras' torch variables adopt the initial tensor's storage, so without the copy two
    state variables would share memory. On JAX the copy goes through NumPy so that it is
    placed like every other Keras variable: a rule's ``init`` puts its state on its params'
    device (``device=``), which makes a JAX array *committed*, while Keras' own variables
    are not; ``jax.jit`` keys its cache on that, and the JAX trainer's step compiled
    three times per ``fit`` (the first step, the second, and the first of epoch 2).
    """
    if backend() == "jax" and not is_symbolic(value):
        host = np.array(ops.convert_to_numpy(value))

        def init(shape: Any = None, dtype: Any = None) -> Any:
            return ops.convert_to_tensor(np.array(host), dtype=dtype)

        return init

    def copy(shape: Any = None, dtype: Any = None) -> Any:  # TF may build inside a traced step
        return ops.copy(value)

    return copy


_INNER_CLIPPING = ("clipnorm", "global_clipnorm", "clipvalue")


def _raises_on_nonfinite(config: Mapping) -> bool:
    """Whether a rule config (a chain's included) uses ``nonfinite="raise"``."""
    if config.get("rule") == "chain":
        return any(_raises_on_nonfinite(c) for c in config.get("rules", ()))
    return config.get("nonfinite") == "raise"


def _describe(optimizer: Any) -> str:
    """``SGD(learning_rate=0.1, weight_decay=0.01)``: a Keras optimizer's class and main settings."""
    lr = optimizer.learning_rate
    if isinstance(optimizer._learning_rate, keras.optimizers.schedules.LearningRateSchedule):
        lr_text = type(optimizer._learning_rate).__name__
    else:
        try:
            lr_text = f"{float(keras.ops.convert_to_numpy(lr)):g}"
        except Exception:  # a traced value
            lr_text = "?"
    parts = [f"learning_rate={lr_text}"]
    for key in ("weight_decay", *_INNER_CLIPPING):
        value = getattr(optimizer, key, None)
        if value:
            parts.append(f"{key}={value:g}" if isinstance(value, (int, float)) else f"{key}={value!r}")
    return f"{type(optimizer).__name__}({', '.join(parts)})"


@serializable("Optimizer")
class Optimizer(keras.optimizers.Optimizer):
    """A Keras optimizer that runs a gradclip rule around an inner optimizer.

    In the style of ``keras.optimizers.LossScaleOptimizer``: one ``apply(grads)`` does::

        grads, state, info = rule.update(grads, state, params)   # clip / mask the gradients
        inner.apply(grads)                                         # the optimizer step
        params, state, _   = rule.project(params, state)           # constrain / prune (if any)

    and ``stateless_apply`` (the JAX trainer's path) does the same on values. Rules see
    the backend's tensors (``jax.numpy``, torch, or the ``keras.ops`` namespace for
    TensorFlow) and Keras' weight layout: ``axis=None`` in unit-wise rules means
    ``"out_last"`` (a ``Dense`` kernel is ``(in, out)``) on every backend.

    State and info are Keras variables of this optimizer (created in ``build``, saved
    with the model, threaded through ``stateless_apply``):

    - ``optimizer.gradclip_info``: dict info key -> variable, updated every step
      (``float(optimizer.gradclip_info["norm"])``); ``optimizer.info`` gives the values;
      :class:`gradclip_keras.LogInfo` puts them in ``fit``'s logs. Per-array keys are
      named by the variable's path: ``"sparsity/sequential/dense/kernel"`` (the core's
      ``"sparsity/<i>"``);
    - ``optimizer.gradclip_state``: the rule state's variables.

    Loss: rules that test the loss (:func:`gradclip_core.skip_on_spike` with ``loss=True``)
    get it from Keras' trainer, which hands every step's loss to ``optimizer.scale_loss``
    (``fit`` on every backend); in a custom loop call :meth:`set_loss` before
    ``apply_gradients``.

    Update clipping (``rule.on_update``: :func:`gradclip_core.clippy`,
    :func:`gradclip_core.clip_update_norm`): the inner optimizer steps on the gradients,
    then the rule runs on its update ``delta = w_new - w_old`` (``params``: ``w_old``) and
    the weights become ``w_old + delta'`` where the rule changed the update (``w_new``
    bit for bit elsewhere). Keras optimizers apply their update in place, so ``w_old`` is
    a snapshot taken before the step: on JAX under ``jit`` (the trainer's
    ``stateless_apply``) these are the step's input values, and the inner step is traced
    twice (once read by the rule, once written back in place) so that XLA keeps no
    weight-sized temporary; on TensorFlow one copy of the trainable weights is held
    during the step, plus the update ``delta`` while the rule runs; on torch (eager) the
    copy lives in a weight-sized buffer kept from step to step (as ``gradclip_torch.attach``)
    and, on the CPU, Clippy, the update-norm clip and ``update_ratio`` read ``(w_new, w_old)``
    themselves (``rule.update_effect_from_weights``): ``delta`` is not written (other rules, a
    non-finite policy and other devices keep a second buffer for it). ``nonfinite="skip"`` on a non-finite
    update restores the weights, but the inner optimizer's own variables (moments,
    iterations) have already taken the step.

    ``nonfinite="skip"`` rules, and :func:`gradclip_core.skip_on_spike` on a spike, skip the
    step the same way. ``nonfinite="skip"``: on a step whose gradients hold NaN/Inf the inner optimizer
    step (and ``project``) is skipped entirely, as ``LossScaleOptimizer`` does, so weights,
    the inner optimizer's variables and iteration count stay unchanged; ``info["skipped"]``
    is 1. On torch and eager JAX this is a Python branch (one host sync), on TensorFlow a
    ``tf.cond``, in ``stateless_apply`` a branch-free select. The signal is the rule's
    :class:`gradclip_core.Skip` effect (or an ``info["skipped"]`` it reports); the inner
    optimizer gets the gradients under the skip (those of ``skip_on_spike`` as they came),
    never the all-zero ones ``rule.update`` makes of a skipped step, so a step that is not
    skipped costs what the rule without the skip costs. ``nonfinite="raise"`` reads
    the gradients on the host: in ``fit`` on JAX and TensorFlow compile the model with
    ``run_eagerly=True`` (the compiled step raises a ``RuntimeError`` saying so).

    The inner optimizer's ``learning_rate``, ``iterations`` and ``weight_decay`` are the
    wrapper's. Its own ``clipnorm`` / ``global_clipnorm`` / ``clipvalue`` would clip a
    second time, after the rule: a ``UserWarning`` says so at construction.

    ``None`` gradients count as zeros for the rule and stay ``None`` for the inner
    optimizer (which skips those variables, as Keras does); ``tf.IndexedSlices`` are
    densified. A subset of the built variables may be passed to ``apply``; the rule
    still sees one gradient per built variable (zeros for the missing ones).

    Loss scaling: the inner optimizer's ``loss_scale_factor`` moves to this wrapper, which
    unscales before the rule (the rule must see true gradients). For dynamic loss scaling
    wrap this optimizer: ``keras.optimizers.LossScaleOptimizer(gradclip_keras.Optimizer(...))``
    unscales first and skips non-finite steps; the other order,
    ``gradclip_keras.Optimizer(LossScaleOptimizer(inner), rule)``, is refused (the loss
    would never be scaled, but the gradients divided by the scale). Inner optimizers with
    ``gradient_accumulation_steps`` are refused: the rule would clip each micro-batch.

    Distribution: under ``tf.distribute`` Keras' own ``clipnorm`` / ``global_clipnorm`` run
    per replica on the local gradients, before the cross-replica sum (each replica sees a
    different norm). This wrapper instead sums the gradients across replicas first
    (``all_reduce``), runs the rule on the global gradient (the same on every replica, so
    the rule state stays in sync), and hands ``grads / num_replicas`` to the inner
    optimizer, whose own all-reduce sums them back (exact for 2 or 4 replicas, within
    rounding otherwise). With the JAX backend and the Keras distribution API the
    gradients are global arrays already.

    Args:
      inner_optimizer: the Keras optimizer to wrap (``keras.optimizers.SGD(0.1)``, ...).
      rule: a :class:`gradclip_core.Rule` (or its ``config`` dict, as ``from_config`` does).
      name: optional name.

    Raises:
      TypeError: ``rule`` is not a rule, or ``inner_optimizer`` not a Keras optimizer.
      ValueError: ``inner_optimizer`` is a ``LossScaleOptimizer`` or uses
        ``gradient_accumulation_steps``; unknown keyword arguments.

    Example:
      >>> import numpy as np, keras
      >>> import gradclip_core as gc, gradclip_keras
      >>> opt = gradclip_keras.Optimizer(keras.optimizers.SGD(1.0), gc.clip_by_global_norm(1.0))
      >>> w = keras.Variable(np.zeros(2, np.float32))
      >>> opt.apply([keras.ops.convert_to_tensor(np.array([3.0, 4.0], np.float32))], [w])
      >>> [round(float(x), 4) for x in keras.ops.convert_to_numpy(w)], float(opt.info["norm"])
      ([-0.6, -0.8], 5.0)
    """

    def __init__(self, inner_optimizer: keras.optimizers.Optimizer, rule: gc.Rule | Mapping, name: str | None = None, **kwargs: Any) -> None:
        if kwargs:
            raise ValueError(f"gradclip_keras.Optimizer takes (inner_optimizer, rule, name=None); unknown arguments {sorted(kwargs)}")
        if isinstance(rule, Mapping):
            rule = rule_from_config(rule)
        check_rule(rule, "gradclip_keras.Optimizer")
        if not isinstance(inner_optimizer, keras.optimizers.Optimizer):
            raise TypeError(f"inner_optimizer must be a keras.optimizers.Optimizer, got {type(inner_optimizer).__name__}")
        if isinstance(inner_optimizer, keras.optimizers.LossScaleOptimizer):
            raise ValueError(
                "inner_optimizer is a LossScaleOptimizer: inside gradclip_keras.Optimizer the loss is never scaled "
                "but LossScaleOptimizer still divides the gradients by its scale, so the model does not train. "
                "Put the loss scaling outside: keras.optimizers.LossScaleOptimizer(gradclip_keras.Optimizer(inner, rule)) "
                "(it unscales before the rule and skips non-finite steps)"
            )
        if inner_optimizer.gradient_accumulation_steps:
            raise ValueError(
                "the inner optimizer uses gradient_accumulation_steps: the rule would run on each micro-batch "
                "gradient, not on the accumulated one; accumulate gradients before gradclip_keras.Optimizer instead"
            )
        clipping = [k for k in _INNER_CLIPPING if getattr(inner_optimizer, k, None)]
        if clipping:
            warnings.warn(
                f"gradclip_keras.Optimizer: the inner optimizer also clips ({', '.join(f'{k}={getattr(inner_optimizer, k)}' for k in clipping)}), "
                "so the gradients are clipped twice: by the rule, then by Keras. Drop the option from the inner optimizer "
                "and express it in the rule (global_clipnorm=c is gc.clip_by_global_norm(c, semantics='keras'), clipnorm=c "
                "gc.clip_by_norm(c, semantics='keras'), clipvalue=c gc.clip_by_value(c))",
                UserWarning,
                stacklevel=2,
            )
        prepare_namespaces()
        super().__init__(learning_rate=0.0, name=name)
        self.inner_optimizer = inner_optimizer
        self._loss_scale = inner_optimizer.loss_scale_factor
        self.inner_optimizer.loss_scale_factor = None
        self._gradclip = _Slots(rule)

    # ------------------------------------------------------------------ attributes

    @property
    def rule(self) -> gc.Rule:
        """The gradclip rule."""
        return self._gradclip.rule

    @property
    def gradclip_info(self) -> dict:
        """Info key -> Keras variable holding the last step's value (empty before ``build``)."""
        return dict(self._gradclip.info)

    @property
    def gradclip_state(self) -> list:
        """The Keras variables holding the rule state's leaves."""
        return list(self._gradclip.state)

    @property
    def info(self) -> dict:
        """Info key -> current value (a backend tensor) of the last step."""
        return {k: v.value for k, v in self._gradclip.info.items()}

    @property
    def variables(self) -> list:
        return self._variables + self.inner_optimizer.variables

    @property
    def learning_rate(self) -> Any:
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate: Any) -> None:
        self.inner_optimizer.learning_rate = learning_rate

    @property
    def iterations(self) -> Any:
        return self.inner_optimizer.iterations

    @property
    def weight_decay(self) -> Any:
        """The inner optimizer's ``weight_decay`` (the wrapper has none of its own)."""
        inner = getattr(self, "inner_optimizer", None)
        return None if inner is None else inner.weight_decay

    @weight_decay.setter
    def weight_decay(self, value: Any) -> None:
        inner = getattr(self, "inner_optimizer", None)
        if inner is not None:  # (Keras' base __init__ sets None before the inner optimizer exists)
            inner.weight_decay = value

    def __repr__(self) -> str:
        return f"gradclip_keras.Optimizer({_describe(self.inner_optimizer)}, {self.rule!r})"

    def scale_loss(self, loss: Any) -> Any:
        """Keras' trainers call this with the step's loss (all backends): rules that test the loss read it here."""
        if self._gradclip.needs_loss:
            self.set_loss(loss)
        if self._loss_scale is not None:
            return loss * self._loss_scale
        return loss

    def set_loss(self, loss: Any) -> None:
        """Give the rule the loss of the coming ``apply`` / ``apply_gradients`` (rules that test it).

        ``fit`` needs nothing: every Keras trainer (TensorFlow, JAX, torch) passes the loss it
        computed to ``optimizer.scale_loss`` before the gradients, and this wrapper takes it
        from there. In a custom training loop (or a ``train_step`` that does not call
        ``self.optimizer.scale_loss(loss)``), call ``optimizer.set_loss(loss)`` before
        ``apply_gradients``; a rule that needs the loss raises without it.

        Args:
          loss: the step's loss (a 0-d tensor of the backend, unscaled); it is read with
            ``stop_gradient``, and used by the next ``apply`` only.
        """
        self._gradclip.loss = ops.stop_gradient(ops.convert_to_tensor(loss))

    def finalize_variable_values(self, var_list: Sequence[Any]) -> None:
        self.inner_optimizer.finalize_variable_values(var_list)

    # ----------------------------------------------------------------------- build

    def build(self, var_list: Sequence[Any]) -> None:
        """Create the rule's state and info variables, and build the inner optimizer."""
        slots = self._gradclip
        rule = slots.rule
        values = [to_tensor(v) for v in var_list]
        slots.paths = variable_names(var_list)  # (gc.Params patterns match the variables' paths)
        with rule_scope(slots.paths):
            state = rule.init(values)
            grads = [ops.zeros_like(v) for v in values]
            _, state1, info = rule.update(grads, state, values)
            pinfo = rule.project(values, state1)[2] if slots.project else {}
        slots.treedef = state
        slots.regrows = bool(gc.backend.find_regrown(state, len(values)))  # RigL / SET: restart grown elements' slots
        slots.update_keys = tuple(info)
        slots.names = name_info([*info, *pinfo], var_list)
        with keras.name_scope(self.name, caller=self):
            for i, leaf in enumerate(flatten(state)):
                leaf = ops.convert_to_tensor(leaf)
                slots.state.append(
                    self.add_variable(
                        shape=tuple(leaf.shape),
                        initializer=_constant(leaf),
                        dtype=keras.backend.standardize_dtype(leaf.dtype),
                        name=f"gradclip_state_{i}",
                    )
                )
            for key, value in {**info, **pinfo}.items():
                value = ops.convert_to_tensor(value)
                key = slots.names[key]
                slots.info[key] = self.add_variable(
                    shape=tuple(value.shape),
                    initializer="zeros",
                    dtype=keras.backend.standardize_dtype(value.dtype),
                    name=f"gradclip_{sanitize(key)}",
                )
        self.inner_optimizer.build(var_list)
        super().build(var_list)

    # ----------------------------------------------------------------- rule steps

    def _full_grads(self, grads: Sequence[Any], variables: Sequence[Any]) -> tuple[list, list[int]]:
        """One gradient per built variable (zeros where missing) and the positions of ``variables``."""
        built = self._trainable_variables
        pos = [self._get_variable_index(v) for v in variables]
        full: list = [None] * len(built)
        for g, i in zip(grads, pos):
            full[i] = g
        full = [ops.zeros(tuple(v.shape), dtype=v.dtype) if g is None else to_tensor(g) for g, v in zip(full, built)]
        if self._loss_scale is not None:
            full = [g / ops.cast(self._loss_scale, g.dtype) for g in full]
        return full, pos

    def _update(self, grads: list, state_values: list, params: list | None, loss: Any = None) -> tuple[list, list, dict, Any]:
        """The rule's ``update`` on the gradients: ``(grads, new_state, info, skip)``.

        ``skip`` is the 0-d bool of a :class:`gradclip_core.Skip` effect (``skip_on_spike``,
        ``nonfinite="skip"``, a chain holding one), else ``None``. The wrapper skips the
        whole step on it (:func:`run_unless`), so the all-zero gradients that ``rule.update``
        would make of a skipped step are never read: only the effect under the skip is
        applied (nothing for ``skip_on_spike``: the gradients go to the inner optimizer as
        they are). Making them was a select over every gradient, and a zero-filled array
        per gradient, on every step (TensorFlow and torch run op by op; XLA dropped it).
        """
        slots = self._gradclip
        state = unflatten(slots.treedef, state_values)
        if loss is not None:
            state = gc.feed_loss(state, loss)
        with rule_scope(slots.paths):
            effect, new_state, info = unconverted(slots.rule.update_effect)(
                grads, state, params if slots.rule.needs_params else None)
            skip = None
            if isinstance(effect, gc.Skip):  # the step is skipped instead of run on zeros
                skip, effect = effect.skip, effect.effect
            out = grads if isinstance(effect, gc.Keep) else unconverted(apply_effect)(namespace(*grads), grads, effect)
        return list(out), flatten(new_state), dict(info), skip

    def _project(self, params: list, state_values: list) -> tuple[list, list, dict]:
        slots = self._gradclip
        with rule_scope(slots.paths):
            out, new_state, info = unconverted(slots.rule.project)(params, unflatten(slots.treedef, state_values))
        out = [ops.cast(o, p.dtype) for o, p in zip(out, params)]
        return out, flatten(new_state), dict(info)

    def _restart_regrown(self, built: list, state_values: list) -> None:
        """RigL / SET: zero the inner optimizer's variables of the elements grown this step.

        The slots of weight ``w`` are the inner optimizer's variables made by
        ``add_variable_from_reference(w, ...)`` (named ``<w.path with _>_<slot>``, shaped like
        ``w``: momentum, Adam's moments, ...); each gets ``where(regrown, 0, slot)``, as
        jaxpruner's ``restart_inner_state``. Step counts are left as they are.
        """
        found = gc.backend.find_regrown(unflatten(self._gradclip.treedef, state_values), len(built))
        if not found:
            return
        slots = list(self.inner_optimizer.variables)
        for i, w in enumerate(built):
            r = found[0][i]
            for rs in found[1:]:
                r = ops.logical_or(r, rs[i])
            if len(r.shape) == 0:  # (a weight the rule does not act on)
                continue
            prefix = str(getattr(w, "path", w.name)).replace("/", "_") + "_"
            for v in slots:
                if tuple(v.shape) == tuple(w.shape) and str(v.name).startswith(prefix):
                    value = to_tensor(v)
                    v.assign(ops.where(r, ops.zeros_like(value), value))

    def _snapshot_weights(self, built: list) -> list:
        """The weights before the inner step (torch, eager: copied into buffers kept from step to step).

        A fresh weight-sized tensor per step is page-faulted in again on the CPU (it cost
        more than the copy into it); as in ``gradclip_torch.attach``, the buffers stay
        (:func:`gradclip_core.backend.kept_buffers`).
        """
        values = [to_tensor(v).detach() for v in built] if backend() == "torch" else []  # (plain tensors, not Parameters)
        kept = kept_buffers(namespace(*values), self._gradclip.scratch, "snapshot", values) if values else None
        if kept is None:
            return [snapshot(v) for v in built]
        for buf, value in zip(kept, values):
            buf.copy_(value)
        return kept

    def _kept(self, before: list) -> list | None:
        """torch: the kept delta buffers if ``before`` is the kept snapshot (this step used it), else ``None``."""
        if not self._eager_torch(before):
            return None
        return kept_buffers(namespace(*before), self._gradclip.scratch, "delta", before)

    def _eager_torch(self, before: list) -> bool:
        """torch: whether ``before`` is the kept snapshot (this step used it: eager, buffers written in place)."""
        snap = self._gradclip.scratch.get("snapshot")
        return bool(snap and before and before[0] is snap[0])

    def _from_weights(self, before: list) -> bool:
        """A rule that reads ``(w_new, w_old)`` itself, on TensorFlow or torch's eager CPU: no update is formed
        (the core's post-step seam, :meth:`gradclip_core.Rule.update_effect_from_weights`)."""
        if not self._gradclip.rule.has_weights_effect:
            return False
        if backend() == "tensorflow":  # (its kernels: one fused loop per array; op by op, a - b is a full pass)
            return True
        return self._eager_torch(before) and all(b.device.type == "cpu" for b in before)

    def _probe_step(self, built: list, before: list, grads: list, variables: list, state_values: list) -> list:
        """JAX under ``jit``: :meth:`_correct_update` with the inner step run twice; returns the new state.

        The rule reads ``w_new - w_old`` and the write-back needs ``w_new`` and ``w_old``
        again: with one inner step XLA held ``w_new`` in a weight-sized temporary between
        the two (allocated, and on the CPU page-faulted in, on every step). So the inner
        step runs a first time for the rule only (XLA fuses that ``w_new`` into the rule's
        reductions: nothing stored), every variable is set back, and the step runs again
        on the same values passed through ``optimization_barrier`` (so that XLA does not
        merge the two): that ``w_new`` is fused into the write-back, in place, which waits
        for the rule's factors. Costs one more read of what the inner step reads; both
        steps are the same operations on the same values.
        """
        import jax

        inner_vars = list(self.inner_optimizer.variables)
        saved = [v.value for v in inner_vars]
        self.inner_optimizer.apply(grads, variables)
        probe = [storage_precision(to_tensor(v)) for v in built]
        deltas, scales, out, new_state, info = self._rule_on_update(built, before, probe, state_values)
        if scales is not None and info:
            # a weight the rule leaves as it is (Keep, or a factor None) is still written through a factor
            # that is 1 but computed from the rule's info: the write then waits for the rule's reads of
            # that weight (without it XLA copied each such weight first, to write it in place)
            seen = ops.stack([ops.all(ops.equal(v, v)) for v in info.values()])
            one = 1.0 + 0.0 * ops.cast(ops.all(seen), "float32")  # (NaN included: v == v is 0 or 1, never NaN)
            scales = [one if f is None else f for f in scales]
        before, saved, grads = jax.lax.optimization_barrier((before, saved, grads))
        for var, value in zip([*built, *inner_vars], [*before, *saved]):
            var.assign(value)
        self.inner_optimizer.apply(grads, variables)
        return self._write_update(built, before, deltas, scales, out, new_state, info)

    def _correct_update(self, built: list, before: list, state_values: list) -> list:
        """Update clipping (``rule.on_update``): the rule on ``w_new - w_old``, written back; returns the new state.

        Where the rule changed the update the weight becomes ``w_old + delta'``; elsewhere it
        stays the inner optimizer's ``w_new`` bit for bit.
        """
        after = [storage_precision(to_tensor(v)) for v in built]  # (no copy: read before the write-back below)
        return self._write_update(built, before, *self._rule_on_update(built, before, after, state_values))

    def _rule_on_update(self, built: list, before: list, after: list, state_values: list) -> tuple:
        """The update rule on ``after - before``: ``(deltas, scales, out, new_state, info)`` (``scales``: see :func:`_scalar_factors`)."""
        slots = self._gradclip
        seam = self._from_weights(before)
        kept = None if seam else self._kept(before)
        if seam:  # torch on the CPU: the rule reads (w_new, w_old); `deltas` stays None unless an effect needs it
            deltas = None
        elif kept is not None:  # torch: into the kept delta buffers
            import torch

            deltas = [torch.sub(a.detach(), b, out=d) for a, b, d in zip(after, before, kept)]
        else:
            deltas = [a - b for a, b in zip(after, before)]
        try:
            with rule_scope(slots.paths):
                state = unflatten(slots.treedef, state_values)
                if seam:
                    effect, new_state, info = slots.rule.update_effect_from_weights([_detached(a) for a in after], before, state)
                else:
                    effect, new_state, info = unconverted(slots.rule.update_effect)(deltas, state, before)
                scales = _scalar_factors(effect, len(before))
                if scales is None and deltas is None:  # another effect (a chain's): the update, formed now
                    deltas = [_detached(a) - b for a, b in zip(after, before)]
                out = None if scales is not None else unconverted(apply_effect)(namespace(*deltas), deltas, effect)
        except Exception:  # (e.g. nonfinite="raise", eager): the weights go back to where the step started
            for var, b in zip(built, before):
                var.assign(b)
            raise
        return deltas, scales, out, flatten(new_state), dict(info)

    def _write_update(self, built: list, before: list, deltas: list, scales: list | None, out: list | None,
                      new_state: list, info: dict) -> list:
        """Write the rule's update back over the inner optimizer's ``w_new`` (the weights now), and the state and info."""
        slots = self._gradclip
        after = [storage_precision(to_tensor(v)) for v in built]  # (no copy: read before the writes below)
        if scales is not None and self._eager_torch(before):  # torch: in place, in the delta buffers
            import torch

            factors = [None if f is None else ops.cast(f, b.dtype) for f, b in zip(scales, before)]
            live = [f for f in factors if f is not None]
            kept = iter(())
            if live and all(f.device.type == "cpu" for f in live):  # one host read, free on the CPU:
                kept = iter(torch.stack([f.float() for f in live]).eq(1).tolist())  # a factor 1 writes nothing
            for var, a, b, d, f in zip(built, after, before, deltas or [None] * len(before), factors):
                if f is not None and not next(kept, False):
                    if d is None:  # (the seam kept no delta buffer: this clipped array's update, formed now)
                        d = torch.sub(a.detach(), b)
                    d.mul_(f).add_(b)  # b + d * f: b - (b - a) * f bit for bit (negation is exact), as below
                    var.assign(torch.where(torch.eq(f, 1), a.detach(), d, out=d))
            scales = None
        if scales is not None:  # Keep (nothing to write) or one factor per array: w_new stands where it is 1
            in_place = backend() == "tensorflow"
            for var, a, b, d, f in zip(built, after, before, deltas or [None] * len(before), scales):
                if f is not None:
                    f = ops.cast(f, a.dtype)
                    # b - (b - a) * f is b + d * f bit for bit (negation is exact), but not the rule's `d`:
                    # XLA fuses each a - b into its one reader instead of keeping d alive (one full-size
                    # temporary less under jit, where d and w_new were both held until the write-back).
                    # TensorFlow runs op by op: d * f and b + ... write into d's buffer (its last reader),
                    # where b - a wrote a new, page-faulted one.
                    if in_place:  # f is 0-d: one branch, not a full-size select (whose values are the same)
                        # (d None: the seam formed no update; a - b here, only for an array that is clipped)
                        var.assign(ops.cond(ops.equal(f, 1), lambda a=a: a,
                                            lambda a=a, b=b, d=d, f=f: ops.cast(b + (a - b if d is None else d) * f, a.dtype)))
                    else:
                        var.assign(ops.where(ops.equal(f, 1), a, ops.cast(b - (b - a) * f, a.dtype)))
        for var, a, b, d, d0 in zip(built, after, before, out or (), deltas or ()):
            d = ops.cast(d, d0.dtype)
            var.assign(ops.where(ops.equal(d, d0), a, ops.cast(b + d, a.dtype)))
        for var, value in zip(slots.state, new_state):
            var.assign(self._cast_like(value, var))
        for key in slots.update_keys:
            var = slots.info[slots.names[key]]
            var.assign(self._cast_like(info[key], var))
        return new_state

    @staticmethod
    def _cast_like(value: Any, var: Any) -> Any:
        return ops.cast(ops.reshape(value, tuple(var.shape)), var.dtype)

    def _cross_replica(self, grads: list) -> tuple[list, float]:
        """Under ``tf.distribute`` (in a replica context): the summed gradients and the replica count."""
        if backend() != "tensorflow":
            return grads, 1.0
        import tensorflow as tf

        ctx = tf.distribute.get_replica_context()
        if ctx is None or ctx.num_replicas_in_sync <= 1:
            return grads, 1.0
        return list(ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads)), float(ctx.num_replicas_in_sync)

    # ---------------------------------------------------------------------- step

    def apply(self, grads: Sequence[Any], trainable_variables: Sequence[Any] | None = None) -> None:
        """Run the rule's ``update``, the inner optimizer's ``apply`` and the rule's ``project``.

        The one step body: Keras' ``stateless_apply`` (the JAX trainer's path) runs this same
        method inside a ``StatelessScope`` that maps every variable to its value.

        Args:
          grads: one gradient (or ``None``) per variable.
          trainable_variables: the variables; ``None`` means those the optimizer was built with.
        """
        grads = list(grads)
        first = next((g for g in grads if g is not None), None)
        if first is not None and is_symbolic(first) and _raises_on_nonfinite(self.rule.config):
            raise RuntimeError(
                "gradclip_keras.Optimizer: the rule uses nonfinite='raise', which reads the gradients on the host and "
                "cannot run in a compiled train step (jax.jit / tf.function); in fit, compile the model with "
                "run_eagerly=True (model.compile(..., run_eagerly=True)), or use nonfinite='skip' (skips the step "
                "inside the compiled step) or nonfinite='zero'"
            )
        if not self.built:
            with keras.name_scope(self.name, caller=self):
                self.build(trainable_variables)
            self.built = True
        variables = list(self._trainable_variables if trainable_variables is None else trainable_variables)
        if trainable_variables is not None:
            self._check_variables_are_known(variables)  # Keras' "Unknown variable ... recreate a new optimizer"
        if len(grads) != len(variables):
            raise ValueError(f"got {len(grads)} gradients for {len(variables)} variables")
        if not grads:
            return
        slots = self._gradclip
        loss, slots.loss = slots.loss, None
        if slots.needs_loss and loss is None:
            raise ValueError(
                f"gradclip_keras.Optimizer: the rule {slots.rule.name!r} tests the loss (skip_on_spike(loss=True)), "
                "and no loss reached the optimizer: fit passes it through optimizer.scale_loss; in a custom loop call "
                "optimizer.set_loss(loss) before apply_gradients"
            )
        full, pos = self._full_grads(grads, variables)
        full, replicas = self._cross_replica(full)
        if loss is not None and replicas != 1.0:  # each replica's loss is its share (scale_loss_for_distribution)
            loss = self._cross_replica([loss])[0][0]
        built = self._trainable_variables
        on_update = slots.rule.on_update
        if on_update:  # update clipping: the rule runs after the inner step, on w_new - w_old
            out, new_state, info, skip = full, [snapshot(v) for v in slots.state], {}, None
        else:
            params = [to_tensor(v) for v in built] if slots.rule.needs_params else None  # read only (no copy)
            out, new_state, info, skip = self._update(full, [snapshot(v) for v in slots.state], params, loss)
            if params is not None:
                out = _unaliased(out, params)
            for var, value in zip(slots.state, new_state):
                var.assign(self._cast_like(value, var))
            for key in slots.update_keys:
                var = slots.info[slots.names[key]]
                var.assign(self._cast_like(info[key], var))
        inner_grads = [None if g is None else out[i] for g, i in zip(grads, pos)]
        if replicas != 1.0:
            inner_grads = [None if g is None else g / ops.cast(replicas, g.dtype) for g in inner_grads]

        current = [new_state]  # (a holder, not `nonlocal`: TF's autograph converts this function)

        def step() -> None:
            before = self._snapshot_weights(built) if on_update else None
            if on_update and _traced_jax(before):
                current[0] = self._probe_step(built, before, inner_grads, variables, current[0])
            else:
                self.inner_optimizer.apply(inner_grads, variables)
                if on_update:
                    current[0] = self._correct_update(built, before, current[0])
            if slots.regrows:
                self._restart_regrown(built, current[0])
            if slots.project:
                values = [storage_precision(to_tensor(v)) for v in built]  # torch: the live weights, no copy
                new_p, pstate, pinfo = self._project(values, current[0])
                new_p = _unaliased(new_p, values, own=True)
                # state and info first: a leaf may be a weight (torch: its live tensor), read before it is written
                for var, value in zip(slots.state, pstate):
                    var.assign(self._cast_like(value, var))
                for key, value in pinfo.items():
                    var = slots.info[slots.names[key]]
                    var.assign(self._cast_like(value, var))
                for var, value in zip(built, new_p):
                    var.assign(value)

        restore = list(built) + list(self.inner_optimizer.variables) + list(slots.state) + list(slots.info.values())
        flagged = skipped(info)  # (a rule's own info["skipped"], e.g. one that zeroes its output itself)
        if skip is None or flagged is None:
            skip = flagged if skip is None else skip
        else:
            skip = ops.logical_or(skip, flagged)
        run_unless(skip, step, restore)

    def stateless_apply(self, optimizer_variables: Sequence[Any], grads: Sequence[Any], trainable_variables: Sequence[Any]) -> tuple[list, list]:
        """The same step on values (the JAX trainer): :meth:`apply` inside Keras' ``StatelessScope``.

        ``optimizer_variables`` are the values of :attr:`variables` (this wrapper's own
        variables, rule state and info included, then the inner optimizer's).
        """
        # LossScaleOptimizer passes this optimizer's Variables themselves, inside a
        # StatelessScope that maps them to values: read those values (`.value` consults
        # the scope), so that no Variable is returned from a traced branch.
        optimizer_variables = [v.value if isinstance(v, keras.Variable) else v for v in optimizer_variables]
        return super().stateless_apply(optimizer_variables, grads, trainable_variables)

    # -------------------------------------------------------------------- config

    def get_config(self) -> dict:
        """``{"name", "inner_optimizer", "rule"}``; ``rule`` is ``rule.config``.

        Raises:
          ValueError: the rule has no config (a ``gc.Rule`` built by hand): register its
            factory with :func:`gradclip_keras.register_rule` to save it.
        """
        return {
            "name": self.name,
            "inner_optimizer": keras.saving.serialize_keras_object(self.inner_optimizer),
            "rule": rule_config(self.rule, "gradclip_keras.Optimizer"),
        }

    @classmethod
    def from_config(cls, config: Mapping, custom_objects: Any = None) -> "Optimizer":
        config = dict(config)
        inner = keras.saving.deserialize_keras_object(config.pop("inner_optimizer"), custom_objects=custom_objects)
        rule = rule_from_config(config.pop("rule"), custom_objects)
        return cls(inner, rule, **config)


def _detached(x: Any) -> Any:
    """``x`` without autograd history (torch); other backends' tensors as they are."""
    return x.detach() if hasattr(x, "detach") else x


def _traced_jax(values: list) -> bool:
    """Whether this is the JAX backend inside a trace (``jit(stateless_apply)``, a jitted ``apply``)."""
    return backend() == "jax" and bool(values) and is_symbolic(values[0])


def _scalar_factors(effect: Any, n: int) -> list | None:
    """One 0-d factor (or ``None``: unchanged) per array if ``effect`` is :class:`Keep` or such a :class:`Scale`, else ``None``."""
    if isinstance(effect, gc.Keep):
        return [None] * n
    if isinstance(effect, gc.Scale) and not effect.divide and all(
            f is None or len(getattr(f, "shape", ())) == 0 for f in effect.factors):
        return list(effect.factors)
    return None


def _feed_loss_through_loss_scaling() -> None:
    """``LossScaleOptimizer(gradclip_keras.Optimizer(...))``: hand the loss on to the wrapper inside.

    Keras' trainers give the step's loss to ``model.optimizer.scale_loss``; a
    ``LossScaleOptimizer`` scales it without asking its inner optimizer, so a rule that
    tests the loss (``skip_on_spike(loss=True)``) inside it never saw it and ``fit``
    raised. ``LossScaleOptimizer.scale_loss`` is extended once, at import: when the
    optimizer it wraps is (or wraps) a :class:`Optimizer` whose rule needs the loss, that
    wrapper gets the unscaled loss first; everything else is unchanged.
    """
    cls = keras.optimizers.LossScaleOptimizer
    original = cls.scale_loss
    if getattr(original, "_gradclip_feeds_loss", False):
        return

    @functools.wraps(original)
    def scale_loss(self: Any, loss: Any) -> Any:
        inner = getattr(self, "inner_optimizer", None)
        while inner is not None and not isinstance(inner, Optimizer):
            inner = getattr(inner, "inner_optimizer", None)
        if inner is not None and inner._gradclip.needs_loss:
            inner.set_loss(loss)
        return original(self, loss)

    scale_loss._gradclip_feeds_loss = True  # type: ignore[attr-defined]
    cls.scale_loss = scale_loss


_feed_loss_through_loss_scaling()
