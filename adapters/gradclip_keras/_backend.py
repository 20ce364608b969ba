"""Per-backend plumbing: namespace registration, the Keras weight layout, tensors and branches."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Sequence

import keras
from keras import ops

import gradclip_core as gc

__all__ = ["LAYOUT", "register", "backend", "to_tensor", "snapshot", "rule_scope", "run_unless", "is_symbolic"]

LAYOUT = "out_last"  # Keras kernels are (..., in, out) on every backend


def backend() -> str:
    """The Keras backend name (``"tensorflow"``, ``"jax"``, ``"torch"``, ...)."""
    return keras.backend.backend()


def register() -> None:
    """Hook the active Keras backend into the core (done once by ``import gradclip_keras``).

    - TensorFlow: register the ``keras.ops`` namespace for TF tensors (array-api-compat
      has none) and its ``"out_last"`` layout;
    - torch: route the core's multi-array primitives to ``torch._foreach_*`` when
      ``gradclip_torch`` is installed (same values, fewer kernel launches);
    - JAX: the core uses ``jax.numpy``; the JAX pruning primitives of ``gradclip_optax``
      (``lax.cond`` schedules, bitcast keys, the radix ``prune_smallest``, which
      compiles much faster than the portable selection) are registered when
      ``gradclip_optax`` is installed (it needs optax; :mod:`gradclip_optax._jax_ops`
      itself needs only jax). Without it the portable defaults run: same masks.

    Example:
      >>> register()  # idempotent
    """
    name = backend()
    if name == "tensorflow":
        from . import _tf_namespace

        gc.register_namespace(_tf_namespace.NAME, _tf_namespace.is_tf_array, _tf_namespace.xp)
        gc.register_layout(_tf_namespace.NAME, LAYOUT)
    elif name == "torch":
        try:
            import gradclip_torch  # noqa: F401  (registers the _foreach primitives)
        except ImportError:  # pragma: no cover - gradclip_torch ships in the same distribution
            pass
    elif name == "jax":
        try:
            from gradclip_optax import _jax_ops
        except ImportError:  # pragma: no cover - optax missing: the portable defaults (same results)
            return
        _jax_ops.register()


def to_tensor(x: Any) -> Any:
    """A backend tensor of ``x`` (a Keras variable's current value, a tensor, ``IndexedSlices``).

    Sparse gradients (``tf.IndexedSlices`` of an ``Embedding``) are densified: rules
    work on dense arrays.
    """
    if isinstance(x, keras.Variable):
        x = x.value
    if backend() == "tensorflow":
        import tensorflow as tf

        return tf.convert_to_tensor(x)  # reads a tf.Variable, densifies IndexedSlices
    return ops.convert_to_tensor(x)


def snapshot(var: Any) -> Any:
    """The current value of a Keras variable, detached from later assignments.

    On torch ``var.value`` is the live ``Parameter`` and ``assign`` copies into it in
    place: a rule that returns an input state leaf unchanged (or as info) would see it
    change under it when the adapter writes the new state back. So torch values are
    cloned; TensorFlow reads the variable into a tensor; JAX arrays are immutable.
    """
    value = to_tensor(var)
    if backend() == "torch":
        return value.detach().clone()
    return value


@contextlib.contextmanager
def rule_scope() -> Iterator[None]:
    """Where rules run: Keras' ``(..., in, out)`` layout for ``axis=None``; no autograd on torch."""
    with gc.layout_override(LAYOUT):
        if backend() == "torch":
            import torch

            with torch.no_grad():
                yield
        else:
            yield


def is_symbolic(x: Any) -> bool:
    """Whether ``x`` is traced (a JAX tracer, a TF graph tensor): no Python ``bool()`` on it."""
    if backend() == "jax":
        import jax

        return isinstance(x, jax.core.Tracer)
    if backend() == "tensorflow":
        import tensorflow as tf

        return not tf.executing_eagerly()
    return False


def run_unless(skip: Any, fn: Callable[[], None], restore: Sequence[Any] = ()) -> None:
    """Run ``fn`` (which assigns variables) unless the 0-d bool ``skip`` is true.

    TensorFlow: ``tf.cond`` (eager or in a graph, like ``LossScaleOptimizer``);
    concrete values (torch, eager JAX): a Python branch; traced JAX values (a stateful
    ``apply`` inside someone's ``jax.jit``): ``fn`` runs, then the variables in
    ``restore`` are set back to their old values where ``skip`` holds, branch-free.

    Args:
      skip: ``None`` (never skip) or a 0-d bool tensor.
      fn: the step to run.
      restore: every variable ``fn`` may assign (used by the branch-free path only).
    """
    if skip is None:
        fn()
        return
    if backend() == "tensorflow":
        ops.cond(skip, lambda: None, fn)
        return
    if not is_symbolic(skip):
        if not bool(skip):
            fn()
        return
    old = [v.value for v in restore]
    fn()
    for v, o in zip(restore, old):
        v.assign(ops.where(skip, o, v.value))
