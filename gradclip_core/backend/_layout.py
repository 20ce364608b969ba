"""Unit axes: which axes of a weight are reduced to get one norm per unit (neuron / channel).

Unit-wise rules (adaptive gradient clipping, max-norm constraints) need to know the
layout of a weight. Frameworks differ: a torch ``Linear`` weight is ``(out, in)`` and a
conv weight ``(out, in, kh, kw)``; a Keras ``Dense`` kernel is ``(in, out)`` and a conv
kernel ``(kh, kw, in, out)``. The ``axis`` argument of those rules is one of:

- ``"out_first"``: units along axis 0, reduce all other axes (torch, timm);
- ``"out_last"``: units along the last axis, reduce all other axes (Keras, Flax);
- ``"optax"``: exactly ``optax``'s ``unitwise_norm``: reduce axis 0 for 2-D and 3-D
  arrays, axes (0, 1, 2) for 4-D; arrays whose squeezed shape is at most 1-D use one
  norm for the whole array; (0, 1, 2, 3) for 5-D; other ranks are an error;
- an int or tuple of ints: the axes to reduce, for arrays of rank >= 2;
- a callable ``shape -> tuple of axes`` (``None`` for "the whole array");
- ``None``: the layout set by :func:`layout_override` if any, else the native layout
  of the arrays' framework, registered by the adapters
  (torch: ``"out_first"``, JAX: ``"optax"``, Keras: ``"out_last"``); NumPy and other
  namespaces have none, so ``axis`` must be given there.

Scalars and vectors (rank <= 1) always use one norm for the whole array.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Callable, Iterator, Union

from ._namespace import namespace_name

__all__ = ["register_layout", "layout_override", "check_axis", "reduce_axes", "AxisSpec", "LAYOUTS"]

AxisSpec = Union[None, str, int, tuple, Callable[[tuple], Any]]
LAYOUTS = ("out_first", "out_last", "optax")

_DEFAULT_LAYOUT: dict[str, str] = {"jax.numpy": "optax", "array_api_compat.torch": "out_first", "tensorflow": "out_last"}
_OVERRIDE: contextvars.ContextVar[str | None] = contextvars.ContextVar("gradclip_layout", default=None)


def register_layout(namespace: str, layout: str) -> None:
    """Set the native weight layout (used when ``axis=None``) of a namespace.

    Args:
      namespace: namespace name (:func:`gradclip_core.namespace_name`).
      layout: one of ``"out_first"``, ``"out_last"``, ``"optax"``.

    Example:
      >>> register_layout("array_api_compat.torch", "out_first")
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {list(LAYOUTS)}, got {layout!r}")
    _DEFAULT_LAYOUT[namespace] = layout


@contextlib.contextmanager
def layout_override(layout: str) -> Iterator[None]:
    """Within this block, ``axis=None`` means ``layout`` for every namespace.

    For adapters whose weight layout is not their array library's: Keras kernels are
    ``(..., in, out)`` on every Keras backend, also when they are torch tensors, so
    ``gradclip_keras`` runs its rules inside ``layout_override("out_last")``. Rules
    read it when they run (at trace time under ``jax.jit`` / ``tf.function``).

    Args:
      layout: one of ``"out_first"``, ``"out_last"``, ``"optax"``.

    Example:
      >>> import numpy as np
      >>> with layout_override("out_last"):
      ...     reduce_axes(np, None, (3, 4))
      (0,)
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {list(LAYOUTS)}, got {layout!r}")
    token = _OVERRIDE.set(layout)
    try:
        yield
    finally:
        _OVERRIDE.reset(token)


def check_axis(axis: AxisSpec) -> AxisSpec:
    """Validate an ``axis`` argument at construction time."""
    if axis is None or callable(axis):
        return axis
    if isinstance(axis, str):
        if axis not in LAYOUTS:
            raise ValueError(f"axis must be one of {list(LAYOUTS)}, an int, a tuple of ints, a callable or None; got {axis!r}")
        return axis
    if isinstance(axis, int) and not isinstance(axis, bool):
        return (axis,)
    if isinstance(axis, (tuple, list)) and axis and all(isinstance(a, int) and not isinstance(a, bool) for a in axis):
        if len(set(axis)) != len(axis):
            raise ValueError(f"axis must not repeat an axis, got {axis!r}")
        return tuple(axis)
    raise ValueError(
        f"axis must be one of {list(LAYOUTS)}, an int, a non-empty tuple of ints, a callable or None; got {axis!r}"
    )


def _optax_axes(shape: tuple) -> tuple | None:
    squeezed = sum(1 for d in shape if d != 1)
    if squeezed <= 1:
        return None
    if len(shape) in (2, 3):
        return (0,)
    if len(shape) in (4, 5):
        return tuple(range(len(shape) - 1))
    raise ValueError(f"axis='optax' supports arrays of rank <= 5 (like optax.adaptive_grad_clip), got shape {shape}")


def reduce_axes(xp: Any, axis: AxisSpec, shape: tuple) -> tuple | None:
    """Axes to reduce for an array of ``shape`` (``None``: the whole array).

    Raises:
      ValueError: ``axis=None`` on a namespace without a registered layout, or axes
        out of range for ``shape``.
    """
    ndim = len(shape)
    if axis is None and _OVERRIDE.get() is not None:
        axis = _OVERRIDE.get()
    if axis is None:
        name = namespace_name(xp)
        if name not in _DEFAULT_LAYOUT:
            raise ValueError(
                f"axis=None means the framework's native weight layout, but namespace {name!r} has none; "
                f"pass axis= explicitly (one of {list(LAYOUTS)}, or the axes to reduce)"
            )
        axis = _DEFAULT_LAYOUT[name]
    if axis == "optax":
        return _optax_axes(shape)
    if ndim <= 1:
        return None
    if axis == "out_first":
        return tuple(range(1, ndim))
    if axis == "out_last":
        return tuple(range(ndim - 1))
    axes = axis(shape) if callable(axis) else axis
    if axes is None:
        return None
    axes = tuple(axes)
    if any(not -ndim <= a < ndim for a in axes):
        raise ValueError(f"axis {axis!r} is out of range for an array of shape {shape}")
    return tuple(sorted(a % ndim for a in axes))
