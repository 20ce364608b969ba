"""Unit norms on shards: the one place AGC and the unit-wise constraints get each unit's L2 norm.

Without a reducer every unit is whole. With one (:func:`gradclip_core.backend.collective`),
array ``i`` is a shard split along :func:`gradclip_core.backend.split_axes` ``(i)``:

- a unit whose reduced axes include every split axis *spans* shards: every participant
  has the same units, each a part of it; the per-unit sums of squares of all such
  arrays are concatenated and summed over participants in one collective;
- a unit whose reduced axes include no split axis is whole on one participant (each
  participant has other units): nothing to reduce;
- a unit reducing some split axes but not others (one tensor split along two axes, e.g.
  FSDP2 ``Shard(0)`` x tensor parallel ``Shard(1)`` with units along dim 0) would span the
  shards of some participants only: refused, naming the array.
"""

from __future__ import annotations

from typing import Any, Sequence

from ._numerics import acc_dtype
from .backend._collective import active, all_reduce, split_axes, static_total
from .backend._layout import _DEFAULT_LAYOUT, _OVERRIDE, reduce_axes
from .backend._names import array_label
from .backend._namespace import namespace_name
from .backend._primitives import is_complex, magnitude, size, upcast
from .backend._primitives import unit_norms as _unit_norms

__all__ = ["full_unit_axes", "sharded_unit_norms"]


def _split(name: str, i: int) -> tuple:
    axes = split_axes(i)
    if axes is None:
        raise ValueError(f"{name}: the reducer says some arrays are split along another axis than the leading one "
                         "but not which (Participants(leading=False)); pass Participants(axes=...) so unit-wise "
                         "rules know each array's split axis")
    return axes


def full_unit_axes(xp: Any, name: str, axis: Any, shape: tuple, i: int) -> tuple | None:
    """``reduce_axes`` of array ``i``'s *full* array (``shape``: its shard's shape).

    ``"out_first"``, ``"out_last"`` and explicit axes depend on the rank only; ``"optax"``
    (which skips size-1 dimensions) and callables see the full shape, whose split axis is
    summed over participants (:func:`gradclip_core.backend.static_total`).

    Args:
      xp: the namespace.
      name: the rule's name (errors).
      axis: the rule's ``axis``.
      shape: the shard's shape.
      i: the array's position (its split axes: :func:`gradclip_core.backend.split_axes`).

    Returns:
      The axes to reduce (``None``: the whole array).

    Example:
      >>> import numpy as np
      >>> full_unit_axes(np, "r", "out_first", (4, 3), 0)
      (1,)
    """
    if not active() or not shape:
        return reduce_axes(xp, axis, shape)
    resolved = axis
    if resolved is None:
        resolved = _OVERRIDE.get() or _DEFAULT_LAYOUT.get(namespace_name(xp))
    if resolved == "optax" or callable(resolved):
        split = _split(name, i)
        if len(split) > 1:
            raise ValueError(f"{name}: {array_label(i)} is split along axes {split} (one tensor sharded on two "
                             f"axes); the layout {resolved!r} needs its full shape: shard it along one axis")
        d = split[0]
        if d < len(shape):
            shape = tuple(shape[:d]) + (static_total(shape[d]),) + tuple(shape[d + 1:])
    return reduce_axes(xp, axis, shape)


def _spans(name: str, i: int, axes: tuple | None) -> bool:
    """Whether array ``i``'s units span shards (its reduced axes ``axes`` hold its split axes)."""
    split = _split(name, i)
    if axes is None or set(split) <= set(axes):
        return True
    if set(split) & set(axes):
        raise ValueError(f"{name}: {array_label(i)} is split along axes {split} and its units reduce axes {axes}: "
                         "a unit would span the shards of some participants only (one tensor sharded on two "
                         "axes, e.g. FSDP2 Shard(0) x RowwiseParallel Shard(1)); shard it along one axis or "
                         "gather it")
    return False


def _unit_sumsq(xp: Any, x: Any, axes: tuple | None, dtype: Any) -> Any:
    if dtype == xp.float64 and x.dtype != xp.float64 and size(x):  # gc.accumulate: no float64 copy of x (backends chunk)
        n = _unit_norms(xp, [x], [axes], [dtype])[0]
        return n * n
    xc = magnitude(xp, x, dtype) if is_complex(x) else upcast(xp, x, dtype)  # complex: |z|
    return xp.sum(xc * xc, axis=axes, keepdims=True)


def sharded_unit_norms(xp: Any, name: str, groups: Sequence[Sequence[Any]], axis: Any) -> tuple[list, set]:
    """Each unit's L2 norm, for aligned lists of arrays (AGC: gradients and weights).

    Args:
      xp: the namespace.
      name: the rule's name (errors).
      groups: lists of arrays of the same shapes; units are taken from the first list's shapes.
      axis: the rule's ``axis`` (:mod:`gradclip_core.backend._layout`).

    Returns:
      ``(norms, spanning)``: per group the per-array unit norms (kept dims, in the
      accumulation dtype, float32 at least), and the positions of the arrays whose units
      span shards (empty without a reducer): their norms are the same on every participant.

    Example:
      >>> import numpy as np
      >>> (norms,), spanning = sharded_unit_norms(np, "r", [[np.array([[3.0, 4.0]], np.float32)]], (1,))
      >>> norms[0].tolist(), spanning
      ([[5.0]], set())
    """
    first = list(groups[0])
    n = len(first)
    axes = [full_unit_axes(xp, name, axis, tuple(x.shape), i) for i, x in enumerate(first)]
    dt = acc_dtype(xp, first)  # float64 when any array is float64, else float32
    spanning = {i for i in range(n) if _spans(name, i, axes[i])} if active() else set()
    local = [i for i in range(n) if i not in spanning]
    out: list = []
    for g in groups:
        norms: list = [None] * n
        for i, v in zip(local, _unit_norms(xp, [g[i] for i in local], [axes[i] for i in local], [dt] * len(local))):
            norms[i] = v
        out.append(norms)
    if spanning:
        order = sorted(spanning)
        parts = [_unit_sumsq(xp, g[i], axes[i], dt) for i in order for g in groups]
        total = xp.sqrt(all_reduce(xp, xp.concat([xp.reshape(x, (-1,)) for x in parts]), "sum"))
        start = 0
        for k, x in enumerate(parts):
            i, gi = order[k // len(groups)], k % len(groups)
            m = size(x)
            out[gi][i] = xp.reshape(total[start:start + m], x.shape)
            start += m
    return out, spanning
