"""Per-backend plumbing: the Keras weight layout, tensors and branches.

Rules see each backend's own tensors: ``jax.numpy``, torch, or TensorFlow tensors,
for which the core loads its own small Array API namespace on first use (array-api-compat
has none). The kernels (JAX's radix selection, torch's ``_foreach`` ops) are the core's,
shared with ``gradclip_optax`` and ``gradclip_torch``.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Sequence

import keras
from keras import ops

import gradclip_core as gc
from gradclip_core.backend import array_names, ensure_kernels, namespace, namespace_name

__all__ = ["LAYOUT", "backend", "to_tensor", "snapshot", "rule_scope", "variable_names", "run_unless", "is_symbolic", "storage_precision",
           "prepare_namespaces", "unconverted"]

LAYOUT = "out_last"  # Keras kernels are (..., in, out) on every backend


def backend() -> str:
    """The Keras backend name (``"tensorflow"``, ``"jax"``, ``"torch"``, ...)."""
    return keras.backend.backend()


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
def rule_scope(names: Sequence[str] | None = None) -> Iterator[None]:
    """Where rules run: Keras' ``(..., in, out)`` layout for ``axis=None``; no autograd on torch.

    Args:
      names: the variables' paths, one per array the rule sees: ``gc.Params`` patterns
        match them and the core's errors name the variable.
    """
    with gc.layout_override(LAYOUT):
        if backend() == "torch":
            import torch

            with torch.no_grad(), array_names(names, traced=torch.compiler.is_compiling()):
                yield
        else:
            with array_names(names):
                yield


def unconverted(fn: Callable) -> Callable:
    """``fn`` marked for TensorFlow's autograph not to convert it (nor anything it calls); ``fn`` elsewhere.

    Keras traces a TF train step with autograph on, which rewrites every Python function
    called from it, recursively, before tracing it. Rules have no data-dependent Python
    control flow (DESIGN.md), so the rewrite changes nothing but costs seconds per rule
    function: a pruning rule's first ``fit`` step traced for minutes, most of it in
    autograph's source transformation of the core.
    """
    if backend() != "tensorflow":
        return fn
    import tensorflow as tf

    return tf.autograph.experimental.do_not_convert(fn)


def variable_names(variables: Sequence[Any]) -> list[str]:
    """The paths of Keras variables (``"sequential/dense/kernel"``), for :func:`rule_scope`."""
    return [str(getattr(v, "path", None) or getattr(v, "name", i)) for i, v in enumerate(variables)]


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


def storage_precision(x: Any) -> Any:
    """``x`` rounded to its dtype, also under XLA's excess precision (JAX, bf16/fp16).

    XLA may keep a fused ``p - lr * g`` in float32 and feed it to the next op unrounded
    (``--xla_allow_excess_precision``, on by default); a stored weight is rounded, so
    ``project`` must see the rounded values.
    """
    if backend() != "jax" or str(x.dtype) not in ("bfloat16", "float16"):
        return x
    import jax
    import jax.numpy as jnp

    fi = jnp.finfo(x.dtype)
    return jax.lax.reduce_precision(x, exponent_bits=fi.nexp, mantissa_bits=fi.nmant)


def prepare_namespaces() -> None:
    """torch: resolve the namespace of torch tensors and load the core's torch kernels now, eagerly.

    The core caches the namespace of each array type after its first lookup (through
    array-api-compat) and loads its torch kernels on first use. With ``jit_compile=True``
    the first lookup for plain tensors (the gradients; the variables are ``Parameter`` s)
    happened inside the compiled train step, and ``torch.compile`` warned five times
    about array-api-compat's ``lru_cache``. Called when a gradclip object is made.
    """
    if backend() != "torch":
        return
    import torch

    for x in (torch.zeros(()), torch.nn.Parameter(torch.zeros(()), requires_grad=False)):
        ensure_kernels(namespace_name(namespace(x)))
